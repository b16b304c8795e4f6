"""The README's commands work as written: every `mysqlsync-dagster` line parses with the real
CLI, the scripts and files it names exist, and the console script itself runs doctor (healthy
and broken) and sync against the test servers loaded with the demo's sample data.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mysqlsync_dagster.tools.cli import build_parser
from mysqlsync_dagster.tools.demo import SAMPLE_DATA, SCHEMA

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CLI = str(Path(sys.executable).parent / "mysqlsync-dagster")


def shell_lines() -> list[str]:
    """Command lines of the README's ```sh blocks, comments removed."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def cli_invocations() -> list[list[str]]:
    """Every `mysqlsync-dagster ...` the README shows, in code blocks and inline code."""
    texts = [line for line in shell_lines() if "mysqlsync-dagster " in line]
    texts += re.findall(r"`([^`\n]*mysqlsync-dagster [^`]*)`", README)
    invocations = []
    for text in texts:
        text = text[text.index("mysqlsync-dagster") :]
        text = re.sub(r"\[[^\]]*\]", "", text)  # [TABLE ...], [--reset|--stop]: placeholders
        text = re.split(r"[;|>&']", text)[0]  # up to the end of this command in a shell line
        invocations.append(shlex.split(text)[1:])
    return invocations


def test_every_cli_line_in_the_readme_parses():
    invocations = cli_invocations()
    commands = {
        argv[argv.index(c)]
        for argv in invocations
        for c in argv
        if c in {"sync", "check", "doctor", "demo"}
    }
    assert commands == {"sync", "check", "doctor", "demo"}
    parser = build_parser()
    for argv in invocations:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README shows `mysqlsync-dagster {' '.join(argv)}`, which does not parse")


def test_scripts_and_files_the_readme_names_exist():
    for line in shell_lines():
        for word in shlex.split(line):
            if word.startswith("./scripts/") or word in (".env.example", "docker-compose.yml"):
                assert (REPO / word).exists(), word
    for name in ("Dockerfile", "deploy/dagster.yaml", "dagster.yaml", "workspace.yaml"):
        assert f"`{name}`" in README and (REPO / name).exists(), name


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def demo_env(sync_env, tmp_path):
    """The README's world: the demo's schema and sample data, the repo's tables.json."""
    conn = sync_env.source.raw_connection()  # the statements hold `%`: no parameter binding
    try:
        with conn.cursor() as cur:
            for statement in (*SCHEMA, *SAMPLE_DATA):
                cur.execute(statement)
        conn.commit()
    finally:
        conn.close()
    shutil.copy(REPO / "tables.json", tmp_path / "tables.json")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SOURCE_", "TARGET_", "TABLES_CONFIG", "DAGSTER_HOME"))
    }
    env.update(SOURCE_DB_URL=sync_env.source_url(), TARGET_DB_URL=sync_env.target_url())
    return env


def test_readme_commands_run_on_the_demo_data(demo_env, tmp_path):
    doctor = _run(["doctor"], demo_env, tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "healthy" in doctor.stdout

    sync = _run(["sync"], demo_env, tmp_path)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert re.search(r"^orders\s+direct\s+swap\s+20,000\s+20,000", sync.stdout, re.MULTILINE)

    assert _run(["check", "--help"], demo_env, tmp_path).returncode == 0

    tables = json.loads((tmp_path / "tables.json").read_text())
    tables.append({"table": "no_such_table", "primary_key": "id"})
    (tmp_path / "broken.json").write_text(json.dumps(tables))
    broken = _run(["--config", "broken.json", "doctor", "--json"], demo_env, tmp_path)
    assert broken.returncode == 2, broken.stdout + broken.stderr
    report = json.loads(broken.stdout)
    assert report["status"] == "broken"
    assert [t["table"] for t in report["tables"] if t["status"] == "fail"] == ["no_such_table"]


def test_the_demos_syncs_are_in_the_dagster_home_the_ui_reads(demo_env, tmp_path, monkeypatch):
    """`demo.sh` syncs with DAGSTER_HOME at the repo root, as `dev.sh` runs `dagster dev`: the
    UI opens on the first full load, its row counts and its checks."""
    import dagster as dg

    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    env = {**demo_env, "DAGSTER_HOME": str(tmp_path)}
    sync = _run(["sync", "orders"], env, tmp_path)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert 'DAGSTER_HOME="$PWD"' in (REPO / "scripts" / "demo.sh").read_text()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # dagster.yaml's storage paths are relative, as dev.sh uses them
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["orders"]))
        assert event is not None
        metadata = event.asset_materialization.metadata
        assert metadata["dagster/row_count"].value == 20_000
        assert metadata["strategy"].value == "swap"
        check = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey(["orders"]), "checksum_match")
        )
        assert check is not None and check.event.asset_check_evaluation.passed
