"""Several `csu-collector serve` processes on one shared subscription and one PostgreSQL database, with a
real mosquitto: every message stored exactly once, a collector SIGKILLed mid-burst loses nothing and
duplicates nothing once its session resumes, an old status delivered late never wins, and database
connections cut under load only delay the rows."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from edge_agent.collector.store import upgrade_schema
from edge_agent.formats.mqtt_wire import SCHEMA, CameraStatus, StatusMessage, encode
from edge_agent.formats.times import iso_ms
from edge_agent.link.localbroker import LocalBroker
from tests.mqtt_support import PROJECT_ROOT

ROOT = "csu/v1"
NOW = time.time() - 3600  # an hour ago: plausible for the collector's time checks


class Serve:
    """One `csu-collector serve` process; its log lines are collected as they come."""

    def __init__(self, broker: LocalBroker, db: str, client_id: str, *extra: str) -> None:
        self.command = [
            sys.executable,
            "-m",
            "edge_agent.collector.commands.cli",
            "serve",
            "--broker",
            broker.url,
            "--db",
            db,
            "--share-group",
            "csu",
            "--client-id",
            client_id,
            "--stats-every",
            "3600",
            *extra,
        ]
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        """Start (again, with the same client id: the broker resumes its session)."""
        self.lines = []
        self.process = subprocess.Popen(
            self.command,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line)

    def wait_subscribed(self, timeout_s: float = 20) -> None:
        """Wait for its subscription (messages published before it would not be shared with it)."""
        _wait(lambda: any("collector subscribed" in line for line in self.lines), timeout_s, self.log)

    def log(self) -> str:
        """What it logged so far."""
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL: no chance to store or acknowledge what it holds."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait; its final counters."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(30) == 0, self.log()
        time.sleep(0.1)  # the reader thread takes the last line
        [final] = [line for line in self.lines if "collector stopped:" in line]
        counters: dict[str, Any] = json.loads(final.split("collector stopped:", 1)[1])
        return counters


class Publisher:
    """A device-side client publishing many QoS 1 messages without waiting for each acknowledgement."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Queue one message."""
        self.pending.append(self.client.publish(topic, payload, qos=1, retain=retain))

    def flush(self, timeout_s: float = 30) -> None:
        """Wait until the broker acknowledged everything published."""
        for info in self.pending:
            info.wait_for_publish(timeout_s)
        self.pending.clear()

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _motion(event_id: str, ts: float) -> bytes:
    doc = {"schema": 1, "event_id": event_id, "phase": "start", "ts": iso_ms(ts), "start_ts": iso_ms(ts)}
    return json.dumps(doc).encode()


def _status(device: str, ts: float, state: str) -> bytes:
    cameras = [CameraStatus(id="cam0", state=state, fps=10.0, masks=1)]
    return encode(StatusMessage(schema=SCHEMA, site="s1", device=device, ts=ts, cameras=cameras).wire())


def _wait(predicate: Callable[[], bool], timeout_s: float, why: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"condition not reached in {timeout_s}s {why()}"
        time.sleep(0.05)


def _rows(db: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(query).fetchall()


def _motion_count(db: str) -> int:
    return int(_rows(db, "SELECT COUNT(*) FROM motion_events")[0][0])


@pytest.fixture
def db(pg_url: str) -> str:
    upgrade_schema(pg_url)
    return pg_url


def test_three_collectors_store_every_message_exactly_once(mosquitto: LocalBroker, db: str) -> None:
    collectors = [Serve(mosquitto, db, f"csu-{name}") for name in "abc"]
    publisher = Publisher(mosquitto.port)
    try:
        for collector in collectors:
            collector.wait_subscribed()
        for i in range(600):
            publisher.publish(f"{ROOT}/s{i % 3}/d{i % 20}/cam0/motion", _motion(f"e{i:04d}", NOW + i))
        publisher.flush()
        _wait(lambda: _motion_count(db) >= 600, 30)
    finally:
        publisher.close()
        counters = [c.stop() for c in collectors]
    ids = [r[0] for r in _rows(db, "SELECT event_id FROM motion_events ORDER BY event_id")]
    assert ids == [f"e{i:04d}" for i in range(600)]  # each once: none lost, none twice
    assert sum(c["stored"] for c in counters) == 600
    assert all(c["stored"] > 0 for c in counters), counters  # the group really split the messages


def test_a_collector_killed_mid_burst_loses_and_duplicates_nothing(mosquitto: LocalBroker, db: str) -> None:
    """B is SIGKILLed while the burst is on (whatever it held unacknowledged is redelivered); A and C go
    on storing meanwhile; B restarted with its client id resumes its session and gets its share."""
    batching = ("--batch-ms", "200")  # B holds up to 200 ms of messages, unacknowledged, when killed
    collectors = {name: Serve(mosquitto, db, f"csu-{name}", *batching) for name in "abc"}
    publisher = Publisher(mosquitto.port)
    total = 3000
    try:
        for collector in collectors.values():
            collector.wait_subscribed()
        for i in range(total // 3):
            publisher.publish(f"{ROOT}/s1/d{i % 40}/cam0/motion", _motion(f"e{i:05d}", NOW + i / 100))
        collectors["b"].kill()
        killed_at = _motion_count(db)
        for i in range(total // 3, total):
            publisher.publish(f"{ROOT}/s1/d{i % 40}/cam0/motion", _motion(f"e{i:05d}", NOW + i / 100))
        publisher.flush()
        _wait(lambda: _motion_count(db) > killed_at + 500, 30)  # the others carried on without B
        collectors["b"].start()
        collectors["b"].wait_subscribed()
        _wait(lambda: _motion_count(db) >= total, 60, lambda: f"{_motion_count(db)} rows")
        time.sleep(0.5)  # a late duplicate would show now
    finally:
        publisher.close()
        counters = {name: c.stop() for name, c in collectors.items()}
    ids = [r[0] for r in _rows(db, "SELECT event_id FROM motion_events")]
    assert len(ids) == total and sorted(ids) == [f"e{i:05d}" for i in range(total)]
    assert counters["b"]["stored"] > 0, counters  # the resumed session delivered B's share


def test_an_old_status_delivered_late_never_overwrites_a_newer_one(mosquitto: LocalBroker, db: str) -> None:
    collectors = [Serve(mosquitto, db, f"csu-{name}") for name in "abc"]
    publisher = Publisher(mosquitto.port)
    devices = [f"d{i}" for i in range(5)]
    try:
        for collector in collectors:
            collector.wait_subscribed()
        order = [(device, t) for device in devices for t in range(30)]
        random.Random(7).shuffle(order)  # the three collectors get each device's statuses in any order
        for device, t in order:
            publisher.publish(
                f"{ROOT}/s1/{device}/status", _status(device, NOW + t, f"state-{t}"), retain=True
            )
        publisher.flush()
        _wait(lambda: int(_rows(db, "SELECT COUNT(*) FROM status_history")[0][0]) >= len(order), 30)
        for device in devices:  # a status from long ago arrives now (a device's outbox, a slow broker)
            publisher.publish(f"{ROOT}/s1/{device}/status", _status(device, NOW - 600, "late"), retain=True)
        publisher.flush()
        _wait(lambda: int(_rows(db, "SELECT COUNT(*) FROM status_history")[0][0]) >= len(order) + 5, 30)
    finally:
        publisher.close()
        counters = [c.stop() for c in collectors]
    current = _rows(db, "SELECT device, status_ts, status_json FROM devices ORDER BY device")
    assert [(d, ts) for d, ts, _ in current] == [(d, pytest.approx(NOW + 29, abs=0.001)) for d in devices]
    assert all(json.loads(doc)["cameras"][0]["state"] == "state-29" for _, _, doc in current)
    states = _rows(db, "SELECT DISTINCT state FROM cameras")
    assert states == [("state-29",)]
    assert sum(c["stale"] for c in counters) >= 5  # at least the late ones, wherever they went


def test_database_connections_cut_under_load_delay_rows_but_lose_none(
    mosquitto: LocalBroker, db: str
) -> None:
    collector = Serve(mosquitto, db, "csu-solo", "--batch-ms", "20")
    publisher = Publisher(mosquitto.port)
    total = 1500
    try:
        collector.wait_subscribed()
        for i in range(total):
            publisher.publish(f"{ROOT}/s1/d{i % 10}/cam0/motion", _motion(f"e{i:05d}", NOW + i / 100))
            if (
                i % 500 == 250
            ):  # the database server drops the collector's connections (a failover, a restart)
                _rows(
                    db,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'csu-collector' AND pid <> pg_backend_pid()",
                )
        publisher.flush()
        _wait(lambda: _motion_count(db) >= total, 60, collector.log)
    finally:
        publisher.close()
        counters = collector.stop()
    ids = [r[0] for r in _rows(db, "SELECT event_id FROM motion_events")]
    assert sorted(ids) == [f"e{i:05d}" for i in range(total)]
    assert counters["stored"] == total
    assert counters["store_retries"] >= 1, counters  # the cut really hit a write, which was retried


def test_a_share_group_collector_started_after_the_devices_learns_who_is_online(
    mosquitto: LocalBroker, db: str
) -> None:
    """Brokers send no retained message on a shared subscription: the collector reads them once, plainly."""
    publisher = Publisher(mosquitto.port)
    try:
        publisher.publish(f"{ROOT}/s1/d-early/availability", b'"online"', retain=True)
        publisher.publish(f"{ROOT}/s1/d-early/status", _status("d-early", NOW, "running"), retain=True)
        publisher.flush()
    finally:
        publisher.close()
    collector = Serve(mosquitto, db, "csu-late")
    try:
        collector.wait_subscribed()
        query = "SELECT online FROM devices WHERE site = 's1' AND device = 'd-early'"
        _wait(lambda: _rows(db, query) == [(1,)], 15, collector.log)
        time.sleep(6)  # past the catch-up window: live messages are shared again, not doubled
        live = Publisher(mosquitto.port)
        try:
            live.publish(f"{ROOT}/s1/d-early/cam0/motion", _motion("e-live", NOW + 5))
            live.flush()
        finally:
            live.close()
        _wait(lambda: _motion_count(db) == 1, 15, collector.log)
    finally:
        counters = collector.stop()
    assert counters["stored"] >= 3


class _SubscriptionLog:
    """Stands in for the broker side of paho's client: EMQX or HiveMQ (which, unlike mosquitto, send no
    retained message on a shared subscription) cannot run here, so what matters is what is asked of them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        self.calls.append(("subscribe", [t for t, _ in topics]))

    def unsubscribe(self, topics: list[str]) -> None:
        self.calls.append(("unsubscribe", list(topics)))


def test_a_share_group_collector_asks_for_retained_state_plainly_then_drops_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paho.mqtt.reasoncodes import ReasonCode

    from edge_agent.collector import ingest
    from edge_agent.collector.store import open_store

    monkeypatch.setattr(ingest, "RETAINED_WINDOW_S", 0.05)
    store = open_store(tmp_path / "c.sqlite")
    try:
        ingestor = ingest.Ingestor(store)
        ingestor._share_group = "csu"
        client = _SubscriptionLog()
        ingestor._on_connect(client, None, None, ReasonCode(mqtt.CONNACK >> 4, "Success"), None)  # type: ignore[arg-type]
        _wait(lambda: len(client.calls) == 3, 5)
    finally:
        store.close()
    plain = [f"{ROOT}/+/+/availability", f"{ROOT}/+/+/status"]
    assert client.calls[0] == ("subscribe", [f"$share/csu/{f}" for f in ingest.collector_filters(ROOT)])
    assert client.calls[1:] == [("subscribe", plain), ("unsubscribe", plain)]
