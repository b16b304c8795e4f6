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

Runs are requested per lane: one lane of all the binlog tables (one run applies them one after
another), or, with `BINLOG_FOLLOW_SECONDS`, a lane per table (a run per table, since a run that
follows one table for minutes would hold the others back). The sensor's cursor holds each lane's
position; it is only a hint: the positions that matter are stored in the target with the rows. A
lost cursor costs one run of every binlog table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import dagster as dg

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.orchestration.names import TRIGGER_TAG, target_asset_key
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.settings import Settings

BINLOG_SENSOR = "mysqlsync_binlog"
# A run that follows the binlog is relieved this long before its end: enough for the next run
# to be launched and started (run worker, imports: 4-6 s measured through the daemon here).
HANDOVER_SECONDS = 10
BINLOG_JOB = "sync_binlog_tables"
# Runs are requested per lane: one lane of all binlog tables, or, when runs follow the binlog
# (BINLOG_FOLLOW_SECONDS), one lane per table, so that no table waits while another follows.
LANE_TAG = "mysqlsync/binlog_lane"
ALL_TABLES = "all"


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

        follow = settings.binlog_follow_seconds
        lanes = {t: [t] for t in by_name} if follow else {ALL_TABLES: list(by_name)}
        cursors = _read_cursor(context.cursor, lanes)
        with source_db.engine.connect() as conn:
            end = binlog.end_position(conn)
        pending = [lane for lane in lanes if cursors[lane] is None or cursors[lane] < end]
        unfinished = _unfinished_runs(context)
        now = time.time()
        waiting = {lane: waiting_reason(unfinished.get(lane, []), follow, now) for lane in pending}
        pending = [lane for lane in pending if waiting[lane] is None]
        if not pending:
            reasons = sorted({w for w in waiting.values() if w})
            return dg.SkipReason("; ".join(reasons) or f"no new binlog events (ends at {end})")
        watched = [t for lane in pending for t in lanes[lane]]
        starts = [cursors[lane] for lane in pending]
        first = min((p for p in starts if p is not None), default=None)
        if (
            None in starts
            or first is None
            or first.file != end.file
            or end.offset - first.offset > binlog.SCAN_LIMIT_BYTES
        ):
            changed = set(watched)  # first tick, a new file, or too much to scan: all of them
        else:
            source = source_db.settings()
            changed = binlog.tables_changed(
                binlog.connection_settings(source),
                source.database,
                watched,
                first,
                end,
                server_id=binlog.reader_server_id(settings.binlog_server_id),
            )
        requests = []
        for lane in pending:
            cursors[lane] = end
            names = sorted(changed & set(lanes[lane]))
            if names:
                requests.append(
                    dg.RunRequest(
                        run_key=f"binlog@{end}/{lane}",
                        asset_selection=[target_asset_key(by_name[t]) for t in names],
                        tags={TRIGGER_TAG: "binlog", LANE_TAG: lane},
                    )
                )
        cursor = json.dumps({lane: str(p) if p else None for lane, p in cursors.items()})
        if not requests:
            return dg.SensorResult(skip_reason=f"no events of binlog tables up to {end}",
                                   cursor=cursor)  # fmt: skip
        context.log.info("binlog events pending for: %s", ", ".join(sorted(changed)))
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return mysqlsync_binlog


def _read_cursor(text: str | None, lanes: dict[str, list[str]]) -> dict[str, Any]:
    """Each lane's binlog position (None: never seen) from the sensor's cursor."""
    from mysqlsync_dagster.pipeline.binlog import Position

    try:
        stored = json.loads(text) if text else {}
    except ValueError:
        stored = {}
    if not isinstance(stored, dict):
        stored = {}
    return {lane: Position.parse(stored.get(lane)) for lane in lanes}


def _unfinished_runs(
    context: dg.SensorEvaluationContext,
) -> dict[str, list[tuple[bool, float | None]]]:
    """The runs this sensor requested that are not finished, by lane, newest first: (started,
    start time), what `waiting_reason` weighs."""
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
        )
    )
    runs: dict[str, list[tuple[bool, float | None]]] = {}
    for record in records:
        run = record.dagster_run
        runs.setdefault(run.tags.get(LANE_TAG, ALL_TABLES), []).append(
            (run.status == dg.DagsterRunStatus.STARTED, record.start_time)
        )
    return runs


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
