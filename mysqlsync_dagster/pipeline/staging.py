"""Staging mode: dlt extracts a table to compressed Parquet files, an I/O manager loads them.

One run of a table with `"mode": "staging"`:

1. The asset prepares a `TableSync` (validate, mirror the DDL, lock, cursor, strategy), removes
   this table's run directories older than `STAGING_RETENTION_HOURS`, and starts a
   `StagingWriter`: a thread that iterates the table's dlt `sql_table` resource and writes its
   Arrow batches to `STAGING_DIR/<table>/<UTC time>-<run id>/part-NNNNN.parquet` with
   `PARQUET_COMPRESSION`, a row group per extraction batch, a part every `BATCHES_PER_PART`
   batches. `manifest.json` next to them records the plan (target, load id, wire columns and
   kinds, strategy, cursor before/after, batch size, codec) and each closed part (rows,
   bytes); it says `staged` once extraction is complete.
2. The asset yields `dg.Output(StagedTable)` at once. While its body is suspended there,
   Dagster calls `ParquetStagingIOManager.handle_output`, so the TableSync and its lock are
   still held.
3. `handle_output` loads each part through the sync's `TableLoader` (the one loader of both
   modes) as soon as it is closed, while the writer reads the next: `swap` fills the aside
   table and swaps it in; `upsert` bulk-loads every part into the stage table, then merges it
   into the live table in primary-key ranges of `batch_size` rows. The cursor is written in
   the same commit as the swap / after the last range, then the manifest is marked `loaded`.
4. `load_input` hands downstream assets the synced target table (see its docstring).

A run that dies leaves its directory with status `extracting` or `staged` (or `loaded` if it
died just after committing). Nothing reads such a directory again automatically: the next run
starts from the cursor in the target, which only moves when a load commits, and extracts
afresh (upserts are idempotent, a swap is all or nothing), so a file is never loaded twice
into a wrong state. Dead runs' directories are removed with the others once they are older
than the retention.
"""

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.db import PLAIN_MYSQL, run_sql
from mysqlsync_dagster.db import quote_identifier as quote
from mysqlsync_dagster.orchestration import retries
from mysqlsync_dagster.orchestration.assets import (
    TableRun,
    result_metadata,
    table_asset_spec,
    table_multi_asset,
    target_row_count,
)
from mysqlsync_dagster.orchestration.partitions import window_for_range
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.pipeline.run import SyncResult, TableSync
from mysqlsync_dagster.pipeline.windows import ModifierWindow, window_condition
from mysqlsync_dagster.schema import DLT_COLUMNS
from mysqlsync_dagster.settings import Settings

IO_MANAGER_KEY = "staging_io_manager"
COMPRESSIONS = ("snappy", "zstd", "gzip", "brotli")
DEFAULT_STAGING_DIR = ".staging"
DEFAULT_COMPRESSION = "zstd"
DEFAULT_RETENTION_HOURS = 24.0
MANIFEST = "manifest.json"


# -- the manifest ------------------------------------------------------------------------
@dataclass
class StagedFile:
    name: str
    rows: int
    bytes: int
    uncompressed_bytes: int  # column chunks before compression, from the Parquet footer


@dataclass
class StagingManifest:
    """What one run staged and how it is to be loaded; `manifest.json` in the run directory."""

    table: str
    target: str
    run_id: str
    load_id: str
    strategy: str
    columns: list[dict[str, str]]  # wire columns in file order: name, kind
    cursor_before: str | None
    cursor_after: str | None
    batch_size: int
    compression: str
    created_at: str
    status: str = "extracting"  # -> "staged" -> "loaded"
    files: list[StagedFile] = field(default_factory=list)
    extract_seconds: float = 0.0  # reading the source and writing the parts
    load_seconds: float = 0.0  # loading the parts (overlapping the extraction) and committing

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def compression_ratio(self) -> float:
        """Uncompressed column data / compressed column data (Parquet's own encodings aside)."""
        compressed = sum(f.bytes for f in self.files)
        return sum(f.uncompressed_bytes for f in self.files) / compressed if compressed else 0.0

    def save(self, directory: Path) -> None:
        """Write atomically: a reader (or a crash) sees the old manifest or the new one."""
        temporary = directory / f".{MANIFEST}.tmp"
        temporary.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        os.replace(temporary, directory / MANIFEST)

    @classmethod
    def read(cls, directory: Path) -> "StagingManifest":
        raw = json.loads((directory / MANIFEST).read_text())
        raw["files"] = [StagedFile(**f) for f in raw.get("files", [])]
        return cls(**raw)


# -- settings and housekeeping -------------------------------------------------------------
@dataclass(frozen=True)
class StagingSettings:
    directory: Path
    compression: str
    retention_hours: float

    @classmethod
    def parse(
        cls, directory: str | None, compression: str | None, retention_hours: str | None
    ) -> "StagingSettings":
        codec = (compression or DEFAULT_COMPRESSION).strip().lower()
        if codec not in COMPRESSIONS:
            raise ValueError(
                f"PARQUET_COMPRESSION={compression!r} is not one of {', '.join(COMPRESSIONS)}"
            )
        try:
            hours = float(retention_hours) if retention_hours else DEFAULT_RETENTION_HOURS
        except ValueError:
            raise ValueError(
                f"STAGING_RETENTION_HOURS={retention_hours!r} is not a number of hours"
            ) from None
        if hours < 0:
            raise ValueError(f"STAGING_RETENTION_HOURS={retention_hours!r} must not be negative")
        return cls(Path(directory or DEFAULT_STAGING_DIR).absolute(), codec, hours)

    def table_dir(self, cfg: TableConfig) -> Path:
        return self.directory / cfg.key

    def new_run_dir(self, cfg: TableConfig, run_id: str) -> Path:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]  # sorts by time
        path = self.table_dir(cfg) / f"{stamp}-{run_id[:8]}"
        path.mkdir(parents=True, exist_ok=False)
        return path


def remove_expired(table_dir: Path, retention_hours: float, now: float | None = None) -> list[Path]:
    """Remove the run directories under `table_dir` last modified more than the retention ago.

    Called with the table's sync lock held, so no live run of this table owns one of them.
    """
    if not table_dir.is_dir():
        return []
    cutoff = (now if now is not None else time.time()) - retention_hours * 3600
    removed = []
    for run_dir in table_dir.iterdir():
        if run_dir.is_dir() and run_dir.stat().st_mtime <= cutoff:
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


# -- extraction side -------------------------------------------------------------------------
# Rows per staged part: the I/O manager can load a part only once it is closed, so parts are a
# few extraction batches long (loading part N overlaps reading part N+1), never one per batch
# (a 15 GB table would become thousands of files).
BATCHES_PER_PART = 2


def new_load_id() -> str:
    """A load id in dlt's format (the load's Unix time), stamped on every row as `_dlt_load_id`."""
    return f"{time.time():.6f}"


class StagingWriter:
    """Extracts the table into Parquet parts in a thread; `parts()` hands each closed part over.

    The table's dlt `sql_table` resource is iterated on its own (no pipeline: no extract,
    normalize and load phases to wait for) and every Arrow batch it yields is written to
    `part-NNNNN.parquet` with the run's codec, a row group per batch (at most `batch_size`
    rows; fewer for wide rows, see `sync.extract_batch_rows`). A part is
    closed after `BATCHES_PER_PART` batches and recorded in the manifest (saved atomically), so
    the I/O manager loads it while the next one is read. At the end the manifest says `staged`.
    """

    def __init__(self, sync: TableSync, run_dir: Path, manifest: StagingManifest) -> None:
        self.sync = sync
        self.run_dir = run_dir
        self.manifest = manifest
        self._changed = threading.Condition()
        self._finished = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mysqlsync-stage", daemon=True)

    def start(self) -> "StagingWriter":
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        writer: pq.ParquetWriter | None = None
        try:
            progress = ExtractionProgress(self.sync, started)
            batches = 0
            items = iter(self.sync.dlt_resource())
            for item in items:
                if self._stop.is_set():
                    getattr(items, "close", lambda: None)()  # closes the source's stream
                    return
                table = pa.Table.from_batches([item]) if isinstance(item, pa.RecordBatch) else item
                progress(table)
                if writer is None:
                    name = f"part-{len(self.manifest.files):05d}.parquet"
                    writer = pq.ParquetWriter(
                        self.run_dir / name,
                        table.schema,
                        compression=self.manifest.compression,
                        # wire text compresses better and 2-3x faster without dictionary
                        # pages (measured on the benchmark's 1M orders rows: 0.25 s and 2.6 MB
                        # against 0.7 s and 9.8 MB; its 40-column table 12 MB against 21 MB)
                        use_dictionary=False,
                    )
                writer.write_table(
                    table.cast(writer.schema) if table.schema != writer.schema else table,
                    row_group_size=self.manifest.batch_size,
                )
                batches += 1
                if batches == BATCHES_PER_PART:
                    self._publish(writer, name)
                    writer, batches = None, 0
            if writer is not None:
                self._publish(writer, name)
                writer = None
            self.manifest.extract_seconds = time.perf_counter() - started
            self.manifest.status = "staged"
            self.manifest.save(self.run_dir)
        except BaseException as error:  # re-raised by `parts()` in the loading thread
            self._error = error
        finally:
            if writer is not None:  # an unfinished part: closed, never listed in the manifest
                with contextlib.suppress(Exception):
                    writer.close()
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def _publish(self, writer: pq.ParquetWriter, name: str) -> None:
        """Close the part and list it in the manifest."""
        writer.close()
        footer = pq.read_metadata(self.run_dir / name)
        uncompressed = sum(
            footer.row_group(g).column(c).total_uncompressed_size
            for g in range(footer.num_row_groups)
            for c in range(footer.num_columns)
        )
        staged = StagedFile(
            name, footer.num_rows, (self.run_dir / name).stat().st_size, uncompressed
        )
        with self._changed:
            self.manifest.files.append(staged)
            self.manifest.save(self.run_dir)
            self._changed.notify_all()
        self.sync.log.debug(
            "%s: staged %s (%s rows, %s bytes)",
            self.manifest.table,
            name,
            f"{staged.rows:,}",
            f"{staged.bytes:,}",
        )

    def parts(self) -> Iterator[Path]:
        """Each part as soon as it is closed, until the extraction ends; its error re-raised."""
        index = 0
        while True:
            with self._changed:
                while not self._finished and len(self.manifest.files) <= index:
                    self._changed.wait()
                if self._error is not None:  # no use loading more of a failed extraction
                    raise self._error
                if len(self.manifest.files) <= index:
                    return
                name = self.manifest.files[index].name
            yield self.run_dir / name
            index += 1

    def stop(self, timeout: float = 60.0) -> None:
        """Stop extracting after the batch in hand and wait for the thread (the load failed,
        or the run is over). A read stalled past `timeout` is left to the read watchdog."""
        self._stop.set()
        self._thread.join(timeout)


class ExtractionProgress:
    """Passes extracted batches through, logging rows read, rows/s and ETA every 10 s."""

    def __init__(self, sync: TableSync, started: float, every_seconds: float = 10.0) -> None:
        self.sync = sync
        self.started = started
        self.every_seconds = every_seconds
        self.rows = 0
        self.last_logged = started

    def __call__(self, item: Any) -> Any:
        self.rows += getattr(item, "num_rows", 0)
        now = time.perf_counter()
        if now - self.last_logged >= self.every_seconds:
            self.last_logged = now
            rate = self.rows / (now - self.started)
            total = self.sync.source_rows_estimate if self.sync.cursor_before is None else None
            eta = f", ETA {max(total - self.rows, 0) / rate:.0f}s" if total and rate else ""
            of_total = f" of ~{total:,}" if total else ""
            self.sync.log.info(
                "%s: extracted %s%s rows, %.0f rows/s%s",
                self.sync.cfg.table,
                f"{self.rows:,}",
                of_total,
                rate,
                eta,
            )
        return item


@dataclass
class StagedTable:
    """The asset's output in staging mode: the run directory being filled, the writer filling
    it, and the live sync to load it with."""

    run_dir: Path
    manifest: StagingManifest
    sync: TableSync = field(repr=False, compare=False)
    writer: StagingWriter = field(repr=False, compare=False)
    secrets: list[str] = field(default_factory=list, repr=False, compare=False)


def stage_table(sync: TableSync, settings: StagingSettings, run_id: str) -> StagedTable:
    """Start extracting the prepared sync's rows into a new run directory (in a thread)."""
    cfg, loader = sync.cfg, sync.loader
    assert loader is not None
    removed = remove_expired(settings.table_dir(cfg), settings.retention_hours)
    if removed:
        sync.log.info("%s: removed %d expired staging run(s)", cfg.table, len(removed))
    run_dir = settings.new_run_dir(cfg, run_id)
    manifest = StagingManifest(
        table=cfg.table,
        target=cfg.target,
        run_id=run_id,
        load_id=new_load_id(),
        strategy=loader.strategy,
        columns=[{"name": w.column.name, "kind": w.kind} for w in loader.wire],
        cursor_before=sync.cursor_before,
        cursor_after=(sync.cursor_snapshot or sync.cursor_before) if cfg.incremental else None,
        batch_size=cfg.batch_size,
        compression=settings.compression,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    manifest.save(run_dir)
    writer = StagingWriter(sync, run_dir, manifest).start()
    return StagedTable(run_dir, manifest, sync, writer)


def load_staged(staged: StagedTable) -> tuple[SyncResult, int]:
    """Load each staged part as soon as it is written, then merge and commit; returns the
    result and the number of merge ranges."""
    sync, manifest = staged.sync, staged.manifest
    loader = sync.loader
    assert loader is not None
    started = time.perf_counter()
    try:
        for part in staged.writer.parts():
            loader.load_parquet(part, manifest.load_id)
    finally:
        staged.writer.stop()
    sync.log.info(
        "%s: %s rows staged in %d file(s), %s bytes (%s, %.1fx) in %.1fs under %s",
        sync.cfg.table,
        f"{manifest.rows:,}",
        len(manifest.files),
        f"{manifest.bytes:,}",
        manifest.compression,
        manifest.compression_ratio,
        manifest.extract_seconds,
        staged.run_dir,
    )
    ranges = loader.merge_stage() if loader.strategy == "upsert" else 0
    result = sync.finalize()
    manifest.load_seconds = time.perf_counter() - started
    manifest.status = "loaded"
    manifest.save(staged.run_dir)
    return result, ranges


# -- the I/O manager -------------------------------------------------------------------------
class ParquetStagingIOManager(dg.ConfigurableIOManager):
    """Loads staged Parquet files into the target (`handle_output`) and reads synced tables
    back for downstream assets (`load_input`).

    Fields are strings so that `STAGING_DIR`, `PARQUET_COMPRESSION` and
    `STAGING_RETENTION_HOURS` can be bound as `dg.EnvVar`s; unset means `.staging` in the
    working directory, zstd and 24 hours.
    """

    target_db: MySQLResource
    staging_dir: str | None = None
    compression: str | None = None
    retention_hours: str | None = None
    read_batch_size: int = 50_000

    def settings(self) -> StagingSettings:
        return StagingSettings.parse(self.staging_dir, self.compression, self.retention_hours)

    def handle_output(self, context: dg.OutputContext, obj: StagedTable) -> None:
        if not isinstance(obj, StagedTable):
            raise TypeError(
                f"{IO_MANAGER_KEY} stores only staged tables from mysqlsync assets, got "
                f"{type(obj).__name__}"
            )
        sync, manifest = obj.sync, obj.manifest
        try:
            result, ranges = load_staged(obj)
        except Exception as error:
            sync.close(failed=True)
            raise retries.sync_failure(sync.cfg.table, error, obj.secrets) from None
        row_count = (
            result.rows_written
            if result.strategy == "swap"
            else target_row_count(sync.target_engine, sync.cfg.target)
        )
        metadata = result_metadata(result, sync.target_db, row_count, {})
        metadata.update(
            {
                "mode": "staging",
                "staging_dir": dg.MetadataValue.path(str(obj.run_dir)),
                "bytes_staged": dg.MetadataValue.int(manifest.bytes),
                "files_staged": dg.MetadataValue.int(len(manifest.files)),
                "compression": manifest.compression,
                "compression_ratio": dg.MetadataValue.float(round(manifest.compression_ratio, 2)),
                "extract_seconds": dg.MetadataValue.float(round(manifest.extract_seconds, 3)),
                "rows_staged": dg.MetadataValue.int(manifest.rows),
                "load_seconds": dg.MetadataValue.float(round(manifest.load_seconds, 3)),
                "merge_ranges": dg.MetadataValue.int(ranges),
            }
        )
        context.add_output_metadata(metadata)
        sync.log.info(
            "%s: %s rows loaded in %.1fs (%s), %.0f rows/s overall",
            sync.cfg.table,
            f"{result.rows_written:,}",
            manifest.load_seconds,
            result.strategy,
            result.rows_per_second,
        )

    def load_input(self, context: dg.InputContext) -> pa.Table | pa.RecordBatchReader | Any:
        """The upstream asset's target table, without the `_dlt_*` columns.

        Read with connectorx (its Arrow type mapping), as a `pa.Table`; as a pandas DataFrame
        when the input is annotated `pd.DataFrame`; as a streaming `pa.RecordBatchReader` of
        `read_batch_size` rows when annotated so (for tables larger than memory). When the
        input is partitioned (a downstream asset with the same time partitions, or a partition
        mapping), only the rows of those partitions' window over the modifier are read, by the
        rules the sync uses (the first partition also holds earlier and NULL modifiers, the
        last one later ones); otherwise the whole table.
        """
        import connectorx as cx

        upstream = context.upstream_output
        metadata = (upstream.definition_metadata if upstream else None) or {}
        table, modifier = (
            getattr(metadata.get(key), "value", metadata.get(key))
            for key in ("target_table", "modifier")
        )
        if not table:
            raise dg.Failure(
                f"{IO_MANAGER_KEY} can only read tables synced by mysqlsync assets "
                f"(asset {context.asset_key.to_user_string()} has no 'target_table' metadata)"
            )
        engine = self.target_db.engine
        with engine.connect() as conn:
            types = {
                name: data_type
                for name, data_type in run_sql(
                    conn,
                    "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE"
                    " TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %(t)s ORDER BY ORDINAL_POSITION",
                    {"t": str(table)},
                )
            }
        columns = [name for name in types if name not in DLT_COLUMNS]
        if not columns:
            raise dg.Failure(f"target table {table!r} does not exist yet: materialize it first")
        query = f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(str(table))}"
        window = partition_window(context)
        if window is not None and modifier in types:
            condition = window_condition(sa.column(str(modifier)), types[str(modifier)], window)
            compiled = condition.compile(
                dialect=PLAIN_MYSQL, compile_kwargs={"literal_binds": True}
            )
            query += f" WHERE {compiled}"
            context.log.info("reading %s rows with %s in %s", table, modifier, window.describe())
        url = self.target_db.settings().connectorx_url()
        wanted = context.dagster_type.typing_type if context.dagster_type else None
        if wanted is pa.RecordBatchReader:
            return cx.read_sql(
                url, query, return_type="arrow_stream", batch_size=self.read_batch_size
            )
        data = cx.read_sql(url, query, return_type="arrow")
        if getattr(wanted, "__name__", "") == "DataFrame":
            return data.to_pandas()
        return data


def partition_window(context: dg.InputContext) -> ModifierWindow | None:
    """The modifier window of a partitioned input (its upstream time partitions), else None."""
    if not context.has_asset_partitions:
        return None
    partitions_def = context.asset_partitions_def
    if not isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return None
    key_range = context.asset_partition_key_range
    return window_for_range(partitions_def, key_range.start, key_range.end)


def staging_io_manager(target_db: MySQLResource, settings: Settings) -> ParquetStagingIOManager:
    """The I/O manager with each staging variable that is set bound as a `dg.EnvVar`."""
    fields = {
        name: dg.EnvVar(var)
        for name, var in (
            ("staging_dir", "STAGING_DIR"),
            ("compression", "PARQUET_COMPRESSION"),
            ("retention_hours", "STAGING_RETENTION_HOURS"),
        )
        if settings.is_set(var)
    }
    return ParquetStagingIOManager(target_db=target_db, **fields)


# -- the asset body --------------------------------------------------------------------------
def run_table_staging(
    context: dg.AssetExecutionContext,
    cfg: TableConfig,
    output_name: str,
    source_db: MySQLResource,
    target_db: MySQLResource,
    staging: ParquetStagingIOManager,
    settings: Settings,
) -> Iterator[dg.Output[StagedTable] | dg.AssetCheckResult]:
    """Extract to staged files and hand them to the I/O manager; then the same checks (and
    `detect_deletes`) as direct mode, once the I/O manager has loaded and committed."""
    run = TableRun.start(context, cfg, source_db, target_db, settings)
    yield from run.pre_sync_results()
    with run.failures():
        staging_settings = staging.settings()
        with run.table_sync() as sync:
            staged = stage_table(sync, staging_settings, context.run.run_id)
            staged.secrets = run.secrets
            try:
                # handle_output loads the parts as they are written and commits, while this
                # body waits here with the table's lock held
                yield dg.Output(staged, output_name=output_name)
            finally:
                staged.writer.stop()
            if sync.loader is not None:
                deleted = run.delete_missing_rows(sync.loader.strategy)
                if deleted:
                    context.log.info(
                        "%s: %s rows deleted in the source removed", cfg.table, deleted
                    )
    yield from run.post_sync_results()


def build_staging_asset(cfg: TableConfig, settings: Settings) -> dg.AssetsDefinition:
    """The table's asset in staging mode: same spec, checks, retries and partitions as direct
    mode; its output goes to the I/O manager."""
    spec = table_asset_spec(cfg, settings).with_io_manager_key(IO_MANAGER_KEY)
    output_name = spec.key.to_python_identifier()

    @table_multi_asset(cfg, spec, settings)
    def sync_table(
        context: dg.AssetExecutionContext,
        source_db: MySQLResource,
        target_db: MySQLResource,
        staging_io_manager: dg.ResourceParam[ParquetStagingIOManager],
    ) -> Iterator[dg.Output[StagedTable] | dg.AssetCheckResult]:
        yield from run_table_staging(
            context, cfg, output_name, source_db, target_db, staging_io_manager, settings
        )

    return sync_table
