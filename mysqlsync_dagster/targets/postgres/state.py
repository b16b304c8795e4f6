"""Per-table sync state in a PostgreSQL (or DuckDB) target: `_mysqlsync_state` in the table's
schema, written in the same transaction as the data it describes (as in a MySQL target,
`targets/mysql/state.py`, whose key encoding it shares). Plain SQL both engines speak."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mysqlsync_dagster.targets.base import SweepState
from mysqlsync_dagster.targets.mysql.state import (
    STATE_TABLE,
    SWEEP_SELECT,
    SWEEP_SET,
    SyncState,
    sweep_from_row,
    sweep_parameters,
)
from mysqlsync_dagster.targets.postgres.ddl import qualified


def _table(schema: str) -> str:
    return qualified(schema, STATE_TABLE)


def _exists(conn: Connection, schema: str) -> bool:
    return (
        conn.execute(
            sa.text(
                "SELECT count(*) FROM information_schema.tables"
                " WHERE table_schema = :s AND table_name = :t"
            ),
            {"s": schema, "t": STATE_TABLE},
        ).scalar_one()
        > 0
    )


def ensure_state_table(conn: Connection, schema: str) -> None:
    if _exists(conn, schema):
        return
    collate = ' COLLATE "C"' if conn.dialect.name == "postgresql" else ""
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {_table(schema)} ("
        f" target_table text{collate} PRIMARY KEY,"
        " cursor_value text,"
        " synced_at timestamp(6) NOT NULL,"
        " rows_written bigint,"
        " load_id text,"
        " sweep_position text,"
        " sweep_started_at timestamp(6),"
        " sweep_runs integer,"
        " last_sweep_started_at timestamp(6),"
        " last_sweep_runs integer,"
        " kept_deleted bigint)"
    )


def read_state(conn: Connection, schema: str, target_table: str) -> SyncState | None:
    if not _exists(conn, schema):  # no state table yet: nothing was synced
        return None
    row = conn.execute(
        sa.text(
            "SELECT target_table, cursor_value, synced_at, rows_written, load_id"
            f" FROM {_table(schema)} WHERE target_table = :t"
        ),
        {"t": target_table},
    ).one_or_none()
    return SyncState(*row) if row else None


def write_state(
    conn: Connection,
    schema: str,
    target_table: str,
    cursor: str | None,
    rows_written: int,
    load_id: str | None,
) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO {_table(schema)}"
            " (target_table, cursor_value, synced_at, rows_written, load_id)"
            " VALUES (:t, :c, :now, :r, :l)"
            " ON CONFLICT (target_table) DO UPDATE SET cursor_value = EXCLUDED.cursor_value,"
            " synced_at = EXCLUDED.synced_at, rows_written = EXCLUDED.rows_written,"
            " load_id = EXCLUDED.load_id"
        ),
        {
            "t": target_table,
            "c": cursor,
            "now": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            "r": rows_written,
            "l": load_id,
        },
    )


def read_sweep(conn: Connection, schema: str, target_table: str) -> SweepState:
    if not _exists(conn, schema):
        return SweepState()
    row = conn.execute(
        sa.text(f"SELECT {SWEEP_SELECT} FROM {_table(schema)} WHERE target_table = :t"),
        {"t": target_table},
    ).one_or_none()
    return sweep_from_row(row)


def write_sweep(conn: Connection, schema: str, target_table: str, sweep: SweepState) -> None:
    conn.execute(
        sa.text(f"UPDATE {_table(schema)} SET {SWEEP_SET} WHERE target_table = :t"),
        sweep_parameters(target_table, sweep),
    )


class StateInSchema:
    """The `Target` methods around the state table, for a target whose tables live in a
    schema and whose SQL is PostgreSQL's (PostgreSQL and DuckDB targets)."""

    engine: sa.Engine

    @property
    def schema(self) -> str:
        raise NotImplementedError

    def qualified(self, table: str) -> str:
        raise NotImplementedError

    def read_state(self, table: str) -> SyncState | None:
        with self.engine.begin() as conn:
            ensure_state_table(conn, self.schema)
            return read_state(conn, self.schema, table)

    def stored_state(self, table: str) -> SyncState | None:
        """The table's sync state, read only (None: no state table, or no row)."""
        with self.engine.connect() as conn:
            return read_state(conn, self.schema, table)

    def commit(
        self,
        loader: Any,
        table: str,
        cursor: str | None,
        record_state: bool,
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        """Finish the load (swap or drop the work table), run `also`, and store the state,
        together."""
        with self.engine.begin() as conn:
            loader.finish(conn)
            if also is not None:
                also(conn)
            if record_state:
                ensure_state_table(conn, self.schema)
                write_state(
                    conn, self.schema, table, cursor, loader.stats.rows, loader.stats.load_id
                )

    def read_sweep(self, table: str) -> SweepState:
        with self.engine.connect() as conn:
            return read_sweep(conn, self.schema, table)

    def write_sweep(self, table: str, sweep: SweepState) -> None:
        with self.engine.begin() as conn:
            write_sweep(conn, self.schema, table, sweep)

    def row_count(self, table: str) -> int:
        with self.engine.connect() as conn:
            count = conn.exec_driver_sql(f"SELECT count(*) FROM {self.qualified(table)}")
            return int(count.scalar_one())
