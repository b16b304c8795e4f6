"""What issue 14's benchmarks share (`bench_postgres.py` against pgloader, `bench_duckdb.py`
against DuckDB's MySQL scanner): the steps, the independent check of the copies, the table.

The steps (`sync_steps`), each a whole `mysqlsync-dagster sync --json orders` process with its
checks, timed as a ratio to the reference tool's full copy in the same run: the full sync in
direct and in staging mode (each mode into a fresh database or file of its own), a 1%-changed
incremental sync in each mode (run once the changes are `lag_seconds` old, so that it takes all
of them), then a no-change incremental sync in each mode.

The check (`source_figures`, `copy_figures`): per-column aggregates computed by each server
(the same SQL in PostgreSQL and DuckDB), and a digest of every row computed here in Python from
both sides' plain DB-API cursors (pymysql, psycopg2, duckdb), not the product's readers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
import sqlalchemy as sa

from mysqlsync_dagster.tools.bench import (
    BUFFER_POOL,
    KIND_LABEL,
    LAG_SECONDS,
    MODES,
    STEP_RULE,
    change_one_percent,
    new_report,
    pool_args,
    step_cells,
    step_header,
    sync_in_subprocess,
    table_config,
)
from mysqlsync_dagster.tools.mariadb_server import MariaDBServer

GOALS = {  # issue 14: whole processes, checks included, as a ratio to the reference's full copy
    "full": 1.0,
    "incremental_1pct": 0.25,
    "no_change": 0.25,
}
COLUMNS = ("id", "customer_id", "status", "amount", "note", "created_at", "updated_at")
# per-column aggregates, computed by each server: {} is the table
SOURCE_AGGREGATES = (
    "SELECT COUNT(*), SUM(id), SUM(customer_id), SUM(amount), COUNT(DISTINCT status),"
    " SUM(status = 'changed'), MIN(created_at), MAX(created_at), MIN(updated_at),"
    " MAX(updated_at), COUNT(note), MD5(GROUP_CONCAT(note ORDER BY id SEPARATOR '|'))"
    " FROM {}"
)
COPY_AGGREGATES = (  # PostgreSQL and DuckDB alike
    "SELECT COUNT(*), SUM(id), SUM(customer_id), SUM(amount), COUNT(DISTINCT status),"
    " COUNT(*) FILTER (WHERE status = 'changed'), MIN(created_at), MAX(created_at),"
    " MIN(updated_at), MAX(updated_at), COUNT(note), MD5(STRING_AGG(note, '|' ORDER BY id))"
    " FROM {}"
)


def start_source(base: Path) -> MariaDBServer:
    """The benchmark's source server, with the MySQL benchmark's buffer pool (`pool_args`)."""
    return MariaDBServer(base / "source", extra_args=pool_args()).start()


def analytics_report(rows: int, batch_size: int, compression: str) -> dict[str, Any]:
    return new_report(rows, batch_size, compression) | {"buffer_pool": BUFFER_POOL}


def canonical(value: Any) -> str:
    """A value's text, the same from every driver (aware timestamps in UTC)."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return "\\N" if value is None else str(value)


def row_digest(cursor: Any) -> tuple[int, int]:
    """(rows, sum of the first 64 bits of each row's MD5, mod 2**64): order-independent."""
    count = total = 0
    while rows := cursor.fetchmany(50_000):
        for row in rows:
            text = "\x1f".join(canonical(v) for v in row).encode()
            total += int.from_bytes(hashlib.md5(text).digest()[:8], "big")
            count += 1
    return count, total % 2**64


def source_figures(source: MariaDBServer) -> dict[str, Any]:
    def connect() -> pymysql.Connection[Any]:
        return pymysql.connect(
            host="127.0.0.1", port=source.port, user="root", database="bench", charset="utf8mb4"
        )

    # GROUP_CONCAT cuts its result at max_allowed_packet (the servers' 64 MB), with a
    # warning: the 10M-row table's notes are 323 MB. The global takes effect in new sessions.
    with contextlib.closing(connect()) as admin, admin.cursor() as cur:
        cur.execute("SET GLOBAL max_allowed_packet = 1073741824")
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION group_concat_max_len = 1073741824")
            cur.execute(SOURCE_AGGREGATES.format("orders"))
            aggregates = [canonical(v) for v in cur.fetchone()]
            cur.execute("SHOW WARNINGS")
            if warnings := cur.fetchall():
                raise RuntimeError(f"the source's aggregates are not exact: {warnings}")
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM orders")
            digest = row_digest(cur)
    finally:
        conn.close()
    return {"aggregates": aggregates, "rows_digest": digest}


def copy_figures(cursor: Any, rows_cursor: Any, table: str) -> dict[str, Any]:
    """The same figures of a copy: aggregates on `cursor`, every row streamed by `rows_cursor`."""
    cursor.execute(COPY_AGGREGATES.format(table))
    aggregates = [canonical(v) for v in cursor.fetchone()]
    rows_cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM {table}")
    return {"aggregates": aggregates, "rows_digest": row_digest(rows_cursor)}


def matches(figures: dict[str, Any], expected: dict[str, Any]) -> dict[str, bool]:
    return {
        "row count": figures["rows_digest"][0] == expected["rows_digest"][0],
        "aggregates": figures["aggregates"] == expected["aggregates"],
        "row digest": figures["rows_digest"] == expected["rows_digest"],
    }


def sync_steps(
    report: dict[str, Any],
    engine: sa.Engine,
    env_for: Callable[[str], dict[str, str]],
    reference: str,
    after_full: Callable[[], None],
) -> None:
    """The product's syncs (see the module doc) into `env_for(mode)`, each step appended to
    `report["steps"]` with its ratio to `report[reference]["wall_seconds"]`; `after_full` runs
    between the full syncs and the 1% change (while the source is as the reference copied it)."""

    def measure(mode: str, kind: str) -> None:
        table = table_config("orders", mode, report["batch_size"])
        step = {"table": "orders", "mode": mode, "kind": kind}
        step |= sync_in_subprocess(env_for(mode), table)
        step[f"ratio_to_{reference}"] = step["wall_seconds"] / report[reference]["wall_seconds"]
        report["steps"].append(step)

    for mode in MODES:
        measure(mode, "full")
    after_full()
    change_one_percent(engine)
    time.sleep(LAG_SECONDS + 1.5)  # the changes older than lag_seconds: all of them taken
    for kind in ("incremental_1pct", "no_change"):
        for mode in MODES:
            measure(mode, kind)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]


def compare_copies(
    report: dict[str, Any], expected: dict[str, Any], copies: dict[str, dict[str, Any]]
) -> None:
    report["source_figures"] = expected
    report["copies_match_source"] = {
        f"{mode}: aggregates": figures["aggregates"] == expected["aggregates"]
        for mode, figures in copies.items()
    } | {
        f"{mode}: row digest": figures["rows_digest"] == expected["rows_digest"]
        for mode, figures in copies.items()
    }


def format_report(
    report: dict[str, Any], target: str, reference: tuple[str, str, str], notes: list[str]
) -> str:
    """The first line, the table, what its columns mean, then `notes`. `reference`: its key in
    `report`, its ratio column's header, its row's label (its row first, then the syncs)."""
    reference, ratio, label = reference
    ref = report[reference]
    lines = [
        f"orders {report['rows']:,} rows, MariaDB to {target}; batch_size"
        f" {report['batch_size']:,}; staging codec {report['compression']}; source buffer pool"
        f" {report['buffer_pool']}; {report['cpus']}"
        f" CPUs, load average {report['load_average_before']} before,"
        f" {report['load_average_after']} after",
        "",
        step_header(ratio),
        STEP_RULE,
        f"| {label:<36} | {ref['wall_seconds']:9.2f} |   1.00 |"
        f" {'':<7} | {'':>8} | {report['rows']:>12,} | {ref['peak_rss_mb']:11.0f} |"
        f" {'':>9} | {ref['peak_rss_mb']:6.0f} | {'':>9} | {'':>6} | {'':>13} | {'':>8} |",
    ]
    for step in report["steps"]:
        name = f"{step['mode']} {KIND_LABEL[step['kind']]} ({step['strategy']})"
        ratio_value = step[f"ratio_to_{reference}"]
        lines.append(step_cells(step, name, ratio_value, GOALS.get(step["kind"])))
    lines.append(
        f"process s: the whole sync process, start-up included (importing dagster, dlt and this"
        f" package alone takes {report['import_seconds']:.2f}s); {ratio}: process s /"
        f" {reference}'s wall time; peak RSS: the process ({reference}: its one process);"
        " reader MB: the sync's connectorx reader child; sum MB: both peaks added"
    )
    return "\n".join(lines + notes)


def finish(report: dict[str, Any], text: str, args: Any, reference_copy: str) -> int:
    """Print the table, write the JSON if asked; 0 if every copy is right."""
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    ok = all(report["copies_match_source"].values()) and report[reference_copy]["row count"]
    return 0 if ok else 1
