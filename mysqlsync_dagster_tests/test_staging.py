"""Staging mode: Parquet files under STAGING_DIR, loaded by the staging I/O manager."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.pipeline.staging import (
    MANIFEST,
    StagingManifest,
    StagingSettings,
    remove_expired,
)
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.targets.mysql.loader import key_range_sql
from mysqlsync_dagster_tests.harness import (
    failure_message,
    materialization_metadata,
    stored_cursor,
)

ORDERS = {"table": "orders", "primary_key": "id", "modifier": "updated_at", "mode": "staging"}


def create_orders(sync_env, rows=200):
    sync_env.source_exec(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, status VARCHAR(20) NOT NULL,"
        " amount DECIMAL(12,2), note TEXT, updated_at DATETIME NOT NULL, KEY (updated_at))",
        "INSERT INTO orders SELECT seq, 'new', seq / 10, REPEAT('n', seq % 7),"
        f" TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_{rows}",
    )


def failed_sync(sync_env, monkeypatch, table=ORDERS):
    """Sync `table` once, without retries: it must fail; returns its failure's message."""
    result = sync_env.sync([table], raise_on_error=False, environ={"SYNC_RETRIES": "0"})
    assert not result.success
    return failure_message(result, "sync_orders")


def run_dirs(sync_env, table="orders"):
    return sorted((Path(sync_env.staging_dir) / table).iterdir())


def test_round_trip_through_staged_parts(sync_env):
    create_orders(sync_env)
    first = sync_env.sync([{**ORDERS, "batch_size": 64}])
    meta = materialization_metadata(first)
    assert meta["strategy"] == "swap"
    assert meta["mode"] == "staging"
    assert meta["rows_written"] == 200
    assert meta["files_staged"] == 2  # 4 batches of 64 rows, BATCHES_PER_PART to a part
    assert meta["rows_staged"] == 200
    assert meta["bytes_staged"] > 0
    assert meta["compression"] == "zstd"
    assert meta["compression_ratio"] > 1
    assert 10 < meta["reader_peak_rss_mb"] < 1000  # the connectorx reader process's own peak
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")
    assert stored_cursor(sync_env) == "2024-01-01 03:20:00"

    [run_dir] = run_dirs(sync_env)
    manifest = StagingManifest.read(run_dir)
    assert manifest.status == "loaded"
    assert manifest.strategy == "swap"
    assert manifest.cursor_before is None
    assert manifest.cursor_after == "2024-01-01 03:20:00"
    assert [c["name"] for c in manifest.columns] == [
        "id",
        "status",
        "amount",
        "note",
        "updated_at",
    ]
    assert manifest.rows == 200 and manifest.batch_size == 64
    assert [f.rows for f in manifest.files] == [128, 72]
    for staged, groups in zip(manifest.files, [[64, 64], [64, 8]], strict=True):
        footer = pq.ParquetFile(run_dir / staged.name).metadata
        assert staged.rows == footer.num_rows  # row groups of batch_size
        assert [footer.row_group(g).num_rows for g in range(footer.num_row_groups)] == groups
    with sync_env.target.connect() as conn:
        load_ids = conn.exec_driver_sql("SELECT DISTINCT _dlt_load_id FROM orders").scalars()
        assert list(load_ids) == [manifest.load_id]

    sync_env.source_exec(
        "UPDATE orders SET status = 'paid', updated_at = '2024-02-01 00:00:00' WHERE id % 10 = 0",
        "INSERT INTO orders VALUES (201, 'new', 1.5, NULL, '2024-02-01 00:00:01')",
    )
    second = materialization_metadata(sync_env.sync([{**ORDERS, "batch_size": 64}]))
    assert second["strategy"] == "upsert"
    assert second["rows_written"] == 21  # 20 updated (the row at the old cursor among them), 1 new
    assert second["merge_ranges"] == 1
    assert second["dagster/row_count"] == 201
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")
    assert stored_cursor(sync_env) == "2024-02-01 00:00:01"
    assert len(run_dirs(sync_env)) == 2  # kept for the retention period


@pytest.mark.parametrize("codec", ["snappy", "zstd", "gzip", "brotli"])
def test_every_compression_codec(sync_env, codec):
    create_orders(sync_env, rows=50)
    sync_env.compression = codec
    meta = materialization_metadata(sync_env.sync([ORDERS]))
    assert meta["compression"] == codec
    [run_dir] = run_dirs(sync_env)
    parquet = pq.ParquetFile(run_dir / StagingManifest.read(run_dir).files[0].name)
    assert parquet.metadata.row_group(0).column(0).compression == codec.upper()
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")


def test_chunked_upsert_on_a_composite_key(sync_env):
    sync_env.source_exec(
        "CREATE TABLE shipments (region VARCHAR(8) NOT NULL, n INT NOT NULL, qty INT NOT NULL,"
        " updated_at DATETIME(6) NOT NULL, PRIMARY KEY (region, n), KEY (updated_at))",
        "INSERT INTO shipments SELECT ELT(1 + seq % 3, 'eu', 'us', 'apac'), seq, seq,"
        " '2024-01-01 00:00:00' FROM seq_1_to_90",
    )
    table = {
        "table": "shipments",
        "primary_key": ["region", "n"],
        "modifier": "updated_at",
        "mode": "staging",
        "batch_size": 7,
    }
    assert sync_env.sync([table]).success
    sync_env.source_exec(
        "UPDATE shipments SET qty = -qty, updated_at = '2024-01-02 00:00:00.5' WHERE n <= 40",
        "INSERT INTO shipments VALUES ('eu', 1000, 1, '2024-01-02 00:00:01')",
    )
    meta = materialization_metadata(sync_env.sync([table]), node="sync_shipments")
    assert meta["strategy"] == "upsert"
    assert meta["rows_written"] == 91  # every row sits at the old cursor, plus the new one
    assert meta["merge_ranges"] == math.ceil(91 / 7)  # ranges of at most batch_size keys
    assert sync_env.target_rows("shipments", "region, n") == sync_env.source_rows(
        "shipments", "region, n"
    )


def test_key_range_sql_compares_composite_keys_column_by_column():
    sql, params = key_range_sql(["a", "b"], ("x", 3), ">", "lo")
    assert sql == "(`a` > %(lo0)s) OR (`a` = %(lo0)s AND `b` > %(lo1)s)"
    assert params == {"lo0": "x", "lo1": 3}
    sql, _ = key_range_sql(["a", "b"], ("x", 3), "<=", "hi")
    assert sql == (
        "(`a` < %(hi0)s) OR (`a` = %(hi0)s AND `b` < %(hi1)s) OR (`a` = %(hi0)s AND `b` = %(hi1)s)"
    )
    assert key_range_sql(["a"], None, ">", "lo") == ("1", {})


def test_settings_and_retention(tmp_path):
    settings = StagingSettings.parse(str(tmp_path), "GZIP", "1.5")
    assert (settings.compression, settings.retention_hours) == ("gzip", 1.5)
    assert StagingSettings.parse(None, None, None).directory == Path(".staging").absolute()
    with pytest.raises(ValueError, match="lz4"):
        StagingSettings.parse(None, "lz4", None)
    with pytest.raises(ValueError, match="STAGING_RETENTION_HOURS"):
        StagingSettings.parse(None, None, "a day")
    old, new = tmp_path / "t" / "old", tmp_path / "t" / "new"
    old.mkdir(parents=True)
    new.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert remove_expired(tmp_path / "t", 1.5) == [old]
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["new"]


def test_downstream_assets_read_the_synced_table(sync_env):
    create_orders(sync_env, rows=30)
    seen = {}

    @dg.asset(ins={"orders": dg.AssetIn(key="orders")})  # the table asset's own I/O manager
    def as_arrow(orders: pa.Table) -> None:
        seen["arrow"] = orders

    @dg.asset(ins={"orders": dg.AssetIn(key="orders", input_manager_key="staging_io_manager")})
    def as_pandas(orders: pd.DataFrame) -> None:
        seen["pandas"] = orders

    @dg.asset(ins={"orders": dg.AssetIn(key="orders", input_manager_key="staging_io_manager")})
    def as_stream(orders: pa.RecordBatchReader) -> None:
        seen["stream"] = sum(batch.num_rows for batch in orders)

    result = sync_env.sync([ORDERS], extra_assets=[as_arrow, as_pandas, as_stream])
    assert result.success
    assert seen["arrow"].num_rows == 30
    assert seen["arrow"].column_names == ["id", "status", "amount", "note", "updated_at"]
    assert sorted(seen["arrow"].column("id").to_pylist()) == list(range(1, 31))
    assert isinstance(seen["pandas"], pd.DataFrame) and len(seen["pandas"]) == 30
    assert seen["stream"] == 30


CRASHING_SYNC = """
import json, sys
import dagster as dg
from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions, table_assets
from mysqlsync_dagster.settings import Settings
defs = build_definitions(parse_tables_config(json.loads(sys.argv[1]), "test"), Settings.from_environ())
dg.materialize(list(defs.assets), resources=defs.resources)
"""


def test_a_process_killed_between_staging_and_load_leaves_the_target_and_reruns_clean(sync_env):
    create_orders(sync_env)
    assert sync_env.sync([ORDERS]).success
    before, cursor_before = sync_env.target_rows("orders"), stored_cursor(sync_env)
    sync_env.source_exec("UPDATE orders SET status = 'paid', updated_at = NOW() WHERE id <= 50")

    env = {
        **os.environ,
        "SOURCE_DB_URL": sync_env.source_url(),
        "TARGET_DB_URL": sync_env.target_url(),
        "STAGING_DIR": sync_env.staging_dir,
    }
    # A reader holding row locks on the live table: the merge cannot start, so the process is
    # certainly between "files staged" and "load committed" when it is killed.
    blocker = sync_env.target.connect()
    blocker.exec_driver_sql("BEGIN")
    blocker.exec_driver_sql("SELECT * FROM orders FOR UPDATE").all()
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SYNC, json.dumps([ORDERS])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        staged = None
        while time.monotonic() < deadline and process.poll() is None:
            dirs = [d for d in run_dirs(sync_env) if (d / MANIFEST).exists()]
            manifests = [StagingManifest.read(d) for d in dirs]
            staged = next((m for m in manifests if m.status == "staged"), None)
            if staged is not None:
                break
            time.sleep(0.1)
        assert staged is not None, process.stderr.read().decode()[-2000:] if process.poll() else ""
        time.sleep(0.5)  # into the load: the stage table is filling or the merge is waiting
        process.kill()
        process.wait()
    finally:
        blocker.rollback()
        blocker.close()
    assert staged.rows == 51 and staged.status == "staged"
    assert sync_env.target_rows("orders") == before
    assert stored_cursor(sync_env) == cursor_before

    rerun = materialization_metadata(sync_env.sync([ORDERS]))
    assert rerun["strategy"] == "upsert"
    assert rerun["cursor_before"] == cursor_before
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")
    assert [StagingManifest.read(d).status for d in run_dirs(sync_env)][-1] == "loaded"


def test_an_empty_table_and_a_table_emptied_later(sync_env):
    sync_env.source_exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(5))")
    table = {"table": "t", "primary_key": "id", "mode": "staging"}
    assert materialization_metadata(sync_env.sync([table]), node="sync_t")["rows_written"] == 0
    sync_env.source_exec("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    assert sync_env.sync([table]).success
    assert sync_env.target_rows("t") == [(1, "a"), (2, "b")]
    sync_env.source_exec("DELETE FROM t")
    assert sync_env.sync([table]).success
    assert sync_env.target_rows("t") == []


def test_extraction_progress_lines(caplog):
    import logging

    from mysqlsync_dagster.pipeline.parts import ExtractionProgress

    log = logging.getLogger("test_progress")
    progress = ExtractionProgress(log.info, "orders", 1000, every_seconds=0)
    progress.started -= 1
    with caplog.at_level(logging.INFO, logger="test_progress"):
        progress(250)
    [line] = caplog.messages
    assert line.startswith("orders: extracted 250 of ~1,000 rows, ")
    assert "rows/s, ETA " in line


def test_a_failed_load_changes_nothing_and_releases_the_table(sync_env, monkeypatch):
    from mysqlsync_dagster.targets.mysql.loader import TableLoader

    create_orders(sync_env, rows=20)
    assert sync_env.sync([ORDERS]).success
    before, cursor_before = sync_env.target_rows("orders"), stored_cursor(sync_env)
    sync_env.source_exec("UPDATE orders SET status = 'paid', updated_at = NOW() WHERE id <= 5")

    def broken_merge(self):
        raise RuntimeError("the merge broke")

    monkeypatch.setattr(TableLoader, "merge_stage", broken_merge)
    assert "the merge broke" in failed_sync(sync_env, monkeypatch, ORDERS)
    assert sync_env.target_rows("orders") == before
    assert stored_cursor(sync_env) == cursor_before
    with sync_env.target.connect() as conn:
        work_tables = conn.exec_driver_sql("SHOW TABLES LIKE '\\_mss\\_%%'").all()
    assert work_tables == []
    assert StagingManifest.read(run_dirs(sync_env)[-1]).status == "staged"

    monkeypatch.undo()
    assert sync_env.sync([ORDERS]).success  # the lock was released; the re-run converges
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")


def test_wide_rows_are_extracted_in_smaller_batches():
    from mysqlsync_dagster.pipeline.extract import EXTRACT_BATCH_BYTES, extract_batch_rows

    assert extract_batch_rows(50_000, 94) == 50_000  # the benchmark's orders rows fit
    assert extract_batch_rows(50_000, 380) == EXTRACT_BATCH_BYTES // 380  # its 40-column rows
    assert extract_batch_rows(50_000, 10 * EXTRACT_BATCH_BYTES) == 1  # huge BLOB rows
    assert extract_batch_rows(64, None) == 64  # no estimate (an empty table)


def _work_tables(sync_env):
    with sync_env.target.connect() as conn:
        return conn.exec_driver_sql("SHOW TABLES LIKE '\\_mss\\_%%'").all()


def _stage_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "mysqlsync-extract"]


def test_an_extraction_that_fails_midway_leaves_the_target_and_the_rerun_converges(
    sync_env, monkeypatch
):
    """The error of the extraction thread reaches the I/O manager, which is loading the parts
    already written: the run fails, nothing it loaded is kept."""
    from mysqlsync_dagster.pipeline.run import TableSync

    create_orders(sync_env)
    assert sync_env.sync([ORDERS]).success
    before, cursor_before = sync_env.target_rows("orders"), stored_cursor(sync_env)
    sync_env.source_exec("UPDATE orders SET status = 'paid', updated_at = NOW() WHERE id <= 100")
    resource = TableSync.batches

    def breaks_after_three_batches(self):
        for number, batch in enumerate(resource(self)):
            if number == 3:
                raise ConnectionError("Lost connection to server during query")
            yield batch

    monkeypatch.setattr(TableSync, "batches", breaks_after_three_batches)
    assert "Lost connection to server during query" in failed_sync(
        sync_env, monkeypatch, {**ORDERS, "batch_size": 10}
    )
    manifest = StagingManifest.read(run_dirs(sync_env)[-1])
    assert manifest.status == "extracting" and manifest.rows == 20  # parts of 2 batches
    assert sync_env.target_rows("orders") == before
    assert stored_cursor(sync_env) == cursor_before
    assert _work_tables(sync_env) == []
    assert _stage_threads() == []

    monkeypatch.undo()
    assert sync_env.sync([{**ORDERS, "batch_size": 10}]).success
    assert sync_env.target_rows("orders") == sync_env.source_rows("orders")


def test_a_load_that_fails_midway_stops_the_extraction(sync_env, monkeypatch):
    from mysqlsync_dagster.targets.mysql.loader import TableLoader

    create_orders(sync_env)
    assert sync_env.sync([ORDERS]).success
    before = sync_env.target_rows("orders")
    sync_env.source_exec("UPDATE orders SET status = 'paid', updated_at = NOW() WHERE id <= 100")
    load_parquet = TableLoader.load_parquet
    loaded = []

    def breaks_on_the_second_part(self, path, load_id):
        if loaded:
            raise RuntimeError("the target broke")
        loaded.append(path)
        load_parquet(self, path, load_id)

    monkeypatch.setattr(TableLoader, "load_parquet", breaks_on_the_second_part)
    assert "the target broke" in failed_sync(sync_env, monkeypatch, {**ORDERS, "batch_size": 10})
    assert len(loaded) == 1
    assert _stage_threads() == []  # the extraction thread was stopped and joined
    assert sync_env.target_rows("orders") == before
    assert _work_tables(sync_env) == []


def test_progress_lines_are_throttled(caplog):
    import logging

    from mysqlsync_dagster.pipeline.parts import ExtractionProgress

    log = logging.getLogger("test_load_progress")
    progress = ExtractionProgress(log.info, "orders", 1000)  # a line at most every 10 s
    progress.started = progress.last_logged = time.perf_counter() - 2
    with caplog.at_level(logging.INFO, logger="test_load_progress"):
        progress(100)  # 2 s in: too soon for a line
        assert caplog.messages == []
        progress.every_seconds = 1.0
        progress(100)
        progress(200)  # at once after the last line: none
    [line] = caplog.messages
    assert line.startswith("orders: extracted 100 of ~1,000 rows, ") and "rows/s, ETA " in line


def test_a_partitioned_downstream_asset_reads_its_partition_only(sync_env):
    from mysqlsync_dagster.orchestration.factory import build_definitions, table_assets

    create_orders(sync_env, rows=3000)  # one row a minute from 2024-01-01 00:01: ~2 days
    sync_env.source_exec("UPDATE orders SET updated_at = '2023-06-01' WHERE id = 5")  # early
    partitioned = {**ORDERS, "partitions": "daily", "partition_start": "2024-01-01"}
    assert sync_env.sync([partitioned]).success  # no partition key: every partition
    defs = build_definitions(parse_tables_config([partitioned], "test"), Settings.from_environ({}))
    assets = defs.assets
    [orders] = table_assets(defs)
    seen = {}

    @dg.asset(
        partitions_def=orders.partitions_def,
        ins={"orders": dg.AssetIn(key="orders", input_manager_key="staging_io_manager")},
    )
    def daily_report(context: dg.AssetExecutionContext, orders: pa.Table) -> None:
        seen[context.partition_key] = sorted(orders.column("id").to_pylist())

    for day in ("2024-01-01", "2024-01-02"):
        result = dg.materialize(
            [*assets, daily_report],
            selection=[daily_report],
            partition_key=day,
            resources=sync_env.resources(),
        )
        assert result.success
    # the first partition also holds rows from before the start (id 5 moved to 2023)
    assert seen["2024-01-01"] == list(range(1, 1440))
    assert seen["2024-01-02"] == list(range(1440, 2880))
