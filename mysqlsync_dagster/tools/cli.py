"""`mysqlsync-dagster`: one-shot syncs, checks, diagnostics and the local demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mysqlsync_dagster.config import TableConfig, load_tables_config
from mysqlsync_dagster.errors import ConfigError
from mysqlsync_dagster.pipeline.report import SyncReport
from mysqlsync_dagster.settings import STAGING_VARIABLES, Settings, load_dotenv_file
from mysqlsync_dagster.tools.text import text_table

if TYPE_CHECKING:  # imported where used: a `sync` without DAGSTER_HOME never imports Dagster
    import dagster as dg

    from mysqlsync_dagster.verify.compare import CheckOutcome

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class TableOutcome:
    """One table's line of `sync`: its run's report (None when it did not materialize)."""

    cfg: TableConfig
    ok: bool
    report: SyncReport | None = None
    error: str = ""
    checks: str = "-"
    metadata: dict[str, Any] = field(default_factory=dict)  # plain values, for --json

    @property
    def rows_read(self) -> int | None:
        return self.report.rows_extracted if self.report else None

    @property
    def rows_written(self) -> int | None:
        return self.report.rows_written if self.report else None

    @property
    def seconds(self) -> float | None:
        return self.report.seconds if self.report else None

    @property
    def strategy(self) -> str:
        return self.report.strategy if self.report else ""

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.cfg.table,
            "target_table": self.cfg.target,
            "mode": self.cfg.mode,
            "ok": self.ok,
            "strategy": self.strategy or None,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "seconds": self.seconds,
            "checks": self.checks,
            "error": self.error or None,
            "metadata": self.metadata,
        }


def select_tables(tables: list[TableConfig], names: Sequence[str]) -> list[TableConfig]:
    if not names:
        return tables
    by_name = {cfg.table: cfg for cfg in tables} | {cfg.target: cfg for cfg in tables}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"unknown table(s) {unknown}; configured: {[cfg.table for cfg in tables]}"
        )
    chosen = {by_name[n].table: by_name[n] for n in names}
    return list(chosen.values())


def _instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance when DAGSTER_HOME is set (runs show up in the UI), else ephemeral."""
    import dagster as dg

    if settings.dagster_home:
        if not Path(settings.dagster_home).is_dir():
            raise ConfigError(
                f"DAGSTER_HOME: {settings.dagster_home!r} is not a directory: create it"
                " (mkdir -p), point DAGSTER_HOME at Dagster's instance directory, or unset it"
                " for a run that is not kept"
            )
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def run_sync(
    tables: list[TableConfig],
    settings: Settings,
    verbose: bool = False,
    ready: Callable[[], None] | None = None,
) -> list[TableOutcome]:
    """Run `tables` once, in process, with their checks; `ready` is called once everything
    is imported and built, just before the first run starts (see `__main__`).

    With DAGSTER_HOME set, the tables are materialized by Dagster, and the runs are kept in
    its instance (they show in the UI). Without it nothing would be kept, so the tables run
    through the same runner as the asset (`pipeline/runner.py`) without importing Dagster and
    building a throwaway instance (about 1.2 s of a 3 s run); partitioned tables, whose
    all-partitions run marks their partitions in the instance, are materialized as well."""
    direct = [] if settings.dagster_home else [c for c in tables if c.partitions == "none"]
    others = [cfg for cfg in tables if cfg not in direct]
    outcomes = {o.cfg.table: o for o in run_directly(direct, settings, verbose, ready)}
    if others:
        outcomes |= {o.cfg.table: o for o in _materialize(others, settings, verbose, ready)}
    return [outcomes[cfg.table] for cfg in tables]


def run_directly(
    tables: list[TableConfig],
    settings: Settings,
    verbose: bool,
    ready: Callable[[], None] | None,
) -> list[TableOutcome]:
    """Each table's run by the runner, one after another, retried as the asset's retry
    policy retries it (`SYNC_RETRIES`, `SYNC_RETRY_DELAY`). Tables proven idle are reported
    first, before the sync and the verification are imported (about 1 s): a run of idle
    tables stays a process of a few tenths of a second."""
    if not tables:
        return []
    import uuid

    from mysqlsync_dagster.errors import RETRIES, RETRY_DELAY_SECONDS, failure_message, retry_wait
    from mysqlsync_dagster.pipeline import runner

    def staging() -> Any:
        from mysqlsync_dagster.pipeline.staging import StagingSettings

        return StagingSettings.parse(
            **{arg: settings.values.get(name) or None for arg, name in STAGING_VARIABLES.items()}
        )

    log = runner.plain_log(verbose)
    source = runner.PlainDatabase("source", settings)
    target = runner.PlainDatabase("target", settings)
    retries = RETRIES if settings.sync_retries is None else settings.sync_retries
    delay = RETRY_DELAY_SECONDS if settings.sync_retry_delay is None else settings.sync_retry_delay
    started = time.perf_counter()
    outcomes: dict[str, TableOutcome] = {}
    probes: dict[str, Any] = {}
    reader = None  # the first busy table's source reader, started before the imports
    try:
        for cfg in tables:  # an error here only means "not proven idle": the run says more
            with contextlib.suppress(Exception):
                begun = time.perf_counter()
                scope = runner.RunScope(log=log, run_id="")
                probes[cfg.table] = probed = runner.probe_idle(
                    scope, cfg, source, target, clear=False
                )
                if probed.idle is not None:
                    seconds = time.perf_counter() - begun
                    finished = runner.idle_finished(scope, cfg, probed.idle, seconds, settings)
                    outcomes[cfg.table] = _finished_outcome(cfg, [finished])
        busy = [cfg for cfg in tables if cfg.table not in outcomes]
        if busy and busy[0].table in probes:
            reader = runner.start_reader(busy[0], source, probes[busy[0].table])
        if reader is None:  # the one started with the process would only take CPU
            runner.discard_reader()
        if busy:
            runner.load_pipeline()
        if ready is not None:
            ready()
        for cfg in busy:
            for attempt in range(retries + 1):
                scope = runner.RunScope(log=log, run_id=str(uuid.uuid4()))
                try:
                    run = runner.run_table(scope, cfg, source, target, staging, settings, reader)
                    reader = None  # the run owns it (and closes it)
                    steps = list(run)
                except Exception as error:
                    message, retryable = failure_message(
                        cfg.table, error, runner.secrets_of(source, target)
                    )
                    if not retryable or attempt == retries:
                        outcomes[cfg.table] = TableOutcome(cfg, ok=False, error=message)
                        break
                    wait = retry_wait(attempt + 1, delay)
                    log.warning("%s: retry %d of %d in %.0fs", message, attempt + 1, retries, wait)
                    time.sleep(wait)
                else:
                    outcomes[cfg.table] = _finished_outcome(cfg, steps)
                    break
    finally:
        if reader is not None:
            reader.close()
        runner.discard_reader()  # the readers kept for a next table
        source.dispose()
        target.dispose()
    if verbose:
        print(f"total {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return [outcomes[cfg.table] for cfg in tables]


def _finished_outcome(cfg: TableConfig, steps: list[Any]) -> TableOutcome:
    """A table's line from its runner's steps: a failed pre-sync check, then `Finished`."""
    *early, finished = steps
    checks = [*early, *finished.outcomes]
    blocked = [o for o in checks if o.blocking and not o.passed]
    figures = finished.report.figures() | finished.metadata
    return TableOutcome(
        cfg,
        ok=not blocked,
        report=finished.report,
        error="; ".join(f"check {o.check}: {o.description}" for o in blocked),
        checks=f"{sum(o.passed for o in checks)}/{len(checks)} ok" if checks else "-",
        metadata={k: v for k, v in figures.items() if isinstance(v, str | int | float | bool)},
    )


def _materialize(
    tables: list[TableConfig],
    settings: Settings,
    verbose: bool,
    ready: Callable[[], None] | None,
) -> list[TableOutcome]:
    import dagster as dg

    from mysqlsync_dagster.orchestration.factory import build_definitions, table_assets
    from mysqlsync_dagster.orchestration.names import TRIGGER_TAG

    defs = build_definitions(tables, settings)
    instance = _instance(settings)
    if ready is not None:
        ready()
    started = time.perf_counter()
    log_level = "INFO" if verbose else "ERROR"
    # one run per partitions definition (a run cannot mix them); partitioned tables are run
    # without a partition key, which syncs all their partitions
    tables_assets = table_assets(defs)
    specs = [a for a in defs.assets or [] if a not in tables_assets]  # the observed sources
    runs: dict[object, list[Any]] = {}
    for asset in tables_assets:
        runs.setdefault(asset.partitions_def, []).append(asset)
    failures: dict[str, Any] = {}
    materialized: dict[str, list[dg.AssetMaterialization]] = {}
    evaluations: list[Any] = []
    for assets in runs.values():
        result = dg.materialize(
            assets=[*specs, *assets],
            resources=defs.resources,
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            tags={TRIGGER_TAG: "cli"},
        )
        failures.update(
            {event.step_key: failure_text(event) for event in result.get_step_failure_events()}
        )
        evaluations.extend(result.get_asset_check_evaluations())
        for asset in assets:
            materialized[asset.node_def.name] = result.asset_materializations_for_node(
                asset.node_def.name
            )
    outcomes = []
    for cfg in tables:
        node = f"sync_{cfg.key}"
        materializations = materialized.get(node, [])
        checks = [e for e in evaluations if e.asset_key.path == [cfg.key]]
        if materializations:
            metadata = materializations[-1].metadata
            blocked = [
                e
                for e in checks
                if e.blocking and not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
            ]
            outcomes.append(
                TableOutcome(
                    cfg,
                    ok=not blocked,
                    report=SyncReport.from_metadata(metadata),
                    error="; ".join(f"check {e.check_name}: {e.description}" for e in blocked),
                    checks=f"{sum(e.passed for e in checks)}/{len(checks)} ok" if checks else "-",
                    metadata={
                        key: value.value
                        for key, value in metadata.items()
                        if isinstance(value.value, str | int | float | bool)
                    },
                )
            )
        else:
            message = failures.get(node) or "did not run (an upstream step failed)"
            outcomes.append(TableOutcome(cfg, ok=False, error=message))
    if verbose:
        print(f"total {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return outcomes


def failure_text(event: dg.DagsterEvent) -> str:
    """What went wrong in a failed step: the description of the `dg.Failure` the asset raised
    (the table's own message, secrets removed), else the innermost error's message without
    its class name."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    error = data.error
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None:
        return "failed"
    text = error.message.strip()
    prefix, separator, rest = text.partition(": ")
    return rest if separator and prefix.rsplit(".", 1)[-1] == error.cls_name else text


def format_summary(outcomes: list[TableOutcome]) -> str:
    header = (
        "table",
        "mode",
        "strategy",
        "rows read",
        "rows written",
        "seconds",
        "checks",
        "status",
    )
    rows = [header]
    for o in outcomes:
        rows.append(
            (
                o.cfg.table,
                o.cfg.mode,
                o.strategy or "-",
                "-" if o.rows_read is None else f"{int(o.rows_read):,}",
                "-" if o.rows_written is None else f"{int(o.rows_written):,}",
                "-" if o.seconds is None else f"{o.seconds:.2f}",
                o.checks,
                "ok" if o.ok else "FAILED",
            )
        )
    lines = text_table(rows, right={3, 4, 5})
    for o in outcomes:
        if not o.ok:
            lines.append(f"\n{o.cfg.table}: {o.error}")
    return "\n".join(lines)


def format_outcome(table: str, outcome: CheckOutcome) -> str:
    """One verdict with its figures, as `mysqlsync-dagster check` prints it."""
    from mysqlsync_dagster.verify.compare import SAMPLE_KEYS

    verdict = "ok" if outcome.passed else ("FAILED" if outcome.blocking else "failed")
    figures = " ".join(
        f"{key}={value:,}"
        if isinstance(value, int) and not isinstance(value, bool)
        else f"{key}={value}"
        for key, value in outcome.metadata.items()
        if isinstance(value, int | float | str) and value != ""
    )
    lines = [f"{table}  {outcome.check}  {verdict}  {outcome.description}"]
    if figures:
        lines.append(f"    {figures}")
    keys = outcome.metadata.get("differing_keys")
    if keys:
        lines.append(
            "    differing keys: "
            + "; ".join(f"{k['difference']} {k['key']}" for k in keys[:SAMPLE_KEYS])
        )
    return "\n".join(lines)


def cmd_sync(args: argparse.Namespace) -> int:
    tables = select_tables(load_tables_config(args.config), args.tables)
    outcomes = run_sync(tables, args.settings, verbose=args.verbose, ready=args.ready)
    if args.json:
        print(json.dumps([o.as_json() for o in outcomes], indent=2))
    else:
        print(format_summary(outcomes))
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from mysqlsync_dagster.db import create_engine
    from mysqlsync_dagster.verify.heal import run_all_checks

    tables = select_tables(load_tables_config(args.config), args.tables)
    source = create_engine(args.settings.database("source"))
    target = create_engine(args.settings.database("target"))
    blocking_failed = False
    try:
        for cfg in tables:
            for outcome in run_all_checks(cfg, source, target, full=args.full):
                print(format_outcome(cfg.table, outcome), flush=True)
                blocking_failed |= outcome.blocking and not outcome.passed
    finally:
        source.dispose()
        target.dispose()
    return EXIT_FAILED if blocking_failed else EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from mysqlsync_dagster.tools.doctor import diagnose, format_human, format_json

    report = diagnose(args.config)  # reports a bad environment instead of failing on it
    print(format_json(report) if args.json else format_human(report))
    return report.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from mysqlsync_dagster.tools.demo import start_demo, stop_demo, write_env_files

    root = Path(args.dir)
    if args.stop:
        stop_demo(root)
        print(f"demo servers under {root} stopped")
        return EXIT_OK
    demo = start_demo(root, reset=args.reset, target_kind=args.target)
    written = write_env_files(demo, Path(".env"))
    print(f"source: MariaDB on 127.0.0.1:{demo.source.port}, database shop (sample data)")
    print(f"target: {demo.describe_target()}")
    print("environment (written to " + ", ".join(str(p) for p in written) + "):")
    for key, value in demo.environment().items():
        print(f"  export {key}={value}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from mysqlsync_dagster.tools.bench import run_from_args

    return EXIT_OK if run_from_args(args) == 0 else EXIT_FAILED


def add_bench_arguments(parser: Any) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000, help="orders rows (1,000,000)")
    parser.add_argument(
        "--big", action="store_true", help="10,000,000 orders rows (overrides --rows)"
    )
    parser.add_argument("--wide-rows", type=int, default=200_000, help="wide rows; 0 skips it")
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--compression", default="zstd", help="PARQUET_COMPRESSION for staging")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--buffer-pool",
        default="1G",
        help="the MariaDB servers' innodb_buffer_pool_size (1G: the target's copies fit)",
    )
    parser.add_argument(
        "--target",
        choices=("mariadb", "postgres", "duckdb"),
        default="mariadb",
        help="postgres: orders into a throwaway PostgreSQL against pgloader; duckdb: into"
        " DuckDB files against DuckDB's MySQL scanner (issue 14)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mysqlsync-dagster",
        description="Keep MySQL/MariaDB tables in sync (Dagster + dlt).",
    )
    parser.add_argument(
        "--config", help="path of tables.json (default: $TABLES_CONFIG or ./tables.json)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sync = sub.add_parser("sync", help="materialize table assets once, in process")
    sync.add_argument("tables", nargs="*", metavar="TABLE")
    sync.add_argument("-v", "--verbose", action="store_true", help="show the run's log")
    sync.add_argument(
        "--json", action="store_true", help="one JSON object per table, with its run metadata"
    )
    sync.set_defaults(func=cmd_sync)

    check = sub.add_parser("check", help="run the asset checks against the databases as they are")
    check.add_argument("tables", nargs="*", metavar="TABLE")
    check.add_argument(
        "--full",
        action="store_true",
        help="verify the whole table at once (default: the rolling slice the next sync verifies)",
    )
    check.set_defaults(func=cmd_check)

    doctor = sub.add_parser("doctor", help="diagnose config, connections, grants and tables")
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.set_defaults(func=cmd_doctor)

    demo = sub.add_parser(
        "demo",
        help="start a throwaway MariaDB source with data, and a target (MariaDB, PostgreSQL or DuckDB)",
    )
    demo.add_argument("--dir", default=".demo", help="where the servers live (default .demo)")
    demo.add_argument("--reset", action="store_true", help="drop and reload the sample data")
    demo.add_argument("--stop", action="store_true", help="stop the demo servers")
    demo.add_argument(
        "--target",
        choices=("mariadb", "postgres", "duckdb"),
        default="mariadb",
        help="the target: a MariaDB replica (default), a PostgreSQL or a DuckDB analytics copy",
    )
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="time a sync against mariadb-dump | mariadb")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None, ready: Callable[[], None] | None = None) -> int:
    """Run the command line; `ready` is called when start-up is over (for `sync`, once the
    definitions are built; for other commands, before they start)."""
    load_dotenv_file()
    args = build_parser().parse_args(argv)
    args.ready = ready
    if ready is not None and args.func is not cmd_sync:
        ready()
    try:
        if args.func is not cmd_doctor:
            args.settings = Settings.from_environ()
            args.config = args.config or args.settings.tables_config
        return int(args.func(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
