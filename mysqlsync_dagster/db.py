"""The one place that builds SQLAlchemy engines, opens connections and runs MySQL SQL text.

Sessions opened here always run with `time_zone = '+00:00'` and utf8mb4, so TIMESTAMP values are
read and written as the same instant on both sides whatever the servers' own time zones are, and
without `NO_ZERO_DATE`/`NO_ZERO_IN_DATE` in their `sql_mode` (MySQL 8 has both by default), so
that a legacy `DEFAULT '0000-00-00 00:00:00'` is mirrored as the source has it instead of failing
CREATE and ALTER TABLE ("Invalid default value"). Strict mode stays: the copy never writes a zero
date (they become NULL, see `pipeline/wire.py`).
"""

from __future__ import annotations

import functools
import importlib.abc
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine

from mysqlsync_dagster.errors import ConnectionFailure, mysql_error_code, redact
from mysqlsync_dagster.settings import DatabaseSettings

# The server's sql_mode without the two zero-date modes, nor TRADITIONAL, which would bring
# them back (its other modes are listed on their own); no empty item is left in the list
SESSION_SETTINGS = (
    "SET time_zone = '+00:00', sql_mode = TRIM(BOTH ',' FROM"
    " REPLACE(REPLACE(REPLACE(CONCAT(',', @@sql_mode, ','), ',NO_ZERO_IN_DATE,', ','),"
    " ',NO_ZERO_DATE,', ','), ',TRADITIONAL,', ','))"
)


def create_engine(settings: DatabaseSettings, *, local_infile: bool = False) -> Engine:
    """A pooled engine whose connections are checked before use (a dead pool heals itself)."""
    if settings.dialect == "postgresql":
        return _postgres_engine(settings)
    if settings.dialect == "duckdb":
        return _duckdb_engine(settings)
    connect_args: dict[str, object] = {
        "charset": "utf8mb4",
        "init_command": SESSION_SETTINGS,
        "connect_timeout": settings.connect_timeout,
        "local_infile": local_infile,
        **settings.extra_connect_args,
    }
    if settings.read_timeout:
        connect_args["read_timeout"] = settings.read_timeout
    if settings.write_timeout:
        connect_args["write_timeout"] = settings.write_timeout
    if settings.ssl:
        connect_args["ssl"] = settings.ssl
    engine = _pooled(settings, connect_args)
    sa.event.listen(engine, "do_connect", _connect_pymysql)
    return engine


def _connect_pymysql(
    dialect: Any, record: Any, cargs: Sequence[Any], cparams: dict[str, Any]
) -> Any:
    """A PyMySQL connection that shares one TLS context with the others of this process
    when no TLS is configured (`_pymysql_connection`)."""
    return _pymysql_connection()(*cargs, **cparams)


@functools.cache
def _pymysql_connection() -> type:
    """PyMySQL's connection class, but for one thing: without TLS settings, PyMySQL prefers
    TLS (used where the server offers it, unverified) and builds a TLS context for every
    connection, loading the system's CA store to no end (verification is off): 20-25 ms of
    CPU a connection, three per sync process. Those connections share one context here; a
    configured TLS (`_SSL_CA`, verified) still gets its own, as PyMySQL builds it."""
    import pymysql.connections

    class Connection(pymysql.connections.Connection):  # type: ignore[misc]
        _preferred: Any = None

        def _create_ssl_ctx(self, sslp: Any) -> Any:
            if isinstance(sslp, dict) and not sslp:  # PREFERRED: no CA, no verification
                cls = type(self)
                if cls._preferred is None:
                    cls._preferred = super()._create_ssl_ctx(sslp)
                return cls._preferred
            return super()._create_ssl_ctx(sslp)

    return Connection


def _pooled(
    settings: DatabaseSettings, connect_args: dict[str, object], url: sa.URL | None = None
) -> Engine:
    return sa.create_engine(
        url or settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def _duckdb_engine(settings: DatabaseSettings) -> Engine:
    """A DuckDB file, opened by this process (DuckDB lets one process write a file at a time:
    another one waits for it as for a lock, see errors.py). A TIMESTAMP's copy is a TIMESTAMPTZ,
    written from UTC text and read as the UTC instant (without DuckDB's ICU extension, which
    is not loaded, every TIMESTAMPTZ is shown in UTC)."""
    path = Path(settings.database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = _pooled(
        settings, dict(settings.extra_connect_args), settings.url.set(database=str(path))
    )
    _NoPandasForParameters.install()
    return engine


class _NoPandasForParameters(importlib.abc.MetaPathFinder):
    """Keeps DuckDB's parameter binding from importing pandas, which took 0.2-0.3 s of every
    run into DuckDB (a third of a no-change run's own work). DuckDB's Python binding imports
    pandas on every statement with parameters, to ask whether a value is `pandas.NaT` or
    `pandas.NA`; while pandas is not imported, no value can be either. So an import of pandas
    asked for by `duckdb_engine`'s cursor itself (the nearest Python frame of the import) is
    refused, and DuckDB treats pandas as absent, as it does where pandas is not installed.
    Once anything else has imported pandas, `sys.modules` answers and this finder is never
    asked; an import from any other frame (user code, a DataFrame's `register`) goes on."""

    _installed = False

    @classmethod
    def install(cls) -> None:
        if not cls._installed:
            import duckdb_engine

            wrapper = duckdb_engine.CursorWrapper
            cls._callers = frozenset({wrapper.execute.__code__, wrapper.executemany.__code__})
            sys.meta_path.insert(0, cls())
            cls._installed = True

    _callers: frozenset[Any] = frozenset()

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name != "pandas":
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
            frame = frame.f_back
        if frame is not None and frame.f_code in self._callers:
            raise ModuleNotFoundError("pandas is not imported by DuckDB's parameters", name=name)
        return None


def _postgres_engine(settings: DatabaseSettings) -> Engine:
    """psycopg2 sessions in UTC (timestamptz values read and written as instants), with TCP
    keepalives so that a dead server or network fails a run instead of hanging it; TLS as
    the settings say (`verify-full` with a CA, `require` without verification)."""
    connect_args: dict[str, object] = {
        "connect_timeout": settings.connect_timeout,
        "options": "-c TimeZone=UTC -c client_encoding=UTF8 -c DateStyle=ISO",
        "application_name": "mysqlsync-dagster",
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 6,
        **settings.extra_connect_args,
    }
    if settings.ssl_ca or settings.ssl_cert or settings.ssl_key:
        connect_args["sslmode"] = "verify-full" if settings.ssl_verify else "require"
        if settings.ssl_ca:
            connect_args["sslrootcert"] = settings.ssl_ca
        if settings.ssl_cert:
            connect_args["sslcert"] = settings.ssl_cert
        if settings.ssl_key:
            connect_args["sslkey"] = settings.ssl_key
    return _pooled(settings, connect_args)


# A MySQL dialect with no driver behind it: quotes identifiers and renders SQL as the server will
# read it. (PyMySQL's dialect doubles `%` while quoting; `run_sql` does that exactly once.)
PLAIN_MYSQL = mysql.dialect(paramstyle="named")


def describe_connection_error(side: str, settings: DatabaseSettings, error: BaseException) -> str:
    """One actionable line for a failed connection, naming the side; never the password."""
    url = settings.url
    if settings.dialect == "postgresql":
        return redact(_describe_postgres_error(side, settings, error), settings.secrets)
    where = f"{url.host or '127.0.0.1'}:{url.port or 3306}"
    prefix = f"{side.upper()}_DB_"
    code = mysql_error_code(error)
    orig = getattr(error, "orig", error)
    detail = str(orig.args[1]) if len(getattr(orig, "args", ())) > 1 else str(orig)
    if code in (1045, 1698):
        text = (
            f"{side} database at {where}: access denied for user {url.username!r}; check "
            f"{prefix}USER and {prefix}PASS (or the credentials in {prefix}URL)"
        )
    elif code == 1049:
        text = (
            f"{side} database {url.database!r} does not exist on {where}; check "
            f"{prefix}NAME (or the database in {prefix}URL)"
        )
    elif code in (2003, 2005):
        text = (
            f"cannot reach the {side} database server at {where} ({detail}); is it running "
            f"and reachable? check {prefix}HOST and {prefix}PORT (or {prefix}URL)"
        )
    elif code is not None:
        text = f"{side} database at {where}: MySQL error {code}: {detail}"
    else:
        text = f"{side} database at {where}: {type(error).__name__}: {error}"
    return redact(text, settings.secrets)


def _describe_postgres_error(side: str, settings: DatabaseSettings, error: BaseException) -> str:
    url = settings.url
    where = f"{url.host or '127.0.0.1'}:{url.port or 5432}"
    prefix = f"{side.upper()}_DB_"
    detail = " ".join(str(getattr(error, "orig", error)).split())
    if "password authentication failed" in detail or "no pg_hba.conf entry" in detail:
        return (
            f"{side} database at {where}: access denied for user {url.username!r} ({detail}); "
            f"check {prefix}USER and {prefix}PASS (or the credentials in {prefix}URL)"
        )
    if "does not exist" in detail and "database" in detail:
        return (
            f"{side} database {url.database!r} does not exist on {where}; check "
            f"{prefix}NAME (or the database in {prefix}URL)"
        )
    if "Connection refused" in detail or "could not connect" in detail or "timeout" in detail:
        return (
            f"cannot reach the {side} database server at {where} ({detail}); is it running "
            f"and reachable? check {prefix}HOST and {prefix}PORT (or {prefix}URL)"
        )
    return f"{side} database at {where}: {type(error).__name__}: {detail}"


def connect(engine: Engine, side: str, settings: DatabaseSettings) -> sa.Connection:
    """`engine.connect()`, with a failure to connect explained by `describe_connection_error`."""
    try:
        return engine.connect()
    except sa.exc.DBAPIError as error:
        raise ConnectionFailure(describe_connection_error(side, settings, error)) from error


def quote_identifier(name: str) -> str:
    """`name` quoted for MySQL/MariaDB: backticks around it, backticks inside doubled."""
    return PLAIN_MYSQL.identifier_preparer.quote_identifier(name)


def run_sql(
    conn: sa.Connection, sql: str, params: Mapping[str, object] | None = None
) -> sa.CursorResult[Any]:
    """Execute SQL assembled from dialect-quoted identifiers or DDL copied from the server.

    PyMySQL %-formats every statement, so each literal `%` (in a table name, a comment, a
    DEFAULT) is doubled; values go in `params` and are written `%(name)s` in `sql`.
    """
    escaped = sql.replace("%", "%%")
    for name in params or {}:
        escaped = escaped.replace(f"%%({name})s", f"%({name})s")
    return conn.exec_driver_sql(escaped, dict(params or {}))


def key_in(
    columns: Sequence[sa.ColumnElement[Any]], keys: Sequence[tuple[Any, ...]]
) -> sa.ColumnElement[bool]:
    """`columns IN keys`: a plain IN for one column, a row constructor for several."""
    if len(columns) == 1:
        return columns[0].in_([k[0] for k in keys])
    return sa.tuple_(*columns).in_(keys)
