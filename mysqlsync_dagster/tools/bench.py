"""The DESIGN.md yardstick, measured in one run on this machine (`benchmarks/run.py`, or
`mysqlsync-dagster bench`).

Starts a throwaway source and target server, fills the 1M-row `orders` table of DESIGN.md and
a 40-column `wide` table of mixed types, then times, each as a ratio to the reference measured
in the same run (`mariadb-dump --single-transaction --quick SRC t | mariadb TGT`):

- a full sync in direct mode and in staging mode (first sync: built aside, swapped in);
- a 1%-changed incremental sync in each mode, and a no-change incremental sync in each mode;
- once the last write is `lag_seconds` old, the quiet runs (each verifies its slice, counting
  nothing) until the table idles, and the idle run (nothing read or written: verify/idle.py);
- the same full syncs of `wide` against its own dump reference.

Every sync runs with its checks, as a user runs it (issue 13's yardstick).

Every sync is a fresh `mysqlsync-dagster sync --json TABLE` process, so its wall time includes
start-up and exit, and its peak RSS is its own. The copies are checked
against the source (row count and a CRC32 sum) at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mysqlsync_dagster.pipeline.report import SyncReport
from mysqlsync_dagster.settings import child_environment
from mysqlsync_dagster.tools.demo import SCHEMA, orders_rows_sql
from mysqlsync_dagster.tools.mariadb_server import MariaDBServer, find_binary

ORDERS_DDL = next(s for s in SCHEMA if "CREATE TABLE orders" in s)
# Both servers' InnoDB buffer pool: large enough for the target's three copies of the 1M-row
# `orders` (the dump's and one per mode, about 150 MB each), as a production server is sized to
# hold its tables. The test servers' 256M held two of them: every run after a full copy of the
# other mode read the pages it merged into and verified from disk (`--buffer-pool 256M`).
BUFFER_POOL = "1G"


def pool_args(buffer_pool: str = BUFFER_POOL) -> tuple[str, ...]:
    """A benchmark server's arguments for its buffer pool. The analytics benchmarks' source
    has it too (since session 13; 256M before): at 10M rows (1.2 GB) the 1%-changed run's
    read of 100,000 rows by the modifier's index took 7-8 s of random page reads with 256M,
    0.4 s once they were in a 1 GB pool, while the references read the table in order."""
    return (f"--innodb-buffer-pool-size={buffer_pool}",)


MODES = ("direct", "staging")

# The wide table: 40 columns of mixed types, (name, type, value from `seq`).
WIDE_COLUMNS: list[tuple[str, str, str]] = [
    ("id", "BIGINT NOT NULL PRIMARY KEY", "seq"),
    ("ti", "TINYINT", "seq % 128"),
    ("si", "SMALLINT UNSIGNED", "seq % 65536"),
    ("mi", "MEDIUMINT", "CAST(seq % 8388607 AS SIGNED) - 4000000"),
    ("i", "INT", "seq * 7 % 2147483647"),
    ("iu", "INT UNSIGNED", "seq * 13 % 4294967295"),
    ("bi", "BIGINT", "seq * 1000003"),
    ("bu", "BIGINT UNSIGNED", "18446744073709551615 - seq"),
    ("d1", "DECIMAL(12,2)", "ROUND(seq / 7, 2)"),
    ("d2", "DECIMAL(20,6)", "seq / 3"),
    ("d3", "DECIMAL(30,10) UNSIGNED", "seq * 1.0000000001"),
    ("f", "FLOAT", "seq / 9"),
    ("db", "DOUBLE", "seq / 11"),
    ("bt", "BIT(8)", "seq % 256"),
    ("yr", "YEAR", "1901 + seq % 250"),
    ("dd", "DATE", "DATE'2000-01-01' + INTERVAL seq % 9000 DAY"),
    ("dt", "DATETIME", "TIMESTAMP'2020-01-01 00:00:00' + INTERVAL seq SECOND"),
    ("dt6", "DATETIME(6)", "TIMESTAMP'2020-01-01 00:00:00' + INTERVAL seq * 1001 MICROSECOND"),
    ("ts", "TIMESTAMP NULL DEFAULT NULL", "FROM_UNIXTIME(1600000000 + seq)"),
    ("tm", "TIME", "SEC_TO_TIME(CAST(seq % 200000 AS SIGNED) - 100000)"),
    ("c", "CHAR(8)", "LPAD(seq % 100000, 8, '0')"),
    ("v1", "VARCHAR(40)", "CONCAT('name ', seq)"),
    ("v2", "VARCHAR(255)", "IF(seq % 5 = 0, NULL, CONCAT('ünïcödé ✓ ', seq, ' \"q\", x'))"),
    ("v3", "VARCHAR(30) CHARACTER SET latin1", "CONCAT('latin ', seq % 1000)"),
    ("tx", "TEXT", "REPEAT('text ', 1 + seq % 20)"),
    ("en", "ENUM('new','paid','shipped','cancelled')", "1 + seq % 4"),
    ("st", "SET('a','b','c')", "seq % 8"),
    ("js", "JSON", "JSON_OBJECT('n', seq, 'tag', CONCAT('t', seq % 10))"),
    ("bn", "BINARY(16)", "UNHEX(MD5(seq))"),
    ("vb", "VARBINARY(64)", "UNHEX(SHA1(seq))"),
    ("bl", "BLOB", "IF(seq % 3 = 0, NULL, UNHEX(REPEAT('00FF', 1 + seq % 8)))"),
    ("b1", "TINYINT(1)", "seq % 2"),
    ("n1", "INT", "IF(seq % 2 = 0, NULL, seq)"),
    ("n2", "DECIMAL(8,3)", "IF(seq % 3 = 0, NULL, (seq % 99999) / 1000)"),
    ("n3", "VARCHAR(16)", "IF(seq % 4 = 0, NULL, HEX(seq))"),
    ("n4", "DATE", "IF(seq % 6 = 0, NULL, DATE'2024-01-01' - INTERVAL seq % 300 DAY)"),
    ("u1", "SMALLINT", "CAST(seq % 1000 AS SIGNED) - 500"),
    ("u2", "DOUBLE", "IF(seq % 7 = 0, NULL, seq * 0.001)"),
    ("u3", "CHAR(2)", "ELT(1 + seq % 4, 'DE', 'FR', 'ID', 'JP')"),
    ("updated_at", "DATETIME NOT NULL", "TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND"),
]
WIDE_DDL = (
    "CREATE TABLE wide ("
    + ", ".join(f"`{n}` {t}" for n, t, _ in WIDE_COLUMNS)
    + ", KEY (updated_at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
)


def wide_rows_sql(first: int, last: int) -> str:
    values = ", ".join(expression for _, _, expression in WIDE_COLUMNS)
    return f"INSERT INTO wide SELECT {values} FROM seq_{first}_to_{last}"


def _fill(conn: sa.Connection, rows_sql: Any, rows: int, step: int = 200_000) -> None:
    for first in range(1, rows + 1, step):
        conn.exec_driver_sql(rows_sql(first, min(first + step - 1, rows)).replace("%", "%%"))


def fill_source(engine: sa.Engine, rows: int, wide_rows: int = 0) -> None:
    """The `bench` database of the source: `orders` (and `wide`, if `wide_rows`)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE DATABASE bench")
        conn.exec_driver_sql("USE bench")
        conn.exec_driver_sql(ORDERS_DDL)
        _fill(conn, orders_rows_sql, rows)
        if wide_rows:
            conn.exec_driver_sql(WIDE_DDL.replace("%", "%%"))
            _fill(conn, wide_rows_sql, wide_rows)


def change_one_percent(engine: sa.Engine) -> None:
    """Rewrite 1% of `orders` (10,000 rows of 1M): a new status, `updated_at` spread over the
    last hour, so that the next run re-reads only the few rows at the new cursor's second
    (rows at the cursor are always re-read)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE bench.orders SET status = 'changed',"
            " updated_at = NOW() - INTERVAL (id DIV 100) %% 3600 SECOND WHERE id %% 100 = 0"
        )


def table_config(table: str, mode: str, batch_size: int) -> dict[str, Any]:
    """The benchmarked table's tables.json entry. The checks run as a user runs them (the
    default): the verification of the synced window and of a rolling slice of
    `verify_budget` rows, repairs included."""
    return {
        "table": table,
        "primary_key": "id",
        "modifier": "updated_at",
        "batch_size": batch_size,
        "mode": mode,
        "lag_seconds": LAG_SECONDS,
    }


def _timed(func: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = func()
    return time.perf_counter() - started, value


def _dump_pipe(source: MariaDBServer, target: MariaDBServer, table: str, db: str) -> float:
    dump = find_binary("mariadb-dump", "mysqldump")
    client = find_binary("mariadb", "mysql")
    if not dump or not client:
        raise SystemExit("mariadb-dump and mariadb clients are needed for the reference")
    command = (
        f"{dump} --no-defaults -uroot -h127.0.0.1 -P{source.port} --single-transaction --quick"
        f" bench {table} | {client} --no-defaults -uroot -h127.0.0.1 -P{target.port} {db}"
    )
    seconds, _ = _timed(lambda: subprocess.run(command, shell=True, check=True))
    return seconds


def sync_command() -> list[str]:
    """The console script a user runs, from this interpreter's environment."""
    script = Path(sys.executable).with_name("mysqlsync-dagster")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mysqlsync_dagster"]


@dataclass
class Measured:
    """A finished child process: wall time from start to exit, output, its own peak RSS."""

    wall_seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float


# Forks and times the command from a small process: Linux carries a process's peak RSS across
# exec, and Python spawns children by vfork + exec, so a child of the benchmark itself would
# report at least the benchmark's own peak (a Python row digest of 1M rows: 400 MB). Prints
# "wall seconds, peak RSS in KB, wait status" on the pipe `argv[1]` once the command exits.
_LAUNCHER = """\
import os, sys, time
report = int(sys.argv[1])
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(report)
    os.execvp(sys.argv[2], sys.argv[2:])  # the environment is inherited
_, status, usage = os.wait4(pid, 0)
os.write(report, f"{time.perf_counter() - started} {usage.ru_maxrss} {status}".encode())
"""


def run_measured(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run `command` to its end: its wall time from fork to exit and its own peak RSS (wait4
    by a small launcher process, see `_LAUNCHER`)."""
    read, write = os.pipe()
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(write), *command]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        with subprocess.Popen(launcher, env=env, stdout=out, stderr=err, pass_fds=(write,)) as p:
            os.close(write)
            with os.fdopen(read, "rb") as pipe:
                figures = pipe.read().split()
        if p.returncode != 0 or len(figures) != 3:
            raise RuntimeError(f"the launcher of {command[0]} failed: {p.returncode}")
        out.seek(0)
        err.seek(0)
        return Measured(
            float(figures[0]),
            os.waitstatus_to_exitcode(int(figures[2])),
            out.read(),
            err.read(),
            int(figures[1]) / 1024,  # kilobytes on Linux
        )


def sync_in_subprocess(env: dict[str, str], table: dict[str, Any]) -> dict[str, Any]:
    """`mysqlsync-dagster sync --json TABLE` in a fresh process: its wall time from start to
    exit, as a user sees it, and its own peak RSS (from wait4)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as config:
        json.dump([table], config)
    run = run_measured(
        [*sync_command(), "--config", config.name, "sync", "--json", table["table"]],
        env=child_environment(env),
    )
    os.unlink(config.name)
    stdout, stderr = run.stdout, run.stderr
    if run.returncode != 0:
        raise SystemExit(f"sync failed:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    [outcome] = json.loads(stdout)
    keep = (
        "rows_written",
        "strategy",
        "seconds",
        "extract_seconds",
        "load_seconds",
        "bytes_staged",
        "files_staged",
        "compression_ratio",
        "merge_ranges",
        "reader_peak_rss_mb",
        "rows_verified",
        "verify_seconds",
        "events_applied",
        "transactions_applied",
        "binlog_lag_seconds",
    )
    report = SyncReport.from_metadata(outcome["metadata"])
    result = {k: getattr(report, k) for k in keep if getattr(report, k) is not None}
    result["wall_seconds"] = run.wall_seconds
    result["peak_rss_mb"] = run.peak_rss_mb
    return result


def new_report(rows: int, batch_size: int, compression: str) -> dict[str, Any]:
    """A benchmark report's header: the table, the settings, the machine, and its steps."""
    return {
        "rows": rows,
        "batch_size": batch_size,
        "compression": compression,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "steps": [],
        # a process that only imports what a sync imports: the floor under every sync row
        "import_seconds": _import_seconds(),
    }


def _import_seconds() -> float:
    code = "import dagster, dlt, mysqlsync_dagster.orchestration.factory, mysqlsync_dagster.pipeline.run"
    seconds, _ = _timed(lambda: subprocess.run([sys.executable, "-c", code], check=True))
    return seconds


def run_benchmark(
    rows: int = 1_000_000,
    batch_size: int = 50_000,
    wide_rows: int = 200_000,
    compression: str = "zstd",
    keep: bool = False,
    buffer_pool: str = BUFFER_POOL,
) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="mysqlsync-bench-"))
    pool = pool_args(buffer_pool)
    source = MariaDBServer(base / "source", extra_args=pool).start()
    target = MariaDBServer(base / "target", extra_args=pool).start()
    report = new_report(rows, batch_size, compression) | {
        "wide_rows": wide_rows,
        "buffer_pool": buffer_pool,
    }
    try:
        admin = {
            side: sa.create_engine(server.url())
            for side, server in (("source", source), ("target", target))
        }
        fill_source(admin["source"], rows, wide_rows)
        with admin["target"].begin() as conn:
            for db in ("dump_copy", *(f"{mode}_copy" for mode in MODES)):
                conn.exec_driver_sql(f"CREATE DATABASE {db}")
        source_url = source.url("bench")

        def measure(table: str, mode: str, kind: str) -> dict[str, Any]:
            env = {
                "SOURCE_DB_URL": source_url,
                "TARGET_DB_URL": target.url(f"{mode}_copy"),
                "STAGING_DIR": str(base / "staging"),
                "PARQUET_COMPRESSION": compression,
            }
            result = sync_in_subprocess(env, table_config(table, mode, batch_size))
            step = {"table": table, "mode": mode, "kind": kind, **result}
            report["steps"].append(step)
            return step

        references = {"orders": _dump_pipe(source, target, "orders", "dump_copy")}
        for mode in MODES:
            measure("orders", mode, "full")
        change_one_percent(admin["source"])
        for mode in MODES:
            measure("orders", mode, "incremental_1pct")
        # written seconds ago: no proof can stand yet (verify/idle.py), a full no-change run
        for mode in MODES:
            measure("orders", mode, "no_change")
        # once the last write is `lag_seconds` old: runs that verify their slice without
        # counting, until the slices have covered the table; then idle runs
        time.sleep(LAG_SECONDS + 1.5)
        for mode in MODES:
            for _ in range(rows // VERIFY_BUDGET + 4):
                if measure("orders", mode, "quiet")["strategy"] == "idle":
                    report["steps"][-1]["kind"] = "idle"
                    break
        if wide_rows:
            references["wide"] = _dump_pipe(source, target, "wide", "dump_copy")
            for mode in MODES:
                measure("wide", mode, "full")
        report["reference_dump_seconds"] = references
        for step in report["steps"]:
            step["ratio_to_dump"] = step["wall_seconds"] / references[step["table"]]
        report["copies_match_source"] = _copies_match(admin, wide_rows > 0)
        for engine in admin.values():
            engine.dispose()
    finally:
        if not keep:
            for server in (source, target):
                with contextlib.suppress(Exception):
                    server.stop()
            subprocess.run(["rm", "-rf", str(base)], check=False)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _copies_match(admin: dict[str, sa.Engine], wide: bool) -> dict[str, bool]:
    checks = {"orders": "CONCAT_WS('|', id, status, amount, note, updated_at)"}
    if wide:
        checks["wide"] = "CONCAT_WS('|', " + ", ".join(f"`{n}`" for n, _, _ in WIDE_COLUMNS) + ")"
    matches = {}
    with admin["source"].connect() as s, admin["target"].connect() as t:
        for table, row in checks.items():
            sql = f"SELECT COUNT(*), SUM(CRC32({row})) FROM {{}}.{table}".replace("%", "%%")
            expected = s.exec_driver_sql(sql.format("bench")).one()
            for mode in MODES:
                matches[f"{table}/{mode}"] = (
                    t.exec_driver_sql(sql.format(f"{mode}_copy")).one() == expected
                )
    return matches


LAG_SECONDS = 5  # the tables' lag_seconds (default 30): the idle steps wait it out
VERIFY_BUDGET = 250_000  # the default verify_budget: rows of the rolling slice per run

GOALS = {  # issue 13: whole processes, checks included
    ("staging", "full"): 1.0,
    ("direct", "full"): 3.0,
    ("staging", "incremental_1pct"): 0.25,
    ("direct", "incremental_1pct"): 0.25,
    ("staging", "no_change"): 0.2,
    ("direct", "no_change"): 0.2,
    ("staging", "idle"): 0.2,
    ("direct", "idle"): 0.2,
}
KIND_LABEL = {
    "full": "full sync",
    "incremental_1pct": "1% changed",
    "no_change": "no change",
    "quiet": "quiet",
    "idle": "idle",
}


def _figure(step: dict[str, Any], key: str, width: int, decimals: int) -> str:
    value = step.get(key)
    return f"{value:{width}.{decimals}f}" if value is not None else " " * width


def step_header(ratio: str) -> str:
    """The header cells from `step` on; `ratio` names the reference ("x dump")."""
    return (
        f"| step                                 | process s | {ratio:>6} | goal    | in-run s |"
        " rows written | peak RSS MB | reader MB | sum MB | extract s | load s | rows verified |"
        " verify s |"
    )


STEP_RULE = (
    "|--------------------------------------|----------:|-------:|---------|---------:|"
    "-------------:|------------:|----------:|-------:|----------:|-------:|--------------:|"
    "---------:|"
)


def step_cells(step: dict[str, Any], label: str, ratio: float, goal: float | None) -> str:
    """One sync's cells from `step` on (see `step_header`)."""
    goal_text = f"<={goal:g}x" if goal else ""
    return (
        f"| {label:<36} | {step['wall_seconds']:9.2f} |"
        f" {ratio:6.2f} | {goal_text:<7} | {step['seconds']:8.2f} |"
        f" {step['rows_written']:>12,} |"
        f" {step['peak_rss_mb']:11.0f} | {_figure(step, 'reader_peak_rss_mb', 9, 0)} |"
        f" {step['peak_rss_mb'] + (step.get('reader_peak_rss_mb') or 0):6.0f} |"
        f" {_figure(step, 'extract_seconds', 9, 2)} | {_figure(step, 'load_seconds', 6, 2)} |"
        f" {_figure(step, 'rows_verified', 13, 0)} | {_figure(step, 'verify_seconds', 8, 2)} |"
    )


def format_report(report: dict[str, Any]) -> str:
    refs = report["reference_dump_seconds"]
    lines = [
        f"orders {report['rows']:,} rows, wide (40 columns) {report['wide_rows']:,} rows;"
        f" batch_size {report['batch_size']:,}; staging codec {report['compression']};"
        f" buffer pool {report.get('buffer_pool', '256M')};"
        f" {report['cpus']} CPUs, load average {report['load_average_before'][0]} before,"
        f" {report['load_average_after'][0]} after",
        "",
        "| table  " + step_header("x dump"),
        "|--------" + STEP_RULE,
    ]
    reference = "mariadb-dump \\| mariadb"
    for table, seconds in refs.items():
        lines.append(
            f"| {table:<6} | {reference:<36} | {seconds:9.2f} |   1.00 |"
            f" {'':<7} | {'':>8} | {'':>12} | {'':>11} | {'':>9} | {'':>6} | {'':>9} | {'':>6} |"
            f" {'':>13} | {'':>8} |"
        )
        for step in (s for s in report["steps"] if s["table"] == table):
            label = f"{step['mode']} {KIND_LABEL[step['kind']]} ({step['strategy']})"
            goal = GOALS.get((step["mode"], step["kind"])) if table == "orders" else None
            lines.append(f"| {table:<6} " + step_cells(step, label, step["ratio_to_dump"], goal))
    staged = [s for s in report["steps"] if s["mode"] == "staging" and s.get("bytes_staged")]
    for step in staged:
        if step["kind"] == "full":
            lines.append(
                f"staging {step['table']}: {step['bytes_staged']:,} bytes in"
                f" {step['files_staged']} file(s), compression ratio {step['compression_ratio']}"
            )
    lines.append(
        f"process s: the whole sync process, start-up included (importing dagster, dlt and this"
        f" package alone takes {report['import_seconds']:.2f}s); in-run s: the asset's own time;"
        " peak RSS: the sync process, or its reader when that is larger (Linux adds a reaped"
        " child's peak to its parent's); reader MB: the source reader (the dlt resource on"
        " connectorx, a child process), as it reported; sum MB: both added (an upper bound)"
    )
    lines.append(f"copies match source (count + CRC32 sum): {report['copies_match_source']}")
    return "\n".join(lines)


def run_from_args(args: Any) -> int:
    if getattr(args, "target", "mariadb") == "postgres":
        from mysqlsync_dagster.tools.bench_postgres import run_from_args as run_postgres

        return run_postgres(args)
    if getattr(args, "target", "mariadb") == "duckdb":
        from mysqlsync_dagster.tools.bench_duckdb import run_from_args as run_duckdb

        return run_duckdb(args)
    report = run_benchmark(
        10_000_000 if args.big else args.rows,
        args.batch_size,
        wide_rows=args.wide_rows,
        compression=args.compression,
        buffer_pool=args.buffer_pool,
    )
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if all(report["copies_match_source"].values()) else 1
