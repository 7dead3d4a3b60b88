"""A real mosquitto broker on a free loopback port, for the demo and the tests.

`LocalBroker` writes a config file in a temporary directory, starts `/usr/sbin/mosquitto` on it, waits
until the port accepts connections, and stops it again. It can be started again on the same port (the
broker-restart tests need clients to find it where they left it), and keeps retained messages and
persistent sessions across restarts like a production broker with persistence on.

    with LocalBroker() as broker:
        client.connect("127.0.0.1", broker.port)

Extra config lines (an ACL file, a password file, more listeners) are appended verbatim; when they set
`allow_anonymous` themselves, the default `allow_anonymous true` is left out.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

MOSQUITTO = Path("/usr/sbin/mosquitto")
HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """The broker could not be started (missing binary, bad config, port taken)."""


def free_port(host: str = HOST) -> int:
    """A TCP port free on `host` right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalBroker:
    """A mosquitto process on a loopback port; a context manager (start on enter, stop on exit)."""

    def __init__(
        self,
        extra_config: Sequence[str] = (),
        port: int | None = None,
        persistence: bool = True,
        executable: Path = MOSQUITTO,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.host = HOST
        self.port = port if port is not None else free_port()
        self.extra_config = list(extra_config)
        self.persistence = persistence
        self.executable = Path(executable)
        self.start_timeout_s = start_timeout_s
        self.workdir = Path(tempfile.mkdtemp(prefix="edge-mosquitto-"))
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`mqtt://127.0.0.1:PORT`, the form `csu-collector serve --broker` takes."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self._process is not None and self._process.poll() is None

    def config_text(self) -> str:
        """The config file the broker runs with."""
        lines = [
            f"listener {self.port} {self.host}",
            # mosquitto drops root privileges to the `mosquitto` user, which cannot write our temp dir.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "max_queued_messages 100000",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        if not any(line.strip().startswith("allow_anonymous") for line in self.extra_config):
            lines.append("allow_anonymous true")
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def start(self) -> LocalBroker:
        """Start mosquitto (again, on the same port) and wait until it accepts connections."""
        if self.running:
            return self
        if not self.executable.exists():
            raise BrokerError(f"{self.executable} not found: install the `mosquitto` Debian package")
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        self._process = subprocess.Popen(
            [str(self.executable), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"mosquitto exited with code {self._process.returncode}: {self._why()}")
            if _accepts(self.host, self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} in {self.start_timeout_s}s")

    def _why(self) -> str:
        stderr = self._process.stderr if self._process is not None else None
        err = stderr.read().decode(errors="replace") if stderr is not None else ""
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return (err + log).strip()[-2000:] or "no output"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker cleanly (SIGTERM: it saves its persistence file); kill it if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def kill(self) -> None:
        """Stop the broker abruptly (SIGKILL), as a crash or a power cut would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if process is not None and process.stderr is not None:
            process.stderr.close()

    def log(self) -> str:
        """The broker's log so far (for assertion messages)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        """Stop the broker and remove its temporary directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
