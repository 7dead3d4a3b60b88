"""The clip server's connections: how many may be open, and whether the peer really got a response.

- `ConnectionGate` caps concurrent connections below the process's file-descriptor limit, so that idle or
  slow clients can never take the descriptors that recording needs (segment files, the index, MQTT).
  A connection over the cap is answered 503 and closed at once; the refusals are counted and logged once
  a minute, never once per accept.
- `GatedSite` listens like aiohttp's `TCPSite`, with every connection passing the gate.
- `delivered` waits, after the last byte of a response was written, until the peer's TCP has
  acknowledged every byte: a transfer cut after the data left this process (still in the kernel's
  send queue) is then known as cut, not reported as served.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import resource
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from edge_agent.api.ratelimit import LogThrottle

log = logging.getLogger(__name__)

# Linux TCP states (include/net/tcp_states.h): data can still be acknowledged in these two.
_TCP_ESTABLISHED = 1
_TCP_CLOSE_WAIT = 8
_POLL_S = 0.005
# Descriptors kept for everything but the API (segments, index, outbox, MQTT, cameras, libraries).
FD_RESERVE = 256

_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 35\r\nRetry-After: 5\r\n\r\ntoo many connections; retry later\r\n"
)


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what clients may hold of the device (defaults sized for a Raspberry Pi)."""

    max_connections: int = 256
    idle_timeout_s: float = 15.0
    """A new connection must complete its request head, and an idle keep-alive connection its next
    one, within this time; a request body must arrive and a stalled reader take each chunk within it."""
    delivery_timeout_s: float = 30.0
    """How long the last bytes of a clip may stay unacknowledged by the peer before it counts as cut."""
    max_request_line: int = 4096
    max_header_bytes: int = 8190
    max_headers: int = 64


def connection_cap(wanted: int, fd_soft_limit: int | None = None) -> int:
    """`wanted`, lowered so that `FD_RESERVE` descriptors stay free for everything but the API."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if fd_soft_limit is None else fd_soft_limit
    if limit == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, limit - FD_RESERVE))


class ConnectionGate:
    """Counts open connections and turns away those over `limit` (on the event loop's thread only)."""

    def __init__(self, limit: int, on_turned_away: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.open = 0
        self.turned_away = 0
        self._on_turned_away = on_turned_away
        self._log = LogThrottle(log, 60.0)

    def admit(self, make: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
        """The protocol for a connection just accepted: `make()`'s when there is room, else a refusal."""
        if self.open >= self.limit:
            self.turned_away += 1
            self._log.warning(
                "connection-cap",
                "clip server: %d connection(s) open, the cap; new ones are answered 503 (%d so far)",
                self.open,
                self.turned_away,
            )
            return _TurnAway(self._on_turned_away)
        self.open += 1
        return _Counted(make(), self)

    def closed(self) -> None:
        """A counted connection ended."""
        self.open -= 1


class _Counted(asyncio.Protocol):
    """Passes everything to the request handler and tells the gate when the connection ends.

    It also notes, as the connection ends and while its socket is still open, whether the peer had
    acknowledged every byte (`acked_at_close`): a client that reads a whole response and closes at once
    may close before `delivered` looks again.
    """

    def __init__(self, inner: asyncio.Protocol, gate: ConnectionGate) -> None:
        self._inner = inner
        self._gate = gate
        self._transport: asyncio.BaseTransport | None = None
        self.acked_at_close: bool | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.closed()
        self.acked_at_close = exc is None and _all_acknowledged(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _TurnAway(asyncio.Protocol):
    """A connection over the cap: a short 503, then closed (its descriptor is freed at once)."""

    def __init__(self, on_turned_away: Callable[[str], None] | None) -> None:
        self._on_turned_away = on_turned_away

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if self._on_turned_away is not None:
            self._on_turned_away(str(peer[0]) if peer else "-")
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_BUSY_ANSWER)
        transport.close()


class AuditedHandler(RequestHandler):
    """aiohttp's connection handler, reporting the requests its parser refuses (too long a URL or
    header, malformed HTTP) to `on_parse_error(remote, status, reason, detail)`, to be audited like
    any refusal, and logging errors through a throttle: one line per condition and minute."""

    def __init__(
        self,
        manager: web.Server,
        *,
        on_parse_error: Callable[[str, int, str, str], None],
        throttle: LogThrottle,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=asyncio.get_running_loop(), **kwargs)
        self._on_parse_error = on_parse_error
        self._throttle = throttle

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer, after reporting the refusal (parser errors never reach the app)."""
        if status != 500:
            detail = message or (str(exc) if exc is not None else "")
            too_long = isinstance(exc, LineTooLong) or "too long" in detail or "too large" in detail
            reason = "request-too-large" if too_long else "malformed-request"
            self._on_parse_error(request.remote or "-", status, reason, detail[:200])
        return super().handle_error(request, status, exc, message)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """Through the throttle, keyed by the exception's type."""
        error = kw.get("exc_info")
        key = type(error).__name__ if isinstance(error, BaseException) else "error"
        self._throttle.exception(key, *args, **kw)


class GatedSite(web.BaseSite):
    """A TCP listener whose connections pass a `ConnectionGate` and get an `AuditedHandler`."""

    __slots__ = ("_gate", "_host", "_make_handler", "_port")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        gate: ConnectionGate,
        make_handler: Callable[[], asyncio.Protocol],
        ssl_context: SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._gate = gate
        self._make_handler = make_handler

    @property
    def name(self) -> str:
        """What aiohttp prints for this site."""
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen."""
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._gate.admit(self._make_handler),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
        )

    def bound_port(self) -> int:
        """The port listened on (the one the system picked for port 0)."""
        sockets = getattr(self._server, "sockets", None) or ()
        return int(sockets[0].getsockname()[1]) if sockets else self._port


def _unacknowledged(sock: Any) -> int | None:
    """Bytes in `sock`'s send queue not yet acknowledged by the peer; None once the connection is gone."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    if state not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
        return None
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


def _all_acknowledged(transport: asyncio.BaseTransport | None) -> bool:
    """Whether nothing written to `transport` waits for the peer's acknowledgement (False when unknown)."""
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():
        return False
    try:
        return sock is not None and _unacknowledged(sock) == 0
    except OSError:
        return False


async def delivered(transport: asyncio.Transport | None, timeout_s: float) -> bool:
    """Whether every byte written to `transport` reaches the peer's TCP within `timeout_s`.

    A peer that resets or stops acknowledging in time did not get the whole response: the bytes were
    only in the local send queue when the last write returned. Needs TCP on Linux (TCP_INFO); anywhere
    else, written counts as delivered, as before.
    """
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return not transport.is_closing()
    watched = transport.get_protocol()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if isinstance(watched, _Counted) and watched.acked_at_close is not None:
            return watched.acked_at_close  # the connection ended: what it showed as it did
        if transport.get_write_buffer_size() == 0:
            try:
                pending = _unacknowledged(sock)
            except OSError:
                pending = None  # the socket is gone
            if pending == 0:
                return True
            if pending is None and not isinstance(watched, _Counted):
                return False
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
