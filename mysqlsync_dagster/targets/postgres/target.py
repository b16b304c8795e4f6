"""PostgreSQL as a target: the `Target` interface over the mirroring DDL, the COPY loader, the
state table and an advisory lock per target table, all in the table's schema (`target_schema`,
or the connection's current schema)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from mysqlsync_dagster.catalog import Column, TableShape
from mysqlsync_dagster.db import connect
from mysqlsync_dagster.pipeline.wire import WireColumn
from mysqlsync_dagster.settings import DatabaseSettings
from mysqlsync_dagster.targets.base import Strategy, log_schema_changes
from mysqlsync_dagster.targets.mysql.ddl import SchemaChanges
from mysqlsync_dagster.targets.postgres import ddl, state
from mysqlsync_dagster.targets.postgres.loader import PostgresLoader


def lock_key(database: str, schema: str, table: str) -> int:
    """A signed 64-bit advisory lock key for one target table."""
    digest = hashlib.sha1(f"mysqlsync:{database}.{schema}.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class AdvisoryLock:
    """`pg_advisory_lock` held on its own connection: it dies with the connection (a killed
    run releases it)."""

    conn: sa.Connection
    key: int

    def release(self) -> None:
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self.conn.commit()
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.conn.close()


@dataclass
class PostgresTarget(state.StateInSchema):
    engine: sa.Engine
    settings: DatabaseSettings | None = None
    schema_name: str | None = None
    kind = "postgresql"

    @property
    def schema(self) -> str:
        if self.schema_name is None:
            with self.engine.connect() as conn:
                self.schema_name = str(conn.execute(sa.text("SELECT current_schema()")).scalar())
        return self.schema_name

    @property
    def database(self) -> str:
        return f"{self.engine.url.database or ''}.{self.schema}"

    def quote(self, name: str) -> str:
        return ddl.quote(name)

    def qualified(self, table: str) -> str:
        return ddl.qualified(self.schema, table)

    def copied_columns(self, shape: TableShape) -> list[Column]:
        """Every source column: generated ones are copied as values (PostgreSQL cannot
        evaluate MySQL's expressions)."""
        return [c for c in shape.columns if c.name not in ("_dlt_load_id", "_dlt_id")]

    def wire(self, columns: Sequence[Column], *, native: bool = True) -> list[WireColumn]:
        return [WireColumn.of(c, "postgresql") for c in columns]

    def column_names(self, table: str) -> list[str] | None:
        with self.engine.connect() as conn:
            columns = ddl.read_columns(conn, self.schema, table)
        return None if columns is None else [c.name for c in columns]

    def mirror(
        self, source: TableShape, table: str, primary_key: Sequence[str], log: logging.Logger
    ) -> SchemaChanges | None:
        """Create `table` like `source` (returns None), or evolve it: new columns added,
        widened ones altered, those the source dropped kept (returns what changed)."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {ddl.quote(self.schema)}")
            existing = ddl.read_columns(conn, self.schema, table)
            if existing is None:
                for statement in ddl.create_table_sql(source, self.schema, table, primary_key):
                    conn.exec_driver_sql(statement)
                log.info("%s: created target table %s", source.name, self.qualified(table))
                return None
            key = source.primary_key or tuple(primary_key)
            changes = ddl.diff_columns(source, existing, key)
            if not changes.empty:
                conn.exec_driver_sql(
                    f"ALTER TABLE {self.qualified(table)} " + ", ".join(changes.clauses)
                )
            log_schema_changes(log, source.name, changes)
            return changes

    def lock(self, table: str, wait_seconds: int) -> AdvisoryLock | None:
        conn = (
            connect(self.engine, "target", self.settings)
            if self.settings is not None
            else self.engine.connect()
        )
        key = lock_key(self.engine.url.database or "", self.schema, table)
        deadline = time.monotonic() + wait_seconds
        while True:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if got:
                return AdvisoryLock(conn, key)
            if time.monotonic() >= deadline:
                conn.close()
                return None
            time.sleep(0.25)

    def loader(
        self,
        table: str,
        wire: list[WireColumn],
        strategy: Strategy,
        *,
        batch_size: int,
        work_dir: Path,
        primary_key: tuple[str, ...],
        merge_each_part: bool,
    ) -> PostgresLoader:
        return PostgresLoader(
            engine=self.engine,
            schema=self.schema,
            target=table,
            wire=wire,
            strategy=strategy,
            batch_size=batch_size,
            work_dir=work_dir,
            merge_each_batch=merge_each_part,
        )
