"""A table asset's run (imported when its step starts, not when definitions load): the
Dagster glue around `pipeline/runner.py`.

The runner does the work (idle probe, sync, verification and repair, the report and the
verdicts); here its pre-sync verdict and its end become `dg.AssetCheckResult`s and a
`dg.MaterializeResult` whose metadata is the run's `SyncReport` (numeric values the UI can
plot), an error becomes a `dg.Failure` that says whether a retry can help, and an
all-partitions run marks its partitions.
"""

from collections.abc import Iterable, Iterator

import dagster as dg

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.orchestration import retries
from mysqlsync_dagster.orchestration.checks import check_result
from mysqlsync_dagster.orchestration.names import TRIGGER_TAG, VERIFY_TAG, target_asset_key
from mysqlsync_dagster.orchestration.partitions import mark_partitions, window_for_context
from mysqlsync_dagster.orchestration.resources import MySQLResource, StagingResource
from mysqlsync_dagster.pipeline import runner
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.verify.heal import run_all_checks


def follow_seconds(
    context: dg.AssetExecutionContext, cfg: TableConfig, settings: Settings
) -> float:
    """`BINLOG_FOLLOW_SECONDS` in the runs the binlog sensor starts, never in others (a
    scheduled run of many tables would wait that long for each binlog table)."""
    if not cfg.binlog or context.run.tags.get(TRIGGER_TAG) != "binlog":
        return 0.0
    return settings.binlog_follow_seconds


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
    """The asset body, in both modes: the runner's run; only the checks when the run
    selected them without the table."""
    key = target_asset_key(cfg)
    if key not in context.selected_asset_keys:
        yield from checks_alone(context, cfg, source_db, target_db)
        return
    scope = runner.RunScope(
        log=context.log,
        run_id=context.run.run_id,
        window=window_for_context(context),
        follow_seconds=follow_seconds(context, cfg, settings),
    )
    finished: runner.Finished | None = None
    try:
        for step in runner.run_table(scope, cfg, source_db, target_db, staging.settings, settings):
            if isinstance(step, runner.Finished):
                finished = step
            else:  # a failed pre-sync check, reported at once
                yield from selected(context, [check_result(step, key)])
    except Exception as error:
        secrets = runner.secrets_of(source_db, target_db)
        raise retries.sync_failure(cfg.table, error, secrets) from None
    assert finished is not None
    report = finished.report
    if report.strategy != "idle":
        tags = {"synced_by": "a run of all partitions"}
        if report.load_id:  # none when the run had nothing to read
            tags["load_id"] = report.load_id
        marked = mark_partitions(context, key, tags)
        if marked:
            context.log.info("%s: %s partitions marked up to date", cfg.table, f"{marked:,}")
    yield dg.MaterializeResult(asset_key=key, metadata=report.to_metadata() | finished.metadata)
    yield from selected(context, [check_result(o, key) for o in finished.outcomes])
