"""Time-window partitions over a table's `modifier` column, and the rows each window selects.

A partitioned table (`"partitions": "daily"` ...) gets one partition per window from
`partition_start` up to and including the window in progress now. Materializing a partition (or
a range of them, as a backfill run does) upserts exactly the source rows whose modifier falls in
the window(s):

- the first partition also takes rows dated before `partition_start` and rows whose modifier is
  NULL, and the last (current) one also takes rows dated in the future, so together the
  partitions cover every row exactly once;
- windows are laid out in `SOURCE_TIMEZONE`; naive DATETIME/DATE modifiers are compared against
  the window bounds written as local wall-clock text (verbatim, never shifted); TIMESTAMP
  modifiers are compared as instants.

Partition runs are stateless: they never read or write the incremental cursor and never replace
the table (see `TableSync(window=...)`). The windows themselves and the rows they select are
`pipeline/windows.py`; this module lays them out as Dagster partitions.

Partition status tells the truth: a run of one partition or a range (schedule, sensor, backfill)
marks those partitions materialized, Dagster's own way, empty windows included. A run without a
partition key (`mysqlsync-dagster sync`, the demo) upserts every partition, so it marks the
partitions not yet marked and the latest two (where new rows land): after it, the Partitions tab
shows the whole table materialized. It does not re-mark the others, which were brought up to date
before and again now: one event per partition each run would cost about 15 ms per partition on a
SQLite instance (1,000 daily partitions: 15 s) and would say nothing new. An ephemeral instance
(the CLI without DAGSTER_HOME) keeps nothing, so nothing is marked there.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.pipeline.windows import ALL_PARTITIONS, ModifierWindow

# Runs per backfill: a bounded multi-run policy. Each run upserts its whole range with one
# windowed query, and a failure only fails the partitions of its run, which a re-execution of
# the backfill's failed partitions retries alone. Measured (365 daily partitions, 1M rows,
# in-process): a single run 15 s, runs of 31 partitions 36 s, a run per partition ~570 s. The
# single run is fastest but all-or-nothing and holds the table's lock throughout.
MAX_PARTITIONS_PER_RUN = {"hourly": 168, "daily": 31, "weekly": 13, "monthly": 12}


def partitions_definition(
    cfg: TableConfig, timezone: str = "UTC"
) -> dg.TimeWindowPartitionsDefinition | None:
    """The table's partitions (None when unpartitioned); `end_offset=1` includes the current
    window, so today's changes have a partition before the day is over."""
    if cfg.partitions == "none":
        return None
    assert cfg.partition_start is not None  # enforced by TableConfig
    start = cfg.partition_start.isoformat()
    kinds: dict[str, Any] = {
        "hourly": dg.HourlyPartitionsDefinition,
        "daily": dg.DailyPartitionsDefinition,
        "weekly": dg.WeeklyPartitionsDefinition,
        "monthly": dg.MonthlyPartitionsDefinition,
    }
    if cfg.partitions == "hourly":
        start += "-00:00"  # HourlyPartitionsDefinition wants an hour in its start
    return kinds[cfg.partitions](start_date=start, timezone=timezone, end_offset=1)


def backfill_policy(cfg: TableConfig) -> dg.BackfillPolicy | None:
    if cfg.partitions == "none":
        return None
    return dg.BackfillPolicy.multi_run(MAX_PARTITIONS_PER_RUN[cfg.partitions])


def window_for_range(
    partitions_def: dg.TimeWindowPartitionsDefinition,
    first_key: str,
    last_key: str,
    now: dt.datetime | None = None,
) -> ModifierWindow:
    """The modifier window covering partitions `first_key`..`last_key` (inclusive)."""
    start = partitions_def.time_window_for_partition_key(first_key).start
    end = partitions_def.time_window_for_partition_key(last_key).end
    is_first = first_key == partitions_def.get_first_partition_key()
    # the last partition is the one in progress: its window has not ended yet
    now = now or dt.datetime.now(dt.UTC)
    is_last = end > now
    return ModifierWindow(
        start=None if is_first else start,
        end=None if is_last else end,
        include_null=is_first,
    )


def partitions_to_mark(
    partitions_def: dg.PartitionsDefinition, materialized: set[str], latest: int = 2
) -> list[str]:
    """The partitions an all-partitions run marks: those not yet materialized, and the latest
    `latest` (in partition order)."""
    keys = list(partitions_def.get_partition_keys())
    recent = set(keys[-latest:])
    return [key for key in keys if key not in materialized or key in recent]


def mark_partitions(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey, metadata: dict[str, Any]
) -> int:
    """After an all-partitions run of a partitioned table: record its partitions materialized
    (see the module doc); returns how many were marked."""
    partitions_def = context.assets_def.partitions_def
    if partitions_def is None or context.has_partition_key or context.has_partition_key_range:
        return 0  # Dagster records a partition run's own partitions
    if context.instance.is_ephemeral:
        return 0
    materialized = context.instance.get_materialized_partitions(asset_key)
    keys = partitions_to_mark(partitions_def, materialized)
    for key in keys:
        context.log_event(dg.AssetMaterialization(asset_key, partition=key, metadata=metadata))
    return len(keys)


def window_for_context(context: dg.AssetExecutionContext) -> ModifierWindow | None:
    """The window of a run of a partitioned table, None for an unpartitioned table.

    One partition or a backfill's range gives their window; a run without a partition key (the
    CLI's `sync`, "Materialize all" without choosing) covers all partitions, still statelessly.
    """
    partitions_def = context.assets_def.partitions_def
    if partitions_def is None:
        return None
    if not (context.has_partition_key or context.has_partition_key_range):
        return ALL_PARTITIONS
    assert isinstance(partitions_def, dg.TimeWindowPartitionsDefinition)
    key_range = context.partition_key_range
    return window_for_range(partitions_def, key_range.start, key_range.end)
