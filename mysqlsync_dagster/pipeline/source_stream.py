"""connectorx's streaming read of the source, run in a child process.

connectorx holds Python's GIL for as long as its Rust code waits on the network: while it
connects and runs the query (`read_sql(..., return_type="arrow_stream")`) and while it fetches
each batch. A stalled source network would freeze the whole Python process, so no thread of it
(the extraction watchdog, Dagster's own) could notice. Reading in a child process keeps the sync
process free: it receives the batches over a pipe (Arrow IPC, no conversion), its watchdog can
time out, and `SourceStream.close` then kills the child and with it the stalled connection.

The child is this file run as a script (`python -P source_stream.py`, importing only pyarrow and
connectorx). It starts when the sync starts, so that its start-up (about 0.3 s) overlaps the
sync's preparation, then waits for its one request on stdin: a JSON line with the URL (and its
password: never on a command line), the query and the batch size. It reports a failure on its
stderr as one line `ERROR_PREFIX + "<type>: <message>"` and exits 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from mysqlsync_dagster.errors import SourceReadError

ERROR_PREFIX = "mysqlsync-source-stream-error: "
RSS_PREFIX = "mysqlsync-source-stream-peak-rss-kb: "


class SourceStream:
    """A child process that reads one query with connectorx: `read()` once, then `close()`
    (also on leaving a `with` block), which kills the child if it still runs."""

    def __init__(self) -> None:
        # the reader's own peak memory, as it reported on exit; set by close()
        self.peak_rss_mb: float | None = None
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._process = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def __enter__(self) -> SourceStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read(
        self, conn: str, query: str, batch_size: int, protocol: str = "binary"
    ) -> Iterator[pa.RecordBatch]:
        """The record batches of `query` on the source at `conn` (a connectorx URL)."""
        request = {"conn": conn, "query": query, "batch_size": batch_size, "protocol": protocol}
        assert self._process.stdin is not None and self._process.stdout is not None
        with contextlib.suppress(OSError):  # a child that died: its error is reported below
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.close()
        try:
            # pyarrow reads the pipe with the GIL released while it waits
            yield from pa.ipc.open_stream(self._process.stdout)
        except (pa.ArrowInvalid, OSError) as error:  # the stream broke off: say why
            self._process.wait()
            message = self._child_error() or f"{type(error).__name__}: {error}"
            raise SourceReadError(message) from None
        if self._process.wait() != 0:
            raise SourceReadError(self._child_error() or "the source reader failed")

    def _child_lines(self) -> list[str]:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace").splitlines()
        return []

    def _reported_peak_rss_mb(self) -> float | None:
        sizes = [
            line[len(RSS_PREFIX) :] for line in self._child_lines() if line.startswith(RSS_PREFIX)
        ]
        return int(sizes[-1]) / 1024 if sizes else None

    def _child_error(self) -> str | None:
        lines = [line for line in self._child_lines() if not line.startswith(RSS_PREFIX)]
        errors = [line[len(ERROR_PREFIX) :] for line in lines if line.startswith(ERROR_PREFIX)]
        if errors:
            return errors[-1]
        if self._process.returncode and self._process.returncode < 0:
            return f"the source reader was killed by signal {-self._process.returncode}"
        return "\n".join(lines[-5:]) or None

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self.peak_rss_mb is None:  # a second close() finds its stderr closed
            self.peak_rss_mb = self._reported_peak_rss_mb()
        for stream in (self._process.stdin, self._process.stdout, self._stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


def _serve(request: dict[str, Any]) -> None:
    import connectorx as cx

    reader = cx.read_sql(
        request["conn"],
        request["query"],
        return_type="arrow_stream",
        batch_size=int(request["batch_size"]),
        protocol=request["protocol"],
    )
    with pa.ipc.new_stream(sys.stdout.buffer, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


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


def main() -> int:
    _die_with_parent()
    import connectorx  # noqa: F401 (loaded while the parent prepares the sync)

    line = sys.stdin.readline()
    if not line:  # the sync ended before extracting (it failed, or was cancelled)
        return 0
    try:
        _serve(json.loads(line))
    except BrokenPipeError:  # the parent stopped reading (closed the stream)
        return 1
    except BaseException as error:  # a driver panic included (pyo3's PanicException)
        text = f"{type(error).__name__}: {error}".replace("\n", " ")
        sys.stderr.write(ERROR_PREFIX + text + "\n")
        return 1
    finally:
        sys.stderr.write(f"{RSS_PREFIX}{_own_peak_rss_kb()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
