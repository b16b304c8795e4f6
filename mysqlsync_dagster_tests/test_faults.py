"""Faults injected into real servers: the failed run says so, the next run converges.

These tests kill and restart the session's target server (SIGKILL, as in a crash).
"""

import threading
import time

import pytest
import sqlalchemy as sa

from mysqlsync_dagster.resources import MySQLResource
from mysqlsync_dagster_tests.harness import fetch_comparable


def _crash_target_when(sync_env, sql: str, threshold: int, seen: dict) -> threading.Thread:
    """Once `sql` (a count) reaches `threshold`, i.e. mid-load: SIGKILL the target server,
    start it again at once, and record what a reader then sees of the live table."""
    server = sync_env.servers.target.require_control()
    watcher = sa.create_engine(
        sync_env.servers.target.url.set(database=sync_env.target_db), poolclass=sa.pool.NullPool
    )

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with watcher.connect() as conn:
                    conn.exec_driver_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
                    reached = (conn.exec_driver_sql(sql).scalar() or 0) >= threshold
            except sa.exc.SQLAlchemyError:
                reached = False
            if reached:
                # outside the `with`: closing a connection to a killed server raises
                server.kill()
                server.start()
                seen["after_restart"] = fetch_comparable(watcher, "big", skip_dlt=True)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _aside_rows_sql(sync_env, table: str) -> str:
    from mysqlsync_dagster.loading import work_table_name

    return f"SELECT COUNT(*) FROM `{work_table_name(table, 'new')}`"


@pytest.mark.parametrize("incremental", [False, True])
def test_target_killed_mid_load_then_next_run_converges(sync_env, incremental):
    sync_env.servers.target.require_control()
    sync_env.source_exec(
        "CREATE TABLE big (id INT PRIMARY KEY, v VARCHAR(40), updated_at DATETIME NOT NULL,"
        " KEY (updated_at))",
        "INSERT INTO big SELECT seq, CONCAT('v', seq), TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND"
        " FROM seq_1_to_30000",
    )
    cfg = {"table": "big", "primary_key": "id", "batch_size": 1000}
    if incremental:
        cfg["modifier"] = "updated_at"
    assert sync_env.sync([cfg]).success
    before = sync_env.target_rows("big")
    sync_env.source_exec(
        "UPDATE big SET v = 'changed', updated_at = '2025-01-01' WHERE id % 3 = 0",
        "INSERT INTO big SELECT seq, 'new', '2025-01-02' FROM seq_30001_to_40000",
    )
    seen: dict = {}
    if incremental:
        probe = "SELECT COUNT(*) FROM big WHERE updated_at >= '2025-01-01'"
    else:
        probe = _aside_rows_sql(sync_env, "big")
    watcher = _crash_target_when(sync_env, probe, 2000, seen)
    try:
        result = sync_env.sync([cfg], raise_on_error=False)
    finally:
        watcher.join(timeout=130)
        sync_env.target.dispose()
    assert "after_restart" in seen, "the load finished before the crash: the test proved nothing"
    if incremental:
        # committed batches are in, the rest still old: every row is an old or a new version
        assert len(seen["after_restart"]) >= len(before)
    else:
        # while the copy built aside was lost, readers had the old copy, whole
        assert seen["after_restart"] == before
    # the run converged by itself: dlt retries the load job, Dagster the step if that fails
    assert result.success
    assert sync_env.target_rows("big") == sync_env.source_rows("big")
    with sync_env.target.connect() as conn:
        leftovers = [r[0] for r in conn.exec_driver_sql("SHOW TABLES LIKE '\\_mss\\_%%'")]
    assert leftovers == []


def test_pool_whose_connections_died_heals_itself(sync_env):
    server = sync_env.servers.target.require_control()
    resource = MySQLResource(side="TARGET", url=sync_env.target_url())
    engine = resource.engine
    with engine.connect() as conn:  # fill the pool with a connection
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    server.restart()  # every pooled connection is now dead
    started = time.monotonic()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 2").scalar() == 2
    assert time.monotonic() - started < 120
    resource.dispose()
