"""One table's sync run: check the source, mirror the schema, extract with dlt, load, commit.

`TableSync` is a context manager used by the table asset:

    with TableSync(cfg, source, target, log) as sync:      # prepare: validate, mirror, lock
        run the dlt pipeline (sync.dlt_source(), sync.dlt_pipeline())
        result = sync.finalize()                          # swap / cursor / clean-up

Extraction is a dlt `sql_table` resource on the connectorx backend (Arrow record batches of
`batch_size` rows, streamed from a child process, see `source_stream.py`), selecting the wire
text of every column (see `wire.py`). In direct mode a dlt pipeline writes the batches to
Parquet and hands each file to a custom destination, this run's `TableLoader`. In staging mode
(`staging.py`) the same resource is iterated on its own: its batches are written to staged
Parquet parts that the I/O manager loads through the same `TableLoader` while the next parts
are read. The loader adds `_dlt_load_id` (the load's id, one value per run) and `_dlt_id` (made
in bulk).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
import sqlalchemy as sa
from dlt.extract.resource import DltResource
from dlt.extract.source import DltSource
from dlt.pipeline.pipeline import Pipeline
from dlt.sources.sql_database import sql_table
from dlt.sources.sql_database.helpers import ConnectorXTableLoader

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.db import PLAIN_MYSQL, connect, run_sql
from mysqlsync_dagster.errors import ReadTimeout, SchemaError, TableBusy
from mysqlsync_dagster.pipeline.source_stream import SourceStream
from mysqlsync_dagster.pipeline.windows import (
    WINDOW_TYPES,
    ModifierWindow,
    cursor_literal,
    window_condition,
)
from mysqlsync_dagster.pipeline.wire import wire_columns
from mysqlsync_dagster.schema import (
    ORDERABLE_TYPES,
    SchemaChanges,
    TableShape,
    diff_schema,
    has_unique_index,
    key_violations,
    mirror_ddl,
    qualified,
    quote,
    read_table_shape,
)
from mysqlsync_dagster.settings import DatabaseSettings
from mysqlsync_dagster.targets.mysql.loader import LoadStats, Strategy, TableLoader
from mysqlsync_dagster.targets.mysql.state import ensure_state_table, read_state, write_state

PROGRESS_SECONDS = 10.0

# LOAD DATA connections filling a bulk-only work table at once (see loading.py); on the
# 2-core benchmark machine two streams beat one, more only add contention.
LOAD_STREAMS = 2


class WireTableLoader(ConnectorXTableLoader):
    """Reads the wire SELECT with connectorx, in a child process (see `source_stream.py`).

    dlt compiles with the engine's dialect, whose driver (PyMySQL) doubles every `%`; connectorx
    sends the text as is, so it is compiled here for a driver-less dialect instead. Each batch is
    yielded as an Arrow table, as dlt's connectorx loader does (the wire SELECT has no temporal
    columns, so none of its temporal fix-ups apply).
    """

    def compile_query(self, query: Any) -> str:
        return str(query.compile(dialect=PLAIN_MYSQL, compile_kwargs={"literal_binds": True}))

    def load_rows(self, backend_kwargs: dict[str, Any] | None = None) -> Iterator[Any]:
        """Reads through `backend_kwargs["stream"]` (a `SourceStream` started early), or a new
        one. connectorx has no read timeout of its own: with `read_timeout` in
        `backend_kwargs`, a stream that delivers no batch for that long fails (`ReadTimeout`)
        and its reader is killed."""
        kwargs = dict(backend_kwargs or {})
        timeout = kwargs.get("read_timeout")
        query = self.compile_query(self.make_query())
        batch_size = int(kwargs.get("batch_size") or self.chunk_size)
        with kwargs.get("stream") or SourceStream() as stream:
            batches = stream.read(kwargs["conn"], query, batch_size)
            for batch in iterate_with_timeout(batches, timeout) if timeout else batches:
                yield pa.Table.from_batches([batch])


def iterate_with_timeout(items: Iterator[Any], timeout: float) -> Iterator[Any]:
    """Yield from `items`, produced in a thread, failing when the next one takes longer than
    `timeout` seconds. The producer stops handing items over once this generator is finished;
    one stuck in a blocking call is left behind (a daemon thread) until that call returns."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)  # bounds memory
    finished = threading.Event()

    def hand_over(kind: str, value: Any) -> bool:
        while not finished.is_set():
            with contextlib.suppress(queue.Full):
                handoff.put((kind, value), timeout=0.2)
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over("item", item):
                    return
            hand_over("done", None)
        except BaseException as error:  # re-raised by the consumer
            hand_over("error", error)

    threading.Thread(target=produce, name="mysqlsync-extract", daemon=True).start()
    try:
        while True:
            try:
                kind, value = handoff.get(timeout=timeout)
            except queue.Empty:
                raise ReadTimeout(
                    f"no rows from the source for {timeout:.0f}s (DB_READ_TIMEOUT): read timed out"
                ) from None
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        finished.set()


@dataclass
class SyncResult:
    table: str
    target: str
    mode: str
    strategy: Strategy
    rows_written: int
    seconds: float
    cursor_before: str | None
    cursor_after: str | None
    load: LoadStats
    schema_changes: SchemaChanges
    source_rows_estimate: int | None
    columns: list[tuple[str, str, bool]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reader_peak_rss_mb: float | None = None  # the connectorx child process's own peak

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0


# Bytes of source rows per extraction batch, at most (as InnoDB stores them; as Arrow text they
# take 2-3x that). `batch_size` rows of a narrow table fit (1M-row `orders`: 94 bytes a row);
# a wide one is read in smaller batches so that the batches in flight stay bounded (measured
# on the 40-column benchmark table, 380 bytes a row, staging mode: peak RSS 600 MB at 50,000
# rows a batch, 526 MB at 25,000, 430-457 MB at 10,000, and no slower).
EXTRACT_BATCH_BYTES = 5 * 1024 * 1024


def extract_batch_rows(batch_size: int, avg_row_bytes: int | None) -> int:
    """Rows per extraction batch: `batch_size`, fewer for rows wider than the byte budget."""
    if not avg_row_bytes:
        return batch_size
    return max(1, min(batch_size, EXTRACT_BATCH_BYTES // int(avg_row_bytes)))


def resource_name(cfg: TableConfig) -> str:
    """The dlt resource (and dlt table) name for a configured table."""
    return cfg.key


def lock_name(database: str, target: str) -> str:
    digest = hashlib.sha1(f"{database}.{target}".encode()).hexdigest()[:24]
    return f"mysqlsync:{digest}"


class TableSync:
    def __init__(
        self,
        cfg: TableConfig,
        source_settings: DatabaseSettings,
        source_engine: sa.Engine,
        target_settings: DatabaseSettings,
        target_engine: sa.Engine,
        log: logging.Logger | None = None,
        work_root: str | None = None,
        window: ModifierWindow | None = None,
        lock_wait_seconds: int = 0,
    ) -> None:
        """`window`: a partition run; upsert only the rows whose modifier falls in it, never
        swap the table, never read or write the incremental cursor (stateless)."""
        self.cfg = cfg
        self.window = window
        self.lock_wait_seconds = lock_wait_seconds
        self.source_settings = source_settings
        self.source_engine = source_engine
        self.target_engine = target_engine
        self.source_db = source_settings.database
        self.target_db = target_engine.url.database or ""
        self.target_settings = target_settings
        self.log = log or logging.getLogger("mysqlsync_dagster")
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"mysqlsync-{cfg.key}-", dir=work_root))
        self._lock_conn: sa.Connection | None = None
        self._source_stream: SourceStream | None = None
        self._started = time.perf_counter()
        self.shape: TableShape | None = None
        self.loader: TableLoader | None = None
        self.cursor_before: str | None = None
        self.cursor_snapshot: str | None = None
        self.schema_changes = SchemaChanges()
        self.source_rows_estimate: int | None = None
        self.extract_batch_rows = cfg.batch_size
        self.warnings: list[str] = []  # allowed, but worth a user's attention
        self._last_progress = self._started  # a progress line at most every PROGRESS_SECONDS

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

    def close(self, *, failed: bool) -> None:
        """Drop work tables (if failed), release the lock, remove the work directory.

        Idempotent; for a caller that learns of a failure outside the `with` block (the
        staging I/O manager, which loads while the asset body is suspended inside it).
        """
        self._cleanup(failed=failed)

    def prepare(self) -> None:
        cfg = self.cfg
        if self._backend_name() == "connectorx":  # its start-up overlaps the preparation
            self._source_stream = SourceStream()
        with connect(self.source_engine, "source", self.source_settings) as conn:
            shape = read_table_shape(conn, self.source_db, cfg.table)
            if shape is None:
                raise SchemaError(
                    f"table {cfg.table!r} does not exist in the source database "
                    f"{self.source_db!r} (check 'table' in tables.json)"
                )
            self._validate(shape, conn)
            rows, row_bytes = conn.execute(
                sa.text(
                    "SELECT TABLE_ROWS, AVG_ROW_LENGTH FROM information_schema.TABLES"
                    " WHERE TABLE_SCHEMA = :db AND TABLE_NAME = :t"
                ),
                {"db": self.source_db, "t": cfg.table},
            ).one()
            self.source_rows_estimate = rows
            self.extract_batch_rows = extract_batch_rows(cfg.batch_size, row_bytes)
            if self.extract_batch_rows < cfg.batch_size:
                self.log.info(
                    "%s: rows of ~%s bytes: extracting %s rows a batch (batch_size %s)",
                    cfg.table,
                    row_bytes,
                    f"{self.extract_batch_rows:,}",
                    f"{cfg.batch_size:,}",
                )
        self.shape = shape
        self._acquire_lock()
        with self.target_engine.begin() as conn:
            created = self._mirror_schema(conn, shape)
            if self.window is None:
                ensure_state_table(conn)
                state = read_state(conn, cfg.target)
                self.cursor_before = state.cursor if state and cfg.incremental else None
                if created and self.cursor_before is not None:
                    # the table was dropped or lost since its last sync: rows before the
                    # cursor would never come back, so copy it whole
                    self._warn(
                        f"table {cfg.table!r}: target table {cfg.target!r} was missing although"
                        f" a sync had reached cursor {self.cursor_before}: copied in full"
                    )
                    self.cursor_before = None
        windowed = self.window is not None or self.cursor_before is not None
        strategy: Strategy = "upsert" if windowed else "swap"
        if cfg.incremental and self.window is None:
            self.cursor_snapshot = self._source_max_modifier()
        self.loader = TableLoader(
            engine=self.target_engine,
            target=cfg.target,
            wire=wire_columns(shape.copied_columns),
            strategy=strategy,
            batch_size=cfg.batch_size,
            work_dir=self.work_dir,
            on_batch=self._progress,
            primary_key=tuple(cfg.primary_key),
            # staging mode loads every file into the stage first, then merges by key range
            merge_each_batch=cfg.mode != "staging",
            load_streams=LOAD_STREAMS,
        )
        with self.target_engine.begin() as conn:
            self.loader.prepare(conn)
        if self.window is not None:
            self.log.info("%s: upsert of window %s", cfg.table, self.window.describe())
            return
        self.log.info(
            "%s: %s from %s, cursor %s",
            cfg.table,
            "incremental upsert" if strategy == "upsert" else "full copy built aside",
            "the last sync" if self.cursor_before else "the start",
            self.cursor_before,
        )

    def _check_key_is_unique(self, conn: sa.Connection) -> None:
        """A source without a primary key: the configured key must really identify rows."""
        cfg = self.cfg
        if has_unique_index(conn, self.source_db, cfg.table, cfg.primary_key):
            return
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

    def _validate(self, shape: TableShape, conn: sa.Connection) -> None:
        cfg = self.cfg
        names = set(shape.column_names)
        missing = [c for c in cfg.primary_key if c not in names]
        if missing:
            raise SchemaError(
                f"table {cfg.table!r}: primary key column(s) {missing} not found in the source "
                f"(columns: {shape.column_names})"
            )
        if shape.primary_key and set(shape.primary_key) != set(cfg.primary_key):
            raise SchemaError(
                f"table {cfg.table!r}: tables.json says primary_key {list(cfg.primary_key)} but "
                f"the source table's primary key is {list(shape.primary_key)}"
            )
        if not shape.primary_key:
            self._check_key_is_unique(conn)
        if cfg.modifier is not None and cfg.modifier in cfg.primary_key:
            self._warn(
                f"table {cfg.table!r}: the modifier {cfg.modifier!r} is part of the primary key: "
                "only new keys are picked up, an update that keeps its key is never re-read"
            )
        if cfg.modifier is not None:
            if cfg.modifier not in names:
                raise SchemaError(
                    f"table {cfg.table!r}: modifier column {cfg.modifier!r} not found in the "
                    f"source (columns: {shape.column_names})"
                )
            data_type = shape.column(cfg.modifier).data_type
            if data_type not in ORDERABLE_TYPES:
                raise SchemaError(
                    f"table {cfg.table!r}: modifier column {cfg.modifier!r} has type "
                    f"{data_type}, which cannot order changes (use a DATETIME, TIMESTAMP, DATE "
                    "or integer column)"
                )
            if self.window is not None and data_type not in WINDOW_TYPES:
                raise SchemaError(
                    f"table {cfg.table!r}: partitions={cfg.partitions!r} windows over "
                    f"{cfg.modifier!r}, which has type {data_type}; time windows need a DATE, "
                    "DATETIME or TIMESTAMP modifier"
                )

    def _mirror_schema(self, conn: sa.Connection, shape: TableShape) -> bool:
        """Create or evolve the target table; True if it had to be created."""
        target = read_table_shape(conn, self.target_db, self.cfg.target)
        if target is None:
            ddl = mirror_ddl(shape, self.cfg.target, self.cfg.primary_key)
            run_sql(conn, ddl)
            self.log.info("%s: created target table %s", self.cfg.table, self.cfg.target)
            return True
        changes = diff_schema(shape, target)
        if not changes.empty:
            run_sql(conn, f"ALTER TABLE {quote(self.cfg.target)} " + ", ".join(changes.clauses))
            self.log.info(
                "%s: schema evolved: added %s, changed %s, dropped in source (kept) %s",
                self.cfg.table,
                list(changes.added),
                list(changes.modified),
                list(changes.dropped_in_source),
            )
        elif changes.dropped_in_source:
            self.log.warning(
                "%s: columns %s no longer exist in the source; kept in the target",
                self.cfg.table,
                list(changes.dropped_in_source),
            )
        self.schema_changes = changes
        return False

    def _modifier_expression(self) -> str:
        assert self.shape is not None and self.cfg.modifier is not None
        quoted = quote(self.cfg.modifier)
        if self.shape.column(self.cfg.modifier).data_type == "timestamp":
            return f"UNIX_TIMESTAMP(MAX({quoted}))"
        return f"MAX({quoted})"

    def _source_max_modifier(self) -> str | None:
        with self.source_engine.connect() as conn:
            return run_sql(
                conn,
                f"SELECT CAST({self._modifier_expression()} AS CHAR)"
                f" FROM {qualified(self.source_db, self.cfg.table)}",
            ).scalar()

    def _acquire_lock(self) -> None:
        conn = connect(self.target_engine, "target", self.target_settings)
        got = conn.execute(
            sa.text("SELECT GET_LOCK(:name, :wait)"),
            {"name": lock_name(self.target_db, self.cfg.target), "wait": self.lock_wait_seconds},
        ).scalar()
        if got != 1:
            conn.close()
            raise TableBusy(
                f"table {self.cfg.table!r}: another sync of target table {self.cfg.target!r} "
                "is running; this run did nothing"
            )
        self._lock_conn = conn

    # -- extraction ------------------------------------------------------------------
    def query(self) -> sa.Select[Any]:
        assert self.shape is not None and self.loader is not None
        source = sa.table(
            self.cfg.table, *[sa.column(c) for c in self.shape.column_names], schema=self.source_db
        )
        query = sa.select(*[w.select_expression() for w in self.loader.wire]).select_from(source)
        if self.window is not None:
            assert self.cfg.modifier is not None
            data_type = self.shape.column(self.cfg.modifier).data_type
            query = query.where(
                window_condition(source.c[self.cfg.modifier], data_type, self.window)
            )
        elif self.loader.strategy == "upsert" and self.cfg.modifier is not None:
            query = query.where(source.c[self.cfg.modifier] >= self._cursor_literal())
        return query

    def _cursor_literal(self) -> sa.ColumnElement[Any]:
        assert self.shape is not None and self.cfg.modifier is not None
        assert self.cursor_before is not None
        return cursor_literal(self.shape.column(self.cfg.modifier).data_type, self.cursor_before)

    def dlt_resource(self) -> DltResource:
        assert self.loader is not None
        metadata = sa.MetaData(schema=self.source_db)
        sa.Table(
            self.cfg.table,
            metadata,
            *[sa.Column(w.column.name, sa.Text) for w in self.loader.wire],
        )
        query = self.query()
        return sql_table(
            credentials=self.source_engine,
            table=self.cfg.table,
            metadata=metadata,
            chunk_size=self.extract_batch_rows,
            reflection_level="minimal",
            query_adapter_callback=lambda _query, _table: query,
            **self._backend(),
            write_disposition="merge" if self.cfg.incremental else "replace",
            primary_key=list(self.cfg.primary_key),
        ).with_name(resource_name(self.cfg))

    def _backend_name(self) -> str:
        """connectorx (about 6x faster here) unless the source needs TLS, which its MySQL
        driver cannot do: then dlt's pyarrow backend over the TLS-verified PyMySQL engine."""
        return "pyarrow" if self.source_settings.ssl else "connectorx"

    def _backend(self) -> dict[str, Any]:
        if self._backend_name() == "pyarrow":
            return {"backend": "pyarrow"}
        return {
            "backend": "connectorx",
            "table_loader_class": WireTableLoader,
            "backend_kwargs": {
                "conn": self.source_settings.connectorx_url(),
                "read_timeout": self.source_settings.read_timeout,
                "batch_size": self.extract_batch_rows,
                "stream": self._source_stream,
            },
        }

    def dlt_source(self) -> DltSource:
        resource = self.dlt_resource()

        @dlt.source(name=f"mysqlsync_{self.cfg.key}", max_table_nesting=0)
        def mysql_table() -> DltResource:
            return resource

        return mysql_table()

    def dlt_pipeline(self) -> Pipeline:
        """The pipeline whose destination hands each Parquet file to the loader.

        dlt is not asked to add `_dlt_load_id` or `_dlt_id` (its Arrow path would import
        pandas and rewrite every batch): the loader stamps both in bulk.
        """
        loader = self.loader
        assert loader is not None

        def load_file(items: Any, table: Any) -> None:
            loader.load_parquet(items, dlt.current.load_package_state()["load_id"])

        destination = dlt.destination(
            load_file,
            name="mysql_target",
            batch_size=0,
            loader_file_format="parquet",
            naming_convention="direct",
        )()
        return dlt.pipeline(
            pipeline_name=f"mysqlsync_{self.cfg.key}",
            pipelines_dir=str(self.work_dir / "dlt"),
            destination=destination,
            dataset_name=self.target_db,
        )

    def _progress(self, stats: LoadStats) -> None:
        """After each loaded batch: a line with rows done, rows/s and, for a full copy, the
        estimated total and ETA, at most every `PROGRESS_SECONDS`."""
        now = time.perf_counter()
        if now - self._last_progress < PROGRESS_SECONDS:
            return
        self._last_progress = now
        elapsed = now - self._started
        rate = stats.rows / elapsed if elapsed > 0 else 0.0
        total = (
            self.source_rows_estimate if self.loader and self.loader.strategy == "swap" else None
        )
        if total and rate:
            eta = max(total - stats.rows, 0) / rate
            self.log.info(
                "%s: %s of ~%s rows, %.0f rows/s, ETA %.0fs",
                self.cfg.table,
                f"{stats.rows:,}",
                f"{total:,}",
                rate,
                eta,
            )
        else:
            self.log.info("%s: %s rows, %.0f rows/s", self.cfg.table, f"{stats.rows:,}", rate)

    # -- finish ----------------------------------------------------------------------
    def finalize(self) -> SyncResult:
        assert self.loader is not None and self.shape is not None
        cursor_after = self.cursor_snapshot or self.cursor_before
        with self.target_engine.begin() as conn:
            self.loader.finish(conn)
            if self.window is None:  # partition runs are stateless: the cursor is not theirs
                write_state(
                    conn,
                    self.cfg.target,
                    cursor_after if self.cfg.incremental else None,
                    self.loader.stats.rows,
                    self.loader.stats.load_id,
                )
        seconds = time.perf_counter() - self._started
        return SyncResult(
            table=self.cfg.table,
            target=self.cfg.target,
            mode=self.cfg.mode,
            strategy=self.loader.strategy,
            rows_written=self.loader.stats.rows,
            seconds=seconds,
            cursor_before=self.cursor_before,
            cursor_after=cursor_after if self.cfg.incremental else None,
            load=self.loader.stats,
            schema_changes=self.schema_changes,
            source_rows_estimate=self.source_rows_estimate,
            warnings=self.warnings,
            columns=[(c.name, c.column_type, c.nullable) for c in self.shape.columns],
            reader_peak_rss_mb=self._source_stream.peak_rss_mb if self._source_stream else None,
        )

    def _cleanup(self, *, failed: bool) -> None:
        if failed and self.loader is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError), self.target_engine.begin() as conn:
                self.loader.discard(conn)
        if self._lock_conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._lock_conn.execute(
                    sa.text("SELECT RELEASE_LOCK(:name)"),
                    {"name": lock_name(self.target_db, self.cfg.target)},
                )
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._lock_conn.close()
            self._lock_conn = None
        if self._source_stream is not None:
            self._source_stream.close()
            self._source_stream = None
        shutil.rmtree(self.work_dir, ignore_errors=True)
