"""A PostgreSQL target: every MySQL/MariaDB type copied exactly (the README's mapping), in
both modes and both strategies, checked by an independent comparison of the rows."""

import dataclasses
import datetime as dt
import threading
import time
from decimal import Decimal

import dagster as dg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions, table_assets
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.targets.postgres.state import SOURCE_PROOF_COLUMNS
from mysqlsync_dagster.verify.compare import TablePair
from mysqlsync_dagster.verify.heal import run_all_checks
from mysqlsync_dagster.verify.idle import read_clock
from mysqlsync_dagster_tests.harness import failure_message, materialization_metadata
from mysqlsync_dagster_tests.test_fidelity import TYPE_GROUPS
from mysqlsync_dagster_tests.test_retries import fast_retries, retry_events  # noqa: F401


def assert_round_trip(env, group, mode):
    """A fidelity group synced by swap, again, then by the incremental path: the rows read back
    independently equal the source's, and all three checks pass (shared with the DuckDB tests)."""
    ddl, inserts = TYPE_GROUPS[group]
    env.source_exec(ddl, *inserts)
    table = {"table": "t", "primary_key": "id", "mode": mode}
    result = env.sync([table])
    assert result.success
    source_rows = env.source_rows("t")
    assert len(source_rows) == len(inserts)
    assert env.target_rows("t") == source_rows
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"source_row_count": True, "row_count_match": True, "checksum_match": True}
    # a full refresh again (swap), then the incremental path (stage + keyed merge)
    assert env.sync([table]).success
    assert env.target_rows("t") == source_rows
    incremental = {**table, "modifier": "id"}
    assert env.sync([incremental]).success
    result = env.sync([incremental])
    assert result.success
    assert materialization_metadata(result, "sync_t")["strategy"] == "upsert"
    assert env.target_rows("t") == source_rows


@pytest.mark.parametrize("mode", ["direct", "staging"])
@pytest.mark.parametrize("group", list(TYPE_GROUPS))
def test_values_round_trip_into_postgres(pg_sync_env, group, mode):
    assert_round_trip(pg_sync_env, group, mode)


ORDERS = {"table": "orders", "primary_key": "id", "modifier": "updated_at"}


def create_orders(env, rows=100):
    env.source_exec(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, status VARCHAR(20) NOT NULL DEFAULT 'new',"
        " amount DECIMAL(12,2), note TEXT, updated_at DATETIME NULL, KEY ix_updated (updated_at),"
        " KEY ix_note (note(10)))",
        "INSERT INTO orders SELECT seq, 'new', seq / 10, CONCAT('note ', seq),"
        f" TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_{rows}",
    )


def parse(cfg):
    return parse_tables_config([cfg], "test")[0]


def pg_types(env, table):
    with env.target.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT column_name, format_type(atttypid, atttypmod), attnotnull"
                " FROM information_schema.columns c JOIN pg_attribute a"
                " ON a.attrelid = to_regclass(quote_ident(c.table_schema) || '.' ||"
                " quote_ident(c.table_name)) AND a.attname = c.column_name"
                " WHERE c.table_schema = :s AND c.table_name = :t ORDER BY c.ordinal_position"
            ),
            {"s": env.schema, "t": table},
        ).all()


def test_mapped_types_keys_and_indexes(pg_sync_env):
    env = pg_sync_env
    env.source_exec(TYPE_GROUPS["integers"][0].replace("CREATE TABLE t", "CREATE TABLE ints"))
    create_orders(env, rows=5)
    assert env.sync([{"table": "ints", "primary_key": "id"}, ORDERS]).success
    assert [(n, t) for n, t, _ in pg_types(env, "ints")] == [
        ("id", "integer"),
        ("ti", "smallint"),
        ("tiu", "smallint"),
        ("si", "smallint"),
        ("siu", "integer"),
        ("mi", "integer"),
        ("miu", "integer"),
        ("i", "integer"),
        ("iu", "bigint"),
        ("bi", "bigint"),
        ("biu", "numeric(20,0)"),
        ("b1", "smallint"),
        ("yr", "smallint"),
        ("_dlt_load_id", "text"),
        ("_dlt_id", "text"),
    ]
    columns = {n: (t, notnull) for n, t, notnull in pg_types(env, "orders")}
    assert columns["status"] == ("character varying(20)", True)
    assert columns["amount"] == ("numeric(12,2)", False)
    assert columns["updated_at"] == ("timestamp(0) without time zone", False)
    with env.target.connect() as conn:
        indexes = dict(
            conn.execute(
                sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'orders'")
            ).all()
        )
        default = conn.execute(
            sa.text(
                "SELECT column_default FROM information_schema.columns"
                " WHERE table_name = 'orders' AND column_name = 'status'"
            )
        ).scalar_one()
    assert set(indexes) == {"orders_pkey", "orders_ix_updated", "orders_ix_note"}
    assert "(updated_at)" in indexes["orders_ix_updated"]
    assert 'left"(note, 10)' in indexes["orders_ix_note"]
    assert default.startswith("'new'")


@pytest.mark.parametrize("target", ["pg_sync_env", "duck_sync_env"])
def test_incremental_merge_and_composite_keys(request, target):
    env = request.getfixturevalue(target)
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
        cursor = conn.exec_driver_sql(
            "SELECT cursor_value FROM _mysqlsync_state WHERE target_table = 'orders'"
        ).scalar_one()
        unchanged = conn.exec_driver_sql(
            "SELECT count(DISTINCT _dlt_load_id) FROM orders WHERE id NOT IN (3, 50, 101)"
        ).scalar_one()
    assert cursor == "2024-02-01 00:00:01"
    assert unchanged == 1  # the row re-read at the cursor was equal: not rewritten

    env.source_exec(
        "CREATE TABLE order_lines (order_id INT, line VARCHAR(10), qty INT, updated_at DATETIME(3),"
        " PRIMARY KEY (order_id, line))",
        "INSERT INTO order_lines VALUES (1, 'a', 1, '2024-01-01'), (1, 'B', 2, '2024-01-01'),"
        " (2, 'a', 3, '2024-01-02')",
    )
    lines = {"table": "order_lines", "primary_key": ["order_id", "line"], "modifier": "updated_at",
             "mode": "staging"}  # fmt: skip
    assert env.sync([lines]).success
    env.source_exec("UPDATE order_lines SET qty = 9, updated_at = '2024-03-01' WHERE line = 'B'")
    assert env.sync([lines]).success
    # ordered by the key in each engine's own order ('B' < 'a' in the target's "C" collation)
    assert sorted(env.target_rows("order_lines")) == sorted(env.source_rows("order_lines"))


def test_full_refresh_swaps_keeping_readers_views_and_grants(pg_sync_env):
    env = pg_sync_env
    env.source_exec(
        "CREATE TABLE ref (id INT PRIMARY KEY, name VARCHAR(40))",
        "INSERT INTO ref SELECT seq, CONCAT('name ', seq) FROM seq_1_to_20000",
    )
    cfg = {"table": "ref", "primary_key": "id", "batch_size": 2000}
    assert env.sync([cfg]).success
    env.target_exec(
        "DROP ROLE IF EXISTS analyst",
        "CREATE ROLE analyst",
        "GRANT SELECT ON ref TO analyst",
    )
    env.source_exec(
        "DELETE FROM ref WHERE id <= 1000",
        "INSERT INTO ref SELECT seq, 'new' FROM seq_20001_to_26000",
    )
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        with env.target.connect() as conn:
            while not stop.is_set():
                seen.append(conn.exec_driver_sql("SELECT count(*) FROM ref").scalar_one())
                conn.commit()
                time.sleep(0.01)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = env.sync([cfg])
    finally:
        stop.set()
        thread.join()
    assert result.success
    assert materialization_metadata(result, "sync_ref")["strategy"] == "swap"
    assert len(seen) > 5 and set(seen) <= {20000, 25000}, sorted(set(seen))
    assert seen[-1] == 25000
    assert env.target_rows("ref") == env.source_rows("ref")
    with env.target.connect() as conn:
        grants = (
            conn.exec_driver_sql(
                "SELECT privilege_type FROM information_schema.role_table_grants"
                " WHERE table_name = 'ref' AND grantee = 'analyst'"
            )
            .scalars()
            .all()
        )
        indexes = (
            conn.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE tablename = 'ref'")
            .scalars()
            .all()
        )
    assert grants == ["SELECT"]
    assert indexes == ["ref_pkey"]
    # a view built on the table (a dbt staging model) keeps reading the refreshed rows
    env.target_exec("CREATE VIEW stg_ref AS SELECT id, upper(name) AS name FROM ref")
    env.source_exec("DELETE FROM ref WHERE id > 25000")
    assert env.sync([cfg]).success
    with env.target.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM stg_ref").scalar_one() == 24000
    assert env.target_rows("ref") == env.source_rows("ref")
    env.target_exec("DROP VIEW stg_ref", "DROP OWNED BY analyst", "DROP ROLE analyst")


def test_target_schema_and_evolution(pg_sync_env):
    env = pg_sync_env
    create_orders(env, rows=10)
    cfg = {**ORDERS, "target_schema": "raw", "target_table": "orders_copy"}
    assert env.sync([cfg]).success
    env.schema = "raw"
    assert env.target_rows("orders_copy") == env.source_rows("orders")
    env.source_exec(
        "ALTER TABLE orders ADD COLUMN channel VARCHAR(10) NULL,"
        " MODIFY status VARCHAR(40) NOT NULL DEFAULT 'new'",
        "UPDATE orders SET channel = 'web', updated_at = '2024-05-01' WHERE id = 2",
    )
    result = env.sync([cfg])
    assert result.success
    meta = materialization_metadata(result, "sync_orders_copy")
    assert "channel" in str(meta["columns_added"]) and "status" in str(meta["columns_changed"])
    assert env.target_rows("orders_copy") == env.source_rows("orders")
    columns = {n: t for n, t, _ in pg_types(env, "orders_copy")}
    assert columns["status"] == "character varying(40)"


def test_a_nul_character_fails_clearly_and_writes_nothing(pg_sync_env):
    env = pg_sync_env
    env.source_exec(
        "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT)",
        "INSERT INTO notes VALUES (1, 'fine'), (2, CONCAT('a', CHAR(0), 'b'))",
    )
    result = env.sync([{"table": "notes", "primary_key": "id"}], raise_on_error=False)
    assert not result.success
    message = failure_message(result, "sync_notes")
    assert "'body'" in message and "{'id': '2'}" in message and "NUL" in message
    with env.target.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM notes").scalar_one() == 0


def test_checks_find_a_changed_value_of_each_kind_and_the_run_repairs_it(pg_sync_env):
    env = pg_sync_env
    ddl, inserts = TYPE_GROUPS["numeric"]
    env.source_exec(ddl, *inserts)
    cfg = {"table": "t", "primary_key": "id"}
    assert env.sync([cfg]).success
    damage = {
        "d": "d = d - 0.000000000000000000000000000001",
        "f": "f = 0.2",
        "db": "db = db * (1 - 1e-15)",
        "b64": "b64 = B'0111111111111111111111111111111111111111111111111111111111111111'",
    }
    for column, change in damage.items():
        env.target_exec(f"UPDATE t SET {change} WHERE id = 1")
        outcomes = {o.check: o for o in run_all_checks(parse(cfg), env.source, env.target)}
        assert not outcomes["checksum_match"].passed, column
        assert "{'id': 1}" in outcomes["checksum_match"].description, column
        assert env.sync([cfg]).success  # a full refresh copies it again
        assert env.target_rows("t") == env.source_rows("t")


@pytest.mark.parametrize("target", ["pg_sync_env", "duck_sync_env"])
def test_downstream_assets_read_the_copy_whole_or_by_partition(request, target):
    env = request.getfixturevalue(target)
    create_orders(env, rows=3000)  # one row a minute from 2024-01-01 00:01: ~2 days
    env.source_exec("UPDATE orders SET updated_at = '2023-06-01' WHERE id = 5")
    partitioned = {**ORDERS, "partitions": "daily", "partition_start": "2024-01-01",
                   "target_schema": "raw"}  # fmt: skip
    seen = {}

    @dg.asset(ins={"orders": dg.AssetIn(key="orders")})
    def as_arrow(orders: pa.Table) -> None:
        seen["arrow"] = orders

    assert env.sync([partitioned], extra_assets=[as_arrow]).success
    assert seen["arrow"].num_rows == 3000
    assert seen["arrow"].column_names == ["id", "status", "amount", "note", "updated_at"]
    amounts = dict(zip(*seen["arrow"].select(["id", "amount"]).to_pydict().values(), strict=True))
    assert amounts[1] == Decimal("0.10")  # (rows come in no particular order)

    defs = build_definitions(parse_tables_config([partitioned], "test"), Settings.from_environ({}))
    [orders] = table_assets(defs)

    @dg.asset(
        partitions_def=orders.partitions_def,
        ins={"orders": dg.AssetIn(key="orders")},
    )
    def daily_report(context: dg.AssetExecutionContext, orders: pa.Table) -> None:
        seen[context.partition_key] = sorted(orders.column("id").to_pylist())

    for day in ("2024-01-01", "2024-01-02"):
        result = dg.materialize(
            [*defs.assets, daily_report],
            selection=[daily_report],
            partition_key=day,
            resources=env.resources(),
        )
        assert result.success
    assert seen["2024-01-01"] == list(range(1, 1440))
    assert seen["2024-01-02"] == list(range(1440, 2880))


def test_text_keys_compare_in_one_order_across_engines(pg_sync_env):
    """MySQL orders 'a' < 'B' (case-insensitive), the copy's "C" collation 'B' < 'a': the
    checks' key ranges must hold the same rows on both sides anyway."""
    env = pg_sync_env
    env.source_exec(
        "CREATE TABLE codes (code VARCHAR(12) CHARACTER SET ascii NOT NULL,"
        " region CHAR(2) CHARACTER SET latin1 NOT NULL, n INT, PRIMARY KEY (code, region))",
        "INSERT INTO codes SELECT CONCAT(ELT(1 + seq % 4, 'a', 'B', 'c', 'D'), seq),"
        " ELT(1 + seq % 3, 'de', 'ÄÖ', 'fr'), seq FROM seq_1_to_30000",
    )
    cfg = {"table": "codes", "primary_key": ["code", "region"], "verify_budget": 30000}
    result = env.sync([cfg])
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["checksum_match"].passed
    assert sorted(env.target_rows("codes")) == sorted(env.source_rows("codes"))
    env.target_exec("UPDATE codes SET n = -1 WHERE code = 'B29001'")
    outcomes = {o.check: o for o in run_all_checks(parse(cfg), env.source, env.target, full=True)}
    assert not outcomes["checksum_match"].passed
    assert "'code': 'B29001', 'region': 'de'" in str(
        outcomes["checksum_match"].metadata["differing_keys"]
    )
    assert outcomes["row_count_match"].passed


def test_zero_dates_and_the_year_zero_become_null_and_are_counted(pg_sync_env):
    env = pg_sync_env
    with env.source.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(
            "CREATE TABLE t (id INT PRIMARY KEY, d DATE, dt DATETIME(3),"
            " ts TIMESTAMP NULL DEFAULT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO t VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00'),"
            " (2, '2024-00-10', '0000-05-01 10:00:00.5', NULL),"
            " (3, '2024-01-02', '2024-01-02 03:04:05.250', '2024-01-02 03:04:05')"
        )
    result = env.sync([{"table": "t", "primary_key": "id"}])
    assert result.success
    assert materialization_metadata(result, "sync_t")["zero_dates_to_null"] == 5
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["checksum_match"]
    rows = env.target_rows("t")
    assert rows[:2] == [(1, None, None, None), (2, None, None, None)]
    assert rows[2][1:3] == (dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4, 5, 250000))
    assert rows[2][3] == Decimal(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp())


@pytest.mark.usefixtures("fast_retries")
def test_a_lock_timeout_on_the_target_is_retried_and_converges(pg_sync_env):
    env = pg_sync_env
    create_orders(env, rows=20)
    assert env.sync([ORDERS]).success
    env.source_exec("UPDATE orders SET status = 'paid', updated_at = '2024-03-01' WHERE id = 7")
    env.target_exec(f"ALTER DATABASE \"{env.target_db}\" SET lock_timeout = '500ms'")
    env.target.dispose()
    holder = env.target.connect()
    # the run's last write (its state row) waits for this lock, times out (55P03): retried
    holder.exec_driver_sql(
        "SELECT * FROM _mysqlsync_state WHERE target_table = 'orders' FOR UPDATE"
    )
    release = threading.Timer(2.0, holder.rollback)
    release.start()
    try:
        result = env.sync([ORDERS])
    finally:
        release.join()
        holder.close()
    assert result.success
    assert retry_events(result), "the lock timeout was not retried"
    assert env.target_rows("orders") == env.source_rows("orders")


@pytest.mark.parametrize("target", ["pg_sync_env", "duck_sync_env"])
@pytest.mark.parametrize("group", list(TYPE_GROUPS))
def test_the_checks_name_the_row_of_any_changed_value(request, target, group):
    """Each column of each fidelity group, changed in one row of the copy (to NULL, or to
    another row's value where NULL is not allowed), fails `checksum_match` naming that row;
    put back, the copy passes again."""
    env = request.getfixturevalue(target)
    ddl, inserts = TYPE_GROUPS[group]
    env.source_exec(ddl, *inserts)
    cfg = {"table": "t", "primary_key": "id"}
    assert env.sync([cfg]).success
    parsed = parse_tables_config([cfg], "test")[0]
    env.target_exec("CREATE TABLE saved AS SELECT * FROM t")
    with env.source.connect() as conn:
        columns = conn.exec_driver_sql(
            "SELECT COLUMN_NAME, IS_NULLABLE FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 't' AND COLUMN_NAME <> 'id'"
        ).all()
    for name, nullable in columns:
        quoted = f'"{name}"'
        with env.target.connect() as conn:
            value = conn.exec_driver_sql(f"SELECT {quoted} FROM t WHERE id = 1").scalar()
        if value is not None:
            change = (
                f"{quoted} = NULL"
                if nullable == "YES"
                else (f"{quoted} = (SELECT {quoted} FROM saved WHERE id = 2)")
            )
        else:
            change = f"{quoted} = (SELECT {quoted} FROM saved WHERE id = 2)"
        env.target_exec(f"UPDATE t SET {change} WHERE id = 1")
        outcomes = {o.check: o for o in run_all_checks(parsed, env.source, env.target, full=True)}
        found = outcomes["checksum_match"]
        assert not found.passed, (group, name)
        assert "{'id': 1}" in str(found.metadata.get("differing_keys")), (group, name)
        env.target_exec(f"UPDATE t SET {quoted} = saved.{quoted} FROM saved WHERE t.id = saved.id")
    outcomes = {o.check: o for o in run_all_checks(parsed, env.source, env.target, full=True)}
    assert outcomes["checksum_match"].passed


@pytest.mark.parametrize("target", ["pg_sync_env", "duck_sync_env"])
def test_a_run_repairs_drift_and_applies_deletes_in_the_copy(request, target):
    """Self-healing into an analytics copy: a row changed and a row removed behind the sync's
    back, and a row deleted in the source, are all put right by the next incremental run."""
    env = request.getfixturevalue(target)
    create_orders(env, rows=200)
    cfg = {**ORDERS, "detect_deletes": True}
    assert env.sync([cfg]).success
    env.target_exec(
        "UPDATE orders SET amount = -1 WHERE id = 17", "DELETE FROM orders WHERE id = 42"
    )
    env.source_exec("DELETE FROM orders WHERE id = 99")
    result = env.sync([cfg])
    assert result.success
    meta = materialization_metadata(result, "sync_orders")
    assert meta["rows_repaired"] >= 2 and meta["rows_deleted"] == 1, {
        k: v for k, v in meta.items() if "repair" in k or "delet" in k
    }
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"source_row_count": True, "row_count_match": True, "checksum_match": True}
    assert env.target_rows("orders") == env.source_rows("orders")


@pytest.mark.usefixtures("fast_retries")
def test_connections_killed_mid_copy_are_retried_and_the_copy_converges(pg_sync_env):
    """The target's server ends the sync's sessions in the middle of a full refresh's COPYs:
    the step fails as transient, is retried, and the copy ends equal to the source, with no
    work table left behind."""
    env = pg_sync_env
    create_orders(env, rows=60000)
    cfg = {**ORDERS, "batch_size": 2000}
    killed: list[int] = []

    def kill_during_copy() -> None:
        admin = sa.create_engine(env.target.url, isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + 60
        with admin.connect() as conn:
            while not killed and time.monotonic() < deadline:
                killed.extend(
                    conn.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'mysqlsync-dagster' AND query LIKE 'COPY%%'"
                    ).scalars()
                )
                time.sleep(0.02)
        admin.dispose()

    thread = threading.Thread(target=kill_during_copy)
    thread.start()
    try:
        result = env.sync([cfg])
    finally:
        thread.join()
    assert killed, "no COPY was caught in flight"
    assert result.success
    assert retry_events(result), "the killed connections were not retried"
    assert env.target_rows("orders") == env.source_rows("orders")
    with env.target.connect() as conn:
        leftovers = (
            conn.exec_driver_sql("SELECT relname FROM pg_class WHERE relname LIKE '\\_mss\\_%%'")
            .scalars()
            .all()
        )
    assert leftovers == []


@pytest.mark.parametrize("target", ["pg_sync_env", "duck_sync_env"])
def test_an_unwritten_source_is_not_counted_again_and_the_copy_still_heals(request, target):
    """A source proof (verify/idle.py): after a run that counted the source and passed, a run
    takes the source's rows from that count while the source is not written, and still counts
    the target: a row removed from the copy, outside the run's slice, is found by the counts
    and put back. A write to the source makes the next run count it again."""
    env = request.getfixturevalue(target)
    create_orders(env, rows=300)
    cfg = {**ORDERS, "lag_seconds": 0, "detect_deletes": True, "verify_budget": 10}

    def sync() -> tuple[dict, dict]:
        time.sleep(1.1)  # the source's UPDATE_TIME has whole seconds
        result = env.sync([cfg])
        assert result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert all(e.passed for e in checks.values()), [e.description for e in checks.values()]
        counted = {k: v.value for k, v in checks["row_count_match"].metadata.items()}
        return materialization_metadata(result, "sync_orders"), counted

    _, counted = sync()  # counts the source, stores the proof
    assert counted["source_rows"] == 300 and "source_rows_counted_by" not in counted
    _, counted = sync()
    assert counted["source_rows_counted_by"] == "an earlier run (the source not written since)"
    assert counted["source_rows"] == counted["target_rows"] == 300

    env.target_exec("DELETE FROM orders WHERE id = 242")  # beyond the slices of these runs
    meta, counted = sync()
    assert "source_rows_counted_by" in counted and counted["target_rows"] == 300
    assert meta["rows_repaired"] == 1
    assert env.target_rows("orders") == env.source_rows("orders")

    env.source_exec("DELETE FROM orders WHERE id = 7")
    meta, counted = sync()
    assert "source_rows_counted_by" not in counted  # written since: counted again
    assert counted["source_rows"] == counted["target_rows"] == 299 and meta["rows_deleted"] == 1
    assert env.target_rows("orders") == env.source_rows("orders")
    _, counted = sync()
    assert "source_rows_counted_by" in counted and counted["source_rows"] == 299

    # a state table made before the proof's columns gets them from the next run that counts
    env.target_exec(
        *(f"ALTER TABLE _mysqlsync_state DROP COLUMN {c}" for c in SOURCE_PROOF_COLUMNS)
    )
    _, counted = sync()
    assert "source_rows_counted_by" not in counted
    _, counted = sync()
    assert "source_rows_counted_by" in counted and counted["source_rows"] == 299


def test_a_source_written_during_the_run_is_counted_after_all(duck_sync_env):
    """The proven rows serve a count only while the source's write time is the one proven
    (checked after the count of the rows after the cursor): a row inserted during the run
    makes the count a real one, not the proven rows less the new row."""
    env = duck_sync_env
    create_orders(env, rows=50)
    cfg = {**ORDERS, "lag_seconds": 0}
    assert env.sync([cfg]).success
    pair = TablePair.open(parse(cfg), env.source, env.target)
    with env.source.connect() as conn:
        written = read_clock(conn, "orders").written
    proven = dataclasses.replace(pair, source_total=1000, source_written=written)
    assert proven.count("source") == 1000  # all 50 rows are in the synced scope
    time.sleep(1.1)  # the write time has whole seconds
    env.source_exec("INSERT INTO orders (id, updated_at) VALUES (51, NOW())")
    assert proven.count("source") == 50  # counted: the new row is after the cursor
    assert proven.count("target") == 50
