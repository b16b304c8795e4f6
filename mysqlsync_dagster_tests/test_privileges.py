"""The sync works with least-privilege users whose passwords need escaping, and never shows them."""

from urllib.parse import quote

import dagster as dg

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster_tests.harness import table_resources

PASSWORD = "p@ss:w/rd%41!'\"`"


def test_least_privilege_users_and_special_password(sync_env):
    suffix = sync_env.source_db.split("_", 1)[1]
    reader, writer = f"reader_{suffix}", f"writer_{suffix}"
    source_server = sync_env.servers.source
    target_server = sync_env.servers.target
    with source_server.engine().begin() as conn:
        conn.exec_driver_sql(
            f"CREATE USER '{reader}'@'127.0.0.1' IDENTIFIED BY %(pw)s", {"pw": PASSWORD}
        )
        conn.exec_driver_sql(f"GRANT SELECT ON `{sync_env.source_db}`.* TO '{reader}'@'127.0.0.1'")
    with target_server.engine().begin() as conn:
        conn.exec_driver_sql(
            f"CREATE USER '{writer}'@'127.0.0.1' IDENTIFIED BY %(pw)s", {"pw": PASSWORD}
        )
        conn.exec_driver_sql(
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP"
            f" ON `{sync_env.target_db}`.* TO '{writer}'@'127.0.0.1'"
        )
    sync_env.source_exec(
        "CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(10), updated_at DATETIME NOT NULL,"
        " KEY (updated_at))",
        "INSERT INTO items VALUES (1, 'a', '2024-01-01'), (2, 'b', '2024-01-02')",
        "CREATE TABLE lookup (code CHAR(1) PRIMARY KEY)",
        "INSERT INTO lookup VALUES ('x'), ('y')",
    )
    tables = parse_tables_config(
        [
            {"table": "items", "primary_key": "id", "modifier": "updated_at"},
            {"table": "lookup", "primary_key": "code"},
        ]
    )
    resources = table_resources(
        # the source as URL parts: the password needs no escaping by the user
        MySQLResource(
            side="SOURCE",
            host="127.0.0.1",
            port=source_server.url.port,
            name=sync_env.source_db,
            user=reader,
            password=PASSWORD,
        ),
        # the target as a URL: the password is percent-encoded, as in any URL
        MySQLResource(
            side="TARGET",
            url=f"mysql://{writer}:{quote(PASSWORD, safe='')}@127.0.0.1:{target_server.url.port}"
            f"/{sync_env.target_db}",
        ),
    )
    defs = build_definitions(tables, Settings.from_environ({}))
    for _ in range(2):  # the first sync swaps, the second upserts: both within the grants
        sync_env.source_exec("UPDATE items SET v = CONCAT(v, '+'), updated_at = NOW() WHERE id = 2")
        result = dg.materialize(list(defs.assets), resources=resources, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        assert sync_env.target_rows("items") == sync_env.source_rows("items")
        assert sync_env.target_rows("lookup") == [("x",), ("y",)]
    text = "\n".join(str(event) for event in result.all_events)
    assert PASSWORD not in text and quote(PASSWORD, safe="") not in text
