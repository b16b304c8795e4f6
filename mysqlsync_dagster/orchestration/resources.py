"""Dagster resources: the pooled source and target engines, and staging mode's settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from mysqlsync_dagster.db import create_engine
from mysqlsync_dagster.settings import (
    POOL_VARIABLES,
    STAGING_VARIABLES,
    DatabaseSettings,
    Settings,
    database_settings,
)

if TYPE_CHECKING:  # imported where used: loading the definitions needs neither (nor pyarrow)
    from mysqlsync_dagster.pipeline.staging import StagingSettings
    from mysqlsync_dagster.targets.base import Target

# resource field -> environment variable suffix (after SOURCE_/TARGET_)
SIDE_FIELDS = {
    "url": "DB_URL",
    "dialect": "DB_DIALECT",
    "host": "DB_HOST",
    "port": "DB_PORT",
    "name": "DB_NAME",
    "user": "DB_USER",
    "password": "DB_PASS",
    "ssl_ca": "DB_SSL_CA",
    "ssl_cert": "DB_SSL_CERT",
    "ssl_key": "DB_SSL_KEY",
    "ssl_verify": "DB_SSL_VERIFY",
}
_INT_FIELDS = frozenset({"port", *POOL_VARIABLES} - {"pool_timeout"})


class MySQLResource(dg.ConfigurableResource):
    """One database (the MySQL/MariaDB source, or the target: MySQL/MariaDB or PostgreSQL)
    behind a pooled SQLAlchemy engine.

    Each field can be fed by a `dg.EnvVar` (`dg.EnvVar.int` for whole numbers), resolved at run
    time and shown by name only in the UI. The engine is created per execution and disposed
    after it; its connections are pinged before use, so a pool whose connections died is
    rebuilt on the fly.
    """

    side: str
    url: str | None = None
    dialect: str | None = None
    host: str | None = None
    port: int | None = None
    name: str | None = None
    user: str | None = None
    password: str | None = None
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_verify: str | None = None
    pool_size: int | None = None
    max_overflow: int | None = None
    pool_timeout: str | None = None  # seconds, may be fractional
    pool_recycle: int | None = None
    connect_timeout: int | None = None
    read_timeout: int | None = None
    write_timeout: int | None = None

    _engine: Engine | None = PrivateAttr(default=None)

    @classmethod
    def bound(cls, side: str, settings: Settings) -> MySQLResource:
        """The resource with every `<SIDE>_DB_*` (and pool) variable that is set bound as a
        `dg.EnvVar`: the UI shows the variable's name, the run reads its value."""
        prefix = side.upper() + "_"
        variables = {f: prefix + suffix for f, suffix in SIDE_FIELDS.items()} | POOL_VARIABLES
        fields: dict[str, Any] = {
            field: dg.EnvVar.int(variable) if field in _INT_FIELDS else dg.EnvVar(variable)
            for field, variable in variables.items()
            if settings.is_set(variable)
        }
        return cls(side=side.upper(), **fields)

    def settings(self) -> DatabaseSettings:
        prefix = self.side.upper() + "_"
        values = {prefix + suffix: getattr(self, f) for f, suffix in SIDE_FIELDS.items()}
        values |= {variable: getattr(self, f) for f, variable in POOL_VARIABLES.items()}
        return database_settings(self.side, values)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            # The target loads files with LOAD DATA LOCAL INFILE; the source never needs it.
            self._engine = create_engine(self.settings(), local_infile=self.side == "TARGET")
        return self._engine

    def target(self, schema: str | None = None) -> Target:
        """This database as the target of table runs (`schema`: a PostgreSQL table's
        `target_schema`; None: the connection's default schema)."""
        from mysqlsync_dagster.targets import target_for

        return target_for(self.engine, self.settings(), schema)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.dispose()


class StagingResource(dg.ConfigurableResource):
    """Where staging mode writes its Parquet parts, with which codec, kept how long.

    Fields are bound to `STAGING_DIR`, `PARQUET_COMPRESSION` and `STAGING_RETENTION_HOURS` as
    `dg.EnvVar`s when those are set (read when a run starts); unset means `.staging` in the
    working directory, zstd and 24 hours.
    """

    directory: str | None = None
    compression: str | None = None
    retention_hours: str | None = None

    @classmethod
    def bound(cls, settings: Settings) -> StagingResource:
        return cls(
            **{
                field: dg.EnvVar(variable)
                for field, variable in STAGING_VARIABLES.items()
                if settings.is_set(variable)
            }
        )

    def settings(self) -> StagingSettings:
        from mysqlsync_dagster.pipeline.staging import StagingSettings

        return StagingSettings.parse(self.directory, self.compression, self.retention_hours)
