"""The code location as a Dagster component: `MySQLSyncComponent`, configured in `defs.yaml`.

```yaml
type: mysqlsync_dagster.MySQLSyncComponent
attributes:
  tables_config: "{{ env('TABLES_CONFIG', 'tables.json') }}"   # a path to tables.json
  # or the tables inline, in tables.json's format:
  # tables:
  #   - {table: orders, primary_key: id, modifier: updated_at}
```

The repository's own instance is `mysqlsync_dagster/defs/tables/defs.yaml`; `definitions.py`
loads that folder, so `dagster dev` (workspace.yaml), `dg dev`, `dg check defs`, `dg list defs`
and the Docker image all serve the same definitions. A relative `tables_config` is read from the
working directory, as `TABLES_CONFIG` always was. Everything else (databases, `INTERVAL`,
`SYNC_TRIGGER`, ...) comes from the environment, as documented in the README.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from mysqlsync_dagster.config import TableConfig, load_tables_config, parse_tables_config
from mysqlsync_dagster.errors import ConfigError
from mysqlsync_dagster.settings import Settings


class MySQLSyncScaffolder(dg.Scaffolder):
    """`dg scaffold defs mysqlsync_dagster.MySQLSyncComponent NAME` writes a defs.yaml that
    reads tables.json (or `TABLES_CONFIG`)."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        from dagster.components.component_scaffolding import scaffold_component

        scaffold_component(request, {"tables_config": "{{ env('TABLES_CONFIG', 'tables.json') }}"})


@dg.scaffold_with(MySQLSyncScaffolder)
class MySQLSyncComponent(dg.Component, dg.Model, dg.Resolvable):
    """Keeps the tables of a MySQL/MariaDB source in sync with a target database: one
    dlt-backed asset per table, with its checks, the observed source tables, schedules and
    automation.

    Give `tables_config` (a path to a tables.json file) or `tables` (the same objects inline),
    not both. Connections and cadence come from the environment (`SOURCE_DB_URL`,
    `TARGET_DB_URL`, `INTERVAL`, ...).
    """

    tables_config: str | None = None
    tables: list[dict[str, Any]] | None = None

    def table_configs(self, where: str, settings: Settings) -> list[TableConfig]:
        if self.tables is not None and self.tables_config:
            raise ConfigError(f"{where}: give either tables_config or tables, not both")
        if self.tables is not None:
            return parse_tables_config(self.tables, f"{where}: tables")
        return load_tables_config(self.tables_config or settings.tables_config)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from mysqlsync_dagster.orchestration.factory import build_definitions

        where = os.path.relpath(Path(context.path, "defs.yaml"), context.project_root)
        settings = Settings.from_environ()
        return build_definitions(self.table_configs(where, settings), settings)
