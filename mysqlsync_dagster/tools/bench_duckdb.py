"""Issue 14's benchmark into DuckDB: `orders` from a throwaway MariaDB into DuckDB files, against
DuckDB's own MySQL scanner (`benchmarks/run.py --target duckdb`, or `mysqlsync-dagster bench
--target duckdb`).

Fills the 1M-row `orders` table of DESIGN.md (as `bench.py`), copies it once with DuckDB's MySQL
scanner into a fresh file (the reference: a whole `python -c` process that loads the extension
shipped by the `duckdb-extension-mysql` package, ATTACHes the source and runs `CREATE TABLE
orders AS SELECT * FROM mysql_db.orders`), then the product's syncs of `bench_analytics.py`,
each mode into a fresh file of its own. Peak RSS: each sync process and its connectorx reader
child, and the scanner's process. At the end the copies are checked independently of the
product (`bench_analytics.py`: aggregates by each engine, a row digest in Python from pymysql
and duckdb); the scanner's copy likewise, before the 1% change; the scanner's types reported.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
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

# the reference: its key in the report, its ratio column, its row
REFERENCE = ("scanner", "x scan", "DuckDB MySQL scanner, CTAS")
# The scanner, as a user runs it (argv: copy file, extension file, ATTACH string)
SCANNER_SCRIPT = """\
import sys, duckdb
db = duckdb.connect(sys.argv[1])
db.execute(f"LOAD '{sys.argv[2]}'")
db.execute(f"ATTACH '{sys.argv[3]}' AS mysql_db (TYPE mysql)")
db.execute("CREATE TABLE orders AS SELECT * FROM mysql_db.orders")
db.close()
"""


def scanner_extension(directory: Path) -> Path:
    """The MySQL scanner of the `duckdb-extension-mysql` package (built for this DuckDB), copied
    to `mysql_scanner.duckdb_extension`: DuckDB derives the entry point from the file name."""
    try:
        shipped = resources.files("duckdb_extension_mysql") / "extensions"
    except ModuleNotFoundError as error:
        raise SystemExit("pip install duckdb-extension-mysql (the scanner, offline)") from error
    found = list(Path(str(shipped)).glob(f"v{duckdb.__version__}/mysql.duckdb_extension"))
    if not found:
        raise SystemExit(f"duckdb-extension-mysql has no build for DuckDB {duckdb.__version__}")
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(found[0], directory / "mysql_scanner.duckdb_extension"))


def scanner_command(source: MariaDBServer, copy: Path, extension: Path) -> list[str]:
    attach = f"host=127.0.0.1 port={source.port} user=root database=bench"
    return [sys.executable, "-c", SCANNER_SCRIPT, str(copy), str(extension), attach]


def duckdb_figures(path: Path, table: str = "orders") -> dict[str, Any]:
    db = duckdb.connect(str(path), read_only=True)
    try:
        return copy_figures(db.cursor(), db.cursor(), table)
    finally:
        db.close()


def column_types(path: Path, table: str = "orders") -> dict[str, Any]:
    """Each column's DuckDB type and nullability, and the table's constraints."""
    db = duckdb.connect(str(path), read_only=True)
    try:
        columns = db.execute(
            "SELECT column_name, data_type || IF(is_nullable, '', ' NOT NULL')"
            " FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
            [table],
        ).fetchall()
        constraints = db.execute(
            "SELECT constraint_type, constraint_column_names FROM duckdb_constraints()"
            " WHERE table_name = ? AND constraint_type <> 'NOT NULL'",
            [table],
        ).fetchall()
        indexes = db.execute(
            "SELECT index_name FROM duckdb_indexes() WHERE table_name = ?", [table]
        ).fetchall()
    finally:
        db.close()
    return {
        "columns": dict(columns),
        "constraints": [f"{kind} ({', '.join(names)})" for kind, names in constraints],
        "indexes": [name for (name,) in indexes],
    }


def run_duckdb_benchmark(
    rows: int = 1_000_000,
    batch_size: int = 50_000,
    compression: str = "zstd",
    keep: bool = False,
) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="mysqlsync-bench-duckdb-"))
    source = start_source(base)
    report = analytics_report(rows, batch_size, compression)
    copies = base / "copies"
    copies.mkdir()
    try:
        engine = sa.create_engine(source.url())
        fill_source(engine, rows)
        scanner_copy = copies / "scanner.duckdb"
        command = scanner_command(source, scanner_copy, scanner_extension(base / "extensions"))
        run = run_measured(command)
        if run.returncode != 0:
            raise SystemExit(f"the scanner failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        report["scanner"] = {
            "command": f'python -c "{"; ".join(SCANNER_SCRIPT.splitlines())}" COPY EXT'
            f" '{command[-1]}'",
            "duckdb": duckdb.__version__,
            "wall_seconds": run.wall_seconds,
            "peak_rss_mb": run.peak_rss_mb,
            "types": column_types(scanner_copy),
        }

        def after_full() -> None:
            report["product_types"] = column_types(copies / "direct.duckdb")
            # the scanner's copy against the source as it copied it
            report["scanner_copy"] = matches(duckdb_figures(scanner_copy), source_figures(source))

        sync_steps(
            report,
            engine,
            lambda mode: {
                "SOURCE_DB_URL": source.url("bench"),
                "TARGET_DB_URL": f"duckdb:///{copies / mode}.duckdb",
                "STAGING_DIR": str(base / "staging"),
                "PARQUET_COMPRESSION": compression,
            },
            "scanner",
            after_full,
        )
        figures = {mode: duckdb_figures(copies / f"{mode}.duckdb") for mode in MODES}
        compare_copies(report, source_figures(source), figures)
        report["file_mb"] = {
            path.stem: round(path.stat().st_size / 2**20, 1) for path in copies.glob("*.duckdb")
        }
        engine.dispose()
    finally:
        if not keep:
            with contextlib.suppress(Exception):
                source.stop()
            subprocess.run(["rm", "-rf", str(base)], check=False)
    return report


def format_duckdb_report(report: dict[str, Any]) -> str:
    scanner = report["scanner"]
    notes = [
        f"scanner (DuckDB {scanner['duckdb']}): {scanner['command']}",
        f"the scanner's types: {json.dumps(scanner['types'])}",
        f"the product's types: {json.dumps(report['product_types'])}",
        f"file sizes MB: {report['file_mb']}",
        f"copies match source (aggregates by each engine; row digest in Python):"
        f" {report['copies_match_source']}",
        f"the scanner's copy against the source before the 1% change: {report['scanner_copy']}",
    ]
    return format_report(report, "DuckDB", REFERENCE, notes)


def run_from_args(args: Any) -> int:
    report = run_duckdb_benchmark(
        10_000_000 if args.big else args.rows, args.batch_size, compression=args.compression
    )
    return finish(report, format_duckdb_report(report), args, "scanner_copy")
