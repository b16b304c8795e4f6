"""DuckDB as a target: an OLAP copy in a file (`TARGET_DB_URL=duckdb:///path/copy.duckdb`).

- **Schema**: each column takes `types.duckdb_type` (the README's table), with the source's
  NOT NULL and literal default, and the primary key; `_dlt_load_id` and `_dlt_id` are added.
  Secondary indexes are left out (DuckDB scans columns; an ART index only slows writes).
  Generated columns are copied as values. New source columns are added, changed ones altered
  (`ALTER COLUMN ... TYPE`), dropped ones kept and made nullable.
- **Loading**: each batch of wire text is handed to DuckDB as an Arrow stream and cast in SQL
  (`types.duckdb_load_sql`): an incremental run merges it into the live table by key (its
  rows that differ from the target's replace them by a delete and an insert; equal rows are
  left alone); a full refresh fills a table built aside without its key, by one thread, in
  committed inserts of whole row groups, adds the key once filled, and replaces the live
  table in the commit's transaction (DuckDB's DDL is transactional: readers see the old rows
  or the new ones; views are bound by name and keep working).
- **State** `_mysqlsync_state` in the table's schema (`targets/postgres/state.py`: the same SQL),
  and a lock per table within this process. DuckDB lets one process at a time open a file for
  writing: a run of another process waits for it as for a lock (retried, see errors.py), so keep
  DuckDB targets' runs one at a time (README).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mysqlsync_dagster.catalog import DLT_COLUMNS, Column, TableShape
from mysqlsync_dagster.errors import LoadError
from mysqlsync_dagster.pipeline.wire import WireColumn, batch_values, parquet_batches
from mysqlsync_dagster.settings import DatabaseSettings
from mysqlsync_dagster.targets.base import Strategy, log_schema_changes
from mysqlsync_dagster.targets.duckdb.types import duckdb_load_sql, duckdb_type
from mysqlsync_dagster.targets.mysql.ddl import SchemaChanges
from mysqlsync_dagster.targets.mysql.loader import LoadStats
from mysqlsync_dagster.targets.postgres import state
from mysqlsync_dagster.targets.postgres.ddl import (
    default_sql,
    diff_columns,
    literal,
    qualified,
    quote,
    short_name,
)

if TYPE_CHECKING:  # imported where rows move: a run that reads none never imports pyarrow
    import pyarrow as pa

# DuckDB's spelling in information_schema of the types `duckdb_type` names
_SPELLINGS = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE", "INT": "INTEGER"}
# The aside table takes its rows in inserts of two of DuckDB's 122,880-row row groups (or
# 64 MB of wire text), each committed: an insert that fills row groups is written to the file
# as it goes (optimistic writes), so the commit is short and the process holds one insert's
# rows. 50,000-row inserts went through DuckDB's log: a commit per insert cost 1.9 s of a 1M-row
# load; a commit per 250,000 rows 1.0 s; one transaction held 130 MB more. Each insert but the
# last is whole row groups: an insert's partial last row group stays one, and the checkpoint
# merges such row groups by rewriting them (1M rows in 250,000-row inserts: 0.44 s more at the
# close and a file of 39 MB, not 28 MB).
ROW_GROUP_ROWS = 122_880
BULK_INSERT_ROWS = 2 * ROW_GROUP_ROWS
BULK_INSERT_BYTES = 64 * 2**20
_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def column_sql(column: Column, key: bool) -> str:
    sql = f"{quote(column.name)} {duckdb_type(column)}"
    if not column.nullable or key:
        sql += " NOT NULL"
    default = default_sql(column)
    if default is not None and duckdb_type(column) not in ("JSON", "BLOB", "UBIGINT"):
        sql += f" DEFAULT {default}"
    return sql


@dataclass(frozen=True)
class DuckColumn:
    name: str
    type: str
    nullable: bool
    default: str | None


def read_columns(conn: Connection, schema: str, table: str) -> list[DuckColumn] | None:
    rows = conn.execute(
        sa.text(
            "SELECT column_name, data_type, is_nullable, column_default"
            " FROM duckdb_columns() WHERE schema_name = :s AND table_name = :t"
            " ORDER BY column_index"
        ),
        {"s": schema, "t": table},
    ).all()
    return [DuckColumn(r[0], r[1], bool(r[2]), r[3]) for r in rows] or None


def primary_key_columns(conn: Connection, schema: str, table: str) -> list[str]:
    row = conn.execute(
        sa.text(
            "SELECT constraint_column_names FROM duckdb_constraints()"
            " WHERE schema_name = :s AND table_name = :t AND constraint_type = 'PRIMARY KEY'"
        ),
        {"s": schema, "t": table},
    ).first()
    return list(row[0]) if row else []


@dataclass
class InProcessLock:
    lock: threading.Lock

    def release(self) -> None:
        self.lock.release()


@dataclass
class DuckDBLoader:
    """Loads the parts of one run into one DuckDB table (see the module doc)."""

    engine: Engine
    schema: str
    target: str
    wire: list[WireColumn]
    strategy: Strategy
    batch_size: int
    stats: LoadStats = field(default_factory=LoadStats)
    run_token: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    _key: list[str] = field(default_factory=list, repr=False)
    _pending: list[pa.Table] = field(default_factory=list, repr=False)  # the aside table's next
    _inserted: int = 0  # rows inserted by this run (numbers each row's `_dlt_id`)
    _threads: int | None = None  # DuckDB's threads, while the aside table loads on one

    @property
    def aside(self) -> str:
        return short_name(f"_mss_new_{self.target}")

    def prepare(self) -> None:
        with self.engine.begin() as conn:
            self._key = primary_key_columns(conn, self.schema, self.target)
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified(self.schema, self.aside)}")
            if self.strategy == "swap":  # the live table's columns, without the key (yet)
                columns = read_columns(conn, self.schema, self.target) or []
                body = ", ".join(
                    f"{quote(c.name)} {c.type}"
                    + ("" if c.nullable else " NOT NULL")
                    + (f" DEFAULT {c.default}" if c.default is not None else "")
                    for c in columns
                )
                conn.exec_driver_sql(f"CREATE TABLE {qualified(self.schema, self.aside)} ({body})")
                self._threads = conn.exec_driver_sql("SELECT current_setting('threads')").scalar()
                # One thread fills whole row groups in insertion order. Two threads each
                # filled row groups of their own, which the checkpoint then rewrote: 1M
                # `orders` rows took 0.56 s more at the close and 27 MB instead of 17 MB.
                conn.exec_driver_sql("SET threads = 1")

    def load_part(self, part: pa.Table | Path, load_id: str) -> None:
        import pyarrow as pa

        batches = (
            part.to_batches(max_chunksize=self.batch_size)
            if isinstance(part, pa.Table)
            else parquet_batches(part, self.wire, self.batch_size)
        )
        if not isinstance(part, pa.Table):
            self.stats.files += 1
        self.stats.load_id = load_id
        for batch in batches:
            arrays = batch_values(batch, self.wire, self.stats, self.target, self.allow_nulls)
            table = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
            if self.strategy == "swap":
                self._pending.append(table)
                pending = self._pending
                if (
                    sum(t.num_rows for t in pending) >= BULK_INSERT_ROWS
                    or sum(t.nbytes for t in pending) >= BULK_INSERT_BYTES
                ):
                    self._flush(load_id, whole_row_groups=True)
            else:
                self._commit_insert(table, load_id)
            self.stats.csv_bytes += table.nbytes
            self.stats.rows += batch.num_rows
            self.stats.batches += 1

    def allow_nulls(self, column: str) -> bool:
        """Make `column` nullable where this run writes (the aside table, or the live one): a
        zero date of the NOT NULL source column is coming as NULL (`catalog.keeps_nulls`).
        False: it was nullable already (made so by an earlier run)."""
        table = self.aside if self.strategy == "swap" else self.target
        with self.engine.begin() as conn:
            columns = {c.name: c for c in read_columns(conn, self.schema, table) or []}
            if column not in columns or columns[column].nullable:
                return False
            conn.exec_driver_sql(
                f"ALTER TABLE {qualified(self.schema, table)} ALTER COLUMN {quote(column)}"
                " DROP NOT NULL"
            )
        return True

    def _flush(self, load_id: str, whole_row_groups: bool = False) -> None:
        """Insert the aside table's pending batches (`BULK_INSERT_ROWS`); `whole_row_groups`:
        as many rows as fill whole row groups, the rest kept for the next insert."""
        if not self._pending:
            return
        import pyarrow as pa

        table = pa.concat_tables(self._pending)
        rows = table.num_rows
        if whole_row_groups and rows >= ROW_GROUP_ROWS:
            rows -= rows % ROW_GROUP_ROWS
        self._pending = [table.slice(rows)] if rows < table.num_rows else []
        self._commit_insert(table.slice(0, rows), load_id)

    def _commit_insert(self, table: pa.Table, load_id: str) -> None:
        with self.engine.begin() as conn:
            self._insert(conn, table, load_id)
        self._inserted += table.num_rows

    def _insert(self, conn: Connection, table: pa.Table, load_id: str) -> None:
        raw: Any = conn.connection.dbapi_connection
        view = "_mss_batch"
        # the table's Arrow stream, read once: handed over as a table, DuckDB imports
        # pyarrow.dataset for its pushdown, and that imports pandas (0.3 s a run)
        raw.register(view, table.__arrow_c_stream__())
        try:
            values = [duckdb_load_sql(w.column, f"c{i}") for i, w in enumerate(self.wire)]
            names = [w.column.name for w in self.wire] + list(DLT_COLUMNS)
            # `_dlt_id`: the run's token and the row's number (uuid() per row cost 40%); the
            # run's own values as literals: with bound parameters DuckDB's ON CONFLICT took
            # 0.35 s instead of 0.04 s for 10,000 rows into 1M
            select = (
                f"SELECT {', '.join(values)}, {literal(load_id)}, {literal(self.run_token)}"
                f" || CAST({self._inserted} + row_number() OVER () AS VARCHAR) FROM {view}"
            )
            if self.strategy == "upsert":
                self._upsert(conn, select, names)
            else:
                columns = ", ".join(quote(c) for c in names)
                conn.exec_driver_sql(
                    f"INSERT INTO {qualified(self.schema, self.aside)} ({columns}) {select}"
                )
        except sa.exc.DBAPIError as error:
            raise LoadError(f"{self.target}: DuckDB refused a batch: {error.orig}") from error
        finally:
            raw.unregister(view)

    def _upsert(self, conn: Connection, select: str, names: list[str]) -> None:
        """Merge a batch by key: its rows that differ from the target's (or are new) replace
        them, by a delete and an insert in the batch's transaction; rows equal to the target's
        are left as they are, their `_dlt_load_id` and `_dlt_id` too.

        Not `INSERT ... ON CONFLICT DO UPDATE`: DuckDB updates a row in place, and the commit
        then checkpoints every row group the update touched, rewriting their columns. 10,000
        rows scattered over 1M (the benchmark's 1%): 0.57 s by the update, its commit 0.41 s
        of it; 0.17 s by the delete and insert, whose commit writes the new rows and the
        deleted rows' marks. Over 30 such runs the file stayed smaller too (35-42 MB against
        45-46 MB): DuckDB's checkpoint reclaims row groups' deleted rows as they accumulate."""
        batch = "_mss_upsert"
        target = qualified(self.schema, self.target)
        columns = ", ".join(quote(c) for c in names)
        key = " AND ".join(f"t.{quote(c)} = b.{quote(c)}" for c in self._key)
        conn.exec_driver_sql(f"CREATE OR REPLACE TEMP TABLE {batch} ({columns}) AS {select}")
        try:
            unchanged = self._unchanged("t", "b")
            conn.exec_driver_sql(
                f"DELETE FROM temp.main.{batch} AS b WHERE EXISTS"
                f" (SELECT 1 FROM {target} AS t WHERE {key} AND {unchanged})"
            )
            conn.exec_driver_sql(
                f"DELETE FROM {target} AS t USING temp.main.{batch} AS b WHERE {key}"
            )
            conn.exec_driver_sql(
                f"INSERT INTO {target} ({columns}) SELECT {columns} FROM temp.main.{batch}"
            )
        finally:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.main.{batch}")

    def _unchanged(self, old: str, new: str) -> str:
        """SQL: the row `new` holds the same source values as the row `old` (its key's)."""
        data = [w for w in self.wire if w.column.name not in self._key]

        def same(wire: WireColumn) -> str:
            name = quote(wire.column.name)
            if duckdb_type(wire.column) == "JSON":  # JSON has no equality of its own
                return (
                    f"CAST({old}.{name} AS VARCHAR)"
                    f" IS NOT DISTINCT FROM CAST({new}.{name} AS VARCHAR)"
                )
            return f"{old}.{name} IS NOT DISTINCT FROM {new}.{name}"

        return " AND ".join(same(w) for w in data) or "TRUE"

    def _all_threads(self) -> None:
        """Give DuckDB its threads back (the aside table is loaded)."""
        if self._threads is not None:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"SET threads = {int(self._threads)}")
            self._threads = None

    def merge(self) -> int:
        self._flush(self.stats.load_id or "")
        self._all_threads()
        if self.strategy == "swap" and self._key:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    f"ALTER TABLE {qualified(self.schema, self.aside)} ADD PRIMARY KEY"
                    f" ({', '.join(quote(c) for c in self._key)})"
                )
        return 0

    def finish(self, conn: Connection) -> None:
        if self.strategy != "swap":
            return
        conn.exec_driver_sql(f"DROP TABLE {qualified(self.schema, self.target)}")
        conn.exec_driver_sql(
            f"ALTER TABLE {qualified(self.schema, self.aside)} RENAME TO {quote(self.target)}"
        )

    def discard(self) -> None:
        self._pending = []
        self._all_threads()
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified(self.schema, self.aside)}")


@dataclass
class DuckDBTarget(state.StateInSchema):
    engine: sa.Engine
    settings: DatabaseSettings | None = None
    schema_name: str | None = None
    kind = "duckdb"

    @property
    def schema(self) -> str:
        return self.schema_name or "main"

    @property
    def database(self) -> str:
        return f"{Path(self.engine.url.database or '').name}.{self.schema}"

    def quote(self, name: str) -> str:
        return quote(name)

    def qualified(self, table: str) -> str:
        return qualified(self.schema, table)

    def copied_columns(self, shape: TableShape) -> list[Column]:
        """Every source column: generated ones are copied as values."""
        return [c for c in shape.columns if c.name not in DLT_COLUMNS]

    def wire(self, columns: Sequence[Column], *, native: bool = True) -> list[WireColumn]:
        return [WireColumn.of(c, "duckdb", native=native) for c in columns]

    def column_names(self, table: str) -> list[str] | None:
        with self.engine.connect() as conn:
            columns = read_columns(conn, self.schema, table)
        return None if columns is None else [c.name for c in columns]

    def mirror(
        self, source: TableShape, table: str, primary_key: Sequence[str], log: logging.Logger
    ) -> SchemaChanges | None:
        key = list(source.primary_key or primary_key)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
            existing = read_columns(conn, self.schema, table)
            if existing is None:
                body = [column_sql(c, c.name in key) for c in self.copied_columns(source)]
                body += [f"{quote(name)} VARCHAR" for name in DLT_COLUMNS]
                body.append(f"PRIMARY KEY ({', '.join(quote(c) for c in key)})")
                conn.exec_driver_sql(f"CREATE TABLE {self.qualified(table)} ({', '.join(body)})")
                log.info("%s: created target table %s", source.name, self.qualified(table))
                return None
            changes = diff_columns(source, existing, key, column_sql, _retype)
            for clause in changes.clauses:  # DuckDB alters one column per statement
                conn.exec_driver_sql(f"ALTER TABLE {self.qualified(table)} {clause}")
            log_schema_changes(log, source.name, changes)
            return changes

    def lock(self, table: str, wait_seconds: int) -> InProcessLock | None:
        key = (str(self.engine.url.database), self.schema, table)
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(key, threading.Lock())
        got = lock.acquire(timeout=wait_seconds) if wait_seconds > 0 else lock.acquire(False)
        return InProcessLock(lock) if got else None

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
    ) -> DuckDBLoader:
        return DuckDBLoader(self.engine, self.schema, table, wire, strategy, batch_size)


def _retype(column: Column, key: bool, current: str) -> str | None:
    wanted = duckdb_type(column)
    if _SPELLINGS.get(current.upper(), current.upper()) == _SPELLINGS.get(wanted, wanted):
        return None
    return f"ALTER COLUMN {quote(column.name)} TYPE {wanted}"
