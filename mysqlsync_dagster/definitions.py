"""The code location: `defs`, built from tables.json (`TABLES_CONFIG`) and the environment.

Loading it reads the environment and tables.json and never connects to a database.
"""

from mysqlsync_dagster.config import load_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.settings import Settings

settings = Settings.from_environ()
defs = build_definitions(load_tables_config(settings.tables_config), settings)
