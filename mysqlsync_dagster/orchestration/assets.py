"""The asset factory: one dlt-backed Dagster asset per configured table.

Building definitions never touches a database: specs come from tables.json alone. At run time
the asset prepares a `TableSync`, runs its dlt pipeline through `DagsterDltResource.run`, and
reports what happened as numeric metadata the UI can plot.
"""

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster_dlt import DagsterDltResource, DagsterDltTranslator
from dagster_dlt.translator import DltResourceTranslatorData

from mysqlsync_dagster.config import TableConfig, dagster_safe_name
from mysqlsync_dagster.db import run_sql
from mysqlsync_dagster.orchestration import retries
from mysqlsync_dagster.orchestration.cadence import freshness_minutes
from mysqlsync_dagster.orchestration.partitions import (
    backfill_policy,
    partitions_definition,
    window_for_context,
)
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.pipeline.run import SyncResult, TableSync
from mysqlsync_dagster.pipeline.windows import ModifierWindow
from mysqlsync_dagster.schema import quote
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.targets.mysql.loader import use_jemalloc
from mysqlsync_dagster.verify.checks import (
    CheckOutcome,
    TablePair,
    TransientCheckError,
    check_result,
    delete_missing_rows,
    post_sync_check_results,
    source_row_count,
    table_check_specs,
)

GROUP = "mysqlsync"
SOURCE_GROUP = "mysql_source"
TARGET_POOL = "mysqlsync_target"  # one slot per table sync writing to the target (dagster.yaml)
PARTITION_LOCK_WAIT_SECONDS = 60  # backfill runs of one table queue on its lock, briefly


def target_asset_key(cfg: TableConfig) -> dg.AssetKey:
    return dg.AssetKey([cfg.key])


def source_asset_key(cfg: TableConfig) -> dg.AssetKey:
    return dg.AssetKey(["source", dagster_safe_name(cfg.table)])


def source_asset_spec(cfg: TableConfig) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=source_asset_key(cfg),
        description=f"Table `{cfg.table}` in the source database (read, never written).",
        group_name=SOURCE_GROUP,
        kinds={"mysql"},
        metadata={"dagster/table_name": cfg.table},
    )


def table_asset_spec(cfg: TableConfig, settings: Settings) -> dg.AssetSpec:
    strategy = (
        f"incremental merge on `{cfg.modifier}`" if cfg.incremental else "full refresh (swap)"
    )
    return dg.AssetSpec(
        key=target_asset_key(cfg),
        deps=[source_asset_key(cfg)],
        description=f"`{cfg.table}` copied to `{cfg.target}` in the target database: {strategy}.",
        group_name=GROUP,
        kinds={"dlt", "mysql"},
        partitions_def=partitions_definition(cfg, settings.source_timezone),
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=dt.timedelta(minutes=freshness_minutes(cfg, settings.interval))
        ),
        metadata={
            "source_table": cfg.table,
            "target_table": cfg.target,
            "primary_key": ", ".join(cfg.primary_key),
            "modifier": cfg.modifier or "",
            "mode": cfg.mode,
            "strategy": "incremental" if cfg.incremental else "full_refresh",
            "batch_size": dg.MetadataValue.int(cfg.batch_size),
            "partitions": cfg.partitions,
            "dagster/table_name": cfg.target,
        },
    )


class TableTranslator(DagsterDltTranslator):
    """Maps this table's dlt resource to its asset spec (the same at build and run time)."""

    def __init__(self, cfg: TableConfig, settings: Settings) -> None:
        self.spec = table_asset_spec(cfg, settings)

    def get_asset_spec(self, data: DltResourceTranslatorData) -> dg.AssetSpec:
        return self.spec


def result_metadata(
    result: SyncResult, target_db: str, row_count: int, dlt_meta: dict[str, Any]
) -> dict[str, Any]:
    columns = [
        dg.TableColumn(
            name=name,
            type=column_type,
            constraints=dg.TableColumnConstraints(nullable=nullable),
        )
        for name, column_type, nullable in result.columns
    ]
    rows_loaded = dlt_meta.get("rows_loaded")
    rows_extracted = int(getattr(rows_loaded, "value", rows_loaded) or result.rows_written)
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(row_count),
        "dagster/table_name": f"{target_db}.{result.target}",
        "dagster/column_schema": dg.TableSchema(columns=columns),
        "strategy": result.strategy,
        "load_id": result.load.load_id or "",
        "rows_extracted": dg.MetadataValue.int(rows_extracted),
        "rows_written": dg.MetadataValue.int(result.rows_written),
        "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "rows_per_second": dg.MetadataValue.float(round(result.rows_per_second, 1)),
        "batches": dg.MetadataValue.int(result.load.batches),
        "files": dg.MetadataValue.int(result.load.files),
        "bytes_loaded": dg.MetadataValue.int(result.load.csv_bytes),
        "zero_dates_to_null": dg.MetadataValue.int(result.load.zero_dates),
        "cursor_before": result.cursor_before or "",
        "cursor_after": result.cursor_after or "",
        "columns_added": ", ".join(result.schema_changes.added),
        "columns_changed": ", ".join(result.schema_changes.modified),
        "columns_dropped_in_source": ", ".join(result.schema_changes.dropped_in_source),
    }
    if result.warnings:
        metadata["warnings"] = "\n".join(result.warnings)
    if result.source_rows_estimate is not None:
        metadata["source_rows_estimate"] = dg.MetadataValue.int(int(result.source_rows_estimate))
    if result.reader_peak_rss_mb is not None:
        metadata["reader_peak_rss_mb"] = dg.MetadataValue.float(round(result.reader_peak_rss_mb, 1))
    return metadata


def target_row_count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(run_sql(conn, f"SELECT COUNT(*) FROM {quote(table)}").scalar_one())


@dataclass
class TableRun:
    """What a table asset's run does around its sync, the same in direct and staging mode: the
    pre- and post-sync checks, the `TableSync` (with the partition window, if any), hard-delete
    detection, and failures reported as retryable or not."""

    context: dg.AssetExecutionContext
    cfg: TableConfig
    source_db: MySQLResource
    target_db: MySQLResource
    secrets: list[str]
    window: ModifierWindow | None
    pre_sync: CheckOutcome

    @classmethod
    def start(
        cls,
        context: dg.AssetExecutionContext,
        cfg: TableConfig,
        source_db: MySQLResource,
        target_db: MySQLResource,
        settings: Settings,
    ) -> "TableRun":
        use_jemalloc(settings.arrow_memory_pool)
        secrets = source_db.settings().secrets + target_db.settings().secrets
        pre_sync = source_row_count(cfg, source_db.engine)  # recorded before extraction
        return cls(
            context, cfg, source_db, target_db, secrets, window_for_context(context), pre_sync
        )

    def pre_sync_results(self) -> Iterator[dg.AssetCheckResult]:
        """A failed pre-sync check is reported at once: the sync then fails for that reason."""
        if not self.pre_sync.passed:
            yield check_result(self.pre_sync, target_asset_key(self.cfg))

    def table_sync(self) -> TableSync:
        return TableSync(
            self.cfg,
            self.source_db.settings(),
            self.source_db.engine,
            self.target_db.settings(),
            self.target_db.engine,
            log=self.context.log,
            window=self.window,
            lock_wait_seconds=PARTITION_LOCK_WAIT_SECONDS if self.window else 0,
        )

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Turn any error into a `dg.Failure` that says whether a retry can help."""
        try:
            yield
        except Exception as error:
            raise retries.sync_failure(self.cfg.table, error, self.secrets) from None

    def delete_missing_rows(self, strategy: str) -> int:
        """With `detect_deletes`, after an upsert (a swap drops such rows anyway)."""
        if not self.cfg.detect_deletes or strategy != "upsert":
            return 0
        pair = TablePair.open(self.cfg, self.source_db.engine, self.target_db.engine)
        return delete_missing_rows(pair, log=self.context.log).rows_deleted

    def post_sync_results(self) -> Iterator[dg.AssetCheckResult]:
        try:
            yield from post_sync_check_results(
                self.cfg,
                target_asset_key(self.cfg),
                self.source_db.engine,
                self.target_db.engine,
                self.pre_sync if self.pre_sync.passed else None,
                self.window,
            )
        except TransientCheckError as error:  # no verdict: retry the step (syncs are idempotent)
            raise retries.sync_failure(self.cfg.table, error, self.secrets) from None


def table_multi_asset(cfg: TableConfig, spec: dg.AssetSpec, settings: Settings) -> Any:
    """`dg.multi_asset` for a table's sync op, with its checks, pool, retries and backfills."""
    return dg.multi_asset(
        name=f"sync_{cfg.key}",
        specs=[spec],
        check_specs=table_check_specs(cfg, target_asset_key(cfg)),
        pool=TARGET_POOL,
        retry_policy=retries.retry_policy(settings),
        backfill_policy=backfill_policy(cfg),
        op_tags={"mysqlsync/table": cfg.key, "mysqlsync/mode": cfg.mode},
    )


def run_table_sync(
    context: dg.AssetExecutionContext,
    cfg: TableConfig,
    translator: TableTranslator,
    dlt: DagsterDltResource,
    source_db: MySQLResource,
    target_db: MySQLResource,
    settings: Settings,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    run = TableRun.start(context, cfg, source_db, target_db, settings)
    yield from run.pre_sync_results()
    with run.failures():
        with run.table_sync() as sync:
            dlt_meta: dict[str, Any] = {}
            for event in dlt.run(
                context=context,
                dlt_source=sync.dlt_source(),
                dlt_pipeline=sync.dlt_pipeline(),
                dagster_dlt_translator=translator,
            ):
                dlt_meta = dict(event.metadata or {})
            result = sync.finalize()
            rows_deleted = run.delete_missing_rows(result.strategy)
        row_count = (
            result.rows_written
            if result.strategy == "swap"
            else target_row_count(target_db.engine, cfg.target)
        )
    context.log.info(
        "%s: %s rows written in %.1fs (%s)",
        cfg.table,
        f"{result.rows_written:,}",
        result.seconds,
        result.strategy,
    )
    metadata = result_metadata(result, target_db.engine.url.database or "", row_count, dlt_meta)
    if cfg.detect_deletes:
        metadata["rows_deleted"] = dg.MetadataValue.int(rows_deleted)
    if run.window is not None:
        metadata["window"] = run.window.describe()
    yield dg.MaterializeResult(asset_key=target_asset_key(cfg), metadata=metadata)
    yield from run.post_sync_results()


def build_table_asset(cfg: TableConfig, settings: Settings) -> dg.AssetsDefinition:
    translator = TableTranslator(cfg, settings)

    @table_multi_asset(cfg, translator.spec, settings)
    def sync_table(
        context: dg.AssetExecutionContext,
        dlt: DagsterDltResource,
        source_db: MySQLResource,
        target_db: MySQLResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        yield from run_table_sync(context, cfg, translator, dlt, source_db, target_db, settings)

    return sync_table
