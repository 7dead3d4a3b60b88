"""The collector's ingestion: registry writes, deduplication, per-message checks (a poisoned message never
costs its batch), the sites/events/db commands, retention, `csu-collector serve` against a real
mosquitto, shared subscriptions. The store itself, on both engines, is in test_store.py."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.commands.registry_cmd import parse_since
from edge_agent.collector.ingest import Ingestor, parse_broker_url
from edge_agent.collector.store import SchemaError, StoreUnavailable, device_clip_url, open_store
from edge_agent.formats.mqtt_wire import SCHEMA, CameraStatus, StatusMessage, encode
from edge_agent.formats.times import iso_ms
from edge_agent.link.localbroker import LocalBroker
from tests.mqtt_support import PROJECT_ROOT, Collector, Recorder

ROOT = "csu/v1"
NOW = 1714564800.0


def _motion(event_id: str, phase: str = "start", ts: float = NOW, **over: object) -> bytes:
    doc = {
        "schema": 1,
        "event_id": event_id,
        "phase": phase,
        "ts": iso_ms(ts),
        "start_ts": iso_ms(NOW),
        "score": 0.5,
        "boxes": [[0.1, 0.1, 0.2, 0.2]],
        "zones": ["door"],
        **over,
    }
    return json.dumps(doc).encode()


def _status(site: str, device: str, ts: float = NOW, states: tuple[str, ...] = ("running",)) -> bytes:
    cameras = [CameraStatus(id=f"cam{i}", state=s, fps=10, drops=0, masks=1) for i, s in enumerate(states)]
    clip_url = f"https://{device}.{site}:8480"
    message = StatusMessage(
        schema=SCHEMA,
        site=site,
        device=device,
        ts=ts,
        version="0.1",
        uptime_s=5,
        cameras=cameras,
        clip_url=clip_url,
    )
    return encode(message.wire())


@pytest.fixture
def ingestor(tmp_path: Path):
    store = open_store(tmp_path / "c.sqlite")
    yield Ingestor(store, ROOT, clock=lambda: NOW + 1)
    store.close()


def test_registry_from_status_availability_and_motion(ingestor: Ingestor) -> None:
    handle = ingestor.handle
    assert handle(f"{ROOT}/s1/d1/availability", b'"online"') == "stored"
    assert handle(f"{ROOT}/s1/d1/status", _status("s1", "d1", states=("running", "disconnected"))) == "stored"
    assert handle(f"{ROOT}/s1/d2/status", _status("s1", "d2")) == "stored"
    assert handle(f"{ROOT}/s2/d9/availability", b'"offline"') == "stored"
    assert handle(f"{ROOT}/s1/d1/cam0/motion", _motion("e1")) == "stored"
    store = ingestor.store
    sites = {s.site: s for s in store.sites()}
    assert (sites["s1"].devices, sites["s1"].online, sites["s1"].cameras, sites["s1"].cameras_running) == (
        2,
        1,
        3,
        2,
    )
    assert (sites["s2"].devices, sites["s2"].online) == (1, 0)
    status = store.device_status("s1", "d1")
    assert status is not None and status.online and status.clip_url == "https://d1.s1:8480"
    assert status.status is not None and status.status["cameras"][1]["state"] == "disconnected"
    assert store.device_status("s1", "nope") is None
    [event] = store.events(site="s1")
    assert (event.device, event.camera, event.event_id, event.zones) == ("d1", "cam0", "e1", ["door"])


def test_motion_deduplicated_but_updates_kept(ingestor: Ingestor) -> None:
    topic = f"{ROOT}/s1/d1/cam0/motion"
    outcomes = [
        ingestor.handle(topic, _motion("e1", "start")),
        ingestor.handle(topic, _motion("e1", "start")),  # redelivered after a reconnect
        ingestor.handle(topic, _motion("e1", "update", NOW + 2)),
        ingestor.handle(topic, _motion("e1", "update", NOW + 4)),
        ingestor.handle(topic, _motion("e1", "update", NOW + 4)),
        ingestor.handle(topic, _motion("e1", "end", NOW + 9)),
    ]
    assert outcomes == ["stored", "duplicate", "stored", "stored", "duplicate", "stored"]
    assert [e.phase for e in ingestor.store.events()] == ["start", "update", "update", "end"]
    assert ingestor.store.counters()["duplicates"] == 2
    # the same event id on another device is another event
    assert ingestor.handle(f"{ROOT}/s1/d2/cam0/motion", _motion("e1", "start")) == "stored"


def test_availability_history_and_stale_status(ingestor: Ingestor) -> None:
    topic = f"{ROOT}/s1/d1/availability"
    for state in (b'"online"', b'"online"', b'"offline"', b'"online"'):
        ingestor.handle(topic, state)
    history = ingestor.store.availability_history("s1", "d1")
    assert [h.state for h in history] == ["online", "offline", "online"]
    ingestor.handle(f"{ROOT}/s1/d1/status", _status("s1", "d1", ts=NOW + 10, states=("running",)))
    assert (
        ingestor.handle(f"{ROOT}/s1/d1/status", _status("s1", "d1", ts=NOW, states=("stopped",))) == "stale"
    )
    status = ingestor.store.device_status("s1", "d1")
    assert status is not None and status.status is not None
    assert status.status["cameras"][0]["state"] == "running"


@pytest.mark.parametrize(
    ("topic", "payload", "error"),
    [
        (f"{ROOT}/s1/d1/cam0/motion", b"{not json", "not UTF-8 JSON"),
        (f"{ROOT}/s1/d1/cam0/motion", _motion("e1", schema=7), "schema: Input should be 1"),
        (f"{ROOT}/s1/d1/cam0/motion", _motion("e1", phase="finish"), "phase: Input should be"),
        (f"{ROOT}/s1/d1/cam0/motion", _motion("e1", boxes="everywhere"), "boxes"),
        (f"{ROOT}/s1/d1/status", _status("s1", "other"), "differ from the topic's s1/d1"),
        (f"{ROOT}/s1/d1/status", b'{"schema": 1, "site": "s1", "device": "d1"}', "ts: Field required"),
        (f"{ROOT}/s1/d1/availability", b"rebooting", "online or offline"),
        (f"{ROOT}/s1/d1/cam0/extra/motion", _motion("e1"), "not availability, status"),
    ],
)
def test_malformed_payloads_counted_logged_skipped(
    ingestor: Ingestor, caplog: pytest.LogCaptureFixture, topic: str, payload: bytes, error: str
) -> None:
    ingestor.handle(f"{ROOT}/s1/d1/cam0/motion", _motion("kept"))
    with caplog.at_level(logging.WARNING, logger="edge_agent.collector.ingest"):
        assert ingestor.handle(topic, payload) == "malformed"
    assert any(topic in r.getMessage() and error in r.getMessage() for r in caplog.records), caplog.text
    assert ingestor.counters.malformed == 1
    assert ingestor.store.counters()["malformed"] == 1
    [(bad_topic, message, _at)] = ingestor.store.malformed()
    assert bad_topic == topic and error in message
    assert [e.event_id for e in ingestor.store.events()] == ["kept"]  # nothing stored before is lost


def test_clip_url_lookup_for_fetch_clip(ingestor: Ingestor, tmp_path: Path) -> None:
    ingestor.handle(f"{ROOT}/s1/d1/status", _status("s1", "d1"))
    no_clip = StatusMessage(schema=SCHEMA, site="s1", device="d2", ts=NOW, version="0.1", uptime_s=1)
    ingestor.handle(f"{ROOT}/s1/d2/status", encode(no_clip.wire()))
    db = tmp_path / "c.sqlite"
    assert device_clip_url(db, "s1", "d1") == "https://d1.s1:8480"
    with pytest.raises(LookupError, match="s1/d9 has never been heard"):
        device_clip_url(db, "s1", "d9")
    with pytest.raises(LookupError, match="published no clip URL"):
        device_clip_url(db, "s1", "d2")
    with pytest.raises(FileNotFoundError, match="no collector database"):
        device_clip_url(tmp_path / "missing.sqlite", "s1", "d1")


def test_sites_and_events_commands(
    ingestor: Ingestor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    live = Ingestor(ingestor.store, ROOT)  # the real clock: "--since 1h" counts from now
    live.handle(f"{ROOT}/s1/d1/availability", b'"online"')
    live.handle(f"{ROOT}/s1/d1/status", _status("s1", "d1", ts=now))
    live.handle(f"{ROOT}/s1/d1/cam0/motion", _motion("old", ts=now - 7200))
    live.handle(f"{ROOT}/s1/d1/cam0/motion", _motion("recent", ts=now - 60))
    live.handle(f"{ROOT}/s2/d2/cam0/motion", _motion("elsewhere", ts=now - 60))
    db = str(tmp_path / "c.sqlite")

    assert collector_main(["sites", "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SITE", "ONLINE", "CAMERAS", "RUNNING", "LAST", "SEEN", "(UTC)"]
    assert out[1].split()[:3] == ["s1", "1/1", "1/1"]

    assert collector_main(["sites", "--db", db, "--json"]) == 0
    sites = json.loads(capsys.readouterr().out)
    assert sites[0]["devices"][0]["clip_url"] == "https://d1.s1:8480"

    assert collector_main(["events", "--db", db, "--site", "s1", "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "recent" in lines[1] and "door" in lines[1]

    since = iso_ms(now - 3 * 3600)
    assert collector_main(["events", "--db", db, "--site", "s1", "--since", since, "--json"]) == 0
    assert [e["event_id"] for e in json.loads(capsys.readouterr().out)] == ["old", "recent"]

    assert collector_main(["events", "--db", db, "--site", "s1", "--since", "last tuesday"]) == 2
    assert "--since 'last tuesday'" in capsys.readouterr().out
    assert collector_main(["sites", "--db", str(tmp_path / "none.sqlite")]) == 1
    assert "no collector database" in capsys.readouterr().out


def test_parse_since() -> None:
    assert parse_since("15m", 1000.0) == 100.0
    assert parse_since("2h", 10000.0) == 2800.0
    assert parse_since("2024-05-01T12:00:00Z", 0) == NOW


def test_broker_url_parsing() -> None:
    address = parse_broker_url("mqtts://csu:p%40ss@broker.csu:8884")
    assert (address.host, address.port, address.tls, address.username, address.password) == (
        "broker.csu",
        8884,
        True,
        "csu",
        "p@ss",
    )
    assert parse_broker_url("mqtt://10.0.0.5").port == 1883
    with pytest.raises(ValueError, match="scheme must be mqtt"):
        parse_broker_url("http://x")
    with pytest.raises(ValueError, match="port is not a number"):
        parse_broker_url("mqtt://x:99999")


def test_serve_command_follows_a_real_broker(mosquitto: LocalBroker, tmp_path: Path) -> None:
    db = tmp_path / "registry.sqlite"
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.collector.commands.cli",
            "serve",
            "--broker",
            mosquitto.url,
            "--db",
            str(db),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    publisher = Recorder(mosquitto.port, "nothing/#")
    try:
        publisher.publish(
            f"{ROOT}/s1/d1/status", _status("s1", "d1"), retain=True
        )  # retained: seen on subscribe
        deadline = time.monotonic() + 15
        stored: list[str] = []
        while time.monotonic() < deadline and len(stored) < 2:
            publisher.publish(f"{ROOT}/s1/d1/cam0/motion", b"garbage")
            publisher.publish(f"{ROOT}/s1/d1/cam0/motion", _motion("e1"))
            publisher.publish(f"{ROOT}/s1/d1/cam0/motion", _motion("e2"))
            time.sleep(0.3)
            with contextlib.suppress(FileNotFoundError, SchemaError, StoreUnavailable):  # serve starting
                reader = open_store(db, readonly=True)
                stored = [e.event_id for e in reader.events()]
                reader.close()
        assert stored == ["e1", "e2"]
    finally:
        publisher.close()
        serve.send_signal(signal.SIGTERM)
        _, stderr = serve.communicate(timeout=15)
    assert serve.returncode == 0, stderr
    assert "malformed payload from s1/d1 on csu/v1/s1/d1/cam0/motion skipped" in stderr
    reader = open_store(db, readonly=True)
    try:
        assert reader.device_status("s1", "d1") is not None
        assert reader.counters()["malformed"] >= 1
    finally:
        reader.close()


def test_shared_subscription_splits_the_load(mosquitto: LocalBroker, tmp_path: Path) -> None:
    first = Collector(mosquitto, tmp_path / "a.sqlite", share_group="csu")
    second = Collector(mosquitto, tmp_path / "b.sqlite", share_group="csu")
    publisher = Recorder(mosquitto.port, "nothing/#")
    try:
        for i in range(40):
            publisher.publish(f"{ROOT}/s1/d{i % 4}/cam0/motion", _motion(f"e{i:02d}"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ids_a = [e.event_id for e in first.store.events()]
            ids_b = [e.event_id for e in second.store.events()]
            if len(ids_a) + len(ids_b) >= 40:
                break
            time.sleep(0.05)
    finally:
        publisher.close()
        first.close()
        second.close()
    assert sorted(ids_a + ids_b) == [f"e{i:02d}" for i in range(40)]  # each message to exactly one
    assert ids_a and ids_b
