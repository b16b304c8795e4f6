"""mysqlsync-dagster: keep MySQL/MariaDB tables in sync, as a Dagster code location on dlt.

`MySQLSyncComponent` (the `dg` component) is imported on first use, so that the CLI and the
library modules do not pay for Dagster's component machinery.
"""

from typing import Any

__all__ = ["MySQLSyncComponent"]


def __getattr__(name: str) -> Any:
    if name == "MySQLSyncComponent":
        from mysqlsync_dagster.component import MySQLSyncComponent

        return MySQLSyncComponent
    raise AttributeError(f"module 'mysqlsync_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
