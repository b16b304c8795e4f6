"""`mysqlsync-dagster`: one-shot syncs, checks, diagnostics and the local demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dotenv import load_dotenv

from mysqlsync_dagster.bench import add_arguments as add_bench_arguments
from mysqlsync_dagster.config import ConfigError, TableConfig, interval_seconds, load_tables_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class TableOutcome:
    cfg: TableConfig
    ok: bool
    rows_read: int | None = None
    rows_written: int | None = None
    seconds: float | None = None
    strategy: str = ""
    error: str = ""


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


def _instance() -> dg.DagsterInstance:
    """The persistent instance when DAGSTER_HOME is set (runs show up in the UI), else ephemeral."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def _metadata_value(metadata: dict[str, dg.MetadataValue], key: str) -> float | None:
    value = metadata.get(key)
    return None if value is None else value.value  # type: ignore[return-value]


def run_sync(tables: list[TableConfig], verbose: bool = False) -> list[TableOutcome]:
    from mysqlsync_dagster.factory import build_definitions

    defs = build_definitions(tables, interval_seconds())
    started = time.perf_counter()
    log_level = "INFO" if verbose else "ERROR"
    result = dg.materialize(
        assets=list(defs.assets or []),
        resources=defs.resources,
        instance=_instance(),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        tags={"mysqlsync/trigger": "cli"},
    )
    failures = {
        event.step_key: event.event_specific_data.error  # type: ignore[union-attr]
        for event in result.get_step_failure_events()
    }
    outcomes = []
    for cfg in tables:
        node = f"sync_{cfg.key}"
        materializations = result.asset_materializations_for_node(node)
        if materializations:
            metadata = materializations[-1].metadata
            outcomes.append(
                TableOutcome(
                    cfg,
                    ok=True,
                    rows_read=_metadata_value(metadata, "rows_extracted"),
                    rows_written=_metadata_value(metadata, "rows_written"),
                    seconds=_metadata_value(metadata, "seconds"),
                    strategy=str(_metadata_value(metadata, "strategy") or ""),
                )
            )
        else:
            error = failures.get(node)
            message = root_message(error) if error else "did not run (an upstream step failed)"
            outcomes.append(TableOutcome(cfg, ok=False, error=message))
    if verbose:
        print(f"total {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return outcomes


def root_message(error: Any) -> str:
    """The innermost error's message: what went wrong, not Dagster's wrapper around it."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


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
                "-",
                "ok" if o.ok else "FAILED",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    numeric = {3, 4, 5}
    lines = [
        "  ".join(
            str(cell).rjust(widths[i]) if i in numeric else str(cell).ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    for o in outcomes:
        if not o.ok:
            lines.append(f"\n{o.cfg.table}: {o.error}")
    return "\n".join(lines)


def cmd_sync(args: argparse.Namespace) -> int:
    tables = select_tables(load_tables_config(args.config), args.tables)
    outcomes = run_sync(tables, verbose=args.verbose)
    print(format_summary(outcomes))
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def cmd_not_yet(args: argparse.Namespace) -> int:
    load_tables_config(args.config)
    print(f"mysqlsync-dagster {args.command}: not implemented yet", file=sys.stderr)
    return EXIT_USAGE


def cmd_doctor(args: argparse.Namespace) -> int:
    from mysqlsync_dagster.doctor import diagnose, format_human, format_json

    report = diagnose(args.config)
    print(format_json(report) if args.json else format_human(report))
    return report.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from mysqlsync_dagster.demo import start_demo, stop_demo, write_env_files

    root = Path(args.dir)
    if args.stop:
        stop_demo(root)
        print(f"demo servers under {root} stopped")
        return EXIT_OK
    demo = start_demo(root, reset=args.reset)
    written = write_env_files(demo, Path(".env"))
    print(f"source: MariaDB on 127.0.0.1:{demo.source.port}, database shop (sample data)")
    print(f"target: MariaDB on 127.0.0.1:{demo.target.port}, database shop_replica")
    print("environment (written to " + ", ".join(str(p) for p in written) + "):")
    for key, value in demo.environment().items():
        print(f"  export {key}={value}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from mysqlsync_dagster.bench import run_from_args

    return EXIT_OK if run_from_args(args) == 0 else EXIT_FAILED


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
    sync.set_defaults(func=cmd_sync)

    check = sub.add_parser("check", help="run the asset checks against the databases as they are")
    check.add_argument("tables", nargs="*", metavar="TABLE")
    check.set_defaults(func=cmd_not_yet)

    doctor = sub.add_parser("doctor", help="diagnose config, connections, grants and tables")
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.set_defaults(func=cmd_doctor)

    demo = sub.add_parser("demo", help="start a throwaway MariaDB source and target with data")
    demo.add_argument("--dir", default=".demo", help="where the servers live (default .demo)")
    demo.add_argument("--reset", action="store_true", help="drop and reload the sample data")
    demo.add_argument("--stop", action="store_true", help="stop the demo servers")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="time a sync against mariadb-dump | mariadb")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    load_dotenv(Path.cwd() / ".env", override=False)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
