"""What the console adds on the wire: the officer in signed clip and hold requests, the device location."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.api.clip_server import ClipServer
from edge_agent.collector.download import FetchError
from edge_agent.formats.config import ConfigError, parse_config
from edge_agent.formats.references import reference_problem
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import audit_lines, device_config, endpoint, random_ring, running_server

T0 = 1_700_000_000.0
CLIP = [("camera", "cam1"), ("start", str(T0 + 4)), ("end", str(T0 + 8)), ("requisition", "PV 2024/7")]


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in ("device", "collector")}


@pytest.fixture
def served(tmp_path: Path, keys) -> Iterator[tuple[ClipServer, RingBuffer]]:
    config = device_config(tmp_path, max_clip_seconds=60, requests_per_minute=1000)
    ring = random_ring(tmp_path / "ring", keys["device"], T0, count=5)
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        yield server, ring
    ring.close()


def _clip_entries(server: ClipServer, count: int) -> list[dict]:
    deadline = time.monotonic() + 5
    while True:
        entries = [e for e in audit_lines(server.config) if e["action"] == "clip"]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)


def test_officer_of_a_clip_request_is_in_the_device_audit(served, keys) -> None:
    server, _ = served
    response = endpoint(server, keys["collector"]).request(
        "GET", "/v1/clips", [*CLIP, ("officer", "OPJ jdupont")]
    )
    assert response.status_code == 200
    entries = _clip_entries(server, 2)
    assert [e["officer"] for e in entries] == ["OPJ jdupont", "OPJ jdupont"]


def test_a_clip_request_without_officer_still_works(served, keys) -> None:
    server, _ = served
    response = endpoint(server, keys["collector"]).request("GET", "/v1/clips", CLIP)
    assert response.status_code == 200
    assert "officer" not in _clip_entries(server, 1)[0]


@pytest.mark.parametrize("officer", ["../etc/passwd", "<script>", "/root", "x" * 129])
def test_a_bad_officer_is_refused_and_named(served, keys, officer: str) -> None:
    server, _ = served
    response = endpoint(server, keys["collector"]).request("GET", "/v1/clips", [*CLIP, ("officer", officer)])
    body = json.loads(response.content)
    assert response.status_code == 400 and body["error"] == "bad-officer"
    assert body["message"].startswith("officer:")
    assert audit_lines(server.config)[-1]["reason"] == "bad-officer"


def test_a_hold_carries_its_officer_to_the_device_audit(served, keys) -> None:
    server, ring = served
    ep = endpoint(server, keys["collector"])
    body = {"camera": "cam1", "start": T0, "end": T0 + 10, "requisition": "PV-1", "officer": "jdupont"}
    ep.call_json("POST", "/v1/holds", body=json.dumps(body).encode())
    assert [h.requisition for h in ring.holds()] == ["PV-1"]
    hold_line = next(e for e in audit_lines(server.config) if e["action"] == "hold")
    assert hold_line["officer"] == "jdupont" and hold_line["requisition"] == "PV-1"
    with pytest.raises(FetchError) as bad:
        ep.call_json("POST", "/v1/holds", body=json.dumps(body | {"officer": "a..b"}).encode())
    assert bad.value.reason == "bad-officer"


def test_reference_rule_names_the_field() -> None:
    assert reference_problem("officer", "OPJ Martin") == ""
    assert reference_problem("requisition", "PV 2024/118-B") == ""
    assert reference_problem("officer", "a..b").startswith("officer: 'a..b' must be")
    assert reference_problem("requisition", "").startswith("requisition:")


def _document(**extra: object) -> dict:
    return {"site_id": "ville-01", "device_id": "pi-01", **extra}


def test_device_location_is_optional_and_checked() -> None:
    assert parse_config(_document()).location is None
    where = parse_config(_document(location={"lat": 48.85, "lon": 2.35, "label": "Mairie"})).location
    assert where is not None and (where.lat, where.lon, where.label) == (48.85, 2.35, "Mairie")
    with pytest.raises(ConfigError) as error:
        parse_config(_document(location={"lat": 91, "lon": 2.35}))
    assert any(line.startswith("location.lat") for line in error.value.errors)
