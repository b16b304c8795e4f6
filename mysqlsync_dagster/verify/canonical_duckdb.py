"""A 64-bit row digest that MySQL/MariaDB and DuckDB compute identically, for the checks.

The checks compare a source range with its DuckDB copy by `COUNT(*)` and the XOR of row digests
on each side (`BIT_XOR` in MySQL, `bit_xor` in DuckDB), then compare per-key digests to narrow
a difference down. The MySQL side is the one the PostgreSQL checks use
(`verify/canonical.mysql_row_digest_sql`), so a source is hashed one way whatever the target;
this module is DuckDB's side. Each value becomes a canonical text:

| source type (DuckDB type)               | canonical text                                      |
|-----------------------------------------|-----------------------------------------------------|
| integers (TINYINT ... UBIGINT)          | the decimal integer: '-128', '18446744073709551615' |
| YEAR (USMALLINT)                        | the decimal integer: '0' (not MySQL's '0000')       |
| DECIMAL(p,s) (DECIMAL(p,s) or VARCHAR)  | the decimal with exactly s fraction digits          |
| FLOAT, DOUBLE (FLOAT, DOUBLE)           | the IEEE-754 binary64 bits (FLOAT widened) as 16    |
|                                         | lowercase hex digits: 0.1 -> '3fb999999999999a'     |
| BIT(n) (UBIGINT)                        | n binary digits: '00101'                            |
| DATE (DATE)                             | 'YYYY-MM-DD'                                        |
| DATETIME(n) (TIMESTAMP)                 | 'YYYY-MM-DD hh:mm:ss' and n fraction digits         |
| TIMESTAMP(n) (TIMESTAMPTZ)              | the instant: microseconds since 1970-01-01 UTC      |
| TIME(n) (INTERVAL)                      | the signed length in microseconds: '-1'             |
| character types, JSON, UUID, INET       | UTF-8 byte length, ':', the text (latin1 converted) |
| binary and spatial (BLOB)               | MD5 of the raw bytes (spatial: SRID + WKB)          |
| NULL, zero dates and the year 0 (NULL)  | 'N'                                                 |

The row digest is MD5 of the column texts joined with ',' (no canonical text contains ',' or is
'N', so the join is unambiguous); its first 16 hex digits, read as an unsigned 64-bit integer
(MySQL: CONV(..., 16, 10) AS UNSIGNED; DuckDB: '0x...' cast to UBIGINT), are the digest.

Doubles are hashed by their bits, never their text: MariaDB prints '1e15' where DuckDB prints
'1000000000000000.0'. Neither engine exposes the bits, so both compute them the same way in
double arithmetic: for a normal |x|, the exponent e = FLOOR(LOG2(|x|)), corrected by one where
LOG2 rounds across a power of two (seen from the mantissa's range), and the mantissa
m = |x| / 2^(e - 52), an integer in [2^52, 2^53); a subnormal's mantissa is |x| / 2^-1074.
Dividing by a power of two is exact in IEEE arithmetic and 2^(e - 52) never exceeds 2^972, so
the bits are exact and nothing overflows; a zero's sign is ATAN2(x, -1)'s. DuckDB's side clamps
|x| to 2^-1022 inside the normal branch so that no row can reach LOG2(0) or an infinite cast.

"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from mysqlsync_dagster.catalog import BINARY_TYPES, SPATIAL_TYPES, Column
from mysqlsync_dagster.targets.duckdb.types import CHARACTER_TYPES, duckdb_type
from mysqlsync_dagster.targets.postgres.ddl import quote

Quote = Callable[[str], str]
CanonicalKind = Literal[
    "integer", "year", "decimal", "float", "double", "bit", "date", "datetime", "timestamp",
    "time", "text", "binary",
]  # fmt: skip

NULL_TEXT = "N"
_INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})
_TWO_52 = 2**52
_TWO_53 = 2**53
_SMALLEST_NORMAL = "2.2250738585072014e-308"


def canonical_kind(column: Column) -> CanonicalKind:
    """How a column's values are put into canonical text (see the module docstring)."""
    duckdb_type(column)  # raises SchemaError on a type the copy does not support either
    data_type = column.data_type.lower()
    if data_type in _INTEGER_TYPES:
        return "integer"
    if data_type in ("numeric", "decimal"):
        return "decimal"
    if data_type == "real":
        return "double"
    if data_type in BINARY_TYPES or data_type in SPATIAL_TYPES:
        return "binary"
    if data_type in CHARACTER_TYPES or data_type in ("uuid", "inet4", "inet6"):
        return "text"
    return data_type  # type: ignore[return-value]  # year, float, double, bit, dates, times


def _column_arguments(column: Column) -> int:
    """n of BIT(n) or DATETIME(n) (0 or 1 when the type has no argument)."""
    _, _, rest = column.column_type.partition("(")
    digits = rest.split(")")[0].split(",")[0].strip()
    return int(digits) if digits.isdigit() else 0


# -- DuckDB ----------------------------------------------------------------------------------
def _duckdb_double_bits(x: str) -> str:
    """DuckDB SQL for the same 16 hex digits as `_mysql_double_bits`, computed the same way."""
    magnitude = f"abs({x})"
    # LOG2 never sees 0 (greatest() skips NULL: hence the explicit NULL branch below)
    normal_magnitude = f"greatest({magnitude}, {_SMALLEST_NORMAL})"
    estimate = f"floor(log2({normal_magnitude}))"
    scaled = f"({normal_magnitude} / pow(2, {estimate} - 52))"
    correction = (
        f"CASE WHEN {scaled} >= {_TWO_53} THEN 1 WHEN {scaled} < {_TWO_52} THEN -1 ELSE 0 END"
    )
    exponent = f"({estimate} + {correction})"
    mantissa = f"CAST({normal_magnitude} / pow(2, {exponent} - 52) AS UBIGINT)"
    normal = (
        f"((CAST({exponent} + 1023 AS UBIGINT) << 52) | ({mantissa} - CAST({_TWO_52} AS UBIGINT)))"
    )
    subnormal = f"CAST({magnitude} / pow(2, -1074) AS UBIGINT)"
    sign = f"(CAST(CASE WHEN {x} < 0 THEN 1 ELSE 0 END AS UBIGINT) << 63)"
    zero_sign = f"(CAST(CASE WHEN atan2({x}, -1) < 0 THEN 1 ELSE 0 END AS UBIGINT) << 63)"
    bits = (
        f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = 0 THEN {zero_sign}"
        f" WHEN {magnitude} < {_SMALLEST_NORMAL} THEN {sign} | {subnormal}"
        f" ELSE {sign} | {normal} END"
    )
    return f"lower(lpad(hex({bits}), 16, '0'))"


def duckdb_canonical_sql(column: Column, quoted: str) -> str:
    """DuckDB SQL for the canonical text of a column typed by `duckdb_type(column)`."""
    kind = canonical_kind(column)
    if kind in ("integer", "year", "decimal", "date"):
        # DECIMAL prints all s decimals; DECIMAL(p > 38) is MySQL's text already
        return f"CAST({quoted} AS VARCHAR)"
    if kind in ("float", "double"):
        return _duckdb_double_bits(f"CAST({quoted} AS DOUBLE)")
    if kind == "bit":
        return f"lpad(bin({quoted}), {max(_column_arguments(column), 1)}, '0')"
    if kind == "datetime":
        digits = _column_arguments(column)
        if not digits:
            # whole seconds print as 'YYYY-MM-DD hh:mm:ss' (40% cheaper than strftime); a
            # fraction the copy should not hold prints too, and so differs
            return f"CAST({quoted} AS VARCHAR)"
        return f"left(strftime({quoted}, '%Y-%m-%d %H:%M:%S.%f'), {19 + digits + 1})"
    if kind in ("timestamp", "time"):
        return f"CAST(epoch_us({quoted}) AS VARCHAR)"
    if kind == "text":  # JSON and UUID print their text verbatim
        text = f"CAST({quoted} AS VARCHAR)"
        return f"CAST(strlen({text}) AS VARCHAR) || ':' || {text}"
    return f"md5({quoted})"  # BLOB: the raw bytes


def duckdb_row_digest_sql(columns: Sequence[Column], quote: Quote) -> str:
    """DuckDB SQL for the same row digest as `mysql_row_digest_sql`, a UBIGINT."""
    parts = ", ".join(
        f"coalesce({duckdb_canonical_sql(c, quote(c.name))}, '{NULL_TEXT}')" for c in columns
    )
    return f"CAST('0x' || left(md5(concat_ws(',', {parts})), 16) AS UBIGINT)"


# DuckDB quotes identifiers as PostgreSQL does
duckdb_quote = quote
