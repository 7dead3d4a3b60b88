"""Helpers for the clip server and fetch tests: a served device on loopback, signed clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.audit import AuditLog
from edge_agent.clip_server import ClipServer, ClipServerThread, StatsProviders
from edge_agent.collector.download import DeviceEndpoint
from edge_agent.config import AgentConfig, parse_config
from edge_agent.signing import RequestSigner


def device_config(tmp_path: Path, cameras: tuple[str, ...] = ("cam1",), **clip: Any) -> AgentConfig:
    """A device config with the clip server on a free loopback port."""
    return parse_config(
        {
            "site_id": "ville-01",
            "device_id": "pi-01",
            "cameras": [
                {"id": c, "source": "synthetic", "require_masks": False, "resolution": [320, 240]}
                for c in cameras
            ],
            "storage": {"path": str(tmp_path / "ring"), "segment_seconds": 2},
            "clip_server": {
                "bind": "127.0.0.1",
                "port": 0,
                "audit_log": str(tmp_path / "audit.jsonl"),
                "rate_limit_bytes_s": 0,
                **clip,
            },
        }
    )


@contextmanager
def running_server(
    config: AgentConfig,
    ring: Any,
    device_key: Ed25519PrivateKey,
    collector_key: Ed25519PrivateKey,
    stats: StatsProviders | None = None,
) -> Iterator[ClipServer]:
    """A ClipServer listening in its own thread for the duration of the block."""
    audit = AuditLog(config.clip_server.audit_log)
    server = ClipServer(config, ring, audit, device_key, [collector_key.public_key()], stats)
    thread = ClipServerThread(server)
    thread.start()
    try:
        yield server
    finally:
        thread.stop()


def endpoint(server: ClipServer, key: Ed25519PrivateKey, **kw: Any) -> DeviceEndpoint:
    """A signed client of `server`."""
    return DeviceEndpoint(server.url, RequestSigner(key, **kw))


def audit_lines(config: AgentConfig) -> list[dict[str, Any]]:
    """Every entry of the device's audit log."""
    path = config.clip_server.audit_log
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class CuttingProxy:
    """A loopback TCP proxy that cuts its first `cuts` connections after `after` response bytes."""

    def __init__(self, target_port: int, after: int, cuts: int = 1) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.after = after
        self.cuts_left = cuts
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threading = threading
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.cuts_left > 0
            self.cuts_left -= 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            limit = self.after if cut else None
            self._threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            self._threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any, limit: int | None) -> None:
        import socket

        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
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

    def close(self) -> None:
        self._listener.close()
