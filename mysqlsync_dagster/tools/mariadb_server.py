"""Throwaway MariaDB servers started from the `mariadbd` binary, in a directory of their own.

Used by `mysqlsync-dagster demo` and by the test suite: each server has its own data directory,
socket and free TCP port on 127.0.0.1, and touches nothing outside its directory.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from mysqlsync_dagster.settings import environment

_SEARCH_PATH = os.pathsep.join(
    [environment().get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"]
)


class ServerError(RuntimeError):
    """A throwaway server could not be installed, started or stopped."""


# A source that writes a row binlog, as `"capture": "binlog"` tables need (the tests' source,
# the demo's, the binlog benchmark's).
BINLOG_ARGS = (
    "--log-bin=mariadb-bin",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--server-id=1",
)


def find_binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name, path=_SEARCH_PATH)
        if found:
            return found
    return None


def mariadbd_binary() -> str | None:
    return find_binary("mariadbd", "mysqld")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as mariadbd binds: connections of a previous run in TIME_WAIT do not block the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class MariaDBServer:
    """One server under `base_dir` (data/, mysqld.sock, error.log, server.json)."""

    base_dir: Path
    port: int = 0
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir).resolve()
        state = self._read_state()
        if not self.port:
            saved = state.get("port")
            # A running server of ours keeps its port; otherwise reuse it only if it is free.
            usable = saved and (self.running_pid() is not None or _port_is_free(saved))
            self.port = saved if usable else free_port()

    # -- paths -------------------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_path(self) -> Path:
        return self.base_dir / "mysqld.sock"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "mysqld.pid"

    @property
    def error_log(self) -> Path:
        return self.base_dir / "error.log"

    @property
    def state_file(self) -> Path:
        return self.base_dir / "server.json"

    def url(self, database: str = "", user: str = "root", password: str = "") -> str:
        auth = f"{user}:{password}" if password else user
        return f"mysql+pymysql://{auth}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle ---------------------------------------------------------------------
    def _read_state(self) -> dict[str, int]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def install(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        install_db = find_binary("mariadb-install-db", "mysql_install_db")
        if install_db is None:
            raise ServerError(
                "mariadb-install-db not found: install the Debian package mariadb-server"
            )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root" if os.geteuid() == 0 else f"--user={getpass.getuser()}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)
            raise ServerError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")

    def command(self) -> list[str]:
        binary = mariadbd_binary()
        if binary is None:
            raise ServerError("mariadbd not found: install the Debian package mariadb-server")
        args = [
            binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=256M",
            "--innodb-flush-log-at-trx-commit=2",
            "--max-allowed-packet=64M",
            "--local-infile=1",
            "--skip-log-bin",
            "--max-connections=300",
            *self.extra_args,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        return args

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def start(self, timeout: float = 60.0) -> MariaDBServer:
        """Start (or reuse a running) server; returns when it accepts connections."""
        self.install()
        if self.running_pid() and self._accepts_connections():
            return self
        if not _port_is_free(self.port):
            self.port = free_port()
        self.error_log.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"mariadbd exited with code {self.process.returncode}:\n{self._log_tail()}"
                )
            if self._accepts_connections():
                self._grant_tcp_root()
                self.state_file.write_text(json.dumps({"port": self.port}))
                return self
            time.sleep(0.2)
        self.kill()
        raise ServerError(
            f"mariadbd did not accept connections in {timeout:.0f}s:\n{self._log_tail()}"
        )

    def _accepts_connections(self) -> bool:
        try:
            conn = pymysql.connect(
                unix_socket=str(self.socket_path), user="root", connect_timeout=2
            )
        except pymysql.err.MySQLError:
            return False
        conn.close()
        return True

    def _grant_tcp_root(self) -> None:
        """root over TCP from 127.0.0.1 without a password, as the machine's own server has."""
        with (
            contextlib.closing(
                pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error log)"

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.pid == pid:
                if self.process.poll() is not None:
                    return True
            else:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 60.0) -> None:
        """Clean shutdown (SIGTERM, as a service manager does)."""
        pid = self.running_pid() or (self.process.pid if self.process else None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash, mid-transaction."""
        pid = self.running_pid() or (self.process.pid if self.process else None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._wait_exit(pid, 30)
        self.pid_file.unlink(missing_ok=True)

    def restart(self, *, crash: bool = False) -> MariaDBServer:
        if crash:
            self.kill()
        else:
            self.stop()
        return self.start()
