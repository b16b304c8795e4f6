"""Schema mirroring: the DDL that makes a MySQL/MariaDB target table the same as the source's.

The target DDL is the source's own `SHOW CREATE TABLE`, so column types (length, precision,
UNSIGNED, fractional seconds), nullability, defaults, generated columns, keys, indexes, CHECK
constraints, character set and collation carry over exactly. Foreign keys are left out (the
referenced tables may not be synced, or not yet); `_dlt_load_id` and `_dlt_id` are added.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from mysqlsync_dagster.catalog import DLT_COLUMNS, TableShape, keeps_nulls, split_create_table
from mysqlsync_dagster.db import quote_identifier as quote

_DLT_COLUMN_DDL = "varchar(64) CHARACTER SET ascii COLLATE ascii_bin DEFAULT NULL"


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
        elif existing.signature != col.signature and not (
            keeps_nulls(col, existing.nullable)
            and existing.signature == replace(col, nullable=True).signature
        ):
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
