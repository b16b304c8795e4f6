"""Schedules, observed sources, declarative automation, freshness and pools, checked through
Dagster's public API against real servers."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.automation import AUTOMATION_SENSOR
from mysqlsync_dagster.orchestration.cadence import (
    cron_max_gap_seconds,
    freshness_minutes,
    interval_cron,
)
from mysqlsync_dagster.orchestration.factory import build_definitions, table_assets
from mysqlsync_dagster.orchestration.sources import OBSERVER_NAME
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
    sensors = {s.name: s for s in defs.sensors}
    assert sensors[OBSERVER_NAME].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors[OBSERVER_NAME].minimum_interval_seconds == 300  # INTERVAL: schedule mode
    automation = sensors[AUTOMATION_SENSOR]
    assert automation.default_status == dg.DefaultSensorStatus.STOPPED
    graph = defs.resolve_asset_graph()
    targeted = automation.asset_selection.resolve(graph)
    assert sorted(k.to_user_string() for k in targeted) == ["countries", "customers", "events"]
    assert graph.get(dg.AssetKey(["audit"])).automation_condition is None  # its own schedule


def test_sync_trigger_sensor_switches_interval_tables_to_the_sensor():
    defs = definitions(SYNC_TRIGGER="sensor", SENSOR_INTERVAL="45")
    status = {s.name: s.default_status for s in defs.schedules}
    assert status["sync_cron_0_9_x_x_1to5_schedule"] == dg.DefaultScheduleStatus.RUNNING
    assert status["sync_every_300s_schedule"] == dg.DefaultScheduleStatus.STOPPED
    sensors = {s.name: s for s in defs.sensors}
    for name in (OBSERVER_NAME, AUTOMATION_SENSOR):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
        assert sensors[name].minimum_interval_seconds == 45
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


# -- observed sources and declarative automation -------------------------------------------
@pytest.fixture
def shop(sync_env):
    sync_env.source_exec(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL,"
        " updated_at TIMESTAMP(3) NOT NULL, KEY (updated_at))",
        "INSERT INTO customers VALUES (1, 'Ada', '2024-01-01 10:00:00.5'), (2, 'Bo', NOW())",
        "CREATE TABLE countries (code CHAR(2) PRIMARY KEY, name VARCHAR(20))",
        "INSERT INTO countries VALUES ('DE', 'Germany')",
        "CREATE TABLE events (id INT PRIMARY KEY, at DATETIME NULL, KEY (at))",
        "INSERT INTO events VALUES (1, '2024-01-01 00:00:00')",
    )
    return sync_env


def sensor_definitions(**environ: str) -> dg.Definitions:
    tables = [t for t in TABLES if t["table"] != "audit"]
    settings = {"SYNC_TRIGGER": "sensor", "SENSOR_INTERVAL": "30", **environ}
    return build_definitions(parse_tables_config(tables, "test"), Settings.from_environ(settings))


def observe_tick(defs, resources, cursor, instance):
    sensor = defs.resolve_sensor_def(OBSERVER_NAME)
    with dg.build_sensor_context(
        cursor=cursor, resources=resources, definitions=defs, instance=instance
    ) as context:
        result = sensor.evaluate_tick(context)
    for event in result.asset_events:  # what the daemon stores
        instance.report_runless_asset_event(event)
    return {e.asset_key.to_user_string(): e for e in result.asset_events}, result.cursor


def test_source_observer_reports_changed_sources_with_metadata(shop):
    defs = sensor_definitions()
    resources = {"source_db": shop.resources()["source_db"]}
    with dg.instance_for_test() as instance:
        seen, cursor = observe_tick(defs, resources, None, instance)
        assert set(seen) == {"source/customers", "source/countries", "source/events"}
        customers = seen["source/customers"]
        assert customers.tags["dagster/data_version"].startswith("max updated_at ")
        assert customers.metadata["dagster/row_count"].value == 2
        assert customers.metadata["dagster/table_name"].value == f"{shop.source_db}.customers"
        schema = customers.metadata["dagster/column_schema"].value
        assert [(c.name, c.type, c.constraints.nullable) for c in schema.columns] == [
            ("id", "int(11)", False),
            ("name", "varchar(20)", False),
            ("updated_at", "timestamp(3)", False),
        ]
        assert seen["source/countries"].tags["dagster/data_version"].startswith("checksum ")
        record = instance.get_latest_data_version_record(dg.AssetKey(["source", "customers"]))
        assert record is not None  # Dagster's own record of the source's data version

        assert observe_tick(defs, resources, cursor, instance)[0] == {}  # nothing changed
        shop.source_exec(
            "UPDATE countries SET name = 'Deutschland'",
            "INSERT INTO customers VALUES (3, 'Cy', NOW() + INTERVAL 1 SECOND)",
        )
        seen, _ = observe_tick(defs, resources, cursor, instance)
        assert set(seen) == {"source/customers", "source/countries"}
        assert seen["source/customers"].metadata["dagster/row_count"].value == 3


def test_observe_sources_from_the_ui_records_observations(shop):
    """ "Observe sources" in the UI: a run of the observable source asset."""
    defs = sensor_definitions()
    observe = dg.define_asset_job(
        "observe",
        selection=dg.AssetSelection.assets(
            dg.AssetKey(["source", "customers"]), dg.AssetKey(["source", "events"])
        ),
    )
    defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[observe]))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("observe").execute_in_process(
            instance=instance, resources=shop.resources()
        )
        assert result.success
        records = instance.fetch_observations(dg.AssetKey(["source", "events"]), limit=5).records
        [observation] = [r.asset_observation for r in records]
        assert observation.data_version == "max at 2024-01-01 00:00:00"
        assert observation.metadata["dagster/row_count"].value == 1
        assert observation.metadata["modifier_max"].value == "2024-01-01 00:00:00"
        assert not instance.fetch_observations(
            dg.AssetKey(["source", "countries"]), limit=1
        ).records


class Evaluations:
    """Evaluates the automation conditions as the automation sensor does, tick after tick (each
    evaluation continues from the previous one's cursor)."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs, self.instance, self.cursor = defs, instance, None

    def at(self, when: dt.datetime):
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor, evaluation_time=when
        )
        self.cursor = result.cursor
        return result


def test_automation_syncs_when_the_source_changed_and_on_the_cron(shop):
    """The tables' AutomationConditions, evaluated as the automation sensor does: a sync when
    the source's data version changed (not when it was merely observed again), none while the
    source is unchanged, one on each cron tick; partitioned tables: the latest partition."""
    defs = sensor_definitions()
    resources = {"source_db": shop.resources()["source_db"]}
    # Simulated evaluation times must follow the real times of the observations and syncs the
    # test makes: start just after the next 5-minute cron tick, at least 20 s from now.
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    boundary = soon.replace(minute=soon.minute - soon.minute % 5, second=0, microsecond=0)
    start = boundary + dt.timedelta(minutes=5, seconds=10)

    def requested(result) -> dict[str, list[str | None]]:
        """Table -> the partitions requested (None: the table is unpartitioned)."""
        tables = ("customers", "countries", "events")
        partitions = {t: result.get_requested_partitions(dg.AssetKey([t])) for t in tables}
        return {t: sorted(p, key=str) for t, p in partitions.items() if p}

    with dg.instance_for_test() as instance:
        evaluate = Evaluations(defs, instance)
        result = evaluate.at(start)
        assert result.total_requested == 0  # no source observed yet: nothing to go on
        _, cursor = observe_tick(defs, resources, None, instance)
        result = evaluate.at(start + dt.timedelta(seconds=30))
        first = requested(result)
        events_partitions = defs.resolve_assets_def("events").partitions_def
        *_, previous, latest = events_partitions.get_partition_keys(
            current_time=start + dt.timedelta(seconds=30)
        )
        # events: its latest partition, and the previous one, once, as after every boundary
        assert first == {"customers": [None], "countries": [None], "events": [previous, latest]}
        # the syncs ran
        assert dg.materialize(
            table_assets(defs),
            resources=shop.resources(),
            instance=instance,
            selection=[dg.AssetKey(["customers"]), dg.AssetKey(["countries"])],
        ).success

        # observed again, unchanged: nothing to do
        seen, cursor = observe_tick(defs, resources, cursor, instance)
        assert seen == {}
        result = evaluate.at(start + dt.timedelta(seconds=60))
        assert requested(result).keys() <= {"events"}  # events' own run did not happen here

        shop.source_exec("UPDATE countries SET name = 'Deutschland'")
        seen, cursor = observe_tick(defs, resources, cursor, instance)
        assert set(seen) == {"source/countries"}
        result = evaluate.at(start + dt.timedelta(seconds=90))
        assert "countries" in requested(result) and "customers" not in requested(result)
        assert dg.materialize(
            table_assets(defs),
            resources=shop.resources(),
            instance=instance,
            selection=[dg.AssetKey(["countries"])],
        ).success
        result = evaluate.at(start + dt.timedelta(seconds=120))
        assert "countries" not in requested(result)

        # the cron (INTERVAL 300 s: every 5 minutes) ticks: every table, changed or not
        result = evaluate.at(start + dt.timedelta(minutes=5))
        assert {"customers", "countries"} <= requested(result).keys()


def test_a_tick_starts_runs_of_at_most_25_tables_each_in_its_own_process():
    """The schedule splits its tables into runs of at most 25 (names.TABLES_PER_RUN); a run
    syncs its tables one after another in its own process (the in-process executor)."""
    tables = [{"table": f"t{i:02d}", "primary_key": "id"} for i in range(60)]
    defs = build_definitions(
        parse_tables_config(tables, "test"), Settings.from_environ(UNREACHABLE)
    )
    job = defs.resolve_job_def("sync_every_300s")
    assert job.executor_def.name == "in_process"
    schedule = defs.resolve_schedule_def("sync_every_300s_schedule")
    tick = dt.datetime(2026, 12, 2, 3, 5, tzinfo=dt.UTC)
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        requests = list(schedule.evaluate_tick(context).run_requests or [])
    chunks = [[key.path[-1] for key in r.asset_selection] for r in requests]
    assert [len(c) for c in chunks] == [25, 25, 10]
    assert sorted(key for chunk in chunks for key in chunk) == [f"t{i:02d}" for i in range(60)]
    assert len({r.run_key for r in requests}) == 3
    # a group that fits in one run is one run of the whole job
    schedule = definitions().resolve_schedule_def("sync_every_300s_schedule")
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.asset_selection is None


def test_sync_on_change_splits_tables_among_sensors_of_25():
    """An automation sensor starts one run of every table it requests at a tick: with more
    than 25 tables, each sensor covers at most 25, so a burst of changes starts runs of 25."""
    tables = [{"table": f"t{i:02d}", "primary_key": "id"} for i in range(60)]
    defs = build_definitions(
        parse_tables_config(tables, "test"),
        Settings.from_environ({**UNREACHABLE, "SYNC_TRIGGER": "sensor"}),
    )
    sensors = {
        s.name: s
        for s in defs.sensors or []
        if isinstance(s, dg.AutomationConditionSensorDefinition)
    }
    assert sorted(sensors) == [
        AUTOMATION_SENSOR,
        f"{AUTOMATION_SENSOR}_2",
        f"{AUTOMATION_SENSOR}_3",
    ]
    graph = defs.resolve_asset_graph()
    targets = [
        sorted(k.path[-1] for k in s.asset_selection.resolve(graph)) for s in sensors.values()
    ]
    assert sorted(len(t) for t in targets) == [10, 25, 25]
    assert sorted(name for t in targets for name in t) == [f"t{i:02d}" for i in range(60)]
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())


def test_instance_limits_fit_the_connection_pools(tmp_path):
    """dagster.yaml: table syncs at once x connections per sync fit POOL_SIZE + MAX_OVERFLOW."""
    from pathlib import Path

    from mysqlsync_dagster.settings import DatabaseSettings

    config = (Path(__file__).parents[1] / "dagster.yaml").read_text()
    (tmp_path / "dagster.yaml").write_text(config.replace(".dagster_home", str(tmp_path)))
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.pool_granularity.value == "run"
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
        assets=table_assets(defs),
        resources=resources,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    )
    assert result.success
    assert len(result.get_asset_materialization_events()) == count
    assert sync_env.target_rows("t029") == [(29, dt.datetime(2024, 1, 1))]


def test_partitioned_automation_takes_the_previous_partition_when_its_window_closes():
    defs = sensor_definitions()
    key = dg.AssetKey(["events"])
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    before = hour - dt.timedelta(hours=1)  # an hour that has passed, and the one after it
    with dg.instance_for_test() as instance:
        evaluate = Evaluations(defs, instance)
        evaluate.at(before + dt.timedelta(minutes=57))
        instance.report_runless_asset_event(
            dg.AssetObservation(
                dg.AssetKey(["source", "events"]), tags={"dagster/data_version": "1"}
            )
        )
        result = evaluate.at(before + dt.timedelta(minutes=58))
        # the latest partition (its source changed), and the previous one, once (as after
        # every boundary: nobody knows whether it was synced after its window closed)
        earlier = before - dt.timedelta(hours=1)
        assert result.get_requested_partitions(key) == {
            f"{earlier:%Y-%m-%d-%H:%M}",
            f"{before:%Y-%m-%d-%H:%M}",
        }
        result = evaluate.at(before + dt.timedelta(minutes=59))
        assert result.get_requested_partitions(key) == set()  # nothing changed
        result = evaluate.at(hour + dt.timedelta(seconds=30))
        # the hour closed: the previous partition once more (by a run that starts after the
        # boundary), and the new one (the INTERVAL cron ticked too)
        assert result.get_requested_partitions(key) == {
            f"{before:%Y-%m-%d-%H:%M}",
            f"{hour:%Y-%m-%d-%H:%M}",
        }
        result = evaluate.at(hour + dt.timedelta(seconds=60))
        assert result.get_requested_partitions(key) == set()  # once: not again
