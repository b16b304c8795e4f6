"""The deployment files: Dockerfile (linted with hadolint, checked for its contract),
docker-compose.yml and .env.example (parsed, cross-checked with each other and with the code).
There is no Docker engine here, so nothing is built or started.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mysqlsync_dagster import settings

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "mysqlsync_dagster"

# The environment of DESIGN.md (names fixed there), and Dagster's storage for deploy/dagster.yaml.
DESIGN_VARIABLES = {
    *(
        f"{side}_DB_{part}"
        for side in ("SOURCE", "TARGET")
        for part in (
            "URL",
            "HOST",
            "PORT",
            "NAME",
            "USER",
            "PASS",
            "SSL_CA",
            "SSL_CERT",
            "SSL_KEY",
            "SSL_VERIFY",
        )
    ),
    "TABLES_CONFIG",
    "POOL_SIZE",
    "MAX_OVERFLOW",
    "POOL_TIMEOUT",
    "POOL_RECYCLE",
    "INTERVAL",
    "SOURCE_TIMEZONE",
    "STAGING_DIR",
    "PARQUET_COMPRESSION",
    "STAGING_RETENTION_HOURS",
}
# Set by the platform or the image, not by the user's .env.
PLATFORM_VARIABLES = {"PATH", "USER", "HOME", "DAGSTER_HOME", "CI"}


def env_example() -> dict[str, str]:
    """Variables of .env.example, including commented-out alternatives (`# NAME=value`)."""
    found = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def variables_read_by_code() -> set[str]:
    """Every variable the product understands: `settings.VARIABLES`, the one list."""
    return {variable.name for variable in settings.VARIABLES} - PLATFORM_VARIABLES


def test_only_settings_reads_the_environment():
    readers = sorted(
        str(path.relative_to(REPO))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"os\.environ|getenv\(", path.read_text()) and path.name != "settings.py"
    )
    assert readers == []


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            env.update(re.findall(r"([A-Z_]+)=(\S+)", rest))
    return env


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_env_example_lists_every_variable_of_design_and_code():
    documented = set(env_example())
    scanned = variables_read_by_code()
    assert {"TABLES_CONFIG", "INTERVAL", "SOURCE_DB_PASS"} <= scanned
    assert DESIGN_VARIABLES - documented == set()
    assert scanned - documented == set()


def test_hadolint_passes():
    hadolint = shutil.which(
        "hadolint",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint not installed (pip install -e '.[dev]')")
        pytest.skip("hadolint not installed")
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract():
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert re.match(r"python:3\.11-slim", froms[-1])
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = dockerfile_env()
    assert {"TZ", "DAGSTER_HOME", "STAGING_DIR", "TABLES_CONFIG"} <= set(env)
    volumes = " ".join(rest for keyword, rest in instructions if keyword == "VOLUME")
    assert env["STAGING_DIR"] in volumes
    [healthcheck] = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert "/server_info" in healthcheck and ":3000" in healthcheck
    cmd = next(rest for keyword, rest in reversed(instructions) if keyword == "CMD")
    assert "dagster-webserver" in cmd and "/app/workspace.yaml" in cmd
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert '".[postgres]"' in runs
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    assert any(
        "deploy/dagster.yaml" in c and c.endswith("${DAGSTER_HOME}/dagster.yaml") for c in copies
    )
    for copy in copies:  # every file the build copies from the repo exists
        parts = [p for p in copy.split() if not p.startswith("--")]
        if "--from=build" not in copy:
            for source in parts[:-1]:
                assert (REPO / source).exists(), source
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".env", ".git"} <= set(ignored)


def test_compose_services_volumes_and_variables():
    spec = compose()
    services = spec["services"]
    assert {"source-db", "target-db", "postgres", "webserver", "daemon"} <= set(services)
    web, daemon = services["webserver"], services["daemon"]
    assert web["build"] == daemon["build"] == "." and web["image"] == daemon["image"]
    assert web["command"][0] == "dagster-webserver"
    assert daemon["command"][:2] == ["dagster-daemon", "run"]
    staging = dockerfile_env()["STAGING_DIR"]
    dagster_home = dockerfile_env()["DAGSTER_HOME"]
    for service in (web, daemon):
        assert service["env_file"] == ".env"
        targets = {v.split(":")[1] for v in service["volumes"]}
        assert {staging, "/app/tables.json", f"{dagster_home}/storage"} <= targets
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(spec["volumes"]) >= {"staging", "dagster-storage"}
    # every ${VAR} the compose file interpolates is in .env.example
    text = (REPO / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))
    assert interpolated - set(env_example()) == set()
    # the production instance config reads only variables that .env provides
    deploy_vars = set(re.findall(r"env: ([A-Z_]+)", (REPO / "deploy/dagster.yaml").read_text()))
    assert deploy_vars and deploy_vars - set(env_example()) == set()
    # the hosts in .env.example are the compose services
    example = env_example()
    assert example["SOURCE_DB_HOST"] in services and example["TARGET_DB_HOST"] in services
    assert example["DAGSTER_PG_HOST"] in services


def test_workspace_yaml_names_the_definitions_module():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    [entry] = workspace["load_from"]
    module = entry["python_module"]["module_name"]
    assert (REPO / (module.replace(".", "/") + ".py")).exists()
