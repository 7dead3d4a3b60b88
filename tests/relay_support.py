"""Loopback TCP relays that stand between a client and a server under test, to cut, alter or replay
what passes (the one listener and byte pump behind CuttingProxy, TamperingProxy and ManInTheMiddle)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import suppress


class LoopbackRelay:
    """A listener on a free loopback port; each accepted connection goes to `relay`, on the accepting
    thread (in order: a subclass's per-connection counts need no lock), until `close`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        """The relay's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.relay(client)

    def relay(self, client: socket.socket) -> None:
        """Handle one accepted connection (must not block the accepting thread for long)."""
        raise NotImplementedError

    def pump(
        self,
        client: socket.socket,
        to_server: Callable[[bytes], bytes] | None = None,
        to_client: Callable[[bytes], bytes] | None = None,
        cut_after: int | None = None,
    ) -> None:
        """Connect to the target and copy both ways on threads of their own, altering what a direction's
        callable is given; the answer is cut after `cut_after` bytes (both sockets closed)."""
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=pipe, args=(client, upstream, to_server), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client, to_client, cut_after), daemon=True).start()

    def close(self) -> None:
        """Stop accepting (connections already relayed run on)."""
        self._listener.close()


def pipe(
    source: socket.socket,
    sink: socket.socket,
    alter: Callable[[bytes], bytes] | None = None,
    limit: int | None = None,
) -> None:
    """Copy `source` to `sink` until either ends or `limit` bytes went through, then close both."""
    sent = 0
    try:
        while data := source.recv(65536):
            if alter is not None:
                data = alter(data)
            if limit is not None and sent + len(data) >= limit:
                sink.sendall(data[: limit - sent])
                break
            sink.sendall(data)
            sent += len(data)
    except OSError:
        pass
    for sock in (source, sink):
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class ByteFlip:
    """Inverts the byte at `offset` of the stream it is shown, counted over every call (one connection's
    stream, or several connections' in turn when shared)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.seen = 0
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> bytes:
        with self._lock:
            start, self.seen = self.seen, self.seen + len(data)
        if start <= self.offset < start + len(data):
            i = self.offset - start
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        return data
