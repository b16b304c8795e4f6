"""Schedules, the change sensor, freshness and pools, checked through Dagster's public API."""

from __future__ import annotations

import datetime as dt
import json
import time

import dagster as dg
import pytest

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.automation import (
    SENSOR_NAME,
    Seen,
    decide,
    format_cursor,
    parse_cursor,
)
from mysqlsync_dagster.orchestration.cadence import (
    cron_max_gap_seconds,
    freshness_minutes,
    interval_cron,
)
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.settings import Settings

UNREACHABLE = {
    "SOURCE_DB_URL": "mysql://u:pw@127.0.0.1:9/s",
    "TARGET_DB_URL": "mysql://u:pw@127.0.0.1:9/t",
}
TABLES = [
    {"table": "customers", "primary_key": "id", "modifier": "updated_at"},
    {"table": "countries", "primary_key": "code"},
    {"table": "audit", "primary_key": "id", "schedule": "0 9 * * 1-5"},
    {
        "table": "events",
        "primary_key": "id",
        "modifier": "at",
        "partitions": "hourly",
        "partition_start": "2024-01-01",
    },
]


@pytest.mark.parametrize(
    ("interval", "cron"),
    [
        (30, "* * * * *"),
        (60, "* * * * *"),
        (300, "*/5 * * * *"),
        (420, "*/6 * * * *"),
        (2700, "*/30 * * * *"),
        (3600, "0 * * * *"),
        (5400, "0 * * * *"),
        (7200, "0 */2 * * *"),
        (25200, "0 */6 * * *"),
        (86400, "0 0 * * *"),
        (3 * 86400, "0 0 * * *"),
    ],
)
def test_interval_cron(interval, cron):
    assert interval_cron(interval) == cron


def test_freshness_follows_the_cadence():
    default, _, audit, _ = parse_tables_config(TABLES, "test")
    assert freshness_minutes(default, 300) == 10
    assert freshness_minutes(default, 30) == 2  # cron cannot run more often than every minute
    assert cron_max_gap_seconds("0 9 * * 1-5") == 72 * 3600  # Friday to Monday
    assert freshness_minutes(audit, 300) == 2 * 72 * 60
    [explicit] = parse_tables_config([{**TABLES[0], "freshness_minutes": 7}], "test")
    assert freshness_minutes(explicit, 300) == 7


def definitions(**environ: str) -> dg.Definitions:
    return build_definitions(
        parse_tables_config(TABLES, "test"), Settings.from_environ({**UNREACHABLE, **environ})
    )


def test_assets_carry_freshness_retries_pool_and_partitions():
    defs = definitions(SOURCE_TIMEZONE="Asia/Jakarta")
    graph = defs.resolve_asset_graph()
    windows = {"customers": 10, "countries": 10, "audit": 144 * 60, "events": 10}
    for name, minutes in windows.items():
        node = graph.get(dg.AssetKey([name]))
        assert node.freshness_policy == dg.FreshnessPolicy.time_window(
            fail_window=dt.timedelta(minutes=minutes)
        )
        assert node.pools == {"mysqlsync_target"}
        assets_def = defs.resolve_assets_def(name)
        assert assets_def.op.retry_policy.backoff == dg.Backoff.EXPONENTIAL
    events = graph.get(dg.AssetKey(["events"]))
    assert events.partitions_def == dg.HourlyPartitionsDefinition(
        start_date="2024-01-01-00:00", timezone="Asia/Jakarta", end_offset=1
    )
    assert events.backfill_policy == dg.BackfillPolicy.multi_run(168)
    assert graph.get(dg.AssetKey(["customers"])).partitions_def is None


def test_schedules_share_jobs_by_cadence():
    defs = definitions()
    schedules = {s.name: s for s in defs.schedules}
    assert {name: (s.cron_schedule, s.job_name) for name, s in schedules.items()} == {
        "sync_every_300s_schedule": ("*/5 * * * *", "sync_every_300s"),
        "sync_cron_0_9_x_x_1to5_schedule": ("0 9 * * 1-5", "sync_cron_0_9_x_x_1to5"),
        "sync_every_300s_hourly_from_20240101_schedule": (
            "*/5 * * * *",
            "sync_every_300s_hourly_from_20240101",
        ),
        "consistency_checks_daily": ("0 3 * * *", "consistency_checks"),
    }
    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    selected = {
        name: sorted(k.to_user_string() for k in jobs[name].asset_layer.executable_asset_keys)
        for name in ("sync_every_300s", "sync_cron_0_9_x_x_1to5")
    }
    assert selected == {
        "sync_every_300s": ["countries", "customers"],
        "sync_cron_0_9_x_x_1to5": ["audit"],
    }
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in schedules.values())
    [sensor] = defs.sensors
    assert sensor.name == SENSOR_NAME
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sorted(j.name for j in sensor.jobs) == [
        "sync_every_300s",
        "sync_every_300s_hourly_from_20240101",
    ]


def test_sync_trigger_sensor_switches_interval_tables_to_the_sensor():
    defs = definitions(SYNC_TRIGGER="sensor", SENSOR_INTERVAL="45")
    status = {s.name: s.default_status for s in defs.schedules}
    assert status["sync_cron_0_9_x_x_1to5_schedule"] == dg.DefaultScheduleStatus.RUNNING
    assert status["sync_every_300s_schedule"] == dg.DefaultScheduleStatus.STOPPED
    [sensor] = defs.sensors
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 45
    with pytest.raises(ValueError, match="SYNC_TRIGGER"):
        definitions(SYNC_TRIGGER="cron")


def test_partitioned_schedule_requests_the_latest_partitions():
    defs = definitions(SOURCE_TIMEZONE="Asia/Jakarta")
    [schedule] = [s for s in defs.schedules if s.name.endswith("hourly_from_20240101_schedule")]

    def keys(at: str) -> list[str]:
        when = dt.datetime.fromisoformat(at)
        context = dg.build_schedule_context(
            scheduled_execution_time=when, repository_def=defs.get_repository_def()
        )
        return [r.partition_key for r in schedule.evaluate_tick(context).run_requests]

    # the last two 5-minute intervals: right after the hour they reach into the previous one
    assert keys("2024-03-01T10:30:00+07:00") == ["2024-03-01-10:00"]
    assert keys("2024-03-01T10:05:00+07:00") == ["2024-03-01-09:00", "2024-03-01-10:00"]


# -- the change sensor -----------------------------------------------------------------------
def test_decide():
    assert decide("5", "5", None, 100.0, 30, 300) == (False, Seen("5", 100.0))  # in sync
    assert decide("6", "5", None, 100.0, 30, 300) == (True, Seen("6", 100.0))
    assert decide(None, None, None, 100.0, 30, 300) == (True, Seen(None, 100.0))  # unknown
    seen = Seen("6", 100.0)
    assert decide("6", None, seen, 200.0, 30, 300) == (False, seen)  # unchanged
    assert decide("7", None, seen, 110.0, 30, 300) == (False, seen)  # too soon: remembered
    assert decide("7", None, seen, 131.0, 30, 300) == (True, Seen("7", 131.0))
    assert decide("6", None, seen, 401.0, 30, 300) == (True, Seen("6", 401.0))  # heartbeat


def test_cursor_round_trip():
    seen = {"a": Seen("2024-01-01 00:00:00", 1.5), "b": Seen(None, 2.0)}
    text = format_cursor(seen)
    assert json.loads(text)["a"] == {"probe": "2024-01-01 00:00:00", "at": 1.5}
    assert parse_cursor(text) == seen
    assert parse_cursor("not json") == {} and parse_cursor(None) == {}


def test_change_sensor_requests_runs_only_for_changed_tables(sync_env):
    sync_env.source_exec(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(20),"
        " updated_at TIMESTAMP(3) NOT NULL, KEY (updated_at))",
        "INSERT INTO customers VALUES (1, 'Ada', '2024-01-01 10:00:00.5')",
        "CREATE TABLE countries (code CHAR(2) PRIMARY KEY, name VARCHAR(20))",
        "INSERT INTO countries VALUES ('DE', 'Germany')",
        "CREATE TABLE events (id INT PRIMARY KEY, at DATETIME NULL, KEY (at))",
        "INSERT INTO events VALUES (1, '2024-01-01 00:00:00')",
    )
    tables = [t for t in TABLES if t["table"] != "audit"]
    assert sync_env.sync(tables[:2]).success
    defs = build_definitions(
        parse_tables_config(tables, "test"),
        Settings.from_environ({"SYNC_TRIGGER": "sensor", "SENSOR_INTERVAL": "2"}),
    )
    [sensor] = defs.sensors
    resources = {k: v for k, v in sync_env.resources().items() if k in ("source_db", "target_db")}

    def evaluate(cursor):
        with dg.build_sensor_context(
            cursor=cursor, resources=resources, definitions=defs
        ) as context:
            result = sensor.evaluate_tick(context)
        requests = sorted(
            (
                r.job_name,
                tuple(sorted(k.to_user_string() for k in r.asset_selection)),
                r.partition_key,
            )
            for r in result.run_requests
        )
        return requests, result.cursor

    requests, cursor = evaluate(None)
    # customers is in sync with its cursor; countries (no modifier) and events (partitioned,
    # stateless) have no synced state to compare with, so the first look requests them
    latest = defs.resolve_assets_def("events").partitions_def.get_last_partition_key()
    assert requests == [
        ("sync_every_300s", ("countries",), None),
        ("sync_every_300s_hourly_from_20240101", ("events",), latest),
    ]
    assert evaluate(cursor) == ([], cursor)  # nothing changed (the cursor round-trips)

    sync_env.source_exec(
        "UPDATE customers SET name = 'Ada L.', updated_at = '2024-01-01 10:00:01' WHERE id = 1",
        "UPDATE countries SET name = 'Deutschland'",
    )
    requests, _ = evaluate(cursor)
    assert requests == []  # within SENSOR_INTERVAL of the last request or look
    time.sleep(2.1)
    requests, cursor = evaluate(cursor)
    assert requests == [("sync_every_300s", ("countries", "customers"), None)]
    assert evaluate(cursor)[0] == []


def test_instance_limits_fit_the_connection_pools(tmp_path):
    """dagster.yaml: table syncs at once x connections per sync fit POOL_SIZE + MAX_OVERFLOW."""
    from pathlib import Path

    from mysqlsync_dagster.settings import DatabaseSettings

    config = (Path(__file__).parents[1] / "dagster.yaml").read_text()
    (tmp_path / "dagster.yaml").write_text(config.replace(".dagster_home", str(tmp_path)))
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.pool_granularity.value == "op"
        slots = concurrency.pool_config.default_pool_limit
        defaults = DatabaseSettings(url=None)  # type: ignore[arg-type]
        assert slots * 3 <= defaults.pool_size + defaults.max_overflow
        assert concurrency.run_queue_config.max_concurrent_runs > 0
        assert instance.run_retries_enabled and instance.run_retries_max_retries > 0
        assert not instance.run_retries_retry_on_asset_or_op_failure  # RetryPolicy decides
    finally:
        instance.dispose()


@pytest.mark.slow
def test_many_tables_in_one_run_with_a_small_pool(sync_env):
    """Many tables in one run on a 2-connection pool per side: no leaked connection, no pool
    exhaustion (a sync holds its lock connection and one working connection). A leak of one
    connection per table would exhaust the pool by the third table; 30 tables keep this test
    near 40 s (120 took 160 s here, about 1.3 s of dlt and Dagster set-up per table)."""
    from mysqlsync_dagster.orchestration.resources import MySQLResource

    count = 30
    sync_env.source_exec(
        *(
            f"CREATE TABLE t{i:03d} (id INT PRIMARY KEY, at DATETIME NOT NULL, KEY (at))"
            for i in range(count)
        ),
        *(f"INSERT INTO t{i:03d} VALUES ({i}, '2024-01-01')" for i in range(count)),
    )
    tables = [
        {"table": f"t{i:03d}", "primary_key": "id", **({"modifier": "at"} if i % 2 else {})}
        for i in range(count)
    ]
    defs = build_definitions(parse_tables_config(tables, "test"), Settings.from_environ({}))
    small = {"pool_size": 1, "max_overflow": 1, "pool_timeout": "5"}
    resources = {
        **sync_env.resources(),
        "source_db": MySQLResource(side="SOURCE", url=sync_env.source_url(), **small),
        "target_db": MySQLResource(side="TARGET", url=sync_env.target_url(), **small),
    }
    result = dg.materialize(
        assets=[a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],
        resources=resources,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    )
    assert result.success
    assert len(result.get_asset_materialization_events()) == count
    assert sync_env.target_rows("t029") == [(29, dt.datetime(2024, 1, 1))]
