"""Issue 14's benchmark: `orders` from a throwaway MariaDB into a throwaway PostgreSQL, against
pgloader (`benchmarks/run.py --target postgres`, or `mysqlsync-dagster bench --target postgres`).

Fills the 1M-row `orders` table of DESIGN.md (as `bench.py`), copies it once with Debian's
`pgloader` into a fresh database (the reference, its defaults), then times, each as a ratio to
pgloader's wall time in the same run, the product's whole `sync --json orders` processes
(checks included), each mode into a fresh database of its own:

- the full sync (first sync: built aside, swapped in) in direct and in staging mode;
- a 1%-changed incremental sync in each mode (run once the changes are `lag_seconds` old, so
  that it takes all of them), then a no-change incremental sync in each mode.

Peak RSS: the sync process and its connectorx reader child, and pgloader's process. At the end
the copies are checked independently of the product: per-column aggregates computed by each
server, and a digest of every row computed here in Python from both sides (pymysql and
psycopg2, not the product's readers); pgloader's copy by its row count (and the same digest,
reported: it changes types, e.g. DATETIME to timestamptz).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from mysqlsync_dagster.tools.bench import MODES, fill_source, run_measured
from mysqlsync_dagster.tools.bench_analytics import (
    analytics_report,
    compare_copies,
    copy_figures,
    finish,
    format_report,
    matches,
    source_figures,
    start_source,
    sync_steps,
)
from mysqlsync_dagster.tools.mariadb_server import MariaDBServer
from mysqlsync_dagster.tools.postgres_server import PostgresServer

PGLOADER_DB = "pgloader_copy"
# the reference: its key in the report, its ratio column, its row
REFERENCE = ("pgloader", "x pgl", "pgloader (defaults), full copy")


def pgloader_command(source: MariaDBServer, target: PostgresServer) -> list[str]:
    """pgloader's CLI form, its defaults (4 workers, batches of 25,000 rows): the database
    `bench` becomes the schema `bench` of the target database."""
    binary = shutil.which("pgloader")
    if binary is None:
        raise SystemExit("pgloader not found (apt-get install -y pgloader)")
    return [
        binary,
        f"mysql://root@127.0.0.1:{source.port}/bench",
        f"postgresql://postgres@127.0.0.1:{target.port}/{PGLOADER_DB}",
    ]


def postgres_figures(target: PostgresServer, db: str, table: str) -> dict[str, Any]:
    conn = psycopg2.connect(target.url(db))
    try:
        with conn.cursor() as cur, conn.cursor(name="rows") as rows:  # server-side: streamed
            rows.itersize = 50_000
            return copy_figures(cur, rows, table)
    finally:
        conn.close()


def column_types(target: PostgresServer, db: str, schema: str, table: str) -> dict[str, str]:
    conn = psycopg2.connect(target.url(db))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
                " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
                " ORDER BY a.attnum",
                (f"{schema}.{table}",),
            )
            return dict(cur.fetchall())
    finally:
        conn.close()


def run_postgres_benchmark(
    rows: int = 1_000_000,
    batch_size: int = 50_000,
    compression: str = "zstd",
    keep: bool = False,
) -> dict[str, Any]:
    # under /tmp, readable by the `postgres` user the server runs as when we are root
    base = Path(tempfile.mkdtemp(prefix="mysqlsync-bench-pg-", dir="/tmp"))
    base.chmod(0o755)
    source = start_source(base)
    target = PostgresServer(base / "postgres").start()
    report = analytics_report(rows, batch_size, compression)
    try:
        engine = sa.create_engine(source.url())
        fill_source(engine, rows)
        admin = psycopg2.connect(target.url("postgres"))
        admin.autocommit = True
        with admin.cursor() as cur:
            for db in (PGLOADER_DB, *(f"{mode}_copy" for mode in MODES)):
                cur.execute(f"CREATE DATABASE {db}")
        admin.close()

        run = run_measured(pgloader_command(source, target))
        if run.returncode != 0:
            raise SystemExit(f"pgloader failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        report["pgloader"] = {
            "command": " ".join(pgloader_command(source, target)),
            "wall_seconds": run.wall_seconds,
            "peak_rss_mb": run.peak_rss_mb,
            "summary": run.stdout[run.stdout.find("table name") :].strip()[-2500:]
            or run.stderr[-2500:],
            "types": column_types(target, PGLOADER_DB, "bench", "orders"),
        }

        def after_full() -> None:
            report["product_types"] = column_types(target, "direct_copy", "public", "orders")
            # pgloader's copy against the source as it copied it (no sync process running)
            report["pgloader_copy"] = matches(
                postgres_figures(target, PGLOADER_DB, "bench.orders"), source_figures(source)
            )

        sync_steps(
            report,
            engine,
            lambda mode: {
                "SOURCE_DB_URL": source.url("bench"),
                "TARGET_DB_URL": target.url(f"{mode}_copy"),
                "STAGING_DIR": str(base / "staging"),
                "PARQUET_COMPRESSION": compression,
            },
            "pgloader",
            after_full,
        )
        copies = {mode: postgres_figures(target, f"{mode}_copy", "public.orders") for mode in MODES}
        compare_copies(report, source_figures(source), copies)
        engine.dispose()
    finally:
        if not keep:
            with contextlib.suppress(Exception):
                source.stop()
            with contextlib.suppress(Exception):
                target.stop()
            subprocess.run(["rm", "-rf", str(base)], check=False)
    return report


def format_postgres_report(report: dict[str, Any]) -> str:
    loader = report["pgloader"]
    notes = [
        f"pgloader: {loader['command']}",
        f"pgloader's types: {json.dumps(loader['types'])}",
        f"the product's types: {json.dumps(report['product_types'])}",
        f"copies match source (aggregates by each server; row digest in Python):"
        f" {report['copies_match_source']}",
        "pgloader's copy against the source before the 1% change (timestamptz read in UTC):"
        f" {report['pgloader_copy']}",
    ]
    return format_report(report, "PostgreSQL", REFERENCE, notes)


def run_from_args(args: Any) -> int:
    report = run_postgres_benchmark(
        10_000_000 if args.big else args.rows, args.batch_size, compression=args.compression
    )
    return finish(report, format_postgres_report(report), args, "pgloader_copy")
