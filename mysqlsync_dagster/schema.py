"""Schema mirroring: read a source table's shape and make the target table the same.

The target DDL is the source's own `SHOW CREATE TABLE`, so column types (length, precision,
UNSIGNED, fractional seconds), nullability, defaults, generated columns, keys, indexes, CHECK
constraints, character set and collation carry over exactly. Foreign keys are left out (the
referenced tables may not be synced, or not yet); `_dlt_load_id` and `_dlt_id` are added.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mysqlsync_dagster.db import quote_identifier as quote
from mysqlsync_dagster.db import run_sql

LOAD_ID_COLUMN = "_dlt_load_id"
DLT_ID_COLUMN = "_dlt_id"
DLT_COLUMNS = (LOAD_ID_COLUMN, DLT_ID_COLUMN)
_DLT_COLUMN_DDL = "varchar(64) CHARACTER SET ascii COLLATE ascii_bin DEFAULT NULL"

BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
SPATIAL_TYPES = frozenset(
    {
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
    }
)
DATE_TYPES = frozenset({"date", "datetime"})
NUMERIC_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint", "decimal", "year"})
# Types a modifier column may have: they order changes in time (or by version number).
ORDERABLE_TYPES = NUMERIC_TYPES | {"date", "datetime", "timestamp"}


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # e.g. "bigint"
    column_type: str  # e.g. "bigint(20) unsigned"
    nullable: bool
    charset: str | None
    collation: str | None
    generated: bool
    default: str | None = None

    @property
    def signature(self) -> tuple[object, ...]:
        """What must match for the target column to hold the same values as the source."""
        return (
            self.column_type.lower(),
            self.nullable,
            self.charset,
            self.collation,
            self.generated,
        )


@dataclass(frozen=True)
class TableShape:
    """A table as the server describes it."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    create_sql: str
    column_definitions: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def copied_columns(self) -> list[Column]:
        """Columns whose values are copied (generated columns are computed by the target)."""
        return [c for c in self.columns if not c.generated and c.name not in DLT_COLUMNS]


def qualified(database: str, table: str) -> str:
    return f"{quote(database)}.{quote(table)}"


def read_table_shape(conn: Connection, database: str, table: str) -> TableShape | None:
    """The table's columns, primary key and DDL; None when it does not exist."""
    rows = conn.execute(
        sa.text(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME,"
            " COLLATION_NAME, EXTRA, COLUMN_DEFAULT"
            " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = :db AND TABLE_NAME = :t"
            " ORDER BY ORDINAL_POSITION"
        ),
        {"db": database, "t": table},
    ).all()
    if not rows:
        return None
    columns = tuple(
        Column(
            name=r[0],
            data_type=r[1].lower(),
            column_type=r[2],
            nullable=r[3] == "YES",
            charset=r[4],
            collation=r[5],
            generated="GENERATED" in (r[6] or "").upper(),
            default=r[7],
        )
        for r in rows
    )
    primary_key = tuple(
        r[0]
        for r in conn.execute(
            sa.text(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS"
                " WHERE TABLE_SCHEMA = :db AND TABLE_NAME = :t AND INDEX_NAME = 'PRIMARY'"
                " ORDER BY SEQ_IN_INDEX"
            ),
            {"db": database, "t": table},
        )
    )
    create_sql = run_sql(conn, f"SHOW CREATE TABLE {qualified(database, table)}").one()[1]
    definitions, _ = split_create_table(create_sql)
    return TableShape(table, columns, primary_key, create_sql, definitions)


def has_unique_index(conn: Connection, database: str, table: str, columns: Sequence[str]) -> bool:
    """Is there a unique index on exactly these columns (in any order)?"""
    rows = conn.execute(
        sa.text(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = :db AND TABLE_NAME = :t AND NON_UNIQUE = 0"
        ),
        {"db": database, "t": table},
    ).all()
    indexes: dict[str, set[str]] = {}
    for index, column in rows:
        indexes.setdefault(index, set()).add(column)
    return set(columns) in indexes.values()


def key_violations(
    conn: Connection, database: str, table: str, columns: Sequence[str]
) -> tuple[list[tuple[object, ...]], int]:
    """Up to 3 key values that occur more than once, and how many rows have a NULL key part."""
    key = ", ".join(quote(c) for c in columns)
    source = qualified(database, table)
    duplicates = run_sql(
        conn,
        f"SELECT {key}, COUNT(*) FROM {source} GROUP BY {key} HAVING COUNT(*) > 1 LIMIT 3",
    ).all()
    nulls = run_sql(
        conn,
        f"SELECT COUNT(*) FROM {source} WHERE "
        + " OR ".join(f"{quote(c)} IS NULL" for c in columns),
    ).scalar_one()
    return [tuple(r) for r in duplicates], int(nulls)


def _parse_identifier(line: str, start: int) -> tuple[str, int]:
    """Parse a backtick-quoted identifier starting at line[start] == '`'."""
    out = []
    i = start + 1
    while i < len(line):
        ch = line[i]
        if ch == "`":
            if i + 1 < len(line) and line[i + 1] == "`":
                out.append("`")
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise ValueError(f"unterminated identifier in {line!r}")


def split_create_table(create_sql: str) -> tuple[dict[str, str], list[str]]:
    """Split SHOW CREATE TABLE into column definitions (by name) and the other body lines."""
    lines = create_sql.split("\n")
    columns: dict[str, str] = {}
    others: list[str] = []
    for line in lines[1:]:
        if line.startswith(")"):
            break
        item = line.strip().rstrip(",")
        if item.startswith("`"):
            name, _ = _parse_identifier(item, 0)
            columns[name] = item
        else:
            others.append(item)
    return columns, others


def _table_options(create_sql: str) -> str:
    tail = create_sql[create_sql.rindex("\n)") + 2 :]
    return re.sub(r"\s*AUTO_INCREMENT=\d+", "", tail)


def mirror_ddl(
    source: TableShape,
    target_table: str,
    primary_key: Sequence[str],
    *,
    create_name: str | None = None,
) -> str:
    """CREATE TABLE statement for the target copy of `source`."""
    q = quote
    definitions, others = split_create_table(source.create_sql)
    body = [definitions[c.name] for c in source.columns if c.name not in DLT_COLUMNS]
    body += [f"{q(name)} {_DLT_COLUMN_DDL}" for name in DLT_COLUMNS]
    body += [o for o in others if " FOREIGN KEY " not in f" {o} "]
    if not source.primary_key:
        body.append("PRIMARY KEY (" + ", ".join(q(c) for c in primary_key) + ")")
    name = create_name or target_table
    return (
        f"CREATE TABLE {q(name)} (\n  "
        + ",\n  ".join(body)
        + "\n)"
        + _table_options(source.create_sql)
    )


@dataclass(frozen=True)
class SchemaChanges:
    """What the target needs to match the source; statements are ALTER TABLE clauses."""

    added: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    dropped_in_source: tuple[str, ...] = ()
    clauses: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.clauses


def diff_schema(source: TableShape, target: TableShape) -> SchemaChanges:
    """Compare column by column; new columns are added, changed ones take the source's type.

    Columns the source dropped stay in the target (their history is kept) and are made
    nullable so that new rows can leave them empty.
    """
    q = quote
    target_columns = {c.name: c for c in target.columns}
    added, modified, clauses = [], [], []
    previous: str | None = None
    for col in source.columns:
        if col.name in DLT_COLUMNS:
            continue
        definition = source.column_definitions[col.name]
        existing = target_columns.get(col.name)
        if existing is None:
            position = f" AFTER {q(previous)}" if previous else " FIRST"
            clauses.append(f"ADD COLUMN {definition}{position}")
            added.append(col.name)
        elif existing.signature != col.signature:
            clauses.append(f"MODIFY COLUMN {definition}")
            modified.append(col.name)
        previous = col.name
    source_names = set(source.column_names)
    dropped = []
    for col in target.columns:
        if col.name in source_names or col.name in DLT_COLUMNS:
            continue
        dropped.append(col.name)
        if not col.nullable and not col.generated:
            definition = target.column_definitions[col.name]
            relaxed = re.sub(r" NOT NULL\b", " NULL", definition, count=1)
            clauses.append(f"MODIFY COLUMN {relaxed}")
    return SchemaChanges(tuple(added), tuple(modified), tuple(dropped), tuple(clauses))
