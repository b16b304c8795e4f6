"""`mysqlsync-dagster doctor`: the verdict functions alone, then the command against real servers."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa

from mysqlsync_dagster.catalog import (
    STAGING_MIN_BYTES,
    STAGING_MIN_ROWS,
    Finding,
    TableFacts,
    exit_code,
    recommend_mode,
)
from mysqlsync_dagster.catalog import preflight as table_findings
from mysqlsync_dagster.config import TableConfig, parse_tables_config
from mysqlsync_dagster.settings import database_settings
from mysqlsync_dagster.tools.cli import main
from mysqlsync_dagster.tools.doctor import (
    ServerFacts,
    diagnose,
    error_message,
    grant_findings,
    parse_grants,
    tls_findings,
)

# every character that breaks a naive URL, and a prefix that cannot occur by chance
PASSWORD = "Dr0ct@r:pw/50%off"


def _cfg(**entry):
    return parse_tables_config([{"table": "t", "primary_key": "id", **entry}], "test")[0]


def _facts(**kwargs) -> TableFacts:
    defaults = {
        "exists": True,
        "columns": {"id": "bigint", "updated_at": "datetime", "note": "text"},
        "indexes": {"PRIMARY": (True, ("id",)), "ix_u": (False, ("updated_at",))},
        "rows": 10,
        "bytes": 16384,
    }
    return TableFacts(**{**defaults, **kwargs})


def _statuses(findings: list[Finding]) -> dict[str, str]:
    return {f.check: f.status for f in findings}


# -- pure verdicts ---------------------------------------------------------------------------
def test_parse_grants_levels_patterns_and_columns():
    grants = parse_grants(
        [
            "GRANT USAGE ON *.* TO `sync`@`%` IDENTIFIED BY PASSWORD '*ABC'",
            "GRANT SELECT, INSERT ON `shop\\_%`.* TO `sync`@`%`",
            "GRANT UPDATE (`a`, `b`), DELETE ON `other`.`t1` TO `sync`@`%`",
            "GRANT `reporting` TO `sync`@`%`",
            "GRANT SELECT ON `my db.v2`.`a``b` TO `sync`@`%`",
        ]
    )
    assert grants.on_table("my db.v2", "a`b") == {"SELECT"}
    assert grants.global_privs == set()
    assert grants.on_database("shop_eu") == {"SELECT", "INSERT"}
    assert grants.on_database("shopXeu") == set()  # \_ is a literal underscore
    assert grants.on_table("other", "t1") == {"UPDATE", "DELETE"}
    assert grants.unparsed == ["GRANT `reporting` TO `sync`@`%`"]
    assert parse_grants(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"]).on_database("x") == {
        "ALL"
    }


def test_grant_findings_name_what_is_missing_and_the_statement_to_run():
    target = parse_grants(["GRANT SELECT, INSERT, UPDATE, DELETE ON `tgt`.* TO `s`@`%`"])
    [finding] = grant_findings("target", target, "tgt")
    assert finding.status == "fail"
    assert "CREATE, ALTER, INDEX, DROP" in finding.message
    assert "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP ON `tgt`.*" in (
        finding.message
    )
    everything = parse_grants(["GRANT ALL PRIVILEGES ON `tgt`.* TO `s`@`%`"])
    assert grant_findings("target", everything, "tgt")[0].status == "ok"

    per_table = parse_grants(["GRANT SELECT ON `src`.`a` TO `s`@`%`"])
    assert grant_findings("source", per_table, "src", ["a"])[0].status == "ok"
    [lacking] = grant_findings("source", per_table, "src", ["a", "b"])
    assert lacking.status == "fail" and "b" in lacking.message


def test_recommend_mode_threshold():
    assert recommend_mode(None, None) == "direct"
    assert recommend_mode(STAGING_MIN_ROWS - 1, STAGING_MIN_BYTES - 1) == "direct"
    assert recommend_mode(STAGING_MIN_ROWS, 0) == "staging"
    assert recommend_mode(10, STAGING_MIN_BYTES) == "staging"


def test_table_findings_healthy_and_each_problem():
    assert _statuses(table_findings(_cfg(modifier="updated_at"), _facts(), "db")) == {
        "primary key": "ok",
        "modifier": "ok",
    }
    missing = table_findings(_cfg(), TableFacts(exists=False, name_hint="T"), "db")
    assert missing[0].status == "fail" and "'T'" in missing[0].message

    other_key = table_findings(_cfg(primary_key=["id", "note"]), _facts(), "db")
    assert _statuses(other_key)["primary key"] == "fail"
    assert "['id', 'note']" in other_key[0].message

    unique_only = _facts(indexes={"uq": (True, ("id",))})
    assert _statuses(table_findings(_cfg(), unique_only, "db"))["primary key"] == "ok"
    assert _statuses(table_findings(_cfg(), _facts(indexes={}), "db"))["primary key"] == "warn"

    unindexed = table_findings(
        _cfg(modifier="updated_at"), _facts(indexes={"PRIMARY": (True, ("id",))}), "db"
    )
    assert _statuses(unindexed)["modifier"] == "warn"
    assert "CREATE INDEX" in unindexed[-1].message
    # an index whose first column is something else does not serve `WHERE updated_at >= ...`
    second = _facts(indexes={"PRIMARY": (True, ("id",)), "ix": (False, ("id", "updated_at"))})
    assert _statuses(table_findings(_cfg(modifier="updated_at"), second, "db"))["modifier"] == (
        "warn"
    )
    assert _statuses(table_findings(_cfg(modifier="note"), _facts(), "db"))["modifier"] == "fail"
    assert _statuses(table_findings(_cfg(modifier="gone"), _facts(), "db"))["modifier"] == "fail"

    big = _facts(rows=STAGING_MIN_ROWS * 2)
    assert _statuses(table_findings(_cfg(), big, "db"))["mode"] == "warn"
    assert "mode" not in _statuses(table_findings(_cfg(mode="staging"), big, "db"))


def test_exit_code_is_the_worst_finding():
    ok = Finding("config", "x", "ok", "")
    warn = Finding("t", "x", "warn", "")
    fail = Finding("t", "x", "fail", "")
    assert [exit_code([]), exit_code([ok]), exit_code([ok, warn]), exit_code([warn, fail])] == [
        0,
        0,
        1,
        2,
    ]


def test_tls_findings():
    def verdict(env: dict[str, str], tls_version: str) -> str:
        settings = database_settings("SOURCE", {"SOURCE_DB_NAME": "db", **env})
        facts = ServerFacts(
            "11.4", tls_version, "TLS_AES_256_GCM_SHA384" if tls_version else "", True, []
        )
        [finding] = tls_findings("source", settings, facts)
        return finding.status

    local, remote = {"SOURCE_DB_HOST": "127.0.0.1"}, {"SOURCE_DB_HOST": "db.example.com"}
    ca = {"SOURCE_DB_SSL_CA": "/etc/ssl/ca.pem"}
    assert verdict(local, "") == "ok"
    assert verdict(remote, "") == "warn"  # credentials in clear over the network
    assert verdict({**remote, **ca}, "TLSv1.3") == "ok"
    assert verdict({**remote, **ca}, "") == "fail"  # asked for TLS, did not get it
    assert verdict({**remote, **ca, "SOURCE_DB_SSL_VERIFY": "false"}, "TLSv1.3") == "warn"


def test_error_message_keeps_the_server_words_and_drops_secrets():
    error = sa.exc.OperationalError(
        "SELECT 1", {}, Exception(1045, f"Access denied for 'u' (using {PASSWORD})")
    )
    text = error_message(error, [PASSWORD])
    assert text == "Access denied for 'u' (using ***) (MySQL error 1045)"


# -- against the test servers ----------------------------------------------------------------
@contextlib.contextmanager
def _account(engine: sa.Engine, user: str, grants: list[str]) -> Iterator[None]:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (PASSWORD,))
        for grant in grants:
            conn.exec_driver_sql(grant.format(user=f"'{user}'@'%%'"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'%%'")


def _doctor(monkeypatch, tmp_path, env: dict[str, str], tables: list[dict], *args: str):
    """Run the CLI in a clean directory with exactly `env`; returns (exit code, output)."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("SOURCE_", "TARGET_", "TABLES_CONFIG", "INTERVAL")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "tables.json").write_text(json.dumps(tables))
    return main(["doctor", *args])


@pytest.fixture
def accounts(sync_env):
    """A least-privilege account on each side, both with the same awkward password."""
    user = f"doc{os.getpid()}"
    src, tgt = sync_env.servers.source, sync_env.servers.target
    with (
        _account(sync_env.source, user, [f"GRANT SELECT ON `{sync_env.source_db}`.* TO {{user}}"]),
        _account(
            sync_env.target,
            user,
            [
                "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP"
                f" ON `{sync_env.target_db}`.* TO {{user}}"
            ],
        ),
    ):
        yield {
            # the source as parts (no escaping), the target as a URL (percent-encoded)
            "SOURCE_DB_HOST": src.url.host,
            "SOURCE_DB_PORT": str(src.url.port),
            "SOURCE_DB_NAME": sync_env.source_db,
            "SOURCE_DB_USER": user,
            "SOURCE_DB_PASS": PASSWORD,
            "TARGET_DB_URL": (
                f"mysql://{user}:{quote(PASSWORD, safe='')}@{tgt.url.host}:{tgt.url.port}"
                f"/{sync_env.target_db}"
            ),
        }


def _assert_no_password(text: str) -> None:
    for form in (PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD), "Dr0ct"):
        assert form not in text


def test_doctor_healthy_then_degraded_then_broken(
    sync_env, accounts, monkeypatch, tmp_path, capsys
):
    sync_env.source_exec(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, updated_at DATETIME NOT NULL,"
        " KEY (updated_at))",
        "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT, changed DATETIME NOT NULL)",
    )
    healthy = [{"table": "orders", "primary_key": "id", "modifier": "updated_at"}]
    assert _doctor(monkeypatch, tmp_path, accounts, healthy) == 0
    out = capsys.readouterr().out
    _assert_no_password(out)
    assert "healthy" in out and "MariaDB" in out

    degraded = [*healthy, {"table": "notes", "primary_key": "id", "modifier": "changed"}]
    assert _doctor(monkeypatch, tmp_path, accounts, degraded, "--json") == 1
    out = capsys.readouterr().out
    _assert_no_password(out)
    report = json.loads(out)
    assert report["status"] == "degraded"
    assert "MariaDB" in report["source"]["version"]
    by_table = {t["table"]: t for t in report["tables"]}
    assert by_table["orders"]["status"] == "ok"
    assert by_table["orders"]["recommended_mode"] == "direct"
    assert by_table["notes"]["findings"][0]["check"] == "modifier"

    broken = [*degraded, {"table": "missing_table", "primary_key": "id"}]
    assert _doctor(monkeypatch, tmp_path, accounts, broken, "--json") == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "broken"
    assert "does not exist" in report["tables"][-1]["findings"][0]["message"]


def test_doctor_reports_missing_grants_and_bad_password(
    sync_env, accounts, monkeypatch, tmp_path, capsys
):
    sync_env.source_exec("CREATE TABLE t (id INT PRIMARY KEY)")
    tables = [{"table": "t", "primary_key": "id"}]
    with sync_env.target.begin() as conn:
        conn.exec_driver_sql(
            f"REVOKE DROP, ALTER ON `{sync_env.target_db}`.* FROM '{accounts['SOURCE_DB_USER']}'@'%%'"
        )
    assert _doctor(monkeypatch, tmp_path, accounts, tables) == 2
    out = capsys.readouterr().out
    _assert_no_password(out)
    assert "missing ALTER, DROP" in out

    wrong = {**accounts, "SOURCE_DB_PASS": PASSWORD + "x"}
    assert _doctor(monkeypatch, tmp_path, wrong, tables, "--json") == 2
    out = capsys.readouterr().out
    _assert_no_password(out)
    source = [f for f in json.loads(out)["findings"] if f["scope"] == "source"]
    assert source[0]["status"] == "fail" and "Access denied" in source[0]["message"]


def test_doctor_bad_config_and_same_database(sync_env, monkeypatch, tmp_path, capsys):
    env = {"SOURCE_DB_URL": sync_env.source_url(), "TARGET_DB_URL": sync_env.source_url()}
    assert _doctor(monkeypatch, tmp_path, env, [{"table": "t", "primary_key": []}]) == 2
    out = capsys.readouterr().out
    assert "primary key list is empty" in out
    assert "name the same database" in out


def test_doctor_local_infile_off_is_broken(sync_env, monkeypatch, tmp_path):
    if sync_env.servers.target.server is None:
        pytest.skip("changes a global variable: needs harness-started servers")
    sync_env.source_exec("CREATE TABLE t (id INT PRIMARY KEY)")
    env = {"SOURCE_DB_URL": sync_env.source_url(), "TARGET_DB_URL": sync_env.target_url()}
    sync_env.target_exec("SET GLOBAL local_infile = OFF")
    try:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "tables.json").write_text('[{"table": "t", "primary_key": "id"}]')
        report = diagnose("tables.json", env)
    finally:
        sync_env.target_exec("SET GLOBAL local_infile = ON")
    assert report.exit_code == 2
    assert [f.check for f in report.findings if f.status == "fail"] == ["local_infile"]


def test_doctor_is_fast_for_100_tables(sync_env, monkeypatch, tmp_path):
    statements = [
        f"CREATE TABLE t{i:03d} (id INT PRIMARY KEY, updated_at DATETIME NOT NULL,"
        " KEY (updated_at))"
        for i in range(100)
    ]
    sync_env.source_exec(*statements)
    monkeypatch.chdir(tmp_path)
    tables = [
        {"table": f"t{i:03d}", "primary_key": "id", "modifier": "updated_at"} for i in range(100)
    ]
    (tmp_path / "tables.json").write_text(json.dumps(tables))
    env = {"SOURCE_DB_URL": sync_env.source_url(), "TARGET_DB_URL": sync_env.target_url()}
    started = time.perf_counter()
    report = diagnose("tables.json", env)
    seconds = time.perf_counter() - started
    print(f"doctor: 100 tables in {seconds:.2f}s")
    assert report.exit_code == 0, [f for f in report.findings if f.status != "ok"]
    assert len(report.tables) == 100
    assert seconds < 10


def test_doctor_checks_a_postgres_target(pg_sync_env, monkeypatch, tmp_path, capsys):
    env = pg_sync_env
    env.source_exec("CREATE TABLE t (id INT PRIMARY KEY)")
    user = f"doc{os.getpid()}"
    env.target_exec(
        f'DROP ROLE IF EXISTS "{user}"',
        f'CREATE ROLE "{user}" LOGIN',  # the server trusts local connections: any password
    )
    password = quote(PASSWORD, safe="")
    target = env.pg_server.url(env.target_db).replace("postgres@", f"{user}:{password}@")
    variables = {"SOURCE_DB_URL": env.source_url(), "TARGET_DB_URL": target}
    tables = [{"table": "t", "primary_key": "id", "target_schema": "raw"}]
    try:
        # a schema that does not exist, which this user may not create
        assert _doctor(monkeypatch, tmp_path, variables, tables, "--json") == 2
        out = capsys.readouterr().out
        _assert_no_password(out)
        report = json.loads(out)
        assert report["target"]["connected"] and report["target"]["version"][:2].isdigit()
        [privileges] = [f for f in report["findings"] if f["check"] == "privileges"]
        assert privileges["status"] == "fail" and "CREATE SCHEMA raw" in privileges["message"]

        env.target_exec("CREATE SCHEMA raw", f'GRANT USAGE, CREATE ON SCHEMA raw TO "{user}"')
        assert _doctor(monkeypatch, tmp_path, variables, tables) == 0
        out = capsys.readouterr().out
        _assert_no_password(out)
        assert "healthy" in out and "may create tables" in out
    finally:
        env.target_exec(f'DROP OWNED BY "{user}"', f'DROP ROLE "{user}"')


def test_doctor_checks_a_duckdb_target(duck_sync_env, monkeypatch, tmp_path, capsys):
    env = duck_sync_env
    env.source_exec("CREATE TABLE t (id INT PRIMARY KEY)")
    tables = [{"table": "t", "primary_key": "id"}]
    missing = {
        "SOURCE_DB_URL": env.source_url(),
        "TARGET_DB_URL": "duckdb:////nonexistent/x.duckdb",
    }
    assert _doctor(monkeypatch, tmp_path, missing, tables) == 2
    assert "/nonexistent: no such directory, or not writable" in capsys.readouterr().out
    variables = {"SOURCE_DB_URL": env.source_url(), "TARGET_DB_URL": env.target_url()}
    assert _doctor(monkeypatch, tmp_path, variables, tables, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"]["version"].startswith("DuckDB v1.")


def test_doctor_checks_binlog_prerequisites_with_the_fix(
    sync_env, accounts, monkeypatch, tmp_path, capsys
):
    """A binlog table: the replication grants, the binlog settings (the harness's source has
    them right), each missing piece named with the statement that fixes it."""
    sync_env.source_exec("CREATE TABLE orders (id INT PRIMARY KEY, v INT)")
    tables = [{"table": "orders", "primary_key": "id", "capture": "binlog"}]
    assert _doctor(monkeypatch, tmp_path, accounts, tables) == 2
    out = capsys.readouterr().out
    _assert_no_password(out)
    assert (
        "missing REPLICATION SLAVE, REPLICATION CLIENT to read the binlog: GRANT REPLICATION"
        " SLAVE, REPLICATION CLIENT ON *.* TO <user>" in out
    )
    user = accounts["SOURCE_DB_USER"]
    with sync_env.source.begin() as conn:
        conn.exec_driver_sql(f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'%%'")
    try:
        with sync_env.source.begin() as conn:
            conn.exec_driver_sql("SET GLOBAL binlog_row_image = 'MINIMAL'")
        assert _doctor(monkeypatch, tmp_path, accounts, tables) == 2
        out = capsys.readouterr().out
        assert "binlog_row_image is MINIMAL, capture 'binlog' needs FULL" in out
        assert "SET GLOBAL binlog_row_image = 'FULL'" in out
    finally:
        with sync_env.source.begin() as conn:
            conn.exec_driver_sql("SET GLOBAL binlog_row_image = 'FULL'")
    assert _doctor(monkeypatch, tmp_path, accounts, tables, "--json") == 0
    findings = {f["check"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert findings["binlog grants"]["status"] == "ok"
    assert findings["binlog server id"]["status"] == "ok"


def test_binlog_findings_for_mysql_no_binlog_and_short_retention():
    from mysqlsync_dagster.settings import Settings
    from mysqlsync_dagster.tools.doctor import Grants, binlog_findings

    tables = [TableConfig(table="orders", primary_key=("id",), capture="binlog")]
    variables = {
        "version": "8.0.36",
        "log_bin": "OFF",
        "binlog_format": "MIXED",
        "binlog_row_image": "FULL",
        "binlog_row_metadata": "MINIMAL",
        "server_id": str(Settings().binlog_server_id + 5),
        "binlog_expire_logs_seconds": "3600",
        "log_bin_compress": "ON",
    }
    found = binlog_findings(variables, Grants(global_privs={"ALL"}), Settings(), tables)
    failed = {f.message for f in found if f.status == "fail"}
    assert any("needs a MariaDB source" in m and "MySQL 8.0.36" in m for m in failed)
    assert any("set log_bin" in m for m in failed)
    assert any("SET GLOBAL binlog_format = 'ROW'" in m for m in failed)
    assert any("SET GLOBAL binlog_row_metadata = 'FULL'" in m for m in failed)
    assert any("set BINLOG_SERVER_ID" in m for m in failed)
    assert any("SET GLOBAL log_bin_compress = OFF" in m for m in failed)
    [retention] = [f for f in found if f.check == "binlog retention"]
    assert retention.status == "warn" and "kept only 1 h" in retention.message
