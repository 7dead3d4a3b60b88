"""MqttLink against a real mosquitto: topics and payloads, retained status, last will, reconnect,
broker restart and agent restart without loss, commands good and bad."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.api.holds import HoldService
from edge_agent.camera.pipeline import CameraState, CameraStats
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.config import AgentConfig
from edge_agent.formats.signing import RequestSigner, RequestVerifier, signed_command
from edge_agent.formats.times import parse_iso
from edge_agent.link.localbroker import LocalBroker
from edge_agent.link.mqtt import CommandError, MqttLink
from edge_agent.link.status import CameraReport, DeviceReport
from tests.clip_support import sealed_ring
from tests.mqtt_support import PROJECT_ROOT, Collector, Recorder, agent_config, parsed, write_config

BASE = "csu/v1/ville-01/pi-07"


@dataclass
class Event:
    event_id: str
    camera_id: str = "cam1"
    phase: str = "start"
    ts: float = field(default_factory=time.time)
    start_ts: float = field(default_factory=time.time)
    score: float = 0.42
    boxes: list[tuple[float, float, float, float]] = field(default_factory=lambda: [(0.1, 0.2, 0.3, 0.4)])
    zones: list[str] = field(default_factory=lambda: ["entrance"])


CAM1 = CameraStats("cam1", CameraState.RUNNING, 10.0, 50, 3, (1280, 720), 1, 0, False, 0, "")
CAMERAS = [
    {
        "id": "cam1",
        "state": "running",
        "fps": 10.0,
        "drops": 3,
        "resolution": [1280, 720],
        "masks": 1,
        "recording": "continuous",
        "frames": 50,
        "reconnects": 0,
        "event_open": False,
    }
]
"""What the status says of `CAM1` (the config's one camera)."""


def _report(config: AgentConfig, state: CameraState = CameraState.RUNNING) -> DeviceReport:
    """The agent's part of the status: the config's camera running with `CAM1`'s counters."""
    return DeviceReport([CameraReport(config.cameras[0], dataclasses.replace(CAM1, state=state))])


def _link(
    broker: LocalBroker, tmp_path: Path, handlers: dict[str, Any] | None = None, **fields: Any
) -> MqttLink:
    config = parsed(agent_config(broker, tmp_path, **fields))
    link = MqttLink(config, lambda: _report(config), handlers)
    link.start()
    return link


@pytest.fixture
def recorder(mosquitto: LocalBroker):
    rec = Recorder(mosquitto.port)
    yield rec
    rec.close()


def test_topics_and_payloads(mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path) -> None:
    link = _link(mosquitto, tmp_path)
    try:
        link.publish_event(Event("e-1", ts=1714564800.1234, start_ts=1714564799.5))
        assert recorder.wait_for(lambda m: any(t.endswith("/cam1/motion") for t, _, _ in m))
        assert recorder.wait_for(lambda m: any(t.endswith("/status") for t, _, _ in m))
    finally:
        link.stop()
    assert recorder.on(f"{BASE}/availability") == [b'"online"', b'"offline"']
    motion = recorder.json_on(f"{BASE}/cam1/motion")
    assert motion == [
        {
            "schema": 1,
            "event_id": "e-1",
            "camera": "cam1",
            "phase": "start",
            "ts": "2024-05-01T12:00:00.123Z",
            "start_ts": "2024-05-01T11:59:59.500Z",
            "score": 0.42,
            "boxes": [[0.1, 0.2, 0.3, 0.4]],
            "zones": ["entrance"],
        }
    ]
    status = recorder.json_on(f"{BASE}/status")[0]
    assert status["schema"] == 1
    assert (status["site"], status["device"]) == ("ville-01", "pi-07")
    assert abs(parse_iso(status["ts"]) - time.time()) < 30
    assert status["ts"].endswith("Z") and len(status["ts"]) == len("2024-05-01T12:00:00.123Z")
    assert status["cameras"] == CAMERAS
    assert status["clip_url"] == "https://pi-07.ville-01.example:8480"
    assert status["retention"] == {"oldest_ts": None, "days": 15.0}
    assert set(status["disk"]) == {"used", "free", "total", "quota"} and status["disk"]["free"] > 0
    assert len(status["load"]) == 3
    assert status["outbox"]["dropped"] == 0
    assert status["version"] and status["uptime_s"] >= 0


def test_status_is_retained_and_republished_on_change(
    mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path
) -> None:
    state = {"value": CameraState.RUNNING}
    config = parsed(agent_config(mosquitto, tmp_path))
    link = MqttLink(config, lambda: _report(config, state["value"]))
    link.start()
    try:
        assert recorder.wait_for(lambda m: len([1 for t, _, _ in m if t == f"{BASE}/status"]) >= 1)
        state["value"] = CameraState.DISCONNECTED
        link.status_changed()
        assert recorder.wait_for(lambda m: len([1 for t, _, _ in m if t == f"{BASE}/status"]) >= 2, timeout=5)
        assert recorder.json_on(f"{BASE}/status")[-1]["cameras"][0]["state"] == "disconnected"
        late = Recorder(mosquitto.port)  # a collector arriving later still learns the state
        try:
            assert late.wait_for(lambda m: len(m) >= 2, timeout=5)
            retained = {t: (json.loads(p), r) for t, p, r in late.messages}
        finally:
            late.close()
    finally:
        link.stop()
    assert retained[f"{BASE}/availability"] == ("online", True)
    assert retained[f"{BASE}/status"][0]["cameras"][0]["state"] == "disconnected"
    assert retained[f"{BASE}/status"][1] is True


def test_status_carries_the_agents_retention(mosquitto: LocalBroker, tmp_path: Path) -> None:
    """The agent's oldest footage (epoch seconds) goes out as ISO, next to the configured retention."""
    config = parsed(agent_config(mosquitto, tmp_path))
    report = {"value": dataclasses.replace(_report(config), oldest_ts=1714564800.5)}
    link = MqttLink(config, lambda: report["value"], clock=lambda: 1714564900.0)
    try:
        status = link.build_status().wire()
        report["value"] = _report(config)  # nothing recorded yet
        empty = link.build_status().wire()
    finally:
        link.outbox.close()
    assert status["retention"] == {"oldest_ts": "2024-05-01T12:00:00.500Z", "days": 15.0}
    assert status["ts"] == "2024-05-01T12:01:40.000Z"
    assert empty["retention"] == {"oldest_ts": None, "days": 15.0}
    assert status["outbox"] == {"pending": 0, "dropped": 0, "corrupt_files": 0}
    assert status["mqtt"] == {"connections": 0, "rejected": 0, "commands": 0, "command_errors": 0}


def test_corrupt_outbox_set_aside_and_reported(mosquitto: LocalBroker, tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").write_bytes(b"\x00garbage" * 500)
    config = parsed(agent_config(mosquitto, tmp_path))
    link = MqttLink(config, lambda: _report(config))
    try:
        outbox = link.build_status().outbox
        assert outbox is not None and outbox.corrupt_files == 1
    finally:
        link.outbox.close()
    assert len(list(tmp_path.glob("outbox.sqlite.corrupt-*"))) == 1


def test_status_provider_failure_is_reported_not_fatal(
    mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path
) -> None:
    def broken() -> DeviceReport:
        raise RuntimeError("camera table locked")

    link = MqttLink(parsed(agent_config(mosquitto, tmp_path)), broken)
    link.start()
    try:
        assert recorder.wait_for(lambda m: any(t == f"{BASE}/status" for t, _, _ in m))
        link.publish_event(Event("after-failure"))
        assert link.wait_delivered(5)
    finally:
        link.stop()
    status = recorder.json_on(f"{BASE}/status")[0]
    assert status["status_error"] == "RuntimeError: camera table locked"
    assert status["cameras"] == []


def _start_driver(config_path: Path, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.mqtt_driver", str(config_path), *args],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _ask(process: subprocess.Popen[str], line: str) -> str:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


def test_last_will_when_agent_process_is_killed(
    mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path
) -> None:
    config_path = write_config(agent_config(mosquitto, tmp_path), tmp_path / "agent.yaml")
    process = _start_driver(config_path)
    try:
        assert recorder.wait_for(lambda m: (f"{BASE}/availability", b'"online"', False) in m)
        process.send_signal(signal.SIGKILL)
        process.wait(5)
        assert recorder.wait_for(
            lambda m: recorder.on(f"{BASE}/availability")[-1:] == [b'"offline"'], timeout=10
        )
    finally:
        process.kill()
        process.wait()
    late = Recorder(mosquitto.port, f"{BASE}/availability")
    try:
        assert late.wait_for(lambda m: len(m) == 1, timeout=5)
        assert late.messages[0] == (f"{BASE}/availability", b'"offline"', True)
    finally:
        late.close()


def test_reconnects_after_broker_restart(mosquitto: LocalBroker, tmp_path: Path) -> None:
    link = _link(mosquitto, tmp_path)
    try:
        deadline = time.monotonic() + 5
        while link.stats().connections < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        mosquitto.stop()
        time.sleep(0.5)
        assert not link.stats().connected
        mosquitto.start()
        deadline = time.monotonic() + 10
        while link.stats().connections < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.stats().connections == 2
        assert link.stats().connected
    finally:
        link.stop()


def test_broker_down_then_back_every_event_once_in_order(mosquitto: LocalBroker, tmp_path: Path) -> None:
    collector = Collector(mosquitto, tmp_path / "collector.sqlite", client_id="csu-main")
    link = _link(mosquitto, tmp_path)
    try:
        for i in range(5):
            link.publish_event(Event(f"before-{i}"))
        assert collector.wait_events(5)
        mosquitto.stop()
        during = [f"during-{i}" for i in range(40)]
        for event_id in during:
            link.publish_event(Event(event_id))
        assert link.stats().outbox_pending == 40
        time.sleep(1.0)
        mosquitto.start()
        for i in range(5):
            link.publish_event(Event(f"after-{i}"))
        assert collector.wait_events(50, timeout=20), collector.store.events()
        assert link.wait_delivered(10)
        time.sleep(0.3)  # late duplicates, if any, would land now
        stored = [e.event_id for e in collector.store.motion_after(0) if e.phase == "start"]
    finally:
        link.stop()
        collector.close()
    expected = [f"before-{i}" for i in range(5)] + during + [f"after-{i}" for i in range(5)]
    assert stored == expected


def test_agent_killed_with_undelivered_outbox_loses_nothing(mosquitto: LocalBroker, tmp_path: Path) -> None:
    config_path = write_config(agent_config(mosquitto, tmp_path), tmp_path / "agent.yaml")
    collector = Collector(mosquitto, tmp_path / "collector.sqlite", client_id="csu-main")
    mosquitto.stop()  # the fiber is cut: the agent can only queue
    first = _start_driver(config_path, "--events", "30", "--prefix", "cut")
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    try:
        mosquitto.start()
        second = _start_driver(config_path, "--events", "3", "--prefix", "restarted")
        try:
            assert _ask(second, "wait") == "delivered"
            assert collector.wait_events(33, timeout=15)
            assert _ask(second, "stop") == "stopped"
        finally:
            second.kill()
            second.wait()
        stored = [e.event_id for e in collector.store.motion_after(0) if e.phase == "start"]
    finally:
        collector.close()
    assert stored == [f"cut-{i:04d}" for i in range(30)] + [f"restarted-{i:04d}" for i in range(3)]


def test_outbox_cap_drops_oldest_and_status_reports_it(
    mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path
) -> None:
    mosquitto.stop()
    link = _link(mosquitto, tmp_path, outbox_max_messages=10)
    try:
        for i in range(15):
            link.publish_event(Event(f"capped-{i:02d}"))
        assert link.stats().outbox_dropped == 5
        mosquitto.start()
        rec = Recorder(mosquitto.port)
        try:
            assert link.wait_delivered(15)
            assert rec.wait_for(lambda m: len([t for t, _, _ in m if t.endswith("/motion")]) == 10)
            link.status_changed()
            assert rec.wait_for(lambda m: any(t.endswith("/status") and not r for t, _, r in m), timeout=5)
            motion_ids = [json.loads(p)["event_id"] for p in rec.on(f"{BASE}/cam1/motion")]
            status = rec.json_on(f"{BASE}/status")[-1]
        finally:
            rec.close()
    finally:
        link.stop()
    assert motion_ids == [f"capped-{i:02d}" for i in range(5, 15)]
    assert status["outbox"]["dropped"] == 5


@pytest.fixture
def full_disk(tmp_path: Path):
    """A real 512 KiB tmpfs that the test can fill (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_holds_new_events_in_memory_in_order_and_stop_still_goes_offline(
    mosquitto: LocalBroker, recorder: Recorder, full_disk: Path
) -> None:
    """A disk filled by something else must not cost motion events (issue 13 item 1): they wait in memory,
    in order, and reach the outbox and the broker once the disk has room again."""
    link = _link(mosquitto, full_disk)
    try:
        link.publish_event(Event("before-full"))
        assert link.wait_delivered(5)
        _fill(full_disk)
        assert link.publish_event(Event("no-room")) == 0  # held in memory, not lost, not raised
        assert link.publish_event(Event("behind-it")) == 0  # behind it: the order is kept
        assert link.stats().outbox_pending == 2
        assert not link.wait_delivered(0.5)
        (full_disk / "filler").unlink()
        assert link.wait_delivered(10)
        assert recorder.wait_for(lambda _m: len(recorder.on(f"{BASE}/cam1/motion")) == 3, timeout=5)
        ids = [json.loads(p)["event_id"] for p in recorder.on(f"{BASE}/cam1/motion")]
        assert ids == ["before-full", "no-room", "behind-it"]
        assert link.stats().outbox_dropped == 0
    finally:
        link.stop(drain_timeout_s=0.5)
    late = Recorder(mosquitto.port, f"{BASE}/availability")
    try:
        assert late.wait_for(lambda m: len(m) == 1, timeout=5)
        assert late.messages[0][1] == b'"offline"'
    finally:
        late.close()


def test_events_still_held_in_memory_at_stop_are_counted_lost(
    mosquitto: LocalBroker, full_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping while the disk is still full: the events only memory held cannot survive the process; the
    link says so and counts them dropped, instead of reporting them as still pending."""
    link = _link(mosquitto, full_disk)
    try:
        _fill(full_disk)
        assert link.publish_event(Event("doomed")) == 0
        assert link.stats().outbox_pending == 1
    finally:
        link.stop(drain_timeout_s=0.5)
    stats = link.stats()
    assert (stats.outbox_pending, stats.outbox_dropped) == (0, 1)
    assert "1 motion event(s) held in memory are lost" in caplog.text


def _command(recorder: Recorder, name: str, payload: bytes, properties: Properties | None = None) -> dict:
    before = len(recorder.on(f"{BASE}/cmd_result"))
    recorder.client.publish(f"{BASE}/cmd/{name}", payload, qos=1, properties=properties)
    assert recorder.wait_for(lambda m: len(recorder.on(f"{BASE}/cmd_result")) > before, timeout=5), name
    return recorder.json_on(f"{BASE}/cmd_result")[-1]


def test_commands_good_bad_and_unsupported(
    mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []

    def snapshot(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        if args.get("camera") != "cam1":
            raise CommandError(f"no camera {args.get('camera')!r}")
        return {"stored": "snap-1.jpg"}

    def reload(_args: dict[str, Any]) -> dict[str, Any]:
        raise OSError("config file vanished")

    link = _link(mosquitto, tmp_path, handlers={"snapshot": snapshot, "reload": reload})
    try:
        assert recorder.wait_for(lambda m: any(t == f"{BASE}/availability" for t, _, _ in m))
        time.sleep(0.2)  # the link subscribes to its commands right after connecting
        ok = _command(recorder, "snapshot", b'{"camera": "cam1", "request_id": "r-1"}')
        assert ok == {
            "schema": 1,
            "command": "snapshot",
            "ts": ok["ts"],
            "ok": True,
            "request_id": "r-1",
            "result": {"stored": "snap-1.jpg"},
        }
        refused = _command(recorder, "snapshot", b'{"camera": "cam9"}')
        assert refused["ok"] is False and refused["error"] == "snapshot: no camera 'cam9'"
        hold = _command(recorder, "hold", b'{"camera": "cam1"}')
        assert hold["ok"] is False and "'hold' is not supported on this device" in hold["error"]
        unknown = _command(recorder, "reboot", b"{}")
        assert "unknown command 'reboot'" in unknown["error"]
        assert "snapshot, hold, release, reload" in unknown["error"]
        garbage = _command(recorder, "snapshot", b"{camera: cam1")
        assert garbage["ok"] is False and "not UTF-8 JSON" in garbage["error"]
        not_object = _command(recorder, "snapshot", b"[1, 2]")
        assert "must be a JSON object, got list" in not_object["error"]
        crashed = _command(recorder, "reload", b"")
        assert crashed["error"] == "reload failed: OSError: config file vanished"

        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = b"corr-42"
        got: list[Any] = []

        def keep_correlation(client: Any, userdata: Any, msg: Any) -> None:
            got.append(msg.properties.CorrelationData)
            recorder._on_message(client, userdata, msg)

        recorder.client.message_callback_add(f"{BASE}/cmd_result", keep_correlation)
        _command(recorder, "snapshot", b'{"camera": "cam1"}', props)
        assert got == [b"corr-42"]

        link.publish_event(Event("still-alive"))  # the agent survived all of that
        assert link.wait_delivered(5)
        assert link.stats().command_errors == 6
    finally:
        link.stop()
    assert len(calls) == 3


def test_a_refused_signed_hold_is_a_refused_reply(
    mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path
) -> None:
    # Issue 14 item 8: the hold service refuses by returning {"ok": false, ...} (it lives below the
    # link); the reply's own `ok` must say the outcome, keeping the reason code in its result.
    collector = Ed25519PrivateKey.generate()
    device = Ed25519PrivateKey.generate()
    ring = sealed_ring(tmp_path / "ring", device, time.time())
    holds = HoldService(ring, AuditLog(tmp_path / "audit.jsonl"), ["cam1"])
    verifier = RequestVerifier([collector.public_key()], 300.0)
    link = _link(
        mosquitto,
        tmp_path,
        handlers={"hold": lambda payload: holds.handle_command("hold", payload, verifier)},
    )
    fields = {"camera": "cam1", "start": "2026-01-05T10:00:00Z", "end": "2026-01-05T10:10:00Z"}
    signed = json.dumps(signed_command("hold", {**fields, "requisition": "PV-7"}, RequestSigner(collector)))
    try:
        assert recorder.wait_for(lambda m: any(t == f"{BASE}/availability" for t, _, _ in m))
        time.sleep(0.2)  # the link subscribes to its commands right after connecting
        accepted = _command(recorder, "hold", signed.encode())
        assert accepted["ok"] is True and accepted["result"]["hold"]["requisition"] == "PV-7"
        replayed = _command(recorder, "hold", signed.encode())
        assert replayed["ok"] is False
        assert replayed["error"].startswith("hold: replayed-nonce: nonce ")
        assert (replayed["result"]["ok"], replayed["result"]["error"]) == (False, "replayed-nonce")
        bad = signed_command("hold", {**fields, "requisition": "../etc"}, RequestSigner(collector))
        refused = _command(recorder, "hold", json.dumps(bad).encode())
        assert refused["ok"] is False and refused["error"].startswith("hold: bad-requisition: requisition")
        assert link.stats().command_errors == 2
        assert len(ring.holds()) == 1
    finally:
        link.stop()
        ring.close()


def test_a_hung_handler_times_out_and_does_not_block_other_commands(
    mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path
) -> None:
    release = threading.Event()
    started: list[str] = []

    def stuck(_args: dict[str, Any]) -> dict[str, Any]:
        started.append("snapshot")
        release.wait(30)  # a camera driver that never answers
        return {"late": True}

    config = parsed(agent_config(mosquitto, tmp_path, command_timeout_s=0.5))
    handlers = {"snapshot": stuck, "reload": lambda _args: {"reloaded": True}}
    link = MqttLink(config, lambda: _report(config), handlers)
    link.start()
    try:
        assert recorder.wait_for(lambda m: any(t == f"{BASE}/availability" for t, _, _ in m))
        time.sleep(0.2)  # the link subscribes to its commands right after connecting
        hung = _command(recorder, "snapshot", b'{"camera": "cam1", "request_id": "r-hung"}')
        assert hung["ok"] is False and hung["request_id"] == "r-hung"
        assert hung["error"] == "snapshot: no answer within 0.5 s (still running on the device)"
        again = _command(recorder, "snapshot", b'{"camera": "cam1"}')
        assert again["error"] == "snapshot: the previous snapshot is still running"
        assert _command(recorder, "reload", b"")["result"] == {"reloaded": True}
        release.set()
        time.sleep(0.1)
        assert _command(recorder, "snapshot", b"{}")["result"] == {"late": True}
    finally:
        release.set()
        link.stop()
    assert started == ["snapshot", "snapshot"]
    assert link.stats().command_errors == 2


def test_mqtt_311_option(mosquitto: LocalBroker, recorder: Recorder, tmp_path: Path) -> None:
    link = _link(mosquitto, tmp_path, protocol="3.1.1")
    try:
        link.publish_event(Event("v311"))
        assert link.wait_delivered(5)
        assert recorder.wait_for(lambda m: any(t.endswith("/cam1/motion") for t, _, _ in m))
    finally:
        link.stop()
    assert recorder.on(f"{BASE}/availability")[-1] == b'"offline"'


def test_password_and_refused_credentials(mosquitto_factory: Any, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "pi-07", "good"], check=True)
    broker = mosquitto_factory([f"password_file {passwd}", "allow_anonymous false"])
    bad = _link(broker, tmp_path / "bad", username="pi-07", password="wrong")
    good = _link(
        broker, tmp_path / "good", username="pi-07", password="good", client_id=f"g-{uuid.uuid4().hex}"
    )
    try:
        good.publish_event(Event("authenticated"))
        bad.publish_event(Event("kept-for-later"))
        assert good.wait_delivered(5)
        deadline = time.monotonic() + 5
        while not bad.stats().last_error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "refused" in bad.stats().last_error
        assert not bad.stats().connected
        assert bad.stats().outbox_pending == 1
    finally:
        bad.stop(drain_timeout_s=0.1)
        good.stop()
