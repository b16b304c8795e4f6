"""PostgreSQL column types for MySQL/MariaDB source columns, and the text each value travels as.

Every source type maps to the PostgreSQL type that holds all its values exactly, and each value
is selected on the source as text that `COPY ... (FORMAT csv)` parses back to the same value:

| source type                              | PostgreSQL type                 | selected as (text)            |
|------------------------------------------|---------------------------------|-------------------------------|
| TINYINT (any), SMALLINT, YEAR            | smallint                        | CAST(col AS CHAR)             |
| SMALLINT UNSIGNED, MEDIUMINT (any), INT  | integer                         | CAST(col AS CHAR)             |
| INT UNSIGNED, BIGINT                     | bigint                          | CAST(col AS CHAR)             |
| BIGINT UNSIGNED                          | numeric(20,0)                   | CAST(col AS CHAR)             |
| DECIMAL(p,s) (any)                       | numeric(p,s)                    | CAST(col AS CHAR)             |
| FLOAT / DOUBLE                           | real / double precision         | CAST(CAST(col AS DOUBLE) ...) |
| BIT(n)                                   | bit(n)                          | LPAD(BIN(col), n, '0')        |
| DATE, DATETIME(n)                        | date, timestamp(n) without t.z. | CAST(col AS CHAR)             |
| TIMESTAMP(n)                             | timestamp(n) with time zone     | its UTC text + '+00'          |
| TIME(n)                                  | interval(n)                     | CAST(col AS CHAR)             |
| CHAR(n), VARCHAR(n)                      | varchar(n)                      | CAST(col AS CHAR) (utf8mb4)   |
| TEXT types, ENUM, SET                    | text                            | CAST(col AS CHAR) (utf8mb4)   |
| JSON (MySQL; MariaDB's JSON is LONGTEXT) | json (the text kept verbatim)   | CAST(col AS CHAR)             |
| BINARY, VARBINARY, BLOBs, spatial        | bytea (spatial: SRID + WKB)     | '\\x' + HEX(col)              |

CHAR becomes varchar, not char(n): MySQL strips CHAR's trailing pad, and the value is kept as
MySQL returns it. TIME becomes interval, which holds MySQL's whole range ('-838:59:59' to
'838:59:59') to the microsecond; `interval(n)` keeps n fractional digits like TIME(n) (an
`interval second(n)` would do the same but print as seconds). A TIMESTAMP's UTC text is made
from its epoch seconds by date arithmetic, whatever the reading session's time zone (the
extraction's connectorx sessions keep the server's): '+00' makes it the same instant.

Zero dates ('0000-00-00', a zero month or day) are selected as they are: the pipeline turns them
into NULL afterwards. A NUL character in a text value is the loader's concern (PostgreSQL text
cannot hold one).
"""

from __future__ import annotations

import re
from typing import Literal

from mysqlsync_dagster.catalog import BINARY_TYPES, SPATIAL_TYPES, TEXT_TYPES, Column
from mysqlsync_dagster.errors import SchemaError

ValueKind = Literal[
    "integer",
    "year",
    "decimal",
    "float",
    "double",
    "bit",
    "date",
    "datetime",
    "timestamp",
    "time",
    "text",
    "json",
    "binary",
]

# MySQL 8 reports GEOMETRYCOLLECTION as "geomcollection".
_SPATIAL_TYPES = SPATIAL_TYPES | {"geomcollection"}
_INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})
_SIMPLE_KINDS: dict[str, ValueKind] = {
    "year": "year",
    "decimal": "decimal",
    "float": "float",
    "double": "double",
    "bit": "bit",
    "date": "date",
    "datetime": "datetime",
    "timestamp": "timestamp",
    "time": "time",
    "json": "json",
}
# PostgreSQL type by (MySQL integer type, unsigned): the smallest that holds every value.
_INTEGERS = {
    ("tinyint", False): "smallint",
    ("tinyint", True): "smallint",
    ("smallint", False): "smallint",
    ("smallint", True): "integer",
    ("mediumint", False): "integer",
    ("mediumint", True): "integer",
    ("int", False): "integer",
    ("int", True): "bigint",
    ("bigint", False): "bigint",
    ("bigint", True): "numeric(20,0)",
}
_TEXTS = {"tinytext", "text", "mediumtext", "longtext", "enum", "set"}
# MariaDB's own types, copied as their text form (UUID into PostgreSQL's uuid, whose text is
# the same lowercase hyphenated form)
_MARIADB_TEXTS = {"uuid": "uuid", "inet4": "varchar(15)", "inet6": "varchar(39)"}
_ARGUMENTS = re.compile(r"^\w+\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def value_kind(column: Column) -> ValueKind:
    """How the column's values are typed, copied and compared (one kind per conversion rule)."""
    data_type = column.data_type.lower()
    if data_type in _INTEGER_TYPES:
        return "integer"
    if data_type in TEXT_TYPES or data_type in _MARIADB_TEXTS:
        return "text"
    if data_type in BINARY_TYPES or data_type in _SPATIAL_TYPES:
        return "binary"
    kind = _SIMPLE_KINDS.get(data_type)
    if kind is None:
        raise SchemaError(
            f"column {column.name!r} has type {column.column_type!r}, which has no PostgreSQL"
            " mapping (supported: integers, DECIMAL, FLOAT, DOUBLE, BIT, YEAR, DATE, DATETIME,"
            " TIMESTAMP, TIME, CHAR/VARCHAR/TEXT, ENUM, SET, JSON, BINARY/VARBINARY/BLOB, spatial)"
        )
    return kind


def type_arguments(column: Column) -> tuple[int | None, int | None]:
    """The (length or precision, scale) in the column type, e.g. (12, 2) for 'decimal(12,2)'."""
    found = _ARGUMENTS.match(column.column_type.strip().lower())
    if found is None:
        return None, None
    first, second = found.groups()
    return int(first), int(second) if second is not None else None


def is_unsigned(column: Column) -> bool:
    """UNSIGNED (or ZEROFILL, which implies it) in the column type."""
    words = column.column_type.lower().split()
    return "unsigned" in words or "zerofill" in words


def fraction_digits(column: Column) -> int:
    """The fractional-second digits of a DATETIME, TIMESTAMP or TIME column (0 to 6)."""
    digits, _ = type_arguments(column)
    return digits or 0


def bit_width(column: Column) -> int:
    """n of a BIT(n) column (BIT alone is BIT(1))."""
    width, _ = type_arguments(column)
    return width or 1


def pg_type(column: Column) -> str:
    """The PostgreSQL type that holds every value of the MySQL/MariaDB `column` exactly."""
    kind = value_kind(column)
    data_type = column.data_type.lower()
    if kind == "integer":
        return _INTEGERS[data_type, is_unsigned(column)]
    if kind == "decimal":
        precision, scale = type_arguments(column)
        # DECIMAL alone is DECIMAL(10,0); information_schema always spells the arguments out
        return f"numeric({precision or 10},{scale or 0})"
    if kind == "text":
        if data_type in _TEXTS:
            return "text"
        if data_type in _MARIADB_TEXTS:
            return _MARIADB_TEXTS[data_type]
        length, _ = type_arguments(column)
        # CHAR(0) holds '' or NULL; PostgreSQL's varchar needs a length of at least 1
        return f"varchar({max(length or 1, 1)})"
    if kind in ("datetime", "timestamp", "time"):
        digits = fraction_digits(column)
        if kind == "time":
            return f"interval({digits})"
        zone = "with" if kind == "timestamp" else "without"
        return f"timestamp({digits}) {zone} time zone"
    if kind == "bit":
        return f"bit({bit_width(column)})"
    return {
        "year": "smallint",
        "float": "real",
        "double": "double precision",
        "date": "date",
        "json": "json",
        "binary": "bytea",
    }[kind]


def utc_timestamp_sql(quoted: str) -> str:
    """A TIMESTAMP column's instant as UTC text with '+00', made from its epoch seconds by date
    arithmetic whatever the session's time zone (the extraction's connectorx sessions keep the
    server's); the zero TIMESTAMP (epoch 0, which no real one has) stays the zero date's text."""
    epoch = f"UNIX_TIMESTAMP({quoted})"
    utc = f"TIMESTAMP'1970-01-01 00:00:00' + INTERVAL ROUND({epoch} * 1000000) MICROSECOND"
    return f"IF({epoch} = 0, '0000-00-00 00:00:00', CONCAT(CAST({utc} AS CHAR), '+00'))"


def pg_wire_sql(column: Column, quoted: str) -> str:
    """SQL run on the source that selects the column (identifier `quoted`) as the text COPY
    (FORMAT csv) parses to the same value in `pg_type(column)`; NULL stays NULL.

    Needs a source session in utf8mb4 (text); any time zone.
    """
    kind = value_kind(column)
    if kind == "binary":
        # bytea's hex input, '\x' + hex digits; CHAR(92) is the backslash whatever the sql_mode
        # (a '\\x' literal means two backslashes under NO_BACKSLASH_ESCAPES)
        return f"CONCAT(CHAR(92 USING ascii), 'x', HEX({quoted}))"
    if kind == "bit":
        return f"LPAD(BIN({quoted}), {bit_width(column)}, '0')"
    if kind in ("float", "double"):
        # FLOAT widened to DOUBLE exactly (PostgreSQL rounds its text back to the same float4);
        # the CAST also drops ZEROFILL's padding ('00000000000000005e-324')
        return f"CAST(CAST({quoted} AS DOUBLE) AS CHAR)"
    if kind == "timestamp":
        # the zero TIMESTAMP (epoch 0, which no real one has) stays the zero date's text
        epoch = f"UNIX_TIMESTAMP({quoted})"
        utc = f"TIMESTAMP'1970-01-01 00:00:00' + INTERVAL ROUND({epoch} * 1000000) MICROSECOND"
        return f"IF({epoch} = 0, '0000-00-00 00:00:00', CONCAT(CAST({utc} AS CHAR), '+00'))"
    return f"CAST({quoted} AS CHAR)"
