"""A network that stops forwarding: the read timeout fires instead of the sync hanging."""

import contextlib
import logging
import select
import socket
import threading
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.orchestration.factory import build_definitions
from mysqlsync_dagster.orchestration.resources import MySQLResource
from mysqlsync_dagster.settings import Settings
from mysqlsync_dagster_tests.harness import table_resources


class StallingProxy:
    """A loopback TCP proxy to `port`; while `stalled` is set it stops relaying bytes (the
    connections stay open, as behind a dead router or a full network queue). With
    `stall_after_bytes` it sets `stalled` itself, once, when one connection has carried that
    many bytes from the server (mid-result, whatever the timing)."""

    def __init__(self, port: int, stall_after_bytes: int | None = None) -> None:
        self.target_port = port
        self.stall_after_bytes = stall_after_bytes
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed: the test is over
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b, from_server in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, from_server), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        # Blocking sockets, polled with select: a slow reader applies backpressure (sendall
        # waits), as on a real network, instead of the proxy giving up on it.
        relayed = 0
        while not self.stop.is_set():
            if self.stalled.is_set():
                time.sleep(0.05)
                continue
            try:
                readable, _, _ = select.select([src], [], [], 0.2)
                if not readable:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                relayed += len(data)
                trip = self.stall_after_bytes
                if from_server and trip is not None and relayed >= trip:
                    self.stall_after_bytes = None
                    self.stalled.set()
            except (OSError, ValueError):
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.mark.parametrize("side", ["target", "source"])
def test_stalled_connection_times_out_and_the_run_recovers(sync_env, monkeypatch, caplog, side):
    """Stall the target mid-load, or the source mid-extract: the read timeout fires (PyMySQL's
    on the target, the extraction watchdog on connectorx's stream), the run retries and
    converges."""
    from mysqlsync_dagster.targets.mysql.loader import work_table_name

    rows = 20000 if side == "target" else 300000
    sync_env.source_exec(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))",
        f"INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_{rows}",
    )
    handle = getattr(sync_env.servers, side)
    database = sync_env.target_db if side == "target" else sync_env.source_db
    # the source stalls once the extraction has streamed 1 MB of its ~6 MB of rows
    proxy = StallingProxy(handle.url.port, 1_000_000 if side == "source" else None)
    proxied = handle.url.set(port=proxy.port, database=database).render_as_string(False)
    direct = {"target": sync_env.target_url(), "source": sync_env.source_url()}
    source_db, target_db = (
        MySQLResource(
            side=name.upper(),
            url=proxied if name == side else direct[name],
            read_timeout=2,
            write_timeout=2,
        )
        for name in ("source", "target")
    )
    resources = table_resources(source_db, target_db)
    tables = parse_tables_config([{"table": "t", "primary_key": "id", "batch_size": 1000}])
    defs = build_definitions(tables, Settings.from_environ({"SYNC_RETRY_DELAY": "1"}))
    # the target's load is under way when the copy built aside has rows
    probe = f"SELECT COUNT(*) >= 3000 FROM `{work_table_name('t', 'new')}`"
    watcher = handle.engine(database, poolclass=sa.pool.NullPool)
    stalled = threading.Event()

    def stall_for_a_while() -> None:
        deadline = time.monotonic() + 60
        while side == "target" and time.monotonic() < deadline:  # a direct connection
            try:
                with watcher.connect() as conn:
                    conn.exec_driver_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
                    if conn.exec_driver_sql(probe).scalar():
                        proxy.stalled.set()
                        break
            except sa.exc.SQLAlchemyError:
                pass
            time.sleep(0.005)
        if not proxy.stalled.wait(max(deadline - time.monotonic(), 0)):
            return
        stalled.set()
        time.sleep(4.0)  # longer than the 2 s read timeout
        proxy.stalled.clear()

    staller = threading.Thread(target=stall_for_a_while)
    # dlt logs its load-job retries on its own logger, which may not propagate to the root
    dlt_logger = logging.getLogger("dlt")
    dlt_logger.addHandler(caplog.handler)
    started = time.monotonic()
    staller.start()
    try:
        result = dg.materialize(list(defs.assets), resources=resources, raise_on_error=False)
    finally:
        staller.join()
        proxy.close()
        dlt_logger.removeHandler(caplog.handler)
    elapsed = time.monotonic() - started
    assert stalled.is_set(), f"the {side} work ended before the stall: the test proved nothing"
    # a timeout, not a hang, failed the work, which Dagster's retry policy retried
    retried = [
        *(r.getMessage() for r in caplog.records if "retried" in r.getMessage()),
        *(
            e.event_specific_data.error.to_string()
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
        ),
    ]
    timed_out = {"source": "(DB_READ_TIMEOUT): read timed out", "target": "(timed out)"}[side]
    assert any(timed_out in message for message in retried), retried
    assert result.success
    assert sync_env.target_rows("t") == sync_env.source_rows("t")
    # the stall cost a timeout and a retry, not a hang
    assert elapsed < 120, f"took {elapsed:.0f}s"


def test_extraction_connects_to_the_configured_host_and_port(sync_env):
    """connectorx's driver would switch a loopback connection to the server's Unix socket,
    bypassing a tunnel or proxy on that port: it must stay on the TCP connection asked for."""
    import connectorx as cx

    from mysqlsync_dagster.settings import DatabaseSettings

    url = sync_env.servers.source.url.set(database=sync_env.source_db)
    assert url.host == "127.0.0.1"
    this_session = "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"
    for return_type in ("arrow", "arrow_stream"):
        data = cx.read_sql(
            DatabaseSettings(url=url).connectorx_url(), this_session, return_type=return_type
        )
        [host] = (data.read_all() if return_type == "arrow_stream" else data).column(0).to_pylist()
        # over TCP the server shows the client's host:port; over the socket, "localhost"
        assert host.rsplit(":", 1)[-1].isdigit(), f"{return_type}: connected as {host!r}"


def _slow(items, pause_after: int, pause: float):
    for i, item in enumerate(items):
        if i == pause_after:
            time.sleep(pause)
        yield item


def test_extraction_watchdog_fails_a_stalled_stream_and_passes_a_healthy_one():
    from mysqlsync_dagster.errors import ReadTimeout
    from mysqlsync_dagster.pipeline.extract import iterate_with_timeout

    assert list(iterate_with_timeout(_slow(range(5), 2, 0.1), timeout=2)) == [0, 1, 2, 3, 4]
    got = []
    started = time.monotonic()
    with pytest.raises(ReadTimeout, match="no rows from the source for 1s"):
        for item in iterate_with_timeout(_slow(range(5), 2, 30), timeout=1):
            got.append(item)
    assert got == [0, 1] and time.monotonic() - started < 5


def test_extraction_watchdog_passes_errors_through():
    from mysqlsync_dagster.errors import ReadTimeout, is_transient
    from mysqlsync_dagster.pipeline.extract import iterate_with_timeout

    def broken():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(iterate_with_timeout(broken(), timeout=1))
    assert is_transient(
        ReadTimeout("no rows from the source for 2s (DB_READ_TIMEOUT): read timed out")
    )


def test_source_stream_reports_the_readers_error_and_leaves_no_process(sync_env):
    """The child reading the source: its failure comes back as its message (classified as
    usual), and closing a stream midway kills it."""
    from mysqlsync_dagster.errors import SourceReadError, is_transient
    from mysqlsync_dagster.pipeline.source_stream import SourceStream
    from mysqlsync_dagster.settings import DatabaseSettings

    url = DatabaseSettings(url=sync_env.servers.source.url.set(database=sync_env.source_db))
    sync_env.source_exec(
        "CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t SELECT seq FROM seq_1_to_100000"
    )
    with SourceStream() as stream, pytest.raises(SourceReadError, match="doesn't exist") as failure:
        list(stream.read(url.connectorx_url(), "SELECT id FROM missing", 1000))
    assert not is_transient(failure.value)
    with SourceStream() as stream:
        batches = stream.read(url.connectorx_url(), "SELECT id FROM t", 1000)
        assert next(batches).num_rows == 1000
        process = stream._process
    assert process.returncode is not None  # killed by close(), not left reading


def test_one_reader_serves_a_run_s_reads_one_after_another(sync_env):
    """The reader answers one request after another (a run's extraction, then its repairs by
    key), each through the table's dlt resource; a read broken off ends it, and a run then
    needs a new one (`usable`)."""
    from dlt.extract.resource import DltResource

    from mysqlsync_dagster.pipeline import source_stream
    from mysqlsync_dagster.pipeline.source_stream import ResourceSpec, SourceStream
    from mysqlsync_dagster.settings import DatabaseSettings

    url = DatabaseSettings(url=sync_env.servers.source.url.set(database=sync_env.source_db))
    sync_env.source_exec(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))",
        "INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_5000",
    )
    spec = ResourceSpec("t", "t", sync_env.source_db, ["id", "v"], ["id"], "merge")
    request = {
        "conn": url.connectorx_url(),
        "query": "SELECT CAST(id AS CHAR) AS id, v FROM t WHERE id <= 3",
        "batch_size": 1000,
        "protocol": "binary",
        "resource": vars(spec),
    }
    resource = source_stream._resource(request)  # what the reader iterates
    assert isinstance(resource, DltResource) and resource.name == "t"
    assert [row for item in resource for row in item.to_pylist()] == [
        {"id": "1", "v": "v1"},
        {"id": "2", "v": "v2"},
        {"id": "3", "v": "v3"},
    ]

    with SourceStream() as stream:
        first = list(stream.read(url.connectorx_url(), "SELECT id FROM t", 1000, spec=spec))
        assert sum(b.num_rows for b in first) == 5000 and stream.usable
        again = list(stream.read(url.connectorx_url(), "SELECT id FROM t WHERE id > 4990", 1000))
        assert [v for b in again for v in b.column(0).to_pylist()] == list(range(4991, 5001))
        empty = list(stream.read(url.connectorx_url(), "SELECT id FROM t WHERE id < 0", 1000))
        assert empty == [] and stream.usable
        assert stream.peak_rss_mb is not None and stream.peak_rss_mb > 0
        broken = stream.read(url.connectorx_url(), "SELECT id FROM t", 1000)
        assert next(broken).num_rows == 1000
        broken.close()  # the consumer stops midway: the reader cannot serve another
        assert not stream.usable
        process = stream._process
    assert process.returncode is not None


def test_the_reader_dies_with_a_killed_sync_process():
    """A sync process SIGKILLed (the OOM killer, `docker kill`) does not leave its reader
    behind, holding a source connection."""
    import os
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from mysqlsync_dagster.pipeline.source_stream import SourceStream\n"
            "stream = SourceStream()\n"
            "print(stream._process.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    reader = int(parent.stdout.readline())
    os.kill(reader, 0)  # running, waiting for its request
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(reader, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{reader}/stat") as stat:  # a zombie: dead, waiting to be reaped
            if stat.read().split(") ")[1].startswith("Z"):
                return
        time.sleep(0.05)
    raise AssertionError(f"reader {reader} outlived its killed sync process")
