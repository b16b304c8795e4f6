"""Bad input fails that table's run with a message naming what and where; nothing is written."""

import pytest

from mysqlsync_dagster.tools.cli import main
from mysqlsync_dagster_tests.harness import failure_message

PASSWORD = "Bad!Input@Pw:9/%"


def target_tables(sync_env):
    with sync_env.target.connect() as conn:
        return sorted(r[0] for r in conn.exec_driver_sql("SHOW TABLES"))


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            {"table": "nope", "primary_key": "id"},
            "table 'nope' does not exist in the source database",
        ),
        (
            {"table": "t", "primary_key": "uid"},
            "primary key column(s) ['uid'] not found in the source (columns: ['id', 'v', 'j', 'changed'])",
        ),
        (
            {"table": "t", "primary_key": "v"},
            "tables.json says primary_key ['v'] but the source table's primary key is ['id']",
        ),
        (
            {"table": "t", "primary_key": "id", "modifier": "updated"},
            "modifier column 'updated' not found in the source",
        ),
        (
            {"table": "t", "primary_key": "id", "modifier": "j"},
            "modifier column 'j' has type longtext, which cannot order changes",
        ),
    ],
)
def test_configuration_that_does_not_match_the_source(sync_env, table, expected):
    sync_env.source_exec(
        "CREATE TABLE t (id INT PRIMARY KEY, v INT, j JSON, changed DATETIME)",
        "INSERT INTO t VALUES (1, 1, '{}', NOW())",
    )
    sync_env.source_exec("CREATE TABLE ok (id INT PRIMARY KEY)", "INSERT INTO ok VALUES (7)")
    result = sync_env.sync([table, {"table": "ok", "primary_key": "id"}], raise_on_error=False)
    node = "sync_" + ("nope" if table["table"] == "nope" else "t")
    assert expected in failure_message(result, node)
    # the other table still synced: one table failing never stops the others
    assert sync_env.target_rows("ok") == [(7,)]
    assert "t" not in target_tables(sync_env) and "nope" not in target_tables(sync_env)


def test_key_that_is_not_unique_in_a_source_without_primary_key(sync_env):
    sync_env.source_exec(
        "CREATE TABLE events (code VARCHAR(10), seq INT, payload TEXT)",
        "INSERT INTO events VALUES ('a', 1, 'x'), ('a', 1, 'y'), ('b', 1, 'z'), (NULL, 2, 'n')",
    )
    result = sync_env.sync(
        [{"table": "events", "primary_key": ["code", "seq"]}], raise_on_error=False
    )
    message = failure_message(result, "sync_events")
    assert "primary_key ['code', 'seq'] does not identify rows in the source" in message
    assert "code='a', seq=1 (2 rows)" in message
    assert "1 rows have a NULL key column" in message
    assert "events" not in target_tables(sync_env)


def test_source_without_primary_key_but_unique_key_syncs(sync_env):
    sync_env.source_exec(
        "CREATE TABLE events (code VARCHAR(10) NOT NULL, seq INT NOT NULL, payload TEXT,"
        " UNIQUE KEY uq (seq, code))",
        "INSERT INTO events VALUES ('a', 1, 'x'), ('a', 2, 'y'), ('b', 1, 'z')",
    )
    cfg = {"table": "events", "primary_key": ["code", "seq"]}
    assert sync_env.sync([cfg]).success
    assert sync_env.target_rows("events", "1, 2") == sync_env.source_rows("events", "1, 2")
    with sync_env.target.connect() as conn:
        ddl = conn.exec_driver_sql("SHOW CREATE TABLE events").one()[1]
    assert "PRIMARY KEY (`code`,`seq`)" in ddl


@pytest.mark.parametrize(
    ("side", "url_template", "expected"),
    [
        (
            "SOURCE",
            "mysql://root:{pw}@127.0.0.1:{port}/{db}",
            "source database at 127.0.0.1:{port}: access denied for user 'root'; check "
            "SOURCE_DB_USER and SOURCE_DB_PASS",
        ),
        (
            "TARGET",
            "mysql://nobody_here:{pw}@127.0.0.1:{port}/{db}",
            "target database at 127.0.0.1:{port}: access denied for user 'nobody_here'",
        ),
        (
            "SOURCE",
            "mysql://root:{pw}@127.0.0.1:1/{db}",
            "cannot reach the source database server at 127.0.0.1:1",
        ),
        (
            "TARGET",
            "mysql://root@127.0.0.1:{port}/no_such_database",
            "target database 'no_such_database' does not exist on 127.0.0.1:{port}; check TARGET_DB_NAME",
        ),
    ],
)
def test_connection_problems_are_one_actionable_line(
    sync_env, tmp_path, monkeypatch, capsys, side, url_template, expected
):
    from urllib.parse import quote

    sync_env.source_exec("CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's demo
    monkeypatch.setenv("SYNC_RETRIES", "0")  # a refused connection would be retried for minutes
    config = tmp_path / "tables.json"
    config.write_text('[{"table": "t", "primary_key": "id"}]')
    servers = {"SOURCE": sync_env.servers.source.url, "TARGET": sync_env.servers.target.url}
    databases = {"SOURCE": sync_env.source_db, "TARGET": sync_env.target_db}
    monkeypatch.setenv("SOURCE_DB_URL", sync_env.source_url())
    monkeypatch.setenv("TARGET_DB_URL", sync_env.target_url())
    port = servers[side].port
    monkeypatch.setenv(
        f"{side}_DB_URL",
        url_template.format(pw=quote(PASSWORD, safe=""), port=port, db=databases[side]),
    )
    code = main(["--config", str(config), "sync"])
    out = capsys.readouterr()
    assert code == 1
    assert expected.format(port=port) in out.out
    assert PASSWORD not in out.out + out.err
    assert quote(PASSWORD, safe="") not in out.out + out.err


def test_modifier_that_is_a_key_column_is_allowed_but_reported(sync_env):
    sync_env.source_exec(
        "CREATE TABLE log (seq BIGINT PRIMARY KEY, msg VARCHAR(20))",
        "INSERT INTO log VALUES (1, 'a'), (2, 'b')",
    )
    cfg = {"table": "log", "primary_key": "seq", "modifier": "seq"}
    result = sync_env.sync([cfg])
    [mat] = result.asset_materializations_for_node("sync_log")
    assert "the modifier 'seq' is part of the primary key" in mat.metadata["warnings"].value
    sync_env.source_exec("INSERT INTO log VALUES (3, 'c')")
    sync_env.sync([cfg])
    assert sync_env.target_rows("log") == sync_env.source_rows("log")


def test_a_missing_dagster_home_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from mysqlsync_dagster.tools.cli import main

    config = tmp_path / "tables.json"
    config.write_text('[{"table": "t", "primary_key": "id"}]')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no such dir"))
    monkeypatch.setenv("SOURCE_DB_URL", "mysql://u@127.0.0.1:9/s")
    monkeypatch.setenv("TARGET_DB_URL", "mysql://u@127.0.0.1:9/t")
    assert main(["--config", str(config), "sync"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DAGSTER_HOME: ") and "is not a directory" in err
    assert "Traceback" not in err
