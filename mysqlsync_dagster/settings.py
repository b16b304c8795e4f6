"""The environment, read once: every variable the product understands, parsed into `Settings`.

This is the only module that reads `os.environ` (and `.env`). `Settings.from_environ()` is called
at the edge (the code location, the CLI) and the object is passed down; tests build one from a
dict. A value that does not parse raises one `ConfigError` that names the variable.

Connection settings are the exception that proves the rule: the Dagster resources bind them as
`dg.EnvVar`s so that the UI shows variable names, never values, and they are resolved when a run
starts. Both paths build `DatabaseSettings` with the same `database_settings()`.

`VARIABLES` lists every variable with its default and meaning: the deployment files are checked
against it (`.env.example` must list each one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.engine import URL

from mysqlsync_dagster.errors import ConfigError

Side = Literal["source", "target"]
Trigger = Literal["schedule", "sensor"]
COMPRESSIONS = ("snappy", "zstd", "gzip", "brotli")
# Binlog readers take `BINLOG_SERVER_ID` + (pid mod SPAN) as their replica server id, so that
# two readers never share one: the source drops the older of two replica connections that do.
BINLOG_SERVER_ID = 0x4D53_0000  # "MS" in the high bytes: far from the usual small ids
BINLOG_SERVER_ID_SPAN = 0x8000


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    meaning: str


_SIDE_PARTS = {
    "DB_URL": "SQLAlchemy URL (mysql://user:pass@host:3306/db); wins over the parts",
    "DB_DIALECT": "mysql (the default; MariaDB too) or postgresql: the server the parts name",
    "DB_HOST": "host name",
    "DB_PORT": "port (3306)",
    "DB_NAME": "database name",
    "DB_USER": "user",
    "DB_PASS": "password (no encoding needed)",
    "DB_SSL_CA": "CA file: enables TLS",
    "DB_SSL_CERT": "client certificate (mutual TLS)",
    "DB_SSL_KEY": "client key (mutual TLS)",
    "DB_SSL_VERIFY": "verify the certificate and the host name (true)",
}
STAGING_VARIABLES = {  # StagingSettings.parse argument -> variable
    "directory": "STAGING_DIR",
    "compression": "PARQUET_COMPRESSION",
    "retention_hours": "STAGING_RETENTION_HOURS",
}
POOL_VARIABLES = {  # DatabaseSettings field -> variable, shared by both sides
    "pool_size": "POOL_SIZE",
    "max_overflow": "MAX_OVERFLOW",
    "pool_timeout": "POOL_TIMEOUT",
    "pool_recycle": "POOL_RECYCLE",
    "connect_timeout": "DB_CONNECT_TIMEOUT",
    "read_timeout": "DB_READ_TIMEOUT",
    "write_timeout": "DB_WRITE_TIMEOUT",
}

VARIABLES: tuple[Variable, ...] = (
    *(
        Variable(f"{side}_{part}", None, f"{side.lower()} database: {meaning}")
        for side in ("SOURCE", "TARGET")
        for part, meaning in _SIDE_PARTS.items()
        if side == "TARGET" or part != "DB_DIALECT"  # the source is MySQL/MariaDB
    ),
    Variable("TABLES_CONFIG", "tables.json", "path of tables.json"),
    Variable("INTERVAL", "300", "seconds between scheduled syncs"),
    Variable("SYNC_TRIGGER", "schedule", "what starts syncs: schedule or sensor"),
    Variable("SENSOR_INTERVAL", "30", "seconds between change-sensor polls"),
    Variable("SYNC_RETRIES", "4", "retries of a sync that failed for a passing reason"),
    Variable("SYNC_RETRY_DELAY", "10", "first wait before a retry, seconds"),
    Variable("SOURCE_TIMEZONE", "UTC", "time zone of naive DATETIME values in the source"),
    Variable("POOL_SIZE", "5", "SQLAlchemy pool size"),
    Variable("MAX_OVERFLOW", "10", "connections beyond the pool size"),
    Variable("POOL_TIMEOUT", "30", "seconds to wait for a free connection"),
    Variable("POOL_RECYCLE", "3600", "seconds after which a pooled connection is replaced"),
    Variable("DB_CONNECT_TIMEOUT", "10", "seconds before connecting gives up"),
    Variable("DB_READ_TIMEOUT", "1800", "seconds without an answer before a read gives up"),
    Variable("DB_WRITE_TIMEOUT", "1800", "seconds before a write gives up"),
    Variable("STAGING_DIR", ".staging", "where staging mode writes Parquet files"),
    Variable("PARQUET_COMPRESSION", "zstd", "codec of staged files: " + ", ".join(COMPRESSIONS)),
    Variable("STAGING_RETENTION_HOURS", "24", "hours staged files are kept"),
    Variable(
        "BINLOG_SERVER_ID", str(BINLOG_SERVER_ID), "binlog tables: lowest server id of readers"
    ),
    Variable("BINLOG_RESNAPSHOT", "false", "binlog tables: copy anew when the binlog was purged"),
    Variable("ARROW_DEFAULT_MEMORY_POOL", None, "Arrow's allocator (default: jemalloc)"),
    Variable("DAGSTER_HOME", None, "Dagster's instance directory (runs kept there)"),
)


# -- parsing helpers ---------------------------------------------------------------------
def _whole(name: str, raw: object, *, minimum: int = 0) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _number(name: str, raw: object, *, minimum: float = 0.0) -> float:
    try:
        value = float(str(raw).strip()) if not isinstance(raw, int | float) else float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum:g}, got {value:g}")
    return value


def positive_seconds(name: str, raw: object) -> int:
    """A positive whole number of seconds."""
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name}: expected whole seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name}: must be positive, got {value}")
    return value


def _server_id(raw: str | None) -> int:
    """`BINLOG_SERVER_ID`: readers take this id plus less than `BINLOG_SERVER_ID_SPAN`."""
    if raw is None or not raw.strip():
        return BINLOG_SERVER_ID
    value = _whole("BINLOG_SERVER_ID", raw, minimum=1)
    highest = 2**32 - 1 - BINLOG_SERVER_ID_SPAN
    if value > highest:
        raise ConfigError(f"BINLOG_SERVER_ID: {value} is above {highest}")
    return value


def parse_bool(raw: object, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    return str(raw).strip().lower() in ("1", "true", "yes", "on", "required", "verify")


def timezone_name(raw: str | None) -> str:
    name = raw or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"SOURCE_TIMEZONE: {name!r} is not a known time zone (e.g. 'UTC', 'Asia/Jakarta')"
        ) from None
    return name


# -- one database ------------------------------------------------------------------------
def redact_url(url: URL | str) -> str:
    if isinstance(url, str):
        url = sa.make_url(url)
    return url.render_as_string(hide_password=True)


Dialect = Literal["mysql", "postgresql", "duckdb"]
# backend name in a URL -> (dialect, the driver every connection goes through, default port)
_BACKENDS: dict[str, tuple[Dialect, str, int]] = {
    "mysql": ("mysql", "mysql+pymysql", 3306),
    "mariadb": ("mysql", "mysql+pymysql", 3306),
    "postgresql": ("postgresql", "postgresql+psycopg2", 5432),
    "postgres": ("postgresql", "postgresql+psycopg2", 5432),
    "duckdb": ("duckdb", "duckdb", 0),
}


def _backend(name: str, what: str, side: str) -> tuple[Dialect, str, int]:
    found = _BACKENDS.get(name.lower())
    if found is None or (found[0] != "mysql" and side.lower() != "target"):
        expected = "mysql:// or mariadb://"
        if side.lower() == "target":
            expected = "mysql://, mariadb://, postgresql:// or duckdb:///path/file.duckdb"
        raise ConfigError(f"{what}: expected a {expected} URL")
    return found


def normalize_url(raw: str | URL, variable: str = "URL", side: str = "source") -> URL:
    """Accept mysql://, mariadb://, mysql+pymysql:// ... (and, for the target,
    postgresql://, postgres://); always drive through PyMySQL or psycopg2."""
    try:
        url = sa.make_url(raw) if isinstance(raw, str) else raw
    except sa.exc.ArgumentError:
        raise ConfigError(f"{variable}: not a database URL (e.g. mysql://user@host/db)") from None
    dialect, driver, _ = _backend(url.get_backend_name(), redact_url(url), side)
    if dialect == "duckdb" and not url.database:
        raise ConfigError(f"{variable}: name the DuckDB file, e.g. duckdb:///data/copy.duckdb")
    return url.set(drivername=driver)


def url_from_parts(
    host: str,
    port: int | str | None,
    database: str,
    user: str | None,
    password: str | None,
    dialect: str = "mysql",
) -> URL:
    """Build a URL from parts; passwords with @ : / % need no escaping by the user."""
    _, driver, default_port = _BACKENDS[dialect]
    return URL.create(
        driver,
        username=user or None,
        password=password or None,
        host=host,
        port=int(port) if port not in (None, "") else default_port,
        database=database,
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
    def dialect(self) -> Dialect:
        """The kind of server: "mysql" (MySQL or MariaDB), "postgresql" or "duckdb"."""
        return _BACKENDS[self.url.get_backend_name()][0]

    @property
    def database(self) -> str:
        if not self.url.database:
            raise ConfigError(f"{redact_url(self.url)}: the URL names no database")
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

    @property
    def connectorx_tls(self) -> bool:
        """Whether connectorx can connect as PyMySQL does: always without TLS, and with TLS
        unless a client certificate is configured (mutual TLS), which its driver cannot present
        (its URL takes `ssl-mode` and `ssl-ca` only)."""
        return not (self.ssl_cert or self.ssl_key)

    def connectorx_url(self) -> str:
        """A `mysql://` URL for connectorx (Rust driver): same credentials, no SQLAlchemy driver.

        `prefer_socket=false`: the driver's default, after connecting to a loopback address,
        reads the server's `@@socket` and reconnects through that Unix socket, bypassing the
        host and port configured (an SSH tunnel or a proxy on 127.0.0.1, or even reaching a
        different local server that owns that socket path). Connect where the URL says, as
        PyMySQL does.

        With TLS (`DB_SSL_CA`), the same checks as the PyMySQL connections: `ssl-mode=
        VERIFY_IDENTITY` with the CA (chain and host name verified), or `REQUIRED` (encrypted,
        nothing verified) with `DB_SSL_VERIFY` off. `ssl-ca` alone would not encrypt at all.
        Mutual TLS cannot be expressed: `ConfigError` (see `connectorx_tls`).
        """
        user = quote(self.url.username or "", safe="")
        password = quote(self.url.password or "", safe="")
        auth = f"{user}:{password}@" if password else f"{user}@"
        host = self.url.host or "127.0.0.1"
        if self.dialect == "postgresql":
            return self._connectorx_postgres_url(auth, host)
        port = self.url.port or 3306
        url = f"mysql://{auth}{host}:{port}/{quote_plus(self.database)}?prefer_socket=false"
        if self.ssl is None:
            return url
        if not self.connectorx_tls:
            raise ConfigError(
                "connectorx cannot present a client certificate (DB_SSL_CERT, DB_SSL_KEY)"
            )
        if not self.ssl_verify:
            return url + "&ssl-mode=REQUIRED"
        return url + f"&ssl-mode=VERIFY_IDENTITY&ssl-ca={quote(str(self.ssl_ca), safe='/')}"

    def _connectorx_postgres_url(self, auth: str, host: str) -> str:
        """connectorx's PostgreSQL URL (binary protocol), TLS as psycopg2 is configured."""
        url = (
            f"postgresql://{auth}{host}:{self.url.port or 5432}/{quote_plus(self.database)}"
            "?cxprotocol=binary"
        )
        if self.ssl is not None:
            url += "&sslmode=" + ("verify-full" if self.ssl_verify else "require")
            for option, value in (
                ("sslrootcert", self.ssl_ca),
                ("sslcert", self.ssl_cert),
                ("sslkey", self.ssl_key),
            ):
                if value:
                    url += f"&{option}={quote(str(value), safe='/')}"
        return url


def database_settings(side: str, values: Mapping[str, object]) -> DatabaseSettings:
    """`DatabaseSettings` for `side` from `<SIDE>_DB_*` and pool values, keyed by variable name.

    Values may be text (from the environment) or already typed (from a resource's fields);
    unset ones are None or absent. Errors name the variable.
    """
    prefix = f"{side.upper()}_DB_"

    def get(name: str) -> Any:
        value = values.get(name)
        return None if value is None or value == "" else value

    if get(prefix + "URL"):
        url = normalize_url(str(get(prefix + "URL")), prefix + "URL", side)
    else:
        dialect = str(get(prefix + "DIALECT") or "mysql").strip()
        if _backend(dialect, f"{prefix}DIALECT {dialect!r}", side)[0] == "duckdb":
            raise ConfigError(f"{prefix}URL: a DuckDB target is named by its URL (duckdb:///path)")
        missing = [k for k in ("HOST", "NAME") if not get(prefix + k)]
        if missing:
            raise ConfigError(
                f"{side.lower()} database not configured: set {prefix}URL or "
                + ", ".join(prefix + k for k in ("HOST", "PORT", "NAME", "USER", "PASS"))
            )
        port = get(prefix + "PORT")
        url = url_from_parts(
            str(get(prefix + "HOST")),
            None if port is None else _whole(prefix + "PORT", port, minimum=1),
            str(get(prefix + "NAME")),
            get(prefix + "USER"),
            get(prefix + "PASS"),
            _backend(dialect, prefix + "DIALECT", side)[0],
        )
    defaults = DatabaseSettings(url=url)
    pool: dict[str, Any] = {}
    for name, variable in POOL_VARIABLES.items():
        raw = get(variable)
        if raw is None:
            continue
        if name == "pool_timeout":
            pool[name] = _number(variable, raw)
        else:
            pool[name] = _whole(variable, raw, minimum=0 if name == "max_overflow" else 1)
    return DatabaseSettings(
        url=url,
        ssl_ca=get(prefix + "SSL_CA"),
        ssl_cert=get(prefix + "SSL_CERT"),
        ssl_key=get(prefix + "SSL_KEY"),
        ssl_verify=parse_bool(get(prefix + "SSL_VERIFY"), defaults.ssl_verify),
        **pool,
    )


# -- everything --------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The product's environment, parsed. Build it with `from_environ`."""

    tables_config: str = "tables.json"
    interval: int = 300
    sync_trigger: Trigger = "schedule"
    sensor_interval: int = 30
    sync_retries: int | None = None  # None: the built-in retry policy
    sync_retry_delay: float | None = None
    source_timezone: str = "UTC"
    staging_dir: str = ".staging"
    parquet_compression: str = "zstd"
    staging_retention_hours: float = 24.0
    arrow_memory_pool: str | None = None
    binlog_server_id: int = BINLOG_SERVER_ID
    binlog_sensor_interval: int = 5
    binlog_follow_seconds: float = 0.0
    binlog_resnapshot: bool = False
    dagster_home: str | None = None
    # the variables that were set (name -> text), for the database settings and EnvVar binding
    values: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse `environ` (default: this process's environment); raises `ConfigError`."""
        env = environment(environ)
        trigger = (env.get("SYNC_TRIGGER") or "schedule").strip().lower()
        if trigger not in ("schedule", "sensor"):
            raise ConfigError(f"SYNC_TRIGGER: expected 'schedule' or 'sensor', got {trigger!r}")
        compression = (env.get("PARQUET_COMPRESSION") or "zstd").strip().lower()
        if compression not in COMPRESSIONS:
            raise ConfigError(
                f"PARQUET_COMPRESSION: {compression!r} is not one of {', '.join(COMPRESSIONS)}"
            )
        retention = _number("STAGING_RETENTION_HOURS", env.get("STAGING_RETENTION_HOURS", 24))
        retries = env.get("SYNC_RETRIES")
        delay = env.get("SYNC_RETRY_DELAY")
        return cls(
            tables_config=env.get("TABLES_CONFIG") or "tables.json",
            interval=positive_seconds("INTERVAL", env.get("INTERVAL", 300)),
            sync_trigger=trigger,  # type: ignore[arg-type]
            sensor_interval=positive_seconds("SENSOR_INTERVAL", env.get("SENSOR_INTERVAL", 30)),
            sync_retries=None if retries is None else _whole("SYNC_RETRIES", retries),
            sync_retry_delay=None if delay is None else _number("SYNC_RETRY_DELAY", delay),
            source_timezone=timezone_name(env.get("SOURCE_TIMEZONE")),
            staging_dir=env.get("STAGING_DIR") or ".staging",
            parquet_compression=compression,
            staging_retention_hours=retention,
            arrow_memory_pool=env.get("ARROW_DEFAULT_MEMORY_POOL"),
            binlog_server_id=_server_id(env.get("BINLOG_SERVER_ID")),
            binlog_follow_seconds=_number(
                "BINLOG_FOLLOW_SECONDS", env.get("BINLOG_FOLLOW_SECONDS", 0)
            ),
            binlog_sensor_interval=positive_seconds(
                "BINLOG_SENSOR_INTERVAL", env.get("BINLOG_SENSOR_INTERVAL", 5)
            ),
            binlog_resnapshot=parse_bool(env.get("BINLOG_RESNAPSHOT"), False),
            dagster_home=env.get("DAGSTER_HOME"),
            values=env,
        )

    def database(self, side: str) -> DatabaseSettings:
        """Connection settings of `side` ("source" or "target"); raises `ConfigError`."""
        return database_settings(side, self.values)

    def database_name(self, side: str) -> str:
        """The database `side` names, or "" when its settings are missing or invalid (for
        display only: definitions load without connection settings)."""
        try:
            return self.database(side).database
        except ConfigError:
            return ""

    @property
    def target_dialect(self) -> Dialect:
        """The target's kind ("mysql" when its settings are missing or invalid: definitions
        load without connection settings)."""
        try:
            return self.database("target").dialect
        except ConfigError:
            return "mysql"

    def is_set(self, name: str) -> bool:
        return bool(self.values.get(name))


def secret_values(values: Mapping[str, str]) -> list[str]:
    """Values that must never be shown: passwords, and URLs (which may hold one)."""
    return [v for k, v in values.items() if k.endswith(("_DB_PASS", "_DB_URL")) and v]


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables that are set (an empty value counts as unset): `environ`, or this
    process's environment. The one place that reads `os.environ`."""
    return {k: v for k, v in (os.environ if environ is None else environ).items() if v != ""}


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with `extra` on top, for a child process (a tool's server,
    the benchmark's sync processes)."""
    return {**os.environ, **extra}


def load_dotenv_file(directory: Path | None = None) -> None:
    """Read `.env` in `directory` (default: the working directory) into this process's
    environment; variables already set win. (`dagster dev` does the same for the UI.)"""
    from dotenv import load_dotenv

    load_dotenv((directory or Path.cwd()) / ".env", override=False)
