"""`edge-agent doctor` on a good and on broken set-ups: real video file, real broker, real key files."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.commands.cli import main
from edge_agent.commands.doctor import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_OK,
    Status,
    check_broker,
    check_clock,
    estimate_bytes_per_hour,
)
from edge_agent.formats.config import parse_config
from edge_agent.formats.keys import generate_csu_keys, generate_device_key
from edge_agent.link.localbroker import LocalBroker, free_port

MASK = {"name": "window", "points": [[0.0, 0.0], [0.3, 0.0], [0.3, 0.4], [0.0, 0.4]]}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A real mosquitto that wants a password, like the CSU's."""
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "ville-01/pi-a", "s3cret"], check=True)
    extra = ["allow_anonymous false", f"password_file {passwd}"]
    with LocalBroker(extra_config=extra, persistence=False) as running:
        yield running


@pytest.fixture
def site(tmp_path: Path, datasets: Path, broker: LocalBroker) -> dict[str, Any]:
    """A healthy device: a real video file camera, keys from provisioning, storage, broker."""
    device = generate_device_key(tmp_path / "keys")
    csu = generate_csu_keys(tmp_path / "csu")
    return {
        "site_id": "ville-01",
        "device_id": "pi-a",
        "cameras": [
            {
                "id": "square",
                "source": str(datasets / "video" / "vtest.avi"),
                "resolution": [768, 576],
                "masks": [MASK],
            }
        ],
        "storage": {"path": str(tmp_path / "segments"), "retention_days": 1, "min_free_bytes": 0},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port,
            "username": "ville-01/pi-a",
            "password": "s3cret",
            "outbox_path": str(tmp_path / "outbox.sqlite"),
        },
        "clip_server": {"bind": "127.0.0.1", "port": free_port(), "audit_log": str(tmp_path / "a.jsonl")},
        "keys": {
            "device_key": str(device.private),
            "csu_sealing_public_key": str(csu.sealing.public),
            "collector_public_keys": [str(csu.signing.public)],
        },
    }


def run_doctor(
    tmp_path: Path, document: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, str]]:
    """Run the real command; its exit code and `check name -> line`."""
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(document))
    code = main(["doctor", "--config", str(path), "--timeout", "5"])
    lines = capsys.readouterr().out.splitlines()
    checks = {}
    for line in lines:
        status, _, rest = line.partition(" ")
        if status in ("ok", "warn", "fail"):
            checks[rest.strip().split(":", 1)[0]] = line
    return code, checks


def test_good_setup_passes(tmp_path: Path, site: dict[str, Any], capsys: Any) -> None:
    code, checks = run_doctor(tmp_path, site, capsys)
    expected_ok = [
        "camera square reachable",
        "camera square masks",
        "storage writable",
        "storage room for retention",
        "broker reachable",
        "device key",
        "CSU sealing key",
        "collector key",
        "clip server port free",
    ]
    for name in expected_ok:
        assert checks[name].startswith("ok "), checks
    assert "768x576" in checks["camera square reachable"]
    assert "12.1% of 768x576" in checks["camera square masks"]  # 0.3 x 0.4, edges included
    assert "as 'ville-01/pi-a'" in checks["broker reachable"]
    port = site["clip_server"]["port"]
    assert checks["broker reachable"].endswith(f"; the CSU is told clip URL http://127.0.0.1:{port}")
    # The sandbox's clock may or may not be NTP-synchronized: never a failure when it is plausible.
    assert not checks["clock synchronized"].startswith("fail")
    assert code == EXIT_OK


def test_broken_setup_explains_and_blocks(
    tmp_path: Path, site: dict[str, Any], datasets: Path, capsys: Any
) -> None:
    site["cameras"] = [
        {"id": "gone", "source": str(tmp_path / "missing.avi"), "masks": [MASK]},
        {"id": "bare", "source": str(datasets / "video" / "vtest.avi"), "resolution": [768, 576]},
        {
            "id": "wide",
            "source": str(datasets / "video" / "vtest.avi"),
            "resolution": [1280, 720],
            "masks": [MASK],
        },
    ]
    (tmp_path / "not-a-dir").write_text("a file where the storage directory should be")
    site["storage"]["path"] = str(tmp_path / "not-a-dir")
    Path(site["keys"]["device_key"]).chmod(0o644)
    site["keys"]["csu_sealing_public_key"] = site["keys"]["collector_public_keys"][0]  # wrong type
    site["mqtt"]["password"] = "wrong"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        site["clip_server"]["port"] = taken.getsockname()[1]
        code, checks = run_doctor(tmp_path, site, capsys)

    assert code == EXIT_BLOCKED
    assert checks["camera gone reachable"].startswith("fail")
    assert "does not exist" in checks["camera gone reachable"]
    assert "(blocks recording)" in checks["camera gone reachable"]
    assert checks["camera bare masks"].startswith("fail")
    assert "requires privacy masks and has none" in checks["camera bare masks"]
    assert checks["camera wide masks"].startswith("fail")
    assert "gives 768x576 but the masks were placed for a 1280x720 framing" in checks["camera wide masks"]
    assert checks["storage writable"].startswith("fail")
    assert checks["device key"].startswith("fail") and "chmod 600" in checks["device key"]
    assert checks["CSU sealing key"].startswith("fail")
    assert "expected an X25519 public key" in checks["CSU sealing key"]
    assert checks["broker reachable"].startswith("fail") and "refused" in checks["broker reachable"]
    assert checks["clip server port free"].startswith("fail")
    assert "Address already in use" in checks["clip server port free"]


def test_link_failures_alone_do_not_block_recording(
    tmp_path: Path, site: dict[str, Any], capsys: Any
) -> None:
    site["mqtt"]["port"] = free_port()  # nobody listens there
    code, checks = run_doctor(tmp_path, site, capsys)
    assert checks["broker reachable"].startswith("fail")
    assert "events wait in the outbox" in checks["broker reachable"]
    assert "(blocks recording)" not in checks["broker reachable"]
    assert code == EXIT_FAILED


def test_missing_broker_tls_file_is_named(tmp_path: Path, site: dict[str, Any]) -> None:
    site["mqtt"]["tls"] = {"ca_file": str(tmp_path / "csu-ca.crt")}
    result = check_broker(parse_config(site), timeout_s=5)
    assert result.status is Status.FAIL and not result.blocks_recording
    assert result.detail == f"TLS CA file {tmp_path / 'csu-ca.crt'} is missing"


def test_clip_url_the_csu_cannot_reach_is_a_warning(site: dict[str, Any]) -> None:
    """An IPv6-only wildcard bind cannot be reached at the IPv4 address the broker connection uses."""
    site["clip_server"]["bind"] = "::"
    result = check_broker(parse_config(site), timeout_s=5)
    assert result.status is Status.WARN
    assert result.detail.endswith(
        "no clip URL the CSU can reach: set clip_server.advertise_url or a bind address"
    )


def test_unreadable_broker_ca_is_named(tmp_path: Path, site: dict[str, Any]) -> None:
    ca_file = tmp_path / "csu-ca.crt"
    ca_file.write_text("not a certificate")
    site["mqtt"]["tls"] = {"ca_file": str(ca_file)}
    result = check_broker(parse_config(site), timeout_s=5)
    assert result.status is Status.FAIL and "mqtt.tls: cannot load the TLS files" in result.detail


def test_invalid_config_is_reported_by_field(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"site_id": "ville-01", "device_id": "Pi A", "cameras": []}))
    assert main(["doctor", "--config", str(path)]) == EXIT_BLOCKED
    out = capsys.readouterr().out
    assert "device_id: String should match pattern" in out


def test_storage_too_small_for_retention_warns(tmp_path: Path) -> None:
    from edge_agent.commands.doctor import check_storage

    config = parse_config(
        {
            "site_id": "s",
            "device_id": "d",
            "cameras": [{"id": "c", "source": "synthetic", "masks": [MASK]}],
            "storage": {"path": str(tmp_path), "retention_days": 15, "max_bytes": 10_000_000_000},
        }
    )
    writable, room = check_storage(config)
    assert writable.status is Status.OK
    assert room.status is Status.WARN
    assert "only about" in room.detail and "older footage will be deleted early" in room.detail


def test_clock_checks() -> None:
    assert check_clock(now=lambda: 978_307_200.0).status is Status.FAIL  # 2001: an RTC-less boot
    recent = 1_767_225_600.0  # 2026-01-01
    assert check_clock(now=lambda: recent, state=lambda: (True, "test")).status is Status.OK
    unsynced = check_clock(now=lambda: recent, state=lambda: (False, "test"))
    assert unsynced.status is Status.WARN and "NTP" in unsynced.detail
    assert check_clock(now=lambda: recent, state=lambda: (None, "test")).status is Status.WARN


def test_bytes_per_hour_estimate() -> None:
    def camera(**storage: Any) -> float:
        config = parse_config(
            {
                "site_id": "s",
                "device_id": "d",
                "cameras": [{"id": "c", "source": "synthetic", "resolution": [1280, 720], "fps": 10}],
                "storage": storage,
            }
        )
        return estimate_bytes_per_hour(config.cameras[0], config.storage)

    assert camera(crf=23) == pytest.approx(2 * camera(crf=29))  # +6 CRF halves the rate
    assert camera(bitrate_kbps=1000) == pytest.approx(450e6)
    assert camera(codec="mjpeg") > 5 * camera(crf=28)
    # bench_storage measured 608 MB per hour for this camera on the synthetic scene.
    assert 500e6 < camera(crf=28) < 800e6


def _recorded_hour(root: Path, per_segment: int) -> int:
    """Six real sealed segments of 10 min each, ending now, of `per_segment` bytes of packets each."""
    import os
    import time
    from fractions import Fraction

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edge_agent.formats.config import StorageConfig
    from edge_agent.formats.media import EncodedPacket, StreamInfo
    from edge_agent.storage.ringbuffer import RingBuffer
    from tests.clip_support import seal_segment

    start = time.time() - 3600
    device, csu = Ed25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
    ring = RingBuffer(root, StorageConfig(path=root, min_free_bytes=0))
    stream = StreamInfo("h264", "libx264", 64, 48, "yuv420p", Fraction(1, 1000), 10.0, start)
    for i in range(6):
        packet = EncodedPacket(i * 600_000, i * 600_000, 600_000, True, os.urandom(per_segment))
        seal_segment(ring, stream, [packet], device, csu, "c")
    stored = ring.total_bytes()
    ring.close()
    return stored


@pytest.mark.parametrize(
    ("quota", "status", "days"), [(10_000_000, Status.WARN, 0.4), (200_000_000, Status.OK, 8.6)]
)
def test_doctor_measures_the_days_the_disk_really_holds(
    tmp_path: Path, quota: int, status: Status, days: float
) -> None:
    """An hour of footage at ~23 MB/day against the quota: the days held, measured, not estimated."""
    from edge_agent.commands.doctor import check_measured_days

    config = parse_config(
        {
            "site_id": "s",
            "device_id": "d",
            "cameras": [{"id": "c", "source": "synthetic", "masks": [MASK]}],
            "storage": {"path": str(tmp_path), "retention_days": 1, "max_bytes": quota, "min_free_bytes": 0},
        }
    )
    assert check_measured_days(config).detail == "nothing recorded yet: only the estimate above"
    stored = _recorded_hour(tmp_path, 160_000)
    result = check_measured_days(config)
    per_day = stored * 24
    assert result.status is status
    assert f"recorded {per_day / 1e6:.1f} MB/day (measured over 1.0 h of footage)" in result.detail
    assert f"about {quota / per_day:.1f} days" in result.detail and f"{quota / per_day:.1f}" == f"{days:.1f}"
    assert ("less than the 1-day retention: the quota rule will delete" in result.detail) is (
        status is Status.WARN
    )


@pytest.mark.parametrize(
    ("storage", "status", "detail"),
    [
        (
            {},
            Status.OK,
            "libx264 encodes 1280x720 (a test encode of a few frames); no hardware H.264 encoder",
        ),
        (
            {"encoder": "h264_bogus"},
            Status.WARN,
            "encoder 'h264_bogus': not in this FFmpeg build: the agent falls back to libx264",
        ),
        ({"codec": "mjpeg"}, Status.OK, "mjpeg encodes 1280x720 (a test encode of a few frames)"),
    ],
)
def test_doctor_opens_the_encoder_for_real(storage: dict[str, Any], status: Status, detail: str) -> None:
    """Not only the name: the encoders the recorder would try are opened and fed a few frames."""
    from edge_agent.commands.doctor import check_encoder

    config = parse_config(
        {
            "site_id": "s",
            "device_id": "d",
            "cameras": [
                {"id": "small", "source": "synthetic", "masks": [MASK], "resolution": [640, 360]},
                {"id": "big", "source": "synthetic", "masks": [MASK], "resolution": [1280, 720]},
            ],
            "storage": storage,
        }
    )
    result = check_encoder(config)
    assert result.status is status and detail in result.detail


def test_doctor_blocks_recording_when_no_encoder_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """An FFmpeg build without libx264 (a minimal distribution package) and a bogus name: nothing works."""
    from edge_agent.commands.doctor import check_encoder
    from edge_agent.storage import encoder

    monkeypatch.setitem(encoder.DEFAULT_ENCODERS, "h264", "libx264_missing")
    config = parse_config(
        {
            "site_id": "s",
            "device_id": "d",
            "cameras": [{"id": "c", "source": "synthetic", "masks": [MASK]}],
            "storage": {"encoder": "h264_bogus"},
        }
    )
    result = check_encoder(config)
    assert result.status is Status.FAIL and result.blocks_recording
    assert "no encoder works at 1280x720: encoder 'h264_bogus': not in this FFmpeg build;" in result.detail
    assert "encoder 'libx264_missing': not in this FFmpeg build" in result.detail
