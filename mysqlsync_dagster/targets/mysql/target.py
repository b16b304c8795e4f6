"""MySQL/MariaDB as a target: the `Target` interface over the mirroring DDL, the LOAD DATA loader,
the state table and a named lock (`GET_LOCK`) per target table."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from mysqlsync_dagster.catalog import Column, TableShape, read_table_shape
from mysqlsync_dagster.db import connect, quote_identifier, run_sql
from mysqlsync_dagster.pipeline.wire import WireColumn, wire_columns
from mysqlsync_dagster.settings import DatabaseSettings
from mysqlsync_dagster.targets.base import log_schema_changes
from mysqlsync_dagster.targets.mysql import state
from mysqlsync_dagster.targets.mysql.ddl import SchemaChanges, diff_schema, mirror_ddl
from mysqlsync_dagster.targets.mysql.loader import Strategy, TableLoader

# LOAD DATA connections filling a bulk-only work table at once (see loader.py); on the 2-core
# benchmark machine two streams beat one, more only add contention.
LOAD_STREAMS = 2


def lock_name(database: str, target: str) -> str:
    digest = hashlib.sha1(f"{database}.{target}".encode()).hexdigest()[:24]
    return f"mysqlsync:{digest}"


@dataclass
class NamedLock:
    """`GET_LOCK` held on its own connection: it dies with the connection (a killed run
    releases it)."""

    conn: sa.Connection
    name: str

    def release(self) -> None:
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": self.name})
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.conn.close()


@dataclass
class MySQLTarget:
    engine: sa.Engine
    settings: DatabaseSettings | None = None
    kind = "mysql"

    @property
    def database(self) -> str:
        return self.engine.url.database or ""

    @property
    def schema(self) -> str:
        """Where the tables are: MySQL's schema is the database."""
        return self.database

    def quote(self, name: str) -> str:
        return quote_identifier(name)

    def qualified(self, table: str) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(table)}"

    def copied_columns(self, shape: TableShape) -> list[Column]:
        """The columns whose values are copied: generated columns the target computes."""
        return shape.copied_columns

    def wire(self, columns: Sequence[Column], *, native: bool = True) -> list[WireColumn]:
        return wire_columns(list(columns))

    def column_names(self, table: str) -> list[str] | None:
        with self.engine.connect() as conn:
            shape = self.read_shape(conn, table)
        return None if shape is None else shape.column_names

    def read_shape(self, conn: sa.Connection, table: str) -> TableShape | None:
        return read_table_shape(conn, self.database, table)

    def mirror(
        self, source: TableShape, table: str, primary_key: Sequence[str], log: logging.Logger
    ) -> SchemaChanges | None:
        """Create `table` like `source` (returns None), or evolve it: new columns added,
        changed ones altered, those the source dropped kept (returns what changed)."""
        with self.engine.begin() as conn:
            existing = self.read_shape(conn, table)
            if existing is None:
                run_sql(conn, mirror_ddl(source, table, primary_key))
                log.info("%s: created target table %s", source.name, table)
                return None
            changes = diff_schema(source, existing)
            if not changes.empty:
                run_sql(conn, f"ALTER TABLE {self.quote(table)} " + ", ".join(changes.clauses))
            log_schema_changes(log, source.name, changes)
            return changes

    def lock(self, table: str, wait_seconds: int) -> NamedLock | None:
        conn = (
            connect(self.engine, "target", self.settings)
            if self.settings is not None
            else self.engine.connect()
        )
        name = lock_name(self.database, table)
        got = conn.execute(
            sa.text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": wait_seconds}
        ).scalar()
        if got != 1:
            conn.close()
            return None
        return NamedLock(conn, name)

    def read_state(self, table: str) -> state.SyncState | None:
        with self.engine.begin() as conn:
            state.ensure_state_table(conn)
            return state.read_state(conn, table)

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
    ) -> TableLoader:
        return TableLoader(
            engine=self.engine,
            target=table,
            wire=wire,
            strategy=strategy,
            batch_size=batch_size,
            work_dir=work_dir,
            primary_key=primary_key,
            merge_each_batch=merge_each_part,
            load_streams=LOAD_STREAMS,
        )

    def commit(
        self,
        loader: TableLoader,
        table: str,
        cursor: str | None,
        record_state: bool,
        also: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            loader.finish(conn)
            if also is not None:
                also(conn)
            if record_state:
                state.write_state(conn, table, cursor, loader.stats.rows, loader.stats.load_id)

    def stored_state(self, table: str) -> state.SyncState | None:
        """The table's sync state, read only (None: no state table, or no row)."""
        with self.engine.connect() as conn:
            return state.read_state(conn, table)

    def read_sweep(self, table: str) -> state.SweepState:
        """(After `read_state`, which made sure the state table has the sweep's columns.)"""
        with self.engine.connect() as conn:
            return state.read_sweep(conn, table)

    def write_sweep(self, table: str, sweep: state.SweepState) -> None:
        with self.engine.begin() as conn:
            state.write_sweep(conn, table, sweep)

    def row_count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(run_sql(conn, f"SELECT COUNT(*) FROM {self.quote(table)}").scalar_one())
