"""Helpers for the clip server and fetch tests: a served device on loopback, signed clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
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

    def __init__(self, target_port: int, after: int, cuts: int = 1, flip_at: int | None = None) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.after = after
        self.cuts_left = cuts
        self.connections = 0
        self.flip_at = flip_at
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
            args = (client, upstream, None, None)
            self._threading.Thread(target=self._pipe, args=args, daemon=True).start()
            args = (upstream, client, limit, self.flip_at)
            self._threading.Thread(target=self._pipe, args=args, daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any, limit: int | None, flip_at: int | None) -> None:
        import socket

        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if flip_at is not None and sent <= flip_at < sent + len(data):
                    i = flip_at - sent  # alter one byte in transit (counted from the HTTP head)
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
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


def encode_segments(
    root: Path,
    device_key: Ed25519PrivateKey,
    csu_public_key: Any,
    start_ts: float,
    seconds: float,
    fps: int = 10,
    segment_seconds: float = 2.0,
    size: tuple[int, int] = (160, 120),
) -> list[Any]:
    """Real H.264 footage (libx264, 1 keyframe a second), sealed into segment files; index rows back.

    Each frame's brightness encodes its index; the top-left quarter is a constant black "mask".
    """
    from fractions import Fraction

    import av
    import numpy as np

    from edge_agent.storage.media import EncodedPacket, StreamInfo
    from edge_agent.storage.sealing import SegmentWriter

    root.mkdir(parents=True, exist_ok=True)
    width, height = size
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps)
    encoder.flags |= av.codec.context.Flags.global_header
    encoder.options = {"g": str(fps), "bf": "0", "preset": "ultrafast"}
    encoder.open()
    stream_info: StreamInfo | None = None
    rows: list[Any] = []
    writer: Any = None
    handle: Any = None
    prev = ""
    per_segment = int(segment_seconds * fps)
    total = int(seconds * fps)

    def packets(frame: Any) -> list[Any]:
        return list(encoder.encode(frame))

    def flush_segment() -> None:
        nonlocal writer, handle, prev
        sealed = writer.finish()
        handle.close()
        path = root / f"seg-{sealed.sequence:06d}.seg"
        rows.append(
            Row(
                "cam1",
                sealed.sequence,
                sealed.start_ts,
                sealed.end_ts,
                sealed.size,
                sealed.sha256,
                sealed.prev_sha256,
                path,
            )
        )
        prev = sealed.sha256
        writer = None

    for index in range(total):
        image = np.full((height, width, 3), (index * 3) % 200 + 30, np.uint8)
        image[: height // 2, : width // 2] = 0
        frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        frame.pts = index
        out = packets(frame)
        if stream_info is None:
            stream_info = StreamInfo(
                "h264",
                "libx264",
                width,
                height,
                "yuv420p",
                Fraction(1, fps),
                float(fps),
                start_ts,
                bytes(encoder.extradata or b""),
            )
        for packet in out:
            sequence = int(packet.pts) // per_segment
            if writer is not None and packet.is_keyframe and sequence != len(rows):
                flush_segment()
            if writer is None:
                handle = (root / f"seg-{len(rows):06d}.seg").open("wb")
                writer = SegmentWriter(
                    handle,
                    camera="cam1",
                    device="pi-01",
                    sequence=len(rows),
                    prev_sha256=prev,
                    stream=stream_info,
                    start_ts=stream_info.seconds(packet.pts),
                    device_key=device_key,
                    csu_public_key=csu_public_key,
                )
            writer.append(
                EncodedPacket(int(packet.pts), int(packet.dts), 1, packet.is_keyframe, bytes(packet))
            )
    for packet in encoder.encode(None):
        writer.append(EncodedPacket(int(packet.pts), int(packet.dts), 1, packet.is_keyframe, bytes(packet)))
    flush_segment()
    return rows


@dataclass
class Row:
    """An index row as the ring buffer's `segments()` returns it."""

    camera: str
    sequence: int
    start_ts: float
    end_ts: float
    size: int
    sha256: str
    prev_sha256: str
    path: Path
    state: str = "complete"


class FileRing:
    """Segment files and their index rows behind the ring buffer's query interface (no retention)."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.hold_rows: dict[int, dict[str, Any]] = {}

    def segments(self, camera: str, start_ts: float, end_ts: float) -> list[Row]:
        return [r for r in self.rows if r.camera == camera and r.end_ts > start_ts and r.start_ts < end_ts]

    def add_hold(
        self, camera: str, start_ts: float, end_ts: float, requisition: str, expires_at: float
    ) -> dict[str, Any]:
        hold = {
            "id": len(self.hold_rows) + 1,
            "camera": camera,
            "start_ts": start_ts,
            "end_ts": end_ts,
            "requisition": requisition,
            "expires_at": expires_at,
        }
        self.hold_rows[hold["id"]] = hold
        return hold

    def release_hold(self, hold_id: int) -> bool:
        return self.hold_rows.pop(hold_id, None) is not None

    def holds(self, camera: str | None = None) -> list[dict[str, Any]]:
        return list(self.hold_rows.values())

    def stats(self) -> dict[str, dict[str, Any]]:
        if not self.rows:
            return {}
        return {
            "cam1": {
                "segments": len(self.rows),
                "bytes": sum(r.size for r in self.rows),
                "oldest_ts": min(r.start_ts for r in self.rows),
                "newest_ts": max(r.end_ts for r in self.rows),
            }
        }


def random_rows(root: Path, start_ts: float, count: int = 10, seconds: float = 2.0) -> list[Row]:
    """Segment-sized random files (for tests of the API, not of the footage)."""
    import hashlib
    import os

    root.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    prev = "0" * 64
    for seq in range(count):
        data = os.urandom(50_000 + seq * 1000)
        path = root / f"cam1-{seq:08d}.seg"
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        start = start_ts + seq * seconds
        rows.append(Row("cam1", seq, start, start + seconds, len(data), digest, prev, path))
        prev = digest
    return rows
