"""The databases a table can be copied into: MySQL/MariaDB (`mysql/`), PostgreSQL (`postgres/`)
and DuckDB (`duckdb/`), each behind the `Target` interface (`base.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlalchemy as sa

    from mysqlsync_dagster.settings import DatabaseSettings
    from mysqlsync_dagster.targets.base import Target


def target_for(
    engine: sa.Engine, settings: DatabaseSettings | None = None, schema: str | None = None
) -> Target:
    """The target behind `engine` (`schema`: a PostgreSQL table's `target_schema`; None: the
    connection's current schema). Imported where used: the state module needs no loader."""
    if engine.dialect.name == "postgresql":
        from mysqlsync_dagster.targets.postgres.target import PostgresTarget

        return PostgresTarget(engine, settings, schema)
    if engine.dialect.name == "duckdb":
        from mysqlsync_dagster.targets.duckdb.target import DuckDBTarget

        return DuckDBTarget(engine, settings, schema)
    from mysqlsync_dagster.targets.mysql.target import MySQLTarget

    return MySQLTarget(engine, settings)
