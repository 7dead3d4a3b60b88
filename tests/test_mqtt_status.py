"""The status document built in one place (`link.status`), and the one rule for the clip URL it advertises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from edge_agent.camera.pipeline import CameraState, CameraStats
from edge_agent.formats.clip_url import advertised_clip_url, local_clip_url
from edge_agent.formats.config import AgentConfig, ClipServerConfig, parse_config
from edge_agent.formats.mqtt_wire import DiskStatus, TopicInfo, encode, parse_status
from edge_agent.link.health import Health
from edge_agent.link.mqtt import route_address
from edge_agent.link.status import CameraReport, DeviceReport, LinkStats, build_status
from edge_agent.storage.recorder import RecorderStats

EXAMPLE = Path(__file__).resolve().parent.parent / "firmware_cfg" / "site.example.yaml"
NOW = 1714564900.0
MASK = {"points": [[0, 0], [0.2, 0], [0.2, 0.2]]}


def _config() -> AgentConfig:
    return parse_config(
        {
            "site_id": "ville-01",
            "device_id": "pi-07",
            "cameras": [
                {"id": "door", "source": "synthetic", "masks": [MASK, MASK]},
                {"id": "off", "source": "synthetic", "masks": [MASK], "recording": "motion"},
                {
                    "id": "usb",
                    "source": {"kind": "opencv", "uri": "/dev/x", "usb_id": "SN1"},
                    "masks": [MASK],
                },
            ],
            "storage": {"max_bytes": 5000},
        }
    )


def _status(config: AgentConfig, error: str = "") -> dict[str, Any]:
    door, off, usb = config.cameras
    running = CameraStats("door", CameraState.RUNNING, 9.5, 95, 2, (640, 360), 2, 1, True, 0, "")
    recorder = RecorderStats("door", True, 3, 4096, 90, 0, 1, "")
    report = DeviceReport(
        [
            CameraReport(door, running, recorder, "/dev/video2"),
            CameraReport(off),
            CameraReport(usb),
        ],
        {"046d:0826@1-1.3": "/dev/video4"},
        oldest_ts=1714564800.5,
    )
    link = LinkStats(True, 2, 4, 1, 0, 1, 3, 1, "")
    health = Health(51.2, (0.123, 0.456, 0.789), DiskStatus(used=10, free=20, total=30, quota=5000))
    message = build_status(
        config,
        report,
        now=NOW,
        started_at=NOW - 12.34,
        health=health,
        link=link,
        clip_url="http://10.1.2.3:8480",
        error=error,
    )
    return json.loads(encode(message.wire()))


def test_the_status_document_on_the_wire() -> None:
    """Every key the device has always sent, with the same values (a camera's absent facts stay absent)."""
    status = _status(_config())
    assert status == {
        "schema": 1,
        "site": "ville-01",
        "device": "pi-07",
        "ts": "2024-05-01T12:01:40.000Z",
        "version": status["version"],
        "uptime_s": 12.3,
        "cameras": [
            {
                "id": "door",
                "state": "running",
                "fps": 9.5,
                "drops": 2,
                "resolution": [640, 360],
                "masks": 2,
                "recording": "continuous",
                "frames": 95,
                "reconnects": 1,
                "event_open": True,
                "device": "/dev/video2",
                "recorder": {"segments": 3, "bytes": 4096, "errors": 0, "frames_dropped_disk": 1},
            },
            {
                "id": "off",
                "state": "stopped",
                "fps": 0.0,
                "drops": 0,
                "resolution": None,
                "masks": 1,
                "recording": "motion",
            },
            {
                "id": "usb",
                "state": "disconnected",
                "fps": 0.0,
                "drops": 0,
                "resolution": None,
                "masks": 1,
                "recording": "continuous",
            },
            {
                "id": "046d:0826@1-1.3",
                "state": "unconfigured",
                "fps": 0.0,
                "drops": 0,
                "resolution": None,
                "masks": 0,
                "device": "/dev/video4",
            },
        ],
        "cpu_temp_c": 51.2,
        "load": [0.12, 0.46, 0.79],
        "disk": {"used": 10, "free": 20, "total": 30, "quota": 5000},
        "retention": {"oldest_ts": "2024-05-01T12:00:00.500Z", "days": 15.0},
        "clip_url": "http://10.1.2.3:8480",
        "outbox": {"pending": 4, "dropped": 1, "corrupt_files": 0},
        "mqtt": {"connections": 2, "rejected": 1, "commands": 3, "command_errors": 1},
        "heartbeat_s": 300.0,
        "max_clip_seconds": 14400.0,
    }
    assert status["version"]


def test_the_collector_parses_what_the_device_builds() -> None:
    raw = encode(_status(_config()))
    parsed = parse_status(raw, TopicInfo("status", "ville-01", "pi-07"))
    assert parsed.ts == NOW and parsed.retention is not None and parsed.retention.oldest_ts == 1714564800.5
    assert [c.state for c in parsed.cameras] == ["running", "stopped", "disconnected", "unconfigured"]
    assert parsed.cameras[0].recorder is not None and parsed.cameras[0].recorder.segments == 3
    assert parsed.wire() == json.loads(raw), "a parsed status writes back the same document"


def test_the_status_says_where_the_device_stands_when_the_config_does() -> None:
    located = _config().model_copy(
        update={"location": parse_config({"site_id": "s", "device_id": "d", "location": {
            "lat": 43.6047, "lon": 1.4442, "label": "place du Capitole"}}).location}
    )  # fmt: skip
    status = _status(located)
    assert status["location"] == {"lat": 43.6047, "lon": 1.4442, "label": "place du Capitole"}
    parsed = parse_status(encode(status), TopicInfo("status", "ville-01", "pi-07"))
    assert parsed.location is not None and parsed.location.label == "place du Capitole"
    assert "location" not in _status(_config())  # omitted, not null, when the config has none


def test_a_failed_agent_part_is_named() -> None:
    status = _status(_config(), error="RuntimeError: camera table locked")
    assert status["status_error"] == "RuntimeError: camera table locked"


# --- the clip URL ----------------------------------------------------------------------------------


def _clip(**fields: Any) -> ClipServerConfig:
    return parse_config({"site_id": "s", "device_id": "d", "clip_server": fields}).clip_server


def test_the_shipped_example_advertises_the_broker_facing_address() -> None:
    """site.example.yaml binds 0.0.0.0: the CSU is told the address this device reaches the broker from."""
    example = parse_config(yaml.safe_load(EXAMPLE.read_text())).clip_server
    assert example.bind == "0.0.0.0" and not example.advertise_url
    assert advertised_clip_url(example, "10.20.30.40") == "http://10.20.30.40:8480"
    assert advertised_clip_url(example, "10.20.30.40", port=9001) == "http://10.20.30.40:9001"
    assert advertised_clip_url(example, "") == "", "no address known: no URL rather than a loopback one"


def test_clip_url_rule() -> None:
    assert advertised_clip_url(_clip(advertise_url="https://pi.ville.example:1/"), "10.0.0.9") == (
        "https://pi.ville.example:1"
    )
    assert advertised_clip_url(_clip(bind="192.168.1.5", port=9000), "10.0.0.9") == "http://192.168.1.5:9000"
    assert advertised_clip_url(_clip(bind="fd00::5"), "10.0.0.9") == "http://[fd00::5]:8480"
    assert advertised_clip_url(_clip(bind=""), "fd00::7") == "http://[fd00::7]:8480"
    assert advertised_clip_url(_clip(bind="::"), "fd00::7") == "http://[fd00::7]:8480"
    # asyncio listens on one family for each wildcard: the other family's address would not answer.
    assert advertised_clip_url(_clip(bind="::"), "10.0.0.9") == ""
    assert advertised_clip_url(_clip(bind="0.0.0.0"), "fd00::7") == ""
    assert advertised_clip_url(_clip(enabled=False), "10.0.0.9") == ""


def test_clip_url_is_https_with_a_certificate(tmp_path: Path) -> None:
    tls = {"tls_cert": str(tmp_path / "c.pem"), "tls_key": str(tmp_path / "k.pem")}
    assert advertised_clip_url(_clip(**tls), "10.0.0.9") == "https://10.0.0.9:8480"
    assert local_clip_url(_clip(**tls), 4443) == "https://127.0.0.1:4443"


def test_local_clip_url_reaches_a_wildcard_on_loopback() -> None:
    assert local_clip_url(_clip(), 8481) == "http://127.0.0.1:8481"
    assert local_clip_url(_clip(bind="::")) == "http://[::1]:8480"
    assert local_clip_url(_clip(bind="192.168.1.5")) == "http://192.168.1.5:8480"


def test_route_address_is_a_local_route_lookup() -> None:
    assert route_address("127.0.0.1", 1883) == "127.0.0.1"
    assert route_address("no-such-host.invalid", 1883) == ""
