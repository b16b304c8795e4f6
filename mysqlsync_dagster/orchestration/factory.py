"""The definitions factory: validated table configs in, one `dg.Definitions` out.

Building reads nothing but its arguments and the names of the environment variables that are
set; it never connects to a database (the daemon reloads definitions every minute).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg
from dagster_dlt import DagsterDltResource

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.orchestration.assets import (
    build_table_asset,
    source_asset_spec,
    target_asset_key,
)
from mysqlsync_dagster.orchestration.automation import build_automation
from mysqlsync_dagster.orchestration.partitions import source_timezone
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.pipeline.staging import (
    IO_MANAGER_KEY,
    build_staging_asset,
    staging_io_manager_from_env,
)

SYNC_ALL_JOB = "sync_all_tables"


def build_resources(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    target_db = MySQLResource.from_env("TARGET", environ)
    return {
        "dlt": DagsterDltResource(),
        "source_db": MySQLResource.from_env("SOURCE", environ),
        "target_db": target_db,
        # loads staging-mode tables, and serves every table to downstream assets
        IO_MANAGER_KEY: staging_io_manager_from_env(target_db, environ),
    }


def build_table(cfg: TableConfig, interval: int, timezone: str) -> dg.AssetsDefinition:
    if cfg.mode == "staging":
        return build_staging_asset(cfg, interval, timezone)
    return build_table_asset(cfg, interval, timezone)


def build_definitions(
    tables: Sequence[TableConfig],
    interval: int,
    environ: Mapping[str, str] | None = None,
) -> dg.Definitions:
    timezone = source_timezone(environ)
    automation = build_automation(tables, interval, environ, timezone)
    return dg.Definitions(
        assets=[
            *(source_asset_spec(cfg) for cfg in tables),
            *(build_table(cfg, interval, timezone) for cfg in tables),
        ],
        jobs=[
            dg.define_asset_job(
                SYNC_ALL_JOB,
                selection=dg.AssetSelection.assets(
                    *(target_asset_key(cfg) for cfg in tables if cfg.partitions == "none")
                ),
                description=(
                    "Sync every unpartitioned table once (partitioned tables: backfill them)."
                ),
            ),
            *automation.jobs,
        ],
        schedules=automation.schedules,
        sensors=automation.sensors,
        resources=build_resources(environ),
    )
