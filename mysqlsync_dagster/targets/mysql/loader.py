"""Loading wire-format Parquet into the target: LOAD DATA into a work table, then a keyed path.

Two strategies, both bounded by `batch_size` rows per statement:

- `upsert` (incremental): batches are bulk-loaded into a per-table staging table and merged
  into the live table with `INSERT ... SELECT ... ON DUPLICATE KEY UPDATE`; no DELETE ever runs
  over the live table. Direct mode merges after each batch; staging mode (`merge_each_batch`
  off) bulk-loads every file first and then merges in primary-key ranges of `batch_size` rows
  (`merge_stage`), one transaction per range, so no transaction locks the whole table.

Bulk-only work tables (the aside table of a swap, the stage of a range merge) are filled by
`load_streams` LOAD DATA connections at once, with their secondary indexes dropped while
filling: the aside table gets them back in one ALTER before the swap (a sorted index build
beats maintaining them row by row); the stage never needs them.
- `swap` (full refresh, first sync): batches are bulk-loaded into a table built aside, which
  replaces the live table in one atomic `RENAME TABLE` at the end; readers never see it half
  filled.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import tempfile
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy.engine import Connection, Engine

from mysqlsync_dagster.catalog import (
    DLT_COLUMNS,
    DLT_ID_COLUMN,
    LOAD_ID_COLUMN,
    split_create_table,
)
from mysqlsync_dagster.db import quote_identifier as quote
from mysqlsync_dagster.db import run_sql
from mysqlsync_dagster.errors import LoadError
from mysqlsync_dagster.pipeline.wire import WireColumn, batch_values, parquet_batches
from mysqlsync_dagster.targets.base import LoadsInFlight

if TYPE_CHECKING:  # imported where rows move: a run that reads none never imports pyarrow
    import pyarrow as pa
    import pyarrow.csv as pacsv


Strategy = Literal["upsert", "swap"]


@cache
def _csv_options() -> pacsv.WriteOptions:
    import pyarrow.csv as pacsv

    return pacsv.WriteOptions(
        include_header=False, quoting_style="all_valid", null_string="NULL", batch_size=8192
    )


def work_table_name(target: str, kind: str) -> str:
    """Name of a helper table ("stage", "new", "old") for `target`; always within 64 chars."""
    digest = hashlib.sha1(target.encode("utf-8")).hexdigest()[:8]
    return f"_mss_{kind}_{digest}_{target[:40]}"


@dataclass
class LoadStats:
    rows: int = 0
    batches: int = 0
    files: int = 0
    zero_dates: int = 0
    csv_bytes: int = 0
    rows_numbered: int = 0
    load_id: str | None = None  # the load id stamped on the rows
    merge_ranges: int = 0
    warnings: list[str] = field(default_factory=list)  # for the run's report
    nullable: set[str] = field(default_factory=set)  # NOT NULL columns given a zero date


@dataclass
class TableLoader(LoadsInFlight):
    """Loads the parts of one sync run into one target table.

    Parts (Arrow tables in memory, or Parquet files) are turned into CSV batch by batch and
    loaded by `load_streams` connections at once into a bulk-only work table, the conversion
    of the next batch overlapping the loads in flight; `drain()` waits for them.
    """

    engine: Engine
    target: str
    wire: list[WireColumn]
    strategy: Strategy
    batch_size: int
    work_dir: Path
    stats: LoadStats = field(default_factory=LoadStats)
    primary_key: tuple[str, ...] = ()
    merge_each_batch: bool = True
    load_streams: int = 1  # parallel LOAD DATA connections into a bulk-only work table
    run_token: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    _stats_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _deferred_indexes: list[str] = field(default_factory=list, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _pending: deque[Future[None]] = field(default_factory=deque, repr=False)

    @property
    def stage(self) -> str:
        return work_table_name(self.target, "stage")

    @property
    def aside(self) -> str:
        return work_table_name(self.target, "new")

    @property
    def _into(self) -> str:
        return self.stage if self.strategy == "upsert" else self.aside

    # -- set-up and finish -----------------------------------------------------------
    def prepare(self) -> None:
        """Create the empty work table (dropping leftovers of a run that died)."""
        q = quote
        with self.engine.begin() as conn:
            run_sql(conn, f"DROP TABLE IF EXISTS {q(self.stage)}, {q(self.aside)}")
            run_sql(conn, f"DROP TABLE IF EXISTS {q(work_table_name(self.target, 'old'))}")
            run_sql(conn, f"CREATE TABLE {q(self._into)} LIKE {q(self.target)}")
            if self._bulk_only:
                self._deferred_indexes = self._drop_secondary_indexes(conn)
        # Batch N+1 is converted while up to `streams` batches load; each stream has its own
        # connection and transaction. A merge per batch needs the stage to itself: one stream.
        self._start_streams(self.load_streams if self._bulk_only else 1, "mysqlsync-load")

    @property
    def _bulk_only(self) -> bool:
        """The work table only receives LOAD DATA until the end (no per-batch merge)."""
        return self.strategy == "swap" or not self.merge_each_batch

    def _drop_secondary_indexes(self, conn: Connection) -> list[str]:
        """Drop the work table's secondary indexes; returns the clauses that restore them.

        The aside table keeps them when it has a FULLTEXT or SPATIAL index (re-adding those
        would rebuild the table, and index order must stay as in the source's DDL).
        """
        ddl = run_sql(conn, f"SHOW CREATE TABLE {quote(self._into)}").one()[1]
        keys = _SECONDARY_KEY.findall(ddl)
        restore = self.strategy == "swap"
        if not keys or (restore and any(kind in ("FULLTEXT", "SPATIAL") for _, kind, _ in keys)):
            return []
        drops = ", ".join(f"DROP KEY {name}" for _, _, name in keys)
        run_sql(conn, f"ALTER TABLE {quote(self._into)} {drops}")
        return [f"ADD {line.strip().rstrip(',')}" for line, _, _ in keys] if restore else []

    def merge(self) -> int:
        """After the last part: merge the stage into the live table by key ranges (an upsert
        that did not merge each batch as it came); returns the number of ranges."""
        self.drain()
        if self.strategy == "upsert" and not self.merge_each_batch:
            self.stats.merge_ranges = self.merge_stage()
        return self.stats.merge_ranges

    def finish(self, conn: Connection) -> None:
        """Swap the aside copy in (swap) or drop the staging table (upsert), in `conn`'s
        transaction (the caller writes the sync state in the same one)."""
        self.drain()
        self._close_pool()
        q = quote
        if self.strategy == "swap":
            if self._deferred_indexes:
                run_sql(conn, f"ALTER TABLE {q(self.aside)} {', '.join(self._deferred_indexes)}")
            old = work_table_name(self.target, "old")
            run_sql(
                conn,
                f"RENAME TABLE {q(self.target)} TO {q(old)}, {q(self.aside)} TO {q(self.target)}",
            )
            run_sql(conn, f"DROP TABLE {q(old)}")
        else:
            run_sql(conn, f"DROP TABLE IF EXISTS {q(self.stage)}")

    def discard(self) -> None:
        """A failed run: stop the loads in flight and drop the work tables."""
        self._close_pool(cancel=True)
        with self.engine.begin() as conn:
            run_sql(conn, f"DROP TABLE IF EXISTS {quote(self.stage)}, {quote(self.aside)}")

    # -- loading ---------------------------------------------------------------------
    def load_part(self, part: pa.Table | Path, load_id: str) -> None:
        """Load one part (an Arrow table, or a Parquet file of wire columns), stamped
        `load_id`; its last batches may still be loading when this returns (`drain`)."""
        import pyarrow as pa

        if isinstance(part, pa.Table):
            self._load_batches(part.to_batches(max_chunksize=self.batch_size), load_id)
        else:
            self.load_parquet(part, load_id)

    def load_parquet(self, path: str | Path, load_id: str) -> None:
        """Load one Parquet file of wire columns, stamped `load_id`."""
        self._load_batches(parquet_batches(path, self.wire, self.batch_size), load_id)
        self.stats.files += 1

    def _load_batches(self, batches: Iterable[pa.RecordBatch], load_id: str) -> None:
        import pyarrow as pa

        self.stats.load_id = load_id
        for batch in batches:
            arrays = batch_values(batch, self.wire, self.stats, self.target, self.allow_nulls)
            arrays.append(self._row_ids(batch.num_rows))
            table = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
            self._submit(self._load_csv, *self._write_csv(table), load_id)

    def allow_nulls(self, column: str) -> bool:
        """Make `column` nullable in the work table, and in the live one that an upsert merges
        into: a zero date of the NOT NULL source column is coming as NULL (`keeps_nulls`).
        Loads in flight finish first (they hold the table's metadata lock). False: it was
        nullable already (made so by an earlier run)."""
        self.drain()
        tables = [self._into] + ([self.target] if self.strategy == "upsert" else [])
        altered = False
        with self.engine.begin() as conn:
            for table in tables:
                ddl = run_sql(conn, f"SHOW CREATE TABLE {quote(table)}").one()[1]
                definition = split_create_table(ddl)[0][column]
                relaxed = re.sub(r" NOT NULL\b", " NULL", definition, count=1)
                if relaxed != definition:
                    run_sql(conn, f"ALTER TABLE {quote(table)} MODIFY COLUMN {relaxed}")
                    altered = True
        return altered

    def _row_ids(self, count: int) -> pa.Array:
        """Row numbers, unique in this run: the server makes `_dlt_id` of this run's token and
        each (see `_load_data`). Built from the buffer: `pa.array` of Python values (and
        pyarrow's string kernels given a Python string) would import pandas, 0.25 s a run."""
        import numpy as np
        import pyarrow as pa

        first = self.stats.rows_numbered
        self.stats.rows_numbered += count
        ordinals = np.arange(first, first + count, dtype=np.int64)
        return pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(ordinals)])

    def _write_csv(self, table: pa.Table) -> tuple[Path, int]:
        import pyarrow.csv as pacsv

        with tempfile.NamedTemporaryFile(
            "wb", suffix=".csv", dir=self.work_dir, delete=False
        ) as handle:
            pacsv.write_csv(table, handle, _csv_options())
            csv_path = Path(handle.name)
        return csv_path, table.num_rows

    def _load_csv(self, csv_path: Path, rows: int, load_id: str) -> None:
        try:
            size = csv_path.stat().st_size
            with self.engine.begin() as conn:
                loaded = self._load_data(conn, csv_path, self._into, load_id)
                # affected rows: 1 per new row, 2 per row replaced by a batch loaded again
                if not rows <= loaded <= 2 * rows:
                    raise LoadError(f"{self.target}: the target took {loaded} of {rows} rows")
                if self._merging_now:
                    run_sql(conn, self._upsert_sql())
            if self._merging_now:
                with self.engine.begin() as conn:
                    run_sql(conn, f"TRUNCATE TABLE {quote(self.stage)}")
        finally:
            csv_path.unlink(missing_ok=True)
        with self._stats_lock:
            self.stats.csv_bytes += size
            self.stats.rows += rows
            self.stats.batches += 1

    @property
    def _merging_now(self) -> bool:
        return self.strategy == "upsert" and self.merge_each_batch

    def merge_stage(self) -> int:
        """Upsert everything in the stage table into the live table, in primary-key ranges.

        Each range holds at most `batch_size` rows and is merged in its own transaction; the
        next range starts after the last key of the previous one (composite keys compared
        column by column). Returns the number of ranges.
        """
        if not self.primary_key:
            raise ValueError(f"{self.target}: merge_stage needs the primary key columns")
        keys = list(self.primary_key)
        key_list = ", ".join(quote(k) for k in keys)
        descending = ", ".join(f"{quote(k)} DESC" for k in keys)
        lower: tuple[object, ...] | None = None
        ranges = 0
        while True:
            after, params = key_range_sql(keys, lower, ">", "lo")
            with self.engine.begin() as conn:
                # the range's last key: `batch_size` keys on, or the stage's last key
                upper = (
                    run_sql(
                        conn,
                        f"SELECT {key_list} FROM {quote(self.stage)} WHERE {after}"
                        f" ORDER BY {key_list} LIMIT 1 OFFSET {int(self.batch_size) - 1}",
                        params,
                    ).one_or_none()
                    or run_sql(
                        conn,
                        f"SELECT {key_list} FROM {quote(self.stage)} WHERE {after}"
                        f" ORDER BY {descending} LIMIT 1",
                        params,
                    ).one_or_none()
                )
                if upper is None:
                    return ranges
                up_to, upper_params = key_range_sql(keys, tuple(upper), "<=", "hi")
                sql = self._upsert_sql(f"({after}) AND ({up_to})")
                run_sql(conn, sql, {**params, **upper_params})
            ranges += 1
            lower = tuple(upper)

    def _columns(self) -> list[str]:
        return [w.column.name for w in self.wire] + list(DLT_COLUMNS)

    def _load_data(self, conn: Connection, csv_path: Path, into: str, load_id: str) -> int:
        q = quote
        targets, assignments = [], []
        for i, wire in enumerate(self.wire):
            expression = wire.load_sql(f"@v{i}")
            if expression is None:
                targets.append(q(wire.column.name))
            else:
                targets.append(f"@v{i}")
                assignments.append(f"{q(wire.column.name)} = {expression}")
        # `_dlt_load_id` is the same for every row: set by the server, not sent per row;
        # `_dlt_id` is made by the server of the run's token and the row's number
        targets.append("@dlt_row")
        assignments.append(f"{q(LOAD_ID_COLUMN)} = %(load_id)s")
        assignments.append(f"{q(DLT_ID_COLUMN)} = CONCAT(%(token)s, @dlt_row)")
        statement = (
            # REPLACE: loading a batch again (a retried run re-reads from the cursor) is
            # harmless. Source keys are unique (primary key, or checked before extracting).
            f"LOAD DATA LOCAL INFILE %(path)s REPLACE INTO TABLE {q(into)} CHARACTER SET utf8mb4"
            " FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY ''"
            " LINES TERMINATED BY '\\n'"
            f" ({', '.join(targets)})"
        )
        statement += " SET " + ", ".join(assignments)
        parameters = {"path": str(csv_path), "load_id": load_id, "token": self.run_token}
        rowcount = run_sql(conn, statement, parameters).rowcount
        # LOCAL loads turn data errors into warnings: any warning means a value was changed.
        warnings = run_sql(conn, "SHOW WARNINGS LIMIT 5").all()
        if warnings:
            details = "; ".join(f"{w[0]} {w[1]}: {w[2]}" for w in warnings)
            raise LoadError(f"{self.target}: the target changed or rejected values: {details}")
        return int(rowcount)

    def _upsert_sql(self, where: str = "1") -> str:
        """INSERT ... SELECT from the stage ... ON DUPLICATE KEY UPDATE.

        A row that arrives unchanged (the rows at the cursor's second, re-read by every run)
        keeps its `_dlt_load_id` and `_dlt_id`, so the server sees an identical row and writes
        nothing: the table's write time (`UPDATE_TIME`) moves only when data changed, which is
        what proves an idle table (verify/idle.py). The `_dlt` columns are assigned first:
        later assignments would see the new values. Key columns are assigned too: under a
        case- or pad-insensitive collation 'abc' matches 'ABC', and the target must take the
        source's spelling (compared byte for byte here for the same reason)."""
        q = quote
        columns = ", ".join(q(c) for c in self._columns())
        data = [w.column.name for w in self.wire]
        dialect = self.engine.dialect
        version = dialect.server_version_info or (0,)
        if not getattr(dialect, "is_mariadb", False) and tuple(version[:3]) >= (8, 0, 20):
            new = {c: f"`_new`.{q(c)}" for c in self._columns()}
            head = (
                f"INSERT INTO {q(self.target)} ({columns}) SELECT * FROM "
                f"(SELECT {columns} FROM {q(self.stage)} WHERE {where}) AS `_new`"
            )
        else:
            new = {c: f"VALUES({q(c)})" for c in self._columns()}
            head = (
                f"INSERT INTO {q(self.target)} ({columns}) SELECT {columns} FROM {q(self.stage)}"
                f" WHERE {where}"
            )
        old = {c: f"{q(self.target)}.{q(c)}" for c in self._columns()}
        same = " AND ".join(f"BINARY {old[c]} <=> BINARY {new[c]}" for c in data) or "FALSE"
        assignments = [f"{q(c)} = IF({same}, {old[c]}, {new[c]})" for c in DLT_COLUMNS]
        assignments += [f"{q(c)} = {new[c]}" for c in data]
        return f"{head} ON DUPLICATE KEY UPDATE {', '.join(assignments)}"


# A secondary index line of SHOW CREATE TABLE: (whole line, kind, quoted name).
_SECONDARY_KEY = re.compile(
    r"^(\s*(?:(UNIQUE|FULLTEXT|SPATIAL) )?KEY (`(?:[^`]|``)+`).*)$", re.MULTILINE
)


def key_range_sql(
    keys: list[str], bound: tuple[object, ...] | None, op: Literal[">", "<="], prefix: str
) -> tuple[str, dict[str, object]]:
    """`(k1, k2, ...) > bound` or `<= bound` spelled out column by column, with bound params.

    Written as OR-ed prefixes (`k1 > :b0 OR (k1 = :b0 AND k2 > :b1)`) rather than a row
    constructor, which MariaDB does not turn into an index range. No bound: every row.
    """
    if bound is None:
        return "1", {}
    params = {f"{prefix}{i}": value for i, value in enumerate(bound)}
    strict = ">" if op == ">" else "<"
    terms = []
    for i, key in enumerate(keys):
        equal = [f"{quote(k)} = %({prefix}{j})s" for j, k in enumerate(keys[:i])]
        terms.append(" AND ".join([*equal, f"{quote(key)} {strict} %({prefix}{i})s"]))
    if op == "<=":
        terms.append(" AND ".join(f"{quote(k)} = %({prefix}{j})s" for j, k in enumerate(keys)))
    return " OR ".join(f"({t})" for t in terms), params
