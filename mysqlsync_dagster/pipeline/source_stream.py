"""The source reader: a child process that runs the table's dlt `sql_table` resource on
dlt's connectorx backend and streams its Arrow batches to the sync process.

connectorx holds Python's GIL for as long as its Rust code waits on the network: while it
connects and runs the query (`read_sql(..., return_type="arrow_stream")`) and while it fetches
each batch. A stalled source network would freeze the whole Python process, so no thread of it
(the extraction watchdog, Dagster's own) could notice. Reading in a child process keeps the sync
process free: it receives the batches over a pipe (Arrow IPC, no conversion), its watchdog can
time out, and `SourceStream.close` then kills the child and with it the stalled connection.

The child is this file run as a script (`python -P source_stream.py`). It imports pyarrow,
connectorx and dlt's `sql_database` source (about 0.5 s), so it is started as soon as a run
knows it has rows to read (`runner.run_table`, the CLI before importing the sync), and the sync
process itself never imports dlt for a connectorx source: the two start-ups overlap on two
cores. It then serves requests, one JSON line each on its stdin (the URL, with its password:
never on a command line; the query; the batch size; the resource's name, table and key), each
answered by one Arrow IPC stream on its stdout, until its stdin closes: the run's extraction
and its repairs by key share one reader. It reports a failure on its stderr as one line
`ERROR_PREFIX + "<type>: <message>"` and exits 1.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mysqlsync_dagster.errors import SourceReadError

if TYPE_CHECKING:
    import pyarrow as pa

ERROR_PREFIX = "mysqlsync-source-stream-error: "
RSS_PREFIX = "mysqlsync-source-stream-peak-rss-kb: "


@dataclass(frozen=True)
class ResourceSpec:
    """What the child needs to build the table's dlt resource (no connection of its own: the
    rows come from the request's query)."""

    name: str  # the resource's name (the table's key)
    table: str
    schema: str  # the source database
    columns: list[str]
    primary_key: list[str]
    write_disposition: str  # "merge" for incremental tables, else "replace"


class SourceStream:
    """A child process that reads queries with dlt's connectorx backend: `read()` as often as
    needed, one after another, then `close()` (also on leaving a `with` block), which kills
    the child if it still runs. A read left unfinished (an error, a timeout, a consumer that
    stopped) closes the stream: it cannot serve another."""

    def __init__(self) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._process = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._closed = False
        self._reading = False  # a request not yet answered to its end
        self.served = 0  # requests answered to their end
        self._peak_rss_mb: float | None = None

    def __enter__(self) -> SourceStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def usable(self) -> bool:
        """Can it take another request (its child alive, no read broken off)?"""
        return not self._closed and self._process.poll() is None

    def read(
        self,
        conn: str,
        query: str,
        batch_size: int,
        protocol: str = "binary",
        spec: ResourceSpec | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The record batches of `query` on the source at `conn` (a connectorx URL), through
        the dlt resource `spec` describes (a default one when None)."""
        request = {"conn": conn, "query": query, "batch_size": batch_size, "protocol": protocol}
        if spec is not None:
            request["resource"] = asdict(spec)
        assert self._process.stdin is not None and self._process.stdout is not None
        if self._closed:
            raise SourceReadError("the source reader was closed")
        self._reading = True
        try:
            with contextlib.suppress(OSError):  # a child that died: its error is reported below
                self._process.stdin.write(json.dumps(request).encode() + b"\n")
                self._process.stdin.flush()
            # imported once the child has the query (0.3 s, while it runs); pyarrow reads the
            # pipe with the GIL released while it waits
            import pyarrow as pa

            try:
                yield from pa.ipc.open_stream(self._process.stdout)
            except (pa.ArrowInvalid, OSError) as error:  # the stream broke off: say why
                self._process.wait()
                message = self._child_error() or f"{type(error).__name__}: {error}"
                raise SourceReadError(message) from None
            self._reading = False
            self.served += 1
        finally:
            if self._reading:  # a request half answered: the child cannot serve another
                self.close()

    def _child_lines(self) -> list[str]:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace").splitlines()
        return []

    @property
    def peak_rss_mb(self) -> float | None:
        """The reader's own peak memory, as it reported after its last answer."""
        if not self._stderr.closed:
            sizes = [
                line[len(RSS_PREFIX) :]
                for line in self._child_lines()
                if line.startswith(RSS_PREFIX)
            ]
            self._peak_rss_mb = int(sizes[-1]) / 1024 if sizes else None
        return self._peak_rss_mb

    def _child_error(self) -> str | None:
        lines = [line for line in self._child_lines() if not line.startswith(RSS_PREFIX)]
        errors = [line[len(ERROR_PREFIX) :] for line in lines if line.startswith(ERROR_PREFIX)]
        if errors:
            return errors[-1]
        if self._process.returncode and self._process.returncode < 0:
            return f"the source reader was killed by signal {-self._process.returncode}"
        return "\n".join(lines[-5:]) or None

    def close(self) -> None:
        """End the child. It is killed: it holds nothing that needs a clean exit (a read in
        progress is abandoned with its connection), it has reported its peak memory after each
        answer, and an interpreter's exit with dlt loaded would cost this process 0.1 s."""
        if self._closed and self._stderr.closed:
            return
        self._closed = True
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        _ = self.peak_rss_mb  # read before its file is closed
        for stream in (self._process.stdin, self._process.stdout, self._stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


# Readers that served a run and wait for the next one (a run worker's next table, the CLI's
# next table), or the one started before the process knew it would need it (`prestart`).
MAX_IDLE_READERS = 2
_idle: list[SourceStream] = []
_idle_lock = threading.Lock()


def prestart() -> None:
    """Start a reader now, for the run that will need one: `mysqlsync-dagster sync` calls
    this first thing (`__main__`), so that the reader's start-up (about 0.6 s, mostly importing
    dlt) runs on the other core while this process imports the CLI and probes the tables. A
    run that reads nothing has it killed (`discard_idle`)."""
    with _idle_lock:
        if not _idle:
            _idle.append(SourceStream())


def take() -> SourceStream:
    """A reader for a run: an idle one (it has imported dlt already), else a new one."""
    with _idle_lock:
        while _idle:
            stream = _idle.pop()
            if stream.usable:
                return stream
            stream.close()
    return SourceStream()


def give_back(stream: SourceStream | None) -> None:
    """A run is done with `stream`: keep it for the next run of this process if it can serve
    one (a worker's runs then pay for the reader's start-up once), else end it."""
    if stream is None:
        return
    with _idle_lock:
        if any(idle is stream for idle in _idle):
            return
        if stream.usable and len(_idle) < MAX_IDLE_READERS:
            _idle.append(stream)
            return
    stream.close()


def discard_idle() -> None:
    """Kill the readers no run has taken (the process ends, or its runs read nothing)."""
    with _idle_lock:
        streams = list(_idle)
        _idle.clear()
    for stream in streams:
        stream.close()


atexit.register(discard_idle)


# -- the child --------------------------------------------------------------------------


def _resource(request: dict[str, Any]) -> Any:
    """The table's dlt `sql_table` resource on dlt's connectorx backend, streaming Arrow
    batches of the request's query (the wire SELECT, compiled by the sync process)."""
    import sqlalchemy as sa
    from dlt.sources.sql_database import sql_table
    from dlt.sources.sql_database.helpers import ConnectorXTableLoader

    spec = request.get("resource") or {
        "name": "query",
        "table": "query",
        "schema": None,
        "columns": [],
        "primary_key": [],
        "write_disposition": "append",
    }

    class QueryLoader(ConnectorXTableLoader):
        """dlt's connectorx loader, reading the request's query as it is."""

        def compile_query(self, query: Any) -> str:
            return str(request["query"])

        def make_query(self) -> Any:
            return None  # the query is already text

    metadata = sa.MetaData(schema=spec["schema"])
    sa.Table(spec["table"], metadata, *[sa.Column(c, sa.Text) for c in spec["columns"]])
    return sql_table(
        # never connected: dlt's connectorx loader reads through `conn` below
        credentials=sa.create_engine("mysql+pymysql://"),
        table=spec["table"],
        metadata=metadata,
        chunk_size=int(request["batch_size"]),
        reflection_level="minimal",
        backend="connectorx",
        table_loader_class=QueryLoader,
        backend_kwargs={
            "conn": request["conn"],
            "return_type": "arrow_stream",
            "batch_size": int(request["batch_size"]),
            "protocol": request["protocol"],
        },
        write_disposition=spec["write_disposition"],
        primary_key=spec["primary_key"] or None,
    ).with_name(spec["name"])


def _serve(request: dict[str, Any]) -> None:
    import pyarrow as pa

    writer = None
    for item in _resource(request):
        batches = item.to_batches() if isinstance(item, pa.Table) else [item]
        for batch in batches:
            if writer is None:
                writer = pa.ipc.new_stream(sys.stdout.buffer, batch.schema)
            writer.write_batch(batch)
    if writer is None:  # no rows: an empty stream
        writer = pa.ipc.new_stream(sys.stdout.buffer, pa.schema([]))
    _report_peak_rss()  # before the end of the stream, so the sync finds it once that is read
    writer.close()
    sys.stdout.buffer.flush()


def _report_peak_rss() -> None:
    sys.stderr.write(f"{RSS_PREFIX}{_own_peak_rss_kb()}\n")
    sys.stderr.flush()


def _own_peak_rss_kb() -> int:
    """This process's peak RSS in kB. Not `ru_maxrss`: after fork and exec it also counts the
    parent's RSS at the fork (Linux keeps the old image's high-water mark)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _die_with_parent() -> None:
    """Linux: be killed when the sync process dies (SIGKILLed, say) rather than linger on a
    stalled connection; a parent already gone: exit now."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        sys.exit(1)


def _warm_up() -> None:
    """What the first request would load, loaded while the sync process prepares it: the
    modules (connectorx, pyarrow, dlt), and dlt's configuration and run context, which it
    resolves when it builds its first resource (about 0.15 s)."""
    import connectorx  # noqa: F401
    import dlt.common.libs.pyarrow  # noqa: F401 (what dlt's connectorx loader imports)

    _resource({"conn": "", "query": "", "batch_size": 1, "protocol": "binary"})


def main() -> int:
    # The warm-up's imports create hundreds of thousands of objects, which the cyclic collector
    # would walk again and again as they come: it is paused while they load, and they are then
    # frozen (as `__main__` does for the CLI). A reader is ready in 1.01-1.37 s instead of
    # 1.47-2.03 s, and in an incremental run its start-up is what the sync waits for.
    gc.disable()
    _die_with_parent()
    _warm_up()
    gc.freeze()
    gc.enable()

    try:
        for line in sys.stdin:  # one request a line, until the sync closes its end
            _serve(json.loads(line))
    except BrokenPipeError:  # the parent stopped reading (closed the stream)
        return 1
    except BaseException as error:  # a driver panic included (pyo3's PanicException)
        text = f"{type(error).__name__}: {error}".replace("\n", " ")
        sys.stderr.write(ERROR_PREFIX + text + "\n")
        return 1
    finally:
        _report_peak_rss()
    return 0


if __name__ == "__main__":
    sys.exit(main())
