"""What starts table syncs: one schedule per cadence, and declarative automation on the
sources' observations; plus the daily consistency review.

Trigger choice (`SYNC_TRIGGER`, default `schedule`):

- a table with its own `schedule` cron in tables.json always runs on that schedule;
- every other table runs every `INTERVAL` seconds (`SYNC_TRIGGER=schedule`), or when its source
  changes (`SYNC_TRIGGER=sensor`): the automation sensor `mysqlsync_automation` evaluates each
  table's `dg.AutomationCondition` (`sync_condition`): its source's data version changed, or its
  cron ticked (so freshness holds), and no sync of it in progress. Both are always defined; the
  variable only sets which one starts out running, so either can be switched in the UI without
  a deploy.

Binlog tables (`"capture": "binlog"`) are also synced by the binlog sensor (binlog_sensor.py)
as soon as their events are in the binlog, every `BINLOG_SENSOR_INTERVAL` seconds.

The sources are observed by the source observer sensor (sources.py), in both modes: every
`SENSOR_INTERVAL` seconds with `SYNC_TRIGGER=sensor`, every `INTERVAL` otherwise (the UI shows
each source's row count, columns and data version either way).

Tables sharing a cron share one job and one schedule (partitioned tables also need the same
partitions definition to share). Scheduled runs of partitioned tables sync the latest
partitions: those whose window overlaps the last two schedule intervals.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from croniter import croniter

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.orchestration.binlog_sensor import (
    BINLOG_JOB,
    build_binlog_job,
    build_binlog_sensor,
)
from mysqlsync_dagster.orchestration.cadence import table_cron
from mysqlsync_dagster.orchestration.names import (
    CHECKS_JOB,
    TABLES_PER_RUN,
    TRIGGER_TAG,
    VERIFY_TAG,
    target_asset_key,
)
from mysqlsync_dagster.orchestration.partitions import partitions_definition
from mysqlsync_dagster.orchestration.sources import build_source_observer
from mysqlsync_dagster.settings import Settings

AUTOMATION_SENSOR = "mysqlsync_automation"
CHECKS_CRON = "0 3 * * *"  # the daily consistency review, in SOURCE_TIMEZONE


# -- schedules ----------------------------------------------------------------------------
def cron_name(cron: str) -> str:
    """A readable, Dagster-safe name for a cron: `*/5 * * * *` -> `x_every5_x_x_x_x`."""
    readable = cron.replace("*", "x").replace("/", "every").replace(",", "and").replace("-", "to")
    safe = re.sub(r"[^A-Za-z0-9]+", "_", readable).strip("_")
    if readable.replace(" ", "_") != safe:
        safe += "_" + hashlib.sha1(cron.encode()).hexdigest()[:6]
    return safe


def latest_partition_keys(
    partitions_def: dg.TimeWindowPartitionsDefinition, since: dt.datetime, now: dt.datetime
) -> list[str]:
    """Keys of the partitions whose window overlaps [since, now], clamped to existing ones."""
    first = partitions_def.get_first_partition_window()
    last = partitions_def.get_last_partition_window()
    if first is None or last is None:
        return []

    def key_at(moment: dt.datetime) -> str:
        clamped = min(max(moment, first.start), last.start)
        return partitions_def.get_partition_key_for_timestamp(clamped.timestamp())

    key_range = dg.PartitionKeyRange(key_at(since), key_at(now))
    return list(partitions_def.get_partition_keys_in_range(key_range))


@dataclass
class CadenceGroup:
    """Tables that run together: same cron, same partitions definition, and the same origin of
    the cron (INTERVAL, or a table's own `schedule`), since only the former follow SYNC_TRIGGER."""

    cron: str
    partitions_def: dg.TimeWindowPartitionsDefinition | None
    interval: int | None  # set when the cron comes from INTERVAL
    tables: list[TableConfig]

    @property
    def job_name(self) -> str:
        if self.interval is not None:
            name = f"sync_every_{self.interval}s"
        else:
            name = f"sync_cron_{cron_name(self.cron)}"
        if self.partitions_def is not None:
            cfg = self.tables[0]
            assert cfg.partition_start is not None
            name += f"_{cfg.partitions}_from_{cfg.partition_start:%Y%m%d}"
        return name

    def job(self) -> dg.UnresolvedAssetJobDefinition:
        names = ", ".join(cfg.table for cfg in self.tables)
        return dg.define_asset_job(
            self.job_name,
            selection=dg.AssetSelection.assets(*(target_asset_key(c) for c in self.tables)),
            description=f"Sync on cron `{self.cron}`: {names}.",
        )


def cadence_groups(
    tables: Sequence[TableConfig], interval: int, timezone: str
) -> list[CadenceGroup]:
    """Group tables that can share a job and a schedule, in tables.json order."""
    groups: dict[tuple[Any, ...], CadenceGroup] = {}
    for cfg in tables:
        cron = table_cron(cfg, interval)
        partitions_def = partitions_definition(cfg, timezone)
        origin = None if cfg.schedule else interval
        group = groups.setdefault(
            (cron, partitions_def, origin), CadenceGroup(cron, partitions_def, origin, [])
        )
        group.tables.append(cfg)
    return list(groups.values())


def build_schedule(
    group: CadenceGroup, job: dg.UnresolvedAssetJobDefinition, timezone: str, running: bool
) -> dg.ScheduleDefinition:
    """The group's schedule: at each tick, runs of at most `TABLES_PER_RUN` tables (and, for
    partitioned tables, one per latest partition)."""
    status = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED
    partitions_def = group.partitions_def
    cron = group.cron
    chunks = [
        [target_asset_key(cfg) for cfg in group.tables[i : i + TABLES_PER_RUN]]
        for i in range(0, len(group.tables), TABLES_PER_RUN)
    ]

    def runs(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        now = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        keys: list[str | None] = [None]
        if partitions_def is not None:
            previous = croniter(cron, now).get_prev(dt.datetime)
            since = now - 2 * (now - previous)  # the last two intervals: a missed tick too
            keys = list(latest_partition_keys(partitions_def, since, now))
        for key in keys:
            for number, chunk in enumerate(chunks):
                yield dg.RunRequest(
                    # one run per partition, chunk and tick
                    run_key=f"{key or 'all'}/{number}@{now.isoformat()}",
                    partition_key=key,
                    asset_selection=chunk if len(chunks) > 1 else None,
                    tags={TRIGGER_TAG: "schedule"},
                )

    what = "the latest partitions of each table" if partitions_def else "each table"
    return dg.ScheduleDefinition(
        name=f"{group.job_name}_schedule",
        cron_schedule=cron,
        job=job,
        execution_fn=runs,
        execution_timezone=timezone,
        default_status=status,
        description=f"Syncs {what} in the job, in runs of at most {TABLES_PER_RUN} tables.",
    )


# -- declarative automation ---------------------------------------------------------------------
# two partitions of each kind fit in these (and three never do): `in_latest_time_window`
# counts the partitions whose windows lie wholly within the lookback
_TWO_PARTITIONS = {
    "hourly": dt.timedelta(hours=2),
    "daily": dt.timedelta(days=2),
    "weekly": dt.timedelta(days=14),
    "monthly": dt.timedelta(days=62),
}


def sync_condition(cfg: TableConfig, settings: Settings) -> dg.AutomationCondition | None:
    """When the automation sensor syncs a table (None: it never does, the table follows its own
    `schedule`): when its source's data version changed (an observation, sources.py) or the
    table is new, and on the table's cron even when nothing changed (so freshness holds), never
    while a sync of it is in progress or before its source was observed.

    Partitioned tables: the latest partition only; and after a partition's window closed, that
    partition once more by a run requested after the boundary, so rows written just before it
    are not left behind."""
    if cfg.schedule:
        return None
    ac = dg.AutomationCondition
    cron = table_cron(cfg, settings.interval)
    changed = (ac.any_deps_updated() | ac.newly_missing()).since_last_handled()
    due = ac.cron_tick_passed(cron, settings.source_timezone).since_last_handled()
    condition = (changed | due) & ~ac.any_deps_missing() & ~ac.in_progress()
    partitions_def = partitions_definition(cfg, settings.source_timezone)
    if partitions_def is None:
        return condition.with_label(f"source changed, or cron {cron}")
    # the previous partition, once its window closed: synced by one run that starts after the
    # boundary (a run started before it may have missed the window's last rows)
    boundary = ac.cron_tick_passed(partitions_def.cron_schedule, settings.source_timezone)
    closing = (
        ~ac.newly_requested().since(boundary)
        & ac.in_latest_time_window(_TWO_PARTITIONS[cfg.partitions])
        & ~ac.in_latest_time_window()
        & ~ac.any_deps_missing()
        & ~ac.in_progress()
    )
    return ((condition & ac.in_latest_time_window()) | closing).with_label(
        f"latest partition: source changed, or cron {cron}; the previous one once after it closed"
    )


def build_automation_sensors(
    tables: Sequence[TableConfig], settings: Settings
) -> list[dg.AutomationConditionSensorDefinition]:
    """Evaluate the tables' `sync_condition`s every `SENSOR_INTERVAL` seconds (in the daemon);
    running when `SYNC_TRIGGER=sensor`. A sensor starts one run of all the tables it requests
    at a tick, so tables are split among sensors of at most `TABLES_PER_RUN` tables each:
    `mysqlsync_automation`, then `mysqlsync_automation_2`, ..."""
    return [
        build_automation_sensor(
            tables[i : i + TABLES_PER_RUN],
            settings,
            AUTOMATION_SENSOR if i == 0 else f"{AUTOMATION_SENSOR}_{i // TABLES_PER_RUN + 1}",
        )
        for i in range(0, len(tables), TABLES_PER_RUN)
    ]


def build_automation_sensor(
    tables: Sequence[TableConfig], settings: Settings, name: str = AUTOMATION_SENSOR
) -> dg.AutomationConditionSensorDefinition:
    running = settings.sync_trigger == "sensor"
    return dg.AutomationConditionSensorDefinition(
        name,
        target=dg.AssetSelection.assets(*(target_asset_key(cfg) for cfg in tables)),
        default_status=(
            dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
        ),
        minimum_interval_seconds=settings.sensor_interval,
        run_tags={TRIGGER_TAG: "sensor"},
        description=(
            "Syncs a table when its source's data version changed (see the source observer), "
            "and on its cron; at most one sync of a table at a time."
        ),
    )


# -- the daily consistency review -------------------------------------------------------------
def build_checks_job(
    tables: Sequence[TableConfig], timezone: str
) -> tuple[dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition]:
    """Every table's checks without their syncs, verifying whole tables (`mysqlsync/verify`
    full: what `mysqlsync-dagster check --full` does), read-only; and its daily schedule."""
    job = dg.define_asset_job(
        CHECKS_JOB,
        selection=dg.AssetSelection.checks_for_assets(*(target_asset_key(c) for c in tables)),
        tags={VERIFY_TAG: "full"},
        description=(
            "Every table's checks against the databases as they are, without syncing: whole "
            "tables compared row for row, nothing repaired (a failed check shows what differs; "
            "the next sync of the table repairs it). Tag mysqlsync/verify=slice for the rolling "
            "slice only."
        ),
    )
    schedule = dg.ScheduleDefinition(
        name=f"{CHECKS_JOB}_daily",
        cron_schedule=CHECKS_CRON,
        job=job,
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The daily consistency review: every table's checks, whole tables, at 03:00.",
    )
    return job, schedule


# -- assembly ------------------------------------------------------------------------------
@dataclass
class Automation:
    jobs: list[dg.UnresolvedAssetJobDefinition]
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]


def build_automation(tables: Sequence[TableConfig], settings: Settings) -> Automation:
    """Jobs, schedules and sensors for `tables`."""
    trigger, interval, timezone = settings.sync_trigger, settings.interval, settings.source_timezone
    groups = cadence_groups(tables, interval, timezone)
    jobs: dict[str, dg.UnresolvedAssetJobDefinition] = {}
    schedules = []
    for group in groups:
        job = jobs[group.job_name] = group.job()
        running = trigger == "schedule" or group.interval is None
        schedules.append(build_schedule(group, job, timezone, running))
    observer_interval = (
        settings.sensor_interval if trigger == "sensor" else max(settings.sensor_interval, interval)
    )
    sensors: list[dg.SensorDefinition] = [build_source_observer(tables, observer_interval)]
    sensed = [cfg for cfg in tables if not cfg.schedule]
    sensors.extend(build_automation_sensors(sensed, settings))
    checks_job, checks_schedule = build_checks_job(tables, timezone)
    binlog_tables = [cfg for cfg in tables if cfg.binlog]
    if binlog_tables:
        jobs[BINLOG_JOB] = build_binlog_job(binlog_tables)
        sensors.append(build_binlog_sensor(binlog_tables, settings, jobs[BINLOG_JOB]))
    return Automation([*jobs.values(), checks_job], [*schedules, checks_schedule], sensors)
