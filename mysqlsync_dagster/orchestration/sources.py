"""The source tables as observable source assets: what the source holds now, in Dagster's terms.

An observation of a table reports its data version and what the UI shows on the source asset's
page: the table name, its columns (`dagster/column_schema`), its row count (`dagster/row_count`:
exact `COUNT(*)` for tables InnoDB estimates under `EXACT_COUNT_ROWS` rows, otherwise the
estimate, as `row_count_estimate`), its size, and the modifier's maximum.

The data version is the table's cheap probe: `MAX(modifier)` in the form the sync stores as its
cursor (one index lookup), or `CHECKSUM TABLE` for a table without a modifier (a scan: give large
tables a modifier); for a binlog table, InnoDB's time of its last write (`UPDATE_TIME`, kept in
memory: unknown after a restart), never a scan (the binlog sensor starts its syncs). It cannot
see an update that keeps the same `MAX(modifier)` (the same second); the next change or the
table's cron picks it up.

Observations are made two ways, by the same code:

- "Observe sources" in the UI (or any run selecting the source assets): the
  `observe_mysql_sources` observable source asset, one run;
- the source observer sensor, in the code server and without a run: every `SENSOR_INTERVAL`
  seconds (every `INTERVAL` when `SYNC_TRIGGER=schedule`) it probes every table and records an
  observation for each table whose data version changed since it last recorded one.

Declarative automation (automation.py) syncs a table when its source's data version changes.
"""

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa

from mysqlsync_dagster.catalog import TableFacts, modifier_maximum, read_table_facts
from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.errors import is_transient
from mysqlsync_dagster.orchestration.names import SOURCE_GROUP, source_asset_key
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.pipeline.windows import cursor_text

EXACT_COUNT_ROWS = 100_000  # below this estimate a COUNT(*) takes milliseconds
OBSERVER_NAME = "mysqlsync_source_observer"


def source_asset_spec(cfg: TableConfig, database: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=source_asset_key(cfg),
        description=(
            f"Table `{cfg.table}` in the source database (read, never written). Observed: its "
            "data version is "
            + (
                "its last write time"
                if cfg.binlog
                else f"MAX(`{cfg.modifier}`)"
                if cfg.modifier
                else "CHECKSUM TABLE"
            )
            + "."
        ),
        group_name=SOURCE_GROUP,
        kinds={"mysql"},
        metadata={"dagster/table_name": f"{database}.{cfg.table}" if database else cfg.table},
    )


@dataclass(frozen=True)
class Observation:
    """One table's state in the source."""

    data_version: str
    metadata: dict[str, Any]

    def result(self, key: dg.AssetKey) -> dg.ObserveResult:
        return dg.ObserveResult(
            asset_key=key, data_version=dg.DataVersion(self.data_version), metadata=self.metadata
        )

    def event(self, key: dg.AssetKey) -> dg.AssetObservation:
        return dg.AssetObservation(
            asset_key=key,
            metadata=self.metadata,
            tags={"dagster/data_version": self.data_version},
        )


def probe_versions(
    conn: sa.Connection, tables: Sequence[TableConfig], facts: dict[str, TableFacts]
) -> dict[str, str]:
    """The data version of each table (key -> version); tables that cannot be probed (missing,
    no grant, no such modifier) are left out: their own sync reports why."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    versions: dict[str, str] = {}
    for cfg in tables:
        table_facts = facts.get(cfg.table)
        if table_facts is None or not table_facts.exists:
            continue
        try:
            if cfg.binlog:  # InnoDB's time of its last write: a binlog table is not scanned
                from mysqlsync_dagster.verify.idle import read_clock  # (not at definitions load)

                clock = read_clock(conn, cfg.table)
                if clock is None:
                    continue
                versions[cfg.key] = f"written {clock.written}"
            elif cfg.modifier is not None:
                data_type = table_facts.columns.get(cfg.modifier)
                if data_type is None:
                    continue
                table = sa.table(cfg.table, sa.column(cfg.modifier))
                latest = modifier_maximum(table.c[cfg.modifier], data_type)
                value = conn.execute(sa.select(latest).select_from(table)).scalar()
                versions[cfg.key] = f"max {cfg.modifier} {value}"
            else:
                row = conn.exec_driver_sql(f"CHECKSUM TABLE {quote(cfg.table)}").one()
                if row[1] is None:
                    continue
                versions[cfg.key] = f"checksum {row[1]}"
        except sa.exc.DBAPIError as error:
            if is_transient(error):
                raise  # the tick (or observation) fails visibly; the next one tries again
            continue
    return versions


def describe(
    conn: sa.Connection, cfg: TableConfig, facts: TableFacts, database: str, version: str
) -> Observation:
    """The observation of one table whose data version was just probed."""
    metadata: dict[str, Any] = {
        "dagster/table_name": f"{database}.{cfg.table}",
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(
                    name=c.name,
                    type=c.column_type,
                    constraints=dg.TableColumnConstraints(
                        nullable=c.nullable, unique=(c.name,) == facts.primary_key
                    ),
                )
                for c in facts.details
            ]
        ),
    }
    if facts.rows is not None and facts.rows < EXACT_COUNT_ROWS:
        quote = conn.dialect.identifier_preparer.quote_identifier
        count = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {quote(cfg.table)}").scalar()
        metadata["dagster/row_count"] = dg.MetadataValue.int(int(count or 0))
    elif facts.rows is not None:
        metadata["row_count_estimate"] = dg.MetadataValue.int(facts.rows)
    if facts.bytes is not None:
        metadata["bytes"] = dg.MetadataValue.int(facts.bytes)
    if cfg.modifier is not None:
        latest = version.removeprefix(f"max {cfg.modifier} ")
        metadata["modifier_max"] = cursor_text(facts.columns.get(cfg.modifier), latest)
    return Observation(version, metadata)


def observe(
    source_db: MySQLResource, tables: Sequence[TableConfig], known: dict[str, str] | None = None
) -> dict[str, Observation]:
    """Observations of `tables` (key -> observation), leaving out those whose version equals
    the one in `known`."""
    database = source_db.settings().database
    with source_db.engine.connect() as conn:
        facts = read_table_facts(conn, database, [cfg.table for cfg in tables])
        versions = probe_versions(conn, tables, facts)
        return {
            cfg.key: describe(conn, cfg, facts[cfg.table], database, versions[cfg.key])
            for cfg in tables
            if cfg.key in versions and (known or {}).get(cfg.key) != versions[cfg.key]
        }


def build_source_assets(tables: Sequence[TableConfig], database: str) -> dg.AssetsDefinition:
    """One observable source asset definition for every source table ("Observe sources")."""
    by_key = {source_asset_key(cfg): cfg for cfg in tables}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # the decorator is beta; it works
        return _observable(tables, database, by_key)


def _observable(
    tables: Sequence[TableConfig], database: str, by_key: dict[dg.AssetKey, TableConfig]
) -> dg.AssetsDefinition:
    @dg.multi_observable_source_asset(
        name="observe_mysql_sources",
        specs=[source_asset_spec(cfg, database) for cfg in tables],
        can_subset=True,
        description="Observes the source tables: data version, row count, columns.",
    )
    def observe_mysql_sources(
        context: dg.AssetExecutionContext, source_db: MySQLResource
    ) -> Iterator[dg.ObserveResult]:
        chosen = [by_key[key] for key in context.selected_asset_keys]
        observations = observe(source_db, chosen)
        for cfg in chosen:
            if cfg.key not in observations:
                context.log.warning("%s: not observed (missing table or column?)", cfg.table)
                continue
            yield observations[cfg.key].result(source_asset_key(cfg))

    return observe_mysql_sources


def build_source_observer(
    tables: Sequence[TableConfig], interval_seconds: int
) -> dg.SensorDefinition:
    """The sensor recording an observation of each source table whose data version changed.
    Its cursor holds the versions it last recorded (only to skip repeats: a lost cursor costs
    one round of observations)."""
    by_key = {cfg.key: cfg for cfg in tables}

    @dg.sensor(
        name=OBSERVER_NAME,
        # the source assets' pages name this sensor under "Automation"; it records observations
        # itself and never requests a run of them
        target=dg.AssetSelection.assets(*(source_asset_key(cfg) for cfg in tables)),
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Observes the source tables every "
            f"{interval_seconds}s without a run; records an observation (data version, row "
            "count, columns) for each table whose data version changed."
        ),
    )
    def mysqlsync_source_observer(
        context: dg.SensorEvaluationContext, source_db: MySQLResource
    ) -> dg.SensorResult:
        try:
            known = dict(json.loads(context.cursor)) if context.cursor else {}
        except (ValueError, TypeError):
            known = {}
        observations = observe(source_db, tables, known)
        for key, observation in observations.items():
            known[key] = observation.data_version
        if observations:
            context.log.info(
                "source changed: %s", ", ".join(by_key[k].table for k in sorted(observations))
            )
        return dg.SensorResult(
            asset_events=[o.event(source_asset_key(by_key[k])) for k, o in observations.items()],
            cursor=json.dumps(known, sort_keys=True),
        )

    return mysqlsync_source_observer
