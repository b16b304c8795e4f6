"""The definitions factory: validated table configs and settings in, one `dg.Definitions` out.

Building reads nothing but its arguments; it never connects to a database (the daemon reloads
definitions every minute).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.orchestration.assets import build_table_asset
from mysqlsync_dagster.orchestration.automation import build_automation
from mysqlsync_dagster.orchestration.io import TargetTableReader
from mysqlsync_dagster.orchestration.names import (
    IO_MANAGER_KEY,
    LEGACY_IO_MANAGER_KEY,
    target_asset_key,
)
from mysqlsync_dagster.orchestration.resources import MySQLResource, StagingResource
from mysqlsync_dagster.orchestration.sources import build_source_assets
from mysqlsync_dagster.settings import Settings

SYNC_ALL_JOB = "sync_all_tables"


def build_resources(settings: Settings) -> dict[str, object]:
    target_db = MySQLResource.bound("TARGET", settings)
    reader = TargetTableReader(target_db=target_db)  # synced tables for downstream assets
    return {
        "source_db": MySQLResource.bound("SOURCE", settings),
        "target_db": target_db,
        "staging": StagingResource.bound(settings),
        IO_MANAGER_KEY: reader,
        LEGACY_IO_MANAGER_KEY: reader,
    }


def table_assets(defs: dg.Definitions) -> list[dg.AssetsDefinition]:
    """The table assets of `defs` (those a run materializes), without the observed sources."""
    return [
        a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition) and a.is_materializable
    ]


def build_definitions(tables: Sequence[TableConfig], settings: Settings) -> dg.Definitions:
    automation = build_automation(tables, settings)
    return dg.Definitions(
        assets=[
            build_source_assets(tables, settings.database_name("SOURCE")),
            *(build_table_asset(cfg, settings) for cfg in tables),
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
        resources=build_resources(settings),
        # one table after another in the run's own process: see names.TABLES_PER_RUN
        executor=dg.in_process_executor,
    )
