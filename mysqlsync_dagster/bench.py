"""`mysqlsync-dagster bench`: the DESIGN.md yardstick, measured in one run on this machine.

Starts a throwaway source and target server, fills the `orders` table with N rows, then times
(each as a ratio to the reference measured in the same run):

- the reference: `mariadb-dump --single-transaction --quick SRC orders | mariadb TGT`;
- extraction alone with each dlt sql_database backend (connectorx, pyarrow), as rows/s;
- a full sync of `orders` (first sync: built aside and swapped in), with peak memory;
- an incremental sync after 1% of the rows changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mysqlsync_dagster.demo import SCHEMA, orders_rows_sql
from mysqlsync_dagster.mariadb_server import MariaDBServer, find_binary

ORDERS_DDL = next(s for s in SCHEMA if "CREATE TABLE orders" in s)


def _timed(func: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = func()
    return time.perf_counter() - started, value


def _dump_pipe(source: MariaDBServer, target: MariaDBServer, db: str) -> float:
    dump = find_binary("mariadb-dump", "mysqldump")
    client = find_binary("mariadb", "mysql")
    if not dump or not client:
        raise SystemExit("mariadb-dump and mariadb clients are needed for the reference")
    command = (
        f"{dump} --no-defaults -uroot -h127.0.0.1 -P{source.port} --single-transaction --quick"
        f" bench orders | {client} --no-defaults -uroot -h127.0.0.1 -P{target.port} {db}"
    )
    seconds, _ = _timed(lambda: subprocess.run(command, shell=True, check=True))
    return seconds


def _sync_in_subprocess(env: dict[str, str], table_json: str) -> dict[str, Any]:
    """One sync of `orders` in a fresh process, so its peak memory is its own."""
    code = (
        "import json, resource, sys, time\n"
        "import dagster as dg\n"
        "from mysqlsync_dagster.config import parse_tables_config\n"
        "from mysqlsync_dagster.factory import build_definitions\n"
        "defs = build_definitions(parse_tables_config(json.loads(sys.argv[1])), 300)\n"
        "t = time.perf_counter()\n"
        "r = dg.materialize(list(defs.assets), resources=defs.resources)\n"
        "[m] = r.asset_materializations_for_node('sync_orders')\n"
        "print(json.dumps({'seconds': time.perf_counter() - t,\n"
        "  'rows': m.metadata['rows_written'].value, 'strategy': m.metadata['strategy'].value,\n"
        "  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, table_json],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"sync failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extract_rate(url: str, backend: str, batch_size: int) -> float:
    """Rows per second reading `orders` through dlt's sql_table with the wire SELECT."""
    from dlt.sources.sql_database import sql_table

    from mysqlsync_dagster.db import normalize_url, settings_from_env
    from mysqlsync_dagster.schema import read_table_shape
    from mysqlsync_dagster.sync import WireTableLoader
    from mysqlsync_dagster.wire import wire_columns

    settings = settings_from_env("SOURCE", {"SOURCE_DB_URL": url})
    engine = sa.create_engine(normalize_url(url))
    with engine.connect() as conn:
        shape = read_table_shape(conn, "bench", "orders")
    assert shape is not None
    wire = wire_columns(shape.copied_columns)
    query = sa.select(*[w.select_expression() for w in wire]).select_from(
        sa.table("orders", schema="bench")
    )
    kwargs: dict[str, Any] = {}
    if backend == "connectorx":
        kwargs = {
            "table_loader_class": WireTableLoader,
            "backend_kwargs": {
                "conn": settings.connectorx_url(),
                "return_type": "arrow_stream",
                "batch_size": batch_size,
            },
        }
    resource_ = sql_table(
        credentials=engine,
        table="orders",
        schema="bench",
        backend=backend,
        chunk_size=batch_size,
        reflection_level="minimal",
        query_adapter_callback=lambda _q, _t: query,
        **kwargs,
    )
    rows = 0
    started = time.perf_counter()
    for item in resource_:
        rows += item.num_rows
    seconds = time.perf_counter() - started
    engine.dispose()
    return rows / seconds


def run_benchmark(rows: int, batch_size: int, keep: bool = False) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="mysqlsync-bench-"))
    source = MariaDBServer(base / "source").start()
    target = MariaDBServer(base / "target").start()
    report: dict[str, Any] = {"rows": rows, "batch_size": batch_size}
    try:
        admin = {
            side: sa.create_engine(server.url())
            for side, server in (("source", source), ("target", target))
        }
        with admin["source"].begin() as conn:
            conn.exec_driver_sql("CREATE DATABASE bench")
            conn.exec_driver_sql("USE bench")
            conn.exec_driver_sql(ORDERS_DDL)
            step = 200_000
            for first in range(1, rows + 1, step):
                conn.exec_driver_sql(
                    orders_rows_sql(first, min(first + step - 1, rows)).replace("%", "%%")
                )
        with admin["target"].begin() as conn:
            conn.exec_driver_sql("CREATE DATABASE dump_copy")
            conn.exec_driver_sql("CREATE DATABASE sync_copy")

        report["reference_dump_seconds"] = _dump_pipe(source, target, "dump_copy")
        source_url = source.url("bench")
        report["extract_rows_per_second"] = {
            backend: round(_extract_rate(source_url, backend, batch_size))
            for backend in ("connectorx", "pyarrow")
        }
        env = {"SOURCE_DB_URL": source_url, "TARGET_DB_URL": target.url("sync_copy")}
        table = json.dumps(
            [
                {
                    "table": "orders",
                    "primary_key": "id",
                    "modifier": "updated_at",
                    "batch_size": batch_size,
                }
            ]
        )
        full = _sync_in_subprocess(env, table)
        with admin["source"].begin() as conn:
            conn.exec_driver_sql(
                "UPDATE bench.orders SET status = 'changed', updated_at = NOW() WHERE id %% 100 = 0"
            )
        incremental = _sync_in_subprocess(env, table)
        report["full_sync"] = full
        report["incremental_1pct"] = incremental
        reference = report["reference_dump_seconds"]
        report["ratios_to_dump"] = {
            "full_sync": round(full["seconds"] / reference, 2),
            "incremental_1pct": round(incremental["seconds"] / reference, 3),
        }
        with admin["source"].connect() as s, admin["target"].connect() as t:
            count = (
                "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, status, updated_at))) FROM {}.orders"
            )
            report["copy_matches_source"] = (
                s.exec_driver_sql(count.format("bench")).one()
                == t.exec_driver_sql(count.format("sync_copy")).one()
            )
        for engine in admin.values():
            engine.dispose()
    finally:
        if not keep:
            for server in (source, target):
                with contextlib.suppress(Exception):
                    server.stop()
            subprocess.run(["rm", "-rf", str(base)], check=False)
    report["bench_process_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return report


def format_report(report: dict[str, Any]) -> str:
    ref = report["reference_dump_seconds"]
    full, inc = report["full_sync"], report["incremental_1pct"]
    rates = report["extract_rows_per_second"]
    lines = [
        f"orders: {report['rows']:,} rows, batch_size {report['batch_size']:,}",
        f"reference  mariadb-dump | mariadb        {ref:8.1f}s   1.00x",
        f"full sync  (first sync, swap)            {full['seconds']:8.1f}s   "
        f"{report['ratios_to_dump']['full_sync']:.2f}x   peak RSS {full['peak_rss_mb']:.0f} MB",
        f"1% changed (incremental upsert, {inc['rows']:,} rows) {inc['seconds']:8.1f}s   "
        f"{report['ratios_to_dump']['incremental_1pct']:.3f}x   peak RSS {inc['peak_rss_mb']:.0f} MB",
        "extraction (wire SELECT through dlt sql_table): "
        + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in rates.items()),
        f"connectorx / pyarrow read rate: {rates['connectorx'] / rates['pyarrow']:.1f}x",
        f"copy matches source (count + CRC32 sum): {report['copy_matches_source']}",
    ]
    return "\n".join(lines)
