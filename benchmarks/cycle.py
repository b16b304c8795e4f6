"""The deployment path, timed (issue 13): one scheduled cycle of N tables launched by the real
`dagster-daemon`, with the product's instance config (run queue, run launcher, pools, retries).

    PYTHONPATH=. .venv/bin/python benchmarks/cycle.py [--tables 100] [--rows 10000]
        [--variant baseline] [--json out.json] [--keep]

What it does:

1. starts a throwaway source and target MariaDB (`tools/mariadb_server.py`), creates N tables
   like DESIGN.md's `orders` (t000, t001, ...) of `--rows` rows each (sequence engine);
2. writes their tables.json (incremental on `updated_at`) and a DAGSTER_HOME whose dagster.yaml
   is the repository's own, with its storage paths pointed into the temp directory;
3. syncs every table once with `mysqlsync-dagster sync` (the full first copy, not timed);
4. stamps 1% of the rows of every table with `updated_at = NOW()`;
5. runs `dagster-daemon run -w workspace.yaml` (the daemon starts the code server from the
   workspace, the scheduler, the run queue and the default run launcher); every table is given
   the same `schedule` cron for one minute about a minute ahead (a daily cron, so it ticks once:
   a cron of every minute would start a second cycle while the first still runs), so the
   product's grouping holds: tables sharing a cron share one job and one schedule, whose tick
   starts runs of at most 25 tables (names.TABLES_PER_RUN);
6. measures, from the instance's run records and event log: the tick (the cron's time) to the
   end of the last run (the cycle), and within it the scheduler's latency (tick to run created),
   the queue (created to launched), the run worker's start (launched to RUN_START) and each run's
   steps; CPU seconds of the whole process tree (the daemon and every descendant: code server,
   run workers, step processes, connectorx readers; sampled from /proc with the reaped
   children's times, so short-lived processes count) and of the two MariaDB servers, and the
   machine's busy CPU from /proc/stat (all processes, other users' included), over the cycle;
   the tree's peak memory (sum of PSS, and the largest single RSS);
7. checks that every target table matches its source (row count and CRC32 sum of the rows).

Variants (`--variant`) change how runs and steps are grouped and started, nothing else:
executors are swapped in by a generated code location module that imports the product's `defs`
and replaces only its executor; "tables per run" gives the tables equivalent daily crons written
differently (`M H * * *`, `M H 1-31 * *`, ...), so the product's cadence grouping puts them in
separate jobs and schedules that tick at the same moment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from mysqlsync_dagster.orchestration.names import TABLES_PER_RUN  # noqa: E402
from mysqlsync_dagster.tools.demo import SCHEMA, orders_rows_sql  # noqa: E402
from mysqlsync_dagster.tools.mariadb_server import MariaDBServer  # noqa: E402

ORDERS_DDL = next(s for s in SCHEMA if "CREATE TABLE orders" in s)
BIN = Path(sys.executable).parent
PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")

# executors as Python text for the generated code location module (None: the product's own)
SPAWN = "dg.multiprocess_executor.configured({{'max_concurrent': {n}}})"
FORKSERVER = (
    "dg.multiprocess_executor.configured({{'max_concurrent': {n}, 'start_method':"
    " {{'forkserver': {{'preload_modules': {preload!r}}}}}}})"
)
PRELOAD_DEFS = ["mysqlsync_dagster.definitions"]
IN_PROCESS = "dg.in_process_executor"
RUN_POOL = (("granularity: op", "granularity: run"),)


@dataclass(frozen=True)
class Variant:
    executor: str | None = None  # None: the product's executor, unchanged
    tables_per_run: int | None = None  # None: the product's grouping (names.TABLES_PER_RUN)
    note: str = ""
    # replacements in the instance's dagster.yaml (the repository's, by default unchanged)
    instance: tuple[tuple[str, str], ...] = ()


VARIANTS: dict[str, Variant] = {
    # the product as shipped: in_process executor, its schedule's runs of at most 25 tables,
    # pool granularity run (until fc70278+: multiprocess, spawn, max_concurrent 4, one run of
    # all tables, op granularity: the "spawn_one_run" figures of cycle-results.md)
    "baseline": Variant(note="the product: in_process, runs of 25 tables, pool granularity run"),
    "spawn": Variant(
        SPAWN.format(n=4),
        note="multiprocess, spawn, max_concurrent 4, op granularity (the earlier product)",
        instance=(("granularity: run", "granularity: op"),),
    ),
    "spawn2": Variant(SPAWN.format(n=2), note="multiprocess, spawn, max_concurrent 2"),
    "forkserver": Variant(
        FORKSERVER.format(n=4, preload=PRELOAD_DEFS),
        note="multiprocess, forkserver preloading the definitions, max_concurrent 4",
    ),
    "forkserver2": Variant(
        FORKSERVER.format(n=2, preload=PRELOAD_DEFS),
        note="multiprocess, forkserver preloading the definitions, max_concurrent 2",
    ),
    "inprocess": Variant(IN_PROCESS, note="in_process executor, one run of all tables"),
    "runs25_inprocess": Variant(IN_PROCESS, 25, "in_process, runs of 25 tables"),
    "runs10_inprocess": Variant(IN_PROCESS, 10, "in_process, runs of 10 tables"),
    # the run queue holds back a run while its root steps' pool looks full: with op granularity
    # a launched run counts one slot per root step (25 for a run of 25 tables) until it has run
    # 5 s, so runs start one every ~10 s; with run granularity a run counts one slot, which is
    # exact for the in_process executor (a run syncs one table at a time)
    "runs25_inprocess_runpool": Variant(
        IN_PROCESS, 25, "in_process, runs of 25 tables, pool granularity run", RUN_POOL
    ),
    "runs50_inprocess_runpool": Variant(
        IN_PROCESS, 50, "in_process, runs of 50 tables, pool granularity run", RUN_POOL
    ),
    "runs10_inprocess_runpool": Variant(
        IN_PROCESS, 10, "in_process, runs of 10 tables, pool granularity run", RUN_POOL
    ),
    "runs25_forkserver": Variant(
        FORKSERVER.format(n=4, preload=PRELOAD_DEFS), 25, "forkserver, runs of 25 tables"
    ),
    "runs25_forkserver1": Variant(
        FORKSERVER.format(n=1, preload=PRELOAD_DEFS), 25, "forkserver, max_concurrent 1, runs of 25"
    ),
}


# -- data -------------------------------------------------------------------------------------
def table_names(n: int) -> list[str]:
    return [f"t{i:03d}" for i in range(n)]


def create_tables(source: MariaDBServer, target: MariaDBServer, n: int, rows: int) -> None:
    """N copies of `orders` in `bench` on the source; the empty database `replica` on the target."""
    src = sa.create_engine(source.url())
    with src.begin() as conn:
        conn.exec_driver_sql("CREATE DATABASE bench")
        conn.exec_driver_sql("USE bench")
        names = table_names(n)
        conn.exec_driver_sql(ORDERS_DDL.replace("CREATE TABLE orders", f"CREATE TABLE {names[0]}"))
        step = 100_000
        for first in range(1, rows + 1, step):
            sql = orders_rows_sql(first, min(first + step - 1, rows))
            conn.exec_driver_sql(sql.replace("INTO orders", f"INTO {names[0]}").replace("%", "%%"))
        for name in names[1:]:
            conn.exec_driver_sql(f"CREATE TABLE {name} LIKE {names[0]}")
            conn.exec_driver_sql(f"INSERT INTO {name} SELECT * FROM {names[0]}")
    src.dispose()
    tgt = sa.create_engine(target.url())
    with tgt.begin() as conn:
        conn.exec_driver_sql("CREATE DATABASE replica")
    tgt.dispose()


def change_one_percent(source: MariaDBServer, n: int) -> int:
    engine = sa.create_engine(source.url("bench"))
    changed = 0
    with engine.begin() as conn:
        for name in table_names(n):
            changed += conn.exec_driver_sql(
                f"UPDATE {name} SET status = 'changed', updated_at = NOW() WHERE id %% 100 = 0"
            ).rowcount
    engine.dispose()
    return changed


ROW_DIGEST = (
    "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, customer_id, status, amount, note,"
    " created_at, updated_at))) FROM {db}.{table}"
)


def copies_match(source: MariaDBServer, target: MariaDBServer, n: int) -> dict[str, Any]:
    s, t = sa.create_engine(source.url()), sa.create_engine(target.url())
    mismatched = []
    with s.connect() as sc, t.connect() as tc:
        for name in table_names(n):
            expected = sc.exec_driver_sql(ROW_DIGEST.format(db="bench", table=name)).one()
            try:
                actual = tc.exec_driver_sql(ROW_DIGEST.format(db="replica", table=name)).one()
            except sa.exc.DBAPIError:
                actual = None
            if actual != expected:
                mismatched.append(name)
    s.dispose()
    t.dispose()
    return {"matched": n - len(mismatched), "tables": n, "mismatched": mismatched[:10]}


# -- the schedule -----------------------------------------------------------------------------
def equivalent_crons(minute: int, hour: int, count: int) -> list[str]:
    """`count` different cron strings that all tick daily at hour:minute (so the product puts
    tables with different ones in different jobs and schedules)."""
    days = ["*", "1-31", "*/1"]
    months = ["*", "1-12", "*/1"]
    weekdays = ["*", "0-6", "*/1"]
    crons = [f"{minute} {hour} {d} {m} {w}" for d in days for m in months for w in weekdays]
    if count > len(crons):
        raise SystemExit(f"at most {len(crons)} runs per cycle in this benchmark")
    return crons[:count]


def tables_json(names: list[str], crons: list[str], per_run: int) -> list[dict[str, Any]]:
    return [
        {
            "table": name,
            "primary_key": "id",
            "modifier": "updated_at",
            "schedule": crons[i // per_run],
        }
        for i, name in enumerate(names)
    ]


def instance_yaml(home: Path, replacements: tuple[tuple[str, str], ...] = ()) -> str:
    """The repository's dagster.yaml with its storage under `home` (and `replacements`)."""
    text = (REPO / "dagster.yaml").read_text().replace(".dagster_home", str(home))
    for old, new in replacements:
        if old not in text:
            raise SystemExit(f"dagster.yaml has no {old!r} to replace")
        text = text.replace(old, new)
    return text


LOCATION_MODULE = '''"""Generated by benchmarks/cycle.py: the product's `defs` with another executor."""
import dagster as dg
from dagster._record import copy

import mysqlsync_dagster.definitions as _product  # (one Definitions at module scope)

defs = copy(_product.defs, executor={executor})
'''


# -- sampling the process tree ----------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int, float, int] | None:
    """(ppid, session, cpu seconds incl. reaped children, rss bytes) of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    # fields from 3 (state): ppid=4, session=6, utime=14, stime=15, cutime=16, cstime=17, rss=24
    ppid, session = int(rest[1]), int(rest[3])
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return ppid, session, ticks / HZ, int(rest[21]) * PAGE


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _system_busy() -> float:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts[:8]) - idle) / HZ


@dataclass
class Sample:
    t: float
    tree_cpu: float
    db_cpu: float
    busy: float
    tree_pss: int
    tree_max_rss: int
    processes: int


@dataclass
class Sampler:
    """Samples the daemon's session (all its descendants: Dagster starts none in a new session)
    and the two servers every `period` seconds, in a thread."""

    session: int
    db_pids: list[int]
    period: float = 0.2
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> Sample:
        tree_cpu = db_cpu = 0.0
        pss = max_rss = count = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in self.db_pids:
                st = _stat(pid)
                if st:
                    db_cpu += st[2]
                continue
            st = _stat(pid)
            if st is None or st[1] != self.session:
                continue
            count += 1
            tree_cpu += st[2]
            max_rss = max(max_rss, st[3])
            pss += _pss(pid)
        return Sample(time.time(), tree_cpu, db_cpu, _system_busy(), pss, max_rss, count)

    def run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.period)

    def start(self) -> None:
        threading.Thread(target=self.run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def at(self, moment: float) -> Sample:
        """The last sample at or before `moment` (the first one if none)."""
        before = [s for s in self.samples if s.t <= moment]
        return before[-1] if before else self.samples[0]

    def over(self, start: float, end: float) -> dict[str, float]:
        a, b = self.at(start), self.at(end + 0.5)
        within = [s for s in self.samples if start <= s.t <= end + 0.5] or [b]
        return {
            "tree_cpu_s": b.tree_cpu - a.tree_cpu,
            "db_cpu_s": b.db_cpu - a.db_cpu,
            "machine_busy_cpu_s": b.busy - a.busy,
            "tree_peak_pss_mb": max(s.tree_pss for s in within) / 2**20,
            "tree_peak_single_rss_mb": max(s.tree_max_rss for s in within) / 2**20,
            "tree_peak_processes": max(s.processes for s in within),
        }


# -- the run --------------------------------------------------------------------------------
def start_daemon(base: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(base / "daemon.log", "wb")  # noqa: SIM115 (the process keeps it)
    return subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(base / "workspace.yaml")],
        cwd=base,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_servers(base: Path, servers: tuple[MariaDBServer, ...], *, keep: bool) -> None:
    """Stop the throwaway servers; remove their directory unless `keep` (then say where)."""
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()
    if keep:
        print(f"kept {base}")
    else:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    deadline = time.time() + 10
    while time.time() < deadline:  # the group's other members (code server, run workers)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def next_tick(lead_seconds: float) -> datetime:
    """The first whole minute at least `lead_seconds` from now (UTC)."""
    soon = datetime.now(UTC) + timedelta(seconds=lead_seconds)
    return soon.replace(second=0, microsecond=0) + timedelta(minutes=1)


def run_timings(instance: Any, run_ids: list[str]) -> list[dict[str, Any]]:
    """Per run: when it was created, launched, started, its steps, and ended (epoch seconds)."""
    from dagster import DagsterEventType

    kinds = {
        DagsterEventType.RUN_ENQUEUED: "enqueued",
        DagsterEventType.RUN_DEQUEUED: "dequeued",
        DagsterEventType.RUN_STARTING: "launched",
        DagsterEventType.RUN_START: "started",
        DagsterEventType.RUN_SUCCESS: "ended",
        DagsterEventType.RUN_FAILURE: "ended",
        DagsterEventType.RUN_CANCELED: "ended",
    }
    out = []
    for run_id in run_ids:
        record = instance.get_run_record_by_id(run_id)
        row: dict[str, Any] = {
            "run_id": run_id,
            "status": record.dagster_run.status.value,
            "job": record.dagster_run.job_name,
            "created": record.create_timestamp.timestamp(),
            "parent": record.dagster_run.parent_run_id,
            "step_starts": [],
            "step_ends": [],
            "step_failures": 0,
            "step_retries": 0,
            "materialized": [],
        }
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None:
                continue
            kind = kinds.get(event.event_type)
            if kind:
                row.setdefault(kind, entry.timestamp)
            elif event.event_type == DagsterEventType.STEP_WORKER_STARTING:
                row.setdefault("first_worker_starting", entry.timestamp)
            elif event.event_type == DagsterEventType.STEP_START:
                row["step_starts"].append(entry.timestamp)
            elif event.event_type == DagsterEventType.STEP_SUCCESS:
                row["step_ends"].append(entry.timestamp)
            elif event.event_type == DagsterEventType.STEP_FAILURE:
                row["step_failures"] += 1
            elif event.event_type == DagsterEventType.STEP_UP_FOR_RETRY:
                row["step_retries"] += 1
            elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                row["materialized"].append(event.asset_key.path[-1])
        out.append(row)
    return out


def wait_for_cycle(instance: Any, tick: datetime, expected_runs: int, timeout: float) -> list[str]:
    """Run ids of the cycle once `expected_runs` scheduled runs (and any retries of them) have
    all finished."""
    from dagster import DagsterRunStatus, RunsFilter

    done = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    deadline = time.time() + timeout
    last_report = 0.0
    while time.time() < deadline:
        records = instance.get_run_records(RunsFilter(created_after=tick - timedelta(seconds=5)))
        records = [r for r in records if r.dagster_run.job_name.startswith("sync_")]
        scheduled = [r for r in records if r.dagster_run.parent_run_id is None]
        finished = [r for r in records if r.dagster_run.status in done]
        if time.time() - last_report > 15:
            print(
                f"  {datetime.now(UTC):%H:%M:%S} runs {len(scheduled)}/{expected_runs},"
                f" finished {len(finished)}/{len(records)}",
                flush=True,
            )
            last_report = time.time()
        if not records and time.time() > tick.timestamp() + 90:
            raise SystemExit("no run 90 s after the tick: see daemon.log (--keep)")
        if len(scheduled) >= expected_runs and len(finished) == len(records):
            # a failed run's retry is created a moment after it fails: give it that moment
            time.sleep(3)
            again = instance.get_run_records(RunsFilter(created_after=tick - timedelta(seconds=5)))
            if len([r for r in again if r.dagster_run.job_name.startswith("sync_")]) == len(
                records
            ):
                return [r.dagster_run.run_id for r in records]
        time.sleep(1)
    raise SystemExit(f"the cycle did not finish in {timeout:.0f}s")


def summarize(
    timings: list[dict[str, Any]], tick: float, n: int, usage: dict[str, float]
) -> dict[str, Any]:
    first_created = min(r["created"] for r in timings)
    end = max(r.get("ended", r["created"]) for r in timings)
    last_step = max((max(r["step_ends"]) for r in timings if r["step_ends"]), default=end)
    materialized = {t for r in timings for t in r["materialized"]}

    def spread(key_from: str, key_to: str) -> list[float]:
        return sorted(
            round(r[key_to] - r[key_from], 2) for r in timings if key_from in r and key_to in r
        )

    steps = [b - a for r in timings for a, b in zip(r["step_starts"], r["step_ends"], strict=False)]
    return {
        "cycle_wall_s": round(end - tick, 2),
        "tick_to_last_step_s": round(last_step - tick, 2),
        "runs": len(timings),
        "runs_failed": sum(r["status"] != "SUCCESS" for r in timings),
        "retried_runs": sum(r["parent"] is not None for r in timings),
        "tables_materialized": len(materialized),
        "tables": n,
        "tick_to_first_run_created_s": round(first_created - tick, 2),
        "created_to_launched_s": spread("created", "launched"),
        "launched_to_run_start_s": spread("launched", "started"),
        "run_start_to_first_step_start_s": sorted(
            round(min(r["step_starts"]) - r["started"], 2)
            for r in timings
            if r["step_starts"] and "started" in r
        ),
        "run_last_step_to_end_s": sorted(
            round(r["ended"] - max(r["step_ends"]), 2)
            for r in timings
            if r["step_ends"] and "ended" in r
        ),
        "step_wall_s_mean": round(sum(steps) / len(steps), 2) if steps else None,
        "step_failures": sum(r["step_failures"] for r in timings),
        "step_retries": sum(r["step_retries"] for r in timings),
        **{k: round(v, 1) for k, v in usage.items()},
        "tree_cpu_s_per_table": round(usage["tree_cpu_s"] / n, 3),
        "tree_and_db_cpu_s_per_table": round((usage["tree_cpu_s"] + usage["db_cpu_s"]) / n, 3),
        "machine_busy_cpu_s_per_table": round(usage["machine_busy_cpu_s"] / n, 3),
    }


def run_cycle(args: argparse.Namespace) -> dict[str, Any]:
    variant = VARIANTS[args.variant]
    n = args.tables
    # tables per cron: a variant's own groups, else one cron for all (the product splits its
    # schedule's tick into runs of TABLES_PER_RUN)
    per_cron = variant.tables_per_run or n
    per_run = min(per_cron, TABLES_PER_RUN)
    base = Path(tempfile.mkdtemp(prefix="mysqlsync-cycle-"))
    home = base / "home"
    home.mkdir()
    source = MariaDBServer(base / "source").start()
    target = MariaDBServer(base / "target").start()
    daemon = None
    result: dict[str, Any] = {
        "variant": args.variant,
        "note": variant.note,
        "tables": n,
        "rows": args.rows,
        "tables_per_run": per_run,
        "instance_changes": [list(r) for r in variant.instance],
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
    }
    try:
        started = time.perf_counter()
        create_tables(source, target, n, args.rows)
        print(
            f"{n} tables of {args.rows:,} rows in {time.perf_counter() - started:.1f}s", flush=True
        )

        runs = math.ceil(n / per_run)
        crons_needed = math.ceil(n / per_cron)
        # the tick: far enough ahead for the first sync and the daemon's start-up
        placeholder = equivalent_crons(0, 0, crons_needed)
        config_path = base / "tables.json"
        config_path.write_text(json.dumps(tables_json(table_names(n), placeholder, per_cron)))
        (home / "dagster.yaml").write_text(instance_yaml(home, variant.instance))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
            "SOURCE_DB_URL": source.url("bench"),
            "TARGET_DB_URL": target.url("replica"),
            "TABLES_CONFIG": str(config_path),
            "DAGSTER_HOME": str(home),
            "INTERVAL": str(args.interval),
        }

        started = time.perf_counter()
        first = subprocess.run(
            [str(BIN / "mysqlsync-dagster"), "sync"],
            env={**env, "DAGSTER_HOME": "", "SYNC_RETRIES": "0"},  # ephemeral instance
            cwd=base,
            capture_output=True,
            text=True,
            check=False,
        )
        if first.returncode != 0:
            raise SystemExit(f"first sync failed:\n{first.stdout[-3000:]}\n{first.stderr[-3000:]}")
        print(f"first sync of {n} tables in {time.perf_counter() - started:.1f}s", flush=True)
        result["first_sync_s"] = round(time.perf_counter() - started, 1)

        changed = change_one_percent(source, n)
        result["rows_changed"] = changed

        tick = next_tick(args.lead)
        crons = equivalent_crons(tick.minute, tick.hour, crons_needed)
        config_path.write_text(json.dumps(tables_json(table_names(n), crons, per_cron)))
        if variant.executor is None:
            module, workdir = "mysqlsync_dagster.definitions", base
        else:
            workdir = base / "location"
            workdir.mkdir()
            (workdir / "cycle_location.py").write_text(
                LOCATION_MODULE.format(executor=variant.executor)
            )
            module = "cycle_location"
        (base / "workspace.yaml").write_text(
            "load_from:\n  - python_module:\n"
            f"      module_name: {module}\n      working_directory: {workdir}\n"
        )

        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(home)) as instance:
            daemon = start_daemon(base, env)
            sampler = Sampler(
                session=daemon.pid,
                db_pids=[p for p in (source.running_pid(), target.running_pid()) if p],
            )
            sampler.start()
            print(
                f"daemon started; tick at {tick:%H:%M:%S} UTC"
                f" ({(tick - datetime.now(UTC)).total_seconds():.0f}s from now), {runs} run(s)",
                flush=True,
            )
            run_ids = wait_for_cycle(instance, tick, runs, args.timeout + args.lead + 60)
            timings = run_timings(instance, run_ids)
            sampler.stop()
            usage = sampler.over(tick.timestamp(), max(r.get("ended", 0) for r in timings))
            result.update(summarize(timings, tick.timestamp(), n, usage))
            before_tick = sampler.over(sampler.samples[0].t, tick.timestamp())
            result["before_tick_tree_cpu_s"] = round(before_tick["tree_cpu_s"], 1)
            if args.keep_timings:
                result["timings"] = timings
        stop_process_group(daemon)
        daemon = None
        result["copies"] = copies_match(source, target, n)
        result["load_average_after"] = os.getloadavg()[0]
    except BaseException:
        with contextlib.suppress(OSError):
            errors = [
                line
                for line in (base / "daemon.log").read_text(errors="replace").splitlines()
                if "ERROR" in line or "Error" in line
            ]
            print("daemon.log errors:\n" + "\n".join(errors[-10:]), file=sys.stderr)
        raise
    finally:
        if daemon is not None:
            stop_process_group(daemon)
        stop_servers(base, (source, target), keep=args.keep)
    return result


def format_result(r: dict[str, Any]) -> str:
    copies = r["copies"]
    lines = [
        f"variant {r['variant']}: {r['note']}",
        f"  {r['tables']} tables x {r['rows']:,} rows, {r['rows_changed']:,} rows changed;"
        f" {r['runs']} run(s) of {r['tables_per_run']} tables; load average"
        f" {r['load_average_before']:.2f} before, {r['load_average_after']:.2f} after",
        f"  cycle (tick to last run's end) {r['cycle_wall_s']:.1f}s;"
        f" tick to last step {r['tick_to_last_step_s']:.1f}s;"
        f" tick to first run created {r['tick_to_first_run_created_s']:.1f}s",
        f"  created->launched {r['created_to_launched_s']}; launched->RUN_START"
        f" {r['launched_to_run_start_s']}; RUN_START->first step {r['run_start_to_first_step_start_s']};"
        f" last step->run end {r['run_last_step_to_end_s']}",
        f"  step wall mean {r['step_wall_s_mean']}s; step failures {r['step_failures']},"
        f" step retries {r['step_retries']}, failed runs {r['runs_failed']},"
        f" retried runs {r['retried_runs']}",
        f"  CPU: tree {r['tree_cpu_s']:.1f}s ({r['tree_cpu_s_per_table']:.2f}/table),"
        f" servers {r['db_cpu_s']:.1f}s, tree+servers {r['tree_and_db_cpu_s_per_table']:.2f}/table,"
        f" machine busy {r['machine_busy_cpu_s']:.1f}s ({r['machine_busy_cpu_s_per_table']:.2f}/table);"
        f" tree before the tick {r['before_tick_tree_cpu_s']:.1f}s",
        f"  memory: tree peak PSS {r['tree_peak_pss_mb']:.0f} MB, largest process RSS"
        f" {r['tree_peak_single_rss_mb']:.0f} MB, {r['tree_peak_processes']} processes at most",
        f"  tables materialized {r['tables_materialized']}/{r['tables']};"
        f" copies match source (count + CRC32 sum) {copies['matched']}/{copies['tables']}"
        + (f" mismatched {copies['mismatched']}" if copies["mismatched"] else ""),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="baseline")
    parser.add_argument(
        "--interval", type=int, default=60, help="INTERVAL (sets the source observer's period)"
    )
    parser.add_argument("--lead", type=float, default=45, help="seconds from daemon start to tick")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (servers stopped)")
    parser.add_argument("--keep-timings", action="store_true", help="per-run event times in --json")
    args = parser.parse_args(argv)
    result = run_cycle(args)
    print(format_result(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    ok = result["copies"]["matched"] == args.tables and result["tables_materialized"] == args.tables
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
