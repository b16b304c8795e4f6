"""A DuckDB target: every MySQL/MariaDB type copied exactly (the README's mapping), in both
modes and both strategies, checked by an independent comparison of the rows."""

import threading
import time

import dagster as dg
import pyarrow as pa
import pytest

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions, table_assets
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.verify.heal import run_all_checks
from mysqlsync_dagster_tests.harness import materialization_metadata
from mysqlsync_dagster_tests.test_fidelity import TYPE_GROUPS
from mysqlsync_dagster_tests.test_postgres_target import assert_round_trip


@pytest.mark.parametrize("mode", ["direct", "staging"])
@pytest.mark.parametrize("group", list(TYPE_GROUPS))
def test_values_round_trip_into_duckdb(duck_sync_env, group, mode):
    assert_round_trip(duck_sync_env, group, mode)


ORDERS = {"table": "orders", "primary_key": "id", "modifier": "updated_at"}


def create_orders(env, rows=100):
    env.source_exec(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, status VARCHAR(20) NOT NULL DEFAULT 'new',"
        " amount DECIMAL(12,2), note TEXT, updated_at DATETIME NULL, KEY ix_updated (updated_at))",
        "INSERT INTO orders SELECT seq, 'new', seq / 10, CONCAT('note ', seq),"
        f" TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_{rows}",
    )


def test_incremental_merge_composite_keys_and_evolution(duck_sync_env):
    env = duck_sync_env
    create_orders(env)
    first = env.sync([ORDERS])
    assert materialization_metadata(first, "sync_orders")["strategy"] == "swap"
    env.source_exec(
        "UPDATE orders SET status = 'paid', updated_at = '2024-02-01 00:00:00' WHERE id IN (3, 50)",
        "INSERT INTO orders VALUES (101, 'new', 1.5, NULL, '2024-02-01 00:00:01')",
    )
    second = env.sync([ORDERS])
    meta = materialization_metadata(second, "sync_orders")
    assert meta["strategy"] == "upsert"
    assert meta["rows_written"] == 4  # 2 updated, 1 new, the row at the old cursor
    assert meta["dagster/row_count"] == 101
    assert env.target_rows("orders") == env.source_rows("orders")
    with env.target.connect() as conn:
        unchanged = conn.exec_driver_sql(
            "SELECT count(DISTINCT _dlt_load_id) FROM orders WHERE id NOT IN (3, 50, 101)"
        ).scalar_one()
    assert unchanged == 1  # the row re-read at the cursor was equal: not rewritten

    env.source_exec(
        "ALTER TABLE orders ADD COLUMN channel VARCHAR(10) NULL, MODIFY amount DECIMAL(14,3)",
        "UPDATE orders SET channel = 'web', updated_at = '2024-05-01' WHERE id = 2",
    )
    result = env.sync([ORDERS])
    meta = materialization_metadata(result, "sync_orders")
    assert "channel" in str(meta["columns_added"]) and "amount" in str(meta["columns_changed"])
    assert env.target_rows("orders") == env.source_rows("orders")

    env.source_exec(
        "CREATE TABLE order_lines (order_id INT, line VARCHAR(10), qty INT,"
        " updated_at DATETIME(3), PRIMARY KEY (order_id, line))",
        "INSERT INTO order_lines VALUES (1, 'a', 1, '2024-01-01'), (1, 'B', 2, '2024-01-01'),"
        " (2, 'a', 3, '2024-01-02')",
    )
    lines = {"table": "order_lines", "primary_key": ["order_id", "line"],
             "modifier": "updated_at", "mode": "staging", "target_schema": "raw"}  # fmt: skip
    assert env.sync([lines]).success
    env.source_exec("UPDATE order_lines SET qty = 9, updated_at = '2024-03-01' WHERE line = 'B'")
    assert env.sync([lines]).success
    env.schema = "raw"
    assert sorted(env.target_rows("order_lines")) == sorted(env.source_rows("order_lines"))


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


def test_downstream_assets_read_the_duckdb_copy(duck_sync_env):
    env = duck_sync_env
    create_orders(env, rows=3000)
    partitioned = {**ORDERS, "partitions": "daily", "partition_start": "2024-01-01"}
    seen = {}

    @dg.asset(ins={"orders": dg.AssetIn(key="orders")})
    def as_arrow(orders: pa.Table) -> None:
        seen["arrow"] = orders

    assert env.sync([partitioned], extra_assets=[as_arrow]).success
    assert seen["arrow"].num_rows == 3000
    assert seen["arrow"].column_names == ["id", "status", "amount", "note", "updated_at"]

    defs = build_definitions(parse_tables_config([partitioned], "test"), Settings.from_environ({}))
    [orders] = table_assets(defs)

    @dg.asset(partitions_def=orders.partitions_def, ins={"orders": dg.AssetIn(key="orders")})
    def daily_report(context: dg.AssetExecutionContext, orders: pa.Table) -> None:
        seen[context.partition_key] = sorted(orders.column("id").to_pylist())

    result = dg.materialize(
        [*defs.assets, daily_report],
        selection=[daily_report],
        partition_key="2024-01-02",
        resources=env.resources(),
    )
    assert result.success
    assert seen["2024-01-02"] == list(range(1440, 2880))
