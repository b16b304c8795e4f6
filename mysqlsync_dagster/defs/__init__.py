"""The code location's component instances, one folder each (`dg list defs` shows them).

`tables/defs.yaml` is the repository's: every table of tables.json (`TABLES_CONFIG`). Add a
folder with its own defs.yaml (`dg scaffold defs mysqlsync_dagster.MySQLSyncComponent NAME`)
for another set of tables; its assets must not share names with the first set's.
"""
