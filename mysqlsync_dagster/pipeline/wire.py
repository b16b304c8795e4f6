"""The wire format between source and target: MySQL's own text form of every value.

Each source column is selected as text the target parses back to the identical value, so no
value passes through a lossy Python or Arrow type on its way:

| source type                         | selected as                         | loaded with             |
|-------------------------------------|-------------------------------------|-------------------------|
| BINARY, VARBINARY, BLOBs, spatial   | HEX(col) (spatial: internal format) | UNHEX(@v)               |
| BIT(n)                              | CAST(col AS UNSIGNED)               | CAST(@v AS UNSIGNED)    |
| FLOAT                               | CAST(CAST(col AS DOUBLE) AS CHAR)   | the text (exact float)  |
| TIMESTAMP                           | UNIX_TIMESTAMP(col) (time-zone free)| FROM_UNIXTIME(@v), UTC  |
| everything else                     | CAST(col AS CHAR) (utf8mb4)         | the text                |

Zero dates ('0000-00-00', a zero month or day, a zero TIMESTAMP) are the one conversion: they
become NULL, because a target in strict mode cannot hold them, and each is counted. For a
PostgreSQL target a date in the year 0 does too (its calendar has none). A NOT NULL column is
made nullable in the target when its first zero date comes (`batch_values`, the loaders'
`allow_nulls`; `catalog.keeps_nulls`).

A DuckDB target, which takes Arrow's types as they are, reads some columns in their own type
instead of as text (`targets/duckdb/types.py`, `duckdb_wire_kind`): connectorx builds integer,
floating-point and date-time arrays from MySQL's binary protocol exactly, with less work on both
sides than text (1M `orders` rows: 2.6-2.9 s as text, 1.6-1.7 s so).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa

from mysqlsync_dagster.catalog import BINARY_TYPES, DATE_TYPES, SPATIAL_TYPES, Column
from mysqlsync_dagster.db import quote_identifier
from mysqlsync_dagster.errors import LoadError

if TYPE_CHECKING:  # imported where rows move: a run that reads none never imports pyarrow
    import pyarrow as pa

    from mysqlsync_dagster.targets.base import LoadStats

# "native": the value in its own type (an integer, a float, a YEAR); "native_date": a NOT NULL
# DATE or DATETIME in its own type, its zero dates NULLed by the SELECT (so every NULL is one)
WireKind = Literal["text", "hex", "bit", "float", "timestamp", "date", "native", "native_date"]
NATIVE_KINDS = ("native", "native_date")

# A date/datetime whose year, month or day part is all zeros in a place a real date cannot be.
_ZERO_DATE = r"^(0000-00-00|\d{4}-00-\d{2}|\d{4}-\d{2}-00)"
# ... and, for an analytics target, the year 0 too: PostgreSQL's calendar has no year 0
NO_SUCH_DATE = r"^(0000-|\d{4}-00-\d{2}|\d{4}-\d{2}-00)"


def wire_kind(column: Column) -> WireKind:
    data_type = column.data_type
    if data_type in BINARY_TYPES or data_type in SPATIAL_TYPES:
        return "hex"
    if data_type == "bit":
        return "bit"
    if data_type == "float":
        return "float"
    if data_type == "timestamp":
        return "timestamp"
    if data_type in DATE_TYPES:
        return "date"
    return "text"


@dataclass(frozen=True)
class WireColumn:
    column: Column
    kind: WireKind
    # the target's kind: a PostgreSQL or DuckDB target reads each column as the text it parses
    # (`targets/*/types.py`); its date-times are text, their zero dates found as such
    target: str = "mysql"

    @classmethod
    def of(cls, column: Column, target: str = "mysql", *, native: bool = True) -> WireColumn:
        """`native`: a DuckDB target may read columns in their own type (connectorx)."""
        kind = wire_kind(column)
        if target == "duckdb" and native:
            from mysqlsync_dagster.targets.duckdb.types import duckdb_wire_kind

            kind = duckdb_wire_kind(column)
        elif target != "mysql":
            kind = "date" if kind in ("date", "timestamp") else "text"
        return cls(column, kind, target)

    def select_sql(self, quoted: str) -> str:
        """SQL expression that reads the column as wire text (identifier already quoted)."""
        if self.target == "postgresql":
            from mysqlsync_dagster.targets.postgres.types import pg_wire_sql

            return pg_wire_sql(self.column, quoted)
        if self.target == "duckdb":
            from mysqlsync_dagster.targets.duckdb.types import duckdb_wire_sql

            return duckdb_wire_sql(self.column, quoted, native=self.kind in NATIVE_KINDS)
        return {
            "hex": f"HEX({quoted})",
            "bit": f"CAST({quoted} AS UNSIGNED)",
            "float": f"CAST(CAST({quoted} AS DOUBLE) AS CHAR)",
            "timestamp": f"CAST(UNIX_TIMESTAMP({quoted}) AS CHAR)",
        }.get(self.kind, f"CAST({quoted} AS CHAR)")

    def select_expression(self) -> sa.ColumnElement[str]:
        return sa.literal_column(self.select_sql(quote_identifier(self.column.name))).label(
            self.column.name
        )

    def load_sql(self, variable: str) -> str | None:
        """SET expression turning the loaded text `variable` into the value; None: load as is."""
        return {
            "hex": f"UNHEX({variable})",
            "bit": f"CAST({variable} AS UNSIGNED)",
            "timestamp": f"FROM_UNIXTIME({variable})",
        }.get(self.kind)


def wire_columns(columns: list[Column]) -> list[WireColumn]:
    return [WireColumn.of(c) for c in columns]


def parquet_batches(
    path: str | Path, wire: list[WireColumn], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """The batches of a staged Parquet file of wire columns (`LoadError` if its columns are
    not the run's)."""
    import pyarrow.parquet as pq

    # pre_buffer keeps every row group read so far cached until the reader is closed:
    # peak memory would grow with the file (measured: +170 MB at 3M rows, none without)
    parquet = pq.ParquetFile(path, pre_buffer=False)
    names = parquet.schema_arrow.names
    if len(names) != len(wire):
        raise LoadError(
            f"{path}: expected the {len(wire)} source columns "
            f"{[w.column.name for w in wire]}, found columns {names}"
        )
    yield from parquet.iter_batches(batch_size=batch_size)


def batch_values(
    batch: pa.RecordBatch,
    wire: list[WireColumn],
    stats: LoadStats,
    table: str,
    allow_nulls: Callable[[str], bool],
) -> list[pa.Array]:
    """The batch's columns as a loader takes them (`wire_values`), zero dates counted in
    `stats`. The first zero date of a NOT NULL column in this run (now a NULL) has
    `allow_nulls(column)` make the column nullable where the run writes, before the batch is
    written; when it was NOT NULL there (True), the run's warnings say so."""
    arrays = []
    for position, column in enumerate(wire):
        values, zeros = wire_values(batch.column(position), column)
        stats.zero_dates += zeros
        name = column.column.name
        if zeros and not column.column.nullable and name not in stats.nullable:
            stats.nullable.add(name)
            if allow_nulls(name):
                stats.warnings.append(
                    f"{table}: column {name!r} is NOT NULL in the source and a zero date of it"
                    " is copied as NULL: the target's column is now nullable, and stays so"
                )
        arrays.append(values)
    return arrays


def wire_values(array: pa.Array | pa.ChunkedArray, wire: WireColumn) -> tuple[pa.Array, int]:
    """One extracted column as its loader takes it, the zero-date rule applied: (array, zeros).
    Text, or a native kind's own values (a string array too, if a backend delivered one)."""
    if wire.kind == "native":
        return array, 0
    if wire.kind == "native_date":  # a NOT NULL column: each NULL is a zero date the SELECT hid
        return array, array.null_count
    import pyarrow as pa
    import pyarrow.compute as pc

    text = array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
    if wire.kind == "date":
        # "-00" can only be a zero month or day in 'YYYY-MM-DD[ hh:mm:ss]': a plain substring
        # scan (3-4x faster than the pattern) rules out the common case of no zero date at all
        year_zero = wire.target != "mysql" and pc.any(pc.starts_with(text, "0000-")).as_py()
        if not year_zero and not pc.any(pc.match_substring(text, "-00")).as_py():
            return text, 0
        pattern = _ZERO_DATE if wire.target == "mysql" else NO_SUCH_DATE
        zero = pc.fill_null(pc.match_substring_regex(text, pattern), False)
    elif wire.kind == "timestamp":
        zero = pc.fill_null(pc.match_substring_regex(text, r"^0(\.0*)?$"), False)
    else:
        return text, 0
    zeros = pc.sum(zero).as_py() or 0
    if zeros:
        text = pc.if_else(zero, pa.scalar(None, pa.string()), text)
    return text, zeros
