"""A table's sync with its checks (`runner.run_table` for a table that is not idle): the
pre-sync check, the `TableSync` with its mode's part sink (in memory for direct mode, Parquet
parts on disk for staging mode), the verification and repair, the idle proof, the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.errors import TransientCheckError, is_transient
from mysqlsync_dagster.pipeline.parts import MemoryParts, PartSink, new_load_id
from mysqlsync_dagster.pipeline.report import SyncReport
from mysqlsync_dagster.pipeline.run import TableSync
from mysqlsync_dagster.pipeline.runner import (
    PARTITION_LOCK_WAIT_SECONDS,
    Database,
    Finished,
    RunScope,
    secrets_of,
)
from mysqlsync_dagster.pipeline.source_stream import SourceStream
from mysqlsync_dagster.pipeline.staging import StagingSettings, stage
from mysqlsync_dagster.pipeline.windows import ModifierWindow
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.targets.base import SweepState
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
    SourceHalf,
    count_outcome,
    heal,
    source_half,
    verify_outcome,
)


@dataclass
class TableRun:
    """What a table's run does around its sync, the same in direct and staging mode: the
    pre- and post-sync checks, the `TableSync` (with the partition window, if any), and
    hard-delete detection."""

    scope: RunScope
    cfg: TableConfig
    source_db: Database
    target_db: Database
    pre_sync: CheckOutcome
    settings: Settings
    target_rows: int | None = None  # the target table's rows after the run, when counted
    swept: int = 0  # rows the rolling slice compared
    proven: idle.Probe = field(default_factory=idle.Probe)  # the source's rows, if proven
    counted: tuple[TablePair, int] | None = None  # the verification's pair, its source count

    @property
    def window(self) -> ModifierWindow | None:
        return self.scope.window

    @property
    def secrets(self) -> list[str]:
        return secrets_of(self.source_db, self.target_db)

    @classmethod
    def start(
        cls,
        scope: RunScope,
        cfg: TableConfig,
        source_db: Database,
        target_db: Database,
        settings: Settings,
    ) -> TableRun:
        # before extraction; its exact count comes from the verification (no scan of its own)
        pre_sync = source_row_count(cfg, source_db.engine, count=False)
        return cls(scope, cfg, source_db, target_db, pre_sync, settings)

    def table_sync(self, reader: SourceStream | None = None) -> TableSync:
        return TableSync(
            self.cfg,
            self.source_db.settings(),
            self.source_db.engine,
            self.target_db.target(self.cfg.target_schema),
            log=self.scope.log,
            window=self.window,
            lock_wait_seconds=self.lock_wait_seconds(),
            binlog_server_id=self.settings.binlog_server_id,
            resnapshot=self.settings.binlog_resnapshot,
            follow_seconds=self.scope.follow_seconds,
            source_stream=reader,
            arrow_memory_pool=self.settings.arrow_memory_pool,
        )

    def lock_wait_seconds(self) -> int:
        """How long the run waits for the table's lock: partition runs queue behind each
        other; a binlog run that follows the binlog takes over from the one before it (the
        binlog sensor's handover); any other run gives up at once (another sync is running)."""
        if self.window is not None:
            return PARTITION_LOCK_WAIT_SECONDS
        if self.scope.follow_seconds:
            return int(self.scope.follow_seconds) + PARTITION_LOCK_WAIT_SECONDS
        return 0

    def source_half(self, sync: TableSync) -> EarlyHalf | None:
        """The source half of the run's slice and count (`heal.source_half`), to be started
        before the verification: an incremental run's as it starts reading (the source is
        idle while the run waits for its rows and loads them), a full refresh's once its read
        has ended (the source is idle while the load's tail, the aside table's key and the
        swap run: 1M `orders` rows into DuckDB spend 0.9 s there; into a MySQL target, not
        taken). None when the run verifies otherwise (no checksum, a partition, a binlog
        table)."""
        cfg = self.cfg
        if not cfg.checksum or self.window is not None or cfg.binlog:
            return None
        incremental = sync.strategy == "upsert"
        if not incremental and sync.target.kind == "mysql":
            # the verification's two halves already run at once, as slow as each other, and
            # a source half beside the load's tail slowed it as much as it saved (1M rows)
            return None
        future: Future[SourceHalf] = Future()

        def take() -> None:  # the half is handed over at once, then taken range by range
            try:
                pair = TablePair.open(cfg, self.source_db.engine, self.target_db.engine)
                # the scope the run stores
                pair = dataclasses.replace(self.proven_pair(pair), cursor=sync.cursor_after)
                sweep = sync.target.read_sweep(cfg.target)
                since = sync.read_from if incremental else None
                half = source_half(pair, sweep, cfg.verify_budget, since)
            except BaseException as error:
                future.set_exception(error)
                return
            future.set_result(half)
            half.take(pair)

        return EarlyHalf(future, take, before_read=incremental)

    def verify(
        self,
        sync: TableSync,
        report: SyncReport,
        standing: idle.Proof | None = None,
        half: EarlyHalf | None = None,
    ) -> list[CheckOutcome]:
        """After the load committed, with the table's lock still held: verify what the run
        synced and a slice of the rest, repairing what differs (verify/heal.py); the verdicts
        of `row_count_match` and `checksum_match`. Never raises but for a transient error."""
        cfg = self.cfg
        names = [ROW_COUNT_MATCH] + ([CHECKSUM_MATCH] if cfg.checksum else [])
        try:
            pair = TablePair.open(cfg, self.source_db.engine, self.target_db.engine, self.window)
            pair = self.proven_pair(pair)
            if not cfg.checksum:  # counts only; deletes by a key comparison of their own
                if cfg.detect_deletes and report.strategy == "upsert":
                    report.rows_deleted = delete_missing_rows(pair, log=self.scope.log).rows_deleted
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
                log=self.scope.log,
                known_rows=standing.rows if standing is not None else None,
                source=_taken(half, self.scope.log),
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
        if healing.source_rows is not None and self.window is None:
            self.counted = (pair, healing.source_rows)
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
        (`verify/idle.py`), or, for a PostgreSQL or DuckDB target, the source's proof of its
        rows. Best effort."""
        if probed.source is None:
            return
        if self.target_db.settings().dialect != "mysql":
            self.record_source_proof(probed.source)
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
                    probed.target,
                )
        except Exception as error:
            self.scope.log.info("%s: idle proof not stored (%s)", self.cfg.table, error)

    def proven_pair(self, pair: TablePair) -> TablePair:
        """`pair` with the source's rows of a source proof that stood when the run began
        (`verify/idle.py`): its source counts then take only the rows after the cursor."""
        probed = self.proven
        if probed.source_rows is None or probed.source is None:
            return pair
        return dataclasses.replace(
            pair, source_total=probed.source_rows, source_written=probed.source.written
        )

    def record_source_proof(self, source: idle.TableClock) -> None:
        """Keep the source table's rows as this run counted them (the synced scope's count
        and the rows after the cursor), proven while the source is not written from `source`'s
        clock on (`idle.SourceProof`). Best effort."""
        from mysqlsync_dagster.targets.postgres.state import StateInSchema

        target = self.target_db.target(self.cfg.target_schema)
        if self.counted is None or not isinstance(target, StateInSchema):
            return
        pair, scoped = self.counted
        try:
            rows = scoped + pair.count_after_cursor("source")
            token = idle.source_token(self.cfg, source)
            target.write_source_proof(self.cfg.target, idle.SourceProof(source.now, token, rows))
        except Exception as error:
            self.scope.log.info("%s: source proof not stored (%s)", self.cfg.table, error)

    def post_sync_outcomes(self, outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
        """The pre-sync check (unless already reported), completed with the rows the
        verification counted, and the verification's verdicts."""
        if not self.pre_sync.passed:
            return outcomes
        counted = next((o for o in outcomes if o.check == ROW_COUNT_MATCH), None)
        pre_sync = (
            with_counted_rows(self.cfg.table, self.pre_sync, counted)
            if counted is not None and self.window is None
            else self.pre_sync
        )
        return [pre_sync, *outcomes]


@dataclass
class EarlyHalf:
    """A run's source half (`TableRun.source_half`), taken in a thread of its own once
    `start` is called: before the run reads (`before_read`) or once its read has ended
    (`after_read`); the verification uses it only if it was started."""

    future: Future[SourceHalf]
    _take: Callable[[], None]
    before_read: bool  # an incremental run's half; a full refresh's waits for the read's end
    started: bool = False

    @property
    def after_read(self) -> Callable[[], None] | None:
        """What the extraction calls once its read has ended (`parts.Extraction`)."""
        return None if self.before_read else self.start

    def start(self) -> None:
        if not self.started:
            self.started = True
            threading.Thread(target=self._take, name="mysqlsync-source-half", daemon=True).start()


def _taken(half: EarlyHalf | None, log: Any) -> SourceHalf | None:
    """The source half, if it was taken (else the verification takes both halves itself)."""
    if half is None or not half.started:
        return None
    try:
        return half.future.result()
    except Exception as error:
        log.info("source half of the slice not taken early (%s)", type(error).__name__)
        return None


def quiet_report(sync: TableSync, settings: Settings) -> SyncReport:
    """A quiet run (`verify/idle.py`: the proof stands, the slices have not yet covered the
    table): nothing to copy, so nothing is read or written; the run only verifies its slice."""
    if sync.loader is not None:
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


def parts_for(
    sync: TableSync, staging: Callable[[], StagingSettings], run_id: str, load_id: str
) -> PartSink:
    """Direct mode keeps the parts in memory; staging mode writes them under `STAGING_DIR`."""
    if sync.cfg.mode != "staging" or sync.applies_events:
        return MemoryParts(sync.work_dir)
    plan = {
        "strategy": sync.strategy,
        "columns": [{"name": w.column.name, "kind": w.kind} for w in sync.wire],
        "cursor_before": sync.cursor_before,
        "cursor_after": sync.cursor_after,
    }
    return stage(sync.cfg, staging(), run_id, load_id, plan, sync.log.info)


def run_synced(
    scope: RunScope,
    cfg: TableConfig,
    source_db: Database,
    target_db: Database,
    staging: Callable[[], StagingSettings],
    settings: Settings,
    probed: idle.Probe,
    reader: SourceStream | None = None,
) -> Iterator[CheckOutcome | Finished]:
    """`runner.run_table` for a table that is not idle: the pre-sync check (yielded at once
    if it failed), the sync (or, when the proof stands, only the slice), the verification and
    repair, the idle proof, and the `Finished` run."""
    run = TableRun.start(scope, cfg, source_db, target_db, settings)
    run.proven = probed
    if not run.pre_sync.passed:
        yield run.pre_sync
    half = None
    with run.table_sync(reader) as sync:
        if probed.standing is not None:  # neither side written since a verified run
            report = quiet_report(sync, settings)
        elif sync.unchanged:  # nothing to read: no staging run, no load id
            report = sync.run(MemoryParts(sync.work_dir), "")
        else:
            load_id = new_load_id()
            half = run.source_half(sync)
            if half is not None and half.before_read:
                half.start()
            parts = parts_for(sync, staging, scope.run_id, load_id)
            report = sync.run(parts, load_id, half.after_read if half is not None else None)
        outcomes = run.verify(sync, report, probed.standing, half)
        if all(o.passed for o in outcomes):
            run.record_idle_proof(probed)
    if report.strategy == "swap":
        report.row_count = report.rows_written
    elif run.target_rows is not None:
        report.row_count = run.target_rows
    else:  # a partition run, or the verification could not count
        report.row_count = target_db.target(cfg.target_schema).row_count(cfg.target)
    scope.log.info(
        "%s: %s rows written in %.1fs (%s), %.0f rows/s",
        cfg.table,
        f"{report.rows_written:,}",
        report.seconds,
        report.strategy,
        report.rows_per_second,
    )
    yield Finished(report, run.post_sync_outcomes(outcomes))
