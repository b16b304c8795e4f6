"""A distinctive password never reaches the CLI output, the logs or Dagster's event storage."""

import sqlite3
from pathlib import Path
from urllib.parse import quote

from mysqlsync_dagster.tools.cli import main

PASSWORD = "Zq9!secret@host:1/%sink"


def stored_text(home: Path) -> list[str]:
    """Every file under DAGSTER_HOME, and every row of every table of its SQLite databases."""
    texts = [p.read_bytes().decode("utf-8", "replace") for p in home.rglob("*") if p.is_file()]
    for db in home.rglob("*.db"):
        with sqlite3.connect(db) as conn:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                texts.extend(str(row) for row in conn.execute(f'SELECT * FROM "{table}"'))
    return texts


def test_password_never_appears_in_output_logs_or_event_storage(
    sync_env, tmp_path, monkeypatch, capsys
):
    user = f"secretive_{sync_env.source_db.split('_', 1)[1]}"
    for server in (sync_env.servers.source, sync_env.servers.target):
        with server.engine().begin() as conn:
            conn.exec_driver_sql(
                f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %(pw)s", {"pw": PASSWORD}
            )
            conn.exec_driver_sql(f"GRANT ALL ON *.* TO '{user}'@'127.0.0.1'")
    sync_env.source_exec(
        "CREATE TABLE t (id INT PRIMARY KEY, updated_at DATETIME NOT NULL, KEY (updated_at))",
        "INSERT INTO t VALUES (1, NOW()), (2, NOW())",
    )
    config = tmp_path / "tables.json"
    config.write_text(
        '[{"table": "t", "primary_key": "id", "modifier": "updated_at"},'
        ' {"table": "missing", "primary_key": "id"}]'
    )
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's demo
    monkeypatch.delenv("SOURCE_DB_URL", raising=False)
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    src, tgt = sync_env.servers.source.url, sync_env.servers.target.url
    monkeypatch.setenv("SOURCE_DB_HOST", "127.0.0.1")
    monkeypatch.setenv("SOURCE_DB_PORT", str(src.port))
    monkeypatch.setenv("SOURCE_DB_NAME", sync_env.source_db)
    monkeypatch.setenv("SOURCE_DB_USER", user)
    monkeypatch.setenv("SOURCE_DB_PASS", PASSWORD)
    monkeypatch.setenv(
        "TARGET_DB_URL",
        f"mysql://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{tgt.port}/{sync_env.target_db}",
    )
    # one run where a table syncs and another is missing, one with a wrong password
    assert main(["--config", str(config), "sync", "-v"]) == 1
    monkeypatch.setenv("SOURCE_DB_PASS", PASSWORD + "x")
    assert main(["--config", str(config), "sync", "-v", "t"]) == 1
    printed = capsys.readouterr()
    assert "access denied for user" in printed.out
    assert sync_env.target_rows("t") == sync_env.source_rows("t")

    stored = stored_text(home)
    haystack = "\n".join([printed.out, printed.err, *stored])
    # the scan really sees run metadata and failures, so a clean result means something
    assert "rows_written" in haystack and "does not exist in the source" in haystack
    for form in {
        PASSWORD,
        PASSWORD + "x",
        quote(PASSWORD, safe=""),
        quote(PASSWORD + "x", safe=""),
    }:
        assert form not in haystack, f"password form {form!r} leaked"
