"""Consistency checks: no false alarm after a clean sync, and every kind of damage caught."""

from __future__ import annotations

import json
import threading
import time

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.db import create_engine
from mysqlsync_dagster.settings import database_settings
from mysqlsync_dagster.tools import cli
from mysqlsync_dagster.verify.compare import (
    CHECKSUM_MATCH,
    ROW_COUNT_MATCH,
    SOURCE_ROW_COUNT,
    KeyRange,
    RowDiff,
    TablePair,
    checksum_match,
    diff_rows,
    interleave,
    keys_after,
    keys_up_to,
    next_chunk_rows,
)
from mysqlsync_dagster.verify.deletes import absent_in_source
from mysqlsync_dagster.verify.heal import run_all_checks

# -- pure logic ------------------------------------------------------------------------------


def test_chunk_size_adapts_towards_half_a_second():
    assert next_chunk_rows(10_000, 0.05) == 40_000  # fast: grow, at most 4x
    assert next_chunk_rows(100_000, 1.0) == 50_000  # slow: shrink to fit 0.5 s
    assert next_chunk_rows(100_000, 0.5) == 100_000
    assert next_chunk_rows(2_000, 10.0) == 1_000  # never below the minimum
    assert next_chunk_rows(1_500_000, 0.0) == 2_000_000  # nor above the maximum


def test_key_bounds_use_index_friendly_predicates():
    table = sa.table("t", sa.column("a"), sa.column("b"))
    dialect = mysql.dialect()
    after = keys_after([table.c.a, table.c.b], (1, "x"))
    up_to = keys_up_to([table.c.a, table.c.b], (5, "y"))
    render = lambda e: str(e.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))  # noqa: E731
    assert render(after) == "t.a > 1 OR t.a = 1 AND t.b > 'x'"
    assert render(up_to) == "t.a < 5 OR t.a = 5 AND t.b <= 'y'"
    assert KeyRange(None, (9,)).split([(3,), (6,)]) == [
        KeyRange(None, (3,)),
        KeyRange((3,), (6,)),
        KeyRange((6,), (9,)),
    ]


def test_diff_rows_and_sample():
    diff = diff_rows({(1,): 10, (2,): 20, (3,): 30}, {(2,): 20, (3,): 31, (4,): 40})
    assert diff == RowDiff(missing_in_target=[(1,)], extra_in_target=[(4,)], changed=[(3,)])
    assert diff.sample(2) == [("missing_in_target", (1,)), ("extra_in_target", (4,))]


# -- against real servers --------------------------------------------------------------------

ITEMS_DDL = (
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, note TEXT NULL,"
    " data BLOB NULL, price FLOAT NULL, ratio DOUBLE NULL, amount DECIMAL(12,2) NULL,"
    " flags BIT(5) NULL, kind ENUM('a','b') NULL, seen TIMESTAMP(3) NULL,"
    " updated_at DATETIME(6) NOT NULL, KEY (updated_at))"
)
ITEMS_ROWS = 3000
# ids step by 2 so that rows can be added between them
ITEMS_INSERT = (
    "INSERT INTO items SELECT seq * 2, CONCAT('name ', seq), IF(MOD(seq, 7) = 0, NULL, REPEAT('n',"
    " MOD(seq, 30))), IF(MOD(seq, 5) = 0, NULL, UNHEX(REPEAT('00FF41', 1 + MOD(seq, 9)))),"
    " seq / 3, seq / 7, seq * 1.25, MOD(seq, 32), ELT(1 + MOD(seq, 2), 'a', 'b'),"
    " FROM_UNIXTIME(1700000000 + seq + 0.125), '2024-01-01' + INTERVAL seq SECOND"
    f" FROM seq_1_to_{ITEMS_ROWS}"
)
ITEMS = {"table": "items", "primary_key": "id", "modifier": "updated_at"}


def config(entry: dict) -> object:
    return parse_tables_config([entry], "test")[0]


@pytest.fixture
def engines(sync_env):
    """Engines built like the product builds them (db.py: time_zone +00:00 sessions)."""
    env = {"SOURCE_DB_URL": sync_env.source_url(), "TARGET_DB_URL": sync_env.target_url()}
    source = create_engine(database_settings("SOURCE", env))
    target = create_engine(database_settings("TARGET", env))
    yield source, target
    source.dispose()
    target.dispose()


def verdicts(outcomes) -> dict[str, bool]:
    return {o.check: o.passed for o in outcomes}


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_checks_pass_after_a_clean_sync(sync_env, engines):
    sync_env.source_exec(
        ITEMS_DDL,
        ITEMS_INSERT,
        "CREATE TABLE order_lines (order_id INT, code VARCHAR(10), qty INT, PRIMARY KEY (order_id, code))",
        "INSERT INTO order_lines SELECT seq DIV 3, ELT(1 + MOD(seq, 3), 'a', 'B', 'c '), seq FROM seq_1_to_900",
    )
    lines = {"table": "order_lines", "primary_key": ["order_id", "code"]}
    result = sync_env.sync([ITEMS, lines])
    assert result.success
    checks = evaluations(result)
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {
        SOURCE_ROW_COUNT,
        ROW_COUNT_MATCH,
        CHECKSUM_MATCH,
    }
    assert all(e.passed for e in result.get_asset_check_evaluations())
    source_count = checks[SOURCE_ROW_COUNT].metadata
    assert source_count["source_rows"].value in (ITEMS_ROWS, 900)
    [items_count] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == ROW_COUNT_MATCH and e.asset_key == dg.AssetKey("items")
    ]
    assert items_count.metadata["source_rows"] == dg.MetadataValue.int(ITEMS_ROWS)
    assert items_count.metadata["target_rows"] == dg.MetadataValue.int(ITEMS_ROWS)
    assert items_count.metadata["difference"] == dg.MetadataValue.int(0)
    # and again in ranges of 100 rows: many boundaries, composite keys, all agree
    source, target = engines
    for entry in (ITEMS, lines):
        outcome = checksum_match(TablePair.open(config(entry), source, target), 100, 100)
        assert outcome.passed, outcome.description
        assert outcome.metadata["chunks"] >= 10
        assert outcome.metadata["mismatched_chunks"] == 0


def test_checks_pass_while_a_writer_inserts_during_the_sync(sync_env):
    sync_env.source_exec(
        "CREATE TABLE events (id INT AUTO_INCREMENT PRIMARY KEY, payload VARCHAR(40),"
        " updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, KEY (updated_at))",
        "INSERT INTO events (payload, updated_at) SELECT CONCAT('old ', seq),"
        " '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_2000",
    )
    stop = threading.Event()
    inserted = [0]

    def writer() -> None:
        with sync_env.source.connect() as conn:
            while not stop.is_set():
                conn.exec_driver_sql(
                    "INSERT INTO events (payload) VALUES ('new'), ('new'), ('new')"
                )
                conn.commit()
                inserted[0] += 3
                time.sleep(0.002)

    table = {**ITEMS, "table": "events", "batch_size": 300}
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(2):  # the first sync copies (swap), the second upserts
            result = sync_env.sync([table])
            assert result.success
            failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
            assert not failed, [(e.check_name, e.description) for e in failed]
            assert len(result.get_asset_check_evaluations()) == 3
    finally:
        stop.set()
        thread.join()
    assert inserted[0] > 0


DAMAGE = {
    "target row deleted": ("DELETE FROM items WHERE id = 34", "missing_in_target", 34),
    "target row added": (
        "INSERT INTO items (id, name, updated_at) VALUES (35, 'ghost', '2024-01-01')",
        "extra_in_target",
        35,
    ),
    "letter case": ("UPDATE items SET name = 'Name 900' WHERE id = 1800", "changed", 1800),
    "trailing space": ("UPDATE items SET name = 'name 1201 ' WHERE id = 2402", "changed", 2402),
    "one byte of a blob": (
        "UPDATE items SET data = CONCAT(LEFT(data, 4), 'B', SUBSTRING(data, 6)) WHERE id = 4",
        "changed",
        4,
    ),
    "null to empty string": ("UPDATE items SET note = '' WHERE id = 14", "changed", 14),
    "float": ("UPDATE items SET price = price + 0.0001 WHERE id = 600", "changed", 600),
    "timestamp": (
        "UPDATE items SET seen = seen + INTERVAL 1 SECOND WHERE id = 5998",
        "changed",
        5998,
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_kind_of_damage_is_caught(sync_env, engines, damage):
    statement, difference, key = DAMAGE[damage]
    sync_env.source_exec(ITEMS_DDL, ITEMS_INSERT)
    assert sync_env.sync([ITEMS]).success
    if damage == "null to empty string":
        assert sync_env.source_rows("items")[6][2] is None  # id 14 has note NULL
    sync_env.target_exec(statement)
    source, target = engines
    outcomes = {o.check: o for o in run_all_checks(config(ITEMS), source, target)}
    assert outcomes[SOURCE_ROW_COUNT].passed
    checksum = outcomes[CHECKSUM_MATCH]
    assert checksum.metadata["mismatched_chunks"] == 1
    count = outcomes[ROW_COUNT_MATCH]
    expected_difference = {"missing_in_target": -1, "extra_in_target": 1}.get(difference, 0)
    assert count.metadata["difference"] == expected_difference
    if difference == "extra_in_target":
        # a target row whose key the source does not have: kept on purpose (detect_deletes is
        # off), a warning and never a failure
        assert checksum.passed and checksum.metadata["rows_deleted_in_source_kept"] == 1
        assert "detect_deletes" in checksum.description
        assert not count.passed and count.warning and not count.blocking
        assert "detect_deletes" in count.description
    else:
        # `check` only reads: the differing row is named, not repaired
        assert not checksum.passed
        assert checksum.metadata["differing_keys"] == [
            {"difference": difference, "key": {"id": key}}
        ]
        assert count.passed == (expected_difference == 0)


def test_damage_found_in_many_chunks_with_composite_keys(sync_env, engines):
    sync_env.source_exec(
        "CREATE TABLE order_lines (order_id INT, line_no INT, sku VARCHAR(20), PRIMARY KEY (order_id, line_no))",
        "INSERT INTO order_lines SELECT seq DIV 4, MOD(seq, 4), CONCAT('sku', seq) FROM seq_0_to_5999",
    )
    lines = {"table": "order_lines", "primary_key": ["order_id", "line_no"]}
    assert sync_env.sync([lines]).success
    sync_env.target_exec(
        "UPDATE order_lines SET sku = 'SKU7' WHERE order_id = 1 AND line_no = 3",
        "DELETE FROM order_lines WHERE order_id = 1000 AND line_no = 2",
        "INSERT INTO order_lines (order_id, line_no, sku) VALUES (1499, 9, 'extra')",
    )
    source, target = engines
    outcome = checksum_match(TablePair.open(config(lines), source, target), 500, 500)
    assert not outcome.passed
    assert outcome.metadata["mismatched_chunks"] == 3
    assert sorted(
        (k["difference"], k["key"]["order_id"], k["key"]["line_no"])
        for k in outcome.metadata["differing_keys"]
    ) == [("changed", 1, 3), ("extra_in_target", 1499, 9), ("missing_in_target", 1000, 2)]


@pytest.mark.parametrize(
    "table",
    [
        {"table": "events", "primary_key": "id", "modifier": "updated_at"},
        {"table": "events", "primary_key": ["region", "id"], "modifier": "updated_at"},
    ],
    ids=["single key", "composite key"],
)
def test_detect_deletes_removes_rows_deleted_in_the_source(sync_env, table):
    key = table["primary_key"]
    key = key if isinstance(key, str) else ", ".join(key)
    sync_env.source_exec(
        "CREATE TABLE events (region CHAR(2) NOT NULL, id INT NOT NULL, v INT,"
        f" updated_at DATETIME NOT NULL, PRIMARY KEY ({key}), KEY (updated_at))",
        "INSERT INTO events SELECT ELT(1 + MOD(seq, 3), 'eu', 'us', 'ap'), seq, seq,"
        " '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_1500",
    )
    without = sync_env.sync([table])
    assert without.success
    sync_env.source_exec(
        "DELETE FROM events WHERE id IN (1, 700, 701, 1500)",
        "UPDATE events SET v = -v, updated_at = '2025-01-01' WHERE id = 5",
    )
    # without the option: the rows stay on purpose; a warning says so and what to do, and the
    # run succeeds (a table whose application deletes rows is not a failed asset)
    result = sync_env.sync([table], raise_on_error=False)
    assert result.success
    checks = evaluations(result)
    count = checks[ROW_COUNT_MATCH]
    assert not count.passed and count.severity == dg.AssetCheckSeverity.WARN
    assert count.metadata["difference"].value == 4
    assert count.metadata["rows_deleted_in_source_kept"].value == 4
    assert "detect_deletes" in count.description
    assert checks[CHECKSUM_MATCH].passed
    assert len(sync_env.target_rows("events")) == 1500
    # and the next run finds the same rows kept without comparing the key sets again
    again = evaluations(sync_env.sync([table], raise_on_error=False))
    assert again[ROW_COUNT_MATCH].severity == dg.AssetCheckSeverity.WARN
    assert "key_sets_compared" not in again[CHECKSUM_MATCH].metadata
    # with it: deleted in small batches, counted, and every check passes
    result = sync_env.sync([{**table, "detect_deletes": True}])
    assert result.success
    [materialization] = result.asset_materializations_for_node("sync_events")
    assert materialization.metadata["rows_deleted"].value == 4
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert sync_env.target_rows("events", "id") == sync_env.source_rows("events", "id")


def test_deletes_are_confirmed_by_the_source_collation(sync_env, engines):
    """A key the source holds in another letter case is the same row: never deleted."""
    sync_env.source_exec(
        "CREATE TABLE tags (name VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY)",
        "INSERT INTO tags VALUES ('ABC'), ('gone')",
    )
    sync_env.target_exec(
        "CREATE TABLE tags (name VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY)",
        "INSERT INTO tags VALUES ('abc'), ('gone'), ('zzz')",
    )
    source, target = engines
    pair = TablePair.open(config({"table": "tags", "primary_key": "name"}), source, target)
    assert absent_in_source(pair, [("abc",), ("zzz",)]) == [("zzz",)]


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(sync_env, tmp_path, monkeypatch):
    def configure(tables: list[dict], source_url: str | None = None) -> None:
        path = tmp_path / "tables.json"
        path.write_text(json.dumps(tables))
        monkeypatch.setenv("TABLES_CONFIG", str(path))
        monkeypatch.setenv("SOURCE_DB_URL", source_url or sync_env.source_url())
        monkeypatch.setenv("TARGET_DB_URL", sync_env.target_url())

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return configure


def test_check_cli_verdicts_and_exit_codes(sync_env, cli_env, capsys):
    sync_env.source_exec(ITEMS_DDL, ITEMS_INSERT)
    cli_env([ITEMS])
    assert cli.main(["sync"]) == 0
    summary = capsys.readouterr().out
    assert "3/3 ok" in summary

    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "items  row_count_match  ok" in out
    assert f"source_rows={ITEMS_ROWS:,} target_rows={ITEMS_ROWS:,} difference=0" in out
    assert "items  checksum_match  ok" in out

    sync_env.target_exec("DELETE FROM items WHERE id = 100")
    assert cli.main(["check", "items"]) == 1
    out = capsys.readouterr().out
    assert "items  row_count_match  FAILED" in out
    assert "difference=-1" in out
    assert "missing_in_target {'id': 100}" in out

    assert cli.main(["check", "nope"]) == 2
    assert "unknown table" in capsys.readouterr().err


def test_check_cli_unreachable_source_fails_without_leaking_the_password(cli_env, capsys):
    cli_env([ITEMS], source_url="mysql://syncer:Pa55-w0rd@127.0.0.1:9/shop")
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "items  source_row_count  failed" in out
    assert "items  row_count_match  FAILED" in out
    assert "Pa55-w0rd" not in out


def test_sync_cli_fails_on_a_blocking_check(sync_env, cli_env, capsys):
    """A difference the sync cannot repair (a trigger on the target rewrites every row it
    writes) fails the blocking checksum check, which names the key."""
    sync_env.source_exec(ITEMS_DDL, ITEMS_INSERT)
    cli_env([ITEMS])
    assert cli.main(["sync"]) == 0
    sync_env.target_exec(
        "CREATE TRIGGER items_stuck BEFORE UPDATE ON items FOR EACH ROW SET NEW.name = 'stuck'",
        "UPDATE items SET note = 'edited outside the sync' WHERE id = 100",
    )
    capsys.readouterr()
    assert cli.main(["sync"]) == 1
    out = capsys.readouterr().out
    assert "2/3 ok" in out
    assert "check checksum_match" in out and "still differ after repair" in out
    assert "{'id': 100}" in out


def test_missing_source_table_fails_source_row_count(sync_env):
    result = sync_env.sync([ITEMS], raise_on_error=False)
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == SOURCE_ROW_COUNT
    assert not evaluation.passed
    assert evaluation.description == (
        f"table 'items' does not exist in the source database {sync_env.source_db!r}"
    )


def test_interleave_samples_every_range():
    assert interleave([[1, 2, 3], [10], [20, 21]], 4) == [1, 10, 20, 2]


def test_sync_cli_json_output(sync_env, cli_env, capsys):
    sync_env.source_exec(ITEMS_DDL, ITEMS_INSERT)
    cli_env([ITEMS])
    assert cli.main(["sync", "--json", "items"]) == 0
    [outcome] = json.loads(capsys.readouterr().out)
    assert outcome["table"] == "items" and outcome["ok"] is True
    assert outcome["strategy"] == "swap"
    assert outcome["rows_read"] == outcome["rows_written"] == ITEMS_ROWS
    assert outcome["checks"] == "3/3 ok" and outcome["error"] is None
    assert outcome["metadata"]["dagster/row_count"] == ITEMS_ROWS
    assert outcome["metadata"]["rows_per_second"] > 0
