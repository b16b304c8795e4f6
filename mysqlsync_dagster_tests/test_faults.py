"""Faults injected into real servers mid-transfer: the sync fails over, retries, converges.

These tests kill and restart the session's servers (SIGKILL, as in a crash) and kill
connections from the server side, then compare the target with the source.
"""

import threading
import time

import pytest
import sqlalchemy as sa

from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster_tests.harness import fetch_comparable, kill_sync_process_when
from mysqlsync_dagster_tests.harness import when_query as _when


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
    from mysqlsync_dagster.targets.mysql.loader import work_table_name

    return f"SELECT COUNT(*) FROM `{work_table_name(table, 'new')}`"


def _big_source_table(sync_env, rows: int) -> None:
    sync_env.source_exec(
        "CREATE TABLE big (id INT PRIMARY KEY, v VARCHAR(40), updated_at DATETIME NOT NULL,"
        " KEY (updated_at))",
        "INSERT INTO big SELECT seq, CONCAT('v', seq), TIMESTAMP'2024-01-01 00:00:00'"
        f" + INTERVAL seq SECOND FROM seq_1_to_{rows}",
    )


EXTRACTION_RUNNING = (
    "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT CAST(%%'"
    " AND INFO LIKE '%%FROM%%big%%' LIMIT 1"
)


@pytest.mark.parametrize("phase", ["load", "extract"])
def test_connection_killed_by_the_server_is_retried(sync_env, phase):
    """KILL CONNECTION (as an admin or a proxy would) on the session that loads, or on the one
    that extracts while it streams rows: the sync retries and converges."""
    _big_source_table(sync_env, 30000 if phase == "load" else 400000)
    if phase == "load":
        handle = sync_env.servers.target
        running = (
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = "
            f"'{sync_env.target_db}' AND INFO LIKE 'LOAD DATA%%' LIMIT 1"
        )
    else:
        handle, running = sync_env.servers.source, EXTRACTION_RUNNING
    admin = handle.engine(poolclass=sa.pool.NullPool)
    killed: list[int] = []

    def kill(row) -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"KILL CONNECTION {int(row[0])}")
        killed.append(int(row[0]))

    watcher = _when(admin, running, kill)
    result = sync_env.sync(
        [{"table": "big", "primary_key": "id", "batch_size": 1000 if phase == "load" else 5000}],
        raise_on_error=False,
    )
    watcher.join(timeout=5)
    assert killed, f"no {phase} was caught running: the test proved nothing"
    assert result.success
    assert sync_env.target_rows("big") == sync_env.source_rows("big")


def test_source_killed_mid_extract_then_the_retry_converges(sync_env):
    """SIGKILL of the source server while the extraction query runs; restarted at once."""
    server = sync_env.servers.source.require_control()
    _big_source_table(sync_env, 400000)
    admin = sync_env.servers.source.engine(poolclass=sa.pool.NullPool)

    def crash(row) -> None:
        server.kill()
        server.start()

    watcher = _when(admin, EXTRACTION_RUNNING, crash)
    result = sync_env.sync(
        [{"table": "big", "primary_key": "id", "modifier": "updated_at", "batch_size": 5000}],
        raise_on_error=False,
    )
    watcher.join(timeout=60)
    sync_env.source.dispose()
    assert watcher.fired.is_set(), "the extraction ended before the crash: nothing was proved"
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retried, "the crash did not fail the step"
    assert result.success
    assert sync_env.target_rows("big") == sync_env.source_rows("big")


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
    # the run converged by itself: Dagster retried the step, which failed as transient
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


def test_sync_process_killed_mid_load_then_next_run_converges(sync_env, tmp_path):
    """SIGKILL of the process doing the sync, mid-load: its table lock dies with its
    connection, its work tables are cleaned by the next run, which converges."""

    from mysqlsync_dagster.targets.mysql.loader import work_table_name

    _big_source_table(sync_env, 60000)
    table = {"table": "big", "primary_key": "id", "modifier": "updated_at", "batch_size": 1000}
    admin = sync_env.servers.target.engine(sync_env.target_db, poolclass=sa.pool.NullPool)
    kill_sync_process_when(
        sync_env,
        [table],
        tmp_path,
        admin,
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND"
        f" TABLE_NAME = '{work_table_name('big', 'new')}' AND"
        f" (SELECT COUNT(*) FROM `{work_table_name('big', 'new')}`) >= 5000",
    )
    with admin.connect() as conn:  # the killed run committed no cursor
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM _mysqlsync_state").scalar() == 0

    result = sync_env.sync([table])
    assert result.success
    assert sync_env.target_rows("big") == sync_env.source_rows("big")
    with admin.connect() as conn:
        leftovers = [r[0] for r in conn.exec_driver_sql("SHOW TABLES LIKE '\\_mss\\_%%'")]
    assert leftovers == []
