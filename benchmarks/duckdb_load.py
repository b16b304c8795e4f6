"""How fast text from the wire becomes typed DuckDB rows: the load paths compared.

    python benchmarks/duckdb_load.py [ROWS]

Builds an `orders`-like table (BIGINT id, INT customer, DECIMAL(12,2), VARCHAR(64), DATETIME,
TEXT) in memory as Arrow string arrays, exactly as the wire delivers it (`duckdb_wire_sql`),
then loads it into a fresh DuckDB file per path and reports rows/s (best of 3):

- sql-cast: INSERT INTO t SELECT CAST(...) FROM the text table (`duckdb_load_sql`);
- arrow-cast: pyarrow casts the strings to typed Arrow (int64, decimal128, timestamp[us]),
  DuckDB inserts the typed columns as they are (the pyarrow cast is timed too);
- each with and without the PRIMARY KEY (DuckDB maintains an ART index for it);
- ctas: CREATE TABLE AS SELECT CAST(...) (no key), the floor for a table built aside.
The results are checked equal (same row count and the same aggregate of every column).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mysqlsync_dagster.catalog import Column
from mysqlsync_dagster.targets.duckdb.types import duckdb_load_sql, duckdb_type

COLUMNS = [
    Column("id", "bigint", "bigint(20)", False, None, None, False),
    Column("customer_id", "int", "int(11)", False, None, None, False),
    Column("amount", "decimal", "decimal(12,2)", True, None, None, False),
    Column("status", "varchar", "varchar(64)", False, "utf8mb4", "utf8mb4_general_ci", False),
    Column("created_at", "datetime", "datetime", False, None, None, False),
    Column("note", "text", "text", True, "utf8mb4", "utf8mb4_general_ci", False),
]
ARROW_TYPES = [pa.int64(), pa.int32(), pa.decimal128(12, 2), None, pa.timestamp("us"), None]


def wire_table(rows: int) -> pa.Table:
    """The text the wire would carry for `rows` orders (MySQL's CAST(... AS CHAR) forms)."""
    ids = pa.array(range(1, rows + 1), pa.int64())
    seconds = pc.add(pc.multiply(ids, 37), 1_700_000_000)
    created = pc.strftime(pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.timestamp("s")))
    cents = pc.multiply(pc.bit_wise_and(ids, 0xFFFFF), 7)
    amounts = pc.binary_join_element_wise(
        pc.cast(pc.divide(cents, 100), pa.string()),
        pc.utf8_lpad(
            pc.cast(pc.subtract(cents, pc.multiply(pc.divide(cents, 100), 100)), pa.string()),
            2,
            "0",
        ),
        ".",
    )
    statuses = pc.take(pa.array(["new", "paid", "shipped", "cancelled"]), pc.bit_wise_and(ids, 3))
    notes = pc.binary_join_element_wise("note for order ", pc.cast(ids, pa.string()), "")
    texts = [ids, pc.bit_wise_and(ids, 0xFFFF), amounts, statuses, created, notes]
    return pa.table(
        [pc.replace_substring(pc.cast(a, pa.string()), "T", " ") for a in texts],
        names=[c.name for c in COLUMNS],
    )


def create(duck: duckdb.DuckDBPyConnection, key: bool) -> None:
    columns = ", ".join(f"{c.name} {duckdb_type(c)}" for c in COLUMNS)
    duck.execute(f"CREATE TABLE t ({columns}{', PRIMARY KEY (id)' if key else ''})")


def sql_cast(duck: duckdb.DuckDBPyConnection, wire: pa.Table, key: bool) -> None:
    create(duck, key)
    select = ", ".join(duckdb_load_sql(c, c.name) for c in COLUMNS)
    duck.execute(f"INSERT INTO t SELECT {select} FROM wire")


def arrow_cast(duck: duckdb.DuckDBPyConnection, wire: pa.Table, key: bool) -> None:
    create(duck, key)
    typed = pa.table(
        [
            col if t is None else pc.cast(col, t)
            for col, t in zip(wire.columns, ARROW_TYPES, strict=True)
        ],
        names=wire.column_names,
    )
    duck.register("typed", typed)
    duck.execute("INSERT INTO t SELECT * FROM typed")


def ctas(duck: duckdb.DuckDBPyConnection, wire: pa.Table, key: bool) -> None:
    select = ", ".join(f"{duckdb_load_sql(c, c.name)} AS {c.name}" for c in COLUMNS)
    duck.execute(f"CREATE TABLE t AS SELECT {select} FROM wire")


def measure(
    path: Callable[..., None], wire: pa.Table, key: bool, workdir: Path
) -> tuple[float, tuple]:
    best = float("inf")
    for attempt in range(3):
        duck = duckdb.connect(str(workdir / f"{path.__name__}_{key}_{attempt}.duckdb"))
        duck.register("wire", wire)
        started = time.perf_counter()
        path(duck, wire, key)
        duck.execute("CHECKPOINT")
        best = min(best, time.perf_counter() - started)
        summary = duck.sql(
            "SELECT count(*), sum(id), sum(customer_id), sum(amount), max(created_at),"
            " sum(length(status)), sum(length(note)) FROM t"
        ).fetchone()
        duck.close()
    return best, summary


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    wire = wire_table(rows)
    print(f"{rows} rows, {wire.nbytes / 1e6:.0f} MB of Arrow text; DuckDB {duckdb.__version__}")
    summaries = set()
    with tempfile.TemporaryDirectory() as tmp:
        for path, key in [
            (sql_cast, True),
            (sql_cast, False),
            (arrow_cast, True),
            (arrow_cast, False),
            (ctas, False),
        ]:
            seconds, summary = measure(path, wire, key, Path(tmp))
            summaries.add(summary)
            label = f"{path.__name__}{' + primary key' if key else ''}"
            print(f"{label:28} {seconds:6.2f} s  {rows / seconds:12,.0f} rows/s")
    assert len(summaries) == 1, summaries  # every path loaded the same values


if __name__ == "__main__":
    main()
