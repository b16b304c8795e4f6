"""The one place that builds database URLs and SQLAlchemy engines, and classifies MySQL errors.

Sessions opened here always run with `time_zone = '+00:00'` and utf8mb4, so TIMESTAMP values are
read and written as the same instant on both sides whatever the servers' own time zones are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Engine

# MySQL/MariaDB error codes worth retrying: the same statement can succeed a moment later.
TRANSIENT_ERROR_CODES = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout exceeded
        1213,  # deadlock found
        1927,  # connection was killed (MariaDB)
        2003,  # can't connect (server restarting)
        2006,  # server has gone away
        2013,  # lost connection during query
        2014,  # commands out of sync after a broken connection
        2055,  # lost connection (SSL)
        4031,  # disconnected by the server because of inactivity
    }
)
_TRANSIENT_TEXT = re.compile(
    r"Lost connection|server has gone away|Connection refused|Broken pipe|Connection reset|"
    r"Deadlock found|Lock wait timeout|QueuePool limit|"
    # connectorx (Rust driver) losing its connection mid-read; its reader process reports it
    # as "PanicException: cx writer failed: Source(MySQLError(IoError { server disconnected }))"
    r"bytes remaining on stream|CodecError \{ IO error|IoError \{|server disconnected|"
    r"read timed out",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class DatabaseSettings:
    """Everything needed to connect to one side (source or target)."""

    url: URL
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_verify: bool = True
    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    pool_recycle: int = 3600
    # Seconds without an answer before a socket operation gives up (a stalled network or a hung
    # server then fails the run, and it is retried, instead of hanging it forever). Generous,
    # so that a long ALTER TABLE or RENAME waiting for readers is not cut short.
    connect_timeout: int = 10
    read_timeout: int | None = 1800
    write_timeout: int | None = 1800
    extra_connect_args: Mapping[str, object] = field(default_factory=dict)

    @property
    def database(self) -> str:
        if not self.url.database:
            raise ValueError(f"{redact_url(self.url)}: the URL names no database")
        return self.url.database

    @property
    def ssl(self) -> dict[str, object] | None:
        if not (self.ssl_ca or self.ssl_cert or self.ssl_key):
            return None
        ssl: dict[str, object] = {}
        if self.ssl_ca:
            ssl["ca"] = self.ssl_ca
        if self.ssl_cert:
            ssl["cert"] = self.ssl_cert
        if self.ssl_key:
            ssl["key"] = self.ssl_key
        ssl["check_hostname"] = self.ssl_verify
        if not self.ssl_verify:
            ssl["verify_mode"] = False
        return ssl

    @property
    def secrets(self) -> list[str]:
        return [self.url.password] if self.url.password else []

    def connectorx_url(self) -> str:
        """A `mysql://` URL for connectorx (Rust driver): same credentials, no SQLAlchemy driver.

        `prefer_socket=false`: the driver's default, after connecting to a loopback address,
        reads the server's `@@socket` and reconnects through that Unix socket, bypassing the
        host and port configured (an SSH tunnel or a proxy on 127.0.0.1, or even reaching a
        different local server that owns that socket path). Connect where the URL says, as
        PyMySQL does.
        """
        user = quote(self.url.username or "", safe="")
        password = quote(self.url.password or "", safe="")
        auth = f"{user}:{password}@" if password else f"{user}@"
        host = self.url.host or "127.0.0.1"
        port = self.url.port or 3306
        return f"mysql://{auth}{host}:{port}/{quote_plus(self.database)}?prefer_socket=false"


def normalize_url(raw: str | URL) -> URL:
    """Accept mysql://, mariadb://, mysql+pymysql:// ...; always drive through PyMySQL."""
    url = sa.make_url(raw) if isinstance(raw, str) else raw
    backend = url.get_backend_name()
    if backend not in ("mysql", "mariadb"):
        raise ValueError(f"{redact_url(url)}: expected a mysql:// or mariadb:// URL")
    return url.set(drivername="mysql+pymysql")


def url_from_parts(
    host: str,
    port: int | str | None,
    database: str,
    user: str | None,
    password: str | None,
) -> URL:
    """Build a URL from parts; passwords with @ : / % need no escaping by the user."""
    return URL.create(
        "mysql+pymysql",
        username=user or None,
        password=password or None,
        host=host,
        port=int(port) if port not in (None, "") else 3306,
        database=database,
    )


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on", "required", "verify")


def settings_from_env(side: str, environ: Mapping[str, str] | None = None) -> DatabaseSettings:
    """Settings for `side` ("SOURCE" or "TARGET") from `<SIDE>_DB_URL` or the `<SIDE>_DB_*` parts."""
    env = os.environ if environ is None else environ
    prefix = f"{side.upper()}_DB_"
    if env.get(prefix + "URL"):
        url = normalize_url(env[prefix + "URL"])
    else:
        missing = [k for k in ("HOST", "NAME") if not env.get(prefix + k)]
        if missing:
            raise ValueError(
                f"{side.lower()} database not configured: set {prefix}URL or "
                + ", ".join(prefix + k for k in ("HOST", "PORT", "NAME", "USER", "PASS"))
            )
        url = url_from_parts(
            env[prefix + "HOST"],
            env.get(prefix + "PORT"),
            env[prefix + "NAME"],
            env.get(prefix + "USER"),
            env.get(prefix + "PASS"),
        )
    return DatabaseSettings(
        url=url,
        ssl_ca=env.get(prefix + "SSL_CA") or None,
        ssl_cert=env.get(prefix + "SSL_CERT") or None,
        ssl_key=env.get(prefix + "SSL_KEY") or None,
        ssl_verify=_env_bool(env.get(prefix + "SSL_VERIFY"), True),
        pool_size=int(env.get("POOL_SIZE", 5)),
        max_overflow=int(env.get("MAX_OVERFLOW", 10)),
        pool_timeout=float(env.get("POOL_TIMEOUT", 30)),
        pool_recycle=int(env.get("POOL_RECYCLE", 3600)),
        connect_timeout=int(env.get("DB_CONNECT_TIMEOUT", 10)),
        read_timeout=int(env.get("DB_READ_TIMEOUT", 1800)),
        write_timeout=int(env.get("DB_WRITE_TIMEOUT", 1800)),
    )


def create_engine(settings: DatabaseSettings, *, local_infile: bool = False) -> Engine:
    """A pooled engine whose connections are checked before use (a dead pool heals itself)."""
    connect_args: dict[str, object] = {
        "charset": "utf8mb4",
        "init_command": "SET time_zone = '+00:00'",
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
    return sa.create_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def redact_url(url: URL | str) -> str:
    if isinstance(url, str):
        url = sa.make_url(url)
    return url.render_as_string(hide_password=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove every secret, raw or URL-encoded, from a message."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return text


def _error_chain(error: BaseException) -> list[BaseException]:
    """The error, what it wraps (`orig`), and what caused it, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException) and orig not in chain:
            chain.append(orig)
        current = current.__cause__ or current.__context__
    return chain


def mysql_error_code(error: BaseException) -> int | None:
    """The MySQL error number behind a (possibly wrapped) driver exception, if any: PyMySQL's
    first argument, or the "ERROR 1927 (70100)" in the text connectorx's reader reports."""
    chain = _error_chain(error)
    for candidate in chain:
        if candidate.args and isinstance(candidate.args[0], int):
            return candidate.args[0]
    for candidate in chain:
        found = _RUST_DRIVER_CODE.search(str(candidate))
        if found:
            return int(found.group(1))
    return None


_RUST_DRIVER_CODE = re.compile(r"\bERROR (\d{4}) \(\w{5}\)")


# TLS failures arrive as "can't connect" (2003) but will fail the same way every time.
_PERMANENT_TEXT = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed")


def is_transient(error: BaseException) -> bool:
    """True for errors where trying again later is the right response."""
    if any(_PERMANENT_TEXT.search(str(e)) for e in _error_chain(error)):
        return False
    if isinstance(error, sa.exc.TimeoutError):  # pool exhausted for pool_timeout seconds
        return True
    code = mysql_error_code(error)
    if code is not None:
        return code in TRANSIENT_ERROR_CODES
    return bool(_TRANSIENT_TEXT.search(str(error)))


# A MySQL dialect with no driver behind it: quotes identifiers and renders SQL as the server will
# read it. (PyMySQL's dialect doubles `%` while quoting; `run_sql` does that exactly once.)
PLAIN_MYSQL = mysql.dialect(paramstyle="named")


class ConnectionFailure(RuntimeError):
    """A database could not be reached or refused us; the message says which and what to do."""


def describe_connection_error(side: str, settings: DatabaseSettings, error: BaseException) -> str:
    """One actionable line for a failed connection, naming the side; never the password."""
    url = settings.url
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
