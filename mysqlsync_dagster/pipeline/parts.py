"""Where extracted batches wait for the loader: in memory (direct mode) or on disk (staging).

One table run extracts and loads at the same time: an `Extraction` thread iterates the table's
dlt `sql_table` resource and hands each Arrow batch to a part sink; the loader takes the
finished parts in order (`Extraction.parts()`) while the next ones are read. The two modes differ
only in the sink:

- `MemoryParts` (direct): every batch is a part, handed over in memory; when the loader falls
  behind, the excess waits in short-lived Parquet files, so memory stays bounded by a few
  batches whatever the table's size;
- `DiskParts` (staging, `pipeline/staging.py`): batches are written to compressed Parquet part
  files that are kept (with their manifest) after the run, for inspection and retention.

The extraction's error, if any, is re-raised in the loading thread by `parts()`; `stop()` ends
the extraction after the batch in hand (a failed load, or the run is over).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias

from mysqlsync_dagster.pipeline.report import SyncReport

if TYPE_CHECKING:  # imported where rows move: a run that reads none never imports pyarrow
    import pyarrow as pa

Part: TypeAlias = "pa.Table | Path"  # a batch in memory, or a Parquet file of batches
PROGRESS_SECONDS = 10.0


class PartSink(Protocol):
    """Turns extracted batches into loadable parts."""

    max_pending: int | None  # parts that may wait for the loader (None: no bound)

    def add(self, table: pa.Table, waiting: int) -> Part | None:
        """Take one batch (`waiting`: bytes of the parts in memory not yet taken by the
        loader); return a part when one is complete."""

    def flush(self) -> Part | None:
        """The extraction ended: the last, incomplete part, if any."""

    def abandon(self) -> None:
        """The extraction failed or was stopped: release what an unfinished part holds."""

    def taken(self, part: Part) -> None:
        """The loader has read `part` (its rows may still be loading)."""

    def loaded(self, report: SyncReport, extract_seconds: float, load_seconds: float) -> None:
        """The load committed: record it, and add the sink's own figures to `report`."""


class MemoryParts:
    """Direct mode: each batch is a part, handed over in memory while the loader keeps up.

    When the loader falls behind (`MAX_IN_MEMORY_BYTES` of parts already waiting), further
    batches are spilled to a Parquet file in `spill_dir` instead, deleted once the loader has
    read it. The extraction never waits for the loader: the connectorx reader, held up, would
    buffer the rows itself (measured: a 10M-row full copy whose load is slower than its
    extraction, the reader grew to 951 MB when the extraction waited; spilled, the sync process
    peaked at 325 MB and the reader at 116 MB).

    The limit is in bytes, not parts: a loader that inserts in bursts (DuckDB's, a row group
    pair at a time) keeps up on average but lets a few parts wait meanwhile. With two parts
    allowed, 13 of the 20 parts of the 1M-row `orders` were spilled into DuckDB: 1.1 s of
    writing Parquet and 0.4 s of reading it back, of a 7 s run on two cores.
    """

    MAX_IN_MEMORY_BYTES = 64 * 2**20
    max_pending: int | None = None  # never blocks: the excess waits on disk

    def __init__(self, spill_dir: Path) -> None:
        self.spill_dir = spill_dir
        self.spilled = 0

    def add(self, table: pa.Table, waiting: int) -> Part | None:
        if waiting == 0 or waiting + table.nbytes <= self.MAX_IN_MEMORY_BYTES:
            return table
        import pyarrow.parquet as pq

        path = self.spill_dir / f"spill-{self.spilled:06d}.parquet"
        # lz4: the fastest codec here; the file lives for seconds
        pq.write_table(table, path, compression="lz4", use_dictionary=False)
        self.spilled += 1
        return path

    def flush(self) -> Part | None:
        return None

    def abandon(self) -> None:
        return None

    def taken(self, part: Part) -> None:
        if isinstance(part, Path):
            part.unlink(missing_ok=True)

    def loaded(self, report: SyncReport, extract_seconds: float, load_seconds: float) -> None:
        return None


def new_load_id() -> str:
    """A load id in dlt's format (the load's Unix time), stamped on every row as `_dlt_load_id`."""
    return f"{time.time():.6f}"


def use_jemalloc(explicit_pool: str | None) -> None:
    """Make jemalloc Arrow's allocator for this process, unless `ARROW_DEFAULT_MEMORY_POOL`
    (`explicit_pool`) chose one.

    Arrow's default allocator in these wheels (mimalloc) keeps freed pages in per-thread heaps;
    with the loader's threads, jemalloc holds peak memory lower (measured: the 40-column
    benchmark table 562 -> 453 MB, 3M orders rows 462 -> 405 MB). Called when a table run
    reads rows (once its query is sent to the source), not on import.
    """
    import pyarrow as pa

    if explicit_pool or pa.default_memory_pool().backend_name == "jemalloc":
        return
    with contextlib.suppress(NotImplementedError):  # a pyarrow built without jemalloc
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)  # return freed pages at once, not after 1 s


def as_table(item: pa.Table | pa.RecordBatch) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_batches([item]) if isinstance(item, pa.RecordBatch) else item


class Extraction:
    """Iterates `batches` in a thread into `sink`; `parts()` yields each finished part."""

    def __init__(
        self,
        batches: Callable[[], Iterable[pa.Table | pa.RecordBatch]],
        sink: PartSink,
        progress: Callable[[int], None] | None = None,
        read_done: Callable[[], None] | None = None,
    ) -> None:
        self.sink = sink
        self.rows = 0
        self.seconds = 0.0
        self._batches = batches
        self._progress = progress
        self._read_done = read_done  # called in the thread once the source's rows are all read
        self._ready: deque[Part] = deque()
        self._changed = threading.Condition()
        self._finished = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mysqlsync-extract", daemon=True)

    def start(self) -> Extraction:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            items = iter(self._batches())
            for item in items:
                if self._stop.is_set():
                    getattr(items, "close", lambda: None)()  # closes the source's stream
                    return
                table = as_table(item)
                self.rows += table.num_rows
                if self._progress is not None:
                    self._progress(self.rows)
                with self._changed:
                    waiting = sum(p.nbytes for p in self._ready if not isinstance(p, Path))
                self._hand_over(self.sink.add(table, waiting))
            if self._read_done is not None:
                self._read_done()
            self._hand_over(self.sink.flush())
            self.seconds = time.perf_counter() - started
        except BaseException as error:  # re-raised by `parts()` in the loading thread
            self._error = error
        finally:
            if self._error is not None or self._stop.is_set():
                with contextlib.suppress(Exception):
                    self.sink.abandon()
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def _hand_over(self, part: Part | None) -> None:
        if part is None:
            return
        with self._changed:
            limit = self.sink.max_pending
            while limit is not None and len(self._ready) >= limit and not self._stop.is_set():
                self._changed.wait(0.5)
            self._ready.append(part)
            self._changed.notify_all()

    def parts(self) -> Iterator[Part]:
        """Each part as soon as it is finished, until the extraction ends; its error
        re-raised (no use loading more of a failed extraction)."""
        while True:
            with self._changed:
                while not self._finished and not self._ready:
                    self._changed.wait()
                if self._error is not None:
                    raise self._error
                if not self._ready:
                    return
                part = self._ready.popleft()
                self._changed.notify_all()
            yield part

    def stop(self, timeout: float = 60.0) -> None:
        """Stop extracting after the batch in hand and wait for the thread. A read stalled
        past `timeout` is left to the read watchdog (`DB_READ_TIMEOUT`)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(timeout)


class ExtractionProgress:
    """Logs rows read, rows/s and (for a full copy) the ETA, at most every `every_seconds`."""

    def __init__(
        self,
        log: Callable[..., None],
        table: str,
        total: int | None,
        every_seconds: float = PROGRESS_SECONDS,
    ) -> None:
        self.log = log
        self.table = table
        self.total = total
        self.every_seconds = every_seconds
        self.started = self.last_logged = time.perf_counter()

    def __call__(self, rows: int) -> None:
        now = time.perf_counter()
        if now - self.last_logged < self.every_seconds:
            return
        self.last_logged = now
        rate = rows / (now - self.started)
        eta = f", ETA {max(self.total - rows, 0) / rate:.0f}s" if self.total and rate else ""
        of_total = f" of ~{self.total:,}" if self.total else ""
        self.log(
            "%s: extracted %s%s rows, %.0f rows/s%s", self.table, f"{rows:,}", of_total, rate, eta
        )
