"""Per-table sync state, kept in the target database next to the data it describes.

The incremental cursor is written only after every batch of a run has been loaded, so a run
that dies part-way leaves the old cursor and the next run re-reads (and idempotently re-upserts)
from there: the target converges, nothing is skipped.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mysqlsync_dagster.db import quote_identifier, run_sql
from mysqlsync_dagster.targets.base import SweepState
from mysqlsync_dagster.verify.idle import PROOF_COLUMNS

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


# The rolling verification's place (verify/heal.py), added to state tables of earlier versions.
_SWEEP_COLUMNS = {
    "sweep_position": "TEXT CHARACTER SET utf8mb4 NULL",  # the key it resumes after (JSON)
    "sweep_started_at": "DATETIME(6) NULL",  # when the sweep under way began
    "sweep_runs": "INT NULL",  # runs of the sweep under way so far
    "last_sweep_started_at": "DATETIME(6) NULL",  # when the last complete sweep began
    "last_sweep_runs": "INT NULL",  # runs the last complete sweep took
    "kept_deleted": "BIGINT NULL",  # target rows kept although deleted in the source
}
# Columns added since the first state table: the sweep's, and the idle proof's (verify/idle.py).
_ADDED_COLUMNS = _SWEEP_COLUMNS | PROOF_COLUMNS


def ensure_state_table(conn: Connection) -> None:
    run_sql(
        conn,
        f"CREATE TABLE IF NOT EXISTS {_state_table(conn)} ("
        " target_table VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,"
        " cursor_value VARCHAR(255) CHARACTER SET utf8mb4 NULL,"
        " synced_at DATETIME(6) NOT NULL,"
        " rows_written BIGINT NULL,"
        " load_id VARCHAR(64) NULL,"
        + ", ".join(f" {name} {ddl}" for name, ddl in _ADDED_COLUMNS.items())
        + ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    present = set(
        conn.execute(
            sa.text(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
            ),
            {"t": STATE_TABLE},
        ).scalars()
    )
    missing = [f"ADD COLUMN {n} {ddl}" for n, ddl in _ADDED_COLUMNS.items() if n not in present]
    if missing:
        run_sql(conn, f"ALTER TABLE {_state_table(conn)} {', '.join(missing)}")


def encode_key(key: tuple[Any, ...] | None) -> str | None:
    """A key as JSON that decodes to values that compare the same in SQL."""
    if key is None:
        return None
    out: list[Any] = []
    for value in key:
        if isinstance(value, bytes):
            out.append({"hex": value.hex()})
        elif isinstance(value, dt.datetime):
            out.append({"datetime": value.isoformat()})
        elif isinstance(value, dt.date):
            out.append({"date": value.isoformat()})
        elif isinstance(value, dt.timedelta):
            out.append({"seconds": value.total_seconds()})
        elif isinstance(value, Decimal):
            out.append({"decimal": str(value)})
        else:
            out.append(value)
    return json.dumps(out)


def decode_key(text: str | None) -> tuple[Any, ...] | None:
    if not text:
        return None
    decoders = {
        "hex": bytes.fromhex,
        "datetime": dt.datetime.fromisoformat,
        "date": dt.date.fromisoformat,
        "seconds": lambda s: dt.timedelta(seconds=s),
        "decimal": Decimal,
    }
    values = []
    for value in json.loads(text):
        if isinstance(value, dict):
            [(kind, raw)] = value.items()
            value = decoders[kind](raw)
        values.append(value)
    return tuple(values)


def read_sweep(conn: Connection, target_table: str) -> SweepState:
    row = conn.execute(
        sa.text(f"SELECT {SWEEP_SELECT} FROM {_state_table(conn)} WHERE target_table = :t"),
        {"t": target_table},
    ).one_or_none()
    return sweep_from_row(row)


# the sweep's columns, as `read_sweep` selects them and `write_sweep` sets them
SWEEP_SELECT = (
    "sweep_position, sweep_started_at, sweep_runs, last_sweep_started_at, last_sweep_runs,"
    " kept_deleted"
)
SWEEP_SET = (
    "sweep_position = :p, sweep_started_at = :s, sweep_runs = :r, last_sweep_started_at = :ls,"
    " last_sweep_runs = :lr, kept_deleted = :k"
)


def sweep_from_row(row: Any) -> SweepState:
    """The sweep of a state row (`SWEEP_SELECT`'s columns); none stored: from the start."""
    if row is None:
        return SweepState()
    return SweepState(
        decode_key(row[0]), row[1], int(row[2] or 0), row[3], row[4], int(row[5] or 0)
    )


def sweep_parameters(target_table: str, sweep: SweepState) -> dict[str, Any]:
    """The parameters of `SWEEP_SET` (and `:t`, the table) for `sweep`."""
    return {
        "t": target_table,
        "p": encode_key(sweep.position),
        "s": sweep.started_at,
        "r": sweep.runs,
        "ls": sweep.last_started_at,
        "lr": sweep.last_runs,
        "k": sweep.kept,
    }


def write_sweep(conn: Connection, target_table: str, sweep: SweepState) -> None:
    """Store the sweep's place (the table's state row exists: a sync wrote it)."""
    conn.execute(
        sa.text(f"UPDATE {_state_table(conn)} SET {SWEEP_SET} WHERE target_table = :t"),
        sweep_parameters(target_table, sweep),
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
