"""Per-table sync state in a PostgreSQL target: `_mysqlsync_state` in the table's schema, written
in the same transaction as the data it describes (as in a MySQL target, `targets/mysql/state.py`,
whose key encoding it shares)."""

from __future__ import annotations

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


def ensure_state_table(conn: Connection, schema: str) -> None:
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {_table(schema)} ("
        ' target_table text COLLATE "C" PRIMARY KEY,'
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
    exists = conn.execute(
        sa.text("SELECT to_regclass(:name)"), {"name": _table(schema)}
    ).scalar_one()
    if exists is None:  # no state table yet: nothing was synced
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
            " VALUES (:t, :c, (now() AT TIME ZONE 'UTC'), :r, :l)"
            " ON CONFLICT (target_table) DO UPDATE SET cursor_value = EXCLUDED.cursor_value,"
            " synced_at = EXCLUDED.synced_at, rows_written = EXCLUDED.rows_written,"
            " load_id = EXCLUDED.load_id"
        ),
        {"t": target_table, "c": cursor, "r": rows_written, "l": load_id},
    )


def read_sweep(conn: Connection, schema: str, target_table: str) -> SweepState:
    if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": _table(schema)}).scalar() is None:
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
