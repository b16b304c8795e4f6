"""The code location as a `dg` component: `dg check defs`, `dg list defs` and `dg scaffold defs`
work from the repository and from a user's own project, with tables.json or inline tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UNREACHABLE = {
    "SOURCE_DB_URL": "mysql://nobody:s3cret-pw@127.0.0.1:9/shop",
    "TARGET_DB_URL": "mysql://nobody:s3cret-pw@127.0.0.1:9/shop_replica",
}


def dg_command(*args: str, cwd: Path, environ: dict[str, str]) -> subprocess.CompletedProcess:
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "VIRTUAL_ENV": str(BIN.parent),  # dg runs the project in this environment, not uv's
        **UNREACHABLE,
        **environ,
    }
    return subprocess.run(
        [str(BIN / "dg"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def listed_assets(result: subprocess.CompletedProcess) -> dict[str, dict]:
    assert result.returncode == 0, result.stdout + result.stderr
    return {a["asset_key"]: a for a in json.loads(result.stdout)["assets"]}


def test_dg_check_and_list_defs_from_the_repository(tmp_path):
    config = tmp_path / "tables.json"
    config.write_text(
        json.dumps(
            [
                {"table": "orders", "primary_key": "id", "modifier": "updated_at"},
                {"table": "order_items", "primary_key": ["order_id", "product_id"]},
            ]
        )
    )
    check = dg_command("check", "defs", cwd=REPO, environ={"TABLES_CONFIG": str(config)})
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All definitions loaded successfully" in check.stdout + check.stderr
    listed = dg_command("list", "defs", "--json", cwd=REPO, environ={"TABLES_CONFIG": str(config)})
    assets = listed_assets(listed)
    assert set(assets) == {"orders", "order_items", "source/orders", "source/order_items"}
    assert assets["orders"]["source"] == "mysqlsync_dagster/defs/tables/defs.yaml:3"
    assert assets["orders"]["dependency_keys"] == ["source/orders"]
    assert "s3cret-pw" not in listed.stdout + listed.stderr + check.stdout + check.stderr


def test_repository_defs_yaml_defaults_to_tables_json_in_the_working_directory():
    """No TABLES_CONFIG: the repository's tables.json, as `dagster dev` reads it."""
    tables = {entry["table"] for entry in json.loads((REPO / "tables.json").read_text())}
    assets = listed_assets(dg_command("list", "defs", "--json", cwd=REPO, environ={}))
    assert {key for key in assets if not key.startswith("source/")} == tables


@pytest.fixture
def user_project(tmp_path):
    """A user's own dg project (not this repository) that has this package installed."""
    root = tmp_path / "analytics"
    (root / "analytics" / "defs").mkdir(parents=True)
    (root / "analytics" / "__init__.py").write_text("")
    (root / "analytics" / "defs" / "__init__.py").write_text("")
    (root / "analytics" / "definitions.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import dagster as dg


            @dg.definitions
            def defs():
                return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            """
        )
    )
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [project]
            name = "analytics"
            version = "0"

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "analytics"
            """
        )
    )
    return root


def test_scaffolded_component_with_inline_tables_in_a_users_project(user_project, tmp_path):
    environ = {"PYTHONPATH": str(user_project)}
    scaffold = dg_command(
        "scaffold",
        "defs",
        "mysqlsync_dagster.MySQLSyncComponent",
        "replica",
        cwd=user_project,
        environ=environ,
    )
    assert scaffold.returncode == 0, scaffold.stdout + scaffold.stderr
    defs_yaml = user_project / "analytics" / "defs" / "replica" / "defs.yaml"
    scaffolded = defs_yaml.read_text()
    assert "type: mysqlsync_dagster.MySQLSyncComponent" in scaffolded
    assert "TABLES_CONFIG" in scaffolded and "tables.json" in scaffolded

    # as scaffolded: tables.json in the working directory
    (user_project / "tables.json").write_text(json.dumps([{"table": "t1", "primary_key": "id"}]))
    assets = listed_assets(dg_command("list", "defs", "--json", cwd=user_project, environ=environ))
    assert set(assets) == {"t1", "source/t1"}

    # the tables inline instead
    defs_yaml.write_text(
        textwrap.dedent(
            """\
            type: mysqlsync_dagster.MySQLSyncComponent
            attributes:
              tables:
                - {table: customers, primary_key: id, modifier: updated_at}
                - table: order_items
                  primary_key: [order_id, product_id]
                  mode: staging
            """
        )
    )
    assets = listed_assets(dg_command("list", "defs", "--json", cwd=user_project, environ=environ))
    assert set(assets) == {"customers", "order_items", "source/customers", "source/order_items"}
    assert assets["customers"]["source"] == "analytics/defs/replica/defs.yaml:1"


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        (
            "tables:\n    - {table: t1, primary_key: id, modifer: updated_at}",
            "analytics/defs/replica/defs.yaml: tables: table 't1': key 'modifer': unknown key",
        ),
        (
            "tables_config: tables.json\n  tables: [{table: t1, primary_key: id}]",
            "analytics/defs/replica/defs.yaml: give either tables_config or tables, not both",
        ),
        ("tables_config: nowhere.json", "nowhere.json: file not found"),
        ("table_config: tables.json", "table_config"),
    ],
    ids=["bad-table-key", "both", "missing-file", "unknown-attribute"],
)
def test_bad_component_config_is_named(user_project, attributes, expected):
    defs_yaml = user_project / "analytics" / "defs" / "replica" / "defs.yaml"
    defs_yaml.parent.mkdir()
    defs_yaml.write_text(
        f"type: mysqlsync_dagster.MySQLSyncComponent\nattributes:\n  {attributes}\n"
    )
    result = dg_command(
        "check", "defs", cwd=user_project, environ={"PYTHONPATH": str(user_project)}
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected in output, output
    assert "s3cret-pw" not in output
