"""Helpers of the push delivery tests: a nomad device's config, a device-side uploader, loopback faults."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.api.delivery import request_verifier
from edge_agent.api.uploader import Uploader
from edge_agent.collector.upload_endpoint import UploadEndpoint, UploadEndpointThread
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.config import AgentConfig, parse_config
from edge_agent.formats.keys import CsuKeyPaths, KeyPairPaths
from edge_agent.formats.signing import RequestSigner, signed_command
from edge_agent.formats.times import iso_ms
from edge_agent.storage.ringbuffer import RingBuffer
from tests.relay_support import ByteFlip, LoopbackRelay

SITE, DEVICE = "ville-01", "nomad-01"


def nomad_document(
    tmp_path: Path,
    broker_port: int,
    device: KeyPairPaths,
    csu: CsuKeyPaths,
    collector_urls: list[str],
    **clip: Any,
) -> dict[str, Any]:
    """A nomad kit: one camera (not recording: its footage is prepared by the test), no clip server."""
    return {
        "site_id": SITE,
        "device_id": DEVICE,
        "cameras": [
            {
                "id": "cam1",
                "source": "synthetic",
                "require_masks": False,
                "recording": "off",
                "fps": 1,
                "resolution": [160, 120],
            }
        ],
        "storage": {"path": str(tmp_path / "segments"), "segment_seconds": 2, "min_free_bytes": 0},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "outbox_path": str(tmp_path / "outbox.sqlite"),
            "keepalive_s": 5,
            "reconnect_min_s": 1,
            "reconnect_max_s": 2,
            "status_interval_s": 1,
        },
        "clip_server": {
            "enabled": False,
            "audit_log": str(tmp_path / "audit.jsonl"),
            "collector_urls": collector_urls,
            **clip,
        },
        "keys": {
            "device_key": str(device.private),
            "csu_sealing_public_key": str(csu.sealing.public),
            "collector_public_keys": [str(csu.signing.public)],
        },
    }


def uploader_config(tmp_path: Path, collector_urls: list[str], **clip: Any) -> AgentConfig:
    """A device config for an Uploader driven without the agent (its ring under tmp_path / "ring")."""
    return parse_config(
        {
            "site_id": SITE,
            "device_id": DEVICE,
            "cameras": [{"id": "cam1", "source": "synthetic", "require_masks": False}],
            "storage": {"path": str(tmp_path / "ring"), "segment_seconds": 2, "min_free_bytes": 0},
            "clip_server": {
                "enabled": False,
                "audit_log": str(tmp_path / "audit.jsonl"),
                "collector_urls": collector_urls,
                "max_clip_seconds": 600,
                **clip,
            },
        }
    )


@dataclass
class DeviceSide:
    """An Uploader as the agent wires it, whose published results are kept."""

    uploader: Uploader
    results: list[dict[str, Any]] = field(default_factory=list)

    def published(self, phase: str) -> list[dict[str, Any]]:
        """Results of one phase (progress, delivered, failed)."""
        return [r for r in self.results if r.get("phase") == phase]


def device_side(
    config: AgentConfig, ring: RingBuffer, device_key: Ed25519PrivateKey, collector_key: Ed25519PrivateKey
) -> DeviceSide:
    """An Uploader on the device's real audit log and journalled verifier."""
    verifier = request_verifier(config.clip_server, [collector_key.public_key()])
    results: list[dict[str, Any]] = []
    audit = AuditLog(config.clip_server.audit_log)
    uploader = Uploader(
        config, ring, audit, device_key, verifier, lambda result, _rid: results.append(dict(result))
    )
    return DeviceSide(uploader, results)


def upload_command(
    signer: RequestSigner,
    start_ts: float,
    end_ts: float,
    upload_url: str,
    token: str,
    expires_at: float | None = None,
    **extra: str,
) -> dict[str, Any]:
    """A signed `upload_clip` payload, as the collector publishes it."""
    fields = {
        "camera": "cam1",
        "start": iso_ms(start_ts),
        "end": iso_ms(end_ts),
        "requisition": "PV 2024/118",
        "officer": "OPJ Martin",
        "upload_url": upload_url,
        "token": token,
        "expires": iso_ms(expires_at or time.time() + 600),
        **extra,
    }
    return signed_command("upload_clip", fields, signer)


@contextmanager
def upload_endpoint(spool: Path, upload_id: str, token: str) -> Iterator[UploadEndpoint]:
    """A collector's upload endpoint on loopback with one upload registered (10 minutes, 50 MiB)."""
    endpoint = UploadEndpoint(spool)
    thread = UploadEndpointThread(endpoint)
    thread.start()
    endpoint.register(upload_id, token, time.time() + 600, 50 << 20)
    try:
        yield endpoint
    finally:
        thread.stop()


def audit_entries(path: Path) -> list[dict[str, Any]]:
    """Every line of an audit log."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_ENDPOINT_PROCESS = """
import json, sys, threading
from pathlib import Path
from edge_agent.collector.upload_endpoint import UploadEndpoint, UploadEndpointThread
endpoint = UploadEndpoint(Path(sys.argv[1]), "127.0.0.1", int(sys.argv[2]))
UploadEndpointThread(endpoint).start()
print(json.dumps({"port": endpoint.port}), flush=True)
threading.Event().wait()
"""


class EndpointProcess:
    """An upload endpoint over a spool folder in a process of its own, killed like a crashed collector."""

    def __init__(self, spool: Path, port: int) -> None:
        self.spool = spool
        self.port = port
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> EndpointProcess:
        """Start it (again) on the same port."""
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ENDPOINT_PROCESS, str(self.spool), str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = json.loads(self.process.stdout.readline())["port"]
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, connections cut."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class TamperingProxy(LoopbackRelay):
    """A loopback TCP proxy that flips one byte of what the device sends (counted over all connections)."""

    def __init__(self, target_port: int, flip_at: int) -> None:
        self._flip = ByteFlip(flip_at)
        super().__init__(target_port)

    @property
    def forwarded(self) -> int:
        """Bytes the device sent through the proxy so far."""
        return self._flip.seen

    def relay(self, client: socket.socket) -> None:
        """Pass the connection on, altering the device's side."""
        self.pump(client, to_server=self._flip)
