"""Full refresh swaps atomically; schema changes in the source reach the target."""

import threading
import time

from mysqlsync_dagster_tests.harness import column_types


def test_full_refresh_never_shows_readers_an_empty_or_partial_table(sync_env):
    sync_env.source_exec(
        "CREATE TABLE ref (id INT PRIMARY KEY, name VARCHAR(40))",
        "INSERT INTO ref SELECT seq, CONCAT('name ', seq) FROM seq_1_to_20000",
    )
    cfg = {"table": "ref", "primary_key": "id", "batch_size": 2000}
    sync_env.sync([cfg])
    sync_env.source_exec(
        "DELETE FROM ref WHERE id <= 1000",
        "INSERT INTO ref SELECT seq, 'new' FROM seq_20001_to_26000",
    )
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        with sync_env.target.connect() as conn:
            while not stop.is_set():
                seen.append(conn.exec_driver_sql("SELECT COUNT(*) FROM ref").scalar_one())
                conn.commit()
                time.sleep(0.01)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = sync_env.sync([cfg])
    finally:
        stop.set()
        thread.join()
    assert result.success
    assert len(seen) > 5
    assert set(seen) <= {20000, 25000}, sorted(set(seen))
    assert seen[-1] == 25000
    # rows deleted in the source are gone from the target
    assert sync_env.target_rows("ref") == sync_env.source_rows("ref")


def test_empty_source_table_empties_the_target(sync_env):
    sync_env.source_exec("CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1), (2)")
    sync_env.sync([{"table": "t", "primary_key": "id"}])
    sync_env.source_exec("DELETE FROM t")
    assert sync_env.sync([{"table": "t", "primary_key": "id"}]).success
    assert sync_env.target_rows("t") == []


def test_columns_added_widened_and_dropped(sync_env):
    sync_env.source_exec(
        "CREATE TABLE p (id INT PRIMARY KEY, name VARCHAR(10) NOT NULL, price DECIMAL(5,2),"
        " legacy INT NOT NULL, updated_at DATETIME NOT NULL, KEY (updated_at))",
        "INSERT INTO p VALUES (1, 'short', 1.5, 7, '2024-01-01'), (2, 'b', 2.25, 8, '2024-01-01')",
    )
    cfg = {"table": "p", "primary_key": "id", "modifier": "updated_at"}
    sync_env.sync([cfg])
    sync_env.source_exec(
        "ALTER TABLE p ADD COLUMN color ENUM('red', 'green') NULL DEFAULT 'red' AFTER name,"
        " MODIFY name VARCHAR(50) NOT NULL, MODIFY price DECIMAL(12,4), DROP COLUMN legacy",
        "INSERT INTO p VALUES (3, 'a much longer name than before', 'green', 12345678.1234,"
        " '2024-02-01')",
        "UPDATE p SET price = 3.1415, updated_at = '2024-02-01' WHERE id = 1",
    )
    result = sync_env.sync([cfg])
    assert result.success
    [mat] = result.asset_materializations_for_node("sync_p")
    assert mat.metadata["columns_added"].value == "color"
    assert mat.metadata["columns_changed"].value == "name, price"
    assert mat.metadata["columns_dropped_in_source"].value == "legacy"
    source_types = column_types(sync_env.source, "p")
    target_types = column_types(sync_env.target, "p")
    # same columns and types, plus the dropped one kept (now nullable) at its place
    assert [t for t in target_types if t[0] != "legacy"] == source_types
    [legacy] = [t for t in target_types if t[0] == "legacy"]
    assert legacy[1:3] == ("int(11)", "YES")
    with sync_env.target.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, name, color, CAST(price AS CHAR), legacy FROM p ORDER BY id"
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, "short", "red", "3.1415", 7),
        (2, "b", "red", "2.2500", 8),
        (3, "a much longer name than before", "green", "12345678.1234", None),
    ]
