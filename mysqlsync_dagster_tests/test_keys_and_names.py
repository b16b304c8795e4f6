"""Composite keys, case-insensitive keys, and identifiers that must be quoted everywhere."""

import pytest
import sqlalchemy as sa


@pytest.fixture(params=["direct", "staging"])
def mode(request):
    """Every key test runs in both modes: staging merges by key range (composite, binary,
    case-insensitive keys compared by the server), direct merges per batch."""
    return request.param


def test_two_column_key_incremental(sync_env, mode):
    sync_env.source_exec(
        "CREATE TABLE order_items (order_id INT NOT NULL, product_id INT NOT NULL, qty INT,"
        " updated_at DATETIME NOT NULL, PRIMARY KEY (order_id, product_id), KEY (updated_at))",
        "INSERT INTO order_items VALUES (1, 1, 1, '2024-01-01'), (1, 2, 2, '2024-01-01'),"
        " (2, 1, 3, '2024-01-02')",
    )
    cfg = {
        "table": "order_items",
        "primary_key": ["order_id", "product_id"],
        "modifier": "updated_at",
        "mode": mode,
    }
    sync_env.sync([cfg])
    sync_env.source_exec(
        "UPDATE order_items SET qty = 20, updated_at = '2024-01-03' WHERE order_id = 1 AND product_id = 2",
        "INSERT INTO order_items VALUES (2, 2, 4, '2024-01-03')",
    )
    sync_env.sync([cfg])
    assert sync_env.target_rows("order_items", "1, 2") == [
        (1, 1, 1, sa.DateTime().python_type(2024, 1, 1)),
        (1, 2, 20, sa.DateTime().python_type(2024, 1, 3)),
        (2, 1, 3, sa.DateTime().python_type(2024, 1, 2)),
        (2, 2, 4, sa.DateTime().python_type(2024, 1, 3)),
    ]


def test_four_column_key_with_mixed_types(sync_env, mode):
    sync_env.source_exec(
        "CREATE TABLE m (region CHAR(2) NOT NULL, day DATE NOT NULL, seq SMALLINT UNSIGNED NOT NULL,"
        " code VARBINARY(8) NOT NULL, v DOUBLE, updated_at DATETIME(6) NOT NULL,"
        " PRIMARY KEY (region, day, seq, code), KEY (updated_at))",
        "INSERT INTO m SELECT ELT(1 + seq % 3, 'DE', 'FR', 'ID'), DATE'2024-01-01' + INTERVAL seq % 5 DAY,"
        " seq, UNHEX(LPAD(HEX(seq), 4, '0')), seq / 3,"
        " TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_500",
    )
    cfg = {
        "table": "m",
        "primary_key": ["region", "day", "seq", "code"],
        "modifier": "updated_at",
        "mode": mode,
        "batch_size": 7,  # several key ranges in staging mode
    }
    sync_env.sync([cfg])
    sync_env.source_exec("UPDATE m SET v = -1, updated_at = '2025-01-01' WHERE seq % 50 = 0")
    sync_env.sync([cfg])
    assert sync_env.target_rows("m", "1, 2, 3, 4") == sync_env.source_rows("m", "1, 2, 3, 4")


def test_case_insensitive_key_takes_the_source_spelling(sync_env, mode):
    sync_env.source_exec(
        "CREATE TABLE tags (name VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY,"
        " n INT, updated_at DATETIME NOT NULL, KEY (updated_at))",
        "INSERT INTO tags VALUES ('abc', 1, '2024-01-01'), ('Straße', 2, '2024-01-01')",
    )
    cfg = {"table": "tags", "primary_key": "name", "modifier": "updated_at", "mode": mode}
    sync_env.sync([cfg])
    # the key is re-spelled in the source: same key under the collation, different bytes
    sync_env.source_exec(
        "UPDATE tags SET name = 'ABC', n = 10, updated_at = '2024-01-02' WHERE name = 'abc'"
    )
    sync_env.sync([cfg])
    with sync_env.target.connect() as conn:
        rows = conn.exec_driver_sql("SELECT name, n FROM tags ORDER BY BINARY name").all()
    assert [tuple(r) for r in rows] == [("ABC", 10), ("Straße", 2)]


def test_reserved_words_unicode_quotes_and_backticks(sync_env, mode):
    table = "select `from` \"where\" 'naïve' 表"
    sync_env.source_exec(
        "CREATE TABLE `select ``from`` \"where\" 'naïve' 表` ("
        " `order` INT NOT NULL, `My Col` VARCHAR(10), `naïve` TEXT, `a``b` INT,"
        " `it's \"q\"` DATE, `group` DATETIME NOT NULL, `50% off:x` VARCHAR(5) DEFAULT '100%',"
        " PRIMARY KEY (`order`), KEY (`group`))",
        "INSERT INTO `select ``from`` \"where\" 'naïve' 表` VALUES"
        " (1, 'x', 'é', 7, '2024-01-01', '2024-01-01 00:00:00', '5%'),"
        " (2, NULL, NULL, NULL, NULL, '2024-01-02 00:00:00', DEFAULT)",
    )
    cfg = {
        "table": table,
        "primary_key": "order",
        "modifier": "group",
        "target_table": "copy of `select`; DROP TABLE x; --",
        "mode": mode,
    }
    result = sync_env.sync([cfg])
    assert result.success
    target = "copy of `select`; DROP TABLE x; --"
    with sync_env.target.connect() as conn:
        columns = [
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA ="
                    " DATABASE() AND TABLE_NAME = :t ORDER BY ORDINAL_POSITION"
                ),
                {"t": target},
            )
        ]
    assert columns == [
        "order",
        "My Col",
        "naïve",
        "a`b",
        'it\'s "q"',
        "group",
        "50% off:x",
        "_dlt_load_id",
        "_dlt_id",
    ]
    assert sync_env.target_rows(target) == sync_env.source_rows(table)
    sync_env.source_exec(
        "UPDATE `select ``from`` \"where\" 'naïve' 表` SET `a``b` = 8, `group` = '2024-02-01'"
        " WHERE `order` = 2"
    )
    assert sync_env.sync([cfg]).success
    assert sync_env.target_rows(target) == sync_env.source_rows(table)
