"""The PostgreSQL type mapping, its wire text and the cross-engine row digest, on real servers.

Each fidelity group (`test_fidelity.TYPE_GROUPS`) is created in MariaDB and copied into
PostgreSQL the way the PostgreSQL target copies it (a `pg_type` per column, `pg_wire_sql` text,
COPY csv, zero dates to NULL); then
(a) typed reads from PostgreSQL give the exact source values;
(b) each column's canonical text, each row digest and the table's BIT_XOR agree on both sides;
(c) changing one value of any column on the PostgreSQL side (to its nearest neighbour, or to
    NULL) changes that row's digest, so no column can be left out of it unnoticed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import io
import itertools
import math
import os
import random
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from mysqlsync_dagster.catalog import Column, read_table_shape
from mysqlsync_dagster.db import quote_identifier
from mysqlsync_dagster.errors import SchemaError
from mysqlsync_dagster.targets.postgres.types import (
    fraction_digits,
    pg_type,
    pg_wire_sql,
    type_arguments,
    value_kind,
)
from mysqlsync_dagster.tools.postgres_server import PostgresServer
from mysqlsync_dagster.verify.canonical import (
    mysql_canonical_sql,
    mysql_row_digest_sql,
    postgres_canonical_sql,
    postgres_row_digest_sql,
    unsigned64,
)
from mysqlsync_dagster_tests.harness import ServerPair
from mysqlsync_dagster_tests.test_fidelity import TYPE_GROUPS

pg_quote = postgresql.dialect().identifier_preparer.quote_identifier
UTC = dt.UTC
_ZERO_DATE = re.compile(r"^(0000-00-00|\d{4}-00-\d{2}|\d{4}-\d{2}-00)")
_counter = itertools.count(1)


# -- the mapping alone -----------------------------------------------------------------------
def column(data_type: str, column_type: str, name: str = "c") -> Column:
    return Column(name, data_type, column_type, True, None, None, False)


@pytest.mark.parametrize(
    ("data_type", "column_type", "expected"),
    [
        ("tinyint", "tinyint(4)", "smallint"),
        ("tinyint", "tinyint(3) unsigned", "smallint"),
        ("tinyint", "tinyint(1)", "smallint"),
        ("smallint", "smallint(6)", "smallint"),
        ("smallint", "smallint(5) unsigned", "integer"),
        ("smallint", "smallint(5) unsigned zerofill", "integer"),
        ("year", "year(4)", "smallint"),
        ("mediumint", "mediumint(9)", "integer"),
        ("mediumint", "mediumint(8) unsigned", "integer"),
        ("int", "int(11)", "integer"),
        ("int", "int", "integer"),  # MySQL 8 prints no display width
        ("int", "int(10) unsigned", "bigint"),
        ("bigint", "bigint(20)", "bigint"),
        ("bigint", "bigint(20) unsigned", "numeric(20,0)"),
        ("decimal", "decimal(65,30)", "numeric(65,30)"),
        ("decimal", "decimal(12,2) unsigned", "numeric(12,2)"),
        ("decimal", "decimal(10,0)", "numeric(10,0)"),
        ("float", "float", "real"),
        ("float", "float(7,3)", "real"),
        ("double", "double", "double precision"),
        ("double", "double(10,2) unsigned", "double precision"),
        ("bit", "bit(1)", "bit(1)"),
        ("bit", "bit(64)", "bit(64)"),
        ("date", "date", "date"),
        ("datetime", "datetime", "timestamp(0) without time zone"),
        ("datetime", "datetime(3)", "timestamp(3) without time zone"),
        ("timestamp", "timestamp(6)", "timestamp(6) with time zone"),
        ("time", "time", "interval(0)"),
        ("time", "time(6)", "interval(6)"),
        ("char", "char(10)", "varchar(10)"),
        ("char", "char(0)", "varchar(1)"),
        ("varchar", "varchar(300)", "varchar(300)"),
        ("tinytext", "tinytext", "text"),
        ("longtext", "longtext", "text"),
        ("enum", "enum('a','b c')", "text"),
        ("set", "set('x','y')", "text"),
        ("json", "json", "json"),
        ("binary", "binary(4)", "bytea"),
        ("varbinary", "varbinary(300)", "bytea"),
        ("longblob", "longblob", "bytea"),
        ("point", "point", "bytea"),
        ("geomcollection", "geomcollection", "bytea"),
        ("geometrycollection", "geometrycollection", "bytea"),
        ("uuid", "uuid", "uuid"),
        ("inet6", "inet6", "varchar(39)"),
    ],
)
def test_pg_type(data_type: str, column_type: str, expected: str) -> None:
    assert pg_type(column(data_type, column_type)) == expected


@pytest.mark.parametrize("data_type", ["vector", "mystery"])
def test_unknown_types_are_refused_by_name(data_type: str) -> None:
    with pytest.raises(SchemaError, match=rf"'addr'.*'{data_type}\(16\)'"):
        pg_type(column(data_type, f"{data_type}(16)", name="addr"))
    with pytest.raises(SchemaError):
        pg_wire_sql(column(data_type, data_type), "`addr`")


_SAMPLE_COLUMNS = [
    ("int", "int(11)"),
    ("year", "year(4)"),
    ("decimal", "decimal(5,2)"),
    ("float", "float"),
    ("double", "double"),
    ("bit", "bit(3)"),
    ("date", "date"),
    ("datetime", "datetime(2)"),
    ("timestamp", "timestamp"),
    ("time", "time(1)"),
    ("varchar", "varchar(3)"),
    ("json", "json"),
    ("blob", "blob"),
]


def test_no_percent_sign_in_generated_sql() -> None:
    """PyMySQL and psycopg2 %-format statements: a '%' in the SQL would need escaping."""
    columns = [column(*spec) for spec in _SAMPLE_COLUMNS]
    sql = [pg_wire_sql(c, "`c`") for c in columns]
    sql += [mysql_row_digest_sql(columns, quote_identifier)]
    sql += [postgres_row_digest_sql(columns, pg_quote)]
    assert not [s for s in sql if "%" in s]


# -- a table copied from MariaDB into PostgreSQL ---------------------------------------------
@dataclass
class Copy:
    """A MariaDB database and a PostgreSQL schema for one test; `t` is copied between them."""

    mysql: sa.Engine  # sessions in UTC, as the sync's
    mysql_local: sa.Engine  # sessions in the server's own zone (+07:00 under the harness)
    database: str
    pg: Any  # a psycopg2 connection, search_path = the test's schema, TimeZone not UTC
    columns: list[Column] | None = None

    def source_exec(self, *statements: str) -> None:
        with self.mysql.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def pg_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.pg.cursor() as cur:
            cur.execute(sql, params)
            return [tuple(r) for r in cur.fetchall()]

    def copy(self, table: str = "t") -> list[Column]:
        """Create `table` in PostgreSQL and copy its rows the PostgreSQL target's way."""
        with self.mysql.connect() as conn:
            shape = read_table_shape(conn, self.database, table)
            assert shape is not None
            columns = shape.copied_columns
            select = ", ".join(pg_wire_sql(c, quote_identifier(c.name)) for c in columns)
            rows = conn.exec_driver_sql(
                f"SELECT {select} FROM {quote_identifier(table)} ORDER BY 1"
            ).all()
        definitions = [
            f"{pg_quote(c.name)} {pg_type(c)}{'' if c.nullable else ' NOT NULL'}" for c in columns
        ]
        keys = ", ".join(pg_quote(k) for k in shape.primary_key)
        dates = [value_kind(c) in ("date", "datetime", "timestamp") for c in columns]
        lines = []
        for row in rows:
            values = []
            for value, is_date in zip(row, dates, strict=True):
                assert value is None or isinstance(value, str), value  # text, never bytes
                if is_date and value is not None and _ZERO_DATE.match(value):
                    value = None  # the pipeline's zero-date rule
                values.append(value)
            lines.append(csv_line(values))
        names = ", ".join(pg_quote(c.name) for c in columns)
        with self.pg.cursor() as cur:
            cur.execute(
                f"CREATE TABLE {pg_quote(table)} ({', '.join(definitions)}, PRIMARY KEY ({keys}))"
            )
            cur.copy_expert(
                f"COPY {pg_quote(table)} ({names}) FROM STDIN (FORMAT csv)",
                io.StringIO("".join(lines)),
            )
        self.pg.commit()
        self.columns = columns
        return columns

    # digests and canonical texts, keyed by id
    def mysql_digests(self, engine: sa.Engine | None = None) -> dict[int, int]:
        digest = mysql_row_digest_sql(self.columns, quote_identifier)
        with (engine or self.mysql).connect() as conn:
            return dict(conn.exec_driver_sql(f"SELECT id, {digest} FROM t").all())

    def pg_digests(self) -> dict[int, int]:
        digest = postgres_row_digest_sql(self.columns, pg_quote)
        return {k: unsigned64(v) for k, v in self.pg_rows(f"SELECT id, {digest} FROM t")}

    def mysql_aggregate(self) -> tuple[int, int]:
        digest = mysql_row_digest_sql(self.columns, quote_identifier)
        with self.mysql.connect() as conn:
            count, xor = conn.exec_driver_sql(f"SELECT COUNT(*), BIT_XOR({digest}) FROM t").one()
        return count, unsigned64(xor)

    def pg_aggregate(self) -> tuple[int, int]:
        digest = postgres_row_digest_sql(self.columns, pg_quote)
        [(count, xor)] = self.pg_rows(f"SELECT count(*), coalesce(bit_xor({digest}), 0) FROM t")
        return count, unsigned64(xor)

    def mysql_canonical(self) -> list[tuple[Any, ...]]:
        texts = ", ".join(mysql_canonical_sql(c, quote_identifier(c.name)) for c in self.columns)
        with self.mysql.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(f"SELECT {texts} FROM t ORDER BY t.id")]

    def pg_canonical(self) -> list[tuple[Any, ...]]:
        texts = ", ".join(postgres_canonical_sql(c, pg_quote(c.name)) for c in self.columns)
        return self.pg_rows(f"SELECT {texts} FROM t ORDER BY t.id")


def csv_line(values: Sequence[str | None]) -> str:
    """One CSV record for COPY: NULL an unquoted empty field, every value quoted."""
    fields = ("" if v is None else '"' + v.replace('"', '""') + '"' for v in values)
    return ",".join(fields) + "\n"


@pytest.fixture
def copy_env(mariadb_servers: ServerPair, postgres_server: PostgresServer) -> Iterator[Copy]:
    n = next(_counter)
    database = schema = f"canon_{os.getpid()}_{n}"
    admin = mariadb_servers.source.engine()
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    local = sa.create_engine(
        mariadb_servers.source.url.set(database=database), connect_args={"charset": "utf8mb4"}
    )
    pg = psycopg2.connect(postgres_server.url())
    with pg.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"SET search_path TO {schema}")
        # a zone with a half-hour offset: nothing may depend on the PostgreSQL session's zone
        cur.execute("SET TimeZone TO 'America/St_Johns'")
    pg.commit()
    env = Copy(mariadb_servers.source.engine(database), local, database, pg)
    try:
        yield env
    finally:
        pg.rollback()
        with contextlib.suppress(psycopg2.Error), pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        pg.commit()
        pg.close()
        env.mysql.dispose()
        local.dispose()
        with contextlib.suppress(sa.exc.SQLAlchemyError), admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")
        admin.dispose()


def bits64(value: float) -> str:
    return struct.pack(">d", value).hex()


def as_float32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def point(srid: int, x: float, y: float) -> bytes:
    """MySQL's internal geometry: a 4-byte little-endian SRID, then little-endian WKB."""
    return struct.pack("<IBIdd", srid, 1, 1, x, y)


# more than the fidelity groups: display padding, and text in other character sets
GROUPS = {
    **TYPE_GROUPS,
    "zerofill": (
        """CREATE TABLE t (id INT PRIMARY KEY, i INT(8) ZEROFILL, bu BIGINT UNSIGNED ZEROFILL,
            d DECIMAL(12,2) ZEROFILL, f FLOAT(7,3) ZEROFILL, db DOUBLE ZEROFILL,
            si SMALLINT(3) ZEROFILL)""",
        [
            "INSERT INTO t VALUES (1, 42, 18446744073709551615, 0.01, 1.5, 5e-324, 7)",
            "INSERT INTO t VALUES (2, 0, 0, 9999999999.99, 0, 123456789.12345678, 65535)",
        ],
    ),
    "charsets": (
        """CREATE TABLE t (id INT PRIMARY KEY, l1 CHAR(5) CHARACTER SET latin1,
            u3 VARCHAR(10) CHARACTER SET utf8mb3, a TEXT CHARACTER SET ascii,
            e ENUM('é', 'ü') CHARACTER SET latin1, s SET('ä', 'b') CHARACTER SET latin1)""",
        [
            "INSERT INTO t VALUES (1, 'é ', 'ß€', 'plain', 'ü', 'ä,b')",
            "INSERT INTO t VALUES (2, 'ÿ', '', '', 'é', '')",
        ],
    ),
}

# (id, PostgreSQL expression, the value psycopg2 reads) per group: the exact source values
EXPECTED: dict[str, list[tuple[int, str, Any]]] = {
    "integers": [
        (1, "ti", -128),
        (1, "tiu", 255),
        (1, "si", -32768),
        (1, "siu", 65535),
        (1, "mi", -8388608),
        (1, "miu", 16777215),
        (1, "i", -2147483648),
        (1, "iu", 4294967295),
        (1, "bi", -9223372036854775808),
        (2, "bi", 9223372036854775807),
        (1, "biu", Decimal("18446744073709551615")),
        (1, "b1", 1),
        (1, "yr", 2155),
        (2, "yr", 1901),
        (3, "yr", 0),
        (3, "biu", None),
    ],
    "numeric": [
        (1, "d", Decimal("99999999999999999999999999999999999.999999999999999999999999999999")),
        (2, "d", Decimal("-0.000000000000000000000000000001")),
        (1, "d2", Decimal("0.01")),
        (2, "d2", Decimal("9999999999.99")),
        (1, "encode(float8send(f::float8), 'hex')", bits64(as_float32(3.40282e38))),
        (2, "encode(float8send(f::float8), 'hex')", bits64(as_float32(1.17549e-38))),
        (3, "encode(float8send(f::float8), 'hex')", bits64(as_float32(0.1))),
        (4, "encode(float8send(f::float8), 'hex')", bits64(-16777216.0)),
        (1, "encode(float8send(fd::float8), 'hex')", bits64(as_float32(1234.567))),
        (2, "encode(float8send(fd::float8), 'hex')", bits64(as_float32(-0.001))),
        (1, "encode(float8send(db), 'hex')", bits64(1.7976931348623157e308)),
        (2, "encode(float8send(db), 'hex')", bits64(2.2250738585072014e-308)),
        (3, "encode(float8send(db), 'hex')", bits64(0.1)),
        (4, "encode(float8send(db), 'hex')", bits64(-5e-324)),
        (1, "b1", "1"),
        (1, "b64", "1" * 64),
        (4, "b64", "1" + "0" * 63),
        (2, "b64", "0" * 64),
        (1, "b5", "10101"),
        (2, "b5", "00000"),
    ],
    "temporal": [
        (1, "d", dt.date(1000, 1, 1)),
        (2, "d", dt.date(9999, 12, 31)),
        (1, "dt0", dt.datetime(1000, 1, 1)),
        (1, "dt3", dt.datetime(2024, 2, 29, 23, 59, 59, 999000)),
        (2, "dt3", dt.datetime(2024, 10, 27, 2, 30, 0, 500000)),
        (1, "dt6", dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
        (2, "dt6", dt.datetime(2024, 1, 1, 0, 0, 0, 1)),
        (1, "ts", dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (1, "ts6", dt.datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC)),
        (2, "ts", dt.datetime(2024, 3, 10, 2, 30, tzinfo=UTC)),
        (2, "ts6", dt.datetime(2024, 6, 30, 12, 0, 0, 123456, tzinfo=UTC)),
        (1, "tm", -dt.timedelta(hours=838, minutes=59, seconds=59)),
        (1, "extract(epoch FROM tm)", Decimal("-3020399")),
        (1, "tm6", dt.timedelta(hours=838, minutes=59, seconds=59)),
        (2, "tm", dt.timedelta(hours=100)),
        (2, "tm6", dt.timedelta(microseconds=-1)),
        (3, "tm", dt.timedelta(0)),
        (1, "y", 1901),
        (3, "y", None),
    ],
    "strings": [
        (1, "c", "abc"),
        (4, "c", "trail"),  # MySQL strips CHAR's trailing spaces
        (2, "c", ""),
        (3, "c", None),
        (1, "vc", '😀 4-byte 𝄞 and "quotes", commas, \\ backslash'),
        (4, "vc", "trailing space "),
        (3, "vc", "NULL"),
        (1, "tx", "line1\nline2\r\nline3\ttab"),
        (1, "lt", "long ✓ " * 20000),
        (3, "lt", "\\N"),
        (1, "lat", "Ångström"),
        (1, "e", "dé"),
        (2, "e", ""),
        (1, "s", "x,z"),
        (1, "j::text", '{"k": [1, 2.5, "ü", null], "n": {"a": true}}'),
        (4, "j::text", '"just a string"'),
    ],
    "binary": [
        (1, "b", b"\x00\xff\x00\x00"),
        (2, "b", b"ab\x00\x00"),  # BINARY(4) pads with NUL
        (1, "vb", b"\x00"),
        (2, "vb", b""),
        (1, "bl", bytes.fromhex("FF00FE0D0A22272C5C")),
        (1, "lb", b"\xff\x00" * 300000),
        (1, "tb", b""),
        (3, "tb", b"NULL"),
        (3, "bl", None),
    ],
    "spatial": [
        (1, "g", point(4326, 1, 2)),
        (1, "p", point(0, 1.5, -2.25)),
        (2, "p", point(0, 0, 0)),
        (2, "g", None),
    ],
    "zerofill": [
        (1, "i", 42),
        (1, "bu", Decimal("18446744073709551615")),
        (1, "d", Decimal("0.01")),
        (1, "encode(float8send(f::float8), 'hex')", bits64(1.5)),
        (1, "encode(float8send(db), 'hex')", bits64(5e-324)),
        (2, "encode(float8send(db), 'hex')", bits64(123456789.12345678)),
        (1, "si", 7),
        (2, "si", 65535),
    ],
    "charsets": [
        (1, "l1", "é"),
        (1, "u3", "ß€"),
        (1, "e", "ü"),
        (1, "s", "ä,b"),
        (2, "l1", "ÿ"),
    ],
}


def typed(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


def assert_digests_agree(env: Copy) -> dict[int, int]:
    """(b): canonical texts, row digests and the table aggregate are equal on both sides."""
    names = [c.name for c in env.columns]
    for mysql_row, pg_row in zip(env.mysql_canonical(), env.pg_canonical(), strict=True):
        differing = {
            name: (m, p) for name, m, p in zip(names, mysql_row, pg_row, strict=True) if m != p
        }
        assert not differing, f"canonical texts differ in row {mysql_row[0]}: {differing}"
    digests = env.mysql_digests()
    assert digests == env.pg_digests()
    assert digests == env.mysql_digests(env.mysql_local)  # whatever the session's time zone
    assert len(set(digests.values())) == len(digests)
    count, xor = env.mysql_aggregate()
    assert (count, xor) == env.pg_aggregate()
    expected_xor = 0
    for digest in digests.values():
        expected_xor ^= digest
    assert (count, xor) == (len(digests), expected_xor)
    return digests


@pytest.mark.parametrize("group", list(GROUPS))
def test_values_copy_exactly_and_digests_agree(copy_env: Copy, group: str) -> None:
    ddl, inserts = GROUPS[group]
    copy_env.source_exec(ddl, *inserts)
    copy_env.copy()
    # (a) the exact values
    for key, expression, expected in EXPECTED[group]:
        [(value,)] = copy_env.pg_rows(f"SELECT {expression} FROM t WHERE id = %s", (key,))
        assert typed(value) == expected, (key, expression)
    [(rows,)] = copy_env.pg_rows("SELECT count(*) FROM t")
    assert rows == len(inserts)
    # (b) the digests
    assert_digests_agree(copy_env)


@pytest.mark.parametrize("group", list(GROUPS))
def test_changing_any_one_value_changes_the_row_digest(copy_env: Copy, group: str) -> None:
    """(c): a digest that left a column out, or saw a neighbouring value as the same, fails."""
    ddl, inserts = GROUPS[group]
    copy_env.source_exec(ddl, *inserts)
    columns = copy_env.copy()
    original = assert_digests_agree(copy_env)
    unnoticed = []
    for col in columns:
        if col.name == "id":
            continue
        name = pg_quote(col.name)
        read = f"{name}::float8" if value_kind(col) == "float" else name
        rows = copy_env.pg_rows(f"SELECT id, {read} FROM t WHERE {name} IS NOT NULL ORDER BY id")
        assert rows, f"{group}.{col.name}: no value to change"
        for key, value in rows:
            changes = [neighbour(col, typed(value))] + ([None] if col.nullable else [])
            for changed in changes:
                with copy_env.pg.cursor() as cur:
                    cur.execute(f"UPDATE t SET {name} = %s WHERE id = %s", (changed, key))
                    assert cur.rowcount == 1
                digest = copy_env.pg_digests()[key]
                copy_env.pg.rollback()
                if digest == original[key]:
                    unnoticed.append((col.name, key, value, changed))
    assert not unnoticed, f"changes the row digest did not see: {unnoticed}"
    assert copy_env.pg_digests() == original  # every change was undone


def neighbour(col: Column, value: Any) -> Any:
    """The nearest different value of the column's PostgreSQL type (a parameter for psycopg2)."""
    kind = value_kind(col)
    if kind in ("integer", "year"):
        return value - 1 if value > 0 else value + 1
    if kind == "decimal":
        _, scale = type_arguments(col)
        unit = Decimal(1).scaleb(-(scale or 0))
        exact = decimal.Context(prec=100)  # the default context keeps 28 digits
        return exact.subtract(value, unit) if value > 0 else exact.add(value, unit)
    if kind == "double":
        return math.nextafter(value, 0) if value else 5e-324
    if kind == "float":  # the next float32 toward zero (or the smallest one)
        pattern = struct.unpack(">I", struct.pack(">f", value))[0]
        return struct.unpack(">f", struct.pack(">I", pattern - 1 if value else 1))[0]
    if kind == "bit":
        return value[:-1] + ("1" if value[-1] == "0" else "0")
    if kind == "date":
        return value - dt.timedelta(days=1)
    if kind in ("datetime", "timestamp", "time"):
        return value - dt.timedelta(microseconds=10 ** (6 - fraction_digits(col)))
    if kind in ("text", "json"):
        return value[:-1] + ("y" if value.endswith("x") else "x") if value else "x"
    # binary and spatial: the last byte changed
    return psycopg2.Binary(value[:-1] + bytes([value[-1] ^ 1]) if value else b"\x00")


def test_zero_dates_are_null_on_both_sides(copy_env: Copy) -> None:
    with copy_env.mysql.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(
            "CREATE TABLE t (id INT PRIMARY KEY, d DATE, dt DATETIME(2), ts TIMESTAMP NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO t VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00'),"
            " (2, '2024-00-10', '2024-05-00 10:00:00.5', NULL),"
            " (3, '2024-01-02', '2024-01-02 03:04:05.25', '2024-01-02 03:04:05')"
        )
    copy_env.copy()
    assert copy_env.pg_rows("SELECT d, dt, ts FROM t ORDER BY id") == [
        (None, None, None),
        (None, None, None),
        (
            dt.date(2024, 1, 2),
            dt.datetime(2024, 1, 2, 3, 4, 5, 250000),
            dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
    ]
    assert_digests_agree(copy_env)


def test_an_empty_table_digests_to_zero_on_both_sides(copy_env: Copy) -> None:
    """PostgreSQL's bit_xor of no rows is NULL, MySQL's BIT_XOR is 0: coalesce on PostgreSQL."""
    copy_env.source_exec("CREATE TABLE t (id INT PRIMARY KEY, x DOUBLE)")
    copy_env.copy()
    assert copy_env.mysql_aggregate() == copy_env.pg_aggregate() == (0, 0)


def special_doubles() -> list[float]:
    """Powers of two with their neighbours, the extremes and classic decimal fractions."""
    values = [0.0, 0.1, -0.1, 1 / 3, 1e15, 1e-5, 1e16, 123456789.125, -16777217.0]
    values += [1.7976931348623157e308, -1.7976931348623157e308, 2.2250738585072014e-308]
    values += [2.2250738585072009e-308, 5e-324, -5e-324, 3.40282e38, 1.17549e-38]
    for exponent in range(-1074, 1024, 7):
        power = 2.0**exponent
        values += [power, -power, math.nextafter(power, 0), math.nextafter(power, math.inf)]
    return values


def random_doubles(rng: random.Random, count: int) -> list[float]:
    values: list[float] = []
    while len(values) < count:
        value = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0]
        if math.isfinite(value):
            values.append(value)
    return values


def random_floats(rng: random.Random, count: int) -> list[float]:
    values: list[float] = []
    while len(values) < count:
        value = struct.unpack(">f", rng.getrandbits(32).to_bytes(4, "big"))[0]
        if math.isfinite(value):
            values.append(value)
    return values


def test_random_doubles_and_floats_copy_exactly_and_digest_alike(copy_env: Copy) -> None:
    rng = random.Random(20261)
    doubles = special_doubles() + random_doubles(rng, 3000)
    floats = [as_float32(v) for v in special_doubles() if abs(v) < 3.4e38]
    floats += random_floats(rng, len(doubles) - len(floats))
    floats += [as_float32(v) for v in (1e-45, -1e-45, 1.1754942e-38, 3.4028234663852886e38)]
    doubles += [1.0] * (len(floats) - len(doubles))
    # MariaDB stores -0 as 0 (and prints it as '0'), so that is what arrives
    doubles, floats = [v or 0.0 for v in doubles], [v or 0.0 for v in floats]
    copy_env.source_exec("CREATE TABLE t (id INT PRIMARY KEY, x DOUBLE, f FLOAT)")
    pairs = list(zip(doubles, floats, strict=True))
    for start in range(0, len(pairs), 1000):
        values = ", ".join(
            f"({start + i}, {x!r}, {f!r})" for i, (x, f) in enumerate(pairs[start : start + 1000])
        )
        copy_env.source_exec(f"INSERT INTO t VALUES {values}")
    copy_env.copy()
    stored = copy_env.pg_rows(
        "SELECT encode(float8send(x), 'hex'), encode(float8send(f::float8), 'hex') FROM t"
        " ORDER BY id"
    )
    expected = [(bits64(x), bits64(f)) for x, f in pairs]
    wrong = [(e, s) for e, s in zip(expected, stored, strict=True) if e != s]
    assert not wrong, f"{len(wrong)} values changed, e.g. {wrong[:5]}"
    # the MySQL side computes the same bits without a bits function
    assert [tuple(r[1:]) for r in copy_env.mysql_canonical()] == expected
    assert_digests_agree(copy_env)


def test_digest_of_a_large_blob_hashes_its_bytes(copy_env: Copy) -> None:
    """The BLOB's canonical text is the MD5 of its raw bytes on both sides."""
    copy_env.source_exec(
        "CREATE TABLE t (id INT PRIMARY KEY, b LONGBLOB)",
        "INSERT INTO t VALUES (1, REPEAT(0xFF00, 300000))",
    )
    copy_env.copy()
    expected = hashlib.md5(b"\xff\x00" * 300000).hexdigest()
    assert [r[1] for r in copy_env.mysql_canonical()] == [expected]
    assert [r[1] for r in copy_env.pg_canonical()] == [expected]
