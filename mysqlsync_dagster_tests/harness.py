"""Pytest fixtures: two real MariaDB servers (source and target) for the whole test session.

- Servers are started from the `mariadbd` binary in temporary directories on free ports, and
  shut down at the end. The source runs with time zone +07:00 (Asia/Jakarta's offset) so every
  test also proves that values are copied verbatim whatever the server's time zone, and writes
  a row-based binlog (the binlog tables' change capture).
- `MYSQLSYNC_TEST_SOURCE_URL` / `MYSQLSYNC_TEST_TARGET_URL` (server URLs, no database) use
  existing servers instead; fault tests that need to kill a server are skipped then.
- With `CI` set, a server that cannot be started fails the tests: never a silent skip.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from mysqlsync_dagster.catalog import SPATIAL_TYPES
from mysqlsync_dagster.config import TableConfig, parse_tables_config
from mysqlsync_dagster.db import quote_identifier, run_sql
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.orchestration.io import TargetTableReader
from mysqlsync_dagster.orchestration.names import IO_MANAGER_KEY, LEGACY_IO_MANAGER_KEY
from mysqlsync_dagster.orchestration.resources import MySQLResource, StagingResource
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.tools.mariadb_server import (
    BINLOG_ARGS,
    MariaDBServer,
    ServerError,
    mariadbd_binary,
)
from mysqlsync_dagster.tools.postgres_server import PostgresServer, pg_bin_dir

SOURCE_TIME_ZONE = "+07:00"
_counter = itertools.count(1)


def _unavailable(reason: str, what: str = "MariaDB test servers") -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"{what} unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server (trust auth, a free port) for the whole test session, in
    a directory of /tmp (as root it runs as `postgres`, which pytest's 0700 temp dirs shut out)."""
    if pg_bin_dir() is None:
        _unavailable("initdb not found (apt-get install postgresql)", "throwaway PostgreSQL")
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="mysqlsync-pg-")))
    try:
        server.start()
    except ServerError as error:
        _unavailable(str(error), "throwaway PostgreSQL")
    try:
        yield server
    finally:
        server.remove()


@dataclass
class ServerHandle:
    """A server the tests can reach; `server` is set when the harness started it."""

    url: sa.URL
    server: MariaDBServer | None = None

    def engine(self, database: str | None = None, **kwargs: Any) -> sa.Engine:
        return sa.create_engine(
            self.url.set(database=database),
            connect_args={"charset": "utf8mb4", "init_command": "SET time_zone = '+00:00'"},
            **kwargs,
        )

    def require_control(self) -> MariaDBServer:
        if self.server is None:
            pytest.skip("this test stops servers: it needs harness-started servers")
        return self.server


@dataclass
class ServerPair:
    source: ServerHandle
    target: ServerHandle


def _start(base: Path, name: str, extra: Sequence[str] = ()) -> ServerHandle:
    server = MariaDBServer(base / name, extra_args=tuple(extra)).start()
    return ServerHandle(sa.make_url(server.url()), server)


@pytest.fixture(scope="session")
def mariadb_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPair]:
    source_url = os.environ.get("MYSQLSYNC_TEST_SOURCE_URL")
    target_url = os.environ.get("MYSQLSYNC_TEST_TARGET_URL")
    if source_url and target_url:
        yield ServerPair(
            ServerHandle(sa.make_url(source_url)), ServerHandle(sa.make_url(target_url))
        )
        return
    if mariadbd_binary() is None:
        _unavailable("mariadbd not found (apt-get install mariadb-server)")
    base = tmp_path_factory.mktemp("mariadb")
    started: list[ServerHandle] = []
    try:
        # the source writes a binlog, as production sources do (binlog tables)
        started.append(
            _start(base, "source", [f"--default-time-zone={SOURCE_TIME_ZONE}", *BINLOG_ARGS])
        )
        started.append(_start(base, "target"))
    except ServerError as error:
        for handle in started:
            handle.require_control().kill()
        _unavailable(str(error))
    try:
        yield ServerPair(*started)
    finally:
        for handle in started:
            if handle.server is not None:
                handle.server.stop()


@dataclass
class SyncEnv:
    """A fresh source and target database pair for one test, and ways to sync them."""

    servers: ServerPair
    source_db: str
    target_db: str
    source: sa.Engine
    target: sa.Engine
    staging_dir: str = ""  # STAGING_DIR of staging-mode syncs (a per-test temp dir)
    compression: str | None = None  # PARQUET_COMPRESSION of staging-mode syncs

    def source_url(self) -> str:
        return self.servers.source.url.set(database=self.source_db).render_as_string(False)

    def target_url(self) -> str:
        return self.servers.target.url.set(database=self.target_db).render_as_string(False)

    def resources(self) -> dict[str, Any]:
        return table_resources(
            MySQLResource(side="SOURCE", url=self.source_url()),
            MySQLResource(side="TARGET", url=self.target_url()),
            StagingResource(directory=self.staging_dir, compression=self.compression),
        )

    def source_exec(self, *statements: str) -> None:
        _execute(self.source, statements)

    def target_exec(self, *statements: str) -> None:
        _execute(self.target, statements)

    def source_rows(self, table: str, order_by: str = "1") -> list[tuple[Any, ...]]:
        return fetch_comparable(self.source, table, order_by)

    def target_rows(self, table: str, order_by: str = "1") -> list[tuple[Any, ...]]:
        return fetch_comparable(self.target, table, order_by, skip_dlt=True)

    def sync(
        self,
        tables: Sequence[dict[str, Any] | TableConfig],
        *,
        raise_on_error: bool = True,
        extra_assets: Sequence[Any] = (),
        environ: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Materialize `tables` in process; `environ`: the settings' variables (none: defaults);
        `tags`: the run's tags."""
        configs = [
            t if isinstance(t, TableConfig) else parse_tables_config([t], "test")[0] for t in tables
        ]
        defs = build_definitions(configs, Settings.from_environ(environ or {}))
        return dg.materialize(
            assets=[*(defs.assets or []), *extra_assets],
            resources=self.resources(),
            raise_on_error=raise_on_error,
            tags=dict(tags or {}),
        )


def python_lines(
    code: str, *args: str, environ: Mapping[str, str], cwd: Path
) -> tuple[list[dict[str, Any]], str]:
    """Run `code` (which runs `mysqlsync-dagster sync --json`) in a fresh interpreter: the
    JSON lines the sync printed, and what the code printed after them."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=dict(environ),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report, _, after = done.stdout.rpartition("]")
    return json.loads(report + "]"), after


def start_sync_process(
    env: SyncEnv, tables: Sequence[dict[str, Any]], cwd: Path, environ: Mapping[str, str] = {}
) -> subprocess.Popen[bytes]:
    """A separate process that materializes `tables` (to be killed mid-run by a test)."""
    code = (
        "import json, sys, dagster as dg\n"
        "from mysqlsync_dagster.config import parse_tables_config\n"
        "from mysqlsync_dagster.orchestration.factory import build_definitions\n"
        "from mysqlsync_dagster.settings import Settings\n"
        "defs = build_definitions(parse_tables_config(json.loads(sys.argv[1])), Settings.from_environ())\n"
        "dg.materialize(list(defs.assets), resources=defs.resources)\n"
    )
    variables = {
        **os.environ,
        "SOURCE_DB_URL": env.source_url(),
        "TARGET_DB_URL": env.target_url(),
        **environ,
    }
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(list(tables))],
        env=variables,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def when_query(engine: sa.Engine, sql: str, action, *, timeout: float = 60) -> threading.Thread:
    """Poll `sql` on `engine` (a fresh connection each time); once it returns a row, run
    `action(row)` once, outside any connection to the server it may kill."""
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done.is_set():
            try:
                with engine.connect() as conn:
                    row = conn.exec_driver_sql(sql).first()
            except sa.exc.SQLAlchemyError:
                row = None
            if row is not None:
                action(row)
                done.set()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.fired = done  # type: ignore[attr-defined]
    thread.start()
    return thread


def kill_sync_process_when(
    env: SyncEnv, tables: Sequence[dict[str, Any]], cwd: Path, engine: sa.Engine, sql: str
) -> None:
    """Run a sync of `tables` in a process of its own and SIGKILL it once `sql` returns a
    row on `engine` (mid-run); fails the test if the sync ended before."""
    process = start_sync_process(env, tables, cwd)
    watcher = when_query(engine, sql, lambda row: os.kill(process.pid, signal.SIGKILL), timeout=120)
    process.wait(timeout=180)
    watcher.join(timeout=5)
    assert watcher.fired.is_set(), "the sync ended before it was killed: nothing was proved"
    assert process.returncode == -signal.SIGKILL


def table_resources(
    source_db: MySQLResource, target_db: MySQLResource, staging: StagingResource | None = None
) -> dict[str, Any]:
    """What the table assets need: both databases, staging's settings, the table reader."""
    reader = TargetTableReader(target_db=target_db)
    return {
        "source_db": source_db,
        "target_db": target_db,
        "staging": staging or StagingResource(),
        IO_MANAGER_KEY: reader,
        LEGACY_IO_MANAGER_KEY: reader,
    }


def _execute(engine: sa.Engine, statements: Sequence[str]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            run_sql(conn, statement)


def fetch_comparable(
    engine: sa.Engine,
    table: str,
    order_by: str = "1",
    *,
    skip_dlt: bool = False,
    raw_spatial: bool = False,
) -> list[tuple[Any, ...]]:
    """All rows with every column in an exact, comparable form (independent of the sync's
    own wire format): FLOAT as DOUBLE, TIMESTAMP as epoch, spatial as SRID + WKB text
    (`raw_spatial`: the stored bytes, as a PostgreSQL copy holds them)."""
    with engine.connect() as conn:
        columns = conn.execute(
            sa.text(
                "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t ORDER BY ORDINAL_POSITION"
            ),
            {"t": table},
        ).all()
        q = quote_identifier
        expressions = []
        for name, data_type in columns:
            if skip_dlt and name in ("_dlt_load_id", "_dlt_id"):
                continue
            col = q(name)
            if data_type == "float":
                expressions.append(f"CAST({col} AS DOUBLE)")
            elif data_type == "timestamp":
                expressions.append(f"UNIX_TIMESTAMP({col})")
            elif data_type in SPATIAL_TYPES and not raw_spatial:
                expressions.append(f"CONCAT(ST_SRID({col}), ':', ST_AsText({col}))")
            else:
                expressions.append(col)
        sql = f"SELECT {', '.join(expressions)} FROM {q(table)} ORDER BY {order_by}"
        return [tuple(row) for row in run_sql(conn, sql)]


def fetch_pg_comparable(
    engine: sa.Engine, schema: str, table: str, order_by: str = "1"
) -> list[tuple[Any, ...]]:
    """All rows of a PostgreSQL copy in the form `fetch_comparable(..., raw_spatial=True)`
    gives the MySQL source's (read independently of the product's digests): real as double,
    timestamptz as epoch seconds, json as its text, bit(n) as the bytes PyMySQL gives for
    BIT(n), bytea as bytes."""
    with engine.connect() as conn:
        columns = conn.execute(
            sa.text(
                "SELECT column_name, data_type, character_maximum_length"
                " FROM information_schema.columns WHERE table_schema = :s AND table_name = :t"
                " AND column_name NOT IN ('_dlt_load_id', '_dlt_id') ORDER BY ordinal_position"
            ),
            {"s": schema, "t": table},
        ).all()
        expressions, bits = [], {}
        for i, (name, data_type, length) in enumerate(columns):
            col = '"' + name.replace('"', '""') + '"'
            if data_type == "real":
                expressions.append(f"{col}::float8")
            elif data_type == "timestamp with time zone":
                expressions.append(f"extract(epoch from {col})")
            elif data_type == "json":
                expressions.append(f"{col}::text")
            elif data_type == "bit":
                expressions.append(f"{col}::text")
                bits[i] = length
            else:
                expressions.append(col)
        qualified = f'"{schema}"."{table}"'
        sql = f"SELECT {', '.join(expressions)} FROM {qualified} ORDER BY {order_by}"
        rows = []
        for row in conn.exec_driver_sql(sql):
            values = list(row)
            for i, value in enumerate(values):
                if isinstance(value, memoryview):
                    values[i] = value.tobytes()
                elif i in bits and value is not None:
                    values[i] = int(value, 2).to_bytes((bits[i] + 7) // 8, "big")
            rows.append(tuple(values))
        return rows


def fetch_duck_comparable(
    engine: sa.Engine, schema: str, table: str, source: sa.Engine, order_by: str = "1"
) -> list[tuple[Any, ...]]:
    """All rows of a DuckDB copy in the form `fetch_comparable(..., raw_spatial=True)` gives
    the MySQL source's (the source's column types say how: FLOAT as double, TIMESTAMP as epoch
    seconds, BIT as PyMySQL's bytes, DECIMAL(p > 38), held as text, as a Decimal)."""
    from decimal import Decimal

    with source.connect() as conn:
        source_types = dict(
            conn.execute(
                sa.text(
                    "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                ),
                {"t": table},
            ).all()
        )
    with engine.connect() as conn:
        names = (
            conn.execute(
                sa.text(
                    "SELECT column_name FROM duckdb_columns() WHERE schema_name = :s"
                    " AND table_name = :t AND column_name NOT IN ('_dlt_load_id', '_dlt_id')"
                    " ORDER BY column_index"
                ),
                {"s": schema, "t": table},
            )
            .scalars()
            .all()
        )
        expressions, convert = [], {}
        for i, name in enumerate(names):
            col = '"' + name.replace('"', '""') + '"'
            column_type = str(source_types.get(name, "")).lower()
            if column_type.startswith("float"):
                expressions.append(f"CAST({col} AS DOUBLE)")
            elif column_type.startswith("timestamp"):
                expressions.append(f"epoch_us({col})")
                convert[i] = lambda v: Decimal(v) / 1000000
            elif column_type.startswith("bit"):
                width = int(column_type[4:-1]) if "(" in column_type else 1
                expressions.append(col)
                convert[i] = lambda v, n=(width + 7) // 8: v.to_bytes(n, "big")
            elif column_type.startswith("decimal"):
                expressions.append(col)
                convert[i] = lambda v: Decimal(v) if isinstance(v, str) else v
            else:
                expressions.append(col)
        sql = f'SELECT {", ".join(expressions)} FROM "{schema}"."{table}" ORDER BY {order_by}'
        return [
            tuple(convert[i](v) if i in convert and v is not None else v for i, v in enumerate(row))
            for row in conn.exec_driver_sql(sql)
        ]


def failure_message(result: dg.ExecuteInProcessResult, node: str) -> str:
    """The innermost error message of step `node`'s one failure."""
    [failure] = [e for e in result.get_step_failure_events() if e.step_key == node]
    error = failure.event_specific_data.error
    while error.cause is not None:
        error = error.cause
    return error.message


def materialization_metadata(
    result: dg.ExecuteInProcessResult, node: str = "sync_orders"
) -> dict[str, Any]:
    """The plain values of the one materialization of `node` in `result`."""
    [mat] = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def stored_cursor(sync_env: SyncEnv, table: str = "orders") -> str | None:
    """The incremental cursor `_mysqlsync_state` holds for target `table` (None: no state)."""
    with sync_env.target.connect() as conn:
        return conn.execute(
            sa.text("SELECT cursor_value FROM _mysqlsync_state WHERE target_table = :t"),
            {"t": table},
        ).scalar_one_or_none()


def column_types(engine: sa.Engine, table: str) -> list[tuple[Any, ...]]:
    """(name, COLUMN_TYPE, nullable, charset, collation, default, extra) per column."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME,"
                    " COLLATION_NAME, COLUMN_DEFAULT, EXTRA FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                    " AND COLUMN_NAME NOT IN ('_dlt_load_id', '_dlt_id')"
                    " ORDER BY ORDINAL_POSITION"
                ),
                {"t": table},
            )
        ]


@dataclass
class PgSyncEnv(SyncEnv):
    """A MariaDB source database and a PostgreSQL target database for one test."""

    pg_server: PostgresServer | None = None
    schema: str = "public"

    def target_url(self) -> str:
        assert self.pg_server is not None
        return self.pg_server.url(self.target_db)

    def target_exec(self, *statements: str) -> None:
        with self.target.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def target_rows(self, table: str, order_by: str = "1") -> list[tuple[Any, ...]]:
        return fetch_pg_comparable(self.target, self.schema, table, order_by)

    def source_rows(self, table: str, order_by: str = "1") -> list[tuple[Any, ...]]:
        return fetch_comparable(self.source, table, order_by, raw_spatial=True)


@dataclass
class DuckSyncEnv(SyncEnv):
    """A MariaDB source database and a DuckDB file target for one test."""

    path: str = ""
    schema: str = "main"

    def target_url(self) -> str:
        return f"duckdb:///{self.path}"

    def target_exec(self, *statements: str) -> None:
        with self.target.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def target_rows(self, table: str, order_by: str = "1") -> list[tuple[Any, ...]]:
        return fetch_duck_comparable(self.target, self.schema, table, self.source, order_by)

    def source_rows(self, table: str, order_by: str = "1") -> list[tuple[Any, ...]]:
        return fetch_comparable(self.source, table, order_by, raw_spatial=True)


@contextlib.contextmanager
def mariadb_database(handle: ServerHandle, name: str) -> Iterator[sa.Engine]:
    """A utf8mb4 database `name` on a test server, dropped afterwards; yields its engine."""
    admin = handle.engine()
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    engine = handle.engine(name)
    try:
        yield engine
    finally:
        engine.dispose()
        with contextlib.suppress(sa.exc.SQLAlchemyError), admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


@contextlib.contextmanager
def postgres_database(server: PostgresServer, name: str) -> Iterator[sa.Engine]:
    """A database `name` on the test PostgreSQL (sessions in UTC), dropped afterwards."""
    admin = sa.create_engine(
        server.url("postgres").replace("postgresql://", "postgresql+psycopg2://"),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = sa.create_engine(
        server.url(name).replace("postgresql://", "postgresql+psycopg2://"),
        connect_args={"options": "-c TimeZone=UTC"},
    )
    try:
        yield engine
    finally:
        engine.dispose()
        with contextlib.suppress(sa.exc.SQLAlchemyError), admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _database_names() -> tuple[str, str]:
    n = next(_counter)
    return f"src_{os.getpid()}_{n}", f"tgt_{os.getpid()}_{n}"


@pytest.fixture
def duck_sync_env(mariadb_servers: ServerPair, tmp_path: Path) -> Iterator[DuckSyncEnv]:
    source_db, _ = _database_names()
    path = str(tmp_path / "copy.duckdb")
    target = sa.create_engine(f"duckdb:///{path}")
    with mariadb_database(mariadb_servers.source, source_db) as source:
        yield DuckSyncEnv(
            mariadb_servers, source_db, path, source, target,
            staging_dir=str(tmp_path / "staging"), path=path,
        )  # fmt: skip
    target.dispose()


@pytest.fixture
def pg_sync_env(
    mariadb_servers: ServerPair, postgres_server: PostgresServer, tmp_path: Path
) -> Iterator[PgSyncEnv]:
    source_db, target_db = _database_names()
    with (
        mariadb_database(mariadb_servers.source, source_db) as source,
        postgres_database(postgres_server, target_db) as target,
    ):
        yield PgSyncEnv(
            mariadb_servers, source_db, target_db, source, target,
            staging_dir=str(tmp_path / "staging"), pg_server=postgres_server,
        )  # fmt: skip


@pytest.fixture
def sync_env(mariadb_servers: ServerPair, tmp_path: Path) -> Iterator[SyncEnv]:
    source_db, target_db = _database_names()
    with (
        mariadb_database(mariadb_servers.source, source_db) as source,
        mariadb_database(mariadb_servers.target, target_db) as target,
    ):
        yield SyncEnv(
            mariadb_servers, source_db, target_db, source, target,
            staging_dir=str(tmp_path / "staging"),
        )  # fmt: skip
