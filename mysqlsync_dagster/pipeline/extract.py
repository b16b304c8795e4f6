"""Extraction: the table's dlt `sql_table` resource, reading a source table's rows as wire text.

The resource runs on dlt's connectorx backend (Arrow record batches of up to `batch_size`
rows) in the source reader, a child process (`source_stream.py`): the sync process receives the
batches, and does not import dlt itself. Every column is selected as its wire text (see
`wire.py`): no value goes through a lossy Python type. A TLS source is read the same way, its
certificate and host name verified as the PyMySQL connections verify them (see
`DatabaseSettings.connectorx_url`); only a source with a client certificate (mutual TLS), which
connectorx's driver cannot present, is read by dlt's pyarrow backend over the PyMySQL engine,
in the sync process.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from mysqlsync_dagster.config import TableConfig
from mysqlsync_dagster.db import PLAIN_MYSQL
from mysqlsync_dagster.errors import ReadTimeout
from mysqlsync_dagster.pipeline.source_stream import ResourceSpec, SourceStream
from mysqlsync_dagster.pipeline.wire import WireColumn
from mysqlsync_dagster.settings import DatabaseSettings

if TYPE_CHECKING:
    import pyarrow as pa


def query_text(query: Any) -> str:
    """The wire SELECT as connectorx takes it. SQLAlchemy's MySQL dialect compiles for a
    driver (PyMySQL) that doubles every `%`; connectorx sends the text as is, so it is
    compiled for a driver-less dialect instead."""
    return str(query.compile(dialect=PLAIN_MYSQL, compile_kwargs={"literal_binds": True}))


def resource_spec(
    cfg: TableConfig, wire: list[WireColumn], source: DatabaseSettings
) -> ResourceSpec:
    """The table's dlt resource, as the source reader builds it."""
    return ResourceSpec(
        name=cfg.key,
        table=cfg.table,
        schema=source.database,
        columns=[w.column.name for w in wire],
        primary_key=list(cfg.primary_key),
        write_disposition="merge" if cfg.incremental else "replace",
    )


def read_stream(
    stream: SourceStream,
    cfg: TableConfig,
    wire: list[WireColumn],
    query: Any,
    source: DatabaseSettings,
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """The batches of `query` (the wire SELECT) through `stream`, the source reader. connectorx
    has no read timeout of its own: with `DB_READ_TIMEOUT`, a stream that delivers no batch for
    that long fails (`ReadTimeout`) and its reader is killed."""
    batches = stream.read(
        source.connectorx_url(),
        query_text(query),
        batch_rows,
        spec=resource_spec(cfg, wire, source),
    )
    timeout = source.read_timeout
    try:
        yield from iterate_with_timeout(batches, timeout) if timeout else batches
    except BaseException:
        stream.close()  # a read broken off (or stalled): its reader cannot serve another
        raise


def iterate_with_timeout(items: Iterator[Any], timeout: float) -> Iterator[Any]:
    """Yield from `items`, produced in a thread, failing when the next one takes longer than
    `timeout` seconds. The producer stops handing items over once this generator is finished;
    one stuck in a blocking call is left behind (a daemon thread) until that call returns."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)  # bounds memory
    finished = threading.Event()

    def hand_over(kind: str, value: Any) -> bool:
        while not finished.is_set():
            with contextlib.suppress(queue.Full):
                handoff.put((kind, value), timeout=0.2)
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over("item", item):
                    return
            hand_over("done", None)
        except BaseException as error:  # re-raised by the consumer
            hand_over("error", error)

    threading.Thread(target=produce, name="mysqlsync-read", daemon=True).start()
    try:
        while True:
            try:
                kind, value = handoff.get(timeout=timeout)
            except queue.Empty:
                raise ReadTimeout(
                    f"no rows from the source for {timeout:.0f}s (DB_READ_TIMEOUT): read timed out"
                ) from None
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        finished.set()


# Bytes of source rows per extraction batch, at most (as InnoDB stores them; as Arrow text they
# take 2-3x that). `batch_size` rows of a narrow table fit (1M-row `orders`: 94 bytes a row);
# a wide one is read in smaller batches so that the batches in flight stay bounded (measured
# on the 40-column benchmark table, 380 bytes a row, staging mode: peak RSS 600 MB at 50,000
# rows a batch, 526 MB at 25,000, 430-457 MB at 10,000, and no slower).
EXTRACT_BATCH_BYTES = 5 * 1024 * 1024


def extract_batch_rows(batch_size: int, avg_row_bytes: int | None) -> int:
    """Rows per extraction batch: `batch_size`, fewer for rows wider than the byte budget."""
    if not avg_row_bytes:
        return batch_size
    return max(1, min(batch_size, EXTRACT_BATCH_BYTES // int(avg_row_bytes)))


def backend_name(source: DatabaseSettings) -> str:
    """connectorx (about 6x faster here), with or without TLS, unless the source needs a client
    certificate, which its MySQL driver cannot present: then dlt's pyarrow backend over the
    PyMySQL engine."""
    return "connectorx" if source.connectorx_tls else "pyarrow"


def table_resource(
    cfg: TableConfig,
    wire: list[WireColumn],
    query: sa.Select[Any],
    source: DatabaseSettings,
    engine: sa.Engine,
    batch_rows: int,
) -> Any:
    """The dlt resource on dlt's pyarrow backend over the PyMySQL `engine`, in this process:
    for a source that needs a client certificate (`backend_name`)."""
    from dlt.sources.sql_database import sql_table

    metadata = sa.MetaData(schema=source.database)
    sa.Table(cfg.table, metadata, *[sa.Column(w.column.name, sa.Text) for w in wire])
    return sql_table(
        credentials=engine,
        table=cfg.table,
        metadata=metadata,
        chunk_size=batch_rows,
        reflection_level="minimal",
        query_adapter_callback=lambda _query, _table: query,
        backend="pyarrow",
        write_disposition="merge" if cfg.incremental else "replace",
        primary_key=list(cfg.primary_key),
    ).with_name(cfg.key)
