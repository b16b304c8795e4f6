"""Transient errors are retried with backoff and jitter; permanent ones fail at once."""

from __future__ import annotations

import json
import re
import threading
import time

import dagster as dg
import psycopg2
import pymysql
import pytest
import sqlalchemy as sa

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.errors import SchemaError, SourceReadError, TableBusy, is_retryable
from mysqlsync_dagster.orchestration import retries
from mysqlsync_dagster.orchestration.factory import build_definitions, table_assets
from mysqlsync_dagster.settings import Settings

UNREACHABLE = {
    "SOURCE_DB_URL": "mysql://u:pw@127.0.0.1:9/s",
    "TARGET_DB_URL": "mysql://u:pw@127.0.0.1:9/t",
}


def driver_error(code: int, text: str) -> sa.exc.DBAPIError:
    return sa.exc.OperationalError("SELECT 1", {}, pymysql.err.OperationalError(code, text))


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (driver_error(2013, "Lost connection to MySQL server during query"), True),
        (driver_error(2006, "MySQL server has gone away"), True),
        (driver_error(1205, "Lock wait timeout exceeded; try restarting transaction"), True),
        (driver_error(1213, "Deadlock found when trying to get lock"), True),
        (  # PyMySQL, using a connection the server killed after the first error was seen
            sa.exc.InterfaceError("SELECT 1", {}, pymysql.err.InterfaceError(0, "")),
            True,
        ),
        (sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"), True),
        (TableBusy("table 't': another sync of target table 't' is running"), True),
        (  # the connectorx reader process, its connection killed mid-read
            SourceReadError(
                "PanicException: cx writer failed: Source(MySQLError(IoError { server"
                " disconnected }))"
            ),
            True,
        ),
        (SourceReadError("ProgrammingError: Table 'db.missing' doesn't exist"), False),
        (
            SourceReadError(
                "RuntimeError: MySQLError(MySqlError { ERROR 1927 (70100): Connection was killed })"
            ),
            True,
        ),
        (
            SourceReadError(
                "RuntimeError: MySQLError(MySqlError { ERROR 1146 (42S02): Table 'db.x' doesn't"
                " exist })"
            ),
            False,
        ),
        (driver_error(1146, "Table 'db.t' doesn't exist"), False),
        (driver_error(1054, "Unknown column 'x' in 'field list'"), False),
        (driver_error(1045, "Access denied for user 'u'@'h' (using password: YES)"), False),
        (SchemaError("table 't' does not exist in the source database 'db'"), False),
        (ValueError("bad config"), False),
    ],
)
def test_classification(error, retryable):
    failure = retries.sync_failure("t", error, ["s3cret"])
    assert failure.allow_retries is retryable
    assert failure.description.startswith("table 't'")
    assert ("transient" if retryable else "permanent: not retried") in failure.description


def test_failure_message_hides_secrets():
    error = driver_error(1045, "Access denied for user 'u' to mysql://u:s3cret@h/db")
    assert "s3cret" not in retries.sync_failure("t", error, ["s3cret"]).description


def test_every_table_asset_has_the_retry_policy():
    tables = parse_tables_config([{"table": "a", "primary_key": "id"}], "test")
    [asset] = table_assets(build_definitions(tables, Settings.from_environ(UNREACHABLE)))
    policy = asset.op.retry_policy
    assert policy.max_retries >= 3
    assert policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter == dg.Jitter.PLUS_MINUS


def retry_events(result: dg.ExecuteInProcessResult) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(
        retries,
        "RETRY_POLICY",
        dg.RetryPolicy(
            max_retries=6, delay=0.2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
    )


TABLE = {"table": "items", "primary_key": "id", "modifier": "updated_at"}


def test_lock_wait_timeout_is_retried_until_it_succeeds(sync_env, fast_retries):
    sync_env.source_exec(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT, updated_at DATETIME NOT NULL)",
        "INSERT INTO items VALUES (1, 1, '2024-01-01'), (2, 2, '2024-01-01')",
    )
    assert sync_env.sync([TABLE]).success
    sync_env.source_exec("UPDATE items SET v = 10, updated_at = '2024-02-01' WHERE id = 1")
    admin = sync_env.servers.target.engine()
    with admin.connect() as conn:
        previous = conn.exec_driver_sql("SELECT @@GLOBAL.innodb_lock_wait_timeout").scalar()
        conn.exec_driver_sql("SET GLOBAL innodb_lock_wait_timeout = 1")
    holder = sync_env.target.connect()
    holder.exec_driver_sql("BEGIN")
    # the run's last write (its cursor) waits for this row lock and times out (1205): the
    # step fails as transient and is retried
    holder.exec_driver_sql("SELECT * FROM _mysqlsync_state WHERE target_table = 'items' FOR UPDATE")
    release = threading.Timer(3.0, holder.rollback)
    release.start()
    try:
        result = sync_env.sync([TABLE])
    finally:
        release.join()
        holder.close()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"SET GLOBAL innodb_lock_wait_timeout = {int(previous)}")
        admin.dispose()
    assert result.success
    assert retry_events(result), "the lock wait timeout was not retried"
    assert sync_env.target_rows("items") == sync_env.source_rows("items")


def test_permanent_error_fails_at_once_with_a_clear_message(sync_env, fast_retries):
    result = sync_env.sync([{"table": "missing", "primary_key": "id"}], raise_on_error=False)
    assert not result.success
    assert retry_events(result) == []
    [failure] = result.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert "table 'missing' does not exist in the source database" in message
    assert "permanent: not retried" in message


def test_deadlock_during_the_merge_is_retried_and_converges(sync_env, fast_retries, caplog):
    """A real deadlock (1213) between the incremental merge and another session writing the
    target: InnoDB rolls the merge back as the lighter transaction, the step fails as
    transient, is retried, and the target ends equal to the source."""
    sync_env.source_exec(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT, updated_at DATETIME NOT NULL)",
        "INSERT INTO items SELECT seq, seq, IF(seq <= 10, '2024-01-01', '2023-12-31')"
        " FROM seq_1_to_6000",
    )
    assert sync_env.sync([TABLE]).success  # a swap: no row locks to collide with
    # the next sync reads rows 1..10 (at or after the cursor) and merges them into the live
    # table in key order, in one transaction (one batch)
    sync_env.source_exec("UPDATE items SET v = -v, updated_at = '2024-02-01' WHERE id <= 10")
    merge_waits = (
        "SELECT trx_id FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'"
        " AND trx_query LIKE 'INSERT INTO `items`%%'"
    )
    admin = sync_env.servers.target.engine(poolclass=sa.pool.NullPool)
    other = sync_env.target.connect()
    outcome: dict[str, str] = {}

    def close_the_cycle() -> None:
        """Once the merge waits for row 10 (holding 1..9), ask for row 5: a lock cycle."""
        try:
            deadline = time.monotonic() + 60
            while "merge" not in outcome and time.monotonic() < deadline:
                with admin.connect() as conn:
                    if conn.exec_driver_sql(merge_waits).first() is not None:
                        outcome["merge"] = "waited for row 10"
                # INNODB_TRX is a snapshot, refreshed only when nobody read it for 100 ms:
                # polling faster would read the same stale snapshot forever
                time.sleep(0.25)
            if "merge" in outcome:
                other.exec_driver_sql("UPDATE items SET v = v + 1 WHERE id = 5")
                outcome["other"] = "went on"
        except sa.exc.OperationalError as error:
            outcome["other"] = f"failed: {error.orig}"
        finally:
            other.rollback()  # the merge's retry gets the rows; the target keeps no change

    closer = threading.Thread(target=close_the_cycle)
    try:
        other.exec_driver_sql("BEGIN")
        # a heavy transaction (5,000 changed rows) that holds row 10, which the merge needs last
        other.exec_driver_sql("UPDATE items SET v = v + 1 WHERE id BETWEEN 11 AND 5010")
        other.exec_driver_sql("UPDATE items SET v = v + 1 WHERE id = 10")
        closer.start()
        result = sync_env.sync([TABLE], raise_on_error=False)
    finally:
        if closer.ident is not None:  # started
            closer.join()
        other.rollback()
        other.close()
    with admin.connect() as conn:
        status = conn.exec_driver_sql("SHOW ENGINE INNODB STATUS").one()[2]
    admin.dispose()
    assert outcome.get("merge") == "waited for row 10", "no lock wait: nothing was proved"
    # the other session got row 5, so the merge holding it was rolled back: InnoDB's report
    assert outcome.get("other") == "went on", outcome
    report = status.split("LATEST DETECTED DEADLOCK", 1)[-1].split("\nTRANSACTIONS\n", 1)[0]
    victim = re.search(r"\*\*\* WE ROLL BACK TRANSACTION \((\d)\)", report)
    assert victim, f"no deadlock was reported: {report[:500]}"
    rolled_back = report.split(f"*** ({victim[1]}) TRANSACTION:", 1)[1].split("***", 1)[0]
    assert "INSERT INTO `items`" in rolled_back and f"`{sync_env.target_db}`.`items`" in report
    retried = [
        e
        for e in result.all_events
        if e.event_type_value == "STEP_UP_FOR_RETRY"
        and "Deadlock found" in str(e.event_specific_data)
    ]
    assert retried, "the deadlocked sync was not retried"
    assert result.success
    assert sync_env.target_rows("items") == sync_env.source_rows("items")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (psycopg2.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg2.InterfaceError("connection already closed"), True),
        (psycopg2.ProgrammingError('relation "x" does not exist'), False),
        (RuntimeError('IO Error: Could not set lock on file "/d/x.duckdb"'), True),
    ],
)
def test_classification_of_analytics_targets_errors(error, retryable):
    wrapped = (
        sa.exc.DBAPIError("SELECT 1", {}, error) if isinstance(error, psycopg2.Error) else error
    )
    assert is_retryable(wrapped) is retryable


def test_the_cli_without_dagster_retries_a_busy_table_then_a_permanent_error_not(
    sync_env, tmp_path, monkeypatch, capsys
):
    """`mysqlsync-dagster sync` without DAGSTER_HOME runs tables without Dagster
    (`pipeline/runner.py`): it retries as the asset's retry policy does."""
    from mysqlsync_dagster.targets.mysql.target import lock_name
    from mysqlsync_dagster.tools import cli

    sync_env.source_exec(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT, updated_at DATETIME NOT NULL)",
        "INSERT INTO items VALUES (1, 1, '2024-01-01'), (2, 2, '2024-01-01')",
    )
    config = tmp_path / "tables.json"
    config.write_text(json.dumps([TABLE, {"table": "missing", "primary_key": "id"}]))
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's demo
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("SOURCE_DB_URL", sync_env.source_url())
    monkeypatch.setenv("TARGET_DB_URL", sync_env.target_url())
    monkeypatch.setenv("SYNC_RETRIES", "3")
    monkeypatch.setenv("SYNC_RETRY_DELAY", "0.5")
    # another sync holds the table's lock for 2 s: the run finds the table busy (transient)
    holder = sync_env.target.connect()
    name = lock_name(sync_env.target_db, "items")
    assert holder.exec_driver_sql(f"SELECT GET_LOCK('{name}', 0)").scalar() == 1
    release = threading.Timer(2.0, lambda: holder.exec_driver_sql(f"SELECT RELEASE_LOCK('{name}')"))
    release.start()
    try:
        code = cli.main(["--config", str(config), "sync", "-v"])
    finally:
        release.join()
        holder.close()
    printed = capsys.readouterr()
    assert code == 1  # the missing table
    assert "retry 1 of 3" in printed.err and "transient" in printed.err
    assert "items" in printed.out and "ok" in printed.out.splitlines()[1]
    assert "table 'missing' does not exist in the source database" in printed.out
    assert "permanent: not retried" in printed.out
    assert sync_env.target_rows("items") == sync_env.source_rows("items")
