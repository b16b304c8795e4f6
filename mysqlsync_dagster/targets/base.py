"""What a table run needs from the database it copies into: the `Target` interface.

The pipeline (`pipeline/run.py`) and the checks talk to a target only through this interface, so
that a PostgreSQL or DuckDB target slots in beside MySQL/MariaDB (`targets/mysql/`) without
touching them. A target mirrors the source's schema, bulk-loads the run's parts into a work table
and merges or swaps it in, keeps the sync state in the same database as the data it describes,
serialises the runs of one table with a lock, and counts its rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # annotations only: the state module (and the CLI) need no pyarrow
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    import sqlalchemy as sa

    from mysqlsync_dagster.catalog import Column, TableShape
    from mysqlsync_dagster.pipeline.parts import Part
    from mysqlsync_dagster.pipeline.wire import WireColumn

Strategy = Literal["upsert", "swap"]


@dataclass
class SweepState:
    """Where the rolling verification of one table stands."""

    position: tuple[Any, ...] | None = None  # resume after this key; None: from the start
    started_at: dt.datetime | None = None
    runs: int = 0
    last_started_at: dt.datetime | None = None  # when the last complete sweep began
    last_runs: int | None = None
    kept: int = 0  # target rows whose key the source no longer has, kept (detect_deletes off)


def log_schema_changes(log: logging.Logger, table: str, changes: SchemaReport) -> None:
    """What `Target.mirror` changed, or the columns the source dropped (kept)."""
    if changes.added or changes.modified:
        log.info(
            "%s: schema evolved: added %s, changed %s, dropped in source (kept) %s",
            table,
            list(changes.added),
            list(changes.modified),
            list(changes.dropped_in_source),
        )
    elif changes.dropped_in_source:
        log.warning(
            "%s: columns %s no longer exist in the source; kept in the target",
            table,
            list(changes.dropped_in_source),
        )


class LoadsInFlight:
    """Batches loaded on up to `load_streams` connections at once (each load in a transaction
    of its own) while the caller converts the next one: MySQL's LOAD DATA and PostgreSQL's COPY
    into bulk-only work tables. Without streams (`_start_streams` not called, or 1), each load
    runs at once, in order."""

    load_streams: int
    _pool: ThreadPoolExecutor | None
    _pending: deque[Future[None]]

    def _start_streams(self, streams: int, name: str) -> None:
        if streams > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(streams, name)

    def _submit(self, load: Callable[..., None], *args: Any) -> None:
        if self._pool is None:
            load(*args)
            return
        while len(self._pending) >= self.load_streams:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(load, *args))

    def drain(self) -> None:
        """Wait for the loads in flight; the first failure is raised."""
        while self._pending:
            self._pending.popleft().result()

    def _close_pool(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None
        self._pending.clear()


class SyncState(Protocol):
    cursor: str | None


class SchemaReport(Protocol):
    added: tuple[str, ...]
    modified: tuple[str, ...]
    dropped_in_source: tuple[str, ...]


class LoadStats(Protocol):
    rows: int
    batches: int
    files: int
    zero_dates: int
    csv_bytes: int
    load_id: str | None
    merge_ranges: int
    warnings: list[str]
    nullable: set[str]


class Loader(Protocol):
    """Loads the parts of one run into one table (see `targets/mysql/loader.py`)."""

    strategy: Strategy
    stats: LoadStats

    def prepare(self) -> None:
        """Create the empty work table (dropping leftovers of a run that died)."""

    def load_part(self, part: Part, load_id: str) -> None:
        """Load one part; rows are committed in order, possibly after this returns."""

    def merge(self) -> int:
        """Merge what was loaded into the live table (upsert); returns the ranges merged."""

    def discard(self) -> None:
        """Drop the work tables of a failed run."""


class Lock(Protocol):
    def release(self) -> None: ...


class Target(Protocol):
    engine: sa.Engine
    kind: str  # "mysql", "postgresql" or "duckdb"

    @property
    def database(self) -> str: ...

    @property
    def schema(self) -> str:
        """The schema the tables are in (MySQL: the database)."""

    def quote(self, name: str) -> str: ...

    def qualified(self, table: str) -> str:
        """`table` quoted and qualified by its schema."""

    def copied_columns(self, shape: TableShape) -> list[Column]:
        """The source columns whose values are copied."""

    def wire(self, columns: Sequence[Column], *, native: bool = True) -> list[WireColumn]:
        """How each column is selected on the source for this target (`pipeline/wire.py`).
        `native`: the source is read by connectorx, whose Arrow arrays a target may take in
        their own type; False for dlt's pyarrow backend over PyMySQL (a source with a client
        certificate), whose arrays are inferred from Python values: text only."""

    def column_names(self, table: str) -> list[str] | None:
        """The target table's columns; None when it does not exist."""

    def mirror(
        self, source: TableShape, table: str, primary_key: Sequence[str], log: logging.Logger
    ) -> SchemaReport | None:
        """Create `table` like `source` (returns None) or evolve it (returns what changed)."""

    def lock(self, table: str, wait_seconds: int) -> Lock | None:
        """The table's run lock, or None when another run holds it."""

    def read_state(self, table: str) -> SyncState | None: ...

    def stored_state(self, table: str) -> SyncState | None:
        """`read_state` without creating or upgrading the state table (the read-only checks)."""

    def loader(
        self,
        table: str,
        wire: list[WireColumn],
        strategy: Strategy,
        *,
        batch_size: int,
        work_dir: Path,
        primary_key: tuple[str, ...],
        merge_each_part: bool,
    ) -> Loader: ...

    def commit(
        self,
        loader: Loader,
        table: str,
        cursor: str | None,
        record_state: bool,
        also: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        """Swap or finish the load, run `also` (more writes of the run) and, when
        `record_state`, store the sync state (`cursor`, rows, load id), all in one
        transaction: the state never runs ahead of the data."""

    def read_sweep(self, table: str) -> SweepState:
        """Where the rolling verification of `table` stands (verify/heal.py)."""

    def write_sweep(self, table: str, sweep: SweepState) -> None: ...

    def row_count(self, table: str) -> int: ...
