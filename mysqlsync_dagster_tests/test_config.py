"""tables.json validation: good files load, bad ones name the file, the table and the key."""

import datetime as dt
import json
from pathlib import Path

import pytest

from mysqlsync_dagster.config import TableConfig, load_tables_config, parse_tables_config
from mysqlsync_dagster.errors import ConfigError
from mysqlsync_dagster.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "tables.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_repository_sample_config_loads():
    tables = load_tables_config(REPO / "tables.json")
    assert [t.table for t in tables] == ["countries", "customers", "orders", "order_items"]
    assert tables[0].incremental is False
    assert tables[3].primary_key == ("order_id", "line_no")


def test_defaults_and_all_keys(tmp_path):
    path = write(
        tmp_path,
        [
            {"table": "a", "primary_key": "id"},
            {
                "table": "b",
                "primary_key": ["k1", "k2"],
                "modifier": "updated_at",
                "mode": "staging",
                "batch_size": 1000,
                "partitions": "daily",
                "partition_start": "2024-01-01",
                "schedule": "*/5 * * * *",
                "freshness_minutes": 30,
                "detect_deletes": True,
                "checksum": False,
                "target_table": "b_copy",
            },
        ],
    )
    a, b = load_tables_config(path)
    assert a == TableConfig(table="a", primary_key=("id",))
    assert (a.mode, a.batch_size, a.partitions, a.checksum, a.target) == (
        "direct",
        50000,
        "none",
        True,
        "a",
    )
    assert b.primary_key == ("k1", "k2")
    assert b.partition_start == dt.date(2024, 1, 1)
    assert b.target == "b_copy"


def test_binlog_capture_applies_deletes_unless_told_not_to():
    [binlog, kept, plain] = parse_tables_config(
        [
            {"table": "a", "primary_key": "id", "capture": "binlog"},
            {"table": "b", "primary_key": "id", "capture": "binlog", "detect_deletes": False},
            {"table": "c", "primary_key": "id", "modifier": "m"},
        ]
    )
    assert (binlog.binlog, binlog.detect_deletes, binlog.incremental) == (True, True, False)
    assert (kept.binlog, kept.detect_deletes) == (True, False)
    assert (plain.binlog, plain.detect_deletes, plain.incremental) == (False, False, True)


def test_tables_config_env_var(tmp_path, monkeypatch):
    path = write(tmp_path, [{"table": "x", "primary_key": "id"}])
    monkeypatch.setenv("TABLES_CONFIG", str(path))
    assert load_tables_config(Settings.from_environ().tables_config)[0].table == "x"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[{"table": "t", "primary_key": "id",}]', "not valid JSON at line 1, column"),
        ({"table": "t"}, "expected a JSON list of table objects, got dict"),
        (["t"], "entry #1: expected an object, got str"),
        (
            [{"table": "orders", "primary_key": "id", "modifer": "updated_at"}],
            "table 'orders': key 'modifer': unknown key",
        ),
        (
            [{"table": "orders", "primary_key": "id", "batch_size": "1000"}],
            "table 'orders': key 'batch_size': Input should be a valid integer",
        ),
        (
            [{"table": "orders", "primary_key": []}],
            "table 'orders': key 'primary_key': the primary key list is empty",
        ),
        ([{"table": "orders"}], "table 'orders': key 'primary_key': required key is missing"),
        ([{"primary_key": "id"}], "entry #1: key 'table': required key is missing"),
        (
            [{"table": "a", "primary_key": "id"}, {"table": "a", "primary_key": "id"}],
            "table 'a': key 'table': 'a' is configured twice",
        ),
        (
            [
                {"table": "a", "primary_key": "id"},
                {"table": "b", "primary_key": "id", "target_table": "a"},
            ],
            "table 'b': key 'target_table': 'a' is configured twice",
        ),
        (
            [{"table": "o", "primary_key": "id", "mode": "fast"}],
            "table 'o': key 'mode': Input should be 'direct' or 'staging'",
        ),
        (
            [{"table": "o", "primary_key": "id", "partitions": "daily", "modifier": "m"}],
            "table 'o': key '(entry)': partitions='daily' needs 'partition_start'",
        ),
        (
            [{"table": "o", "primary_key": "id", "schedule": "every minute"}],
            "table 'o': key 'schedule': 'every minute' is not a valid cron expression",
        ),
        (
            [{"table": "o", "primary_key": "id", "partition_start": "01/02/2024"}],
            "table 'o': key 'partition_start': '01/02/2024' is not an ISO date",
        ),
        ([{"table": "o", "primary_key": ["a", "a"]}], "primary key lists ['a'] more than once"),
        ([{"table": "x" * 65, "primary_key": "id"}], "longer than 64 characters"),
        (
            [{"table": "o", "primary_key": "id", "checksum": "yes"}],
            "key 'checksum': Input should be a valid boolean",
        ),
        (
            [
                {
                    "table": "o",
                    "primary_key": "id",
                    "capture": "binlog",
                    "modifier": "m",
                    "partitions": "daily",
                    "partition_start": "2024-01-01",
                }
            ],
            "table 'o': key '(entry)': capture 'binlog' follows the whole table from its "
            "snapshot, so it takes no 'partitions'",
        ),
        (
            [{"table": "o", "primary_key": "id", "capture": "cdc"}],
            "table 'o': key 'capture': Input should be 'modifier' or 'binlog'",
        ),
    ],
)
def test_bad_config_names_file_table_and_key(tmp_path, content, expected):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_tables_config(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        [
            {"table": "a", "primary_key": "id", "bogus": 1},
            {"table": "b", "primary_key": "id", "batch_size": 0},
        ],
    )
    with pytest.raises(ConfigError) as info:
        load_tables_config(path)
    assert "table 'a': key 'bogus'" in str(info.value)
    assert "table 'b': key 'batch_size'" in str(info.value)


def test_missing_file_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_tables_config(tmp_path / "nope.json")
