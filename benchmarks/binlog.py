"""Change capture from the binlog, measured (issue 15).

    PYTHONPATH=. .venv/bin/python benchmarks/binlog.py [--rows 200000] [--latency-seconds 60]
        [--json out.json] [--keep]

1. Starts a throwaway source MariaDB writing a row binlog (as the test harness does) and a
   target, and fills two copies of DESIGN.md's `orders` table (`--rows` rows each): `orders`
   synced with `"capture": "binlog"`, `orders_mod` incremental on `updated_at`. Both copied once
   (`mysqlsync-dagster sync`, not timed).
2. **A burst of 100,000 single-row updates** (each its own transaction, from a server-side loop),
   the same on both tables; then one `sync` process per table: the binlog table's events per
   second (in the run's apply, and over the whole process with its checks), next to the
   incremental mode's cost for the same changes.
3. **1,000 transactions of 100 rows**: the same.
4. **Latency**: the real `dagster-daemon` with the product's instance config and the binlog
   sensor; a writer commits 200 single-row changes a second into a binlog table for
   `--latency-seconds`, a poller reads the target every 50 ms; each change's latency is the time
   from its commit (client side) to the first poll that sees it. Three times: at the default
   settings (`BINLOG_SENSOR_INTERVAL=5`), tuned (`BINLOG_SENSOR_INTERVAL=1`), and tuned with
   runs that follow the binlog (`BINLOG_FOLLOW_SECONDS=30`).

Every phase ends with an independent comparison of source and target (row count and CRC32 sum of
every column).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from benchmarks.cycle import (  # noqa: E402
    instance_yaml,
    start_daemon,
    stop_process_group,
    stop_servers,
)
from mysqlsync_dagster.tools.bench import sync_in_subprocess  # noqa: E402
from mysqlsync_dagster.tools.demo import orders_rows_sql  # noqa: E402
from mysqlsync_dagster.tools.mariadb_server import BINLOG_ARGS, MariaDBServer  # noqa: E402

BIN = Path(sys.executable).parent
ORDERS = (
    "CREATE TABLE {name} (id BIGINT PRIMARY KEY, customer_id INT NOT NULL,"
    " status VARCHAR(20) NOT NULL, amount DECIMAL(12,2), note TEXT,"
    " created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, KEY(updated_at)) ENGINE=InnoDB"
)
TICKS = (
    "CREATE TABLE ticks (id BIGINT PRIMARY KEY, payload VARCHAR(40) NOT NULL,"
    " at DATETIME(6) NOT NULL)"
)


def engine(server: MariaDBServer, database: str) -> sa.Engine:
    return sa.create_engine(server.url(database), isolation_level="AUTOCOMMIT")


def run_sql(server: MariaDBServer, database: str, *statements: str) -> None:
    eng = engine(server, database)
    with eng.connect() as conn:
        cursor = conn.connection.cursor()  # the driver's own: no %-formatting of the SQL
        for statement in statements:
            cursor.execute(statement)
    eng.dispose()


def crc(server: MariaDBServer, database: str, table: str) -> tuple[int, int]:
    """Row count and the CRC32 sum over every source column (the independent comparison)."""
    eng = engine(server, database)
    columns = "id, customer_id, status, amount, note, created_at, updated_at"
    if table == "ticks":
        columns = "id, payload, at"
    with eng.connect() as conn:
        row = conn.exec_driver_sql(
            f"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|', {columns}))), 0) FROM {table}"
        ).one()
    eng.dispose()
    return int(row[0]), int(row[1])


TABLES = {
    "orders": {"table": "orders", "primary_key": "id", "capture": "binlog"},
    "orders_mod": {"table": "orders_mod", "primary_key": "id", "modifier": "updated_at"},
    "ticks": {"table": "ticks", "primary_key": "id", "capture": "binlog", "verify_budget": 0},
}


def sync(env: dict[str, str], table: str) -> dict[str, Any]:
    """One `mysqlsync-dagster sync TABLE --json` process: its wall time and report."""
    report = sync_in_subprocess(env, TABLES[table])
    return {"process_s": round(report["wall_seconds"], 2), **report}


def burst(source: MariaDBServer, statement: str) -> float:
    started = time.perf_counter()
    run_sql(source, "bench", statement)
    return time.perf_counter() - started


def measure_burst(
    name: str, source: MariaDBServer, target: MariaDBServer, env: dict[str, str], loop: str
) -> dict[str, Any]:
    """The same changes to both tables, then one sync of each."""
    out: dict[str, Any] = {"burst": name, "load_average": os.getloadavg()[0]}
    for table in ("orders", "orders_mod"):
        out[f"{table}_write_s"] = round(burst(source, loop.format(t=table)), 2)
    cdc = sync(env, "orders")
    mod = sync(env, "orders_mod")
    events = int(cdc.get("events_applied") or 0)
    apply_s = float(cdc["seconds"])
    out.update(
        events=events,
        transactions=cdc.get("transactions_applied"),
        binlog_process_s=cdc["process_s"],
        binlog_in_run_s=round(apply_s, 2),
        binlog_lag_s=cdc.get("binlog_lag_seconds"),
        binlog_verify_s=cdc.get("verify_seconds"),
        events_per_s_in_run=round(events / apply_s) if apply_s else None,
        events_per_s_process=round(events / cdc["process_s"]),
        binlog_rows_written=cdc["rows_written"],
        modifier_process_s=mod["process_s"],
        modifier_in_run_s=round(float(mod["seconds"]), 2),
        modifier_verify_s=mod.get("verify_seconds"),
        modifier_rows_written=mod["rows_written"],
        copies_match=all(
            crc(source, "bench", t) == crc(target, "replica", t) for t in ("orders", "orders_mod")
        ),
    )
    print(json.dumps(out), flush=True)
    return out


def measure_latency(
    base: Path, source: MariaDBServer, target: MariaDBServer, env: dict[str, str],
    seconds: float, rate: int, sensor_interval: int, follow: int,
) -> dict[str, Any]:  # fmt: skip
    """The daemon and the binlog sensor; `rate` changes a second into `ticks` for `seconds`."""
    home = base / f"home{sensor_interval}_{follow}"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(home))
    daemon_env = {
        **env,
        "DAGSTER_HOME": str(home),
        "BINLOG_SENSOR_INTERVAL": str(sensor_interval),
        "BINLOG_FOLLOW_SECONDS": str(follow),
        "TABLES_CONFIG": str(base / "ticks.json"),
        "INTERVAL": "3600",
    }
    committed: dict[int, float] = {}
    seen: dict[int, float] = {}
    stop = threading.Event()

    def writer() -> None:
        eng = engine(source, "bench")
        with eng.connect() as conn:
            next_id = int(conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM ticks").scalar())
            started = time.perf_counter()
            n = 0
            while time.perf_counter() - started < seconds:
                n += 1
                due = started + n / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                conn.exec_driver_sql(
                    f"INSERT INTO ticks VALUES ({next_id + n}, 'tick {n}', NOW(6))"
                )
                committed[next_id + n] = time.time()
        eng.dispose()

    def poller() -> None:
        eng = engine(target, "replica")
        last = 0
        while not stop.is_set():
            with contextlib.suppress(sa.exc.SQLAlchemyError), eng.connect() as conn:
                ids = conn.exec_driver_sql(f"SELECT id FROM ticks WHERE id > {last}").scalars()
                now = time.time()
                for found in ids:
                    seen.setdefault(int(found), now)
                    last = max(last, int(found))
            time.sleep(0.05)
        eng.dispose()

    daemon = start_daemon(base, daemon_env)
    try:
        time.sleep(15)  # the daemon, its code server and the sensor's first (catch-up) run
        threads = [threading.Thread(target=writer), threading.Thread(target=poller)]
        for thread in threads:
            thread.start()
        threads[0].join()
        deadline = time.time() + 120
        while time.time() < deadline and not set(committed) <= set(seen):
            time.sleep(0.2)
        stop.set()
        threads[1].join()
    finally:
        stop_process_group(daemon)
    latencies = sorted(seen[i] - committed[i] for i in committed if i in seen)
    quantiles = statistics.quantiles(latencies, n=20) if len(latencies) > 20 else [None] * 19
    out = {
        "sensor_interval_s": sensor_interval,
        "follow_s": follow,
        "changes": len(committed),
        "seen": len(latencies),
        "rate_per_s": rate,
        "median_s": round(statistics.median(latencies), 2) if latencies else None,
        "p95_s": round(quantiles[18], 2) if quantiles[18] is not None else None,
        "max_s": round(latencies[-1], 2) if latencies else None,
        "copies_match": crc(source, "bench", "ticks") == crc(target, "replica", "ticks"),
    }
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directory")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="mysqlsync-binlog-"))
    source = MariaDBServer(base / "source", extra_args=BINLOG_ARGS).start()
    target = MariaDBServer(base / "target").start()
    result: dict[str, Any] = {"rows": args.rows, "cpus": os.cpu_count()}
    try:
        run_sql(source, "", "CREATE DATABASE bench")
        run_sql(target, "", "CREATE DATABASE replica")
        run_sql(
            source,
            "bench",
            ORDERS.format(name="orders"),
            ORDERS.format(name="orders_mod"),
            TICKS,
            orders_rows_sql(1, args.rows),
            "INSERT INTO orders_mod SELECT * FROM orders",
        )
        (base / "ticks.json").write_text(json.dumps([TABLES["ticks"]]))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
            "SOURCE_DB_URL": source.url("bench"),
            "TARGET_DB_URL": target.url("replica"),
            "DAGSTER_HOME": "",
            "SYNC_RETRIES": "0",
        }
        result["load_average_before"] = os.getloadavg()[0]
        for table in ("orders", "orders_mod"):
            first = sync(env, table)
            print(f"first sync of {table}: {first['process_s']}s", flush=True)
        singles = min(100_000, args.rows)
        result["single_row_updates"] = measure_burst(
            f"{singles:,} single-row transactions",
            source,
            target,
            env,
            f"BEGIN NOT ATOMIC FOR i IN 1..{singles} DO UPDATE {{t}} SET amount = amount + 1,"
            " updated_at = NOW() WHERE id = i; END FOR; END",
        )
        transactions = min(1_000, args.rows // 100)
        result["transactions_of_100"] = measure_burst(
            f"{transactions:,} transactions of 100 rows",
            source,
            target,
            env,
            f"BEGIN NOT ATOMIC FOR i IN 0..{transactions - 1} DO UPDATE {{t}} SET"
            " status = 'shipped', updated_at = NOW() WHERE id BETWEEN i * 100 + 1 AND"
            " i * 100 + 100; END FOR; END",
        )
        sync(env, "ticks")
        (base / "workspace.yaml").write_text(
            "load_from:\n  - python_module:\n"
            f"      module_name: mysqlsync_dagster.definitions\n      working_directory: {base}\n"
        )
        result["latency"] = [
            measure_latency(
                base, source, target, env, args.latency_seconds, args.rate, interval, follow
            )
            for interval, follow in ((5, 0), (1, 0), (1, 30))
        ]
        result["load_average_after"] = os.getloadavg()[0]
    finally:
        stop_servers(base, (source, target), keep=args.keep)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
