"""End to end: tables synced between two real MariaDB servers, rows compared."""


def test_sync_copies_two_tables(sync_env):
    sync_env.source_exec(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL,"
        " updated_at DATETIME NOT NULL, KEY (updated_at))",
        "INSERT INTO customers VALUES (1, 'Ada', '2024-01-01 10:00:00'),"
        " (2, 'Grace', '2024-01-02 11:00:00'), (3, 'Linus', '2024-01-03 12:00:00')",
        "CREATE TABLE countries (code CHAR(2) PRIMARY KEY, name VARCHAR(50))",
        "INSERT INTO countries VALUES ('DE', 'Germany'), ('ID', 'Indonesia'), ('XX', NULL)",
    )
    result = sync_env.sync(
        [
            {"table": "customers", "primary_key": "id", "modifier": "updated_at"},
            {"table": "countries", "primary_key": "code"},
        ]
    )
    assert result.success
    assert sync_env.target_rows("customers") == sync_env.source_rows("customers")
    assert sync_env.target_rows("countries") == [
        ("DE", "Germany"),
        ("ID", "Indonesia"),
        ("XX", None),
    ]
    [mat] = result.asset_materializations_for_node("sync_customers")
    assert mat.metadata["dagster/row_count"].value == 3
    assert mat.metadata["rows_written"].value == 3
    assert mat.metadata["strategy"].value == "swap"


def test_metadata_has_no_blank_entries(sync_env):
    """What the UI lists for a run: no blank text rows, no constants plotted as figures."""
    sync_env.source_exec(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL,"
        " updated_at DATETIME NOT NULL, KEY (updated_at))",
        "INSERT INTO customers VALUES (1, 'Ada', '2024-01-01 10:00:00')",
    )
    table = {"table": "customers", "primary_key": "id", "modifier": "updated_at"}
    sync_env.sync([table])
    result = sync_env.sync([table])  # nothing changed: no columns added, no schema change
    [mat] = result.asset_materializations_for_node("sync_customers")
    blank = [k for k, v in mat.metadata.items() if isinstance(v.value, str) and not v.value]
    assert blank == []
    assert "columns_added" not in mat.metadata and "cursor_before" in mat.metadata
    for evaluation in result.get_asset_check_evaluations():
        blank = [k for k, v in evaluation.metadata.items() if v.value in ("", None)]
        assert blank == [], evaluation.check_name
        assert "chunk_rows_first" not in evaluation.metadata
