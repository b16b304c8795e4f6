"""Loading wire text into PostgreSQL: COPY (CSV) into a work table, then a keyed merge or a swap.

- `upsert` (incremental): parts are copied into an unlogged stage table and merged into the
  live table with `INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE ... WHERE the row differs`
  (an unchanged row is not written at all). Direct mode merges after each batch, in the COPY's
  transaction; staging mode copies every part first, indexes the stage by key, then merges in
  key ranges of `batch_size` rows, one transaction per range.
- `swap` (full refresh, first sync): parts are copied into a table built aside, which gets the
  primary key and indexes once filled (a sorted build beats maintaining them row by row), and
  replaces the live table in the commit's transaction: PostgreSQL DDL is transactional, so a
  reader sees the old rows or the new ones, never an empty table. The live table's grants go
  with it. A table that views depend on (a dbt staging view, say) is not renamed away from
  them: it is emptied and refilled from the aside table in that one transaction instead.

Bulk-only work tables (the aside table, the stage of a range merge) are filled by two COPY
connections at once while the next batch's CSV is written (measured in psql: 1M rows 1.29 s by
one connection, 0.78 s by two); `_dlt_id` is the run's token and a number from a sequence of
the run's, made by the server as COPY inserts.

Values arrive as the text `types.pg_wire_sql` selected on the source; COPY parses each into
the column's type exactly. A NUL character, which PostgreSQL text cannot hold, fails the load
naming the column and the row's key (nothing is written: the transaction is rolled back).
"""

from __future__ import annotations

import io
import secrets
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mysqlsync_dagster.catalog import DLT_COLUMNS, DLT_ID_COLUMN, LOAD_ID_COLUMN, TEXT_TYPES
from mysqlsync_dagster.errors import LoadError
from mysqlsync_dagster.pipeline.wire import WireColumn, batch_values, parquet_batches
from mysqlsync_dagster.targets.base import LoadsInFlight, Strategy
from mysqlsync_dagster.targets.mysql.loader import LoadStats
from mysqlsync_dagster.targets.postgres.ddl import literal, qualified, quote, short_name

if TYPE_CHECKING:  # imported where rows move: a run that reads none never imports pyarrow
    import pyarrow as pa
    import pyarrow.csv as pacsv


@cache
def _csv_options() -> pacsv.WriteOptions:
    import pyarrow.csv as pacsv

    return pacsv.WriteOptions(
        include_header=False, quoting_style="all_valid", null_string="", batch_size=8192
    )


def work_table_name(target: str, kind: str) -> str:
    """A helper table ("stage", "new", "old") for `target`, within 63 bytes."""
    return short_name(f"_mss_{kind}_{target}")


@dataclass
class PostgresLoader(LoadsInFlight):
    """Loads the parts of one sync run into one PostgreSQL table (see the module doc)."""

    engine: Engine
    schema: str
    target: str
    wire: list[WireColumn]
    strategy: Strategy
    batch_size: int
    work_dir: Path
    stats: LoadStats = field(default_factory=LoadStats)
    merge_each_batch: bool = True
    load_streams: int = 2  # COPY connections at once into a bulk-only work table
    run_token: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    _key: list[str] = field(default_factory=list, repr=False)
    _load_id: str | None = field(default=None, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _pending: deque[Future[None]] = field(default_factory=deque, repr=False)
    _stats_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def stage(self) -> str:
        return work_table_name(self.target, "stage")

    @property
    def aside(self) -> str:
        return work_table_name(self.target, "new")

    @property
    def sequence(self) -> str:
        """The run's row numbers, of which `_dlt_id` is made."""
        return work_table_name(self.target, "seq")

    @property
    def _into(self) -> str:
        return self.stage if self.strategy == "upsert" else self.aside

    @property
    def _bulk_only(self) -> bool:
        """The work table only receives COPYs until the end (no merge per batch)."""
        return self.strategy == "swap" or not self.merge_each_batch

    def _q(self, table: str) -> str:
        return qualified(self.schema, table)

    # -- set-up and finish -----------------------------------------------------------
    def prepare(self) -> None:
        """Create the empty work table (dropping leftovers of a run that died)."""
        with self.engine.begin() as conn:
            self._key = primary_key_columns(conn, self.schema, self.target)
            self._drop_work_objects(conn)
            unlogged = "UNLOGGED " if self.strategy == "upsert" else ""
            conn.exec_driver_sql(
                f"CREATE {unlogged}TABLE {self._q(self._into)}"
                f" (LIKE {self._q(self.target)} INCLUDING DEFAULTS)"
            )
            # `_dlt_id`: the run's token and a row number, made by the server as COPY inserts
            # (gen_random_uuid() per row measured at half of COPY's time; no Python string
            # per row either)
            conn.exec_driver_sql(f"CREATE SEQUENCE {self._q(self.sequence)}")
            conn.exec_driver_sql(
                f"ALTER TABLE {self._q(self._into)} ALTER COLUMN {quote(DLT_ID_COLUMN)}"
                f" SET DEFAULT {literal(self.run_token)}"
                f" || nextval({literal(self._q(self.sequence))})"
            )
        self._start_streams(self.load_streams if self._bulk_only else 1, "mysqlsync-copy")

    def _drop_work_objects(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._q(self.stage)}, {self._q(self.aside)}")
        conn.exec_driver_sql(f"DROP SEQUENCE IF EXISTS {self._q(self.sequence)}")

    def merge(self) -> int:
        """After the last part: an upsert that did not merge each batch merges the stage by
        key ranges; a swap builds the aside table's key and indexes. Returns the ranges."""
        self.drain()
        if self.strategy == "upsert" and not self.merge_each_batch:
            self.stats.merge_ranges = self._merge_stage()
        elif self.strategy == "swap":
            self._index_aside()
        return self.stats.merge_ranges

    def finish(self, conn: Connection) -> None:
        """Swap the aside copy in (swap) or drop the stage (upsert), in `conn`'s transaction
        (the caller writes the sync state in the same one)."""
        self.drain()
        self._close_pool()
        if self.strategy == "upsert":
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._q(self.stage)}")
            conn.exec_driver_sql(f"DROP SEQUENCE IF EXISTS {self._q(self.sequence)}")
            return
        live, aside = self._q(self.target), self._q(self.aside)
        conn.exec_driver_sql(
            f"ALTER TABLE {aside} ALTER COLUMN {quote(DLT_ID_COLUMN)} DROP DEFAULT,"
            f" ALTER COLUMN {quote(LOAD_ID_COLUMN)} DROP DEFAULT"
        )
        conn.exec_driver_sql(f"DROP SEQUENCE {self._q(self.sequence)}")
        if has_dependent_views(conn, self.schema, self.target):
            conn.exec_driver_sql(f"TRUNCATE {live}")
            conn.exec_driver_sql(f"INSERT INTO {live} SELECT * FROM {aside}")
            conn.exec_driver_sql(f"DROP TABLE {aside}")
            return
        grants = conn.execute(
            sa.text(
                "SELECT a.privilege_type, a.grantee::regrole::text, a.is_grantable"
                " FROM pg_class c, aclexplode(c.relacl) a"
                " WHERE c.oid = to_regclass(:t) AND a.grantee <> c.relowner AND a.grantee <> 0"
            ),
            {"t": live},
        ).all()
        renames = self._index_renames(conn)
        old = work_table_name(self.target, "old")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._q(old)}")
        conn.exec_driver_sql(f"ALTER TABLE {live} RENAME TO {quote(old)}")
        conn.exec_driver_sql(f"ALTER TABLE {aside} RENAME TO {quote(self.target)}")
        conn.exec_driver_sql(f"DROP TABLE {self._q(old)}")
        for statement in renames:
            conn.exec_driver_sql(statement)
        for privilege, grantee, grantable in grants:
            option = " WITH GRANT OPTION" if grantable else ""
            conn.exec_driver_sql(f"GRANT {privilege} ON {live} TO {grantee}{option}")

    def discard(self) -> None:
        """A failed run: stop the loads in flight and drop the work tables."""
        self._close_pool(cancel=True)
        with self.engine.begin() as conn:
            self._drop_work_objects(conn)

    # -- loading ---------------------------------------------------------------------
    def load_part(self, part: pa.Table | Path, load_id: str) -> None:
        """Load one part (an Arrow table, or a Parquet file of wire columns), stamped
        `load_id`."""
        import pyarrow as pa

        if isinstance(part, pa.Table):
            self._load_batches(part.to_batches(max_chunksize=self.batch_size), load_id)
            return
        self._load_batches(parquet_batches(part, self.wire, self.batch_size), load_id)
        self.stats.files += 1

    def _load_batches(self, batches: Iterable[pa.RecordBatch], load_id: str) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        self.stats.load_id = load_id
        if self._load_id != load_id:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    f"ALTER TABLE {self._q(self._into)} ALTER COLUMN"
                    f" {quote(LOAD_ID_COLUMN)} SET DEFAULT {literal(load_id)}"
                )
            self._load_id = load_id
        for batch in batches:
            arrays = batch_values(batch, self.wire, self.stats, self.target, self.allow_nulls)
            for wire, text in zip(self.wire, arrays, strict=True):
                if wire.column.data_type in TEXT_TYPES:
                    self._refuse_nul(text, wire, batch)
            table = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink, _csv_options())
            # the next batch is converted while up to `load_streams` COPYs run
            self._submit(self._load, sink.getvalue(), batch.num_rows)

    def allow_nulls(self, column: str) -> bool:
        """Make `column` nullable in the work table, and in the live one that an upsert merges
        into: a zero date of the NOT NULL source column is coming as NULL (`keeps_nulls`).
        Loads in flight finish first (they hold locks on the tables). False: it was nullable
        already (made so by an earlier run; the work table is like the live one)."""
        self.drain()
        tables = [self._into] + ([self.target] if self.strategy == "upsert" else [])
        with self.engine.begin() as conn:
            not_null = conn.execute(
                sa.text(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = :s"
                    " AND table_name = :t AND column_name = :c AND is_nullable = 'NO'"
                ),
                {"s": self.schema, "t": self._into, "c": column},
            ).first()
            if not_null is None:
                return False
            for table in tables:
                conn.exec_driver_sql(
                    f"ALTER TABLE {self._q(table)} ALTER COLUMN {quote(column)} DROP NOT NULL"
                )
        return True

    def _load(self, data: pa.Buffer, rows: int) -> None:
        """COPY one batch (and, merging each batch, merge it), in its own transaction."""
        with self.engine.begin() as conn:
            copied = self._copy(conn, data)
            if copied != rows:
                raise LoadError(f"{self.target}: the target took {copied} of {rows} rows")
            if self._merging_now:
                conn.exec_driver_sql(self._upsert_sql())
                conn.exec_driver_sql(f"TRUNCATE {self._q(self.stage)}")
        with self._stats_lock:
            self.stats.csv_bytes += data.size
            self.stats.rows += rows
            self.stats.batches += 1

    def _refuse_nul(self, text: pa.Array, wire: WireColumn, batch: pa.RecordBatch) -> None:
        import pyarrow.compute as pc

        found = pc.match_substring(text, "\x00")
        if not pc.any(found).as_py():
            return
        row = pc.index(found, True).as_py()
        names = [w.column.name for w in self.wire]
        key = {c: batch.column(names.index(c))[row].as_py() for c in self._key if c in names}
        raise LoadError(
            f"{self.target}: column {wire.column.name!r} of the row with key {key} holds a NUL"
            " character (U+0000), which PostgreSQL text cannot store; nothing of this batch"
            " was written (change the value in the source, or make the column binary there)"
        )

    def _copy(self, conn: Connection, data: pa.Buffer) -> int:
        columns = ", ".join(quote(w.column.name) for w in self.wire)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.copy_expert(
                f"COPY {self._q(self._into)} ({columns}) FROM STDIN WITH (FORMAT csv)",
                io.BytesIO(memoryview(data)),
            )
            return int(cursor.rowcount)
        finally:
            cursor.close()

    @property
    def _merging_now(self) -> bool:
        return self.strategy == "upsert" and self.merge_each_batch

    # -- merging ---------------------------------------------------------------------
    def _columns(self) -> list[str]:
        return [w.column.name for w in self.wire] + list(DLT_COLUMNS)

    def _upsert_sql(self, where: str = "TRUE") -> str:
        """INSERT ... SELECT from the stage ... ON CONFLICT DO UPDATE, only where the row's
        data differs: an unchanged row (the rows at the cursor's second, re-read by every
        run) is not written, and keeps its `_dlt_load_id` and `_dlt_id`."""
        columns = ", ".join(quote(c) for c in self._columns())
        head = (
            f"INSERT INTO {self._q(self.target)} AS t ({columns})"
            f" SELECT {columns} FROM {self._q(self.stage)} WHERE {where}"
        )
        data = [w for w in self.wire if w.column.name not in self._key]
        if not data:
            return head + " ON CONFLICT DO NOTHING"
        conflict = ", ".join(quote(c) for c in self._key)
        assignments = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in self._columns())

        def compared(prefix: str, wire: WireColumn) -> str:
            value = f"{prefix}.{quote(wire.column.name)}"
            return f"{value}::text" if wire.column.data_type == "json" else value

        old = ", ".join(compared("t", w) for w in data)
        new = ", ".join(compared("EXCLUDED", w) for w in data)
        return (
            f"{head} ON CONFLICT ({conflict}) DO UPDATE SET {assignments}"
            f" WHERE ROW({old}) IS DISTINCT FROM ROW({new})"
        )

    def _merge_stage(self) -> int:
        """Upsert the stage into the live table in key ranges of at most `batch_size` rows,
        one transaction each (no transaction holds the whole table's rows)."""
        key = ", ".join(quote(c) for c in self._key)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE INDEX ON {self._q(self.stage)} ({key})")
            conn.exec_driver_sql(f"ANALYZE {self._q(self.stage)}")
            uppers = conn.exec_driver_sql(
                f"SELECT {key} FROM (SELECT {key}, row_number() OVER (ORDER BY {key}) AS n"
                f" FROM {self._q(self.stage)}) s WHERE mod(n, {int(self.batch_size)}) = 0"
                f" ORDER BY {key}"
            ).all()
            last = conn.exec_driver_sql(
                f"SELECT {key} FROM {self._q(self.stage)} ORDER BY {key} DESC LIMIT 1"
            ).one_or_none()
        if last is None:
            return 0
        bounds = [tuple(u) for u in uppers]
        if not bounds or bounds[-1] != tuple(last):
            bounds.append(tuple(last))
        lower: tuple[Any, ...] | None = None
        row = f"ROW({key})"
        for upper in bounds:
            params: dict[str, Any] = {f"hi{i}": v for i, v in enumerate(upper)}
            where = f"{row} <= ROW({', '.join(f':hi{i}' for i in range(len(upper)))})"
            if lower is not None:
                params |= {f"lo{i}": v for i, v in enumerate(lower)}
                where += f" AND {row} > ROW({', '.join(f':lo{i}' for i in range(len(lower)))})"
            with self.engine.begin() as conn:
                conn.execute(sa.text(self._upsert_sql(where)), params)
            lower = upper
        return len(bounds)

    def _index_aside(self) -> None:
        """The live table's primary key and indexes, built on the filled aside table under
        names of their own (renamed at the swap)."""
        with self.engine.begin() as conn:
            for definition in index_definitions(conn, self.schema, self.target):
                conn.exec_driver_sql(definition.build(self.schema, self.aside))
            conn.exec_driver_sql(f"ANALYZE {self._q(self.aside)}")

    def _index_renames(self, conn: Connection) -> list[str]:
        return [d.rename(self.schema) for d in index_definitions(conn, self.schema, self.target)]


@dataclass(frozen=True)
class IndexDefinition:
    name: str
    definition: str  # pg_get_indexdef
    constraint: str | None  # pg_get_constraintdef, for the primary key and unique constraints

    @property
    def aside_name(self) -> str:
        return short_name(self.name, "_mss")

    def build(self, schema: str, table: str) -> str:
        if self.constraint is not None:
            return (
                f"ALTER TABLE {qualified(schema, table)} ADD CONSTRAINT"
                f" {quote(self.aside_name)} {self.constraint}"
            )
        # "CREATE [UNIQUE] INDEX name ON schema.table USING ..." with our names
        tail = self.definition.split(" USING ", 1)[1]
        unique = "UNIQUE " if self.definition.startswith("CREATE UNIQUE ") else ""
        return (
            f"CREATE {unique}INDEX {quote(self.aside_name)} ON {qualified(schema, table)}"
            f" USING {tail}"
        )

    def rename(self, schema: str) -> str:
        # renaming a constraint's index renames the constraint too
        return f"ALTER INDEX {qualified(schema, self.aside_name)} RENAME TO {quote(self.name)}"


def index_definitions(conn: Connection, schema: str, table: str) -> list[IndexDefinition]:
    rows = conn.execute(
        sa.text(
            "SELECT i.relname, pg_get_indexdef(i.oid), pg_get_constraintdef(k.oid)"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " LEFT JOIN pg_constraint k ON k.conindid = i.oid AND k.conrelid = x.indrelid"
            " WHERE x.indrelid = to_regclass(:t) ORDER BY i.relname"
        ),
        {"t": qualified(schema, table)},
    ).all()
    return [IndexDefinition(r[0], r[1], r[2]) for r in rows]


def primary_key_columns(conn: Connection, schema: str, table: str) -> list[str]:
    return list(
        conn.execute(
            sa.text(
                "SELECT a.attname FROM pg_index x"
                " JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n) ON TRUE"
                " JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum"
                " WHERE x.indrelid = to_regclass(:t) AND x.indisprimary ORDER BY k.n"
            ),
            {"t": qualified(schema, table)},
        ).scalars()
    )


def has_dependent_views(conn: Connection, schema: str, table: str) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
                " WHERE d.refobjid = to_regclass(:t) AND r.ev_class <> d.refobjid)"
            ),
            {"t": qualified(schema, table)},
        ).scalar_one()
    )
