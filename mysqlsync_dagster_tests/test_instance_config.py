"""The Dagster instance configs: dagster.yaml (local, SQLite) and deploy/dagster.yaml
(production, PostgreSQL), each loaded by Dagster itself; the production one against a throwaway
PostgreSQL server that this module starts from Debian's binaries.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from mysqlsync_dagster.tools.postgres_server import PostgresServer

REPO = Path(__file__).resolve().parent.parent
PG_USER = "postgres"


@pytest.fixture(scope="module")
def postgres_port(postgres_server: PostgresServer) -> int:
    return postgres_server.port


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
