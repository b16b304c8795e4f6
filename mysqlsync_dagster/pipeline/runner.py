"""One table's run, whoever starts it: the idle probe, the pre-sync check, the `TableSync`,
the verification with repair, the idle proof, the report and the check verdicts.

Nothing here imports Dagster. The table asset (`orchestration/table_run.py`) drives `run_table`
and turns what it yields into a `dg.MaterializeResult` and `dg.AssetCheckResult`s; the CLI's
`sync` drives the same generator directly when its run is not kept in a Dagster instance
(`tools/cli.py`), and so does not pay for importing Dagster and building an instance. What the
orchestrator decides (the partition window, the run's id, whether to follow the binlog) comes in
a `RunScope`. This module imports only what the idle probe needs; the sync and the verification
(`sync_run.py`: dlt, pyarrow, the loaders) are imported once a table has work to do, so that an
idle table's run stays a small process.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.pipeline.report import SyncReport
from mysqlsync_dagster.pipeline.windows import ALL_PARTITIONS, ModifierWindow
from mysqlsync_dagster.settings import DatabaseSettings, Settings
from mysqlsync_dagster.targets.mysql.state import STATE_TABLE
from mysqlsync_dagster.verify import idle
from mysqlsync_dagster.verify.outcome import CheckOutcome

if TYPE_CHECKING:
    from mysqlsync_dagster.pipeline.source_stream import SourceStream
    from mysqlsync_dagster.pipeline.staging import StagingSettings
    from mysqlsync_dagster.targets.base import Target

# How long a partition run waits for the table's lock (partition runs queue behind each other).
PARTITION_LOCK_WAIT_SECONDS = 60


class Database(Protocol):
    """The source or the target of a run: Dagster's `MySQLResource`, or `PlainDatabase`."""

    @property
    def engine(self) -> sa.Engine: ...

    def settings(self) -> DatabaseSettings: ...

    def target(self, schema: str | None = None) -> Target: ...


@dataclass
class PlainDatabase:
    """A `Database` from the settings alone (the CLI's runs without Dagster); its settings
    are read, and its engine made, when a run first needs them."""

    side: str  # "source" or "target"
    config: Settings
    _database: DatabaseSettings | None = None
    _engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            from mysqlsync_dagster.db import create_engine

            # the target loads files with LOAD DATA LOCAL INFILE; the source never needs it
            self._engine = create_engine(self.settings(), local_infile=self.side == "target")
        return self._engine

    def settings(self) -> DatabaseSettings:
        if self._database is None:
            self._database = self.config.database(self.side)
        return self._database

    def target(self, schema: str | None = None) -> Target:
        from mysqlsync_dagster.targets import target_for

        return target_for(self.engine, self.settings(), schema)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


@dataclass
class RunScope:
    """What the orchestrator decides for a table's run."""

    log: Any  # logging.Logger, or Dagster's log manager (info/warning/error)
    run_id: str
    window: ModifierWindow | None = None  # a partition run's modifier window
    follow_seconds: float = 0.0  # a binlog run the binlog sensor started keeps applying


@dataclass
class Finished:
    """A table run's end: its report (the materialization) and the checks' verdicts."""

    report: SyncReport
    outcomes: list[CheckOutcome]
    metadata: dict[str, Any] = field(default_factory=dict)  # beside the report's figures


def probe_idle(
    scope: RunScope,
    cfg: TableConfig,
    source_db: Database,
    target_db: Database,
    *,
    clear: bool = True,
) -> idle.Probe:
    """Is the table idle, does its proof stand (`verify/idle.py`)? If it is not idle, the
    stored proof is voided before the run writes anything (the run stores a new one if all
    its checks pass); `clear` False only looks (the CLI's look at its tables before their
    runs: a proof that stands without covering the table yet must survive until its run,
    which then only verifies its slice). An error here only means a full run (which reports
    it properly)."""
    if scope.window not in (None, ALL_PARTITIONS):  # a run of some partitions
        return idle.Probe()
    if cfg.binlog:  # its run reads the binlog from its position: as cheap when idle
        return idle.Probe()
    if target_db.settings().dialect != "mysql":  # no write times there: the source's proof
        # (never idle: a look before the run, `clear` False, has nothing to find)
        return probe_source(scope, cfg, source_db, target_db) if clear else idle.Probe()
    try:
        probed = idle.probe(cfg, source_db.engine, target_db.engine, STATE_TABLE)
        if probed.idle is None and clear:
            with target_db.engine.begin() as conn:
                idle.clear(conn, STATE_TABLE, cfg.target)
    except Exception as error:
        scope.log.info("%s: not proven idle (%s): a full run", cfg.table, type(error).__name__)
        return idle.Probe()
    return probed


def probe_source(
    scope: RunScope, cfg: TableConfig, source_db: Database, target_db: Database
) -> idle.Probe:
    """A PostgreSQL or DuckDB target's probe (`idle.probe_source`): the source's rows, if
    its proof stands. An error here only means the run counts them."""
    from mysqlsync_dagster.targets.postgres.state import StateInSchema

    try:
        target = target_db.target(cfg.target_schema)
        stored = target.read_source_proof(cfg.target) if isinstance(target, StateInSchema) else None
        probed = idle.probe_source(cfg, source_db.engine, stored)
    except Exception as error:
        scope.log.info("%s: no source proof (%s): the run counts", cfg.table, type(error).__name__)
        return idle.Probe()
    if probed.source_rows is not None:
        scope.log.info(
            "%s: the source has not been written since its rows were counted (%s): not counted"
            " again",
            cfg.table,
            f"{probed.source_rows:,}",
        )
    return probed


def run_table(
    scope: RunScope,
    cfg: TableConfig,
    source_db: Database,
    target_db: Database,
    staging: Callable[[], StagingSettings],
    settings: Settings,
    reader: SourceStream | None = None,
) -> Iterator[CheckOutcome | Finished]:
    """A table's run, in both modes: yields the pre-sync check at once if it failed (the sync
    then fails for that reason), and last the `Finished` run. Errors of the sync are raised
    as they are; the caller says whether a retry can help (`errors.is_retryable`). `reader`:
    the source reader, if the caller started it already (`start_reader`)."""
    started = time.perf_counter()
    try:
        probed = probe_idle(scope, cfg, source_db, target_db)
        if probed.idle is not None:
            yield idle_finished(scope, cfg, probed.idle, time.perf_counter() - started, settings)
            return
        if reader is None:
            reader = start_reader(cfg, source_db, probed)
        from mysqlsync_dagster.pipeline.sync_run import run_synced

        yield from run_synced(scope, cfg, source_db, target_db, staging, settings, probed, reader)
    finally:
        if reader is not None:  # kept for the next run if it can serve one
            from mysqlsync_dagster.pipeline.source_stream import give_back

            give_back(reader)


def start_reader(cfg: TableConfig, source_db: Database, probed: idle.Probe) -> SourceStream | None:
    """Start the source reader of a run that will read rows (`source_stream.py`: about 0.6 s
    of start-up, on the other core, while this process imports and prepares the sync); None
    when the run reads no rows (idle, or quiet), is a binlog run (which mostly applies
    events: its snapshot starts a reader of its own), or reads by dlt's pyarrow backend."""
    if probed.idle is not None or probed.standing is not None or cfg.binlog:
        return None
    try:
        if not source_db.settings().connectorx_tls:
            return None
    except Exception:  # bad settings: the run reports them
        return None
    from mysqlsync_dagster.pipeline import source_stream

    return source_stream.take()


def discard_reader() -> None:
    """Kill the idle source readers: the one started with the process
    (`source_stream.prestart`) when the first table reads nothing (idle, quiet) or reads
    otherwise, and those kept for a next table once the CLI's tables are done."""
    stream = sys.modules.get("mysqlsync_dagster.pipeline.source_stream")
    if stream is not None:
        stream.discard_idle()


def idle_finished(
    scope: RunScope, cfg: TableConfig, found: idle.Idle, seconds: float, settings: Settings
) -> Finished:
    """An idle table's run: nothing read or written; its checks stand as the last verification
    left them, since nothing has changed."""
    scope.log.info("%s: %s", cfg.table, found.description)
    report = found.report(cfg, settings.database_name("TARGET") or "", seconds)
    return Finished(report, found.outcomes(cfg), found.metadata())


def load_pipeline() -> None:
    """Import the sync and the verification now (the CLI: before its start-up is declared
    over, see `__main__`), rather than in the first table's run."""
    import mysqlsync_dagster.pipeline.sync_run  # noqa: F401


def secrets_of(*databases: Database) -> list[str]:
    """The passwords of the databases whose settings can be read (for redacting a failure's
    message: reading them must not raise in its place)."""
    secrets: list[str] = []
    for database in databases:
        with contextlib.suppress(Exception):
            secrets += database.settings().secrets
    return secrets


def plain_log(verbose: bool) -> logging.Logger:
    """The log of runs without Dagster: INFO to stderr with `-v`, else errors only."""
    log = logging.getLogger("mysqlsync_dagster.run")
    for old in list(log.handlers):  # bound to the stderr of an earlier call
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO if verbose else logging.ERROR)
    return log
