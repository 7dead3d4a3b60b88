"""The collector's ingestion: registry writes, deduplication, per-message checks (a poisoned message never
costs its batch), the sites/events/db commands, retention, `csu-collector serve` against a real
mosquitto, shared subscriptions. The store itself, on both engines, is in test_store.py."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.commands.registry_cmd import parse_since
from edge_agent.collector.ingest import Ingestor, parse_broker_url
from edge_agent.collector.store import (
    SchemaError,
    StatusRecord,
    StoreUnavailable,
    device_clip_url,
    open_store,
    upgrade_schema,
)
from edge_agent.formats.keys import (
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
    load_x25519_private,
)
from edge_agent.formats.mqtt_wire import SCHEMA, CameraStatus, StatusMessage, encode
from edge_agent.formats.times import iso_ms
from edge_agent.link.localbroker import LocalBroker
from tests.clip_support import device_config, encode_segments, running_server
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
    sites = {s.site: s for s in store.sites(NOW + 1)}
    s1 = sites["s1"]  # d2 never said it is online: its camera is not counted as running
    assert (s1.devices, s1.online, s1.cameras, s1.cameras_running) == (2, 1, 3, 1)
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
    assert [e.phase for e in ingestor.store.events()] == ["end", "update", "update", "start"]
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
    assert [e["event_id"] for e in json.loads(capsys.readouterr().out)] == ["recent", "old"]

    assert collector_main(["events", "--db", db, "--site", "s1", "--since", "last tuesday"]) == 2
    assert "--since 'last tuesday'" in capsys.readouterr().out
    assert collector_main(["sites", "--db", str(tmp_path / "none.sqlite")]) == 1
    assert "--db: " in (out := capsys.readouterr().out) and "no collector database" in out


def test_sites_counts_running_cameras_of_online_devices_with_a_fresh_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 6: a device whose last will came was listed with CAMERAS RUNNING 2/2."""
    now = time.time()
    store = open_store(tmp_path / "c.sqlite")
    live = Ingestor(store, ROOT)
    two = ("running", "running")
    for device, age in (("up", 5), ("dead", 5), ("silent", 200)):
        live.handle(f"{ROOT}/s1/{device}/availability", b'"online"')
        live.handle(f"{ROOT}/s1/{device}/status", _status("s1", device, ts=now - age, states=two))
    live.handle(f"{ROOT}/s1/dead/cam0/motion", _motion("open", ts=now - 3, start_ts=iso_ms(now - 3)))
    live.handle(f"{ROOT}/s1/dead/availability", b'"offline"')
    store.close()
    db = str(tmp_path / "c.sqlite")
    assert collector_main(["sites", "--db", db]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["s1", "2/3", "2/6"]
    assert collector_main(["sites", "--db", db, "--stale-after", "300", "--json"]) == 0
    [site] = json.loads(capsys.readouterr().out)
    assert (site["online"], site["cameras_running"], site["cameras"]) == (2, 4, 6)  # `silent` is fresh
    for bad in ("0", "-5", "nan"):
        assert collector_main(["sites", "--db", db, "--stale-after", bad]) == 2
        assert f"--stale-after {float(bad):g}: must be a positive number" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        collector_main(["sites", "--help"])
    assert "(default 90: 3 x the 30 s status interval" in " ".join(capsys.readouterr().out.split())
    # the event open when the device died was ended by the collector, and says so
    assert collector_main(["events", "--db", db, "--site", "s1", "--json"]) == 0
    [end, start] = json.loads(capsys.readouterr().out)
    assert (end["phase"], end["end_reason"], start["end_reason"]) == ("end", "device-offline", None)
    assert collector_main(["events", "--db", db, "--site", "s1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[3] == "end:device-offline"


def test_events_command_lists_the_newest_first_and_a_limit_keeps_the_newest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 7: `csu-collector events --limit 8` printed the 8 oldest of 12."""
    now = time.time()
    store = open_store(tmp_path / "c.sqlite")
    live = Ingestor(store, ROOT)
    for i in range(12):
        live.handle(f"{ROOT}/s1/d1/cam0/motion", _motion(f"e{i:02d}", ts=now - 600 + i))
    store.close()
    db = str(tmp_path / "c.sqlite")
    assert collector_main(["events", "--db", db, "--site", "s1", "--limit", "8", "--json"]) == 0
    listed = [e["event_id"] for e in json.loads(capsys.readouterr().out)]
    assert listed == [f"e{i:02d}" for i in range(11, 3, -1)]
    assert collector_main(["events", "--db", db, "--site", "s1", "--limit", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[4] for row in rows] == ["e11", "e10", "e09"]
    assert collector_main(["events", "--db", db, "--site", "s1", "--limit", "0"]) == 2
    assert "--limit 0: must be at least 1" in capsys.readouterr().out


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
                stored = [e.event_id for e in reader.motion_after(0)]
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


# --- one message, one verdict: a poisoned message never costs its batch (issue 13 item 7) -------------

DEEP = b'{"schema": 1, "event_id": "deep", "zones": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
POISONS: list[tuple[str, bytes, str]] = [
    (
        "cam0/motion",
        _motion("nan").replace(b'"score": 0.5', b'"score": NaN'),
        "score: must be a finite number",
    ),
    (
        "cam0/motion",
        _motion("inf").replace(b'"score": 0.5', b'"score": 1e400'),
        "score: must be a finite number",
    ),
    ("cam0/motion", _motion("huge-zones", zones=["z" * 40] * 100_000), "bytes, over 65536"),
    ("cam0/motion", _motion("many-zones", zones=[f"z{i}" for i in range(65)]), "zones: more than 64"),
    ("cam0/motion", _motion("year-1", ts=-62135596800.0), "ts: not a plausible time"),
    (
        "cam0/motion",
        _motion("y1-offset").replace(b"2024-05-01T12:00:00.000Z", b"0001-01-01T00:30:00+01:00"),
        "ts",
    ),
    (
        "cam0/motion",
        _motion("year-9999").replace(b"2024-05-01T12:00:00.000Z", b"9999-12-31T23:59:59-01:00"),
        "ts",
    ),
    ("cam0/motion", _motion("ahead", ts=NOW + 3 * 86400), "ts: not a plausible time"),
    ("cam0/motion", _motion("backwards", ts=NOW - 10), "start_ts: after ts"),
    ("cam0/motion", _motion("score-2", score=2.0), "score: 2.0 is outside 0..1"),
    ("cam0/motion", _motion("box", boxes=[[0.1, 0.1, 5.0, 0.1]]), "boxes.0: 5.0 is outside 0..1"),
    ("cam0/motion", _motion("nul\u0000id"), "event_id: must be 1 to 128 printable characters"),
    ("cam0/motion", _motion("surrogate", zones=["\ud800"]), "zones.0: must be 1 to 64 printable"),
    ("cam0/motion", DEEP, "RecursionError"),
    ("x" * 200 + "/motion", _motion("long-camera"), "topic camera: must be 1 to 64"),
    ("status", _status("s1", "d1").replace(b'"drops":0', b'"drops":' + b"9" * 30), "cameras.0.drops"),
    (
        "status",
        _status("s1", "d1", states=("running", "running")).replace(b'"cam1"', b'"cam0"'),
        "appears twice",
    ),
    (
        "status",
        _status("s1", "d1").replace(b'"uptime_s":5.0', b'"uptime_s":Infinity'),
        "uptime_s: must be a finite",
    ),
    (
        "status",
        _status("s1", "d1").replace(b'"uptime_s":5.0', b'"uptime_s":5.0,"heartbeat_s":0'),
        "heartbeat_s: 0.0 is outside 1..86400",
    ),
]


def test_poisoned_messages_refused_one_by_one_and_every_good_one_stored(
    ingestor: Ingestor, caplog: pytest.LogCaptureFixture
) -> None:
    good = [(f"{ROOT}/s1/d2/cam0/motion", _motion(f"good{i:03d}")) for i in range(200)]
    batch = list(good)
    for index, (suffix, payload, _) in enumerate(POISONS):
        batch.insert(index * 11, (f"{ROOT}/s1/d1/{suffix}", payload))
    with caplog.at_level(logging.WARNING, logger="edge_agent.collector.ingest"):
        outcomes = ingestor.handle_batch(batch)
    assert outcomes.count("stored") == 200 and outcomes.count("malformed") == len(POISONS)
    store = ingestor.store
    assert len(store.events(limit=1000)) == 200
    assert ingestor.counters.malformed_by_device == {"s1/d1": len(POISONS)}
    device = store.device_status("s1", "d1")
    assert device is not None and device.malformed == len(POISONS)
    errors = [error for _, error, _ in reversed(store.malformed(limit=100))]
    for (_, _, expected), error in zip(POISONS, errors, strict=True):
        assert expected in error, (expected, error)
    # one log line for the device in the minute, the rest counted, never one line per message
    lines = [r.getMessage() for r in caplog.records if "s1/d1" in r.getMessage()]
    assert len(lines) == 1, lines


def test_a_record_the_database_refuses_costs_only_itself(ingestor: Ingestor, tmp_path: Path) -> None:
    """Checks passed, the database still refuses one row (here a trigger): the batch is written again
    message by message, the refused one is counted as malformed with the database's reason."""
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON motion_events WHEN NEW.event_id = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'this row is poisoned'); END"
        )
    batch = [(f"{ROOT}/s1/d1/cam0/motion", _motion(f"e{i:02d}")) for i in range(50)]
    batch.insert(25, (f"{ROOT}/s1/d1/cam0/motion", _motion("poison")))
    outcomes = ingestor.handle_batch(batch)
    assert outcomes.count("stored") == 50 and outcomes[25] == "malformed"
    assert len(ingestor.store.events()) == 50
    [(_, error, _)] = ingestor.store.malformed()
    assert "refused by the store" in error and "this row is poisoned" in error


# --- commands and threads around the store -------------------------------------------------------------


def test_db_upgrade_command_on_both_engines(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert collector_main(["serve", "--broker", "mqtt://127.0.0.1:1", "--db", pg_url]) == 2
    assert "schema version 0, this collector needs" in capsys.readouterr().out
    assert collector_main(["sites", "--db", pg_url]) == 2, "as serve: the schema must be upgraded first"
    assert f"run `csu-collector db upgrade --db {pg_url}`" in capsys.readouterr().out
    keys = ["--keys", str(tmp_path / "keys")]
    assert collector_main(["user", "list", "--db", pg_url, *keys]) == 2
    assert f"--db: {pg_url}" in capsys.readouterr().err, "no traceback: the reason, naming the option"
    for db in (pg_url, str(tmp_path / "new.sqlite")):
        assert collector_main(["db", "upgrade", "--db", db]) == 0
        out = capsys.readouterr().out
        assert "applied 1: registry" in out and "schema upgraded from version 0 to" in out
        assert collector_main(["db", "upgrade", "--db", db]) == 0
        assert "schema already at version" in capsys.readouterr().out
        assert collector_main(["sites", "--db", db, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
    assert collector_main(["db", "upgrade", "--db", "postgresql://csu@127.0.0.1:1/none"]) == 1
    assert "--db: postgresql://csu@127.0.0.1:1/none" in capsys.readouterr().out
    assert collector_main(["user", "list", "--db", "postgresql://csu@127.0.0.1:1/none", *keys]) == 1
    assert "--db: postgresql://csu@127.0.0.1:1/none" in capsys.readouterr().err
    generate_csu_keys(tmp_path / "csu")
    console = ["console", "--keys", str(tmp_path / "csu"), "--listen", "127.0.0.1:0"]
    assert collector_main([*console, "--db", "postgresql://csu@127.0.0.1:1/none"]) == 2
    assert "console: --db: postgresql://csu@127.0.0.1:1/none" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "0", "--batch-size 0: must be at least 1"),
        ("--batch-ms", "-1", "--batch-ms -1.0: must not be negative"),
        ("--pool-size", "0", "--pool-size 0: must be at least 1"),
        ("--retention-days", "-2", "--retention-days -2.0: must not be negative"),
    ],
)
def test_serve_refuses_bad_settings_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    db = tmp_path / "c.sqlite"
    assert collector_main(["serve", "--broker", "mqtt://127.0.0.1:1", "--db", str(db), option, value]) == 2
    assert message in capsys.readouterr().out
    assert not db.exists()


def test_retention_thread_purges_now_and_periodically(ingestor: Ingestor) -> None:
    from edge_agent.collector.ingest import purge_periodically

    day = 86400.0
    ingestor.handle(f"{ROOT}/s1/d1/cam0/motion", _motion("kept", ts=NOW))
    ingestor.handle(
        f"{ROOT}/s1/d1/cam0/motion", _motion("old", ts=NOW - 5 * day, start_ts=iso_ms(NOW - 5 * day))
    )
    clock = [NOW]
    stop = threading.Event()
    thread = threading.Thread(
        target=purge_periodically, args=(ingestor.store, 3.0, 0.05, stop, lambda: clock[0]), daemon=True
    )
    thread.start()
    try:
        _wait(lambda: [e.event_id for e in ingestor.store.events()] == ["kept"], 5)
        clock[0] = NOW + 4 * day  # time passes: the next round purges what is now older than 3 days
        _wait(lambda: ingestor.store.events() == [], 5)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert ingestor.store.device_status("s1", "d1") is not None  # the registry itself is not purged


def _wait(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_writes_are_batched_by_size_and_time(mosquitto: LocalBroker, tmp_path: Path) -> None:
    store = open_store(tmp_path / "c.sqlite")
    ingestor = Ingestor(store, ROOT, batch_size=10, batch_wait_s=1.0)
    ingestor.start(parse_broker_url(mosquitto.url), client_id="batching")
    publisher = Recorder(mosquitto.port, "nothing/#")
    try:
        assert ingestor.ready.wait(10)
        for i in range(25):
            publisher.publish(f"{ROOT}/s1/d1/cam0/motion", _motion(f"e{i:02d}"))
        _wait(lambda: len(store.events()) == 25, 10)
        # 10 + 10 at once (full batches), then 5 after the wait: three transactions for 25 messages
        assert ingestor.counters.batches == 3
    finally:
        publisher.close()
        ingestor.stop()
        store.close()


def test_fetch_clip_finds_the_device_in_a_postgresql_store(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fetch-clip --store postgresql://...` took the URL as a path (`//` collapsed into `/`), so it looked
    for a SQLite file. A real clip server whose address is only in the PostgreSQL store's last status."""
    start = 1_700_000_000.0
    device_files = generate_device_key(tmp_path / "device-keys")
    csu_files = generate_csu_keys(tmp_path / "csu-keys")
    device_key = load_ed25519_private(device_files.private)
    sealing = load_x25519_private(csu_files.sealing.private).public_key()
    ring = encode_segments(tmp_path / "ring", device_key, sealing, start, 6.0)
    config = device_config(tmp_path, max_clip_seconds=60)
    upgrade_schema(pg_url)
    collector_key = load_ed25519_private(csu_files.signing.private)
    try:
        with running_server(config, ring, device_key, collector_key) as server:
            status = StatusMessage(
                schema=SCHEMA,
                site="ville-01",
                device="pi-01",
                ts=start,
                version="0.1",
                uptime_s=5,
                clip_url=server.local_url,
            )
            store = open_store(pg_url)
            store.write([StatusRecord(status, json.dumps(status.wire()), start)], start)
            store.close()
            args = [
                "fetch-clip", "--store", pg_url,
                "--site", "ville-01", "--device", "pi-01", "--camera", "cam1",
                "--start", str(start + 1), "--end", str(start + 5), "--requisition", "PV 2024/7",
                "--keys", str(csu_files.signing.private.parent), "--device-key", str(device_files.public),
                "--audit", str(tmp_path / "audit.jsonl"), "-o", str(tmp_path / "export"), "--no-progress",
            ]  # fmt: skip
            assert collector_main(args) == 0, capsys.readouterr().err
    finally:
        ring.close()
    assert capsys.readouterr().out.startswith("verified: ")
    assert (tmp_path / "export" / "clip.mp4").stat().st_size > 0
