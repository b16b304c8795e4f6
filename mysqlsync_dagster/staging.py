"""Staging mode: dlt extracts a table to compressed Parquet files, an I/O manager loads them.

One run of a table with `"mode": "staging"`:

1. The asset prepares a `TableSync` (validate, mirror the DDL, lock, cursor, strategy), removes
   this table's run directories older than `STAGING_RETENTION_HOURS`, and runs the dlt
   pipeline with a `ParquetStager` as its destination: every file dlt writes is rewritten to
   `STAGING_DIR/<table>/<UTC time>-<run id>/part-NNNNN.parquet` with `PARQUET_COMPRESSION` and
   row groups of `batch_size` rows. `manifest.json` next to them records the plan (target,
   wire columns and kinds, strategy, cursor before/after, batch size, codec) and the files
   (rows, bytes); it is written with status `staged` once extraction is complete.
2. The asset yields `dg.Output(StagedTable)`. While its body is suspended there, Dagster calls
   `ParquetStagingIOManager.handle_output`, so the TableSync and its lock are still held.
3. `handle_output` loads the files through the sync's `TableLoader` (the one loader of both
   modes): `swap` fills the aside table and swaps it in; `upsert` bulk-loads every file into
   the stage table, then merges it into the live table in primary-key ranges of `batch_size`
   rows. The cursor is written in the same commit as the swap / after the last range, then the
   manifest is marked `loaded`.
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import dlt
import pyarrow as pa
import pyarrow.parquet as pq

from mysqlsync_dagster import retries
from mysqlsync_dagster.assets import (
    TableRun,
    result_metadata,
    table_asset_spec,
    table_multi_asset,
    target_row_count,
)
from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.db import run_sql
from mysqlsync_dagster.partitions import DEFAULT_SOURCE_TIMEZONE
from mysqlsync_dagster.resources import MySQLResource
from mysqlsync_dagster.schema import DLT_COLUMNS
from mysqlsync_dagster.sync import SyncResult, TableSync

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
    strategy: str
    columns: list[dict[str, str]]  # wire columns in file order: name, kind
    cursor_before: str | None
    cursor_after: str | None
    batch_size: int
    compression: str
    created_at: str
    status: str = "extracting"  # -> "staged" -> "loaded"
    files: list[StagedFile] = field(default_factory=list)
    extract_seconds: float = 0.0  # the whole dlt pipeline, rewrite included
    rewrite_seconds: float = 0.0  # of which: placing dlt's files in the run directory
    load_seconds: float = 0.0

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
_CODEC_KEY = "data_writer.compression"


@contextlib.contextmanager
def dlt_parquet_codec(codec: str) -> Iterator[None]:
    """dlt's Parquet writer compresses with `codec` for the duration (its setting is global).

    Dagster runs one step at a time per process (in-process or one process per step), so no
    other pipeline writes meanwhile; direct mode keeps dlt's default, snappy.
    """
    previous = dlt.config.get(_CODEC_KEY)
    dlt.config[_CODEC_KEY] = codec
    try:
        yield
    finally:
        dlt.config[_CODEC_KEY] = previous or "snappy"


class ParquetStager:
    """dlt destination callback: puts each Parquet file dlt wrote into the run directory.

    dlt already wrote it with the codec (`dlt_parquet_codec`) and one row group per extracted
    batch of `batch_size` rows: then it is hard-linked (or copied) as it is. Otherwise it is
    rewritten, streaming batch by batch, so memory stays bounded. dlt may call from several
    load threads: files are staged one at a time.
    """

    def __init__(self, run_dir: Path, manifest: StagingManifest, log: Any) -> None:
        self.run_dir = run_dir
        self.manifest = manifest
        self.log = log
        self._lock = threading.Lock()

    def _as_wanted(self, footer: pq.FileMetaData) -> bool:
        codec = self.manifest.compression.upper()
        return all(
            footer.row_group(g).num_rows <= self.manifest.batch_size
            and all(
                footer.row_group(g).column(c).compression == codec
                for c in range(footer.num_columns)
            )
            for g in range(footer.num_row_groups)
        )

    def _rewrite(self, source: pq.ParquetFile, destination: Path) -> None:
        batch_size = self.manifest.batch_size
        with pq.ParquetWriter(
            destination, source.schema_arrow, compression=self.manifest.compression
        ) as writer:
            for batch in source.iter_batches(batch_size=batch_size):
                writer.write_table(pa.Table.from_batches([batch]), row_group_size=batch_size)

    def __call__(self, path: str) -> None:
        with self._lock:
            self._stage(path)

    def _stage(self, path: str) -> None:
        started = time.perf_counter()
        source = pq.ParquetFile(path)
        name = f"part-{len(self.manifest.files):05d}.parquet"
        destination = self.run_dir / name
        if self._as_wanted(source.metadata):
            try:
                os.link(path, destination)
            except OSError:  # another file system
                shutil.copyfile(path, destination)
        else:
            self._rewrite(source, destination)
        footer = pq.ParquetFile(destination).metadata
        rows = footer.num_rows
        uncompressed = sum(
            footer.row_group(g).column(c).total_uncompressed_size
            for g in range(footer.num_row_groups)
            for c in range(footer.num_columns)
        )
        staged = StagedFile(name, rows, destination.stat().st_size, uncompressed)
        self.manifest.files.append(staged)
        self.manifest.rewrite_seconds += time.perf_counter() - started
        self.manifest.save(self.run_dir)
        self.log.info(
            "%s: staged %s (%s rows, %s bytes, %s)",
            self.manifest.table,
            name,
            f"{rows:,}",
            f"{staged.bytes:,}",
            self.manifest.compression,
        )


class ExtractionProgress:
    """dlt map step: passes batches through, logging rows read, rows/s and ETA every 10 s."""

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
    """The asset's output in staging mode: the staged files, and the live sync to load them."""

    run_dir: Path
    manifest: StagingManifest
    sync: TableSync = field(repr=False, compare=False)
    secrets: list[str] = field(default_factory=list, repr=False, compare=False)


def stage_table(sync: TableSync, settings: StagingSettings, run_id: str) -> StagedTable:
    """Extract the prepared sync's rows with dlt into a new run directory."""
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
        strategy=loader.strategy,
        columns=[{"name": w.column.name, "kind": w.kind} for w in loader.wire],
        cursor_before=sync.cursor_before,
        cursor_after=(sync.cursor_snapshot or sync.cursor_before) if cfg.incremental else None,
        batch_size=cfg.batch_size,
        compression=settings.compression,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    manifest.save(run_dir)
    started = time.perf_counter()
    pipeline = sync.dlt_pipeline(ParquetStager(run_dir, manifest, sync.log))
    source = sync.dlt_source()
    for resource in source.resources.values():
        resource.add_map(ExtractionProgress(sync, started))
    with dlt_parquet_codec(settings.compression):
        pipeline.run(source)
    manifest.extract_seconds = time.perf_counter() - started
    manifest.status = "staged"
    manifest.save(run_dir)
    sync.log.info(
        "%s: %s rows staged in %d file(s), %s bytes (%s, %.1fx) in %.1fs under %s",
        cfg.table,
        f"{manifest.rows:,}",
        len(manifest.files),
        f"{manifest.bytes:,}",
        manifest.compression,
        manifest.compression_ratio,
        manifest.extract_seconds,
        run_dir,
    )
    return StagedTable(run_dir, manifest, sync)


def load_staged(staged: StagedTable) -> tuple[SyncResult, int]:
    """Load the staged files into the target and commit; returns the result and merge ranges."""
    sync, manifest = staged.sync, staged.manifest
    loader = sync.loader
    assert loader is not None
    started = time.perf_counter()
    sync.start_phase(manifest.rows)
    for staged_file in manifest.files:
        loader.load_parquet(staged.run_dir / staged_file.name)
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
                "rewrite_seconds": dg.MetadataValue.float(round(manifest.rewrite_seconds, 3)),
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
        `read_batch_size` rows when annotated so (for tables larger than memory). A
        partitioned input gets the whole table: the target holds the merged result of every
        window, not per-window copies.
        """
        import connectorx as cx

        upstream = context.upstream_output
        metadata = (upstream.definition_metadata if upstream else None) or {}
        raw = metadata.get("target_table")
        table = getattr(raw, "value", raw)
        if not table:
            raise dg.Failure(
                f"{IO_MANAGER_KEY} can only read tables synced by mysqlsync assets "
                f"(asset {context.asset_key.to_user_string()} has no 'target_table' metadata)"
            )
        engine = self.target_db.engine
        with engine.connect() as conn:
            columns = [
                name
                for (name,) in run_sql(
                    conn,
                    "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA ="
                    " DATABASE() AND TABLE_NAME = %(t)s ORDER BY ORDINAL_POSITION",
                    {"t": str(table)},
                )
                if name not in DLT_COLUMNS
            ]
        if not columns:
            raise dg.Failure(f"target table {table!r} does not exist yet: materialize it first")
        prepare = engine.dialect.identifier_preparer
        query = f"SELECT {', '.join(prepare.quote(c) for c in columns)} FROM {prepare.quote(table)}"
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


def staging_io_manager_from_env(
    target_db: MySQLResource, environ: Mapping[str, str] | None = None
) -> ParquetStagingIOManager:
    """The I/O manager with each staging variable that is set bound as a `dg.EnvVar`."""
    env = os.environ if environ is None else environ
    fields = {
        name: dg.EnvVar(var)
        for name, var in (
            ("staging_dir", "STAGING_DIR"),
            ("compression", "PARQUET_COMPRESSION"),
            ("retention_hours", "STAGING_RETENTION_HOURS"),
        )
        if env.get(var)
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
) -> Iterator[dg.Output[StagedTable] | dg.AssetCheckResult]:
    """Extract to staged files and hand them to the I/O manager; then the same checks (and
    `detect_deletes`) as direct mode, once the I/O manager has loaded and committed."""
    run = TableRun.start(context, cfg, source_db, target_db)
    yield from run.pre_sync_results()
    with run.failures():
        settings = staging.settings()
        with run.table_sync() as sync:
            staged = stage_table(sync, settings, context.run.run_id)
            staged.secrets = run.secrets
            # handle_output loads and commits while this body waits here, lock still held
            yield dg.Output(
                staged,
                output_name=output_name,
                metadata={"rows_staged": dg.MetadataValue.int(staged.manifest.rows)},
            )
            if sync.loader is not None:
                deleted = run.delete_missing_rows(sync.loader.strategy)
                if deleted:
                    context.log.info(
                        "%s: %s rows deleted in the source removed", cfg.table, deleted
                    )
    yield from run.post_sync_results()


def build_staging_asset(
    cfg: TableConfig, interval_seconds: int, timezone: str = DEFAULT_SOURCE_TIMEZONE
) -> dg.AssetsDefinition:
    """The table's asset in staging mode: same spec, checks, retries and partitions as direct
    mode; its output goes to the I/O manager."""
    spec = table_asset_spec(cfg, interval_seconds, timezone).with_io_manager_key(IO_MANAGER_KEY)
    output_name = spec.key.to_python_identifier()

    @table_multi_asset(cfg, spec)
    def sync_table(
        context: dg.AssetExecutionContext,
        source_db: MySQLResource,
        target_db: MySQLResource,
        staging_io_manager: dg.ResourceParam[ParquetStagingIOManager],
    ) -> Iterator[dg.Output[StagedTable] | dg.AssetCheckResult]:
        yield from run_table_staging(
            context, cfg, output_name, source_db, target_db, staging_io_manager
        )

    return sync_table
