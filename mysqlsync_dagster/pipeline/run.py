"""One table's run: check the source, mirror the schema, extract and load at once, commit.

`TableSync` is a context manager used by the table asset, the same in both modes:

    with TableSync(cfg, source, source_engine, target, log) as sync:  # validate, mirror, lock
        report = sync.run(parts, load_id)                   # extract, load, merge, commit

Extraction is the table's dlt `sql_table` resource (`extract.py`), iterated in a thread that
hands its Arrow batches to a part sink (`parts.py`): in memory for direct mode, Parquet files
kept on disk for staging mode (`staging.py`). The target's loader takes each part as soon as
it is ready, while the next ones are read; then an upsert is merged (direct mode merges each
batch as it comes; staging mode merges the whole stage by primary-key ranges), or the copy
built aside is swapped in, and the incremental cursor is stored in the same transaction. The
loader stamps `_dlt_load_id` (the load's id, one value per run) and `_dlt_id` (made in bulk).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from mysqlsync_dagster.catalog import (
    TableFacts,
    TableShape,
    key_violations,
    modifier_maximum,
    oldest_transaction_start,
    preflight,
    read_table_facts,
    shape_from_facts,
)
from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.db import connect, key_in
from mysqlsync_dagster.errors import BinlogPurged, SchemaError, SourceRestarted, TableBusy
from mysqlsync_dagster.pipeline import binlog
from mysqlsync_dagster.pipeline.binlog import Batch, CaptureStats, Position
from mysqlsync_dagster.pipeline.extract import (
    backend_name,
    extract_batch_rows,
    read_stream,
    table_resource,
)
from mysqlsync_dagster.pipeline.parts import (
    Extraction,
    ExtractionProgress,
    PartSink,
    as_table,
    new_load_id,
    use_jemalloc,
)
from mysqlsync_dagster.pipeline.report import SyncReport
from mysqlsync_dagster.pipeline.source_stream import SourceStream, give_back, take
from mysqlsync_dagster.pipeline.windows import (
    ModifierWindow,
    changed_since,
    earliest_cursor,
    window_condition,
)
from mysqlsync_dagster.pipeline.wire import WireColumn
from mysqlsync_dagster.settings import BINLOG_SERVER_ID, DatabaseSettings
from mysqlsync_dagster.targets.base import Loader, Lock, SchemaReport, Strategy, Target

if TYPE_CHECKING:  # imported where rows move: a run that reads none never imports pyarrow
    import pyarrow as pa

# Keys per SELECT (copying rows by key) and per DELETE: an IN list this long stays well
# within max_allowed_packet and PostgreSQL's parameter limit.
KEYS_PER_QUERY = 5_000
# An incremental run whose rows from the cursor on are at most this many compares them on both
# sides before reading them (`TableSync._nothing_new`): rows already copied are not read again.
NOTHING_NEW_ROWS = 1_000
# A binlog run that follows the binlog (`BINLOG_FOLLOW_SECONDS`) looks at its end this often.
FOLLOW_POLL_SECONDS = 0.25


class _NoRows:
    """The loader of a commit that copies no rows (deletes or the position alone)."""

    strategy: Strategy = "upsert"

    def __init__(self) -> None:
        self.stats = SimpleNamespace(rows=0, load_id=None)  # what the targets' commits read

    def finish(self, conn: sa.Connection) -> None:
        pass


def _key_literal(value: Any) -> Any:
    """A key value for a query that is sent as text (connectorx): bytes as a hex literal,
    which SQLAlchemy cannot render itself; anything else as it is."""
    if isinstance(value, bytes):
        return sa.literal_column(f"X'{value.hex()}'")
    return value


class TableSync:
    def __init__(
        self,
        cfg: TableConfig,
        source_settings: DatabaseSettings,
        source_engine: sa.Engine,
        target: Target,
        log: logging.Logger | None = None,
        work_root: str | None = None,
        window: ModifierWindow | None = None,
        lock_wait_seconds: int = 0,
        timezone: str = "UTC",
        binlog_server_id: int = BINLOG_SERVER_ID,
        resnapshot: bool = False,
        follow_seconds: float = 0.0,
        source_stream: SourceStream | None = None,
        arrow_memory_pool: str | None = None,
    ) -> None:
        """`window`: a partition run; upsert only the rows whose modifier falls in it, never
        swap the table, never read or write the incremental cursor (stateless). `timezone`:
        `SOURCE_TIMEZONE`, the zone of naive DATETIME modifiers. A binlog table (not in a
        partition run) follows the binlog (`pipeline/binlog.py`): `binlog_server_id` is
        `BINLOG_SERVER_ID`, `resnapshot` `BINLOG_RESNAPSHOT`, `follow_seconds`
        `BINLOG_FOLLOW_SECONDS`. `source_stream`: the source reader, if the run started it
        already (its start-up then overlaps the run's own); else one is started here.
        `arrow_memory_pool`: `ARROW_DEFAULT_MEMORY_POOL` (see `use_jemalloc`)."""
        self.cfg = cfg
        self.timezone = timezone
        self.window = window
        self.lock_wait_seconds = lock_wait_seconds
        self.source_settings = source_settings
        self.source_engine = source_engine
        self.source_db = source_settings.database
        self.target = target
        self.log = log or logging.getLogger("mysqlsync_dagster")
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"mysqlsync-{cfg.key}-", dir=work_root))
        self._lock: Lock | None = None
        self._source_stream = source_stream
        self.arrow_memory_pool = arrow_memory_pool
        self._started = time.perf_counter()
        self.shape: TableShape | None = None
        self.wire: list[WireColumn] = []
        self.loader: Loader | None = None
        self.cursor_before: str | None = None
        self.cursor_snapshot: str | None = None
        self.schema_changes: SchemaReport | None = None
        self.source_rows_estimate: int | None = None
        self.extract_batch_rows = cfg.batch_size
        self.warnings: list[str] = []  # allowed, but worth a user's attention
        self.load_id: str | None = None
        # change capture: from the stored position (an apply run), or a snapshot taken at
        # `snapshot_at` and then the events after it
        self.capture = cfg.binlog and window is None
        self.binlog_server_id = binlog_server_id
        self.resnapshot = resnapshot
        self.follow_seconds = follow_seconds
        self.position_before: Position | None = None
        self.snapshot_at: Position | None = None
        # an incremental run with nothing to read (`_nothing_new`): no loader, no extraction
        self.unchanged = False

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> TableSync:
        try:
            self.prepare()
        except BaseException:
            self._cleanup(failed=True)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._cleanup(failed=exc_type is not None)

    @property
    def applies_events(self) -> bool:
        """A binlog table's run from its stored position: events only, nothing extracted."""
        return self.position_before is not None

    @property
    def strategy(self) -> Strategy:
        if self.applies_events or self.unchanged:
            return "upsert"
        assert self.loader is not None
        return self.loader.strategy

    @property
    def cursor_after(self) -> str | None:
        """The cursor a committed run stores: the source's modifier maximum read before
        extracting (or the old cursor when the table is empty); a binlog table's snapshot:
        the snapshot's binlog position."""
        if self.snapshot_at is not None:
            return str(self.snapshot_at)
        return (self.cursor_snapshot or self.cursor_before) if self.cfg.incremental else None

    def wire_of(self, shape: TableShape) -> list[WireColumn]:
        """How the table's columns travel: in their own type only where connectorx reads them
        (dlt's pyarrow backend infers Arrow types from Python values: BIGINT UNSIGNED max
        overflows its int64), as text otherwise."""
        columns = self.target.copied_columns(shape)
        return self.target.wire(columns, native=backend_name(self.source_settings) == "connectorx")

    def prepare(self) -> None:
        cfg = self.cfg
        if backend_name(self.source_settings) == "connectorx":  # start-up overlaps preparing
            self._reader()
        with connect(self.source_engine, "source", self.source_settings) as conn:
            [facts] = read_table_facts(conn, self.source_db, [cfg.table]).values()
            self._validate(facts, conn)
            shape = shape_from_facts(conn, self.source_db, facts, cfg.table)
            row_bytes = facts.avg_row_length
            self.source_rows_estimate = facts.rows
            self.extract_batch_rows = extract_batch_rows(cfg.batch_size, row_bytes)
            # worth saying only when the table needs more than one batch
            if self.extract_batch_rows < min(cfg.batch_size, facts.rows or 0):
                self.log.info(
                    "%s: rows of ~%s bytes: extracting %s rows a batch (batch_size %s)",
                    cfg.table,
                    row_bytes,
                    f"{self.extract_batch_rows:,}",
                    f"{cfg.batch_size:,}",
                )
        self.shape = shape
        self.wire = self.wire_of(shape)
        self._lock = self.target.lock(cfg.target, self.lock_wait_seconds)
        if self._lock is None:
            raise TableBusy(
                f"table {cfg.table!r}: another sync of target table {cfg.target!r} "
                "is running; this run did nothing"
            )
        self.schema_changes = self.target.mirror(shape, cfg.target, cfg.primary_key, self.log)
        if self.capture:
            self._prepare_capture()
            if self.applies_events:
                self.log.info("%s: applying binlog events from %s", cfg.table, self.cursor_before)
                return
        elif self.window is None:
            state = self.target.read_state(cfg.target)
            self.cursor_before = state.cursor if state and cfg.incremental else None
            if self.schema_changes is None and self.cursor_before is not None:
                # the table was dropped or lost since its last sync: rows before the cursor
                # would never come back, so copy it whole
                self._warn(
                    f"table {cfg.table!r}: target table {cfg.target!r} was missing although"
                    f" a sync had reached cursor {self.cursor_before}: copied in full"
                )
                self.cursor_before = None
        windowed = self.window is not None or self.cursor_before is not None
        strategy: Strategy = "upsert" if windowed else "swap"
        if cfg.incremental and self.window is None:
            self.cursor_snapshot = self._source_max_modifier()
            if self._nothing_new():
                self.unchanged = True
                if self._source_stream is not None and self._source_stream.served:
                    give_back(self._source_stream)  # warm: it waits for the next run
                elif self._source_stream is not None:
                    # still starting up, perhaps: that would only take CPU from the
                    # verification (a repair takes another)
                    self._source_stream.close()
                self._source_stream = None
                self.log.info(
                    "%s: the rows from cursor %s on are already copied: nothing to read",
                    cfg.table,
                    self.cursor_before,
                )
                return
        self.loader = self.target.loader(
            cfg.target,
            self.wire,
            strategy,
            batch_size=cfg.batch_size,
            work_dir=self.work_dir,
            primary_key=tuple(cfg.primary_key),
            # staging mode loads every part into the stage first, then merges by key range
            merge_each_part=cfg.mode != "staging",
        )
        self.loader.prepare()
        if self.window is not None:
            self.log.info("%s: upsert of window %s", cfg.table, self.window.describe())
            return
        if self.capture:
            with self.source_engine.connect() as conn:
                self.snapshot_at = binlog.snapshot_position(conn)
            self.log.info(
                "%s: snapshot from binlog position %s, built aside", cfg.table, self.snapshot_at
            )
            return
        self.log.info(
            "%s: %s from %s, cursor %s",
            cfg.table,
            "incremental upsert" if strategy == "upsert" else "full copy built aside",
            "the last sync" if self.cursor_before else "the start",
            self.cursor_before,
        )

    def _nothing_new(self) -> bool:
        """Would this incremental run read only rows the target already holds as they are?
        It re-reads every row from the stored cursor on (the rows at the cursor, those held
        back by `lag_seconds`, and NULL modifiers): when those are few (`NOTHING_NEW_ROWS`)
        and the verification's digest finds them the same on both sides, there is nothing to
        copy. The run then reads and writes nothing, stores the new cursor, and goes on to its
        verification (which mends a row changed without its modifier, say). Not after a
        schema change: the target's new columns are filled by reading."""
        changes = self.schema_changes
        cfg = self.cfg
        if self.cursor_before is None or changes is None or changes.added or changes.modified:
            return False
        assert self.shape is not None and cfg.modifier is not None
        table = sa.table(cfg.table, sa.column(cfg.modifier), schema=self.source_db)
        data_type = self.shape.column(cfg.modifier).data_type
        window = changed_since(table.c[cfg.modifier], data_type, self.cursor_before)
        rows = sa.select(sa.literal(1)).select_from(table).where(window)
        bounded = rows.limit(NOTHING_NEW_ROWS + 1).subquery()
        with self.source_engine.connect() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(bounded)).scalar_one() > (
                NOTHING_NEW_ROWS
            ):
                return False
        from mysqlsync_dagster.verify.compare import KeyRange, TablePair

        pair = TablePair(
            cfg=cfg,
            source_engine=self.source_engine,
            target_engine=self.target.engine,
            shape=self.shape,
            key_columns=self.shape.primary_key or tuple(cfg.primary_key),
            since=self.cursor_before,  # the rows the run would read, nothing else
            target=self.target,
        )
        source, target, _ = pair.digests(KeyRange())
        return source == target

    def _validate(self, facts: TableFacts, conn: sa.Connection) -> None:
        """The preflight rules (`catalog.preflight`): a failed one stops the run with its
        message; a warning that is not mere advice is kept as the run's warning."""
        cfg = self.cfg
        for finding in preflight(cfg, facts, self.source_db, windowed=self.window is not None):
            message = finding.message
            if not message.startswith(f"table {cfg.table!r}"):
                message = f"table {cfg.table!r}: {message}"
            if finding.status == "fail":
                if finding.check == "exists":
                    message += " (check 'table' in tables.json)"
                raise SchemaError(message)
            if finding.status == "warn" and not finding.advice:
                self._warn(message)
        if not facts.primary_key and not facts.unique_index_on(cfg.primary_key):
            self._check_key_is_unique(conn)

    def _prepare_capture(self) -> None:
        """A binlog table: where its sync stands (`position_before`), or None for a snapshot
        (never synced; the target table lost; the binlog purged with `BINLOG_RESNAPSHOT`)."""
        cfg = self.cfg
        state = self.target.read_state(cfg.target)
        stored = Position.parse(state.cursor if state else None)
        if stored is not None and self.schema_changes is None:
            self._warn(
                f"table {cfg.table!r}: target table {cfg.target!r} was missing although a sync"
                f" had reached binlog position {stored}: copied anew from a snapshot"
            )
            stored = None
        with self.source_engine.connect() as conn:
            binlog.check_readable(conn, cfg.table)
            try:
                if stored is not None:
                    binlog.check_available(conn, cfg.table, stored)
            except BinlogPurged as purged:
                if not self.resnapshot:
                    raise
                self._warn(f"{purged}: copied anew (BINLOG_RESNAPSHOT)")
                stored = None
        self.position_before = stored
        self.cursor_before = str(stored) if stored is not None else None

    def _check_key_is_unique(self, conn: sa.Connection) -> None:
        """A source without a primary key or unique index: the configured key must really
        identify rows (checked on the rows themselves)."""
        cfg = self.cfg
        duplicates, nulls = key_violations(conn, self.source_db, cfg.table, cfg.primary_key)
        problems = []
        if duplicates:
            examples = "; ".join(
                ", ".join(f"{c}={v!r}" for c, v in zip(cfg.primary_key, row, strict=False))
                + f" ({row[-1]} rows)"
                for row in duplicates
            )
            problems.append(f"these key values occur more than once: {examples}")
        if nulls:
            problems.append(f"{nulls} rows have a NULL key column")
        if problems:
            raise SchemaError(
                f"table {cfg.table!r}: primary_key {list(cfg.primary_key)} does not identify "
                f"rows in the source (it has no primary key): {'; '.join(problems)}. Rows with "
                "the same key would be merged into one: configure columns that are unique"
            )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log.warning(message)

    def _source_max_modifier(self) -> str | None:
        """The cursor this run will store: the modifier's maximum, read before extracting;
        held back to the start of the oldest transaction still open on the source, whose rows
        may commit after this read with an older modifier (a late commit)."""
        assert self.shape is not None and self.cfg.modifier is not None
        table = sa.table(self.cfg.table, sa.column(self.cfg.modifier), schema=self.source_db)
        data_type = self.shape.column(self.cfg.modifier).data_type
        latest = modifier_maximum(table.c[self.cfg.modifier], data_type)
        with self.source_engine.connect() as conn:
            started = oldest_transaction_start(conn)
            now = conn.execute(sa.select(sa.func.utc_timestamp(6))).scalar_one()
            maximum = conn.execute(sa.select(latest).select_from(table)).scalar()
        # rows stamped less than `lag_seconds` before this read may still commit after it
        settled = now.replace(tzinfo=dt.UTC) - dt.timedelta(seconds=self.cfg.lag_seconds)
        held = earliest_cursor(data_type, maximum, settled, self.timezone)
        if started is not None:
            held = earliest_cursor(data_type, held, started, self.timezone)
            if held != earliest_cursor(data_type, maximum, settled, self.timezone):
                self.log.info(
                    "%s: a transaction open since %s UTC on the source may still commit older"
                    " rows: cursor held at %s (not %s)",
                    self.cfg.table,
                    started.strftime("%Y-%m-%d %H:%M:%S"),
                    held,
                    maximum,
                )
        return held

    # -- extraction ------------------------------------------------------------------
    def query(self, keys: Sequence[tuple[Any, ...]] | None = None) -> sa.Select[Any]:
        """The wire SELECT of this run's rows (`keys`: of these primary keys only)."""
        assert self.shape is not None
        source = sa.table(
            self.cfg.table, *[sa.column(c) for c in self.shape.column_names], schema=self.source_db
        )
        query = sa.select(*[w.select_expression() for w in self.wire]).select_from(source)
        if keys is not None:
            columns = [source.c[c] for c in self.shape.primary_key or self.cfg.primary_key]
            literal = [tuple(map(_key_literal, key)) for key in keys]
            if len(columns) == 1:
                return query.where(columns[0].in_([k[0] for k in literal]))
            return query.where(sa.tuple_(*columns).in_([sa.tuple_(*k) for k in literal]))
        if self.window is not None:
            assert self.cfg.modifier is not None
            data_type = self.shape.column(self.cfg.modifier).data_type
            query = query.where(
                window_condition(source.c[self.cfg.modifier], data_type, self.window)
            )
        elif self.strategy == "upsert" and self.cfg.modifier is not None:
            assert self.read_from is not None
            data_type = self.shape.column(self.cfg.modifier).data_type
            query = query.where(
                changed_since(source.c[self.cfg.modifier], data_type, self.read_from)
            )
        return query

    @property
    def read_from(self) -> str | None:
        """Where an incremental read starts: the stored cursor (closed bound), which the run
        that stored it held back below `lag_seconds` before its own read."""
        return self.cursor_before

    def batches(self) -> Iterator[pa.Table | pa.RecordBatch]:
        """The rows of `query()` in Arrow batches, from the table's dlt resource."""
        return self.read(self.query())

    def read(self, query: sa.Select[Any]) -> Iterator[pa.Table | pa.RecordBatch]:
        """The rows of `query` (a wire SELECT) in Arrow batches, from the table's dlt resource:
        run by the source reader on dlt's connectorx backend, or here on its pyarrow backend
        (`extract.backend_name`)."""
        if backend_name(self.source_settings) != "connectorx":
            return iter(
                table_resource(
                    self.cfg,
                    self.wire,
                    query,
                    self.source_settings,
                    self.source_engine,
                    self.extract_batch_rows,
                )
            )
        return read_stream(
            self._reader(),
            self.cfg,
            self.wire,
            query,
            self.source_settings,
            self.extract_batch_rows,
        )

    def _reader(self) -> SourceStream:
        """The source reader: the one started for this run, or a new one if it has ended
        (a read broken off)."""
        if self._source_stream is None or not self._source_stream.usable:
            if self._source_stream is not None:
                self._source_stream.close()
            self._source_stream = take()
        return self._source_stream

    # -- the run ---------------------------------------------------------------------
    def run(
        self, parts: PartSink, load_id: str, read_done: Callable[[], None] | None = None
    ) -> SyncReport:
        """Extract into `parts` while the loader loads them; merge, commit, report. A binlog
        table applies the events after its stored position instead (`parts` unused), or after
        the snapshot this run copied. `read_done` is called (in the extraction's thread) once
        the source's rows are all read."""
        self.load_id = load_id
        if self.applies_events:
            assert self.position_before is not None
            return self._capture_report(self.apply_changes(self.position_before))
        if self.unchanged:  # the cursor stays; the state records the run
            self.target.commit(_NoRows(), self.cfg.target, self.cursor_after, record_state=True)
            return self._report(0, 0)
        loader = self.loader
        assert loader is not None and self.shape is not None
        started = time.perf_counter()
        total = self.source_rows_estimate if self.strategy == "swap" else None
        progress = ExtractionProgress(self.log.info, self.cfg.table, total)
        uptime = self._source_uptime()
        extraction = Extraction(self.batches, parts, progress, read_done).start()
        # what the load needs of Arrow, imported while the source runs the query (0.5 s)
        use_jemalloc(self.arrow_memory_pool)
        import pyarrow.compute  # noqa: F401

        try:
            for part in extraction.parts():
                loader.load_part(part, load_id)
                parts.taken(part)
        finally:
            extraction.stop()
        if self._source_uptime() < uptime:  # restarted: the read may have ended early, silently
            raise SourceRestarted(f"{self.cfg.table}: the source server restarted during the read")
        loader.merge()
        self.target.commit(
            loader, self.cfg.target, self.cursor_after, record_state=self.window is None
        )
        report = self._report(extraction.rows, loader.stats.rows)
        report.load_id, report.batches = load_id, loader.stats.batches
        report.files, report.bytes_loaded = loader.stats.files, loader.stats.csv_bytes
        report.zero_dates_to_null = loader.stats.zero_dates
        report.warnings += loader.stats.warnings
        if self.cfg.mode == "staging":
            report.merge_ranges = loader.stats.merge_ranges
        parts.loaded(report, extraction.seconds, time.perf_counter() - started)
        if self.snapshot_at is not None:  # then the changes made since the snapshot began
            applied = self.apply_changes(self.snapshot_at)
            report.strategy = "snapshot"
            report.rows_written += applied.rows_upserted + applied.rows_deleted
            self._add_capture(report, applied)
            report.seconds = time.perf_counter() - self._started
        return report

    def _source_uptime(self) -> int:
        """The source server's uptime in seconds (it starts again from 0 after a restart)."""
        with self.source_engine.connect() as conn:
            row = conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Uptime'").one()
        return int(row[1])

    def _report(self, rows_extracted: int, rows_written: int) -> SyncReport:
        assert self.shape is not None
        changes = self.schema_changes
        return SyncReport(
            table=self.cfg.table,
            target=self.cfg.target,
            target_database=self.target.database,
            mode=self.cfg.mode,
            strategy=self.strategy,
            rows_extracted=rows_extracted,
            rows_written=rows_written,
            seconds=time.perf_counter() - self._started,
            load_id=self.load_id or "",
            cursor_before=self.cursor_before,
            cursor_after=self.cursor_after,
            columns_added=changes.added if changes else (),
            columns_changed=changes.modified if changes else (),
            columns_dropped_in_source=changes.dropped_in_source if changes else (),
            warnings=self.warnings,
            source_rows_estimate=self.source_rows_estimate,
            window=self.window.describe() if self.window is not None else None,
            columns=[(c.name, c.column_type, c.nullable) for c in self.shape.columns],
            reader_peak_rss_mb=self._source_stream.peak_rss_mb if self._source_stream else None,
        )

    def _capture_report(self, applied: CaptureStats) -> SyncReport:
        report = self._report(applied.rows_upserted, applied.rows_upserted + applied.rows_deleted)
        report.strategy = "binlog"
        report.batches = applied.batches
        self._add_capture(report, applied)
        return report

    @staticmethod
    def _add_capture(report: SyncReport, applied: CaptureStats) -> None:
        report.cursor_after = applied.position_after or report.cursor_after
        report.events_applied = applied.events
        report.transactions_applied = applied.transactions
        report.binlog_lag_seconds = applied.lag_seconds
        report.rows_deleted = applied.rows_deleted

    # -- change capture --------------------------------------------------------------
    def apply_changes(self, start: Position) -> CaptureStats:
        """Apply the table's binlog events from `start` to the end of the binlog, batch by
        batch: the rows of the keys a batch touched copied from the source, its deleted keys
        deleted, and the position after it stored, in that order (`pipeline/binlog.py`). With
        `follow_seconds`, keep applying what arrives (polling the binlog's end every
        `FOLLOW_POLL_SECONDS`) until that many seconds have passed."""
        assert self.shape is not None
        cfg = self.cfg
        started = time.perf_counter()
        applied = CaptureStats(position_before=str(start), position_after=str(start))
        stored = self._apply_to_end(start, applied)
        deadline = started + self.follow_seconds
        while time.perf_counter() + FOLLOW_POLL_SECONDS < deadline:
            time.sleep(FOLLOW_POLL_SECONDS)
            with self.source_engine.connect() as conn:
                end = binlog.end_position(conn)
            if end > stored:
                stored = self._apply_to_end(stored, applied)
        applied.seconds = time.perf_counter() - started
        self.log.info(
            "%s: %s row events of %s transactions applied (%s rows copied, %s deleted) "
            "in %.2fs; binlog position %s",
            cfg.table,
            f"{applied.events:,}",
            f"{applied.transactions:,}",
            f"{applied.rows_upserted:,}",
            f"{applied.rows_deleted:,}",
            applied.seconds,
            stored,
        )
        return applied

    def _apply_to_end(self, start: Position, applied: CaptureStats) -> Position:
        """One read of the binlog from `start` to its end, applied; the position stored."""
        assert self.shape is not None
        cfg = self.cfg
        keys = self.shape.primary_key or cfg.primary_key
        reader = binlog.ChangeReader(
            binlog.connection_settings(self.source_settings),
            self.source_db,
            cfg.table,
            keys,
            start,
            batch_keys=min(cfg.batch_size, binlog.BATCH_KEYS),
            server_id=binlog.reader_server_id(self.binlog_server_id),
            apply_deletes=cfg.detect_deletes,
            key_lengths=binlog.key_lengths([self.shape.column(c).column_type for c in keys]),
        )
        stored = start
        for batch in reader.batches():
            if batch.ddl_kind is not None:
                self._apply_ddl(batch)
                stored = batch.end
            elif batch.changed or batch.end != stored:
                upserted, deleted = self.refresh_keys(list(batch.upserts), batch.deletes, batch)
                applied.applied(batch, upserted, deleted)
                stored = batch.end
        return stored

    def _apply_ddl(self, batch: Batch) -> None:
        """A statement on the table in the binlog: ALTER evolves the target's schema (the
        source's as it is now), TRUNCATE empties the target table; RENAME and DROP stop."""
        cfg = self.cfg
        assert self.shape is not None
        if batch.ddl_kind in ("rename", "drop"):
            statement = " ".join((batch.ddl or "").split())
            raise SchemaError(
                f"table {cfg.table!r}: the source ran `{statement[:200]}` (binlog position "
                f"{batch.end}): its rows can no longer be followed. Point tables.json at the "
                "table's new name, then drop the target table to copy it anew"
            )
        if batch.ddl_kind == "alter":
            with connect(self.source_engine, "source", self.source_settings) as conn:
                [facts] = read_table_facts(conn, self.source_db, [cfg.table]).values()
                if not facts.exists:  # renamed away later in the binlog: that event says so
                    return
                self.shape = shape_from_facts(conn, self.source_db, facts, cfg.table)
            self.wire = self.wire_of(self.shape)
            self.target.mirror(self.shape, cfg.target, cfg.primary_key, self.log)
            self.refresh_keys([], set(), batch)
            return
        self.log.info("%s: the source truncated the table: the target too", cfg.table)
        table = self.target.qualified(cfg.target)
        truncate = sa.text(f"DELETE FROM {table}")
        self.refresh_keys([], set(), batch, also=lambda conn: conn.execute(truncate))

    def refresh_keys(
        self,
        keys: Sequence[tuple[Any, ...]],
        deletes: Collection[tuple[Any, ...]] = (),
        batch: Batch | None = None,
        also: Callable[[sa.Connection], Any] | None = None,
    ) -> tuple[int, int]:
        """Copy the rows of `keys` from the source (those the source still has) and delete the
        target rows of `deletes`; with `batch`, store its end position as the table's cursor
        in the transaction that deletes. Returns (rows copied, rows deleted)."""
        assert self.shape is not None
        cfg = self.cfg
        deleted = 0

        def delete(conn: sa.Connection) -> None:
            nonlocal deleted
            if also is not None:
                also(conn)
            deleted = self._delete_rows(conn, list(deletes))

        if not keys:
            self.target.commit(
                _NoRows(),
                cfg.target,
                batch and str(batch.end),
                record_state=batch is not None,
                also=delete,
            )
            return 0, deleted
        loader = self.target.loader(
            cfg.target,
            self.wire,
            "upsert",
            batch_size=cfg.batch_size,
            work_dir=self.work_dir,
            primary_key=tuple(cfg.primary_key),
            merge_each_part=True,
        )
        loader.prepare()
        try:
            for start in range(0, len(keys), KEYS_PER_QUERY):
                for item in self.read(self.query(keys[start : start + KEYS_PER_QUERY])):
                    loader.load_part(as_table(item), self.load_id or new_load_id())
            loader.merge()
            self.target.commit(
                loader,
                cfg.target,
                batch and str(batch.end),
                record_state=batch is not None,
                also=delete,
            )
        except BaseException:
            loader.discard()
            raise
        return loader.stats.rows, deleted

    def copy_keys(self, keys: Sequence[tuple[Any, ...]]) -> int:
        """A repair: copy these rows from the source by primary key, through the same
        extraction and upsert as a run (the cursor is not touched); returns rows written."""
        return self.refresh_keys(keys)[0]

    def _delete_rows(self, conn: sa.Connection, keys: list[tuple[Any, ...]]) -> int:
        if not keys:
            return 0
        assert self.shape is not None
        names = self.shape.primary_key or self.cfg.primary_key
        table = sa.table(self.cfg.target, *map(sa.column, names), schema=self.target.schema)
        columns = [table.c[c] for c in names]
        deleted = 0
        for start in range(0, len(keys), KEYS_PER_QUERY):
            statement = sa.delete(table).where(
                key_in(columns, keys[start : start + KEYS_PER_QUERY])
            )
            if self.target.kind == "duckdb":  # its driver reports no rowcount
                deleted += len(conn.execute(statement.returning(*columns)).all())
            else:
                deleted += int(conn.execute(statement).rowcount)
        return deleted

    def _cleanup(self, *, failed: bool) -> None:
        if failed and self.loader is not None:
            try:
                self.loader.discard()
            except sa.exc.SQLAlchemyError:
                self.log.warning(
                    "%s: work tables not dropped; the next run drops them", self.cfg.table
                )
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        give_back(self._source_stream)  # for this process's next run, if it can serve one
        self._source_stream = None
        shutil.rmtree(self.work_dir, ignore_errors=True)
