"""Idle tables: a run that proves, in one cheap query per side, that neither side of a table
has been written since a run that synced and verified it, and then does nothing.

InnoDB keeps the time of every table's last write (`information_schema.TABLES.UPDATE_TIME`,
whole seconds, kept in memory: NULL after a server restart until the next write). After a run
whose checks all passed, the table's state row keeps its **proof**:

- `idle_read_at`: the source's clock when the run began, before it read anything;
- `idle_target_written`: the target table's `UPDATE_TIME` after the run's last write to it;
- `idle_token`: a digest of the table's configuration and both tables' creation times (a
  changed tables.json entry, or a table dropped and created again, voids the proof);
- `idle_rows`, `idle_verified_at`: the target's rows then, and when that run ended;
- `idle_swept`: rows the rolling verification has compared since neither side was written.

The proof **stands** when, now:

- the source's `UPDATE_TIME` is known and at least `lag_seconds` (plus its one-second grain)
  before `idle_read_at`. InnoDB stamps the table when a transaction commits, but with an
  earlier time (seen on MariaDB 10.11: the transaction's start), so a transaction open across
  the run and committed after it may carry a stamp older than the run's read: it is covered
  exactly as the incremental cursor covers it, by `lag_seconds` (DESIGN.md, "commits late");
- the target's `UPDATE_TIME` is known and still `idle_target_written`;
- the token matches.

While it stands, a run is **quiet**: there is nothing to copy (a full-refresh table is not
copied again), so it only verifies its slice, without counting rows (the counts cannot have
changed), and adds the slice to `idle_swept`. Once the slices have covered the whole table
(`idle_swept` >= `idle_rows`: every row compared after the last write on either side), the
table is **idle**: a run reads and writes nothing and reports the last verification's figures.
Anything else (a write on either side, repairs included, a restart, a changed config, a failed
or partition run, which clear the proof) makes a full run, whose proof starts the count of swept
rows again. What the proof cannot see: a write to the *target* by a transaction left open
across the run that stored it (its stamp predates the observation); it is found by the next
run that has work to do, or by the daily consistency review. The loader leaves rows that
arrive unchanged untouched, so a full run that finds nothing to change writes nothing either.

**A source proof** serves PostgreSQL and DuckDB targets, which keep no write time of a table:
their runs are never idle, but the source's side of the argument holds alone. After a run whose
checks all passed, the state table keeps the source table's rows as the run counted them, the
source's clock when the run began and a token of the configuration and the source table's
creation time. While the source's `UPDATE_TIME` stays at least `lag_seconds` (plus its grain)
before that clock, as above, the table has the same rows, so the next run takes its count from
there and counts only the rows after its cursor (the modifier's index): no `COUNT(*)` of the
whole source table, which at 10M rows is 2 s of the production server every run. The run
still verifies its slice and counts the target, so a change on the target side is found as
before.

This module imports only SQLAlchemy: the CLI proves its tables idle before it imports Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.pipeline.report import SyncReport
from mysqlsync_dagster.verify.outcome import (
    CHECKSUM_MATCH,
    ROW_COUNT_MATCH,
    SOURCE_ROW_COUNT,
    CheckOutcome,
)

# The proof's columns in the state table (`targets/mysql/state.py` adds them to older tables).
PROOF_COLUMNS = {
    "idle_read_at": "DOUBLE NULL",  # source clock, epoch seconds
    "idle_target_written": "DOUBLE NULL",  # target UPDATE_TIME, epoch seconds
    "idle_token": "CHAR(40) NULL",
    "idle_rows": "BIGINT NULL",
    "idle_verified_at": "DATETIME(6) NULL",  # UTC
    "idle_swept": "BIGINT NULL",  # rows compared by the sweep since the proof's first run
}
UPDATE_TIME_GRAIN = 1.0  # UPDATE_TIME is kept in whole seconds


@dataclass(frozen=True)
class TableClock:
    """One table's write time and its server's clock, in epoch seconds of that server."""

    written: float | None  # UPDATE_TIME; None: unknown (restart, or never written)
    now: float
    created: float | None


@dataclass(frozen=True)
class Proof:
    read_at: float
    target_written: float
    token: str
    rows: int | None
    verified_at: dt.datetime
    swept: int = 0

    def covers_table(self, cfg: TableConfig) -> bool:
        """Every row compared since neither side was written (without the checksum there is
        no sweep: the counts were the verification)."""
        if not cfg.checksum:
            return True
        return self.rows is not None and self.swept >= self.rows


@dataclass(frozen=True)
class Idle:
    """A table proven unchanged on both sides since `proof`."""

    proof: Proof
    source: TableClock
    target: TableClock

    @property
    def description(self) -> str:
        return (
            "neither side written since the run that verified it at "
            f"{self.proof.verified_at:%Y-%m-%d %H:%M:%S} UTC (source last written "
            f"{_utc(self.source.written)}, target {_utc(self.target.written)}): nothing to do"
        )

    def report(self, cfg: TableConfig, target_database: str, seconds: float) -> SyncReport:
        """The idle run's report: nothing read or written, the rows as last counted."""
        return SyncReport(
            table=cfg.table,
            target=cfg.target,
            target_database=target_database,
            mode=cfg.mode,
            strategy="idle",
            rows_extracted=0,
            rows_written=0,
            seconds=seconds,
            row_count=self.proof.rows,
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "idle_since": f"{self.proof.verified_at:%Y-%m-%d %H:%M:%S} UTC",
            "source_written_at": _utc(self.source.written),
            "target_written_at": _utc(self.target.written),
        }

    def outcomes(self, cfg: TableConfig) -> list[CheckOutcome]:
        """The idle run's checks: they stand as the run that stored the proof left them (all
        passed), since neither side has been written since."""
        rows = self.proof.rows
        figures = self.metadata()
        counted = f"{rows:,} rows on both sides when verified; " if rows is not None else ""
        outcomes = [
            CheckOutcome(SOURCE_ROW_COUNT, True, f"source table {cfg.table!r}: {self.description}"),
            CheckOutcome(
                ROW_COUNT_MATCH,
                True,
                counted + self.description,
                {
                    **figures,
                    **({"source_rows": rows, "target_rows": rows} if rows is not None else {}),
                },
            ),
        ]
        if cfg.checksum:
            outcomes.append(CheckOutcome(CHECKSUM_MATCH, True, self.description, figures))
        return outcomes


def _utc(epoch: float | None) -> str:
    if epoch is None:
        return "unknown"
    return f"{dt.datetime.fromtimestamp(epoch, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def read_clock(conn: sa.Connection, table: str) -> TableClock | None:
    """The table's UPDATE_TIME and the server's clock (None: no such table)."""
    dialect = conn.dialect
    if not getattr(dialect, "is_mariadb", False) and (dialect.server_version_info or (0,)) >= (8,):
        # MySQL 8 caches information_schema figures for a day by default
        conn.exec_driver_sql("SET SESSION information_schema_stats_expiry = 0")
    row = conn.execute(
        sa.text(
            "SELECT UNIX_TIMESTAMP(UPDATE_TIME), UNIX_TIMESTAMP(NOW(6)),"
            " UNIX_TIMESTAMP(CREATE_TIME) FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
        ),
        {"t": table},
    ).one_or_none()
    if row is None:
        return None
    written, now, created = (None if v is None else float(v) for v in row)
    assert now is not None
    return TableClock(written, now, created)


def token(cfg: TableConfig, source: TableClock, target: TableClock) -> str:
    text = f"{cfg!r}|{source.created}|{target.created}"
    return hashlib.sha1(text.encode()).hexdigest()


def read_proof(conn: sa.Connection, state_table: str, target_table: str) -> Proof | None:
    """The stored proof (None: none, or a state table without its columns yet)."""
    try:
        row = conn.execute(
            sa.text(
                "SELECT idle_read_at, idle_target_written, idle_token, idle_rows,"
                f" idle_verified_at, idle_swept FROM `{state_table}` WHERE target_table = :t"
            ),
            {"t": target_table},
        ).one_or_none()
    except sa.exc.DBAPIError:  # no state table, or one of an earlier version
        conn.rollback()
        return None
    if row is None or row[0] is None or row[1] is None or row[2] is None:
        return None
    return Proof(float(row[0]), float(row[1]), row[2], row[3], row[4], int(row[5] or 0))


def standing(
    cfg: TableConfig, proof: Proof | None, source: TableClock | None, target: TableClock | None
) -> bool:
    """Neither side written since `proof` (see the module's docstring)."""
    if proof is None or source is None or target is None:
        return False
    if source.written is None or target.written is None:
        return False
    if proof.token != token(cfg, source, target):
        return False
    if source.written + UPDATE_TIME_GRAIN > proof.read_at - cfg.lag_seconds:
        return False
    return target.written == proof.target_written


@dataclass(frozen=True)
class SourceProof:
    """The source table's rows as a run counted them, and the source's clock when that run
    began (see the module's docstring)."""

    read_at: float
    token: str
    rows: int


def source_token(cfg: TableConfig, source: TableClock) -> str:
    return hashlib.sha1(f"{cfg!r}|{source.created}|source rows".encode()).hexdigest()


def source_standing(cfg: TableConfig, proof: SourceProof | None, source: TableClock) -> bool:
    """The source not written since `proof`'s run began."""
    if proof is None or source.written is None or proof.token != source_token(cfg, source):
        return False
    return source.written + UPDATE_TIME_GRAIN <= proof.read_at - cfg.lag_seconds


@dataclass(frozen=True)
class Probe:
    """What a run learns before it starts: whether it is idle, the proof that still stands
    (its counts hold, its swept rows add up), and the source's clock (the `read_at` of the
    proof the run will store)."""

    idle: Idle | None = None
    standing: Proof | None = None
    source: TableClock | None = None
    target: TableClock | None = None  # the target's, when the run began
    source_rows: int | None = None  # the source's rows, by a source proof that stands


def probe_source(cfg: TableConfig, source: sa.Engine, stored: SourceProof | None) -> Probe:
    """A PostgreSQL or DuckDB target's probe: the source's clock, and its rows if `stored`
    (the table's source proof) stands."""
    with source.connect() as conn:
        clock = read_clock(conn, cfg.table)
    if clock is None:
        return Probe()
    rows = stored.rows if source_standing(cfg, stored, clock) else None
    return Probe(source=clock, source_rows=rows)


def probe(cfg: TableConfig, source: sa.Engine, target: sa.Engine, state_table: str) -> Probe:
    if cfg.partitions != "none":
        return Probe()
    with source.connect() as conn:
        source_clock = read_clock(conn, cfg.table)
    with target.connect() as conn:
        target_clock = read_clock(conn, cfg.target)
        proof = read_proof(conn, state_table, cfg.target) if target_clock else None
    if proof is None or not standing(cfg, proof, source_clock, target_clock):
        return Probe(source=source_clock, target=target_clock)
    assert source_clock is not None and target_clock is not None
    found = Idle(proof, source_clock, target_clock) if proof.covers_table(cfg) else None
    return Probe(found, proof, source_clock, target_clock)


def record(
    conn: sa.Connection,
    state_table: str,
    cfg: TableConfig,
    source: TableClock,
    rows: int | None,
    slice_rows: int,
    previous: Proof | None = None,
    began: TableClock | None = None,
) -> bool:
    """After a run whose checks all passed (its writes committed): store its proof. False when
    the target's write time is unknown.

    The rows swept since the proof's observation: `previous`'s (the proof that stood when the
    run began) plus this run's `slice_rows`, as long as the target's write time has not moved;
    otherwise (a run the proof did not stand for, whose slice came before its own writes were
    observed, or repairs, or someone else's write during the run) the count starts anew.

    A write by someone else later in the second of the target's last write leaves the write
    time as it is (whole seconds). So a slice counts only when its run began (`began`, the
    target's clock then) after that second: the slices that must cover the table before it
    idles then all compare the table as such a write left it. (Runs a second or less apart,
    as in tests, are the ones this holds back.)"""
    target = read_clock(conn, cfg.target)
    if target is None or target.written is None:
        return False
    swept = swept_rows(previous, target.written, began, slice_rows)
    conn.execute(
        sa.text(
            f"UPDATE `{state_table}` SET idle_read_at = :r, idle_target_written = :w,"
            " idle_token = :k, idle_rows = :n, idle_verified_at = UTC_TIMESTAMP(6),"
            " idle_swept = :s WHERE target_table = :t"
        ),
        {
            "t": cfg.target,
            "r": source.now,
            "w": target.written,
            "k": token(cfg, source, target),
            "n": rows,
            "s": swept,
        },
    )
    return True


def swept_rows(
    previous: Proof | None, written: float, began: TableClock | None, slice_rows: int
) -> int:
    """The rows compared since neither side was written (`record`): `previous`'s and this
    run's slice while the target's write time `written` has not moved, the slice only when
    the run began after that write's second."""
    if previous is None or written != previous.target_written:
        return 0
    after = began is not None and began.now >= written + UPDATE_TIME_GRAIN
    return previous.swept + (slice_rows if after else 0)


def clear(conn: sa.Connection, state_table: str, target_table: str) -> None:
    """Void the table's proof: a run that is not idle clears it before it writes."""
    if not conn.execute(
        sa.text(
            "SELECT 1 FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
        ),
        {"t": state_table},
    ).first():
        return  # no state table yet: nothing was synced, nothing to void
    conn.execute(
        sa.text(
            f"UPDATE `{state_table}` SET idle_read_at = NULL, idle_token = NULL"
            " WHERE target_table = :t"
        ),
        {"t": target_table},
    )
