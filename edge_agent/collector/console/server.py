"""Assemble and run the console: store, keys, device gateway, clip jobs, audit log, HTTP listener.

`ConsoleServer` runs the aiohttp app in a thread with its own event loop, so that `csu-collector
console`, `csu-collector serve --console`, the demo and the tests start it the same way.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from edge_agent.collector.console.app import Console, ConsoleSettings
from edge_agent.collector.console.clips import ClipJobs
from edge_agent.collector.console.data import open_console_data
from edge_agent.collector.console.devices import CommandLink, CsuKeys, DeviceGateway
from edge_agent.collector.ingest import BrokerAddress
from edge_agent.collector.store import is_postgres_url
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.signing import RequestSigner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsoleOptions:
    """Where the console's inputs and outputs are."""

    db: str | Path
    keys: Path
    device_keys: Path
    audit: Path
    exports: Path
    broker: BrokerAddress | None = None
    topic_root: str = "csu/v1"
    ca_file: Path | None = None
    settings: ConsoleSettings = field(default_factory=ConsoleSettings)


def beside(db: str | Path, name: str) -> Path:
    """A file next to a SQLite store (in the working directory for a PostgreSQL one)."""
    return Path(name) if is_postgres_url(db) else Path(db).with_name(name)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (port 0 picks a free one); ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: the port must be a number in 0..65535")
    return host.strip("[]"), int(port)


class ConsoleServer:
    """The console listening on `host:port` in a background thread."""

    def __init__(self, options: ConsoleOptions, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.options = options
        self.host = host
        self.port = port
        keys = CsuKeys.load(options.keys)
        self.data = open_console_data(options.db)
        self.link = (
            CommandLink(
                options.broker,
                options.topic_root,
                RequestSigner(keys.signing),
                client_id=f"csu-console-{socket.gethostname()}-{port or 'auto'}-{id(self):x}",
            )
            if options.broker is not None
            else None
        )
        gateway = DeviceGateway(self.data, keys, options.device_keys, self.link, options.ca_file)
        audit = AuditLog(options.audit)
        self.console = Console(
            self.data, gateway, ClipJobs(gateway, options.exports, audit), audit, options.settings
        )
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="console", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The console's base URL."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Listen; returns once the port is open (raises what the start raised)."""
        if self.link is not None:
            self.link.start()
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError("the console did not start")
        if self._error is not None:
            raise self._error
        log.info("console on %s", self.url)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._open())
        except BaseException as error:  # handed to the starting thread
            self._error = error
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        if self._runner is not None:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _open(self) -> None:
        self._runner = web.AppRunner(
            self.console.make_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop listening, disconnect from the broker, close the store."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        if self.link is not None:
            self.link.stop()
        self.data.close()
