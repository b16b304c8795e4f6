"""The asset factory: one dlt-backed Dagster asset per configured table.

Building definitions never touches a database: specs come from tables.json alone, and the
run-time machinery (`table_run.py` and the runner it drives, `pipeline/runner.py`: dlt, pyarrow,
the pipeline, the verification) is imported only when a table's step runs, so that loading the
code location stays cheap.
"""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.orchestration import retries
from mysqlsync_dagster.orchestration.automation import sync_condition
from mysqlsync_dagster.orchestration.cadence import freshness_minutes
from mysqlsync_dagster.orchestration.checks import table_check_specs
from mysqlsync_dagster.orchestration.names import (
    GROUP,
    IO_MANAGER_KEY,
    TARGET_POOL,
    source_asset_key,
    target_asset_key,
)
from mysqlsync_dagster.orchestration.partitions import backfill_policy, partitions_definition
from mysqlsync_dagster.orchestration.resources import MySQLResource, StagingResource
from mysqlsync_dagster.settings import Settings

TARGET_KINDS = {"postgresql": {"postgres"}, "duckdb": {"duckdb"}}  # Dagster's kind icons


def table_asset_spec(cfg: TableConfig, settings: Settings) -> dg.AssetSpec:
    database = settings.database_name("TARGET")
    dialect = settings.target_dialect
    if dialect == "postgresql" and database:
        database = f"{database}.{cfg.target_schema or 'public'}"
    elif dialect == "duckdb" and database:
        database = f"{Path(database).name}.{cfg.target_schema or 'main'}"
    strategy = (
        f"incremental merge on `{cfg.modifier}`" if cfg.incremental else "full refresh (swap)"
    )
    if cfg.binlog:
        strategy = "change capture: a snapshot, then the source's row events from the binlog" + (
            ", deletes included" if cfg.detect_deletes else ", deleted rows kept"
        )
    if cfg.partitions != "none":
        strategy = (
            f"upsert by {cfg.partitions} partitions of `{cfg.modifier}` from "
            f"{cfg.partition_start} ({settings.source_timezone}); each partition run syncs the "
            "rows of its window, a run without a partition syncs them all"
        )
    return dg.AssetSpec(
        key=target_asset_key(cfg),
        deps=[source_asset_key(cfg)],
        description=f"`{cfg.table}` copied to `{cfg.target}` in the target database: {strategy}.",
        group_name=GROUP,
        kinds={"dlt", "mysql"} | TARGET_KINDS.get(dialect, set()),
        partitions_def=partitions_definition(cfg, settings.source_timezone),
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=dt.timedelta(minutes=freshness_minutes(cfg, settings.interval))
        ),
        metadata={
            "source_table": cfg.table,
            "target_table": cfg.target,
            "target_schema": cfg.target_schema or "",
            "primary_key": ", ".join(cfg.primary_key),
            "modifier": cfg.modifier or "",
            "mode": cfg.mode,
            "strategy": (
                "binlog" if cfg.binlog else "incremental" if cfg.incremental else "full_refresh"
            ),
            "batch_size": dg.MetadataValue.int(cfg.batch_size),
            "partitions": cfg.partitions,
            "dagster/table_name": f"{database}.{cfg.target}" if database else cfg.target,
        },
        automation_condition=sync_condition(cfg, settings),
    ).with_io_manager_key(IO_MANAGER_KEY)  # downstream assets read the table back (io.py)


def build_table_asset(cfg: TableConfig, settings: Settings) -> dg.AssetsDefinition:
    """The table's asset: its spec, checks, pool, retries and backfill policy."""

    @dg.multi_asset(
        name=f"sync_{cfg.key}",
        specs=[table_asset_spec(cfg, settings)],
        check_specs=table_check_specs(cfg, target_asset_key(cfg)),
        pool=TARGET_POOL,
        retry_policy=retries.retry_policy(settings),
        backfill_policy=backfill_policy(cfg),
        can_subset=True,  # its checks can run without the sync (`checks_alone`)
        op_tags={"mysqlsync/table": cfg.key, "mysqlsync/mode": cfg.mode},
    )
    def sync_table(
        context: dg.AssetExecutionContext,
        source_db: MySQLResource,
        target_db: MySQLResource,
        staging: StagingResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        from mysqlsync_dagster.orchestration.table_run import run_table

        yield from run_table(context, cfg, source_db, target_db, staging, settings)

    return sync_table
