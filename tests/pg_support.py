"""A real PostgreSQL server for the tests and the collector bench: Debian's binaries, a throw-away cluster.

`LocalPostgres` runs `initdb` and `pg_ctl` from /usr/lib/postgresql/<version>/bin in a fresh directory
under /tmp, on a free loopback port, with its unix socket in that directory. PostgreSQL refuses to run as
root, so when the tests run as root the server runs as the `postgres` system user that Debian's package
creates (or `nobody`), through `runuser`; the directory is handed to that user. Trust authentication on
loopback only: the cluster lives as long as the test session.

    with LocalPostgres() as server:
        url = server.create_database("t1")    # postgresql://csu@127.0.0.1:PORT/t1
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from edge_agent.link.localbroker import free_port

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "csu"
RUN_AS_CANDIDATES = ("postgres", "nobody")
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
"""For tests: durability is not what they check, and an fsync per commit slows the suite on shared disks."""


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or the server would not start (the message says which)."""


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(PG_ROOT.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise PostgresUnavailable(
            f"no PostgreSQL under {PG_ROOT}: install Debian's `postgresql` package (scripts/bootstrap.sh)"
        )
    return found[-1].parent


def _run_as() -> str | None:
    """The unprivileged user to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS_CANDIDATES:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresUnavailable(f"running as root and none of the users {RUN_AS_CANDIDATES} exists")


class LocalPostgres:
    """A PostgreSQL cluster in a temporary directory; a context manager (start on enter, remove on exit)."""

    def __init__(self, settings: Sequence[str] = FAST_SETTINGS) -> None:
        self.bin = pg_bin()
        self.user = _run_as()
        self.port = free_port()
        self.settings = list(settings)
        self.workdir = Path(tempfile.mkdtemp(prefix="edge-pg-", dir="/tmp"))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "server.log"
        self._running = False

    def _cmd(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin / tool), *args]
        return ["runuser", "-u", self.user, "--", *command] if self.user else command

    def _call(self, tool: str, *args: str) -> None:
        done = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise PostgresUnavailable(
                f"{tool} failed ({done.returncode}): {done.stderr.strip()} {log}".strip()
            )

    def url(self, database: str = "postgres") -> str:
        """The URL of one database of this server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> LocalPostgres:
        """initdb, then start the server and wait until it accepts connections."""
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        self._call(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-k {self.workdir}",
            "-c max_connections=200",
        ]
        options += [f"-c {setting}" for setting in self.settings]
        self._call(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(options),
            "start",
        )
        self._running = True
        return self

    def postmaster_pid(self) -> int:
        """The server's main process (its first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing the connections still open on it."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are cut)."""
        if self._running:
            self._running = False
            self._call("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
