"""The catalog: what a MySQL/MariaDB server says about a table, read once and passed on.

A table's shape (columns with their exact types, primary key, `SHOW CREATE TABLE`) for the
sync and the checks; batched facts about many tables at once (columns, indexes, row and size
estimates) for doctor and the sync's preflight; and the preflight rules themselves, written
once: the sync raises on a failed rule, doctor reports it as a finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mysqlsync_dagster.db import quote_identifier as quote
from mysqlsync_dagster.db import run_sql

LOAD_ID_COLUMN = "_dlt_load_id"
DLT_ID_COLUMN = "_dlt_id"
DLT_COLUMNS = (LOAD_ID_COLUMN, DLT_ID_COLUMN)

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
