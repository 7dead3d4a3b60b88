"""The wired device: real broker, real keys, real ring buffer, synthetic cameras."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from edge_agent.commands.demo import demo_config
from edge_agent.device.agent import Agent, AgentError
from edge_agent.device.hotplug import CameraIdentity
from edge_agent.formats.config import parse_config
from edge_agent.formats.keys import (
    CSU_SIGNING_NAME,
    PRIVATE_SUFFIX,
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
)
from edge_agent.formats.sealing import verify_segment
from edge_agent.formats.signing import RequestSigner, signed_command
from edge_agent.link.localbroker import LocalBroker
from tests import netns_support
from tests.mqtt_support import Recorder as Subscriber

TOPIC = "csu/v1/demo-site/demo-pi"
EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "firmware_cfg" / "site.example.yaml"


@pytest.fixture
def site(tmp_path: Path, mosquitto: LocalBroker) -> dict[str, Any]:
    """A provisioned demo site document (keys on disk), pointing at the test broker."""
    csu = generate_csu_keys(tmp_path / "csu")
    device = generate_device_key(tmp_path / "device-keys")
    document = demo_config(tmp_path, mosquitto.port, device, csu)
    document["mqtt"]["status_interval_s"] = 1
    document["cameras"].append({"id": "back", "source": "synthetic:9", "resolution": [320, 240]})
    return document


def start_agent(document: dict[str, Any], tmp_path: Path) -> Agent:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(document))
    agent = Agent(parse_config(document), path, hotplug=False)
    agent.start()
    return agent


def last_status(subscriber: Subscriber) -> dict[str, Any]:
    return subscriber.json_on(f"{TOPIC}/status")[-1]


def cameras_by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in status["cameras"]}


def command(subscriber: Subscriber, name: str, payload: dict[str, Any], mid: str) -> dict[str, Any]:
    subscriber.publish(f"{TOPIC}/cmd/{name}", json.dumps({**payload, "request_id": mid}).encode())
    assert subscriber.wait_for(
        lambda _m: any(mid in p.decode() for p in subscriber.on(f"{TOPIC}/cmd_result"))
    )
    return next(json.loads(p) for p in subscriber.on(f"{TOPIC}/cmd_result") if mid in p.decode())


def signed_command_reply(
    subscriber: Subscriber, signer: RequestSigner, name: str, fields: dict[str, Any], mid: str
) -> dict[str, Any]:
    """`command`, signed by the CSU (the request id among the signed fields, as the console sends it)."""
    payload = signed_command(name, {**fields, "request_id": mid}, signer)
    subscriber.publish(f"{TOPIC}/cmd/{name}", json.dumps(payload).encode())
    assert subscriber.wait_for(
        lambda _m: any(mid in p.decode() for p in subscriber.on(f"{TOPIC}/cmd_result"))
    )
    return next(json.loads(p) for p in subscriber.on(f"{TOPIC}/cmd_result") if mid in p.decode())


def test_agent_publishes_status_events_and_records(
    site: dict[str, Any], tmp_path: Path, mosquitto: LocalBroker
) -> None:
    subscriber = Subscriber(mosquitto.port)
    agent = start_agent(site, tmp_path)
    try:
        assert subscriber.wait_for(
            lambda _m: (
                bool(subscriber.on(f"{TOPIC}/status"))
                and cameras_by_id(last_status(subscriber)).get("entrance", {}).get("state") == "running"
            ),
            timeout=15,
        )
        cameras = cameras_by_id(last_status(subscriber))
        assert cameras["back"]["state"] == "awaiting_masks", "an unmasked camera must not run"
        assert agent.clip_server is not None and agent.clip_server.port
        assert last_status(subscriber)["clip_url"] == f"http://127.0.0.1:{agent.clip_server.port}"
        assert subscriber.wait_for(lambda _m: bool(subscriber.on(f"{TOPIC}/entrance/motion")), timeout=20)
        assert subscriber.on(f"{TOPIC}/availability")[-1] == b'"online"'
        time.sleep(6)  # one 5 s segment sealed
    finally:
        agent.stop()
    assert subscriber.wait_for(lambda _m: subscriber.on(f"{TOPIC}/availability")[-1] == b'"offline"')
    subscriber.close()
    segments = sorted((tmp_path / "device" / "segments").rglob("*.seg"))
    assert segments, "nothing was recorded"
    device_public = agent.keys.device.public_key() if agent.keys else None
    for path in segments:
        info = verify_segment(path, device_public)
        assert info.camera in ("entrance", "square")


_FIRST_STATUS = """
import json, sys
import paho.mqtt.client as mqtt
host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
def on_message(_c, _u, message):
    print(json.loads(message.payload)["clip_url"], flush=True)
    client.disconnect()
client.on_message = on_message
client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
client.connect(host, port)
client.loop_forever()
"""


def test_the_shipped_example_config_advertises_a_clip_url_the_csu_can_reach(tmp_path: Path) -> None:
    """site.example.yaml binds the clip server to 0.0.0.0: the status must name the address this device
    reaches the broker from, never loopback. Device, broker and subscriber run in a network namespace of
    the test's own, where the device's only other address is the one the broker listens on."""
    address, broker_port = "10.77.0.2", 1883
    document = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert document["clip_server"]["bind"] == "0.0.0.0" and not document["clip_server"]["advertise_url"]
    csu = generate_csu_keys(tmp_path / "csu")
    device = generate_device_key(tmp_path / "device-keys")
    fixed = document["cameras"][0]
    fixed.update(source="synthetic", resolution=[320, 240], fps=4)  # a light scene instead of the Pi's sensor
    document["cameras"] = [fixed]  # the nomad camera waits for hot-plug, which has no devices here
    document["storage"]["path"] = str(tmp_path / "segments")
    document["mqtt"].update(
        host=address, port=broker_port, tls=None, outbox_path=str(tmp_path / "outbox.sqlite"),
        status_interval_s=1, username="", password="",
    )  # fmt: skip
    document["clip_server"].update(port=0, audit_log=str(tmp_path / "audit.jsonl"))
    document["keys"] = {
        "device_key": str(device.private),
        "csu_sealing_public_key": str(csu.sealing.public),
        "collector_public_keys": [str(csu.signing.public)],
    }
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(document))
    broker_conf = tmp_path / "mosquitto.conf"
    broker_conf.write_text(f"listener {broker_port} {address}\nallow_anonymous true\npersistence false\n")
    topic = f"csu/v1/{document['site_id']}/{document['device_id']}/status"
    with netns_support.namespace(address) as inside:
        children = [
            subprocess.Popen(
                [*inside, "/usr/sbin/mosquitto", "-c", str(broker_conf)], stderr=subprocess.DEVNULL
            ),
        ]
        try:
            time.sleep(0.5)
            children.append(
                subprocess.Popen(
                    [
                        *inside,
                        sys.executable,
                        "-m",
                        "edge_agent.commands.cli",
                        "run",
                        "--config",
                        str(config),
                    ],
                    stderr=subprocess.DEVNULL,
                )
            )
            first = subprocess.run(
                [*inside, sys.executable, "-c", _FIRST_STATUS, address, str(broker_port), topic],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
        finally:
            for child in reversed(children):
                child.terminate()
                child.wait(timeout=20)
    clip_url = first.stdout.strip()
    host, _, port = clip_url.removeprefix("http://").rpartition(":")
    assert host == address and int(port) > 0, clip_url
    assert not ipaddress.ip_address(host).is_loopback


def test_snapshot_and_reload_commands(site: dict[str, Any], tmp_path: Path, mosquitto: LocalBroker) -> None:
    subscriber = Subscriber(mosquitto.port)
    agent = start_agent(site, tmp_path)
    try:
        time.sleep(1.0)
        # Snapshots are signed (tests/test_snapshot_command.py has the refusals and the audit).
        signer = RequestSigner(load_ed25519_private(tmp_path / "csu" / f"{CSU_SIGNING_NAME}{PRIVATE_SUFFIX}"))
        reply = signed_command_reply(subscriber, signer, "snapshot", {"camera": "entrance"}, "snap-1")
        assert reply["ok"], reply
        jpeg = base64.b64decode(reply["result"]["jpeg_base64"])
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (360, 640, 3)
        assert image[30:100, 50:180].max() < 12, "window mask missing from the snapshot"
        assert not any(p.suffix == ".jpg" for p in tmp_path.rglob("*")), "a snapshot must not be stored"

        unknown = signed_command_reply(subscriber, signer, "snapshot", {"camera": "nope"}, "snap-2")
        assert not unknown["ok"] and "nope" in json.dumps(unknown)

        broken = dict(site, cameras=[{"id": "entrance", "source": "synthetic", "fps": -3}])
        (tmp_path / "site.yaml").write_text(yaml.safe_dump(broken))
        refused = command(subscriber, "reload", {}, "reload-1")
        assert not refused["ok"] and "cameras[0].fps" in json.dumps(refused)
        assert agent.camera_statuses()[0].state == "running", "a bad reload must change nothing"

        changed = json.loads(json.dumps(site))
        changed["cameras"][1]["fps"] = 5
        (tmp_path / "site.yaml").write_text(yaml.safe_dump(changed))
        accepted = command(subscriber, "reload", {}, "reload-2")
        assert accepted["ok"], accepted
        assert accepted["result"]["cameras_restarted"] == ["square"]
    finally:
        agent.stop()
        subscriber.close()


def test_missing_sealing_key_stops_the_start(site: dict[str, Any], tmp_path: Path) -> None:
    site["keys"]["csu_sealing_public_key"] = str(tmp_path / "absent.pub")
    agent = Agent(parse_config(site), hotplug=False)
    with pytest.raises(AgentError, match=r"keys\.csu_sealing_public_key"):
        agent.start()
    agent.stop()


def test_hotplug_supervision(site: dict[str, Any], tmp_path: Path) -> None:
    site["cameras"][1]["source"] = {"kind": "synthetic", "seed": 2, "usb_id": "046d:0825@1-1.2"}
    site["mqtt"]["enabled"] = False

    def factory(camera: Any, clock: Any) -> Any:
        from edge_agent.camera.sources.synthetic import SyntheticSource

        assert camera.source.uri in ("", "/dev/video4")
        return SyntheticSource.from_camera(
            camera.model_copy(update={"source": camera.source.model_copy(update={"kind": "synthetic"})}),
            clock,
        )

    agent = Agent(parse_config(site), source_factory=factory, hotplug=False)
    agent.start()
    try:
        states = {e.id: e.state for e in agent.camera_statuses()}
        assert states["square"] == "disconnected"
        agent.attach("square", "/dev/video4")
        time.sleep(0.5)
        square = next(e for e in agent.camera_statuses() if e.id == "square")
        assert square.state == "running" and square.device == "/dev/video4"
        stranger = CameraIdentity("1234", "5678", "1-1.3", serial="SN42")
        agent.report_unconfigured(stranger, "/dev/video6")
        stranger_entry = agent.camera_statuses()[-1]
        assert (stranger_entry.id, stranger_entry.state, stranger_entry.device) == (
            "SN42",
            "unconfigured",
            "/dev/video6",
        )
        agent.forget_unconfigured(stranger)
        assert all(e.state != "unconfigured" for e in agent.camera_statuses())
        agent.detach("square")
        states = {e.id: e.state for e in agent.camera_statuses()}
        assert states == {"entrance": "running", "square": "disconnected", "back": "awaiting_masks"}
    finally:
        agent.stop()


def test_camera_opened_by_path_is_not_reported_unconfigured(site: dict[str, Any]) -> None:
    site["cameras"] = [dict(site["cameras"][0], source="/dev/video0")]
    agent = Agent(parse_config(site), hotplug=False)
    agent.report_unconfigured(CameraIdentity("046d", "0825", "1-1.2"), "/dev/video0")
    agent.report_unconfigured(CameraIdentity("046d", "0826", "1-1.3"), "/dev/video2")
    assert [e.id for e in agent.camera_statuses() if e.state == "unconfigured"] == ["046d:0826@1-1.3"]


def test_run_command_notifies_systemd_reloads_on_sighup_and_stops_on_sigterm(
    site: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(site))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    log = tmp_path / "agent.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.commands.cli", "run", "--config", str(config), "--no-hotplug"],
            env=env,
            stderr=stderr,
        )
    try:
        assert b"READY=1" in notify.recv(4096)
        site["cameras"][1]["fps"] = 4
        config.write_text(yaml.safe_dump(site))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "cameras_restarted" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "'cameras_restarted': ['square']" in log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert b"STOPPING=1" in notify.recv(4096)
    finally:
        process.kill()
        notify.close()


def test_run_command_rejects_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("site_id: x\ncameras: [{id: a, source: synthetic, fps: 0}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.commands.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "device_id: Field required" in result.stderr
    assert "cameras[0].fps" in result.stderr


def test_busy_clip_port_stops_the_start_and_leaves_nothing_running(site: dict[str, Any]) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    site["clip_server"]["port"] = blocker.getsockname()[1]
    before = {t.name for t in threading.enumerate()}
    agent = Agent(parse_config(site), hotplug=False)
    try:
        with pytest.raises(AgentError, match=r"clip_server: cannot listen on 127\.0\.0\.1"):
            agent.start()
    finally:
        blocker.close()
    assert agent.ring is None and agent.mqtt is None
    time.sleep(0.2)
    assert {t.name for t in threading.enumerate()} <= before, "a part kept running after a failed start"


def test_unusable_storage_path_names_the_field(site: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the segments should go")
    site["storage"]["path"] = str(blocker / "segments")
    agent = Agent(parse_config(site), hotplug=False)
    with pytest.raises(AgentError, match=r"storage\.path: cannot open the ring buffer"):
        agent.start()
    assert blocker.read_text() == "a file where the segments should go"


def test_unreadable_broker_ca_names_the_field_and_leaves_nothing_open(
    site: dict[str, Any], tmp_path: Path
) -> None:
    ca_file = tmp_path / "broker-ca.crt"
    ca_file.write_text("not a certificate")
    site["mqtt"]["tls"] = {"ca_file": str(ca_file)}
    before = {t.name for t in threading.enumerate()}
    agent = Agent(parse_config(site), hotplug=False)
    with pytest.raises(AgentError, match=r"^mqtt\.tls: cannot load the TLS files: "):
        agent.start()
    assert agent.ring is None and agent.mqtt is None
    assert not Path(site["mqtt"]["outbox_path"]).exists(), "the outbox was opened before the client failed"
    time.sleep(0.2)
    assert {t.name for t in threading.enumerate()} <= before, "a part kept running after a failed start"


def test_reload_restarts_an_attached_usb_camera_on_its_node(site: dict[str, Any], tmp_path: Path) -> None:
    site["cameras"] = [dict(site["cameras"][1], source={"kind": "synthetic", "seed": 2, "usb_id": "SN1"})]
    site["mqtt"]["enabled"] = False
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    nodes: list[str] = []

    def factory(camera: Any, clock: Any) -> Any:
        from edge_agent.camera.sources.synthetic import SyntheticSource

        nodes.append(camera.source.uri)
        return SyntheticSource.from_camera(camera, clock)

    agent = Agent(parse_config(site), path, source_factory=factory, hotplug=False)
    agent.start()
    try:
        agent.attach("square", "/dev/video4")
        site["cameras"][0]["masks"].append({"points": [[0, 0], [0.1, 0], [0.1, 0.1]]})
        path.write_text(yaml.safe_dump(site))
        assert agent.reload()["cameras_restarted"] == ["square"]
        entry = agent.camera_statuses()[0]
        assert entry.masks == 2 and entry.device == "/dev/video4"
        assert nodes == ["/dev/video4", "/dev/video4"]
    finally:
        agent.stop()


def test_a_part_failing_to_stop_does_not_keep_the_others_running(
    site: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = start_agent(site, tmp_path)
    assert agent.mqtt is not None and agent.clip_server is not None
    port = agent.clip_server.port

    def broken_stop() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    link = agent.mqtt
    monkeypatch.setattr(link, "stop", broken_stop)
    agent.stop()
    assert agent.ring is None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port or 0))  # the clip server released its port
    monkeypatch.undo()
    link.stop()
