"""The DuckDB type of every MySQL/MariaDB column, and the text path its values travel by.

Every value is exact in DuckDB, under one mapping (`duckdb_type`):

| MySQL/MariaDB                   | DuckDB                | rule                                 |
|---------------------------------|-----------------------|--------------------------------------|
| TINYINT, SMALLINT               | TINYINT, SMALLINT     | TINYINT(1) stays a number            |
| MEDIUMINT, INT, BIGINT          | INTEGER, INTEGER, BIGINT |                                   |
| the same UNSIGNED               | UTINYINT ... UBIGINT  | MEDIUMINT UNSIGNED -> UINTEGER       |
| DECIMAL(p,s), p <= 38           | DECIMAL(p,s)          | UNSIGNED dropped (values stay >= 0)  |
| DECIMAL(p,s), p > 38            | VARCHAR               | MySQL's exact text, all s decimals   |
| FLOAT, DOUBLE                   | FLOAT, DOUBLE         | the same IEEE value, bit for bit     |
| BIT(n)                          | UBIGINT               | the bits as an unsigned number       |
| YEAR                            | USMALLINT             | 0 or 1901..2155                      |
| DATE                            | DATE                  | zero dates -> NULL (counted)         |
| DATETIME(n)                     | TIMESTAMP             | wall clock in microseconds, unshifted |
| TIMESTAMP(n)                    | TIMESTAMPTZ           | the instant (zero -> NULL)           |
| TIME(n)                         | INTERVAL              | signed, up to +-838:59:59.999999     |
| CHAR, VARCHAR, TEXTs, ENUM, SET | VARCHAR               | utf8mb4 text (latin1 converted)      |
| JSON (MySQL; MariaDB: LONGTEXT) | JSON                  | text verbatim (DuckDB validates it)  |
| BINARY, VARBINARY, BLOBs        | BLOB                  | the bytes                            |
| spatial types                   | BLOB                  | MySQL's internal bytes: SRID + WKB   |
| UUID (MariaDB)                  | UUID                  |                                      |
| INET4, INET6 (MariaDB)          | VARCHAR               | MariaDB's text form                  |

Why DECIMAL(p > 38) is VARCHAR: DuckDB's DECIMAL stops at 38 digits and refuses a longer
value (`'9...9.9...9'::DECIMAL(38,3)` is a conversion error, and a shorter scale would round
silently: `'1.235'::DECIMAL(10,2)` is 1.24), and no wider exact numeric exists (HUGEINT holds
39 digits at most, not 65). The text keeps every digit; a dbt model casts it to the
`DECIMAL(38, s)` or DOUBLE it can live with, knowingly.

How values travel: each column is selected on MySQL (session time zone '+00:00', utf8mb4) by
`duckdb_wire_sql`, in its own type where connectorx reads that type exactly (`duckdb_wire_kind`:
"native") and as text otherwise, and turned into the typed value in DuckDB by `duckdb_load_sql`:

| source type              | selected as                                  | loaded with             |
|--------------------------|----------------------------------------------|-------------------------|
| integers, YEAR           | col (int8 ... int64, uint8 ... uint64)       | CAST(x AS <type>)       |
| FLOAT, DOUBLE            | col (IEEE float32, float64)                  | CAST(x AS <type>)       |
| DATE, DATETIME NOT NULL  | IF(TO_DAYS(col) >= 366, col, NULL)           | CAST(x AS <type>)       |
| DATE, DATETIME NULL      | CAST(col AS CHAR)                            | CAST(x AS <type>)       |
| binary and spatial       | HEX(col)                                     | unhex(x)                |
| BIT(n)                   | CAST(CAST(col AS UNSIGNED) AS CHAR)          | CAST(x AS UBIGINT)      |
| TIMESTAMP                | its UTC text + '+00' (any session time zone) | CAST(x AS TIMESTAMPTZ)  |
| character types          | CONVERT(col USING utf8mb4)                   | x (JSON: CAST(x AS JSON)) |
| DECIMAL, TIME, the rest  | CAST(col AS CHAR)                            | CAST(x AS <type>)       |

connectorx reads MySQL's binary protocol into Arrow: every integer width signed and unsigned
(BIGINT UNSIGNED max included), floats bit for bit, DATE as date32 and DATETIME(0..6) as
timestamp[us] from 0001-01-01 to 9999-12-31. It cannot represent a zero date (it panics), so
the SELECT turns a date before 0001-01-01 (a zero date, a zero month or day, the year 0: for
those TO_DAYS is NULL or below 366) into NULL; for a NOT NULL column each NULL is such a date,
counted as the zero-date rule counts. A nullable DATE/DATETIME column travels as text, its zero
dates found in the text (a NULL of its own is no zero date). DECIMAL travels as text: connectorx
reads it through a 28-digit decimal type and fails on longer values.

MariaDB prints a DOUBLE as its shortest round-trip decimal and DuckDB parses decimal text
correctly rounded, so the text of a double is exact; a FLOAT goes through its (exact) DOUBLE
value, whose text rounds back to the same float. DuckDB reads TIME text such as '-838:59:59'
and '-00:00:00.000001' as exactly that many (negative) microseconds.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mysqlsync_dagster.catalog import BINARY_TYPES, SPATIAL_TYPES, TEXT_TYPES, Column
from mysqlsync_dagster.errors import SchemaError
from mysqlsync_dagster.targets.postgres.types import utc_timestamp_sql

if TYPE_CHECKING:
    from mysqlsync_dagster.pipeline.wire import WireKind

# DuckDB's DECIMAL holds at most 38 digits.
MAX_DECIMAL_PRECISION = 38

_SIGNED_INTEGERS = {
    "tinyint": "TINYINT",
    "smallint": "SMALLINT",
    "mediumint": "INTEGER",
    "int": "INTEGER",
    "integer": "INTEGER",
    "bigint": "BIGINT",
}
_UNSIGNED_INTEGERS = {
    "tinyint": "UTINYINT",
    "smallint": "USMALLINT",
    "mediumint": "UINTEGER",
    "int": "UINTEGER",
    "integer": "UINTEGER",
    "bigint": "UBIGINT",
}
CHARACTER_TYPES = TEXT_TYPES | {"json"}
# Fixed mappings of the remaining types (integers, DECIMAL and the character types are above).
_FIXED = {
    "float": "FLOAT",
    "double": "DOUBLE",
    "real": "DOUBLE",
    "bit": "UBIGINT",
    "year": "USMALLINT",
    "date": "DATE",
    "datetime": "TIMESTAMP",
    "timestamp": "TIMESTAMPTZ",
    "time": "INTERVAL",
    "uuid": "UUID",
    "inet4": "VARCHAR",
    "inet6": "VARCHAR",
}
_PRECISION_SCALE = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def decimal_precision_scale(column: Column) -> tuple[int, int]:
    """(p, s) of a DECIMAL column from its column type ("decimal(65,30) unsigned")."""
    found = _PRECISION_SCALE.search(column.column_type)
    if found is None:
        return 10, 0  # DECIMAL without arguments is DECIMAL(10,0)
    return int(found.group(1)), int(found.group(2) or 0)


def _is_unsigned(column: Column) -> bool:
    return "unsigned" in column.column_type.lower()


def duckdb_type(column: Column) -> str:
    """The DuckDB type that holds every value of `column` exactly (see the module's table)."""
    data_type = column.data_type.lower()
    if data_type in _SIGNED_INTEGERS:
        table = _UNSIGNED_INTEGERS if _is_unsigned(column) else _SIGNED_INTEGERS
        return table[data_type]
    if data_type in ("decimal", "numeric"):
        precision, scale = decimal_precision_scale(column)
        if precision > MAX_DECIMAL_PRECISION:
            return "VARCHAR"
        return f"DECIMAL({precision},{scale})"
    if data_type == "json":
        return "JSON"
    if data_type in CHARACTER_TYPES:
        return "VARCHAR"
    if data_type in BINARY_TYPES or data_type in SPATIAL_TYPES:
        return "BLOB"
    if data_type in _FIXED:
        return _FIXED[data_type]
    raise SchemaError(
        f"column {column.name!r} has type {column.column_type!r}, which has no DuckDB mapping"
        " yet; leave the column out of the source table's copy or ask for a mapping"
    )


# Read in their own type (connectorx's Arrow arrays are exact for these; see the module doc).
NATIVE_TYPES = frozenset(_SIGNED_INTEGERS) | {"float", "double", "real", "year"}
NATIVE_DATE_TYPES = frozenset({"date", "datetime"})


def duckdb_wire_kind(column: Column) -> WireKind:
    """How `column` travels to DuckDB (`pipeline/wire.py`'s kinds): "native" in its own type,
    "native_date" a NOT NULL DATE/DATETIME in its own type, "date" a nullable one as text,
    "text" everything else (TIMESTAMP too: its UTC text)."""
    data_type = column.data_type.lower()
    if data_type in NATIVE_TYPES:
        return "native"
    if data_type in NATIVE_DATE_TYPES:
        return "date" if column.nullable else "native_date"
    return "date" if data_type == "timestamp" else "text"


def duckdb_wire_sql(column: Column, quoted: str, *, native: bool = True) -> str:
    """The MySQL SELECT expression reading `column` (identifier `quoted`) as what
    `duckdb_load_sql` turns into exactly its value: its own type or text (`duckdb_wire_kind`;
    text only unless `native`). Zero dates become NULL, counted (`wire.wire_values`); any
    session time zone."""
    target = duckdb_type(column)  # raises on an unknown type, before any data moves
    data_type = column.data_type.lower()
    kind = duckdb_wire_kind(column) if native else "text"
    if kind == "native":
        return quoted
    if kind == "native_date":
        return f"IF(TO_DAYS({quoted}) >= 366, {quoted}, NULL)"
    if target == "BLOB":
        return f"HEX({quoted})"
    if data_type == "bit":
        return f"CAST(CAST({quoted} AS UNSIGNED) AS CHAR)"
    if data_type in ("float", "double"):  # (DOUBLE too: ZEROFILL's padding dropped)
        return f"CAST(CAST({quoted} AS DOUBLE) AS CHAR)"
    if data_type == "timestamp":
        return utc_timestamp_sql(quoted)
    if data_type in CHARACTER_TYPES:
        return f"CONVERT({quoted} USING utf8mb4)"
    return f"CAST({quoted} AS CHAR)"


def duckdb_load_sql(column: Column, quoted_text_expr: str) -> str:
    """The DuckDB expression turning the wire value `quoted_text_expr` (text, or the value in
    its own type) into the typed value."""
    target = duckdb_type(column)
    if target == "BLOB":
        return f"unhex({quoted_text_expr})"
    if target == "VARCHAR":
        return quoted_text_expr
    return f"CAST({quoted_text_expr} AS {target})"
