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
from mysqlsync_dagster.verify.idle import SourceProof

# The source proof's columns (`verify/idle.py`), added to state tables made before them
SOURCE_PROOF_COLUMNS = {"source_read_at": "float8", "source_token": "text", "source_rows": "bigint"}
SOURCE_PROOF_DDL = ", ".join(f"{name} {kind}" for name, kind in SOURCE_PROOF_COLUMNS.items())


def _table(schema: str) -> str:
    return qualified(schema, STATE_TABLE)


def _exists(conn: Connection, schema: str, column: str | None = None) -> bool:
    """The state table exists (with `column`, if given)."""
    where = "table_schema = :s AND table_name = :t" + (" AND column_name = :c" if column else "")
    catalog = "columns" if column else "tables"
    found = conn.execute(
        sa.text(f"SELECT count(*) FROM information_schema.{catalog} WHERE {where}"),
        {"s": schema, "t": STATE_TABLE, "c": column},
    ).scalar_one()
    return found > 0


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
        " kept_deleted bigint,"
        f" {SOURCE_PROOF_DDL})"
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


def read_source_proof(conn: Connection, schema: str, target_table: str) -> SourceProof | None:
    """The table's source proof (None: none stored, or a state table without its columns)."""
    if not _has_source_proof(conn, schema):  # no state table, or one made before the proof
        return None
    row = conn.execute(
        sa.text(
            "SELECT source_read_at, source_token, source_rows"
            f" FROM {_table(schema)} WHERE target_table = :t"
        ),
        {"t": target_table},
    ).one_or_none()
    if row is None or None in tuple(row):
        return None
    return SourceProof(float(row[0]), str(row[1]), int(row[2]))


def write_source_proof(
    conn: Connection, schema: str, target_table: str, proof: SourceProof
) -> None:
    if not _has_source_proof(conn, schema):
        for name, kind in SOURCE_PROOF_COLUMNS.items():
            conn.exec_driver_sql(
                f"ALTER TABLE {_table(schema)} ADD COLUMN IF NOT EXISTS {name} {kind}"
            )
    conn.execute(
        sa.text(
            f"UPDATE {_table(schema)} SET source_read_at = :r, source_token = :k,"
            " source_rows = :n WHERE target_table = :t"
        ),
        {"t": target_table, "r": proof.read_at, "k": proof.token, "n": proof.rows},
    )


def _has_source_proof(conn: Connection, schema: str) -> bool:
    return _exists(conn, schema, "source_rows")


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

    def read_source_proof(self, table: str) -> SourceProof | None:
        with self.engine.connect() as conn:
            return read_source_proof(conn, self.schema, table)

    def write_source_proof(self, table: str, proof: SourceProof) -> None:
        with self.engine.begin() as conn:
            write_source_proof(conn, self.schema, table, proof)

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
