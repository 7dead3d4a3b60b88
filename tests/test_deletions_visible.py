"""Footage the quota or the free-space rule deletes is counted by reason, warned about when it was
younger than the legal retention, and shown in status and /metrics (issue 14 item 5)."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.formats.config import parse_config
from edge_agent.formats.media import EncodedPacket, StreamInfo
from edge_agent.formats.mqtt_wire import DiskStatus, TopicInfo, encode, parse_status
from edge_agent.link.health import Health
from edge_agent.link.status import DeviceReport, LinkStats, build_status, change_key
from edge_agent.storage.retention import DAY
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import device_config, endpoint, running_server, seal_segment
from tests.storage_support import Keys, make_keys, storage

T0 = 1_700_000_000.0
WHERE = TopicInfo("status", "ville-01", "pi-07")
SEGMENT_BYTES = 20_000  # of packets; about 32 kB sealed (100 records)
SEALED_BYTES = 32_000


class Clock:
    """A settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _add(ring: RingBuffer, keys: Keys, start: float) -> None:
    """A real sealed 10 s segment of ~SEGMENT_BYTES through the ring's write path (quota applied)."""
    stream = StreamInfo("h264", "libx264", 64, 48, "yuv420p", Fraction(1, 1000), 10.0, start)
    packets = [
        EncodedPacket(i * 100, i * 100, 100, i == 0, os.urandom(SEGMENT_BYTES // 100)) for i in range(100)
    ]
    seal_segment(ring, stream, packets, keys.device, keys.csu.public_key())


def _filled_ring(tmp_path: Path, clock: Clock, keys: Keys) -> RingBuffer:
    """Twelve segments of the last two minutes against a quota of about five: seven go for the quota."""
    ring = RingBuffer(tmp_path, storage(tmp_path, retention_days=1, max_bytes=5 * SEALED_BYTES + 1000), clock)
    for i in range(12):
        _add(ring, keys, T0 + 10 * i)
    return ring


def test_quota_deletions_of_young_footage_are_counted_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = make_keys()
    clock = Clock(T0 + 120)
    with caplog.at_level(logging.INFO, logger="edge_agent.storage.ringbuffer"):
        ring = _filled_ring(tmp_path, clock, keys)
    deleted = ring.deleted()
    quota = deleted["quota"]
    assert quota.segments == 12 - len(ring.segments("cam1")) == 7
    assert quota.early == 7 and quota.seconds == pytest.approx(70.0)
    assert 7 * SEGMENT_BYTES < quota.bytes < 7 * SEALED_BYTES
    assert deleted["age"].segments == deleted["disk-free"].segments == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 7  # one per pass: each commit over the quota deletes one segment
    assert "quota: deleted 1 segment(s) (cam1#1;" in warnings[0].getMessage()
    assert "younger than the 1-day retention (the youngest 2 min old)" in warnings[0].getMessage()
    # Routine expiry is not a warning, and is counted apart.
    caplog.clear()
    clock.now = T0 + 2 * DAY
    with caplog.at_level(logging.INFO, logger="edge_agent.storage.ringbuffer"):
        assert [d.reason for d in ring.enforce_retention()] == ["age"] * 5
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert ring.deleted()["age"].segments == 5 and ring.deleted()["age"].early == 0
    assert ring.deleted()["quota"] == quota
    ring.close()


def test_free_space_deletions_are_counted_apart(tmp_path: Path) -> None:
    keys = make_keys()

    def disk_free(_: Path) -> int:
        """A disk with room for about four segments beyond the floor."""
        return 10 * SEALED_BYTES - sum(p.stat().st_size for p in tmp_path.glob("*/*.seg"))

    st = storage(tmp_path, retention_days=1, min_free_bytes=6 * SEALED_BYTES)
    ring = RingBuffer(tmp_path, st, Clock(T0 + 120), disk_free=disk_free)
    for i in range(8):
        _add(ring, keys, T0 + 10 * i)
    deleted = ring.deleted()
    assert deleted["disk-free"].segments == 8 - len(ring.segments("cam1")) > 0
    assert deleted["disk-free"].early == deleted["disk-free"].segments
    assert deleted["quota"].segments == 0
    ring.close()


def test_deletions_reach_status_and_metrics(tmp_path: Path) -> None:
    keys = make_keys()
    clock = Clock(T0 + 120)
    ring = _filled_ring(tmp_path / "ring", clock, keys)
    config = parse_config({"site_id": "ville-01", "device_id": "pi-07", "cameras": []})

    def status(report: DeviceReport) -> dict:  # type: ignore[type-arg]
        message = build_status(
            config,
            report,
            now=T0 + 120,
            started_at=T0,
            health=Health(50.0, (0.1, 0.1, 0.1), DiskStatus(used=1, free=2, total=3)),
            link=LinkStats(True, 1, 0, 0, 0, 0, 0, 0, ""),
            clip_url="",
        )
        document = message.wire()
        again = parse_status(encode(document), WHERE)
        assert again.deleted == message.deleted
        return document

    before = status(DeviceReport(deleted={}))
    after = status(DeviceReport(deleted=ring.deleted()))
    assert after["deleted"]["quota"] == {
        "segments": 7,
        "bytes": ring.deleted()["quota"].bytes,
        "seconds": 70.0,
        "early": 7,
    }
    assert (
        after["deleted"]["age"]
        == after["deleted"]["disk_free"]
        == {"segments": 0, "bytes": 0, "seconds": 0.0, "early": 0}
    )
    assert "deleted" not in status(DeviceReport())  # an agent without a ring buffer says nothing
    # Footage deleted early is a loss the CSU must see at once, not at the next heartbeat.
    as_message = [parse_status(encode(d), WHERE) for d in (before, after)]
    assert change_key(as_message[0]) != change_key(as_message[1])

    collector = Ed25519PrivateKey.generate()
    with (
        running_server(device_config(tmp_path), ring, keys.device, collector) as server,
        endpoint(server, collector).request("GET", "/metrics", []) as response,
    ):
        assert response.status_code == 200
        text = response.text
    assert 'ring_deleted_segments_total{reason="quota"} 7.0' in text
    assert 'ring_deleted_early_segments_total{reason="quota"} 7.0' in text
    assert 'ring_deleted_segments_total{reason="age"} 0.0' in text
    assert f'ring_deleted_bytes_total{{reason="quota"}} {float(ring.deleted()["quota"].bytes)}' in text
    ring.close()
