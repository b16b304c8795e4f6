"""Every MySQL/MariaDB column type round-trips exactly, and the target mirrors the source's DDL."""

import pytest
import sqlalchemy as sa

from mysqlsync_dagster_tests.harness import column_types, materialization_metadata

TYPE_GROUPS = {
    "integers": (
        """CREATE TABLE t (id INT PRIMARY KEY,
            ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
            mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
            bi BIGINT, biu BIGINT UNSIGNED, b1 TINYINT(1), yr YEAR)""",
        [
            "INSERT INTO t VALUES (1, -128, 255, -32768, 65535, -8388608, 16777215,"
            " -2147483648, 4294967295, -9223372036854775808, 18446744073709551615, 1, 2155)",
            "INSERT INTO t VALUES (2, 127, 0, 32767, 0, 8388607, 0, 2147483647, 0,"
            " 9223372036854775807, 0, 0, 1901)",
            "INSERT INTO t VALUES (3, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0)",
        ],
    ),
    "numeric": (
        """CREATE TABLE t (id INT PRIMARY KEY, d DECIMAL(65,30), d2 DECIMAL(12,2) UNSIGNED,
            f FLOAT, fd FLOAT(7,3), db DOUBLE, b1 BIT(1), b64 BIT(64), b5 BIT(5))""",
        [
            "INSERT INTO t VALUES (1, '99999999999999999999999999999999999.999999999999999999999999999999',"
            " 0.01, 3.40282e38, 1234.567, 1.7976931348623157e308, b'1',"
            " b'1111111111111111111111111111111111111111111111111111111111111111', b'10101')",
            "INSERT INTO t VALUES (2, '-0.000000000000000000000000000001', 9999999999.99,"
            " 1.17549e-38, -0.001, 2.2250738585072014e-308, b'0', b'0', b'0')",
            "INSERT INTO t VALUES (3, 0, 0, 0.1, 0, 0.1, NULL, NULL, NULL)",
            "INSERT INTO t VALUES (4, NULL, NULL, -16777217, NULL, -4.9e-324, NULL,"
            " b'1000000000000000000000000000000000000000000000000000000000000000', NULL)",
        ],
    ),
    "temporal": (
        """CREATE TABLE t (id INT PRIMARY KEY, d DATE, dt0 DATETIME, dt3 DATETIME(3),
            dt6 DATETIME(6), ts TIMESTAMP NULL DEFAULT NULL, ts6 TIMESTAMP(6) NULL DEFAULT NULL,
            tm TIME, tm6 TIME(6), y YEAR)""",
        [
            "INSERT INTO t VALUES (1, '1000-01-01', '1000-01-01 00:00:00', '2024-02-29 23:59:59.999',"
            " '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01', '2038-01-19 03:14:07.999999',"
            " '-838:59:59', '838:59:59.000000', 1901)",
            "INSERT INTO t VALUES (2, '9999-12-31', '2024-03-31 02:30:00', '2024-10-27 02:30:00.5',"
            " '2024-01-01 00:00:00.000001', '2024-03-10 02:30:00', '2024-06-30 12:00:00.123456',"
            " '100:00:00', '-00:00:00.000001', 2024)",
            "INSERT INTO t VALUES (3, NULL, NULL, NULL, NULL, NULL, NULL, '00:00:00', NULL, NULL)",
        ],
    ),
    "strings": (
        """CREATE TABLE t (id INT PRIMARY KEY, c CHAR(10), vc VARCHAR(300),
            tx TEXT, lt LONGTEXT, lat VARCHAR(20) CHARACTER SET latin1 COLLATE latin1_swedish_ci,
            bin_coll VARCHAR(20) COLLATE utf8mb4_bin, e ENUM('a', 'b c', 'dé', ''),
            s SET('x', 'y', 'z'), j JSON) DEFAULT CHARSET=utf8mb4""",
        [
            "INSERT INTO t VALUES (1, 'abc', '😀 4-byte 𝄞 and \"quotes\", commas, \\\\ backslash',"
            " 'line1\\nline2\\r\\nline3\\ttab', REPEAT('long ✓ ', 20000), 'Ångström',"
            " 'CaseSensitive', 'dé', 'x,z', '{\"k\": [1, 2.5, \"ü\", null], \"n\": {\"a\": true}}')",
            "INSERT INTO t VALUES (2, '', '', '', '', '', '', '', '', '[]')",
            "INSERT INTO t VALUES (3, NULL, 'NULL', 'null', '\\\\N', NULL, NULL, NULL, NULL, NULL)",
            "INSERT INTO t VALUES (4, 'trail  ', 'trailing space ', '\"\",\"', ',', 'x', 'y',"
            " 'b c', 'x,y,z', '\"just a string\"')",
        ],
    ),
    "binary": (
        """CREATE TABLE t (id INT PRIMARY KEY, b BINARY(4), vb VARBINARY(300), bl BLOB,
            lb LONGBLOB, tb TINYBLOB)""",
        [
            "INSERT INTO t VALUES (1, 0x00FF0000, 0x00, 0xFF00FE0D0A22272C5C, REPEAT(0xFF00, 300000), X'')",
            "INSERT INTO t VALUES (2, 'ab', '', '', '', NULL)",
            "INSERT INTO t VALUES (3, NULL, NULL, NULL, NULL, 0x4E554C4C)",
        ],
    ),
    "spatial": (
        """CREATE TABLE t (id INT PRIMARY KEY, g GEOMETRY, p POINT NOT NULL,
            ls LINESTRING, pg POLYGON, mp MULTIPOINT, gc GEOMETRYCOLLECTION, SPATIAL KEY (p))""",
        [
            "INSERT INTO t VALUES (1, ST_GeomFromText('POINT(1 2)', 4326), POINT(1.5, -2.25),"
            " ST_GeomFromText('LINESTRING(0 0, 1 1, 2 0)'),"
            " ST_GeomFromText('POLYGON((0 0, 4 0, 4 4, 0 4, 0 0), (1 1, 2 1, 2 2, 1 1))'),"
            " ST_GeomFromText('MULTIPOINT(1 1, 2 2)'),"
            " ST_GeomFromText('GEOMETRYCOLLECTION(POINT(1 1), LINESTRING(0 0, 1 1))'))",
            "INSERT INTO t VALUES (2, NULL, POINT(0, 0), NULL, NULL, NULL, NULL)",
        ],
    ),
}


@pytest.mark.parametrize("mode", ["direct", "staging"])
@pytest.mark.parametrize("group", list(TYPE_GROUPS))
def test_values_and_types_round_trip(sync_env, group, mode):
    ddl, inserts = TYPE_GROUPS[group]
    sync_env.source_exec(ddl, *inserts)
    table = {"table": "t", "primary_key": "id", "mode": mode}
    result = sync_env.sync([table])
    assert result.success
    assert column_types(sync_env.target, "t") == column_types(sync_env.source, "t")
    source_rows = sync_env.source_rows("t")
    assert len(source_rows) == len(inserts)
    assert sync_env.target_rows("t") == source_rows
    # and again through the incremental-free full refresh: still identical
    assert sync_env.sync([table]).success
    assert sync_env.target_rows("t") == source_rows
    # and through the incremental path (stage table + keyed merge), on the key as modifier
    incremental = {**table, "modifier": "id"}
    assert sync_env.sync([incremental]).success  # first: swap, cursor = MAX(id)
    assert sync_env.sync([incremental]).success  # then: upsert of the last row
    assert sync_env.target_rows("t") == source_rows


def test_target_ddl_mirrors_keys_indexes_charset_and_generated_columns(sync_env):
    sync_env.source_exec(
        """CREATE TABLE `order lines` (
            tenant SMALLINT UNSIGNED NOT NULL,
            id BIGINT NOT NULL,
            sku VARCHAR(40) COLLATE utf8mb4_unicode_ci NOT NULL DEFAULT 'none',
            qty INT NOT NULL DEFAULT 1,
            price DECIMAL(10,2) NOT NULL,
            total DECIMAL(12,2) AS (qty * price) STORED,
            label VARCHAR(80) AS (CONCAT(sku, ' x', qty)) VIRTUAL,
            note VARCHAR(100) CHARACTER SET latin1 NULL COMMENT 'free text',
            updated_at DATETIME(3) NOT NULL,
            PRIMARY KEY (tenant, id),
            UNIQUE KEY uq_sku (tenant, sku),
            KEY ix_updated (updated_at),
            KEY ix_total (total),
            FULLTEXT KEY ft_note (note)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci COMMENT='lines'""",
        "INSERT INTO `order lines` (tenant, id, sku, qty, price, note, updated_at) VALUES"
        " (1, 1, 'A', 2, 9.99, 'café', '2024-01-01 00:00:00.001'),"
        " (1, 2, 'B', 1, 0.01, NULL, '2024-01-01 00:00:00.002'),"
        " (2, 1, 'A', 5, 100, 'x', '2024-01-01 00:00:00.003')",
    )
    result = sync_env.sync(
        [{"table": "order lines", "primary_key": ["tenant", "id"], "modifier": "updated_at"}]
    )
    assert result.success
    with sync_env.source.connect() as s, sync_env.target.connect() as t:
        source_ddl = s.exec_driver_sql("SHOW CREATE TABLE `order lines`").one()[1]
        target_ddl = t.exec_driver_sql("SHOW CREATE TABLE `order lines`").one()[1]
        target_total = t.exec_driver_sql(
            "SELECT tenant, id, total, label FROM `order lines` ORDER BY tenant, id"
        ).all()
    # the target's DDL is the source's plus the two dlt columns, line for line
    expected = source_ddl.replace(
        "  PRIMARY KEY",
        "  `_dlt_load_id` varchar(64) CHARACTER SET ascii COLLATE ascii_bin DEFAULT NULL,\n"
        "  `_dlt_id` varchar(64) CHARACTER SET ascii COLLATE ascii_bin DEFAULT NULL,\n"
        "  PRIMARY KEY",
    )
    assert target_ddl == expected
    assert [tuple(r) for r in target_total] == [
        (1, 1, sa.Numeric().python_type("19.98"), "A x2"),
        (1, 2, sa.Numeric().python_type("0.01"), "B x1"),
        (2, 1, sa.Numeric().python_type("500.00"), "A x5"),
    ]
    assert sync_env.target_rows("order lines") == sync_env.source_rows("order lines")


def test_foreign_keys_are_left_out(sync_env):
    sync_env.source_exec(
        "CREATE TABLE parent (id INT PRIMARY KEY)",
        "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT,"
        " CONSTRAINT fk_parent FOREIGN KEY (parent_id) REFERENCES parent (id))",
        "INSERT INTO parent VALUES (1)",
        "INSERT INTO child VALUES (10, 1)",
    )
    assert sync_env.sync([{"table": "child", "primary_key": "id"}]).success
    with sync_env.target.connect() as t:
        ddl = t.exec_driver_sql("SHOW CREATE TABLE child").one()[1]
    assert "FOREIGN KEY" not in ddl
    assert "KEY `fk_parent` (`parent_id`)" in ddl  # the supporting index stays
    assert sync_env.target_rows("child") == [(10, 1)]


def test_zero_dates_become_null_and_are_counted(sync_env):
    sync_env.source_exec(
        "SET SESSION sql_mode = ''",
        "CREATE TABLE t (id INT PRIMARY KEY, d DATE, dt DATETIME, ts TIMESTAMP NULL DEFAULT NULL)",
    )
    with sync_env.source.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(
            "INSERT INTO t VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00'),"
            " (2, '2024-00-10', '2024-05-00 10:00:00', NULL),"
            " (3, '2024-01-02', '2024-01-02 03:04:05', '2024-01-02 03:04:05')"
        )
    result = sync_env.sync([{"table": "t", "primary_key": "id"}])
    assert result.success
    [mat] = result.asset_materializations_for_node("sync_t")
    assert mat.metadata["zero_dates_to_null"].value == 5
    with sync_env.target.connect() as t:
        rows = t.exec_driver_sql("SELECT id, d, dt, UNIX_TIMESTAMP(ts) FROM t ORDER BY id").all()
    assert [tuple(r[:3]) for r in rows[:2]] == [(1, None, None), (2, None, None)]
    assert rows[0][3] is None
    assert str(rows[2][1]) == "2024-01-02"


def _not_null_columns(env, table: str) -> set[str]:
    """The target table's NOT NULL columns, from its information_schema (all three engines)."""
    schema = getattr(env, "schema", env.target_db)
    query = (
        "SELECT column_name FROM information_schema.columns WHERE is_nullable = 'NO'"
        f" AND table_schema = '{schema}' AND table_name = '{table}'"
    )
    with env.target.connect() as conn:
        return {str(name) for name in conn.exec_driver_sql(query).scalars()}


@pytest.mark.parametrize("env_name", ["sync_env", "pg_sync_env", "duck_sync_env"])
def test_a_zero_date_in_a_not_null_column_makes_the_target_column_nullable(request, env_name):
    """Legacy schemas hold zero dates in NOT NULL columns (`DEFAULT '0000-00-00 00:00:00'`).
    The copy keeps NOT NULL until the first zero date comes; then that column (only) becomes
    nullable in the target, the zero dates are NULL and counted, the run says so, and later
    runs neither warn again nor put the NOT NULL back."""
    env = request.getfixturevalue(env_name)
    with env.source.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(
            "CREATE TABLE t (id INT PRIMARY KEY, d DATE NOT NULL,"
            " dt DATETIME(3) NOT NULL DEFAULT '0000-00-00 00:00:00',"
            " ts TIMESTAMP NOT NULL DEFAULT '2024-01-01 00:00:00', u DATETIME NOT NULL, KEY (u))"
        )
        conn.exec_driver_sql(
            "INSERT INTO t VALUES (1, '2024-01-02', '2024-01-02 03:04:05.250',"
            " '2024-01-02 03:04:05', '2024-01-01')"
        )
    table = {"table": "t", "primary_key": "id", "modifier": "u"}
    assert env.sync([table]).success
    assert _not_null_columns(env, "t") >= {"id", "d", "dt", "ts", "u"}

    with env.source.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(
            "INSERT INTO t VALUES (2, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00',"
            " '2024-01-02'), (3, '2024-00-10', '2024-05-00 10:00:00', '2024-01-03', '2024-01-02')"
        )
    result = env.sync([table])
    assert result.success
    metadata = materialization_metadata(result, "sync_t")
    assert metadata["zero_dates_to_null"] == 5
    for column in ("d", "dt", "ts"):
        assert f"column {column!r} is NOT NULL in the source" in metadata["warnings"]
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert _not_null_columns(env, "t") & {"d", "dt", "ts", "u"} == {"u"}
    rows = {row[0]: row for row in env.target_rows("t", "id")}
    assert rows[2][1:4] == (None, None, None)
    assert rows[3][1:3] == (None, None) and rows[3][3] is not None
    assert rows[1][1] is not None

    again = env.sync([table])  # a rerun: the mirror keeps the columns nullable, no new warning
    assert again.success
    assert "warnings" not in materialization_metadata(again, "sync_t")
    assert _not_null_columns(env, "t") & {"d", "dt", "ts", "u"} == {"u"}


MYSQL_8_SQL_MODE = (
    "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
    "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
)


@pytest.mark.parametrize("sql_mode", [MYSQL_8_SQL_MODE, "TRADITIONAL"])
def test_a_zero_date_default_is_mirrored_into_a_target_in_mysql_8_mode(sync_env, sql_mode):
    """MySQL 8's default sql_mode has NO_ZERO_DATE and NO_ZERO_IN_DATE, under which a legacy
    `DEFAULT '0000-00-00 00:00:00'` fails CREATE TABLE ("Invalid default value"). The target's
    sessions drop those two modes (and TRADITIONAL, which implies them): the default is
    mirrored as the source has it."""
    admin = sync_env.servers.target.engine()
    with admin.begin() as conn:
        before = conn.exec_driver_sql("SELECT @@GLOBAL.sql_mode").scalar()
        conn.exec_driver_sql(f"SET GLOBAL sql_mode = '{sql_mode}'")
    try:
        with sync_env.source.begin() as conn:
            conn.exec_driver_sql("SET SESSION sql_mode = ''")
            conn.exec_driver_sql(
                "CREATE TABLE y (id INT PRIMARY KEY,"
                " d DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00', u DATETIME NOT NULL)"
            )
            conn.exec_driver_sql(
                "INSERT INTO y VALUES (1, '0000-00-00', '2024-01-01'), (2, '2024-05-06', '2024-01-01')"
            )
        result = sync_env.sync([{"table": "y", "primary_key": "id", "modifier": "u"}])
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
        with sync_env.target.connect() as conn:
            ddl = conn.exec_driver_sql("SHOW CREATE TABLE y").one()[1]
        assert "`d` datetime DEFAULT '0000-00-00 00:00:00'" in ddl  # made nullable, default kept
        assert [row[:2] for row in sync_env.target_rows("y", "id")] == [
            (1, None),
            (2, sync_env.source_rows("y", "id")[1][1]),
        ]
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"SET GLOBAL sql_mode = '{before}'")
        admin.dispose()
