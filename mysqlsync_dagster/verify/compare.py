"""Proof of consistency between a source table and its target copy: the comparison engine.

Three checks per table, one implementation shared by the table asset (after each sync, through
`orchestration/checks.py`) and by `mysqlsync-dagster check` (against the databases as they are):

- `source_row_count`: the source table answers; its row count (and max modifier) before extraction.
- `row_count_match` (blocking): COUNT(*) on both sides, compared.
- `checksum_match`: per primary-key range, COUNT(*) and BIT_XOR(CRC32(row)) computed by each
  server and compared range by range; a mismatching range is split until it is small enough to
  compare row digests, and a sample of differing primary keys is reported. No table passes
  through Python: only keys and 32-bit digests do, and only for ranges that differ.

Incremental tables are compared within the synced cursor (rows whose modifier is at or before the
cursor stored in `_mysqlsync_state`, or NULL): rows written since then are not expected in the
target yet. Rows exactly at the cursor may have been written after the sync read the source in
the same second; the next sync re-reads them by design (it reads `modifier >= cursor`), so a
difference confined to them is reported as pending, not as a failure."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from typing import Any, Literal, TypeVar

import sqlalchemy as sa

from mysqlsync_dagster.catalog import (
    INTEGER_TYPES,
    TEXT_TYPES,
    Column,
    TableShape,
    modifier_maximum,
    read_table_shape,
)
from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.db import PLAIN_MYSQL, key_in
from mysqlsync_dagster.errors import CheckError, is_transient, redact
from mysqlsync_dagster.pipeline.windows import (
    ModifierWindow,
    changed_since,
    cursor_literal,
    cursor_text,
    window_condition,
)
from mysqlsync_dagster.pipeline.wire import WireColumn, wire_kind
from mysqlsync_dagster.targets import target_for
from mysqlsync_dagster.targets.base import Target
from mysqlsync_dagster.targets.postgres.ddl import quote as pg_quote
from mysqlsync_dagster.verify import canonical
from mysqlsync_dagster.verify.canonical import unsigned64
from mysqlsync_dagster.verify.idle import read_clock
from mysqlsync_dagster.verify.outcome import (  # noqa: F401 (the checks' names, from here too)
    BLOCKING_CHECKS,
    CHECKSUM_MATCH,
    ROW_COUNT_MATCH,
    SOURCE_ROW_COUNT,
    CheckOutcome,
)

DELETES_HINT = (
    "rows deleted in the source stay in the target unless the table sets "
    '"detect_deletes": true in tables.json'
)

TARGET_QUERY_SECONDS = 0.5  # chunk sizes adapt so that one digest query takes about this long
FIRST_CHUNK_ROWS = 10_000
MIN_CHUNK_ROWS = 1_000
MAX_CHUNK_ROWS = 2_000_000
ROW_DIFF_ROWS = 2_000  # a differing range this small is compared row digest by row digest
KEY_DIFF_ROWS = 50_000  # ... and key by key when looking for deletes (keys are cheap to list)
SPLIT_PARTS = 8  # a larger differing range is split into this many parts
# A differing range whose parts mostly differ too (dense drift: a bulk UPDATE that left the
# modifier alone) holds differing rows everywhere: splitting further would digest the same
# rows again at every level. Its differing parts up to this size are compared row by row at
# once (measured: 2,500 drifted rows in a 250,000-row slice took 13.8 s to narrow by
# splitting alone).
DENSE_LEAF_ROWS = 100_000
# ... and, where the key is one integer column on both sides of one engine, first as digests of
# buckets of this many consecutive key values (one GROUP BY a side), so that only the rows of
# differing buckets are read one by one.
BUCKET_KEYS = 16
MAX_NARROWED_CHUNKS = 20
SAMPLE_KEYS = 20
KEY_BATCH = 500  # keys per `IN (...)` list

Key = tuple[Any, ...]
Side = Literal["source", "target"]
Difference = Literal["missing_in_target", "extra_in_target", "changed"]
T = TypeVar("T")
U = TypeVar("U")


# -- pure helpers ----------------------------------------------------------------------------
def next_chunk_rows(
    current: int,
    seconds: float,
    target_seconds: float = TARGET_QUERY_SECONDS,
    minimum: int = MIN_CHUNK_ROWS,
    maximum: int = MAX_CHUNK_ROWS,
) -> int:
    """Rows for the next chunk so that its query takes about `target_seconds`.

    Scales by the last chunk's speed, at most 4x up or down per step (one slow query on a busy
    server must not collapse the chunk size, nor a cached one inflate it).
    """
    factor = 4.0 if seconds <= 0 else min(4.0, max(0.25, target_seconds / seconds))
    return int(min(maximum, max(minimum, current * factor)))


@dataclass(frozen=True)
class KeyRange:
    """Primary keys after `lower` (exclusive) up to `upper` (inclusive); None is unbounded."""

    lower: Key | None = None
    upper: Key | None = None

    def split(self, points: Sequence[Key]) -> list[KeyRange]:
        bounds = [self.lower, *points, self.upper]
        return [KeyRange(a, b) for a, b in pairwise(bounds)]


@dataclass(frozen=True)
class Digest:
    rows: int
    xor: int


@dataclass
class RowDiff:
    missing_in_target: list[Key] = field(default_factory=list)
    extra_in_target: list[Key] = field(default_factory=list)
    changed: list[Key] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.missing_in_target) + len(self.extra_in_target) + len(self.changed)

    def extend(self, other: RowDiff) -> None:
        self.missing_in_target += other.missing_in_target
        self.extra_in_target += other.extra_in_target
        self.changed += other.changed

    def sample(self, limit: int) -> list[tuple[Difference, Key]]:
        """Up to `limit` keys, taking from each kind in turn so every kind is represented."""
        kinds: list[tuple[Difference, list[Key]]] = [
            ("missing_in_target", self.missing_in_target),
            ("extra_in_target", self.extra_in_target),
            ("changed", self.changed),
        ]
        out: list[tuple[Difference, Key]] = []
        for i in range(max((len(keys) for _, keys in kinds), default=0)):
            for kind, keys in kinds:
                if i < len(keys) and len(out) < limit:
                    out.append((kind, keys[i]))
        return out


def diff_rows(source: Mapping[Key, int], target: Mapping[Key, int]) -> RowDiff:
    """Compare {key: row digest} of one key range on both sides."""
    return RowDiff(
        missing_in_target=[k for k in source if k not in target],
        extra_in_target=[k for k in target if k not in source],
        changed=[k for k, h in source.items() if k in target and target[k] != h],
    )


def column_digest_sql(column: Column, quoted: str) -> str:
    """SQL for a NULL-aware digest of one column's stored value, the same on both servers.

    Values are hashed in the text form the sync copies them by (wire.py): FLOAT via DOUBLE,
    TIMESTAMP as epoch seconds (time-zone free), BIT as a number, text as utf8mb4; binary
    values as their raw bytes (HEX would double a large BLOB). Zero dates count as NULL, the one
    conversion the sync makes. NULL hashes to 'N', unlike any CRC32, so NULL differs from ''.
    """
    kind = wire_kind(column)
    if kind == "hex":
        value = quoted
    elif kind == "date":
        value = f"IF(MONTH({quoted}) = 0 OR DAYOFMONTH({quoted}) = 0, NULL, CAST({quoted} AS CHAR))"
    elif kind == "timestamp":
        value = f"NULLIF(UNIX_TIMESTAMP({quoted}), 0)"
    else:
        value = WireColumn.of(column).select_sql(quoted)
    return f"IFNULL(CRC32({value}), 'N')"


def row_digest_sql(columns: Sequence[Column], dialect: sa.Dialect) -> str:
    """CRC32 over the column digests of one row (each a number or 'N', so never ambiguous)."""
    quote = dialect.identifier_preparer.quote_identifier
    parts = ", ".join(column_digest_sql(c, quote(c.name)) for c in columns)
    return f"CRC32(CONCAT_WS(',', {parts}))"


def keys_after(columns: Sequence[sa.ColumnElement[Any]], key: Key) -> sa.ColumnElement[bool]:
    """(columns) > key, spelled `a > x OR (a = x AND b > y)` so the range optimizer uses the key
    (MariaDB scans the whole index for a row-constructor comparison)."""
    return _lexicographic(columns, key, strict=True, greater=True)


def keys_up_to(columns: Sequence[sa.ColumnElement[Any]], key: Key) -> sa.ColumnElement[bool]:
    """(columns) <= key, spelled like `keys_after`."""
    return _lexicographic(columns, key, strict=False, greater=False)


def _lexicographic(
    columns: Sequence[sa.ColumnElement[Any]], key: Key, *, strict: bool, greater: bool
) -> sa.ColumnElement[bool]:
    terms = []
    for i, column in enumerate(columns):
        last = i == len(columns) - 1
        if greater:
            bound = column > key[i] if strict or not last else column >= key[i]
        else:
            bound = column < key[i] if strict or not last else column <= key[i]
        terms.append(sa.and_(*(columns[j] == key[j] for j in range(i)), bound))
    return sa.or_(*terms)


def _plain(value: Any) -> Any:
    """A value read from a PostgreSQL or DuckDB target as the MySQL driver gives it."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def jsonable(value: Any) -> Any:
    """A key value as JSON metadata shows it exactly."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal | dt.timedelta):
        return str(value)
    return value


def _in_parallel(first: Callable[[], T], second: Callable[[], U]) -> tuple[T, U, float]:
    """Run two queries at once (one per server); returns both results and the wall time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        result = a.result(), b.result()
    return result[0], result[1], time.perf_counter() - started


# -- the two tables --------------------------------------------------------------------------
@dataclass
class TablePair:
    """A configured table's source and target, ready to compare.

    `open` reads both shapes; a table or column missing on either side raises `CheckError`.
    Engines come from db.py, whose sessions run with time_zone '+00:00' on both sides.
    """

    cfg: TableConfig
    source_engine: sa.Engine
    target_engine: sa.Engine
    shape: TableShape
    key_columns: tuple[str, ...]
    cursor: str | None = None
    # A partition run's window: only its rows are compared (partition runs keep no cursor).
    window: ModifierWindow | None = None
    # An incremental run's read window: only rows changed since this cursor text (or NULL).
    since: str | None = None
    # the target (MySQL, PostgreSQL or DuckDB): None means a MySQL target of `target_engine`
    target: Target | None = None
    # The source table's rows, proven unchanged since a run counted them (`verify/idle.py`,
    # a source proof), and its write time then: while that stays, the source's counts need
    # no scan, only its rows after the cursor.
    source_total: int | None = None
    source_written: float | None = None

    @classmethod
    def open(
        cls,
        cfg: TableConfig,
        source_engine: sa.Engine,
        target_engine: sa.Engine,
        window: ModifierWindow | None = None,
    ) -> TablePair:
        source_db = source_engine.url.database or ""
        target = target_for(target_engine, schema=cfg.target_schema)
        with source_engine.connect() as conn:
            shape = read_table_shape(conn, source_db, cfg.table)
        if shape is None:
            raise CheckError(
                f"table {cfg.table!r} does not exist in the source database {source_db!r}"
            )
        target_columns = target.column_names(cfg.target)
        if target_columns is None:
            raise CheckError(
                f"table {cfg.target!r} does not exist in the target database {target.schema!r} "
                "(not synced yet?)"
            )
        state = target.stored_state(cfg.target)
        needed = {c.name for c in target.copied_columns(shape)} | set(cfg.primary_key)
        if cfg.modifier:
            needed.add(cfg.modifier)
        missing = (
            sorted(needed - set(shape.column_names)),
            sorted(needed - set(target_columns)),
        )
        for side, names in zip(("source", "target"), missing, strict=True):
            if names:
                raise CheckError(f"table {cfg.table!r}: column(s) {names} missing in the {side}")
        return cls(
            cfg=cfg,
            source_engine=source_engine,
            target_engine=target_engine,
            shape=shape,
            # the source's own key order, so that ranges follow its index (and the target's)
            key_columns=shape.primary_key or cfg.primary_key,
            cursor=state.cursor if state and cfg.incremental and window is None else None,
            window=window,
            target=target,
        )

    # -- SQL pieces ------------------------------------------------------------------
    def engine(self, side: Side) -> sa.Engine:
        return self.source_engine if side == "source" else self.target_engine

    @property
    def cross_engine(self) -> bool:
        """The target is not MySQL: each side computes the canonical digest
        (`verify/canonical.py`) instead of MySQL's CRC32 of its own text."""
        return self.target is not None and self.target.kind != "mysql"

    def table(self, side: Side) -> sa.TableClause:
        name = self.cfg.table if side == "source" else self.cfg.target
        schema = self.engine(side).url.database
        if side == "target" and self.target is not None:
            schema = self.target.schema
        return sa.table(name, *(sa.column(c) for c in self.shape.column_names), schema=schema)

    def columns(self, keys_only: bool = False) -> list[Column]:
        """The columns hashed: the copied columns, or the primary key alone."""
        if keys_only:
            return [self.shape.column(c) for c in self.key_columns]
        if self.target is not None:
            return self.target.copied_columns(self.shape)
        return self.shape.copied_columns

    def keys(self, table: sa.TableClause, side: Side) -> list[sa.ColumnElement[Any]]:
        """The key columns of `side`'s table. Against another engine, the source's text keys
        compare in binary (code point) order, as the target's "C" collation does, so that a
        key range holds the same rows on both sides."""
        if side == "target" or not self.cross_engine:
            return [table.c[c] for c in self.key_columns]
        return [self._binary_key(table, c) for c in self.key_columns]

    def _binary_key(self, table: sa.TableClause, name: str) -> sa.ColumnElement[Any]:
        if self.shape.column(name).data_type not in TEXT_TYPES:
            return table.c[name]
        # utf8mb4 first: a latin1 or ascii column takes no utf8mb4 collation
        return sa.cast(table.c[name], sa.CHAR).collate("utf8mb4_bin")

    def row_digest(self, side: Side, keys_only: bool = False) -> sa.ColumnElement[Any]:
        """The per-row digest expression of `side` (a 64-bit integer)."""
        columns = self.columns(keys_only)
        if not self.cross_engine:
            return sa.literal_column(row_digest_sql(columns, self.dialect))
        if side == "source":
            quote = PLAIN_MYSQL.identifier_preparer.quote_identifier
            return sa.literal_column(canonical.mysql_row_digest_sql(columns, quote))
        if self.target is not None and self.target.kind == "duckdb":
            from mysqlsync_dagster.verify.canonical_duckdb import duckdb_row_digest_sql

            return sa.literal_column(duckdb_row_digest_sql(columns, pg_quote))
        return sa.literal_column(canonical.postgres_row_digest_sql(columns, pg_quote))

    def plain_key(self, side: Side, row: Sequence[Any]) -> Key:
        """A key as read from `side`, in the form the source's driver gives (so that keys
        from both sides compare equal): bytes, and instants as naive UTC."""
        if side == "source" or not self.cross_engine:
            return tuple(row)
        return tuple(_plain(v) for v in row)

    def where(
        self,
        table: sa.TableClause,
        key_range: KeyRange,
        *,
        scoped: bool = True,
        strict: bool = False,
        side: Side,
    ) -> list[sa.ColumnElement[bool]]:
        """The key range and, when `scoped` and the table is incremental, the synced rows:
        modifier up to the cursor (`strict`: before it) or NULL."""
        keys = self.keys(table, side)
        clauses = []
        if key_range.lower is not None:
            clauses.append(keys_after(keys, key_range.lower))
        if key_range.upper is not None:
            clauses.append(keys_up_to(keys, key_range.upper))
        if scoped and self.cfg.modifier and self.cursor is not None:
            modifier = table.c[self.cfg.modifier]
            bound = cursor_literal(self.shape.column(self.cfg.modifier).data_type, self.cursor)
            clauses.append(
                sa.or_(modifier.is_(None), modifier < bound if strict else modifier <= bound)
            )
        if self.window is not None and self.cfg.modifier:
            data_type = self.shape.column(self.cfg.modifier).data_type
            clauses.append(window_condition(table.c[self.cfg.modifier], data_type, self.window))
        if scoped and self.since is not None and self.cfg.modifier:
            data_type = self.shape.column(self.cfg.modifier).data_type
            clauses.append(changed_since(table.c[self.cfg.modifier], data_type, self.since))
        return clauses

    def in_scope(self, keys: Sequence[Key]) -> set[Key]:
        """Which of `keys` the source holds within the synced scope (modifier before the
        cursor, or NULL): the rows the target must have as they are now. A key outside it was
        deleted or changed after the run read the source, or sits at the cursor, which the
        next run re-reads anyway."""
        table = self.table("source")
        columns = self.keys(table, "source")
        found: set[Key] = set()
        for i in range(0, len(keys), KEY_BATCH):
            batch = keys[i : i + KEY_BATCH]
            clauses = self.where(table, KeyRange(), strict=True, side="source")
            query = sa.select(*columns).where(key_in(columns, batch), *clauses)
            with self.source_engine.connect() as conn:
                found |= {tuple(row) for row in conn.execute(query)}
        return found

    def key_digests(self, side: Side, keys: Sequence[Key]) -> dict[Key, int]:
        """{key: row digest} of these keys on one side, whatever their modifier."""
        table = self.table(side)
        columns = self.keys(table, side)
        row_digest = self.row_digest(side)
        out: dict[Key, int] = {}
        for i in range(0, len(keys), KEY_BATCH):
            query = sa.select(*columns, row_digest).where(key_in(columns, keys[i : i + KEY_BATCH]))
            with self.engine(side).connect() as conn:
                out |= {
                    self.plain_key(side, row[:-1]): unsigned64(row[-1])
                    for row in conn.execute(query)
                }
        return out

    @property
    def scope_text(self) -> str:
        if self.window is not None:
            return f" in the window {self.window.describe()}"
        if self.scoped:
            data_type = self.shape.column(self.cfg.modifier).data_type
            return f" with {self.cfg.modifier} up to {cursor_text(data_type, self.cursor)}"
        return ""

    @property
    def scoped(self) -> bool:
        return self.cfg.modifier is not None and self.cursor is not None

    def narrowed_to(self, since: str | None) -> TablePair:
        """The same pair, comparing only rows changed since `since` (an incremental window)."""
        return dataclasses.replace(self, since=since)

    # -- queries ---------------------------------------------------------------------
    def count(self, side: Side, *, strict: bool = False) -> int:
        table = self.table(side)
        if side == "source" and self.source_total is not None and self._whole_scope:
            after = self.count_after_cursor(side, strict=strict)
            with self.source_engine.connect() as conn:
                clock = read_clock(conn, self.cfg.table)  # after the count: no write since
            if clock is not None and clock.written == self.source_written:
                return self.source_total - after
            # written during the run: counted below
        mysql = side == "source" or not self.cross_engine
        if self.scoped and self._whole_scope and mysql:
            # the synced scope is every row but those after the cursor: MySQL counts all rows
            # on its smallest index and those after the cursor on the modifier's, in one
            # snapshot, in half the time it takes to test the modifier of every row
            everything = sa.select(sa.func.count()).select_from(table)
            after = everything.where(self._after_cursor(table, strict=strict))
            with self.engine(side).connect() as conn, conn.begin():
                total = int(conn.execute(everything).scalar_one())
                return total - int(conn.execute(after).scalar_one())
        return self._count(side, table, *self.where(table, KeyRange(), strict=strict, side=side))

    @property
    def _whole_scope(self) -> bool:
        """The pair compares the whole synced scope (not a partition's or a read's window)."""
        return self.window is None and self.since is None

    def _after_cursor(self, table: sa.TableClause, *, strict: bool = False) -> Any:
        """Rows whose modifier is after the cursor (`strict`: at it, too): outside the
        synced scope, found through the modifier's index."""
        bound = cursor_literal(self.shape.column(self.cfg.modifier).data_type, self.cursor)
        modifier = table.c[self.cfg.modifier]
        return modifier >= bound if strict else modifier > bound

    def count_after_cursor(self, side: Side, *, strict: bool = False) -> int:
        """Rows whose modifier is after the cursor (changed since the run read the source;
        `strict`: at it, too): outside the synced scope, found through the modifier's index."""
        if not self.scoped:
            return 0
        table = self.table(side)
        return self._count(side, table, self._after_cursor(table, strict=strict))

    def _count(self, side: Side, table: sa.TableClause, *clauses: sa.ColumnElement[bool]) -> int:
        query = sa.select(sa.func.count()).select_from(table).where(*clauses)
        with self.engine(side).connect() as conn:
            return int(conn.execute(query).scalar_one())

    def digest(
        self, side: Side, key_range: KeyRange, *, strict: bool = False, keys_only: bool = False
    ) -> Digest:
        """COUNT(*) and BIT_XOR of row digests over the range (`keys_only`: digests of the
        primary key alone, over every row: the key sets compared, for deletes)."""
        table = self.table(side)
        row_digest = self.row_digest(side, keys_only)
        query = (
            sa.select(sa.func.count(), sa.func.bit_xor(row_digest))
            .select_from(table)
            .where(*self.where(table, key_range, scoped=not keys_only, strict=strict, side=side))
        )
        with self.engine(side).connect() as conn:
            rows, xor = conn.execute(query).one()
        return Digest(int(rows), unsigned64(xor or 0))

    def parallel(self, query: Callable[[Side], T]) -> tuple[T, T, float]:
        """The same query on both sides at once; both results and the wall time."""
        return _in_parallel(lambda: query("source"), lambda: query("target"))

    def digests(
        self, key_range: KeyRange, *, strict: bool = False, keys_only: bool = False
    ) -> tuple[Digest, Digest, float]:
        return _in_parallel(
            lambda: self.digest("source", key_range, strict=strict, keys_only=keys_only),
            lambda: self.digest("target", key_range, strict=strict, keys_only=keys_only),
        )

    def row_digests(
        self, side: Side, key_range: KeyRange, *, strict: bool, keys_only: bool = False
    ) -> dict[Key, int]:
        table = self.table(side)
        keys = self.keys(table, side)
        row_digest = self.row_digest(side, keys_only)
        query = (
            sa.select(*keys, row_digest)
            .select_from(table)
            .where(*self.where(table, key_range, scoped=not keys_only, strict=strict, side=side))
            .order_by(*keys)
        )
        with self.engine(side).connect() as conn:
            return {
                self.plain_key(side, row[:-1]): unsigned64(row[-1]) for row in conn.execute(query)
            }

    def row_diff(self, key_range: KeyRange, *, strict: bool, keys_only: bool) -> RowDiff:
        """The differing rows of a range, from both sides' row digests (read at once)."""
        source, target, _ = self.parallel(
            lambda side: self.row_digests(side, key_range, strict=strict, keys_only=keys_only)
        )
        return diff_rows(source, target)

    def dense_row_diff(self, key_range: KeyRange, *, strict: bool, keys_only: bool) -> RowDiff:
        """`row_diff` of a range where differing rows are everywhere. With one integer key on
        both sides of one engine, digests of key buckets (`BUCKET_KEYS` values each) first:
        only the rows of the buckets that differ are read one by one (at 1% drift, about one
        row in six instead of every row)."""
        key = self.key_columns[0]
        if (
            self.cross_engine
            or len(self.key_columns) != 1
            or self.shape.column(key).data_type not in INTEGER_TYPES
        ):
            return self.row_diff(key_range, strict=strict, keys_only=keys_only)

        def bucket(table: sa.TableClause) -> sa.ColumnElement[Any]:
            return table.c[key].op("DIV")(BUCKET_KEYS)

        def buckets(side: Side) -> dict[int, tuple[int, int]]:
            table = self.table(side)
            query = (
                sa.select(
                    bucket(table),
                    sa.func.count(),
                    sa.func.bit_xor(self.row_digest(side, keys_only)),
                )
                .where(
                    *self.where(table, key_range, scoped=not keys_only, strict=strict, side=side)
                )
                .group_by(bucket(table))
            )
            with self.engine(side).connect() as conn:
                return {int(b): (int(n), unsigned64(x or 0)) for b, n, x in conn.execute(query)}

        source, target, _ = self.parallel(buckets)
        differing = sorted(
            b for b in source.keys() | target.keys() if source.get(b) != target.get(b)
        )
        found = RowDiff()
        for start in range(0, len(differing), KEY_BATCH):
            chosen = differing[start : start + KEY_BATCH]

            def rows(side: Side, chosen: list[int] = chosen) -> dict[Key, int]:
                table = self.table(side)
                query = (
                    sa.select(table.c[key], self.row_digest(side, keys_only))
                    .where(
                        *self.where(
                            table, key_range, scoped=not keys_only, strict=strict, side=side
                        ),
                        bucket(table).in_(chosen),
                    )
                    .order_by(table.c[key])
                )
                with self.engine(side).connect() as conn:
                    return {
                        self.plain_key(side, row[:1]): unsigned64(row[1])
                        for row in conn.execute(query)
                    }

            source_rows, target_rows, _ = self.parallel(rows)
            found.extend(diff_rows(source_rows, target_rows))
        return found

    def key_at(
        self,
        side: Side,
        key_range: KeyRange,
        offset: int,
        *,
        scoped: bool = False,
        strict: bool = False,
    ) -> Key | None:
        """The key `offset` rows into the range (0 = its first), or None past its end."""
        found = self.keys_at(side, key_range, [offset], scoped=scoped, strict=strict)
        return found[0] if found else None

    def keys_at(
        self,
        side: Side,
        key_range: KeyRange,
        offsets: Sequence[int],
        *,
        scoped: bool = False,
        strict: bool = False,
    ) -> list[Key]:
        """The keys at ascending `offsets` into the range, up to its end. Each is read from
        the one before it, so that the range's index is walked once, not once per offset."""
        table = self.table(side)
        keys = self.keys(table, side)
        points: list[Key] = []
        lower, last = key_range.lower, -1
        with self.engine(side).connect() as conn:
            for offset in offsets:
                clauses = self.where(
                    table, KeyRange(lower, key_range.upper), scoped=scoped, strict=strict, side=side
                )
                query = sa.select(*keys).where(*clauses).order_by(*keys)
                row = conn.execute(query.limit(1).offset(offset - last - 1)).first()
                if row is None:
                    break
                lower, last = self.plain_key(side, row), offset
                points.append(lower)
        return points

    def key_list(self, side: Side, key_range: KeyRange, limit: int | None = None) -> list[Key]:
        table = self.table(side)
        keys = self.keys(table, side)
        # deletes concern every row, whatever its modifier
        clauses = self.where(table, key_range, scoped=False, side=side)
        query = sa.select(*keys).where(*clauses).order_by(*keys)
        if limit is not None:
            query = query.limit(limit)
        with self.engine(side).connect() as conn:
            return [self.plain_key(side, row) for row in conn.execute(query)]

    @property
    def dialect(self) -> sa.Dialect:
        """The dialect that quotes the digest's identifiers: the driver-less one, since the
        statement's compiler escapes `%` itself (PyMySQL's quoting would double it twice)."""
        return PLAIN_MYSQL

    def key_dict(self, key: Key) -> dict[str, Any]:
        return {name: jsonable(value) for name, value in zip(self.key_columns, key, strict=True)}


def _secrets(*engines: sa.Engine) -> list[str]:
    return [e.url.password for e in engines if e.url.password]


def check_failure(check: str, error: BaseException, secrets: Sequence[str]) -> CheckOutcome:
    if isinstance(error, CheckError):
        message = str(error)
    elif isinstance(error, sa.exc.SQLAlchemyError):
        message = f"database error: {getattr(error, 'orig', None) or error}"
    else:
        message = f"{type(error).__name__}: {error}"
    return CheckOutcome(check, False, redact(message, secrets), transient_error=is_transient(error))


# -- the checks ------------------------------------------------------------------------------
def source_row_count(
    cfg: TableConfig, source_engine: sa.Engine, *, count: bool = True
) -> CheckOutcome:
    """The source table answers: its row count and, for incremental tables, its max modifier.

    `count` False skips the COUNT(*), a scan of the whole table: a sync takes the count from
    its verification afterwards (`with_counted_rows`); the max modifier is read through the
    modifier's index."""
    started = time.perf_counter()
    database = source_engine.url.database or ""
    try:
        with source_engine.connect() as conn:
            shape = read_table_shape(conn, database, cfg.table)
            if shape is None:
                raise CheckError(
                    f"table {cfg.table!r} does not exist in the source database {database!r}"
                )
            table = sa.table(cfg.table, *(sa.column(c) for c in shape.column_names))
            figures: dict[str, Any] = {"rows": sa.func.count()} if count else {}
            if cfg.modifier:
                if cfg.modifier not in shape.column_names:
                    raise CheckError(
                        f"table {cfg.table!r}: modifier column {cfg.modifier!r} not found in "
                        "the source"
                    )
                data_type = shape.column(cfg.modifier).data_type
                figures["max"] = modifier_maximum(table.c[cfg.modifier], data_type)
            # without a figure the table exists (its shape was read): nothing to query
            row = (
                conn.execute(
                    sa.select(*(f.label(name) for name, f in figures.items())).select_from(table)
                )
                .one()
                ._mapping
                if figures
                else {}
            )
    except Exception as error:
        return check_failure(SOURCE_ROW_COUNT, error, _secrets(source_engine))
    metadata: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 3)}
    if count:
        metadata["source_rows"] = rows = int(row["rows"])
        text = f"{rows:,} rows in source table {cfg.table!r}"
    else:
        text = f"source table {cfg.table!r} answers"
    if cfg.modifier:
        metadata["max_modifier"] = row["max"] or ""
        text += f", max {cfg.modifier} {cursor_text(data_type, row['max'])}"
    return CheckOutcome(SOURCE_ROW_COUNT, True, text, metadata)


def with_counted_rows(table: str, outcome: CheckOutcome, counted: CheckOutcome) -> CheckOutcome:
    """`source_row_count` of `table` taken without its COUNT(*), completed with the source
    rows that `row_count_match` (`counted`) counted in the synced scope."""
    rows = counted.metadata.get("source_rows")
    if not outcome.passed or "source_rows" in outcome.metadata or rows is None:
        return outcome
    scoped = " (the synced rows)" if "cursor" in counted.metadata else ""
    description = outcome.description.replace(
        f"source table {table!r} answers", f"{rows:,} rows{scoped} in source table {table!r}"
    )
    return dataclasses.replace(
        outcome, description=description, metadata={"source_rows": rows, **outcome.metadata}
    )


def row_count_match(pair: TablePair) -> CheckOutcome:
    """COUNT(*) of both sides (incremental: within the synced cursor)."""
    started = time.perf_counter()
    source, target, _ = _in_parallel(lambda: pair.count("source"), lambda: pair.count("target"))
    metadata: dict[str, Any] = {
        "source_rows": source,
        "target_rows": target,
        "difference": target - source,
    }
    scope = pair.scope_text
    passed = source == target
    text = f"source {source:,} rows, target {target:,} rows{scope}"
    if not passed and pair.scoped:
        # Only rows at the cursor differ? They are re-read by the next sync.
        source_before, target_before, _ = _in_parallel(
            lambda: pair.count("source", strict=True), lambda: pair.count("target", strict=True)
        )
        if source_before == target_before:
            passed = True
            metadata["rows_pending_at_cursor"] = abs(target - source)
            text += (
                f"; the {abs(target - source):,} rows of difference all have {pair.cfg.modifier}"
                " equal to the cursor and are re-read by the next sync"
            )
    if not passed:
        text += f": difference {target - source:+,}"
        if target > source and not pair.cfg.detect_deletes:
            text += f" (more rows in the target: {DELETES_HINT})"
    if pair.scoped:
        metadata["cursor"] = pair.cursor
    metadata["seconds"] = round(time.perf_counter() - started, 3)
    return CheckOutcome(ROW_COUNT_MATCH, passed, text, metadata)


@dataclass
class ChecksumScan:
    """What a chunked comparison saw."""

    chunks: int = 0
    rows: int = 0
    chunk_rows: list[int] = field(default_factory=list)
    mismatched: list[tuple[KeyRange, Digest, Digest]] = field(default_factory=list)
    pending: int = 0


def scan_chunks(
    pair: TablePair,
    first_chunk_rows: int = FIRST_CHUNK_ROWS,
    max_chunk_rows: int = MAX_CHUNK_ROWS,
    *,
    keys_only: bool = False,
) -> ChecksumScan:
    """Compare digests of consecutive key ranges of the source; the first range starts below
    every key and the last ends above every key, so target rows outside the source's keys are
    compared too."""
    scan = ChecksumScan()
    chunk_rows = first_chunk_rows
    lower: Key | None = None
    # Without a primary key in the source, ranges would need a sort each: compare in one go.
    chunked = bool(pair.shape.primary_key)
    while True:
        upper = pair.key_at("source", KeyRange(lower), chunk_rows - 1) if chunked else None
        key_range = KeyRange(lower, upper)
        source, target, seconds = pair.digests(key_range, keys_only=keys_only)
        scan.chunks += 1
        scan.rows += source.rows
        scan.chunk_rows.append(chunk_rows)
        if source != target:
            scan.mismatched.append((key_range, source, target))
        if upper is None:
            return scan
        chunk_rows = next_chunk_rows(chunk_rows, seconds, maximum=max_chunk_rows)
        lower = upper


def narrow(
    pair: TablePair,
    key_range: KeyRange,
    source: Digest,
    target: Digest,
    *,
    strict: bool,
    found: RowDiff,
    limit: int | None = SAMPLE_KEYS,
    keys_only: bool = False,
    leaf_rows: int = ROW_DIFF_ROWS,
) -> bool:
    """Split a differing range until its parts are small enough to compare row digests.

    Adds the differing keys to `found`; stops once it holds `limit` of them. Returns whether
    the whole range was narrowed (every differing row found). `keys_only`: compare the key
    sets of all rows (for deletes) rather than the synced rows' contents. Where most parts of
    a split differ (dense drift), their parts up to `DENSE_LEAF_ROWS` are compared row by row
    without splitting further."""
    if max(source.rows, target.rows) <= leaf_rows:
        found.extend(pair.row_diff(key_range, strict=strict, keys_only=keys_only))
        return True
    # Split at keys of the side holding more rows, so that every part holds fewer.
    side: Side = "source" if source.rows >= target.rows else "target"
    rows = max(source.rows, target.rows)
    offsets = [rows * i // SPLIT_PARTS for i in range(1, SPLIT_PARTS)]
    points = pair.keys_at(side, key_range, offsets, scoped=not keys_only, strict=strict)
    parts = key_range.split(points)

    def descend(part: KeyRange, digests: tuple[Digest, Digest]) -> bool:
        return narrow(
            pair,
            part,
            *digests,
            strict=strict,
            found=found,
            limit=limit,
            keys_only=keys_only,
            leaf_rows=leaf_rows,
        )

    differing: list[tuple[KeyRange, tuple[Digest, Digest]]] = []
    for part in parts:
        if limit is not None and found.total >= limit:
            return False
        part_source, part_target, _ = pair.digests(part, strict=strict, keys_only=keys_only)
        if part_source == part_target:
            continue
        if limit is None:
            differing.append((part, (part_source, part_target)))
        elif not descend(part, (part_source, part_target)):
            return False  # a sample: each differing part looked into at once, until `limit`
    dense = 2 * len(differing) > len(parts)
    for part, digests in differing:
        if dense and max(digests[0].rows, digests[1].rows) <= DENSE_LEAF_ROWS:
            found.extend(pair.dense_row_diff(part, strict=strict, keys_only=keys_only))
        else:
            descend(part, digests)
    return True


def interleave(lists: Sequence[Sequence[T]], limit: int) -> list[T]:
    """Up to `limit` items taking one from each list in turn (a sample from every range)."""
    out: list[T] = []
    for i in range(max((len(items) for items in lists), default=0)):
        out += [items[i] for items in lists if i < len(items)]
    return out[:limit]


def checksum_match(
    pair: TablePair,
    first_chunk_rows: int = FIRST_CHUNK_ROWS,
    max_chunk_rows: int = MAX_CHUNK_ROWS,
) -> CheckOutcome:
    """Chunked COUNT(*) + BIT_XOR(CRC32(row)) comparison, narrowed to keys on a mismatch."""
    started = time.perf_counter()
    scan = scan_chunks(pair, first_chunk_rows, max_chunk_rows)
    compare_seconds = time.perf_counter() - started
    differing: list[tuple[KeyRange, Digest, Digest]] = []
    for key_range, source, target in scan.mismatched:
        if pair.scoped:
            source, target, _ = pair.digests(key_range, strict=True)
            if source == target:
                scan.pending += 1  # only rows at the cursor differ: the next sync re-reads them
                continue
        differing.append((key_range, source, target))
    # Narrow each differing range (a few keys from each rather than many from the first).
    narrowed = differing[:MAX_NARROWED_CHUNKS]
    per_range = max(3, -(-SAMPLE_KEYS // max(1, len(narrowed))))
    found, samples, complete = RowDiff(), [], len(narrowed) == len(differing)
    for key_range, source, target in narrowed:
        in_range = RowDiff()
        complete &= narrow(
            pair, key_range, source, target, strict=pair.scoped, found=in_range, limit=per_range
        )
        found.extend(in_range)
        samples.append(in_range.sample(per_range))
    seconds = time.perf_counter() - started
    metadata: dict[str, Any] = {
        "chunks": scan.chunks,
        "rows_compared": scan.rows,
        "mismatched_chunks": len(differing),
        "chunk_rows_max": max(scan.chunk_rows),
        "compare_seconds": round(compare_seconds, 3),
        "seconds": round(seconds, 3),
        "rows_per_second": round(scan.rows / compare_seconds, 1) if compare_seconds > 0 else 0.0,
        # text, not a number: a constant the UI would plot run after run
        "columns_hashed": ", ".join(c.name for c in pair.shape.copied_columns),
    }
    if pair.scoped:
        metadata["cursor"] = pair.cursor
        metadata["chunks_pending_at_cursor"] = scan.pending
    scope = pair.scope_text
    if not differing:
        text = f"{scan.rows:,} rows{scope} agree in {scan.chunks:,} key ranges"
        if scan.pending:
            text += (
                f"; {scan.pending} ranges differ only in rows at the cursor, which the next "
                "sync re-reads"
            )
        return CheckOutcome(CHECKSUM_MATCH, True, text, metadata)
    metadata.update(
        {
            "rows_missing_in_target": len(found.missing_in_target),
            "rows_extra_in_target": len(found.extra_in_target),
            "rows_changed": len(found.changed),
            "differing_keys": [
                {"difference": kind, "key": pair.key_dict(key)}
                for kind, key in interleave(samples, SAMPLE_KEYS)
            ],
            "all_differences_listed": complete,
            "differing_ranges": [
                {
                    "after": None if r.lower is None else pair.key_dict(r.lower),
                    "up_to": None if r.upper is None else pair.key_dict(r.upper),
                    "source_rows": s.rows,
                    "target_rows": t.rows,
                }
                for r, s, t in differing[:10]
            ],
        }
    )
    parts = [
        f"{len(found.missing_in_target)} missing in the target" if found.missing_in_target else "",
        f"{len(found.extra_in_target)} extra in the target" if found.extra_in_target else "",
        f"{len(found.changed)} changed" if found.changed else "",
    ]
    listed = ", ".join(p for p in parts if p) or "no single row isolated"
    text = (
        f"{len(differing)} of {scan.chunks:,} key ranges differ{scope}; rows found: {listed}"
        + ("" if complete else " (a sample: more rows may differ)")
        + "; see differing_keys"
    )
    if found.extra_in_target and not pair.cfg.detect_deletes:
        text += f" ({DELETES_HINT})"
    return CheckOutcome(CHECKSUM_MATCH, False, text, metadata)


def table_checks(
    cfg: TableConfig,
    source_engine: sa.Engine,
    target_engine: sa.Engine,
    window: ModifierWindow | None = None,
) -> list[CheckOutcome]:
    """The post-sync checks of one table (`row_count_match`, and `checksum_match` unless
    disabled), against the databases as they are now; never raises."""
    names = [ROW_COUNT_MATCH] + ([CHECKSUM_MATCH] if cfg.checksum else [])
    secrets = _secrets(source_engine, target_engine)
    try:
        pair = TablePair.open(cfg, source_engine, target_engine, window)
    except Exception as error:
        return [check_failure(name, error, secrets) for name in names]
    outcomes = []
    for name, run in ((ROW_COUNT_MATCH, row_count_match), (CHECKSUM_MATCH, checksum_match)):
        if name in names:
            try:
                outcomes.append(run(pair))
            except Exception as error:
                outcomes.append(check_failure(name, error, secrets))
    return outcomes
