"""mysqlsync-dagster: keep MySQL/MariaDB tables in sync, as a Dagster code location on dlt."""
