"""Throwaway PostgreSQL servers from Debian's binaries (`initdb`, `pg_ctl`), in a directory of
their own, on a free port of 127.0.0.1 with trust authentication.

Used by `mysqlsync-dagster demo --target postgres` and by the test suite. initdb refuses to run
as root, so as root the server runs as the `postgres` system user (the Debian package makes it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mysqlsync_dagster.tools.mariadb_server import ServerError, free_port

SUPERUSER = "postgres"


def pg_bin_dir() -> Path | None:
    """The newest installed server's bin directory (Debian keeps them out of PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    base: Path
    port: int = 0
    _run_as: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _bin(self, name: str) -> Path:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise ServerError("initdb not found (apt-get install postgresql)")
        return bin_dir / name

    @property
    def port_file(self) -> Path:
        return self.base / "port"

    def _run(self, *args: Any) -> None:
        subprocess.run(list(args), check=True, capture_output=True, **self._run_as)

    def _account(self) -> None:
        """As root, the server's files and processes belong to the `postgres` user."""
        if os.geteuid() != 0 or self._run_as:
            return
        try:
            account = pwd.getpwnam(SUPERUSER)
        except KeyError as error:
            raise ServerError(
                f"running as root and there is no {SUPERUSER!r} user to run initdb as"
            ) from error
        os.chown(self.base, account.pw_uid, account.pw_gid)
        self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        self._account()
        status = subprocess.run(
            [self._bin("pg_ctl"), "-D", self.data, "status"],
            capture_output=True,
            check=False,
            **self._run_as,
        )
        return status.returncode == 0

    def start(self) -> PostgresServer:
        """Start the server (initialising its directory the first time); a server of this
        directory that is already running is reused, on its port."""
        self.base.mkdir(parents=True, exist_ok=True)
        self._account()
        if self.running() and self.port_file.exists():
            self.port = int(self.port_file.read_text())
            return self
        self.port = self.port or free_port()
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200"
        )
        try:
            if not (self.data / "PG_VERSION").exists():
                self._run(
                    self._bin("initdb"), "-D", self.data, "-U", SUPERUSER, "--auth=trust",
                    "-E", "UTF8", "--locale=C.UTF-8", "-N",
                )  # fmt: skip
            self._run(
                self._bin("pg_ctl"), "-D", self.data, "-l", self.log, "-w", "-o", options, "start"
            )
        except (subprocess.CalledProcessError, OSError) as error:
            detail = self.log.read_text() if self.log.exists() else getattr(error, "stderr", b"")
            raise ServerError(f"PostgreSQL did not start: {error}: {detail!r}") from error
        self.port_file.write_text(str(self.port))
        return self

    def stop(self, *, immediate: bool = True) -> None:
        if not self.data.exists():
            return
        self._account()
        mode = "immediate" if immediate else "fast"
        subprocess.run(
            [self._bin("pg_ctl"), "-D", self.data, "-m", mode, "stop"],
            capture_output=True,
            check=False,
            **self._run_as,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
