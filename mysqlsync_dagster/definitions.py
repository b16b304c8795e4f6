"""The code location: `defs`, the component instances under `mysqlsync_dagster/defs/`.

The repository's one instance (`defs/tables/defs.yaml`) builds every table of tables.json
(`TABLES_CONFIG`) with the environment's settings. Loading reads the environment and tables.json
and never connects to a database. `dagster dev` (workspace.yaml), `dg dev` ([tool.dg] in
pyproject.toml) and the Docker image all load this module.
"""

import warnings
from pathlib import Path

import dagster as dg

import mysqlsync_dagster.defs as defs_folder

with warnings.catch_warnings():
    # Dagster's own loader uses its preview and beta APIs (code references, module loading);
    # they say nothing about this code location
    warnings.simplefilter("ignore", dg.PreviewWarning)
    warnings.simplefilter("ignore", dg.BetaWarning)
    defs = dg.ComponentTree.from_module(defs_folder, project_root=Path.cwd()).build_defs()
