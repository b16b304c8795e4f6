"""Checks run on their own, without syncing: launched through the webserver's GraphQL API as the
UI's "Execute" button and the daily consistency job do, and through Dagster's Python API."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.orchestration.names import CHECKS_JOB, VERIFY_TAG
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster.tools.mariadb_server import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "mysqlsync_dagster.definitions"  # workspace.yaml's python_module
ORDERS = {"table": "orders", "primary_key": "id", "modifier": "updated_at"}
EVENTS = {
    "table": "events",
    "primary_key": "id",
    "modifier": "updated_at",
    "partitions": "daily",
    "partition_start": "2024-01-01",
}


@pytest.fixture
def shop(sync_env):
    for table in ("orders", "events"):
        sync_env.source_exec(
            f"CREATE TABLE {table} (id INT PRIMARY KEY, note VARCHAR(20),"
            " updated_at DATETIME NOT NULL, KEY (updated_at))",
            f"INSERT INTO {table} SELECT seq, CONCAT('row ', seq),"
            " '2024-01-01' + INTERVAL seq HOUR FROM seq_1_to_200",
        )
    result = sync_env.sync([ORDERS, EVENTS])
    assert result.success
    return sync_env


class WebServer:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def query(self, text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        assert "errors" not in answer, answer
        return answer["data"]

    def launch(self, selector: dict[str, Any], tags: dict[str, str] | None = None) -> str:
        data = self.query(
            """mutation Launch($params: ExecutionParams!) {
                 launchRun(executionParams: $params) {
                   __typename
                   ... on LaunchRunSuccess { run { runId } }
                   ... on Error { message }
                 }
               }""",
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": "__repository__",
                        **selector,
                    },
                    "executionMetadata": {
                        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]
                    },
                }
            },
        )["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]

    def wait(self, run_id: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.query(
                "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                {"id": run_id},
            )["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} still not finished after {timeout}s")

    def failure_messages(self, run_id: str) -> list[str]:
        events = self.query(
            """query($id: ID!) {
                 logsForRun(runId: $id) {
                   ... on EventConnection {
                     events { __typename ... on ExecutionStepFailureEvent { error { message } } }
                   }
                 }
               }""",
            {"id": run_id},
        )["logsForRun"]["events"]
        return [
            e["error"]["message"] for e in events if e["__typename"] == "ExecutionStepFailureEvent"
        ]

    def check_executions(self, table: str, check: str) -> list[dict[str, Any]]:
        return self.query(
            """query($key: AssetKeyInput!, $check: String!) {
                 assetCheckExecutions(assetKey: $key, checkName: $check, limit: 5) {
                   runId status evaluation { success description }
                 }
               }""",
            {"key": {"path": [table]}, "check": check},
        )["assetCheckExecutions"]

    def materialization_runs(self, table: str) -> list[str]:
        data = self.query(
            """query($key: AssetKeyInput!) {
                 assetOrError(assetKey: $key) {
                   ... on Asset { assetMaterializations(limit: 50) { runId } }
                 }
               }""",
            {"key": {"path": [table]}},
        )
        return [m["runId"] for m in data["assetOrError"]["assetMaterializations"]]


@contextlib.contextmanager
def webserver(home: Path, environ: dict[str, str]) -> Iterator[WebServer]:
    port = free_port()
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "DAGSTER_HOME": str(home),
        **environ,
    }
    log = open(home / "webserver.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            str(BIN / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = WebServer(port)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                server.query("{ version }")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "webserver did not start: " + (home / "webserver.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def test_checks_launched_alone_through_graphql(shop, tmp_path):
    """The UI's "Execute" on one check and a launch of the consistency job: the checks run,
    nothing is synced or repaired, a damaged row is found."""
    config = tmp_path / "tables.json"
    config.write_text(json.dumps([ORDERS, EVENTS]))
    shop.target_exec("UPDATE orders SET note = 'damaged' WHERE id = 17")
    home = tmp_path / "home"
    home.mkdir()
    # runs start as soon as they are launched (no daemon to take them off the queue)
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n"
        "  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    environ = {
        "SOURCE_DB_URL": shop.source_url(),
        "TARGET_DB_URL": shop.target_url(),
        "TABLES_CONFIG": str(config),
    }
    with webserver(home, environ) as server:
        # one check, as the asset page's "Execute" launches it
        run_id = server.launch(
            {
                "jobName": "__ASSET_JOB",
                "assetSelection": [],
                "assetCheckSelection": [
                    {"assetKey": {"path": ["orders"]}, "name": "checksum_match"}
                ],
            }
        )
        # a blocking check that fails fails its step, so the run fails: what alerting watches
        assert server.wait(run_id) == "FAILURE"
        [failure] = server.failure_messages(run_id)
        assert "checksum_match" in failure, failure
        [execution] = server.check_executions("orders", "checksum_match")
        assert execution["runId"] == run_id
        assert execution["status"] == "FAILED"
        assert execution["evaluation"]["success"] is False
        assert "17" in execution["evaluation"]["description"]
        assert server.check_executions("orders", "row_count_match") == []  # not selected
        assert run_id not in server.materialization_runs("orders")  # nothing synced

        # the daily consistency job, as its schedule launches it: every table, whole tables
        run_id = server.launch({"jobName": CHECKS_JOB}, tags={VERIFY_TAG: "full"})
        assert server.wait(run_id) == "FAILURE"
        assert len(server.failure_messages(run_id)) == 1  # the orders step only
        for table, check, passed in [
            ("orders", "checksum_match", False),
            ("orders", "row_count_match", True),
            ("orders", "source_row_count", True),
            ("events", "checksum_match", True),  # a partitioned table's checks, no partition
            ("events", "row_count_match", True),
        ]:
            latest = server.check_executions(table, check)[0]
            assert latest["runId"] == run_id, (table, check)
            assert latest["evaluation"]["success"] is passed, (table, check, latest)
        assert run_id not in server.materialization_runs("orders")
        assert run_id not in server.materialization_runs("events")
    # read-only: the damage is still there for the next sync to repair
    assert shop.target_rows("orders") != shop.source_rows("orders")
    assert shop.sync([ORDERS]).success
    assert shop.target_rows("orders") == shop.source_rows("orders")


def test_checks_job_and_blocking_after_a_sync(shop):
    """The consistency job in process; its schedule is daily; a blocking check failing in a
    sync still keeps downstream assets from running."""
    tables = parse_tables_config([ORDERS, EVENTS], "test")
    defs = build_definitions(tables, Settings.from_environ({}))
    schedule = defs.resolve_schedule_def(f"{CHECKS_JOB}_daily")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    # a row inside the synced cursor's range that the target lacks (a late commit, not synced yet)
    shop.source_exec("INSERT INTO orders VALUES (999, 'late', '2024-01-02')")
    job = defs.resolve_job_def(CHECKS_JOB)
    result = job.execute_in_process(
        resources=shop.resources(), tags={VERIFY_TAG: "full"}, raise_on_error=False
    )
    assert not result.success  # the failed blocking checks fail the orders step
    [failure] = result.get_step_failure_events()
    assert failure.step_key == "sync_orders"
    verdicts = {
        (e.asset_key.path[0], e.check_name): e.passed for e in result.get_asset_check_evaluations()
    }
    assert verdicts == {
        ("orders", "source_row_count"): True,
        ("orders", "row_count_match"): False,
        ("orders", "checksum_match"): False,
        ("events", "source_row_count"): True,
        ("events", "row_count_match"): True,
        ("events", "checksum_match"): True,
    }
    assert result.get_asset_materialization_events() == []
    assert (999,) not in [row[:1] for row in shop.target_rows("orders")]

    # blocking checks still block: a difference repair cannot fix (a trigger on the target
    # rewrites the row) fails checksum_match in the sync, and the downstream asset never runs
    @dg.asset(deps=[dg.AssetKey("orders")])
    def orders_report() -> None:
        raise AssertionError("must not run after a failed blocking check")

    shop.target_exec(
        "CREATE TRIGGER orders_stuck BEFORE UPDATE ON orders FOR EACH ROW"
        " SET NEW.note = IF(NEW.id = 5, 'stuck', NEW.note)",
        "UPDATE orders SET note = 'x' WHERE id = 5",
    )
    result = shop.sync([ORDERS], extra_assets=[orders_report], raise_on_error=False)
    assert not result.success
    [checksum] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "checksum_match"
    ]
    assert not checksum.passed and checksum.blocking
    ran = {e.step_key for e in result.get_step_success_events() + result.get_step_failure_events()}
    assert "orders_report" not in ran


def test_a_timestamp_cursor_reads_as_a_time_in_check_messages(sync_env):
    """A TIMESTAMP modifier's cursor is stored as epoch seconds; people read a UTC time."""
    sync_env.source_exec(
        "CREATE TABLE rentals (id INT PRIMARY KEY, last_update TIMESTAMP(3) NOT NULL,"
        " KEY (last_update))",
        "INSERT INTO rentals VALUES (1, '2006-02-15 15:24:13.250'), (2, '2006-02-15 10:00:00')",
    )
    result = sync_env.sync([{"table": "rentals", "primary_key": "id", "modifier": "last_update"}])
    text = {e.check_name: e.description for e in result.get_asset_check_evaluations()}
    assert "max last_update 2006-02-15 15:24:13.250000 UTC" in text["source_row_count"]
    assert "with last_update up to 2006-02-15 15:24:13.250000 UTC" in text["row_count_match"]
    assert "1140017053" not in " ".join(text.values())
