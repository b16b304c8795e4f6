"""The code location: `defs`, built from tables.json (`TABLES_CONFIG`) and the environment.

Loading it reads tables.json and never connects to a database.
"""

from mysqlsync_dagster.config import interval_seconds, load_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions

defs = build_definitions(load_tables_config(), interval_seconds())
