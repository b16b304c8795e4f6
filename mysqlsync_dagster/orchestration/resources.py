"""Dagster resources wrapping the pooled source and target engines."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from mysqlsync_dagster.db import DatabaseSettings, create_engine, settings_from_env

# resource field -> environment variable suffix (after SOURCE_/TARGET_) or global name
_SIDE_FIELDS = {
    "url": "DB_URL",
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
_POOL_FIELDS = {
    "pool_size": "POOL_SIZE",
    "max_overflow": "MAX_OVERFLOW",
    "pool_timeout": "POOL_TIMEOUT",
    "pool_recycle": "POOL_RECYCLE",
    "connect_timeout": "DB_CONNECT_TIMEOUT",
    "read_timeout": "DB_READ_TIMEOUT",
    "write_timeout": "DB_WRITE_TIMEOUT",
}


class MySQLResource(dg.ConfigurableResource):
    """One MySQL/MariaDB database (the source or the target) behind a pooled SQLAlchemy engine.

    Fields are strings so that each can be fed by a `dg.EnvVar` (resolved at run time, shown
    by name only in the UI). The engine is created per execution and disposed after it; its
    connections are pinged before use, so a pool whose connections died is rebuilt on the fly.
    """

    side: str
    url: str | None = None
    host: str | None = None
    port: str | None = None
    name: str | None = None
    user: str | None = None
    password: str | None = None
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_verify: str | None = None
    pool_size: str | None = None
    max_overflow: str | None = None
    pool_timeout: str | None = None
    pool_recycle: str | None = None
    connect_timeout: str | None = None
    read_timeout: str | None = None
    write_timeout: str | None = None

    _engine: Engine | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls, side: str, environ: Mapping[str, str] | None = None) -> MySQLResource:
        """Bind every `<SIDE>_DB_*` (and pool) variable that is set as a `dg.EnvVar`."""
        env = os.environ if environ is None else environ
        prefix = side.upper() + "_"
        fields: dict[str, Any] = {
            field: dg.EnvVar(prefix + suffix)
            for field, suffix in _SIDE_FIELDS.items()
            if env.get(prefix + suffix)
        }
        fields.update(
            {field: dg.EnvVar(var) for field, var in _POOL_FIELDS.items() if env.get(var)}
        )
        return cls(side=side.upper(), **fields)

    def settings(self) -> DatabaseSettings:
        prefix = self.side.upper() + "_"
        env = {prefix + suffix: getattr(self, f) for f, suffix in _SIDE_FIELDS.items()}
        env.update({var: getattr(self, f) for f, var in _POOL_FIELDS.items()})
        return settings_from_env(self.side, {k: v for k, v in env.items() if v is not None})

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            # The target loads files with LOAD DATA LOCAL INFILE; the source never needs it.
            self._engine = create_engine(self.settings(), local_infile=self.side == "TARGET")
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.dispose()
