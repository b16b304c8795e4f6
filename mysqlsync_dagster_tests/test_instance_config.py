"""The Dagster instance configs: dagster.yaml (local, SQLite) and deploy/dagster.yaml
(production, PostgreSQL), each loaded by Dagster itself; the production one against a throwaway
PostgreSQL server that this module starts from Debian's binaries.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from mysqlsync_dagster.tools.mariadb_server import free_port

REPO = Path(__file__).resolve().parent.parent
PG_USER = "postgres"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"throwaway PostgreSQL unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"throwaway PostgreSQL unavailable: {reason}")


def _pg_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_port() -> Iterator[int]:
    """A PostgreSQL server in a temp dir on a free port (trust auth), stopped afterwards.

    initdb refuses to run as root, so as root the server runs as the `postgres` system user.
    """
    bin_dir = _pg_bin()
    if bin_dir is None:
        _unavailable("initdb not found (apt-get install postgresql)")
    run_as: dict[str, object] = {}
    base = Path(tempfile.mkdtemp(prefix="mysqlsync-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(PG_USER)
        except KeyError:
            _unavailable(f"running as root and there is no {PG_USER!r} user to run initdb as")
        os.chown(base, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    port = free_port()
    data = base / "data"
    try:
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", PG_USER, "--auth=trust", "-E", "UTF8", "-N"],
            check=True,
            capture_output=True,
            **run_as,
        )
        subprocess.run(
            [
                bin_dir / "pg_ctl",
                "-D",
                data,
                "-l",
                base / "server.log",
                "-w",
                "-o",
                f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            **run_as,
        )
    except (subprocess.CalledProcessError, OSError) as error:
        log = base / "server.log"
        detail = log.read_text() if log.exists() else getattr(error, "stderr", b"")
        shutil.rmtree(base, ignore_errors=True)
        _unavailable(f"{error}: {detail!r}")
    try:
        yield port
    finally:
        subprocess.run(
            [bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            **run_as,
        )
        shutil.rmtree(base, ignore_errors=True)


@dg.asset
def tiny() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 1})


def test_local_dagster_yaml_loads_with_monitoring_and_retries(tmp_path, monkeypatch):
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.chdir(tmp_path)  # its paths are relative to the repo root
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_retries_enabled
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert dg.materialize([tiny], instance=instance).success


def test_production_dagster_yaml_stores_runs_and_events_in_postgres(
    postgres_port, tmp_path, monkeypatch
):
    pg = {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres_port),
        "DAGSTER_PG_USER": PG_USER,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": "postgres",
    }
    for key, value in pg.items():
        monkeypatch.setenv(key, value)
    shutil.copy(REPO / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        result = dg.materialize([tiny], instance=instance)
        assert result.success
    engine = sa.create_engine(f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{postgres_port}/postgres")
    try:
        with engine.connect() as conn:
            events = conn.execute(
                sa.text("SELECT dagster_event_type FROM event_logs WHERE run_id = :r"),
                {"r": result.run_id},
            ).scalars()
            assert {"STEP_SUCCESS", "ASSET_MATERIALIZATION"} <= set(events)
            status = conn.execute(
                sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": result.run_id}
            ).scalar_one()
            assert status == "SUCCESS"
    finally:
        engine.dispose()
