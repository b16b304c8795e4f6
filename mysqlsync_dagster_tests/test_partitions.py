"""Partitioned tables: time windows over the modifier, synced statelessly by upsert."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions, table_assets
from mysqlsync_dagster.orchestration.partitions import partitions_definition, window_for_range
from mysqlsync_dagster.pipeline.windows import ModifierWindow, window_condition
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.tools.cli import run_sync

DAILY = {
    "table": "events",
    "primary_key": "id",
    "modifier": "updated_at",
    "partitions": "daily",
    "partition_start": "2024-01-01",
}


def materialize(sync_env, tables, *, first=None, last=None, environ=None, raise_on_error=True):
    """Materialize the partitioned table asset(s) for the partition range first..last."""
    configs = parse_tables_config(tables, "test")
    defs = build_definitions(configs, Settings.from_environ(environ or {}))
    assets = table_assets(defs)
    tags = {}
    if first is not None:
        tags = {
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last or first,
        }
    return dg.materialize(
        assets=assets, resources=sync_env.resources(), tags=tags, raise_on_error=raise_on_error
    )


def ids(sync_env, table="events"):
    return [row[0] for row in sync_env.target_rows(table)]


def last_key(cfg_dict, environ=None):
    [cfg] = parse_tables_config([cfg_dict], "test")
    return partitions_definition(cfg).get_last_partition_key()


@pytest.fixture
def events(sync_env):
    sync_env.source_exec(
        "CREATE TABLE events (id INT PRIMARY KEY, note VARCHAR(20),"
        " updated_at DATETIME NULL, KEY (updated_at))",
        "INSERT INTO events VALUES"
        " (1, 'before start', '2023-12-15 10:00:00'), (2, 'null', NULL),"
        " (3, 'jan 1 first', '2024-01-01 00:00:00'), (4, 'jan 1 last', '2024-01-01 23:59:59'),"
        " (5, 'jan 2', '2024-01-02 00:00:00'), (6, 'jan 3', '2024-01-03 12:00:00'),"
        " (7, 'jan 5', '2024-01-05 08:00:00'), (8, 'future', '2099-01-01 00:00:00'),"
        " (9, 'now', UTC_TIMESTAMP())",
    )
    return sync_env


def test_backfill_copies_exactly_the_rows_of_its_windows(events):
    result = materialize(events, [DAILY], first="2024-01-02", last="2024-01-04")
    assert result.success
    assert ids(events) == [5, 6]  # the target table was created empty first
    materializations = result.asset_materializations_for_node("sync_events")
    assert [m.partition for m in materializations] == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert materializations[0].metadata["strategy"].value == "upsert"

    materialize(events, [DAILY], first="2024-01-01")  # first: + before start and NULL
    assert ids(events) == [1, 2, 3, 4, 5, 6]
    materialize(events, [DAILY], first=last_key(DAILY))  # last: + now and the future
    assert ids(events) == [1, 2, 3, 4, 5, 6, 8, 9]
    materialize(events, [DAILY], first="2024-01-05")
    assert events.target_rows("events") == events.source_rows("events")


def state_rows(sync_env):
    with sync_env.target.connect() as conn:
        return conn.exec_driver_sql("SELECT * FROM _mysqlsync_state ORDER BY 1").all()


def test_partition_rerun_is_idempotent_and_leaves_the_cursor_alone(events):
    # an earlier unpartitioned sync left a cursor; partition runs must neither move nor use it
    assert events.sync([{**DAILY, "partitions": "none"} | {"partition_start": None}]).success
    state = state_rows(events)
    assert [row[0] for row in state] == ["events"] and state[0][1] is not None
    events.target_exec("DELETE FROM events WHERE id IN (3, 4, 5)")

    materialize(events, [DAILY], first="2024-01-01")
    first = events.target_rows("events")
    assert [r[0] for r in first] == [1, 2, 3, 4, 6, 7, 8, 9]  # 5 is in 2024-01-02
    materialize(events, [DAILY], first="2024-01-01")
    assert events.target_rows("events") == first
    events.source_exec("UPDATE events SET note = 'changed' WHERE id = 4")
    materialize(events, [DAILY], first="2024-01-01")
    assert events.target_rows("events")[3] == (4, "changed", dt.datetime(2024, 1, 1, 23, 59, 59))
    assert state_rows(events) == state
    with events.target.connect() as conn:
        tables = [row[0] for row in conn.exec_driver_sql("SHOW TABLES")]
    assert sorted(tables) == ["_mysqlsync_state", "events"]  # no work tables left behind


def test_windows_follow_source_timezone(sync_env):
    """Jakarta (+07:00) days: naive DATETIMEs compare verbatim, TIMESTAMPs as instants."""
    sync_env.source_exec(
        "SET time_zone = '+00:00'",
        "CREATE TABLE naive (id INT PRIMARY KEY, at DATETIME(3) NOT NULL, KEY (at))",
        "INSERT INTO naive VALUES (1, '2024-01-01 23:30:00'), (2, '2024-01-02 00:30:00'),"
        " (3, '2024-01-02 23:59:59.999'), (4, '2024-01-03 00:00:00')",
        "CREATE TABLE instants (id INT PRIMARY KEY, at TIMESTAMP NULL, KEY (at))",
        # UTC instants: Jakarta 2024-01-01 23:59:59, 2024-01-02 00:00, 2024-01-03 01:00
        "INSERT INTO instants VALUES (1, '2024-01-01 16:59:59'), (2, '2024-01-01 17:00:00'),"
        " (3, '2024-01-02 18:00:00')",
    )
    tables = [
        {**DAILY, "table": "naive", "modifier": "at"},
        {**DAILY, "table": "instants", "modifier": "at"},
    ]
    result = materialize(
        sync_env, tables, first="2024-01-02", environ={"SOURCE_TIMEZONE": "Asia/Jakarta"}
    )
    assert result.success
    assert ids(sync_env, "naive") == [2, 3]
    assert ids(sync_env, "instants") == [2]


def test_run_without_partition_key_syncs_all_partitions(events, monkeypatch):
    """What `mysqlsync-dagster sync` does: every table, partitioned ones over all partitions."""
    events.source_exec(
        "CREATE TABLE plain (id INT PRIMARY KEY)",
        "INSERT INTO plain VALUES (1)",
        "CREATE TABLE monthly LIKE events",
        "INSERT INTO monthly SELECT * FROM events",
    )
    hourly = {**DAILY, "partitions": "hourly"}
    monthly = {**DAILY, "table": "monthly", "partitions": "monthly"}
    tables = parse_tables_config([hourly, monthly, {"table": "plain", "primary_key": "id"}])
    environ = {"SOURCE_DB_URL": events.source_url(), "TARGET_DB_URL": events.target_url()}
    for name, value in environ.items():  # the resources read them when the run starts
        monkeypatch.setenv(name, value)
    outcomes = run_sync(tables, Settings.from_environ(environ))
    assert [(o.cfg.table, o.ok, o.rows_written) for o in outcomes] == [
        ("events", True, 9),
        ("monthly", True, 9),
        ("plain", True, 1),
    ]
    assert events.target_rows("events") == events.source_rows("events")
    assert events.target_rows("monthly") == events.source_rows("events")
    assert events.target_rows("plain") == [(1,)]
    with events.target.connect() as conn:
        cursors = conn.exec_driver_sql("SELECT target_table, cursor_value FROM _mysqlsync_state")
        assert cursors.all() == [("plain", None)]  # partitioned tables keep no cursor


def test_partition_status_is_true_after_a_run_of_all_partitions(events):
    """A run without a partition key (`sync`, the demo) syncs every partition, and the
    instance then shows every partition materialized, empty days included; the next such run
    marks only the partitions still unmarked and the latest two."""
    weekly = {**DAILY, "partitions": "weekly", "partition_start": "2024-01-01"}
    [cfg] = parse_tables_config([weekly], "test")
    partitions_def = partitions_definition(cfg)
    every_key = set(partitions_def.get_partition_keys())
    assert len(every_key) > 100  # weeks since 2024, most of them without a row
    key = dg.AssetKey(["events"])
    defs = build_definitions([cfg], Settings.from_environ({}))
    assets = table_assets(defs)
    with dg.instance_for_test() as instance:
        # a backfill of the first two weeks first: those are marked by Dagster itself
        first_two = sorted(every_key)[:2]
        tags = {
            "dagster/asset_partition_range_start": first_two[0],
            "dagster/asset_partition_range_end": first_two[1],
        }
        dg.materialize(assets, resources=events.resources(), instance=instance, tags=tags)
        assert instance.get_materialized_partitions(key) == set(first_two)

        result = dg.materialize(assets, resources=events.resources(), instance=instance)
        assert events.target_rows("events") == events.source_rows("events")
        assert instance.get_materialized_partitions(key) == every_key
        marked = [m.partition for m in result.asset_materializations_for_node("sync_events")]
        assert sorted(filter(None, marked)) == sorted(every_key - set(first_two))
        assert marked[-1] is None  # the run's own report comes last, as `sync` reads it

        result = dg.materialize(assets, resources=events.resources(), instance=instance)
        marked = [m.partition for m in result.asset_materializations_for_node("sync_events")]
        assert marked == [*sorted(every_key)[-2:], None]
        status = instance.get_status_by_partition(key, list(every_key), partitions_def)
        assert set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}


def test_partitioned_asset_describes_its_partitions():
    defs = build_definitions(parse_tables_config([DAILY], "test"), Settings.from_environ({}))
    description = defs.resolve_asset_graph().get(dg.AssetKey(["events"])).description
    assert "daily partitions of `updated_at` from 2024-01-01 (UTC)" in description


# -- the windows themselves (no database) -----------------------------------------------------
def test_window_edges():
    [cfg] = parse_tables_config([DAILY], "test")
    daily = partitions_definition(cfg)
    now = dt.datetime(2024, 1, 10, 12, tzinfo=dt.UTC)
    utc = dt.UTC
    assert window_for_range(daily, "2024-01-01", "2024-01-01", now) == ModifierWindow(
        None, dt.datetime(2024, 1, 2, tzinfo=utc), include_null=True
    )
    assert window_for_range(daily, "2024-01-03", "2024-01-04", now) == ModifierWindow(
        dt.datetime(2024, 1, 3, tzinfo=utc), dt.datetime(2024, 1, 5, tzinfo=utc)
    )
    assert window_for_range(daily, "2024-01-09", "2024-01-10", now) == ModifierWindow(
        dt.datetime(2024, 1, 9, tzinfo=utc), None
    )
    assert window_for_range(daily, "2024-01-01", "2024-01-10", now) == ModifierWindow(
        None, None, include_null=True
    )


def test_window_condition_sql():
    column = sa.column("m")
    start = dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    window = ModifierWindow(start, start + dt.timedelta(days=1), include_null=True)
    naive = window_condition(column, "datetime", window).compile(
        compile_kwargs={"literal_binds": True}
    )
    assert str(naive) == ("m >= '2024-01-02 00:00:00' AND m < '2024-01-03 00:00:00' OR m IS NULL")
    instant = str(
        window_condition(column, "timestamp", ModifierWindow(start, None)).compile(
            compile_kwargs={"literal_binds": True}
        )
    )
    assert instant == "m >= FROM_UNIXTIME(1704128400.0)"
    with pytest.raises(ValueError, match="needs a DATE, DATETIME or TIMESTAMP"):
        window_condition(column, "int", window)


def test_a_partition_run_repairs_its_window_only(events):
    """A partition run re-copies its window and verifies it: a stray target row in the window
    goes (with detect_deletes); damage outside the window waits for its own partition."""
    daily = {**DAILY, "detect_deletes": True}
    assert materialize(events, [daily]).success  # every partition
    events.target_exec(
        "UPDATE events SET note = 'damaged' WHERE id = 5",  # in 2024-01-02
        "UPDATE events SET note = 'damaged' WHERE id = 6",  # in 2024-01-03
        "INSERT INTO events (id, note, updated_at) VALUES (50, 'stray', '2024-01-02 05:00:00')",
    )
    result = materialize(events, [daily], first="2024-01-02")
    assert result.success
    [checksum] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "checksum_match"
    ]
    assert checksum.metadata["rows_repaired_deleted_in_source"].value == 1
    notes = {row[0]: row[1] for row in events.target_rows("events")}
    assert notes[5] == "jan 2" and notes[6] == "damaged" and 50 not in notes
    assert materialize(events, [daily], first="2024-01-03").success
    assert events.target_rows("events") == events.source_rows("events")
