"""What starts table syncs: one schedule per cadence, and a change sensor polling the source.

Trigger choice (`SYNC_TRIGGER`, default `schedule`):

- a table with its own `schedule` cron in tables.json always runs on that schedule;
- every other table runs every `INTERVAL` seconds (`SYNC_TRIGGER=schedule`), or when the change
  sensor sees its source change (`SYNC_TRIGGER=sensor`). Both are always defined; the variable
  only sets which one starts out running, so either can be switched in the UI without a deploy.

Tables sharing a cron share one job and one schedule (partitioned tables also need the same
partitions definition to share). Scheduled runs of partitioned tables sync the latest
partitions: those whose window overlaps the last two schedule intervals.

The sensor probes each table cheaply: `MAX(modifier)` (one index lookup) for tables with a
modifier, `CHECKSUM TABLE` (a scan) for the others. It requests a run only for tables whose probe
differs from the last synced state (the cursor in `_mysqlsync_state`) or from what it saw when it
last requested one; never more than once per `SENSOR_INTERVAL` per table; and, so that freshness
holds, once per half freshness window even when nothing changed. Its per-table state lives in the
sensor cursor (Dagster's storage), so it survives daemon restarts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa
from croniter import croniter

from mysqlsync_dagster.catalog import modifier_maximum
from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.errors import is_transient
from mysqlsync_dagster.orchestration.cadence import freshness_minutes, table_cron
from mysqlsync_dagster.orchestration.names import CHECKS_JOB, VERIFY_TAG, target_asset_key
from mysqlsync_dagster.orchestration.partitions import partitions_definition
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.targets.mysql.state import read_cursors

SENSOR_NAME = "mysqlsync_change_sensor"
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
    status = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED
    name = f"{group.job_name}_schedule"
    if group.partitions_def is None:
        return dg.ScheduleDefinition(
            name=name,
            cron_schedule=group.cron,
            job=job,
            execution_timezone=timezone,
            default_status=status,
        )
    partitions_def = group.partitions_def
    cron = group.cron

    def latest_partitions(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        now = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        previous = croniter(cron, now).get_prev(dt.datetime)
        since = now - 2 * (now - previous)  # the last two intervals: a missed tick is covered
        for key in latest_partition_keys(partitions_def, since, now):
            yield dg.RunRequest(
                run_key=f"{key}@{now.isoformat()}",  # one run per partition and tick
                partition_key=key,
                tags={"mysqlsync/trigger": "schedule"},
            )

    return dg.ScheduleDefinition(
        name=name,
        cron_schedule=cron,
        job=job,
        execution_fn=latest_partitions,
        execution_timezone=timezone,
        default_status=status,
        description="Syncs the latest partitions of each table in the job.",
    )


# -- the change sensor -------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """What the sensor last recorded for a table: its probe and when it last requested a run
    (or first saw the table)."""

    probe: str | None
    requested_at: float


def decide(
    probe: str | None,
    synced_cursor: str | None,
    seen: Seen | None,
    now: float,
    min_interval: float,
    heartbeat: float,
) -> tuple[bool, Seen]:
    """Whether to request a sync of one table now, and what to remember. Pure logic.

    First sight: request unless the last synced cursor equals the probe (then in sync already).
    Later: request when the probe differs from what was seen at the last request and that was
    at least `min_interval` ago, or when `heartbeat` passed without any request.
    """
    if seen is None:
        if synced_cursor is not None and synced_cursor == probe:
            return False, Seen(probe, now)
        return True, Seen(probe, now)
    elapsed = now - seen.requested_at
    changed = probe != seen.probe
    if (changed and elapsed >= min_interval) or elapsed >= heartbeat:
        return True, Seen(probe, now)
    return False, seen


def parse_cursor(cursor: str | None) -> dict[str, Seen]:
    if not cursor:
        return {}
    try:
        raw = json.loads(cursor)
        return {key: Seen(value["probe"], float(value["at"])) for key, value in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}  # an unreadable cursor only costs one round of requests


def format_cursor(seen: Mapping[str, Seen]) -> str:
    return json.dumps(
        {key: {"probe": s.probe, "at": round(s.requested_at, 3)} for key, s in sorted(seen.items())}
    )


def _modifier_types(conn: sa.Connection, database: str) -> dict[tuple[str, str], str]:
    rows = conn.execute(
        sa.text(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = :db"
        ),
        {"db": database},
    )
    return {(t.casefold(), c.casefold()): d for t, c, d in rows}


def probe_source(
    conn: sa.Connection, database: str, tables: Sequence[TableConfig]
) -> dict[str, str | None]:
    """One cheap probe per table (key -> value); tables that cannot be probed are left out.

    With a modifier: its maximum, in the form the sync writes as its cursor (epoch seconds for
    TIMESTAMP), read from the index. Without: `CHECKSUM TABLE`.
    """
    quote = conn.dialect.identifier_preparer.quote_identifier
    types = _modifier_types(conn, database)
    probes: dict[str, str | None] = {}
    for cfg in tables:
        name = f"{quote(database)}.{quote(cfg.table)}"
        try:
            if cfg.modifier is not None:
                data_type = types.get((cfg.table.casefold(), cfg.modifier.casefold()))
                if data_type is None:
                    continue  # missing table or column: the table's own run reports it
                table = sa.table(cfg.table, sa.column(cfg.modifier), schema=database)
                latest = modifier_maximum(table.c[cfg.modifier], data_type)
                probes[cfg.key] = conn.execute(sa.select(latest).select_from(table)).scalar()
            else:
                row = conn.exec_driver_sql(f"CHECKSUM TABLE {name}").one()
                if row[1] is None:
                    continue  # CHECKSUM TABLE reports a missing table as NULL
                probes[cfg.key] = str(row[1])
        except sa.exc.DBAPIError as error:
            if is_transient(error):
                raise  # the tick fails visibly and the next one tries again
            continue  # e.g. no grant on this table: its own run reports the problem
    return probes


def synced_cursors(conn: sa.Connection, tables: Sequence[TableConfig]) -> dict[str, str | None]:
    """The last committed incremental cursor per table key (from `_mysqlsync_state`)."""
    by_target = {cfg.target: cfg.key for cfg in tables}
    return {by_target[t]: c for t, c in read_cursors(conn).items() if t in by_target}


def build_change_sensor(
    tables: Sequence[TableConfig],
    jobs: Mapping[str, dg.UnresolvedAssetJobDefinition],
    job_of: Mapping[str, str],
    interval: int,
    min_interval: int,
    timezone: str,
    running: bool,
) -> dg.SensorDefinition:
    """The change sensor over `tables`; `job_of` maps each table key to its job's name."""
    by_key = {cfg.key: cfg for cfg in tables}
    partition_defs = {cfg.key: partitions_definition(cfg, timezone) for cfg in tables}
    # half the freshness window, in seconds: a table whose source did not change is still synced
    # often enough for its freshness policy to pass
    heartbeats = {cfg.key: 30 * freshness_minutes(cfg, interval) for cfg in tables}

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=list(jobs.values()),
        minimum_interval_seconds=min_interval,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
        ),
        description=(
            "Requests syncs of the tables whose source changed (MAX(modifier), or CHECKSUM TABLE "
            f"without one); at most once per {min_interval}s per table."
        ),
    )
    def mysqlsync_change_sensor(
        context: dg.SensorEvaluationContext, source_db: MySQLResource, target_db: MySQLResource
    ) -> dg.SensorResult:
        now = time.time()
        seen = parse_cursor(context.cursor)
        with source_db.engine.connect() as conn:
            probes = probe_source(conn, source_db.settings().database, tables)
        with target_db.engine.connect() as conn:
            cursors = synced_cursors(conn, tables)
        unpartitioned: dict[str, list[dg.AssetKey]] = defaultdict(list)
        requests: list[dg.RunRequest] = []
        requested: list[str] = []
        for key, probe in probes.items():
            partitions_def = partition_defs[key]
            synced = cursors.get(key) if partitions_def is None else None
            previous = seen.get(key)
            request, seen[key] = decide(probe, synced, previous, now, min_interval, heartbeats[key])
            if not request:
                continue
            requested.append(by_key[key].table)
            asset_key = target_asset_key(by_key[key])
            if partitions_def is None:
                unpartitioned[job_of[key]].append(asset_key)
                continue
            since = (previous.requested_at if previous else now) - min_interval
            for partition in latest_partition_keys(
                partitions_def,
                dt.datetime.fromtimestamp(since, dt.UTC),
                dt.datetime.fromtimestamp(now, dt.UTC),
            ):
                requests.append(
                    dg.RunRequest(
                        job_name=job_of[key],
                        asset_selection=[asset_key],
                        partition_key=partition,
                        tags={"mysqlsync/trigger": "sensor"},
                    )
                )
        for job_name, asset_keys in unpartitioned.items():
            requests.append(
                dg.RunRequest(
                    job_name=job_name,
                    asset_selection=asset_keys,
                    tags={"mysqlsync/trigger": "sensor"},
                )
            )
        if requested:
            context.log.info("requesting syncs of: %s", ", ".join(requested))
        return dg.SensorResult(run_requests=requests, cursor=format_cursor(seen))

    return mysqlsync_change_sensor


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
    """Jobs, schedules and the change sensor for `tables`."""
    trigger, interval, timezone = settings.sync_trigger, settings.interval, settings.source_timezone
    groups = cadence_groups(tables, interval, timezone)
    jobs: dict[str, dg.UnresolvedAssetJobDefinition] = {}
    job_of: dict[str, str] = {}
    schedules = []
    for group in groups:
        job = jobs[group.job_name] = group.job()
        for cfg in group.tables:
            job_of[cfg.key] = group.job_name
        running = trigger == "schedule" or group.interval is None
        schedules.append(build_schedule(group, job, timezone, running))
    sensed = [cfg for cfg in tables if not cfg.schedule]
    sensors = []
    if sensed:
        sensor_jobs = {job_of[cfg.key]: jobs[job_of[cfg.key]] for cfg in sensed}
        sensors.append(
            build_change_sensor(
                sensed,
                sensor_jobs,
                job_of,
                interval,
                settings.sensor_interval,
                timezone,
                running=trigger == "sensor",
            )
        )
    checks_job, checks_schedule = build_checks_job(tables, timezone)
    return Automation([*jobs.values(), checks_job], [*schedules, checks_schedule], sensors)
