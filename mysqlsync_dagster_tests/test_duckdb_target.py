"""A DuckDB target: every MySQL/MariaDB type copied exactly (the README's mapping), in both
modes and both strategies, checked by an independent comparison of the rows."""

import json
import os
import threading
import time
from pathlib import Path

import pytest

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.verify.heal import run_all_checks
from mysqlsync_dagster_tests.harness import materialization_metadata, python_lines
from mysqlsync_dagster_tests.test_fidelity import TYPE_GROUPS
from mysqlsync_dagster_tests.test_postgres_target import ORDERS, assert_round_trip, create_orders


@pytest.mark.parametrize("mode", ["direct", "staging"])
@pytest.mark.parametrize("group", list(TYPE_GROUPS))
def test_values_round_trip_into_duckdb(duck_sync_env, group, mode):
    assert_round_trip(duck_sync_env, group, mode)


def test_schema_evolution_in_a_duckdb_copy(duck_sync_env):
    """(The incremental merge, composite keys and the input manager are tested for both
    analytics targets in test_postgres_target.py.)"""
    env = duck_sync_env
    create_orders(env)
    assert env.sync([ORDERS]).success
    env.source_exec(
        "ALTER TABLE orders ADD COLUMN channel VARCHAR(10) NULL, MODIFY amount DECIMAL(14,3)",
        "UPDATE orders SET channel = 'web', updated_at = '2024-05-01' WHERE id = 2",
    )
    result = env.sync([ORDERS])
    meta = materialization_metadata(result, "sync_orders")
    assert "channel" in str(meta["columns_added"]) and "amount" in str(meta["columns_changed"])
    assert env.target_rows("orders") == env.source_rows("orders")


def test_full_refresh_swap_keeps_views_and_the_checks_find_and_repair(duck_sync_env):
    env = duck_sync_env
    env.source_exec(
        "CREATE TABLE codes (code VARCHAR(12) CHARACTER SET ascii NOT NULL,"
        " region CHAR(2) CHARACTER SET latin1 NOT NULL, n DOUBLE, PRIMARY KEY (code, region))",
        "INSERT INTO codes SELECT CONCAT(ELT(1 + seq % 4, 'a', 'B', 'c', 'D'), seq),"
        " ELT(1 + seq % 3, 'de', 'ÄÖ', 'fr'), seq / 7 FROM seq_1_to_30000",
    )
    cfg = {"table": "codes", "primary_key": ["code", "region"], "verify_budget": 30000}
    assert env.sync([cfg]).success
    env.target_exec("CREATE VIEW stg_codes AS SELECT code, n * 2 AS n2 FROM codes")
    env.source_exec("DELETE FROM codes WHERE n > 4000")
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:  # readers see the old rows or the new ones, never an empty table
        with env.target.connect() as conn:
            while not stop.is_set():
                seen.append(conn.exec_driver_sql("SELECT count(*) FROM codes").scalar_one())
                conn.commit()
                time.sleep(0.005)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = env.sync([cfg])
    finally:
        stop.set()
        thread.join()
    assert result.success
    assert len(seen) > 5 and set(seen) <= {30000, 28000}, sorted(set(seen))
    assert seen[-1] == 28000
    assert materialization_metadata(result, "sync_codes")["strategy"] == "swap"
    with env.target.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM stg_codes").scalar_one() == 28000
    assert sorted(env.target_rows("codes")) == sorted(env.source_rows("codes"))

    env.target_exec("UPDATE codes SET n = n + 1e-12 WHERE code = 'B25001'")
    parsed = parse_tables_config([cfg], "test")[0]
    outcomes = {o.check: o for o in run_all_checks(parsed, env.source, env.target, full=True)}
    assert not outcomes["checksum_match"].passed
    assert "'code': 'B25001'" in str(outcomes["checksum_match"].metadata["differing_keys"])
    assert env.sync([cfg]).success
    assert sorted(env.target_rows("codes")) == sorted(env.source_rows("codes"))


def free_blocks(env) -> int:
    """Blocks of the DuckDB file that hold nothing (written, then left by a rewrite)."""
    with env.target.connect() as conn:
        return conn.exec_driver_sql("SELECT free_blocks FROM pragma_database_size()").scalar_one()


def test_a_copy_fills_its_file_compactly_and_merges_scattered_changes(duck_sync_env):
    """A full copy is written in DuckDB's whole row groups, by one thread, so the checkpoint
    has nothing to rewrite and the file holds no free blocks (partial row groups, merged at
    the checkpoint, left 44 of 164 blocks free in a 1M-row copy); an incremental run merges
    rows scattered over every row group, and a row it re-reads unchanged keeps its load id."""
    env = duck_sync_env
    rows = 500_000
    create_orders(env, rows)
    cfg = {**ORDERS, "batch_size": 50_000, "verify_budget": 50_000}
    first = env.sync([cfg])
    assert materialization_metadata(first, "sync_orders")["strategy"] == "swap"
    assert free_blocks(env) == 0

    env.source_exec(  # every 100th row, and one past the cursor
        "UPDATE orders SET status = 'paid', amount = amount + 1,"
        " updated_at = updated_at + INTERVAL 1 YEAR WHERE id % 100 = 7",
        "INSERT INTO orders VALUES (500001, 'new', NULL, 'late', '2030-01-01 00:00:00')",
    )
    second = env.sync([cfg])
    meta = materialization_metadata(second, "sync_orders")
    assert meta["strategy"] == "upsert"
    assert meta["rows_written"] == rows // 100 + 2  # and the row at the old cursor, re-read
    with env.target.connect() as conn:
        loads = dict(
            conn.exec_driver_sql(
                "SELECT id % 100 = 7 OR id > 500000, count(DISTINCT _dlt_load_id)"
                " FROM orders GROUP BY ALL"
            ).fetchall()
        )
    assert loads == {True: 1, False: 1}
    assert sorted(env.target_rows("orders")) == sorted(env.source_rows("orders"))


# A CLI run into DuckDB, then pandas imported by the same interpreter: DuckDB sees its values.
_SYNC_THEN_PANDAS = """
import sys
from mysqlsync_dagster.tools import cli
code = cli.main(['--config', sys.argv[1], 'sync', '--json'])
print('pandas imported' if 'pandas' in sys.modules else 'no pandas')
import duckdb, pandas
with duckdb.connect(sys.argv[2], read_only=True) as db:
    print(db.execute('SELECT ? IS NULL, count(*) FROM orders', [pandas.NaT]).fetchone())
sys.exit(code)
"""


def test_a_run_into_duckdb_does_not_import_pandas(duck_sync_env, tmp_path: Path):
    """DuckDB's binding imports pandas for any statement with parameters (0.2-0.3 s a run);
    a sync refuses it that import (`db._NoPandasForParameters`), and a later import of pandas
    in the same process works, its values still understood by DuckDB."""
    env = duck_sync_env
    create_orders(env, rows=40)
    config = tmp_path / "tables.json"
    config.write_text(json.dumps([ORDERS]))
    environ = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {
        "SOURCE_DB_URL": env.source_url(),
        "TARGET_DB_URL": env.target_url(),
    }
    env.target.dispose()  # the file is the sync's to write
    [line], after = python_lines(
        _SYNC_THEN_PANDAS, str(config), env.path, environ=environ, cwd=tmp_path
    )
    assert line["ok"] and line["checks"] == "3/3 ok" and line["rows_written"] == 40
    assert after.split("\n")[1:3] == ["no pandas", "(True, 40)"]


_SYNC_THEN_MODULES = """
import sys
from mysqlsync_dagster.tools import cli
code = cli.main(['--config', sys.argv[1], 'sync', '--json'])
print('imported:', *sorted(m for m in ('pyarrow', 'numpy', 'pandas', 'dlt') if m in sys.modules))
sys.exit(code)
"""


def test_a_run_that_reads_no_rows_imports_no_arrow(duck_sync_env, tmp_path: Path):
    """A run that finds nothing new to copy verifies its slice without importing pyarrow
    (0.45 s of such a run: pyarrow, numpy and pyarrow.compute); one that copies rows does."""
    env = duck_sync_env
    create_orders(env, rows=40)
    config = tmp_path / "tables.json"
    config.write_text(json.dumps([{**ORDERS, "lag_seconds": 0}]))
    environ = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {
        "SOURCE_DB_URL": env.source_url(),
        "TARGET_DB_URL": env.target_url(),
    }
    env.target.dispose()  # the file is the sync's to write
    runs = [
        python_lines(_SYNC_THEN_MODULES, str(config), environ=environ, cwd=tmp_path)
        for _ in range(2)
    ]
    (first,), imported_first = runs[0]
    (second,), imported_second = runs[1]
    assert first["ok"] and first["rows_written"] == 40
    assert "pyarrow" in imported_first.split()
    assert second["ok"] and second["checks"] == "3/3 ok" and second["rows_written"] <= 1
    assert second["metadata"]["rows_verified"] >= 40
    assert imported_second.split() == ["imported:"]
