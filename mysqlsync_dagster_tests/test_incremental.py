"""Incremental merge on the modifier: inserts, updates, same-second writes, idempotence."""

from mysqlsync_dagster_tests.harness import materialization_metadata, stored_cursor

ORDERS = {"table": "orders", "primary_key": "id", "modifier": "updated_at"}


def create_orders(sync_env, rows=100):
    sync_env.source_exec(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, status VARCHAR(20) NOT NULL,"
        " amount DECIMAL(12,2), updated_at DATETIME NULL, KEY (updated_at))",
        "INSERT INTO orders SELECT seq, 'new', seq / 10,"
        f" TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_{rows}",
    )


def test_inserts_and_updates_are_merged(sync_env):
    create_orders(sync_env)
    first = sync_env.sync([ORDERS])
    assert materialization_metadata(first)["strategy"] == "swap"
    assert stored_cursor(sync_env) == "2024-01-01 01:40:00"

    sync_env.source_exec(
        "UPDATE orders SET status = 'paid', updated_at = '2024-02-01 00:00:00' WHERE id IN (3, 50)",
        "INSERT INTO orders VALUES (101, 'new', 1.5, '2024-02-01 00:00:01'),"
        " (102, 'new', NULL, '2024-02-01 00:00:02')",
    )
    second = sync_env.sync([ORDERS])
    meta = materialization_metadata(second)
    assert meta["strategy"] == "upsert"
    # the two updated rows, the two new ones, and the row at the old cursor (closed bound)
    assert meta["rows_written"] == 5
    assert meta["cursor_before"] == "2024-01-01 01:40:00"
    assert meta["cursor_after"] == "2024-02-01 00:00:02"
    assert meta["dagster/row_count"] == 102
    with sync_env.target.connect() as conn:
        load_ids = {r[0] for r in conn.exec_driver_sql("SELECT DISTINCT _dlt_load_id FROM orders")}
        state_load_id = conn.exec_driver_sql("SELECT load_id FROM _mysqlsync_state").scalar_one()
    assert state_load_id == meta["load_id"] and state_load_id in load_ids and len(load_ids) == 2
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")


def test_rerun_is_idempotent(sync_env):
    create_orders(sync_env, rows=50)
    sync_env.sync([ORDERS])
    before = sync_env.target_rows("orders")
    for _ in range(2):
        meta = materialization_metadata(sync_env.sync([ORDERS]))
        # nothing after the cursor, and the row at it unchanged: nothing read or written
        assert meta["rows_extracted"] == 0 and meta["rows_written"] == 0
        assert sync_env.target_rows("orders") == before == sync_env.source_rows("orders")


def test_rows_written_in_the_cursor_second_are_not_lost(sync_env):
    create_orders(sync_env, rows=10)
    sync_env.sync([ORDERS])
    cursor = stored_cursor(sync_env)
    # written later, but stamped with the same second as the synced cursor
    sync_env.source_exec(
        f"INSERT INTO orders VALUES (11, 'late', 7, '{cursor}')",
        f"UPDATE orders SET status = 'changed' WHERE updated_at = '{cursor}' AND id = 10",
    )
    sync_env.sync([ORDERS])
    target = dict((r[0], r[1]) for r in sync_env.target_rows("orders"))
    assert target[11] == "late"
    assert target[10] == "changed"
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")


def test_null_modifiers_are_copied_on_the_first_sync(sync_env):
    create_orders(sync_env, rows=5)
    sync_env.source_exec("INSERT INTO orders VALUES (6, 'no stamp', 1, NULL), (7, 'x', 2, NULL)")
    sync_env.sync([ORDERS])
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")
    assert len(sync_env.target_rows("orders")) == 7


def test_non_utc_source_values_are_copied_verbatim(sync_env):
    """The source server runs at +07:00: naive DATETIMEs are copied as they are, TIMESTAMPs as
    the same instant, and a TIMESTAMP modifier drives the cursor correctly."""
    with sync_env.source.connect() as conn:
        assert conn.exec_driver_sql("SELECT @@global.time_zone").scalar() == "+07:00"
    sync_env.source_exec(
        "CREATE TABLE events (id INT PRIMARY KEY, local_dt DATETIME(6) NOT NULL,"
        " changed TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),"
        " KEY (changed))",
    )
    # written in the server's own time zone, the way applications write NOW()
    with sync_env.source.begin() as conn:
        conn.exec_driver_sql("SET time_zone = '+07:00'")
        conn.exec_driver_sql(
            "INSERT INTO events (id, local_dt, changed) VALUES"
            " (1, NOW(6), NOW(6) - INTERVAL 1 HOUR), (2, '2024-03-31 02:30:00', NOW(6))"
        )
    events = {"table": "events", "primary_key": "id", "modifier": "changed"}
    sync_env.sync([events])
    assert sync_env.target_rows("events") == sync_env.source_rows("events")
    with sync_env.source.connect() as s, sync_env.target.connect() as t:
        query = "SELECT id, CAST(local_dt AS CHAR), UNIX_TIMESTAMP(changed) FROM events ORDER BY id"
        assert t.exec_driver_sql(query).all() == s.exec_driver_sql(query).all()

    with sync_env.source.begin() as conn:
        conn.exec_driver_sql("SET time_zone = '+07:00'")
        conn.exec_driver_sql("UPDATE events SET local_dt = '2000-01-01 00:00:00' WHERE id = 1")
        conn.exec_driver_sql("INSERT INTO events (id, local_dt) VALUES (3, NOW())")
    result = sync_env.sync([events])
    assert materialization_metadata(result, "sync_events")["strategy"] == "upsert"
    assert sync_env.target_rows("events") == sync_env.source_rows("events")


def test_integer_version_modifier(sync_env):
    sync_env.source_exec(
        "CREATE TABLE docs (id INT PRIMARY KEY, body TEXT, version BIGINT UNSIGNED NOT NULL,"
        " KEY (version))",
        "INSERT INTO docs VALUES (1, 'a', 18446744073709551610), (2, 'b', 5)",
    )
    docs = {"table": "docs", "primary_key": "id", "modifier": "version"}
    sync_env.sync([docs])
    assert stored_cursor(sync_env, "docs") == "18446744073709551610"
    sync_env.source_exec("UPDATE docs SET body = 'b2', version = 18446744073709551615 WHERE id = 2")
    meta = materialization_metadata(sync_env.sync([docs]), "sync_docs")
    assert meta["rows_written"] == 2
    assert sync_env.target_rows("docs") == sync_env.source_rows("docs")


def test_a_target_table_dropped_since_the_last_sync_is_copied_whole(sync_env):
    """A stored cursor must not survive its table: the rows before it would never return."""
    create_orders(sync_env)
    assert sync_env.sync([ORDERS]).success
    with sync_env.target.begin() as conn:
        conn.exec_driver_sql("DROP TABLE orders")  # an operator's mistake, a restore...
    sync_env.source_exec("UPDATE orders SET status = 'paid', updated_at = NOW() WHERE id = 7")
    meta = materialization_metadata(sync_env.sync([ORDERS]))
    assert meta["strategy"] == "swap"
    assert meta["rows_written"] == 100
    assert "was missing although a sync had reached cursor 2024-01-01 01:40:00" in meta["warnings"]
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")
