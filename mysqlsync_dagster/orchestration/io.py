"""Reading a synced table back, for downstream assets: the table assets' I/O manager.

Table assets report a `dg.MaterializeResult`, so Dagster never hands this manager a value to
store; what it does is `load_input`: a downstream asset that takes a table asset as an input
gets the target table (or the rows of its partitions' window) as Arrow, pandas or a stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg
import sqlalchemy as sa

from mysqlsync_dagster.catalog import DLT_COLUMNS
from mysqlsync_dagster.db import PLAIN_MYSQL, run_sql
from mysqlsync_dagster.db import quote_identifier as quote
from mysqlsync_dagster.orchestration.names import IO_MANAGER_KEY
from mysqlsync_dagster.orchestration.partitions import window_for_range
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.pipeline.windows import ModifierWindow, window_condition

if TYPE_CHECKING:
    import pyarrow as pa


class TargetTableReader(dg.ConfigurableIOManager):
    """Serves synced target tables to downstream assets; stores nothing."""

    target_db: MySQLResource
    read_batch_size: int = 50_000

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is not None:
            raise TypeError(
                f"{IO_MANAGER_KEY} only reads synced tables back; it cannot store a "
                f"{type(obj).__name__} (give that asset another io_manager_key)"
            )

    def load_input(self, context: dg.InputContext) -> pa.Table | pa.RecordBatchReader | Any:
        """The upstream asset's target table, without the `_dlt_*` columns.

        Read with connectorx (its Arrow type mapping), as a `pa.Table`; as a pandas DataFrame
        when the input is annotated `pd.DataFrame`; as a streaming `pa.RecordBatchReader` of
        `read_batch_size` rows when annotated so (for tables larger than memory). When the
        input is partitioned (a downstream asset with the same time partitions, or a partition
        mapping), only the rows of those partitions' window over the modifier are read, by the
        rules the sync uses (the first partition also holds earlier and NULL modifiers, the
        last one later ones); otherwise the whole table.
        """
        upstream = context.upstream_output
        metadata = (upstream.definition_metadata if upstream else None) or {}
        table, modifier = (
            getattr(metadata.get(key), "value", metadata.get(key))
            for key in ("target_table", "modifier")
        )
        if not table:
            raise dg.Failure(
                f"{IO_MANAGER_KEY} can only read tables synced by mysqlsync assets "
                f"(asset {context.asset_key.to_user_string()} has no 'target_table' metadata)"
            )
        schema = getattr(metadata.get("target_schema"), "value", metadata.get("target_schema"))
        settings = self.target_db.settings()
        dialect: sa.Dialect = PLAIN_MYSQL
        if settings.dialect == "mysql":
            types, source = self._mysql_columns(str(table)), quote(str(table))
        else:  # PostgreSQL or DuckDB: the table's schema, as the sync wrote it
            target = self.target_db.target(str(schema or "") or None)
            types, source = self._schema_columns(target.schema, str(table)), target.qualified(table)
            dialect = self.target_db.engine.dialect
        columns = [name for name in types if name not in DLT_COLUMNS]
        if not columns:
            raise dg.Failure(f"target table {table!r} does not exist yet: materialize it first")
        column_list = ", ".join(dialect.identifier_preparer.quote_identifier(c) for c in columns)
        query = f"SELECT {column_list} FROM {source}"
        window = partition_window(context)
        if window is not None and modifier in types:
            condition = window_condition(sa.column(str(modifier)), types[str(modifier)], window)
            compiled = condition.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            query += f" WHERE {compiled}"
            context.log.info("reading %s rows with %s in %s", table, modifier, window.describe())
        wanted = context.dagster_type.typing_type if context.dagster_type else None
        import pyarrow as pa

        if settings.dialect == "duckdb":  # read in this process, by DuckDB itself
            return self._read_duckdb(query, wanted)
        import connectorx as cx

        url = settings.connectorx_url()
        if wanted is pa.RecordBatchReader:
            return cx.read_sql(
                url, query, return_type="arrow_stream", batch_size=self.read_batch_size
            )
        data = cx.read_sql(url, query, return_type="arrow")
        if getattr(wanted, "__name__", "") == "DataFrame":
            return data.to_pandas()
        return data

    def _read_duckdb(self, query: str, wanted: Any) -> Any:
        import pyarrow as pa

        with self.target_db.engine.connect() as conn:
            result = conn.connection.dbapi_connection.execute(query)  # type: ignore[union-attr]
            if wanted is pa.RecordBatchReader:  # read whole first: the connection goes back
                table = result.to_arrow_table()
                return pa.RecordBatchReader.from_batches(
                    table.schema, table.to_batches(max_chunksize=self.read_batch_size)
                )
            data = result.to_arrow_table()
        return data.to_pandas() if getattr(wanted, "__name__", "") == "DataFrame" else data

    def _mysql_columns(self, table: str) -> dict[str, str]:
        with self.target_db.engine.connect() as conn:
            return {
                name: data_type
                for name, data_type in run_sql(
                    conn,
                    "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE"
                    " TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %(t)s ORDER BY ORDINAL_POSITION",
                    {"t": table},
                )
            }

    def _schema_columns(self, schema: str, table: str) -> dict[str, str]:
        """A PostgreSQL or DuckDB copy's columns, by the MySQL type names the windows know
        (timestamptz is a TIMESTAMP's instant, timestamp a DATETIME)."""
        names = {
            "timestamp with time zone": "timestamp",
            "timestamp without time zone": "datetime",
            "timestamp": "datetime",  # DuckDB's
        }
        with self.target_db.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = :s AND table_name = :t ORDER BY ordinal_position"
                ),
                {"s": schema, "t": table},
            ).all()
        return {n: names.get(t.lower(), t.lower()) for n, t in rows}


def partition_window(context: dg.InputContext) -> ModifierWindow | None:
    """The modifier window of a partitioned input (its upstream time partitions), else None."""
    if not context.has_asset_partitions:
        return None
    partitions_def = context.asset_partitions_def
    if not isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return None
    key_range = context.asset_partition_key_range
    return window_for_range(partitions_def, key_range.start, key_range.end)
