"""A table asset's run (imported when its step starts, not when definitions load).

The asset prepares a `TableSync`, runs it with its mode's part sink (in memory for direct mode,
Parquet parts on disk for staging mode), verifies and repairs, and yields a
`dg.MaterializeResult` whose metadata is the run's `SyncReport` (numeric values the UI can
plot), then its checks. A table proven idle (`verify/idle.py`) does none of that.
"""

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import dagster as dg

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.errors import TransientCheckError, is_transient
from mysqlsync_dagster.orchestration import retries
from mysqlsync_dagster.orchestration.checks import check_result
from mysqlsync_dagster.orchestration.names import (
    PARTITION_LOCK_WAIT_SECONDS,
    TRIGGER_TAG,
    VERIFY_TAG,
    target_asset_key,
)
from mysqlsync_dagster.orchestration.partitions import (
    mark_partitions,
    window_for_context,
)
from mysqlsync_dagster.orchestration.resources import MySQLResource, StagingResource
from mysqlsync_dagster.pipeline.parts import MemoryParts, PartSink, new_load_id
from mysqlsync_dagster.pipeline.report import SyncReport
from mysqlsync_dagster.pipeline.run import TableSync
from mysqlsync_dagster.pipeline.staging import stage
from mysqlsync_dagster.pipeline.windows import ModifierWindow
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.targets.base import SweepState
from mysqlsync_dagster.targets.mysql.loader import use_jemalloc
from mysqlsync_dagster.targets.mysql.state import STATE_TABLE
from mysqlsync_dagster.verify import idle
from mysqlsync_dagster.verify.compare import (
    CHECKSUM_MATCH,
    ROW_COUNT_MATCH,
    CheckOutcome,
    TablePair,
    check_failure,
    row_count_match,
    source_row_count,
    with_counted_rows,
)
from mysqlsync_dagster.verify.deletes import delete_missing_rows
from mysqlsync_dagster.verify.heal import (
    count_outcome,
    heal,
    run_all_checks,
    verify_outcome,
)


@dataclass
class TableRun:
    """What a table asset's run does around its sync, the same in direct and staging mode: the
    pre- and post-sync checks, the `TableSync` (with the partition window, if any), hard-delete
    detection, and failures reported as retryable or not."""

    context: dg.AssetExecutionContext
    cfg: TableConfig
    source_db: MySQLResource
    target_db: MySQLResource
    secrets: list[str]
    window: ModifierWindow | None
    pre_sync: CheckOutcome
    settings: Settings
    target_rows: int | None = None  # the target table's rows after the run, when counted
    swept: int = 0  # rows the rolling slice compared

    @classmethod
    def start(
        cls,
        context: dg.AssetExecutionContext,
        cfg: TableConfig,
        source_db: MySQLResource,
        target_db: MySQLResource,
        settings: Settings,
    ) -> "TableRun":
        use_jemalloc(settings.arrow_memory_pool)
        secrets = source_db.settings().secrets + target_db.settings().secrets
        # before extraction; its exact count comes from the verification (no scan of its own)
        pre_sync = source_row_count(cfg, source_db.engine, count=False)
        return cls(
            context,
            cfg,
            source_db,
            target_db,
            secrets,
            window_for_context(context),
            pre_sync,
            settings,
        )

    def pre_sync_results(self) -> Iterator[dg.AssetCheckResult]:
        """A failed pre-sync check is reported at once: the sync then fails for that reason."""
        if not self.pre_sync.passed:
            yield check_result(self.pre_sync, target_asset_key(self.cfg))

    def table_sync(self) -> TableSync:
        return TableSync(
            self.cfg,
            self.source_db.settings(),
            self.source_db.engine,
            self.target_db.target(self.cfg.target_schema),
            log=self.context.log,
            window=self.window,
            lock_wait_seconds=self.lock_wait_seconds(),
            binlog_server_id=self.settings.binlog_server_id,
            resnapshot=self.settings.binlog_resnapshot,
            follow_seconds=self.follow_seconds(),
        )

    def lock_wait_seconds(self) -> int:
        """How long the run waits for the table's lock: partition runs queue behind each
        other; a binlog run that follows the binlog takes over from the one before it (the
        binlog sensor's handover); any other run gives up at once (another sync is running)."""
        if self.window is not None:
            return PARTITION_LOCK_WAIT_SECONDS
        if self.follow_seconds():
            return int(self.follow_seconds()) + PARTITION_LOCK_WAIT_SECONDS
        return 0

    def follow_seconds(self) -> float:
        """`BINLOG_FOLLOW_SECONDS` in the runs the binlog sensor starts, never in others (a
        scheduled run of many tables would wait that long for each binlog table)."""
        if not self.cfg.binlog or self.context.run.tags.get(TRIGGER_TAG) != "binlog":
            return 0.0
        return self.settings.binlog_follow_seconds

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Turn any error into a `dg.Failure` that says whether a retry can help."""
        try:
            yield
        except Exception as error:
            raise retries.sync_failure(self.cfg.table, error, self.secrets) from None

    def verify(
        self, sync: TableSync, report: SyncReport, standing: idle.Proof | None = None
    ) -> list[CheckOutcome]:
        """After the load committed, with the table's lock still held: verify what the run
        synced and a slice of the rest, repairing what differs (verify/heal.py); the verdicts
        of `row_count_match` and `checksum_match`. Never raises but for a transient error."""
        cfg = self.cfg
        names = [ROW_COUNT_MATCH] + ([CHECKSUM_MATCH] if cfg.checksum else [])
        try:
            pair = TablePair.open(cfg, self.source_db.engine, self.target_db.engine, self.window)
            if not cfg.checksum:  # counts only; deletes by a key comparison of their own
                if cfg.detect_deletes and report.strategy == "upsert":
                    report.rows_deleted = delete_missing_rows(
                        pair, log=self.context.log
                    ).rows_deleted
                counted = row_count_match(pair)
                self.count_target(pair, counted)
                return [counted]
            partition = self.window is not None
            sweep = SweepState() if partition else sync.target.read_sweep(cfg.target)
            incremental = report.strategy == "upsert" and not partition
            healing = heal(
                pair,
                sync.copy_keys,
                sweep,
                budget=None if partition else cfg.verify_budget,
                window_since=sync.read_from if incremental else None,
                log=self.context.log,
                known_rows=standing.rows if standing is not None else None,
            )
            if not partition:
                sync.target.write_sweep(cfg.target, healing.sweep)
        except Exception as error:
            if is_transient(error):  # no verdict: retry the step (syncs are idempotent)
                raise TransientCheckError(f"verification could not run: {error}") from error
            return [check_failure(name, error, self.secrets) for name in names]
        report.rows_verified = healing.rows_verified
        report.rows_repaired = healing.rows_repaired
        report.verify_seconds = healing.seconds
        if cfg.detect_deletes:  # beside those a binlog table's events deleted
            report.rows_deleted = (report.rows_deleted or 0) + healing.repaired["deleted_in_source"]
        self.swept = healing.sweep_rows
        counted = count_outcome(pair, healing)
        self.count_target(pair, counted)
        return [counted, verify_outcome(pair, healing, repaired=True)]

    def count_target(self, pair: TablePair, counted: CheckOutcome) -> None:
        """The target's rows from the verification's count of the synced scope, plus the rows
        changed since (`dagster/row_count` without a count of its own). Best effort."""
        rows = counted.metadata.get("target_rows")
        if rows is not None and self.window is None:
            with contextlib.suppress(Exception):
                self.target_rows = int(rows) + pair.count_after_cursor("target")

    def record_idle_proof(self, probed: idle.Probe) -> None:
        """All checks passed: store the proof that lets later runs count nothing, and do
        nothing once the slices have covered the table, while neither side is written
        (`verify/idle.py`). Best effort."""
        if probed.source is None:
            return
        try:
            with self.target_db.engine.begin() as conn:
                idle.record(
                    conn,
                    STATE_TABLE,
                    self.cfg,
                    probed.source,
                    self.target_rows,
                    self.swept,
                    probed.standing,
                )
        except Exception as error:
            self.context.log.info("%s: idle proof not stored (%s)", self.cfg.table, error)

    def post_sync_results(self, outcomes: list[CheckOutcome]) -> Iterator[dg.AssetCheckResult]:
        """The pre-sync check (unless already reported), completed with the rows the
        verification counted, and the verification's verdicts."""
        if self.pre_sync.passed:
            counted = next((o for o in outcomes if o.check == ROW_COUNT_MATCH), None)
            pre_sync = (
                with_counted_rows(self.cfg.table, self.pre_sync, counted)
                if counted is not None and self.window is None
                else self.pre_sync
            )
            yield check_result(pre_sync, target_asset_key(self.cfg))
        for outcome in outcomes:
            yield check_result(outcome, target_asset_key(self.cfg))


def probe_idle(
    context: dg.AssetExecutionContext,
    cfg: TableConfig,
    source_db: MySQLResource,
    target_db: MySQLResource,
) -> idle.Probe:
    """Is the table idle, does its proof stand (`verify/idle.py`)? If it is not idle, the
    stored proof is voided before the run writes anything (the run stores a new one if all
    its checks pass). An error here only means a full run (which reports it properly)."""
    if context.has_partition_key or context.has_partition_key_range:
        return idle.Probe()
    if target_db.settings().dialect != "mysql":  # the proof reads InnoDB's write times
        return idle.Probe()
    if cfg.binlog:  # its run reads the binlog from its position: as cheap when idle
        return idle.Probe()
    try:
        probed = idle.probe(cfg, source_db.engine, target_db.engine, STATE_TABLE)
        if probed.idle is None:
            with target_db.engine.begin() as conn:
                idle.clear(conn, STATE_TABLE, cfg.target)
    except Exception as error:
        context.log.info("%s: not proven idle (%s): a full run", cfg.table, type(error).__name__)
        return idle.Probe()
    return probed


def idle_results(
    context: dg.AssetExecutionContext,
    cfg: TableConfig,
    found: idle.Idle,
    seconds: float,
    settings: Settings,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """An idle table's run: its materialization (nothing read or written) and the checks,
    which stand as the last verification left them, since nothing has changed."""
    context.log.info("%s: %s", cfg.table, found.description)
    report = found.report(cfg, settings.database_name("TARGET") or "", seconds)
    key = target_asset_key(cfg)
    yield dg.MaterializeResult(asset_key=key, metadata=report.to_metadata() | found.metadata())
    yield from selected(context, [check_result(o, key) for o in found.outcomes(cfg)])


def quiet_report(sync: TableSync, settings: Settings) -> SyncReport:
    """A quiet run (`verify/idle.py`: the proof stands, the slices have not yet covered the
    table): nothing to copy, so nothing is read or written; the run only verifies its slice."""
    assert sync.loader is not None
    sync.loader.discard()  # the work table `prepare` made
    cfg = sync.cfg
    sync.log.info("%s: neither side written since the last verified run: verifying only", cfg.table)
    return SyncReport(
        table=cfg.table,
        target=cfg.target,
        target_database=settings.database_name("TARGET") or "",
        mode=cfg.mode,
        strategy="verify",
        rows_extracted=0,
        rows_written=0,
        seconds=0.0,
        cursor_before=sync.cursor_before,
        cursor_after=sync.cursor_before,
    )


def parts_for(sync: TableSync, staging: StagingResource, run_id: str, load_id: str) -> PartSink:
    """Direct mode keeps the parts in memory; staging mode writes them under `STAGING_DIR`."""
    if sync.cfg.mode != "staging" or sync.applies_events:
        return MemoryParts(sync.work_dir)
    plan = {
        "strategy": sync.strategy,
        "columns": [{"name": w.column.name, "kind": w.kind} for w in sync.wire],
        "cursor_before": sync.cursor_before,
        "cursor_after": sync.cursor_after,
    }
    return stage(sync.cfg, staging.settings(), run_id, load_id, plan, sync.log.info)


def checks_alone(
    context: dg.AssetExecutionContext,
    cfg: TableConfig,
    source_db: MySQLResource,
    target_db: MySQLResource,
) -> Iterator[dg.AssetCheckResult]:
    """A run of the table's checks without its sync (the UI's "Execute" on a check, the daily
    consistency job): the databases as they are now, read-only, as `mysqlsync-dagster check`
    does; the run tag `mysqlsync/verify=full` verifies the whole table instead of the slice."""
    full = context.run.tags.get(VERIFY_TAG, "").strip().lower() == "full"
    context.log.info(
        "%s: checks only (%s), no sync", cfg.table, "whole table" if full else "rolling slice"
    )
    outcomes = run_all_checks(cfg, source_db.engine, target_db.engine, full=full)
    yield from selected(context, [check_result(o, target_asset_key(cfg)) for o in outcomes])


def selected(
    context: dg.AssetExecutionContext, results: Iterable[dg.AssetCheckResult]
) -> Iterator[dg.AssetCheckResult]:
    """The results of the checks this run selected (a run may leave some out)."""
    chosen = context.selected_asset_check_keys
    for result in results:
        if dg.AssetCheckKey(result.asset_key, result.check_name) in chosen:
            yield result


def run_table(
    context: dg.AssetExecutionContext,
    cfg: TableConfig,
    source_db: MySQLResource,
    target_db: MySQLResource,
    staging: StagingResource,
    settings: Settings,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The asset body, in both modes: pre-sync check, sync, verification and repair, report,
    checks; only the checks when the run selected them without the table."""
    if target_asset_key(cfg) not in context.selected_asset_keys:
        yield from checks_alone(context, cfg, source_db, target_db)
        return
    started = time.perf_counter()
    probed = probe_idle(context, cfg, source_db, target_db)
    if probed.idle is not None:
        yield from idle_results(context, cfg, probed.idle, time.perf_counter() - started, settings)
        return
    run = TableRun.start(context, cfg, source_db, target_db, settings)
    yield from selected(context, run.pre_sync_results())
    with run.failures():
        with run.table_sync() as sync:
            if probed.standing is not None:  # neither side written since a verified run
                report = quiet_report(sync, settings)
            else:
                load_id = new_load_id()
                report = sync.run(parts_for(sync, staging, context.run.run_id, load_id), load_id)
            outcomes = run.verify(sync, report, probed.standing)
            if all(o.passed for o in outcomes):
                run.record_idle_proof(probed)
        if report.strategy == "swap":
            report.row_count = report.rows_written
        elif run.target_rows is not None:
            report.row_count = run.target_rows
        else:  # a partition run, or the verification could not count
            report.row_count = target_db.target(cfg.target_schema).row_count(cfg.target)
    context.log.info(
        "%s: %s rows written in %.1fs (%s), %.0f rows/s",
        cfg.table,
        f"{report.rows_written:,}",
        report.seconds,
        report.strategy,
        report.rows_per_second,
    )
    marked = mark_partitions(
        context,
        target_asset_key(cfg),
        {"synced_by": "a run of all partitions", "load_id": report.load_id},
    )
    if marked:
        context.log.info("%s: %s partitions marked up to date", cfg.table, f"{marked:,}")
    yield dg.MaterializeResult(asset_key=target_asset_key(cfg), metadata=report.to_metadata())
    yield from selected(context, run.post_sync_results(outcomes))
