"""The binlog sensor: starts a sync of the binlog tables whose events are pending.

Every `BINLOG_SENSOR_INTERVAL` seconds (in the daemon, without a run) it reads where the
source's binlog ends. Unchanged since its last tick (its cursor): nothing to do. Otherwise it
scans the binlog from its cursor to that end for row events and DDL of the configured binlog
tables (events of other tables are skipped without being decoded) and requests one run of the
tables that have some; the run applies their events from each table's own stored position
(`pipeline/binlog.py`). A scan longer than `binlog.SCAN_LIMIT_BYTES` (the sensor was stopped, a
burst) is skipped: every binlog table is requested. While a run it requested is still queued or
running, it requests nothing and keeps its cursor, so the next tick after that run covers the
events that arrived meanwhile; but when that run follows the binlog (`BINLOG_FOLLOW_SECONDS`)
and ends within `HANDOVER_SECONDS`, the next run is requested at once and waits for the table's
lock, so that one run takes over from the other without a gap of a launch.

The sensor's cursor is only a hint: the positions that matter are stored in the target with the
rows. A lost cursor costs one run of every binlog table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import dagster as dg

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.orchestration.names import target_asset_key
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.settings import Settings

BINLOG_SENSOR = "mysqlsync_binlog"
# A run that follows the binlog is relieved this long before its end: enough for the next run
# to be launched and started (run worker, imports: 4-6 s measured through the daemon here).
HANDOVER_SECONDS = 10
BINLOG_JOB = "sync_binlog_tables"
TRIGGER_TAG = "mysqlsync/trigger"


def build_binlog_job(tables: Sequence[TableConfig]) -> dg.UnresolvedAssetJobDefinition:
    names = ", ".join(cfg.table for cfg in tables)
    return dg.define_asset_job(
        BINLOG_JOB,
        selection=dg.AssetSelection.assets(*(target_asset_key(cfg) for cfg in tables)),
        description=f"Apply the pending binlog events of: {names}.",
    )


def build_binlog_sensor(
    tables: Sequence[TableConfig], settings: Settings, job: dg.UnresolvedAssetJobDefinition
) -> dg.SensorDefinition:
    by_name = {cfg.table: cfg for cfg in tables}

    @dg.sensor(
        name=BINLOG_SENSOR,
        job=job,
        minimum_interval_seconds=settings.binlog_sensor_interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {settings.binlog_sensor_interval}s: when the source's binlog has row "
            "events or DDL of binlog tables, a run of those tables applies them."
        ),
    )
    def mysqlsync_binlog(
        context: dg.SensorEvaluationContext, source_db: MySQLResource
    ) -> dg.SensorResult | dg.SkipReason:
        from mysqlsync_dagster.pipeline import binlog

        waiting = _in_flight(context, settings.binlog_follow_seconds)
        if waiting:
            return dg.SkipReason(waiting)
        with source_db.engine.connect() as conn:
            end = binlog.end_position(conn)
        start = binlog.Position.parse(context.cursor)
        if start is not None and start >= end:
            return dg.SkipReason(f"no new binlog events (binlog ends at {end})")
        if (
            start is None
            or start.file != end.file
            or (end.offset - start.offset > binlog.SCAN_LIMIT_BYTES)
        ):
            changed = set(by_name)  # first tick, a new file, or too much to scan: all of them
        else:
            database_settings = source_db.settings()
            changed = binlog.tables_changed(
                binlog.connection_settings(
                    database_settings.url,
                    database_settings.ssl,
                    database_settings.connect_timeout,
                ),
                database_settings.database,
                list(by_name),
                start,
                end,
                server_id=binlog.reader_server_id(settings.binlog_server_id),
            )
        if not changed:
            return dg.SensorResult(skip_reason=f"no events of binlog tables up to {end}",
                                   cursor=str(end))  # fmt: skip
        context.log.info("binlog events pending for: %s", ", ".join(sorted(changed)))
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"binlog@{end}",
                    asset_selection=[target_asset_key(by_name[t]) for t in sorted(changed)],
                    tags={TRIGGER_TAG: "binlog"},
                )
            ],
            cursor=str(end),
        )

    return mysqlsync_binlog


def _in_flight(context: dg.SensorEvaluationContext, follow_seconds: float) -> str | None:
    """Why no run is requested now (`waiting_reason`), from the runs this sensor requested
    that are not finished."""
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=BINLOG_JOB,
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ],
            tags={TRIGGER_TAG: "binlog"},
        ),
        limit=2,
    )
    runs = [(r.dagster_run.status == dg.DagsterRunStatus.STARTED, r.start_time) for r in records]
    return waiting_reason(runs, follow_seconds, time.time())


def waiting_reason(
    runs: Sequence[tuple[bool, float | None]], follow_seconds: float, now: float
) -> str | None:
    """None when a run may be requested, given the unfinished binlog runs (started or not, and
    when). A run is not finished: wait for it. Except the handover: one started run that
    follows the binlog (`BINLOG_FOLLOW_SECONDS`) and ends within `HANDOVER_SECONDS`: the next
    run is requested now, launched while it still follows, and takes each table's lock as soon
    as it lets go."""
    if not runs:
        return None
    [(started, start_time), *others] = runs
    if others or not started or follow_seconds < 2 * HANDOVER_SECONDS:
        return "a binlog run is queued or running: its tables wait for it"
    followed = now - (start_time or now)
    if followed < follow_seconds - HANDOVER_SECONDS:
        return f"a binlog run follows the binlog ({followed:.0f}s of {follow_seconds:g}s)"
    return None
