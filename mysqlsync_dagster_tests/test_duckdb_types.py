"""The DuckDB type mapping keeps every value exactly, and the cross-engine row digest agrees.

Each type group of the fidelity suite (plus DuckDB-specific ones) is created in a real MariaDB,
read as the product reads it for DuckDB (the wire SELECT through connectorx, each column in its
own type or as text, the zero-date rule applied), loaded into a DuckDB file through the load
expressions, then: typed values are checked, per-row digests and the
COUNT / BIT_XOR aggregates agree on both engines, and changing any one value in DuckDB (a unit
in the last place, a microsecond, a trailing space or byte, NULL) changes that row's digest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import random
import re
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import connectorx as cx
import duckdb
import pyarrow as pa
import pytest
import sqlalchemy as sa

from mysqlsync_dagster.catalog import Column, TableShape, read_table_shape
from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.db import quote_identifier, run_sql
from mysqlsync_dagster.errors import SchemaError
from mysqlsync_dagster.pipeline.extract import table_resource
from mysqlsync_dagster.pipeline.wire import NATIVE_KINDS, WireColumn, wire_values
from mysqlsync_dagster.settings import DatabaseSettings
from mysqlsync_dagster.targets.duckdb.types import duckdb_load_sql, duckdb_type, duckdb_wire_sql
from mysqlsync_dagster.verify.canonical import mysql_canonical_sql, mysql_row_digest_sql
from mysqlsync_dagster.verify.canonical_duckdb import (
    duckdb_canonical_sql,
    duckdb_quote,
    duckdb_row_digest_sql,
)
from mysqlsync_dagster_tests.harness import ServerPair
from mysqlsync_dagster_tests.test_fidelity import TYPE_GROUPS


def _f32(value: float) -> float:
    """`value` rounded to the nearest IEEE single, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _special_doubles() -> list[float]:
    values = [
        1.7976931348623157e308,
        -1.7976931348623157e308,
        2.2250738585072014e-308,
        2.225073858507201e-308,  # the largest subnormal
        -4.9e-324,
        5e-324,
        0.1,
        -0.1,
        3.40282e38,
        -16777217.0,
        1e15,
        1e16,
        1e-5,
        123456789.125,
        0.0,
        1.0,
        -1.0,
    ]
    for exponent in [*range(-1074, -1000, 7), *range(-1022, 1024, 31), -1022, 0, 1, 52, 53, 1023]:
        power = math.ldexp(1.0, exponent)
        values += [power, -power, math.nextafter(power, 0.0), math.nextafter(power, math.inf)]
    return [v for v in values if math.isfinite(v)]


def _random_doubles(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    values: list[float] = []
    while len(values) < count:
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(value):
            values.append(value)
    return values


def _random_floats(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    values: list[float] = []
    while len(values) < count:
        value = struct.unpack("<f", rng.getrandbits(32).to_bytes(4, "little"))[0]
        if math.isfinite(value):
            values.append(value)
    return values


def _double_rows() -> list[str]:
    doubles = _special_doubles() + _random_doubles(3000, seed=20261)
    specials = [
        _f32(v) for v in (3.40282e38, -16777217.0, 0.1, 1.17549e-38, 1e-45, -3.4028234663852886e38)
    ]
    floats = specials + _random_floats(len(doubles) - len(specials), seed=20262)
    rows = [
        f"({i}, '{d!r}', '{f!r}')" for i, (d, f) in enumerate(zip(doubles, floats, strict=True), 1)
    ]
    return [
        f"INSERT INTO t VALUES {', '.join(rows[i : i + 500])}" for i in range(0, len(rows), 500)
    ]


GROUPS = {
    **TYPE_GROUPS,
    "doubles": ("CREATE TABLE t (id INT PRIMARY KEY, db DOUBLE, f FLOAT)", _double_rows()),
    "extras": (
        """CREATE TABLE t (id INT PRIMARY KEY, u UUID, i6 INET6, i4 INET4, d38 DECIMAL(38,10),
            d39 DECIMAL(39,0) UNSIGNED, d0 DECIMAL(10,0), dd DATE, dt6 DATETIME(6), tm3 TIME(3),
            ts3 TIMESTAMP(3) NULL DEFAULT NULL, b1 BIT(1), t1 TINYINT(1), nn VARCHAR(5) NOT NULL,
            lat1 TEXT CHARACTER SET latin1, js JSON)""",
        [
            "INSERT INTO t VALUES (1, '123E4567-E89B-12D3-A456-426655440000', '::ffff:1.2.3.4',"
            " '10.0.0.255', '-9999999999999999999999999999.9999999999',"
            " '999999999999999999999999999999999999999', -9999999999, '0001-01-01',"
            " '0001-01-01 00:00:00.000001', '-00:00:01.500', '1970-01-01 00:00:00.001', b'1',"
            " -128, '', 'caf\u00e9 \u00bd', '{\"a\":  1 , \"b\" :[ ]}')",
            "INSERT INTO t VALUES (2, NULL, NULL, NULL, 0, 0, 0, '2024-02-29',"
            " '2024-02-29 12:00:00', '838:59:59.999', '2038-01-19 03:14:07.999', b'0', 127,"
            " ' x ', '', 'null')",
        ],
    ),
    # NOT NULL dates travel in their own type (date32, timestamp[us]), not as text
    "not_null_dates": (
        """CREATE TABLE t (id INT PRIMARY KEY, d DATE NOT NULL, dt0 DATETIME NOT NULL,
            dt3 DATETIME(3) NOT NULL, dt6 DATETIME(6) NOT NULL)""",
        [
            "INSERT INTO t VALUES (1, '0001-01-01', '0001-01-01 00:00:00',"
            " '0001-01-01 00:00:00.001', '0001-01-01 00:00:00.000001'),"
            " (2, '9999-12-31', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999',"
            " '9999-12-31 23:59:59.999999'),"
            " (3, '1969-12-31', '1969-12-31 23:59:59', '1970-01-01 00:00:00.000',"
            " '2024-02-29 12:00:00.5')",
        ],
    ),
}

# Typed values read back from DuckDB: (group, column, id, expected Python value).
EXPECTED: list[tuple[str, str, int, Any]] = [
    ("not_null_dates", "d", 1, dt.date(1, 1, 1)),
    ("not_null_dates", "dt0", 1, dt.datetime(1, 1, 1)),
    ("not_null_dates", "dt6", 1, dt.datetime(1, 1, 1, 0, 0, 0, 1)),
    ("not_null_dates", "d", 2, dt.date(9999, 12, 31)),
    ("not_null_dates", "dt3", 2, dt.datetime(9999, 12, 31, 23, 59, 59, 999000)),
    ("not_null_dates", "dt6", 2, dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    ("not_null_dates", "dt0", 3, dt.datetime(1969, 12, 31, 23, 59, 59)),
    ("not_null_dates", "dt6", 3, dt.datetime(2024, 2, 29, 12, 0, 0, 500000)),
    ("integers", "biu", 1, 18446744073709551615),
    ("integers", "bi", 1, -9223372036854775808),
    ("integers", "iu", 1, 4294967295),
    ("integers", "miu", 1, 16777215),
    ("integers", "yr", 1, 2155),
    ("integers", "yr", 3, 0),
    ("integers", "b1", 1, 1),
    ("numeric", "d", 1, "99999999999999999999999999999999999.999999999999999999999999999999"),
    ("numeric", "d", 2, "-0.000000000000000000000000000001"),
    ("numeric", "d", 3, "0.000000000000000000000000000000"),
    ("numeric", "d2", 2, Decimal("9999999999.99")),
    ("numeric", "d2", 1, Decimal("0.01")),
    ("numeric", "f", 1, _f32(3.40282e38)),
    ("numeric", "f", 3, _f32(0.1)),
    ("numeric", "f", 4, -16777216.0),
    ("numeric", "fd", 1, _f32(1234.567)),
    ("numeric", "db", 1, 1.7976931348623157e308),
    ("numeric", "db", 2, 2.2250738585072014e-308),
    ("numeric", "db", 3, 0.1),
    ("numeric", "db", 4, -5e-324),
    ("numeric", "b64", 1, 2**64 - 1),
    ("numeric", "b64", 4, 2**63),
    ("numeric", "b5", 1, 21),
    ("temporal", "d", 1, dt.date(1000, 1, 1)),
    ("temporal", "dt0", 1, dt.datetime(1000, 1, 1)),
    ("temporal", "dt3", 1, dt.datetime(2024, 2, 29, 23, 59, 59, 999000)),
    ("temporal", "dt3", 2, dt.datetime(2024, 10, 27, 2, 30, 0, 500000)),
    ("temporal", "dt6", 1, dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    ("temporal", "dt6", 2, dt.datetime(2024, 1, 1, 0, 0, 0, 1)),
    ("temporal", "tm", 1, -dt.timedelta(hours=838, minutes=59, seconds=59)),
    ("temporal", "tm6", 1, dt.timedelta(hours=838, minutes=59, seconds=59)),
    ("temporal", "tm6", 2, -dt.timedelta(microseconds=1)),
    ("temporal", "tm", 2, dt.timedelta(hours=100)),
    ("temporal", "y", 1, 1901),
    ("strings", "c", 1, "abc"),
    ("strings", "c", 4, "trail"),  # MySQL strips CHAR's trailing spaces when reading
    ("strings", "vc", 4, "trailing space "),
    ("strings", "vc", 1, '😀 4-byte 𝄞 and "quotes", commas, \\ backslash'),
    ("strings", "vc", 3, "NULL"),
    ("strings", "lt", 3, "\\N"),
    ("strings", "lat", 1, "Ångström"),
    ("strings", "e", 1, "dé"),
    ("strings", "s", 4, "x,y,z"),
    ("strings", "j", 1, '{"k": [1, 2.5, "ü", null], "n": {"a": true}}'),
    ("strings", "j", 4, '"just a string"'),
    ("binary", "b", 1, b"\x00\xff\x00\x00"),
    ("binary", "b", 2, b"ab\x00\x00"),
    ("binary", "vb", 1, b"\x00"),
    ("binary", "vb", 2, b""),
    ("binary", "bl", 1, bytes.fromhex("FF00FE0D0A22272C5C")),
    ("binary", "lb", 1, b"\xff\x00" * 300000),
    ("binary", "tb", 3, b"NULL"),
    ("spatial", "p", 1, struct.pack("<IBIdd", 0, 1, 1, 1.5, -2.25)),
    ("spatial", "g", 1, struct.pack("<IBIdd", 4326, 1, 1, 1.0, 2.0)),
    ("extras", "u", 1, uuid.UUID("123e4567-e89b-12d3-a456-426655440000")),
    ("extras", "i6", 1, "::ffff:1.2.3.4"),
    ("extras", "d38", 1, Decimal("-9999999999999999999999999999.9999999999")),
    ("extras", "d39", 1, "999999999999999999999999999999999999999"),
    ("extras", "d0", 1, Decimal("-9999999999")),
    ("extras", "dd", 1, dt.date(1, 1, 1)),
    ("extras", "dt6", 1, dt.datetime(1, 1, 1, 0, 0, 0, 1)),
    ("extras", "tm3", 1, -dt.timedelta(seconds=1, milliseconds=500)),
    ("extras", "nn", 2, " x "),
    ("extras", "lat1", 1, "café ½"),
    ("extras", "js", 1, '{"a":  1 , "b" :[ ]}'),
]
# Instants, as microseconds since the epoch (independent of DuckDB's TimeZone setting).
EXPECTED_INSTANTS = [
    ("temporal", "ts", 1, 1_000_000),
    ("temporal", "ts", 2, 1_710_037_800_000_000),  # 2024-03-10 02:30:00 UTC
    ("temporal", "ts6", 1, 2_147_483_647_999_999),
    ("temporal", "ts6", 2, 1_719_748_800_123_456),
    ("extras", "ts3", 1, 1_000),
    ("extras", "ts3", 2, 2_147_483_647_999_000),
]
EXPECTED_TYPES = {
    "integers": "INTEGER TINYINT UTINYINT SMALLINT USMALLINT INTEGER UINTEGER INTEGER UINTEGER"
    " BIGINT UBIGINT TINYINT USMALLINT",
    "numeric": "INTEGER VARCHAR DECIMAL(12,2) FLOAT FLOAT DOUBLE UBIGINT UBIGINT UBIGINT",
    "temporal": "INTEGER DATE TIMESTAMP TIMESTAMP TIMESTAMP TIMESTAMP_WITH_TIME_ZONE"
    " TIMESTAMP_WITH_TIME_ZONE INTERVAL INTERVAL USMALLINT",
    "binary": "INTEGER BLOB BLOB BLOB BLOB BLOB",
    "extras": "INTEGER UUID VARCHAR VARCHAR DECIMAL(38,10) VARCHAR DECIMAL(10,0) DATE TIMESTAMP"
    " INTERVAL TIMESTAMP_WITH_TIME_ZONE UBIGINT TINYINT VARCHAR VARCHAR VARCHAR",
}


@dataclass
class Copy:
    """One source table in MariaDB and its DuckDB copy."""

    source: sa.Engine
    database: str
    duck: duckdb.DuckDBPyConnection
    shape: TableShape
    zero_dates: int

    @property
    def columns(self) -> list[Column]:
        return self.shape.copied_columns

    def mysql_digests(self) -> dict[int, int]:
        digest = mysql_row_digest_sql(self.columns, quote_identifier)
        with self.source.connect() as conn:
            return dict(run_sql(conn, f"SELECT id, {digest} FROM t").all())

    def mysql_aggregate(self) -> tuple[int, int]:
        digest = mysql_row_digest_sql(self.columns, quote_identifier)
        with self.source.connect() as conn:
            count, xor = run_sql(conn, f"SELECT COUNT(*), BIT_XOR({digest}) FROM t").one()
        return int(count), int(xor)

    def duckdb_digests(self, where: str = "TRUE") -> dict[int, int]:
        digest = duckdb_row_digest_sql(self.columns, duckdb_quote)
        return dict(self.duck.sql(f"SELECT id, {digest} FROM t WHERE {where}").fetchall())

    def duckdb_aggregate(self) -> tuple[int, int]:
        digest = duckdb_row_digest_sql(self.columns, duckdb_quote)
        count, xor = self.duck.sql(f"SELECT COUNT(*), bit_xor({digest}) FROM t").fetchone()
        return int(count), int(xor)

    def duckdb_value(self, column: str, key: int) -> Any:
        sql = f"SELECT {duckdb_quote(column)} FROM t WHERE id = {key:d}"
        return self.duck.sql(sql).fetchone()[0]


def read_wire_table(conn: sa.Connection, columns: list[Column]) -> tuple[pa.Table, int]:
    """The source table as the product reads it for DuckDB: its wire SELECT (each column in its
    own type or as text) through connectorx's Arrow stream, then `wire_values` (zero dates NULL,
    counted)."""
    wire = [WireColumn.of(c, "duckdb") for c in columns]
    select = ", ".join(w.select_sql(quote_identifier(w.column.name)) for w in wire)
    url = conn.engine.url
    auth = f"{url.username}:{url.password}" if url.password else url.username
    reader = cx.read_sql(
        f"mysql://{auth}@{url.host}:{url.port}/{url.database}?prefer_socket=false",
        f"SELECT {select} FROM t ORDER BY id",
        return_type="arrow_stream",
        batch_size=1000,
    )
    table = reader.read_all()
    arrays, zeros = [], 0
    for position, column in enumerate(wire):
        values, found = wire_values(table.column(position).combine_chunks(), column)
        arrays.append(values)
        zeros += found
    return pa.table(arrays, names=[c.name for c in columns]), zeros


def create_duckdb_table(duck: duckdb.DuckDBPyConnection, shape: TableShape) -> None:
    definitions = [
        f"{duckdb_quote(c.name)} {duckdb_type(c)}{'' if c.nullable else ' NOT NULL'}"
        for c in shape.copied_columns
    ]
    key = ", ".join(duckdb_quote(k) for k in shape.primary_key)
    duck.execute(f"CREATE TABLE t ({', '.join(definitions)}, PRIMARY KEY ({key}))")


def load_duckdb_table(duck: duckdb.DuckDBPyConnection, columns: list[Column], wire: pa.Table):
    duck.register("wire", wire)
    select = ", ".join(duckdb_load_sql(c, duckdb_quote(c.name)) for c in columns)
    duck.execute(f"INSERT INTO t SELECT {select} FROM wire")
    duck.unregister("wire")


@pytest.fixture
def source_database(mariadb_servers: ServerPair) -> Iterator[tuple[sa.Engine, str]]:
    database = f"duck_{os.getpid()}_{random.randrange(10**9)}"
    admin = mariadb_servers.source.engine()
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    engine = mariadb_servers.source.engine(database)
    try:
        yield engine, database
    finally:
        engine.dispose()
        with contextlib.suppress(sa.exc.SQLAlchemyError), admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")
        admin.dispose()


def copy_group(
    source_database: tuple[sa.Engine, str], tmp_path: Path, ddl: str, inserts: list[str]
) -> Copy:
    engine, database = source_database
    with engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")  # zero dates may be inserted
        for statement in [ddl, *inserts]:
            conn.exec_driver_sql(statement)
    with engine.connect() as conn:
        shape = read_table_shape(conn, database, "t")
        assert shape is not None
        wire, zeros = read_wire_table(conn, shape.copied_columns)
    duck = duckdb.connect(str(tmp_path / "copy.duckdb"))
    create_duckdb_table(duck, shape)
    load_duckdb_table(duck, shape.copied_columns, wire)
    return Copy(engine, database, duck, shape, zeros)


GROUP_NAMES = list(GROUPS)


@pytest.fixture(params=GROUP_NAMES)
def copy(request, source_database, tmp_path) -> Iterator[Copy]:
    ddl, inserts = GROUPS[request.param]
    copied = copy_group(source_database, tmp_path, ddl, inserts)
    copied.group = request.param  # type: ignore[attr-defined]
    try:
        yield copied
    finally:
        copied.duck.close()


def test_types_and_exact_values(copy):
    group = copy.group
    with copy.source.connect() as conn:
        count = run_sql(conn, "SELECT COUNT(*) FROM t").scalar_one()
    assert copy.duck.sql("SELECT COUNT(*) FROM t").fetchone()[0] == count
    if group in EXPECTED_TYPES:
        types = [r[1] for r in copy.duck.sql("DESCRIBE t").fetchall()]
        assert (
            " ".join(types).replace("TIMESTAMP WITH TIME ZONE", "TIMESTAMP_WITH_TIME_ZONE")
            == (EXPECTED_TYPES[group])
        )
    for expected_group, column, key, expected in EXPECTED:
        if expected_group == group:
            value = copy.duckdb_value(column, key)
            assert value == expected, (column, key)
            assert type(value) is type(expected), (column, key)
    for expected_group, column, key, micros in EXPECTED_INSTANTS:
        if expected_group == group:
            sql = f"SELECT epoch_us({duckdb_quote(column)}) FROM t WHERE id = {key:d}"
            assert copy.duck.sql(sql).fetchone()[0] == micros, (column, key)


def test_doubles_and_floats_are_bit_exact(source_database, tmp_path):
    """Every double and float, incl. subnormals, extremes and random bit patterns, arrives bit
    for bit, and both engines' computed bits are the true IEEE-754 bits."""
    ddl, inserts = GROUPS["doubles"]
    copied = copy_group(source_database, tmp_path, ddl, inserts)
    expected = {}
    for statement in inserts:
        for key, db, f in re.findall(r"\((\d+), '([^']+)', '([^']+)'\)", statement):
            expected[int(key)] = (float(db), float(f))
    got = dict((k, (db, f)) for k, db, f in copied.duck.sql("SELECT id, db, f FROM t").fetchall())
    assert len(got) == len(expected) > 3000
    for key, (db, f) in expected.items():
        assert struct.pack("<d", got[key][0]) == struct.pack("<d", db), (key, db)
        assert struct.pack("<f", got[key][1]) == struct.pack("<f", f), (key, f)
    columns = {c.name: c for c in copied.columns}
    canon = [mysql_canonical_sql(columns[n], quote_identifier(n)) for n in ("db", "f")]
    with copied.source.connect() as conn:
        mysql_canon = {
            k: (a, b) for k, a, b in run_sql(conn, f"SELECT id, {', '.join(canon)} FROM t")
        }
    duck_canon_sql = [duckdb_canonical_sql(columns[n], duckdb_quote(n)) for n in ("db", "f")]
    duck_canon = {
        k: (a, b)
        for k, a, b in copied.duck.sql(f"SELECT id, {', '.join(duck_canon_sql)} FROM t").fetchall()
    }
    for key, (db, f) in expected.items():
        reference = (exact_decomposition(db), exact_decomposition(f))
        assert mysql_canon[key] == reference, (key, db, f)
        assert duck_canon[key] == reference, (key, db, f)
    copied.duck.close()


def exact_decomposition(value: float) -> str:
    """The canonical text of a double: its IEEE-754 bits as 16 lowercase hex digits."""
    return struct.pack(">d", value).hex()


def test_row_digests_agree(copy):
    source = copy.mysql_digests()
    target = copy.duckdb_digests()
    assert target == source
    assert all(0 <= d < 2**64 for d in source.values())
    assert len(set(source.values())) == len(source)  # distinct rows, distinct digests
    assert copy.duckdb_aggregate() == copy.mysql_aggregate()


INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT"} | {
    f"U{t}" for t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT")
}


def tweak_sql(column: Column, quoted: str) -> str:
    """A DuckDB expression for a value of `column` that differs from `quoted` by the least
    step its type allows (or by a trailing space or NUL byte)."""
    target = duckdb_type(column)
    if target in INTEGER_TYPES:
        return f"CASE WHEN {quoted} > 0 THEN {quoted} - 1 ELSE {quoted} + 1 END"
    if target.startswith("DECIMAL"):
        scale = int(target.rstrip(")").split(",")[1])
        unit = f"CAST('1e-{scale}' AS DOUBLE)" if scale else "1"
        unit = f"CAST({unit} AS {target})"
        return f"CASE WHEN {quoted} > 0 THEN {quoted} - {unit} ELSE {quoted} + {unit} END"
    if target in ("FLOAT", "DOUBLE"):
        zero = f"CAST(0 AS {target})"
        return (
            f"CASE WHEN {quoted} = 0 THEN nextafter({quoted}, CAST(1 AS {target}))"
            f" ELSE nextafter({quoted}, {zero}) END"
        )
    if target == "DATE":
        return f"CASE WHEN {quoted} > DATE '2000-01-01' THEN {quoted} - 1 ELSE {quoted} + 1 END"
    if target in ("TIMESTAMP", "TIMESTAMPTZ"):
        return f"{quoted} - INTERVAL 1 MICROSECOND"
    if target == "INTERVAL":
        return f"{quoted} + INTERVAL 1 MICROSECOND"
    if target == "BLOB":
        return f"{quoted} || '\\x00'::BLOB"
    if target == "JSON":
        return f"CAST(CAST({quoted} AS VARCHAR) || ' ' AS JSON)"
    if target == "UUID":
        one, two = (f"UUID '00000000-0000-0000-0000-00000000000{n}'" for n in (1, 2))
        return f"CASE WHEN {quoted} = {one} THEN {two} ELSE {one} END"
    assert target == "VARCHAR", target
    return f"{quoted} || ' '"


def test_changing_any_value_changes_the_row_digest(copy):
    before = copy.duckdb_digests()
    keys = sorted(before)[:40]  # the doubles group has thousands of rows: the first 40 do
    changed = 0
    for column in copy.columns:
        if column.name in copy.shape.primary_key:
            continue
        quoted = duckdb_quote(column.name)
        for key in keys:
            is_null = copy.duckdb_value(column.name, key) is None
            if is_null:
                new_values = [f"(SELECT any_value({quoted}) FROM t WHERE {quoted} IS NOT NULL)"]
            else:
                new_values = [tweak_sql(column, quoted)] + (["NULL"] if column.nullable else [])
                if duckdb_type(column) == "TIMESTAMP":  # half a second, within the second too
                    new_values.append(f"{quoted} + INTERVAL 500 MILLISECOND")
            for new_value in new_values:
                copy.duck.execute("BEGIN")
                try:
                    copy.duck.execute(f"UPDATE t SET {quoted} = {new_value} WHERE id = {key:d}")
                    after = copy.duckdb_digests(f"id = {key:d}")[key]
                finally:
                    copy.duck.execute("ROLLBACK")
                assert after != before[key], (column.name, key, new_value)
                changed += 1
    assert changed >= len(keys)
    assert copy.duckdb_digests() == before  # every change was rolled back


def test_zero_dates_become_null_on_both_sides(source_database, tmp_path):
    copied = copy_group(
        source_database,
        tmp_path,
        "CREATE TABLE t (id INT PRIMARY KEY, d DATE, dt DATETIME, ts TIMESTAMP NULL DEFAULT NULL)",
        [
            "INSERT INTO t VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00'),"
            " (2, '2024-00-10', '2024-05-00 10:00:00', NULL),"
            " (3, '2024-01-02', '2024-01-02 03:04:05', '2024-01-02 03:04:05')"
        ],
    )
    assert copied.zero_dates == 5
    rows = copied.duck.sql("SELECT id, d, dt, epoch_us(ts) FROM t ORDER BY id").fetchall()
    assert rows == [
        (1, None, None, None),
        (2, None, None, None),
        (3, dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4, 5), 1704164645000000),
    ]
    assert copied.duckdb_digests() == copied.mysql_digests()
    copied.duck.close()


def _column(data_type: str, column_type: str | None = None) -> Column:
    return Column("c", data_type, column_type or data_type, True, None, None, False)


def test_unknown_type_is_a_schema_error_naming_column_and_type():
    with pytest.raises(SchemaError, match=r"'c'.*'vector\(3\)'"):
        duckdb_type(_column("vector", "vector(3)"))
    with pytest.raises(SchemaError, match="'c'"):
        duckdb_wire_sql(_column("vector", "vector(3)"), "`c`")


def test_mysql_json_keeps_its_text_verbatim_in_duckdb(tmp_path):
    """MySQL 8's JSON type (MariaDB reports LONGTEXT) becomes DuckDB JSON, text unchanged."""
    column = _column("json")
    assert duckdb_type(column) == "JSON"
    assert duckdb_wire_sql(column, "`c`") == "CONVERT(`c` USING utf8mb4)"
    text = '{"b":  [1, 2.50, 1e3] , "a" : "\\u00fc"}'
    wire = pa.table({"c": pa.array([text, None], pa.string())})
    duck = duckdb.connect(str(tmp_path / "j.duckdb"))
    duck.execute("CREATE TABLE t (c JSON)")
    duck.register("wire", wire)
    duck.execute(f"INSERT INTO t SELECT {duckdb_load_sql(column, 'c')} FROM wire")
    assert duck.sql("SELECT CAST(c AS VARCHAR) FROM t").fetchall() == [(text,), (None,)]
    canonical = duck.sql(f"SELECT {duckdb_canonical_sql(column, 'c')} FROM t").fetchall()
    assert canonical[0][0] == f"{len(text.encode())}:{text}"  # the text itself, verbatim
    with pytest.raises(duckdb.ConversionException):
        duck.execute("SELECT CAST('{bad' AS JSON)")
    duck.close()


@pytest.mark.parametrize(
    ("column_type", "expected"),
    [
        ("decimal(38,38)", "DECIMAL(38,38)"),
        ("decimal(39,2)", "VARCHAR"),
        ("decimal(65,30) unsigned", "VARCHAR"),
        ("decimal(10,2) unsigned", "DECIMAL(10,2)"),
        ("decimal", "DECIMAL(10,0)"),
    ],
)
def test_decimal_mapping(column_type, expected):
    assert duckdb_type(_column("decimal", column_type)) == expected


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_a_source_read_by_dlts_pyarrow_backend_gives_the_same_copy(
    group, source_database, tmp_path
):
    """A source with a client certificate is read by dlt's pyarrow backend over PyMySQL, which
    infers Arrow types from Python values (BIGINT UNSIGNED max overflows its int64): its columns
    travel as text (`native=False`), and the DuckDB copy is the same as connectorx's."""
    ddl, inserts = GROUPS[group]
    native = copy_group(source_database, tmp_path, ddl, inserts)
    engine = source_database[0]
    wire = [WireColumn.of(c, "duckdb", native=False) for c in native.shape.copied_columns]
    assert not any(w.kind in NATIVE_KINDS for w in wire)
    query = sa.select(*[w.select_expression() for w in wire]).select_from(sa.table("t"))
    cfg = parse_tables_config([{"table": "t", "primary_key": "id"}], "test")[0]
    source = DatabaseSettings(url=engine.url)
    tables = list(table_resource(cfg, wire, query.order_by(sa.text("1")), source, engine, 1000))
    arrays = []
    for position, column in enumerate(wire):
        chunks = pa.concat_tables(tables).column(position).combine_chunks()
        arrays.append(wire_values(chunks, column)[0])
    duck = duckdb.connect(str(tmp_path / "text.duckdb"))
    create_duckdb_table(duck, native.shape)
    load_duckdb_table(
        duck, native.shape.copied_columns, pa.table(arrays, names=[w.column.name for w in wire])
    )
    ordered = "SELECT * FROM t ORDER BY id"
    assert duck.sql(ordered).fetchall() == native.duck.sql(ordered).fetchall()
    duck.close()
    native.duck.close()
