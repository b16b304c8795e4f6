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
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
import pymysql
import pymysql.cursors
import sqlalchemy as sa

from mysqlsync_dagster.tools.bench import (
    KIND_LABEL,
    LAG_SECONDS,
    MODES,
    STEP_RULE,
    _import_seconds,
    change_one_percent,
    fill_source,
    run_measured,
    step_cells,
    step_header,
    sync_in_subprocess,
    table_config,
)
from mysqlsync_dagster.tools.mariadb_server import MariaDBServer
from mysqlsync_dagster.tools.postgres_server import PostgresServer

PGLOADER_DB = "pgloader_copy"
GOALS = {  # issue 14: whole processes, checks included, as a ratio to pgloader's full copy
    "full": 1.0,
    "incremental_1pct": 0.25,
    "no_change": 0.25,
}
COLUMNS = ("id", "customer_id", "status", "amount", "note", "created_at", "updated_at")
# per-column aggregates, computed by each server: {} is the table
AGGREGATES = {
    "mariadb": (
        "SELECT COUNT(*), SUM(id), SUM(customer_id), SUM(amount), COUNT(DISTINCT status),"
        " SUM(status = 'changed'), MIN(created_at), MAX(created_at), MIN(updated_at),"
        " MAX(updated_at), COUNT(note), MD5(GROUP_CONCAT(note ORDER BY id SEPARATOR '|'))"
        " FROM {}"
    ),
    "postgres": (
        "SELECT COUNT(*), SUM(id), SUM(customer_id), SUM(amount), COUNT(DISTINCT status),"
        " COUNT(*) FILTER (WHERE status = 'changed'), MIN(created_at), MAX(created_at),"
        " MIN(updated_at), MAX(updated_at), COUNT(note), MD5(STRING_AGG(note, '|' ORDER BY id))"
        " FROM {}"
    ),
}


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


def _canonical(value: Any) -> str:
    """A value's text, the same from pymysql and psycopg2 (aware timestamps in UTC)."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return "\\N" if value is None else str(value)


def _row_digest(cursor: Any) -> tuple[int, int]:
    """(rows, sum of the first 64 bits of each row's MD5, mod 2**64): order-independent."""
    count = total = 0
    while rows := cursor.fetchmany(50_000):
        for row in rows:
            text = "\x1f".join(_canonical(v) for v in row).encode()
            total += int.from_bytes(hashlib.md5(text).digest()[:8], "big")
            count += 1
    return count, total % 2**64


def source_figures(source: MariaDBServer) -> dict[str, Any]:
    conn = pymysql.connect(
        host="127.0.0.1", port=source.port, user="root", database="bench", charset="utf8mb4"
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION group_concat_max_len = 1073741824")
            cur.execute(AGGREGATES["mariadb"].format("orders"))
            aggregates = [_canonical(v) for v in cur.fetchone()]
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM orders")
            digest = _row_digest(cur)
    finally:
        conn.close()
    return {"aggregates": aggregates, "rows_digest": digest}


def postgres_figures(target: PostgresServer, db: str, table: str) -> dict[str, Any]:
    conn = psycopg2.connect(target.url(db))
    try:
        with conn.cursor() as cur:
            cur.execute(AGGREGATES["postgres"].format(table))
            aggregates = [_canonical(v) for v in cur.fetchone()]
        with conn.cursor(name="rows") as cur:  # server-side: streamed
            cur.itersize = 50_000
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {table}")
            digest = _row_digest(cur)
    finally:
        conn.close()
    return {"aggregates": aggregates, "rows_digest": digest}


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
    source = MariaDBServer(base / "source").start()
    target = PostgresServer(base / "postgres").start()
    report: dict[str, Any] = {
        "rows": rows,
        "batch_size": batch_size,
        "compression": compression,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "steps": [],
        "import_seconds": _import_seconds(),
    }
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

        def measure(mode: str, kind: str) -> dict[str, Any]:
            env = {
                "SOURCE_DB_URL": source.url("bench"),
                "TARGET_DB_URL": target.url(f"{mode}_copy"),
                "STAGING_DIR": str(base / "staging"),
                "PARQUET_COMPRESSION": compression,
            }
            result = sync_in_subprocess(env, table_config("orders", mode, batch_size))
            step = {"table": "orders", "mode": mode, "kind": kind, **result}
            step["ratio_to_pgloader"] = step["wall_seconds"] / report["pgloader"]["wall_seconds"]
            report["steps"].append(step)
            return step

        for mode in MODES:
            measure(mode, "full")
        report["product_types"] = column_types(target, "direct_copy", "public", "orders")
        # pgloader's copy against the source as it copied it (no sync process running)
        before = source_figures(source)
        pgloader = postgres_figures(target, PGLOADER_DB, "bench.orders")
        report["pgloader_copy"] = {
            "row count": pgloader["rows_digest"][0] == before["rows_digest"][0],
            "aggregates": pgloader["aggregates"] == before["aggregates"],
            "row digest": pgloader["rows_digest"] == before["rows_digest"],
        }
        change_one_percent(engine)
        time.sleep(LAG_SECONDS + 1.5)  # the changes older than lag_seconds: all of them taken
        for mode in MODES:
            measure(mode, "incremental_1pct")
        for mode in MODES:
            measure(mode, "no_change")
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]

        expected = source_figures(source)
        copies = {mode: postgres_figures(target, f"{mode}_copy", "public.orders") for mode in MODES}
        report["source_figures"] = expected
        report["copies_match_source"] = {
            f"{mode}: aggregates": figures["aggregates"] == expected["aggregates"]
            for mode, figures in copies.items()
        } | {
            f"{mode}: row digest": figures["rows_digest"] == expected["rows_digest"]
            for mode, figures in copies.items()
        }
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
    lines = [
        f"orders {report['rows']:,} rows, MariaDB to PostgreSQL; batch_size"
        f" {report['batch_size']:,}; staging codec {report['compression']}; {report['cpus']}"
        f" CPUs, load average {report['load_average_before'][0]} before,"
        f" {report['load_average_after'][0]} after",
        "",
        step_header("x pgl"),
        STEP_RULE,
        f"| {'pgloader (defaults), full copy':<36} | {loader['wall_seconds']:9.2f} |   1.00 |"
        f" {'':<7} | {'':>8} | {report['rows']:>12,} | {loader['peak_rss_mb']:11.0f} |"
        f" {'':>9} | {loader['peak_rss_mb']:6.0f} | {'':>9} | {'':>6} | {'':>13} | {'':>8} |",
    ]
    for step in report["steps"]:
        label = f"{step['mode']} {KIND_LABEL[step['kind']]} ({step['strategy']})"
        lines.append(step_cells(step, label, step["ratio_to_pgloader"], GOALS.get(step["kind"])))
    lines += [
        f"process s: the whole sync process, start-up included (importing dagster, dlt and this"
        f" package alone takes {report['import_seconds']:.2f}s); x pgl: process s / pgloader's"
        " wall time; peak RSS: the process (pgloader: its one process); reader MB: the sync's"
        " connectorx reader child; sum MB: both peaks added",
        f"pgloader: {loader['command']}",
        f"pgloader's types: {json.dumps(loader['types'])}",
        f"the product's types: {json.dumps(report['product_types'])}",
        f"copies match source (aggregates by each server; row digest in Python):"
        f" {report['copies_match_source']}",
        "pgloader's copy against the source before the 1% change (timestamptz read in UTC):"
        f" {report['pgloader_copy']}",
    ]
    return "\n".join(lines)


def run_from_args(args: Any) -> int:
    report = run_postgres_benchmark(
        10_000_000 if args.big else args.rows, args.batch_size, compression=args.compression
    )
    print(format_postgres_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    ok = all(report["copies_match_source"].values()) and report["pgloader_copy"]["row count"]
    return 0 if ok else 1
