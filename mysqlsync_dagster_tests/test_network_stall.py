"""A network that stops forwarding: the read timeout fires instead of the sync hanging."""

import contextlib
import socket
import threading
import time

import dagster as dg
from dagster_dlt import DagsterDltResource

from mysqlsync_dagster.config import parse_tables_config
from mysqlsync_dagster.factory import build_definitions
from mysqlsync_dagster.resources import MySQLResource


class StallingProxy:
    """A loopback TCP proxy to `port`; while `stalled` is set it stops relaying bytes (the
    connections stay open, as behind a dead router or a full network queue)."""

    def __init__(self, port: int) -> None:
        self.target_port = port
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
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self.stop.is_set():
            if self.stalled.is_set():
                time.sleep(0.05)
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_stalled_target_connection_times_out_and_the_run_recovers(sync_env):
    sync_env.source_exec(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))",
        "INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_20000",
    )
    proxy = StallingProxy(sync_env.servers.target.url.port)
    target_url = sync_env.servers.target.url.set(port=proxy.port, database=sync_env.target_db)
    resources = {
        "dlt": DagsterDltResource(),
        "source_db": MySQLResource(side="SOURCE", url=sync_env.source_url()),
        "target_db": MySQLResource(
            side="TARGET",
            url=target_url.render_as_string(False),
            read_timeout="2",
            write_timeout="2",
        ),
    }
    tables = parse_tables_config([{"table": "t", "primary_key": "id", "batch_size": 1000}])
    defs = build_definitions(tables, 300, environ={})

    from mysqlsync_dagster.loading import work_table_name

    watcher = sync_env.servers.target.engine(sync_env.target_db)
    aside = work_table_name("t", "new")
    stalled_mid_load = threading.Event()

    def stall_for_a_while() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the load is under way
            try:
                with watcher.connect() as conn:
                    conn.exec_driver_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
                    if conn.exec_driver_sql(f"SELECT COUNT(*) FROM `{aside}`").scalar() >= 3000:
                        break
            except Exception:
                pass
            time.sleep(0.01)
        else:
            return
        proxy.stalled.set()
        stalled_mid_load.set()
        time.sleep(4.0)  # longer than the 2 s read timeout
        proxy.stalled.clear()

    staller = threading.Thread(target=stall_for_a_while)
    started = time.monotonic()
    staller.start()
    try:
        result = dg.materialize(list(defs.assets), resources=resources, raise_on_error=False)
    finally:
        staller.join()
        proxy.close()
    elapsed = time.monotonic() - started
    assert stalled_mid_load.is_set(), "the load ended before the stall: the test proved nothing"
    assert result.success
    assert sync_env.target_rows("t") == sync_env.source_rows("t")
    # the stall cost a timeout and a retry, not a hang
    assert elapsed < 120, f"took {elapsed:.0f}s"
