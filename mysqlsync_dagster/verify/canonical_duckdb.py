"""A 64-bit row digest that MySQL/MariaDB and DuckDB compute identically, for the checks.

The checks compare a source range with its DuckDB copy by `COUNT(*)` and the XOR of row digests
on each side (`BIT_XOR` in MySQL, `bit_xor` in DuckDB), then compare per-key digests to narrow
a difference down. Both sides build the digest from the same canonical text per column:

    digest(row) = first 16 hex digits of MD5(CONCAT_WS(',', md5(canon(col)) or 'N', ...))

read as an unsigned 64-bit integer (MySQL: CONV(..., 16, 10) as UNSIGNED; DuckDB: '0x...' cast
to UBIGINT). Each column contributes 32 hex digits or 'N' (NULL), so the joined text is never
ambiguous and NULL differs from ''.

Canonical text of one value, by kind (the same on both sides):

- integers, YEAR, BIT: the decimal number (YEAR 0 is '0', BIT(64) up to 18446744073709551615);
- DECIMAL: its text with all `s` decimals (MySQL's CAST AS CHAR, DuckDB's DECIMAL as VARCHAR;
  p > 38 is stored as MySQL's text in DuckDB and hashed as is);
- FLOAT, DOUBLE: never the printed number (MariaDB prints '1e15', DuckDB '1000000000000000.0'):
  an exact decomposition of the IEEE value computed in each engine's double arithmetic, see
  `_double_canonical`; a FLOAT is decomposed as its (exact) DOUBLE value;
- DATE: 'YYYY-MM-DD'; DATETIME: microseconds since 1970-01-01 00:00:00 (wall clock, no zone);
  TIMESTAMP: microseconds since the epoch of the instant; TIME: signed microseconds;
  zero dates are NULL, the one conversion the copy makes;
- character types: the utf8mb4 bytes (a latin1 column is converted, as the copy is); JSON text
  verbatim; MySQL strips CHAR's trailing pad, VARCHAR keeps its spaces, DuckDB keeps all;
- binary and spatial: the raw bytes (spatial: MySQL's SRID + WKB), never hex.

DOUBLE values: zero (either sign) is '0'. Otherwise, with a = |x|, the binary exponent
e = FLOOR(LOG2(a)), corrected by one when LOG2 rounds across a power of two (so that the
integer mantissa m = a / 2^(e-52) lies in [2^52, 2^53)), gives '<sign><e>p<m>'. A subnormal
(a < 2^-1022) is '<sign>-1022p<m>' with m = a * 2^1074 (< 2^52), computed as a * 2^1000 *
2^74 to stay in range. Division and multiplication by a power of two are exact in IEEE
arithmetic, so m is exact; LOG2 only picks the exponent, and the correction makes its last-bit
error harmless. 2^(e-52) never exceeds 2^972, so MySQL's POW never overflows. The value is
clamped to 2^-1022 inside the normal branch so that no engine evaluates LOG2(0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from mysqlsync_dagster.catalog import BINARY_TYPES, SPATIAL_TYPES, Column
from mysqlsync_dagster.targets.duckdb.types import CHARACTER_TYPES, duckdb_type

Quote = Callable[[str], str]
CanonicalKind = Literal[
    "integer", "bit", "year", "decimal", "double", "date", "datetime", "timestamp", "time",
    "text", "bytes", "uuid",
]  # fmt: skip

_INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})
_TWO_52 = "4503599627370496"
_TWO_53 = "9007199254740992"


def canonical_kind(column: Column) -> CanonicalKind:
    """How a column's values are put into canonical text (see the module docstring)."""
    duckdb_type(column)  # raises SchemaError on a type the copy does not support either
    data_type = column.data_type.lower()
    if data_type in _INTEGER_TYPES:
        return "integer"
    if data_type in ("bit", "year", "date", "datetime", "timestamp", "time", "uuid"):
        return data_type  # type: ignore[return-value]
    if data_type in ("decimal", "numeric"):
        return "decimal"
    if data_type in ("float", "double", "real"):
        return "double"
    if data_type in BINARY_TYPES or data_type in SPATIAL_TYPES:
        return "bytes"
    if data_type in CHARACTER_TYPES or data_type in ("inet4", "inet6"):
        return "text"
    raise AssertionError(f"unclassified type {data_type}")  # duckdb_type knows no more types


def _double_canonical(x: str, *, mysql: bool) -> str:
    """SQL for the exact decomposition of the DOUBLE expression `x` (module docstring)."""
    pow2 = "POW" if mysql else "pow"
    text = "CHAR" if mysql else "VARCHAR"
    signed, unsigned = ("SIGNED", "UNSIGNED") if mysql else ("BIGINT", "UBIGINT")

    def concat(
        *parts: str,
    ) -> str:  # NULL in, NULL out on both engines (DuckDB's concat() skips NULL)
        return f"CONCAT({', '.join(parts)})" if mysql else f"({' || '.join(parts)})"

    a = f"ABS({x})"
    normal = f"GREATEST({a}, {pow2}(2, -1022))"
    e0 = f"FLOOR(LOG2({normal}))"
    m0 = f"({normal} / {pow2}(2, {e0} - 52))"
    e = f"({e0} + CASE WHEN {m0} >= {_TWO_53} THEN 1 WHEN {m0} < {_TWO_52} THEN -1 ELSE 0 END)"
    m = f"({normal} / {pow2}(2, {e} - 52))"
    sign = f"CASE WHEN {x} < 0 THEN '-' ELSE '' END"
    subnormal_m = f"({a} * {pow2}(2, 1000) * {pow2}(2, 74))"
    subnormal = concat(sign, "'-1022p'", f"CAST(CAST({subnormal_m} AS {unsigned}) AS {text})")
    normal_text = concat(
        sign,
        f"CAST(CAST({e} AS {signed}) AS {text})",
        "'p'",
        f"CAST(CAST({m} AS {unsigned}) AS {text})",
    )
    return (
        f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = 0 THEN '0'"
        f" WHEN {a} < {pow2}(2, -1022) THEN {subnormal} ELSE {normal_text} END"
    )


def _mysql_zero_date_null(quoted: str, value: str) -> str:
    return f"IF(MONTH({quoted}) = 0 OR DAYOFMONTH({quoted}) = 0, NULL, {value})"


def mysql_canonical_sql(column: Column, quoted: str) -> str:
    """MySQL SQL for the canonical text (or binary string) of one value; NULL stays NULL."""
    kind = canonical_kind(column)
    if kind == "integer":
        return f"CAST({quoted} AS CHAR)"
    if kind in ("bit", "year"):
        return f"CAST(CAST({quoted} AS UNSIGNED) AS CHAR)"
    if kind == "decimal":
        return f"CAST({quoted} AS CHAR)"  # all s decimals; ASCII in any connection charset
    if kind == "double":
        return _double_canonical(f"CAST({quoted} AS DOUBLE)", mysql=True)
    if kind == "date":
        return _mysql_zero_date_null(quoted, f"CAST({quoted} AS CHAR)")
    if kind == "datetime":
        micros = f"TIMESTAMPDIFF(MICROSECOND, TIMESTAMP'1970-01-01 00:00:00', {quoted})"
        return _mysql_zero_date_null(quoted, f"CAST({micros} AS CHAR)")
    if kind == "timestamp":
        # UNIX_TIMESTAMP reads the stored instant (no time zone); 0 is the zero TIMESTAMP
        return f"CAST(CAST(NULLIF(UNIX_TIMESTAMP({quoted}), 0) * 1000000 AS SIGNED) AS CHAR)"
    if kind == "time":
        return f"CAST(CAST(TIME_TO_SEC({quoted}) * 1000000 AS SIGNED) AS CHAR)"
    if kind == "text":
        return f"CONVERT({quoted} USING utf8mb4)"
    if kind == "uuid":
        return f"CAST({quoted} AS CHAR)"
    return quoted  # bytes: hashed raw


def duckdb_canonical_sql(column: Column, quoted: str) -> str:
    """DuckDB SQL for the canonical text (or BLOB) of one value of a column typed by
    `duckdb_type`; NULL stays NULL."""
    kind = canonical_kind(column)
    if kind in ("integer", "bit", "year", "date", "uuid"):
        return f"CAST({quoted} AS VARCHAR)"
    if kind == "decimal":
        return f"CAST({quoted} AS VARCHAR)"  # DECIMAL prints all s decimals; VARCHAR as is
    if kind == "double":
        return _double_canonical(f"CAST({quoted} AS DOUBLE)", mysql=False)
    if kind in ("datetime", "timestamp", "time"):
        return f"CAST(epoch_us({quoted}) AS VARCHAR)"
    if kind == "text":
        return f"CAST({quoted} AS VARCHAR)"  # JSON keeps its text verbatim
    return quoted  # bytes: md5 of the BLOB's bytes


def mysql_row_digest_sql(columns: Sequence[Column], quote: Quote) -> str:
    """MySQL SQL for the row digest: an unsigned 64-bit integer, for BIT_XOR and per key."""
    parts = ", ".join(f"IFNULL(MD5({mysql_canonical_sql(c, quote(c.name))}), 'N')" for c in columns)
    return f"CAST(CONV(LEFT(MD5(CONCAT_WS(',', {parts})), 16), 16, 10) AS UNSIGNED)"


def duckdb_row_digest_sql(columns: Sequence[Column], quote: Quote) -> str:
    """DuckDB SQL for the same row digest as `mysql_row_digest_sql`, a UBIGINT."""
    parts = ", ".join(
        f"coalesce(md5({duckdb_canonical_sql(c, quote(c.name))}), 'N')" for c in columns
    )
    return f"CAST('0x' || left(md5(concat_ws(',', {parts})), 16) AS UBIGINT)"


def duckdb_quote(name: str) -> str:
    """`name` as a DuckDB identifier: double quotes around it, double quotes inside doubled."""
    return '"' + name.replace('"', '""') + '"'
