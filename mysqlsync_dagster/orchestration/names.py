"""The names the Dagster definitions share: asset keys, groups, the pool, resource keys.

Kept apart from the asset factory so that automation, checks and the I/O manager name the
table assets without importing the factory.
"""

from __future__ import annotations

import dagster as dg

from mysqlsync_dagster.config import TableConfig, dagster_safe_name

GROUP = "mysqlsync"
SOURCE_GROUP = "mysql_source"
TARGET_POOL = "mysqlsync_target"  # one slot per table sync writing to the target (dagster.yaml)
# Tables per scheduled run. Runs use the in-process executor (one table after another, no
# process per step: a spawned step process cost ~4 CPU-s a table, 350 s for a 100-table cycle
# on 2 cores, against 34-36 s for runs of 25 in process; benchmarks/cycle-results.md); several
# runs at once use the cores, and a run that crashes takes at most this many tables with it
# (run_retries re-launches it).
TABLES_PER_RUN = 25
# a run tag: "full" makes a checks-only run verify whole tables instead of the rolling slice
VERIFY_TAG = "mysqlsync/verify"
# a run tag: what started the run ("schedule", "sensor", "binlog", "cli")
TRIGGER_TAG = "mysqlsync/trigger"
CHECKS_JOB = "consistency_checks"


def target_asset_key(cfg: TableConfig) -> dg.AssetKey:
    return dg.AssetKey([cfg.key])


def source_asset_key(cfg: TableConfig) -> dg.AssetKey:
    return dg.AssetKey(["source", dagster_safe_name(cfg.table)])


IO_MANAGER_KEY = "mysqlsync_io_manager"  # every table asset's: reads the synced table back
# the key this reader had when it also loaded staging mode (README until December 2026); kept
# so that `dg.AssetIn(input_manager_key="staging_io_manager")` goes on working
LEGACY_IO_MANAGER_KEY = "staging_io_manager"
