"""The code location loads from tables.json alone: no database is touched, and it is fast."""

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.orchestration.names import IO_MANAGER_KEY
from mysqlsync_dagster.settings import Settings

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = {
    # nothing listens on port 9: connecting would fail loudly
    "SOURCE_DB_URL": "mysql://nobody:secret@127.0.0.1:9/nothing",
    "TARGET_DB_URL": "mysql://nobody:secret@127.0.0.1:9/nothing",
}


# imported by a table's step, never by loading the definitions (about 0.7 s)
RUN_TIME_ONLY = ("dlt", "pyarrow", "numpy", "pandas", "connectorx")


def many_tables(n: int) -> list[dict]:
    tables = []
    for i in range(n):
        entry = {"table": f"table_{i:03d}", "primary_key": "id"}
        if i % 2:
            entry["modifier"] = "updated_at"
        if i % 3 == 0:
            entry["primary_key"] = ["a", "b"]
        tables.append(entry)
    return tables


def test_definitions_module_loads_without_a_database(tmp_path):
    """Import the real module in a fresh interpreter with unreachable databases."""
    config = tmp_path / "tables.json"
    config.write_text(json.dumps(many_tables(5)))
    code = (
        "import time; t = time.perf_counter();"
        "from mysqlsync_dagster.definitions import defs;"
        "defs.resolve_asset_graph();"
        "import sys; heavy = [m for m in HEAVY if m in sys.modules];"
        "print(len(list(defs.resolve_all_asset_keys())), time.perf_counter() - t, *heavy)"
    ).replace("HEAVY", repr(RUN_TIME_ONLY))
    env = {**UNREACHABLE, "TABLES_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    keys, _, *heavy = out.stdout.split()
    assert int(keys) == 10  # 5 target assets + 5 external source assets
    # the code location loads (in the webserver, the daemon, every run worker) without the
    # run-time libraries: a table's step imports them when it starts
    assert heavy == []


def test_two_hundred_tables_build_quickly():
    tables = parse_tables_config(many_tables(200))
    started = time.perf_counter()
    defs = build_definitions(tables, Settings.from_environ(UNREACHABLE))
    graph = defs.resolve_asset_graph()
    elapsed = time.perf_counter() - started
    assert len(graph.get_all_asset_keys()) == 400
    assert elapsed < 3.0, f"building 200 tables took {elapsed:.2f}s"


def test_asset_shape():
    tables = parse_tables_config(
        [
            {"table": "orders", "primary_key": "id", "modifier": "updated_at"},
            {"table": "My Table", "primary_key": ["a", "b"], "target_table": "copy"},
        ]
    )
    defs = build_definitions(tables, Settings.from_environ({}))
    graph = defs.resolve_asset_graph()
    orders = graph.get(dg.AssetKey(["orders"]))
    assert orders.kinds == {"dlt", "mysql"}
    assert set(orders.parent_keys) == {dg.AssetKey(["source", "orders"])}
    assert orders.metadata["modifier"] == "updated_at"
    assert orders.metadata["strategy"] == "incremental"
    assert orders.freshness_policy is not None
    copy = graph.get(dg.AssetKey(["copy"]))
    assert copy.metadata["source_table"] == "My Table"
    assert copy.metadata["primary_key"] == "a, b"
    [parent] = copy.parent_keys
    assert parent.path[0] == "source" and parent.path[1].startswith("My_Table_")
    assert graph.get(parent).is_external


def test_dagster_definitions_validate_from_repo_root():
    env = {**UNREACHABLE, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "secret" not in result.stdout + result.stderr


def test_every_table_reads_back_through_the_table_reader_and_staging_is_bound_by_name():
    tables = parse_tables_config(
        [
            {"table": "big", "primary_key": "id", "modifier": "updated_at", "mode": "staging"},
            {"table": "small", "primary_key": "id"},
        ]
    )
    environ = {"STAGING_DIR": "/var/tmp/x", "PARQUET_COMPRESSION": "gzip"}
    defs = build_definitions(tables, Settings.from_environ(environ))
    for name in ("big", "small"):
        asset = defs.resolve_assets_def(dg.AssetKey([name]))
        assert asset.get_io_manager_key_for_asset_key(dg.AssetKey([name])) == IO_MANAGER_KEY
    big = defs.resolve_assets_def(dg.AssetKey(["big"]))
    assert big.metadata_by_key[dg.AssetKey(["big"])]["mode"] == "staging"
    staging = defs.resources["staging"]
    # bound by name: the values are read at run time, never when definitions load
    assert isinstance(staging.directory, dg.EnvVar)
    assert staging.directory.env_var_name == "STAGING_DIR"
    assert staging.retention_hours is None  # unset: the default (24 hours)
    # the reader's former key still serves `dg.AssetIn(input_manager_key="staging_io_manager")`
    assert defs.resources["staging_io_manager"] is defs.resources[IO_MANAGER_KEY]
