"""Schema mirroring into PostgreSQL: a table that holds every source value exactly.

Each column takes the type `types.pg_type` maps it to (the README's table), with the source's
nullability and its plain literal default; names are kept letter for letter (quoted). Text
columns of the primary key are collated "C" (code point order, the order the checks' key
ranges follow on both sides). The primary key and the secondary indexes come along: FULLTEXT
and SPATIAL indexes have no like in plain PostgreSQL and are left out, and a prefix index
(`KEY (name(10))`) becomes an index on `left(name, 10)`. Generated columns are copied as
values (PostgreSQL cannot evaluate MySQL's expressions). `_dlt_load_id` and `_dlt_id` are
added, as in a MySQL target.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from mysqlsync_dagster.catalog import (
    DLT_COLUMNS,
    TEXT_TYPES,
    ZERO_DATE_TYPES,
    Column,
    TableShape,
    keeps_nulls,
)
from mysqlsync_dagster.pipeline.wire import NO_SUCH_DATE
from mysqlsync_dagster.targets.mysql.ddl import SchemaChanges
from mysqlsync_dagster.targets.postgres.types import pg_type

NAME_BYTES = 63  # PostgreSQL truncates longer identifiers


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A string literal (PostgreSQL and DuckDB spell them alike)."""
    return "'" + text.replace("'", "''") + "'"


def qualified(schema: str, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}"


def short_name(name: str, suffix: str = "") -> str:
    """`name` + `suffix` within PostgreSQL's 63 bytes (a hash keeps long names distinct)."""
    whole = name + suffix
    if len(whole.encode()) <= NAME_BYTES:
        return whole
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    head = name.encode()[: NAME_BYTES - len(suffix.encode()) - 9].decode(errors="ignore")
    return f"{head}_{digest}{suffix}"


def column_type(column: Column, key: bool) -> str:
    """The column's PostgreSQL type; a text key column collated "C" (see the module doc)."""
    mapped = pg_type(column)
    if key and column.data_type in TEXT_TYPES:
        return f'{mapped} COLLATE "C"'
    return mapped


_LITERAL = re.compile(r"^(-?\d+(\.\d+)?([eE][-+]?\d+)?|'(?:[^'\\]|'')*')$")


def default_sql(column: Column) -> str | None:
    """The source's default where PostgreSQL has the same: a number or a string literal, or
    CURRENT_TIMESTAMP for a date-time column; expressions are left out."""
    raw = column.default
    if raw is None or raw.upper() == "NULL" or column.generated:
        return None
    if column.data_type in ("timestamp", "datetime") and raw.lower().startswith(
        "current_timestamp"
    ):
        return "CURRENT_TIMESTAMP"
    if column.data_type in ("bit", "binary", "varbinary", "json") or "blob" in column.data_type:
        return None
    if column.data_type in ZERO_DATE_TYPES and re.match(NO_SUCH_DATE, raw.strip("'")):
        return None  # a zero date (legacy `DEFAULT '0000-00-00'`): no such date here
    if column.data_type in ("geometry", "point", "linestring", "polygon"):
        return None
    if _LITERAL.match(raw):
        if raw.startswith("'") and column.data_type in (
            "tinyint", "smallint", "mediumint", "int", "bigint", "decimal", "float", "double",
        ):  # fmt: skip
            return None
        return raw
    return None


def column_sql(column: Column, key: bool) -> str:
    sql = f"{quote(column.name)} {column_type(column, key)}"
    if not column.nullable or key:
        sql += " NOT NULL"
    default = default_sql(column)
    if default is not None:
        sql += f" DEFAULT {default}"
    return sql


# A secondary index line of SHOW CREATE TABLE: kind, name, column list.
_INDEX = re.compile(r"^\s*(?:(UNIQUE|FULLTEXT|SPATIAL) )?KEY `((?:[^`]|``)+)` \((.*)\)", re.M)
_INDEX_PART = re.compile(r"`((?:[^`]|``)+)`(?:\((\d+)\))?( DESC)?")


@dataclass(frozen=True)
class Index:
    name: str
    unique: bool
    parts: tuple[tuple[str, int | None, bool], ...]  # (column, prefix length, descending)

    def sql(self, schema: str, table: str, name: str) -> str:
        parts = []
        for column, prefix, descending in self.parts:
            part = quote(column) if prefix is None else f"left({quote(column)}, {prefix})"
            if prefix is not None:
                part = f"({part})"
            parts.append(part + (" DESC" if descending else ""))
        # a prefix index only orders the rows: its uniqueness the source already enforces
        unique = "UNIQUE " if self.unique and all(p[1] is None for p in self.parts) else ""
        return (
            f"CREATE {unique}INDEX {quote(name)} ON {qualified(schema, table)} ({', '.join(parts)})"
        )


def secondary_indexes(source: TableShape) -> list[Index]:
    """The source's secondary indexes PostgreSQL can have (not FULLTEXT or SPATIAL)."""
    out = []
    for kind, name, columns in _INDEX.findall(source.create_sql):
        if kind in ("FULLTEXT", "SPATIAL"):
            continue
        parts = tuple(
            (column.replace("``", "`"), int(prefix) if prefix else None, bool(descending))
            for column, prefix, descending in _INDEX_PART.findall(columns)
        )
        out.append(Index(name.replace("``", "`"), kind == "UNIQUE", parts))
    return out


def index_name(table: str, index: str) -> str:
    return short_name(f"{table}_{index}")


def create_table_sql(
    source: TableShape, schema: str, table: str, primary_key: Sequence[str]
) -> list[str]:
    """CREATE TABLE (with its primary key) and CREATE INDEX statements for the copy."""
    key = list(source.primary_key or primary_key)
    body = [column_sql(c, c.name in key) for c in source.columns if c.name not in DLT_COLUMNS]
    body += [f"{quote(name)} text" for name in DLT_COLUMNS]
    body.append(
        f"CONSTRAINT {quote(short_name(table, '_pkey'))} "
        f"PRIMARY KEY ({', '.join(quote(c) for c in key)})"
    )
    statements = [f"CREATE TABLE {qualified(schema, table)} (\n  " + ",\n  ".join(body) + "\n)"]
    statements += [
        index.sql(schema, table, index_name(table, index.name))
        for index in secondary_indexes(source)
    ]
    return statements


# -- reading the target back ------------------------------------------------------------
@dataclass(frozen=True)
class PgColumn:
    name: str
    type: str  # as format_type() spells it
    nullable: bool


def read_columns(conn: sa.Connection, schema: str, table: str) -> list[PgColumn] | None:
    """The table's columns in order; None when there is no such table."""
    rows = conn.execute(
        sa.text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :s AND c.relname = :t AND c.relkind IN ('r', 'p')"
            " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        ),
        {"s": schema, "t": table},
    ).all()
    return [PgColumn(r[0], r[1], r[2]) for r in rows] or None


_SPELLINGS = (
    (re.compile(r"^varchar\b"), "character varying"),
    (re.compile(r"^timestamp(\(\d\))? with time zone$"), r"timestamp\1 with time zone"),
    (re.compile(r"^timestamptz(\(\d\))?$"), r"timestamp\1 with time zone"),
    (re.compile(r"^timestamp(\(\d\))?$"), r"timestamp\1 without time zone"),
    (re.compile(r"^time(\(\d\))?$"), r"time\1 without time zone"),
    (re.compile(r"^int$|^int4$"), "integer"),
    (re.compile(r"^int2$"), "smallint"),
    (re.compile(r"^int8$"), "bigint"),
    (re.compile(r"^float8$"), "double precision"),
    (re.compile(r"^float4$"), "real"),
    (re.compile(r"^decimal\b"), "numeric"),
    (re.compile(r"^bit varying\b"), "bit varying"),
)


def format_type_spelling(mapped: str) -> str:
    """`pg_type`'s spelling as `format_type()` reports it (to compare with the target)."""
    spelled = mapped.split(" COLLATE ")[0].strip().lower()
    for pattern, replacement in _SPELLINGS:
        spelled = pattern.sub(replacement, spelled)
    return spelled


class TargetColumn(Protocol):
    name: str
    type: str
    nullable: bool


def _pg_retype(column: Column, key: bool, current: str) -> str | None:
    """The ALTER clause giving `column` its mapped type, or None when it has it already."""
    mapped = column_type(column, key)
    if current == format_type_spelling(mapped):
        return None
    name = quote(column.name)
    return f"ALTER COLUMN {name} TYPE {mapped} USING {name}::{mapped.split(' COLLATE ')[0]}"


def diff_columns(
    source: TableShape,
    existing: Sequence[TargetColumn],
    key: Sequence[str],
    column_sql: Callable[[Column, bool], str] = column_sql,
    retype: Callable[[Column, bool, str], str | None] = _pg_retype,
) -> SchemaChanges:
    """New source columns are added; a column whose mapped type changed (widened) takes the
    new type (`retype`); columns the source dropped stay, made nullable so that new rows can
    leave them empty. Returns ALTER TABLE clauses (one column each: DuckDB alters one at a
    time). Shared by the PostgreSQL and DuckDB targets, which differ by `column_sql` and
    `retype`."""
    have = {c.name: c for c in existing}
    added, modified, clauses = [], [], []
    for col in source.columns:
        if col.name in DLT_COLUMNS:
            continue
        current = have.get(col.name)
        if current is None:
            clauses.append(f"ADD COLUMN {column_sql(col, col.name in key)}")
            added.append(col.name)
            continue
        changes = [retype(col, col.name in key, current.type)]
        nullable = col.nullable and col.name not in key
        if current.nullable != nullable and not keeps_nulls(col, current.nullable):
            action = "DROP NOT NULL" if nullable else "SET NOT NULL"
            changes.append(f"ALTER COLUMN {quote(col.name)} {action}")
        if any(changes):
            clauses += [c for c in changes if c]
            modified.append(col.name)
    names = set(source.column_names)
    dropped = []
    for current in existing:
        if current.name in names or current.name in DLT_COLUMNS:
            continue
        dropped.append(current.name)
        if not current.nullable:
            clauses.append(f"ALTER COLUMN {quote(current.name)} DROP NOT NULL")
    return SchemaChanges(tuple(added), tuple(modified), tuple(dropped), tuple(clauses))
