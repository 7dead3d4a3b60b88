"""Helpers for the clip server and fetch tests: a served device on loopback, signed clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
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
