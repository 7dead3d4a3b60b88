"""Helpers for the clip server and fetch tests: a served device on loopback, signed clients."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edge_agent.api.clip_server import ClipServer, ClipServerThread, StatsProviders
from edge_agent.collector.download import DeviceEndpoint
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.config import AgentConfig, StorageConfig, parse_config
from edge_agent.formats.media import EncodedPacket, StreamInfo
from edge_agent.formats.sealing import SegmentWriter
from edge_agent.formats.signing import RequestSigner
from edge_agent.storage.index import SegmentRecord
from edge_agent.storage.ringbuffer import RingBuffer
from tests.relay_support import ByteFlip, LoopbackRelay


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
            "storage": {"path": str(tmp_path / "ring"), "segment_seconds": 2, "min_free_bytes": 0},
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
    ring: RingBuffer,
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
    return DeviceEndpoint(server.local_url, RequestSigner(key, **kw))


def audit_lines(config: AgentConfig) -> list[dict[str, Any]]:
    """Every entry of the device's audit log."""
    path = config.clip_server.audit_log
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class CuttingProxy(LoopbackRelay):
    """A loopback TCP proxy that cuts its first `cuts` connections after `after` response bytes, and
    flips the response byte at `flip_at` of each connection (counted from the HTTP head)."""

    def __init__(self, target_port: int, after: int, cuts: int = 1, flip_at: int | None = None) -> None:
        self.after = after
        self.cuts_left = cuts
        self.connections = 0
        self.flip_at = flip_at
        super().__init__(target_port)

    def relay(self, client: socket.socket) -> None:
        """Count the connection; cut it if cuts are left."""
        self.connections += 1
        cut = self.cuts_left > 0
        self.cuts_left -= 1
        flip = ByteFlip(self.flip_at) if self.flip_at is not None else None
        self.pump(client, to_client=flip, cut_after=self.after if cut else None)


def sealed_ring(root: Path, device_key: Ed25519PrivateKey, now: float) -> RingBuffer:
    """An empty real ring buffer under `root` (no free-space floor: tests must not lose segments),
    whose clock stands at `now`: footage simulated years ago would be past retention, hidden."""
    storage = StorageConfig(path=root, min_free_bytes=0)
    return RingBuffer(root, storage, lambda: now, device_public_key=device_key.public_key())


def seal_segment(
    ring: RingBuffer,
    stream: StreamInfo,
    packets: Sequence[EncodedPacket],
    device_key: Ed25519PrivateKey,
    csu_public_key: X25519PublicKey,
    camera: str = "cam1",
) -> SegmentRecord:
    """Seal `packets` as the camera's next segment through the ring's own write path (begin, commit)."""
    pending = ring.begin(camera)
    writer = SegmentWriter(
        pending.file,
        camera=camera,
        device="pi-01",
        sequence=pending.sequence,
        prev_sha256=pending.prev_sha256,
        stream=stream,
        start_ts=stream.seconds(packets[0].pts),
        device_key=device_key,
        csu_public_key=csu_public_key,
    )
    for packet in packets:
        writer.append(packet)
    return ring.commit(pending, writer.finish())


def random_ring(
    root: Path, device_key: Ed25519PrivateKey, start_ts: float, count: int = 10, seconds: int = 2
) -> RingBuffer:
    """A ring of `count` really sealed segments of `seconds` each, whose packets are random bytes.

    For tests of the API, not of the footage: they are sealed to a throwaway CSU key. Segment i
    (sequence i + 1) covers [start_ts + i * seconds, start_ts + (i + 1) * seconds) and is ~50 kB.
    """
    fps = 10
    stream = StreamInfo("h264", "random", 160, 120, "yuv420p", Fraction(1, fps), fps, start_ts)
    csu_public_key = X25519PrivateKey.generate().public_key()
    ring = sealed_ring(root, device_key, start_ts + count * seconds)
    per_segment = seconds * fps
    for index in range(count):
        packets = [
            EncodedPacket(pts, pts, 1, pts % per_segment == 0, os.urandom(50_000 // per_segment + index * 50))
            for pts in range(index * per_segment, (index + 1) * per_segment)
        ]
        seal_segment(ring, stream, packets, device_key, csu_public_key)
    return ring


def encode_segments(
    root: Path,
    device_key: Ed25519PrivateKey,
    csu_public_key: X25519PublicKey,
    start_ts: float,
    seconds: float,
    fps: int = 10,
    segment_seconds: float = 2.0,
    size: tuple[int, int] = (160, 120),
) -> RingBuffer:
    """Real H.264 footage (libx264, 1 keyframe a second) sealed into a real ring buffer.

    Each frame's brightness encodes its index; the top-left quarter is a constant black "mask".
    A segment starts at the first keyframe of each `segment_seconds` stretch.
    """
    import av
    import numpy as np

    width, height = size
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps)
    encoder.flags |= av.codec.context.Flags.global_header
    encoder.options = {"g": str(fps), "bf": "0", "preset": "ultrafast"}
    encoder.open()
    per_segment = int(segment_seconds * fps)
    segments: list[list[EncodedPacket]] = []

    def add(packets: Any) -> None:
        for packet in packets:
            pts = int(packet.pts)
            if packet.is_keyframe and (not segments or pts // per_segment != len(segments) - 1):
                segments.append([])
            segments[-1].append(EncodedPacket(pts, int(packet.dts), 1, packet.is_keyframe, bytes(packet)))

    for index in range(int(seconds * fps)):
        image = np.full((height, width, 3), (index * 3) % 200 + 30, np.uint8)
        image[: height // 2, : width // 2] = 0
        frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        frame.pts = index
        add(encoder.encode(frame))
    add(encoder.encode(None))
    extradata = bytes(encoder.extradata or b"")
    stream = StreamInfo(
        "h264", "libx264", width, height, "yuv420p", Fraction(1, fps), fps, start_ts, extradata
    )
    ring = sealed_ring(root, device_key, start_ts + seconds)
    for packets in segments:
        seal_segment(ring, stream, packets, device_key, csu_public_key)
    return ring
