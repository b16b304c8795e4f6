"""Per-table sync state, kept in the target database next to the data it describes.

The incremental cursor is written only after every batch of a run has been loaded, so a run
that dies part-way leaves the old cursor and the next run re-reads (and idempotently re-upserts)
from there: the target converges, nothing is skipped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mysqlsync_dagster.db import quote_identifier, run_sql

STATE_TABLE = "_mysqlsync_state"


@dataclass(frozen=True)
class SyncState:
    target_table: str
    cursor: str | None
    synced_at: dt.datetime
    rows_written: int | None
    load_id: str | None


def _state_table(conn: Connection) -> str:
    return quote_identifier(STATE_TABLE)


def ensure_state_table(conn: Connection) -> None:
    run_sql(
        conn,
        f"CREATE TABLE IF NOT EXISTS {_state_table(conn)} ("
        " target_table VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,"
        " cursor_value VARCHAR(255) CHARACTER SET utf8mb4 NULL,"
        " synced_at DATETIME(6) NOT NULL,"
        " rows_written BIGINT NULL,"
        " load_id VARCHAR(64) NULL"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )


def read_state(conn: Connection, target_table: str) -> SyncState | None:
    try:
        row = conn.execute(
            sa.text(
                f"SELECT target_table, cursor_value, synced_at, rows_written, load_id"
                f" FROM {_state_table(conn)} WHERE target_table = :t"
            ),
            {"t": target_table},
        ).one_or_none()
    except sa.exc.ProgrammingError:  # no state table yet: nothing was synced
        return None
    return SyncState(*row) if row else None


def read_cursors(conn: Connection) -> dict[str, str | None]:
    """Every table's stored cursor, by target table (none before the first sync)."""
    try:
        rows = conn.execute(
            sa.text(f"SELECT target_table, cursor_value FROM {_state_table(conn)}")
        ).all()
    except sa.exc.ProgrammingError:  # no state table yet: nothing was synced
        return {}
    return {table: cursor for table, cursor in rows}


def write_state(
    conn: Connection,
    target_table: str,
    cursor: str | None,
    rows_written: int,
    load_id: str | None,
) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO {_state_table(conn)}"
            " (target_table, cursor_value, synced_at, rows_written, load_id)"
            " VALUES (:t, :c, UTC_TIMESTAMP(6), :r, :l)"
            " ON DUPLICATE KEY UPDATE cursor_value = VALUES(cursor_value),"
            " synced_at = VALUES(synced_at), rows_written = VALUES(rows_written),"
            " load_id = VALUES(load_id)"
        ),
        {"t": target_table, "c": cursor, "r": rows_written, "l": load_id},
    )
