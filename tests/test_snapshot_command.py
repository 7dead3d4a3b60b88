"""The MQTT `snapshot` command is signed and audited like hold and release (issue 14 item 10): a real
agent, a real broker; the console's own command link gets a masked frame, and every refusal (unsigned,
replayed, another key, unknown camera, unknown field) is answered `ok: false` and written to the audit."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.api.params import ParamError
from edge_agent.api.snapshots import check_order
from edge_agent.collector.console.devices import CommandLink
from edge_agent.collector.ingest import BrokerAddress
from edge_agent.commands.demo import demo_config
from edge_agent.formats.audit import verify_log
from edge_agent.formats.keys import generate_csu_keys, generate_device_key, load_ed25519_private
from edge_agent.formats.signing import RequestSigner, signed_command
from edge_agent.link.localbroker import LocalBroker
from tests.mqtt_support import Recorder as Subscriber
from tests.test_agent import TOPIC, start_agent


@pytest.fixture
def site(tmp_path: Path, mosquitto: LocalBroker) -> dict[str, Any]:
    csu = generate_csu_keys(tmp_path / "csu")
    device = generate_device_key(tmp_path / "device-keys")
    document = demo_config(tmp_path, mosquitto.port, device, csu)
    return {"document": document, "signer": RequestSigner(load_ed25519_private(csu.signing.private))}


def _reply(subscriber: Subscriber, payload: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Publish a `snapshot` payload as is; its reply (the newest naming `request_id`)."""

    def replies() -> list[dict[str, Any]]:
        return [r for r in subscriber.json_on(f"{TOPIC}/cmd_result") if r.get("request_id") == request_id]

    # The agent subscribes to its commands before it publishes its first status (one connection keeps
    # the order): once a status is seen, a command cannot reach the broker before the subscription.
    assert subscriber.wait_for(lambda _m: bool(subscriber.on(f"{TOPIC}/status")), timeout=20)
    before = len(replies())
    subscriber.publish(f"{TOPIC}/cmd/snapshot", json.dumps(payload).encode())
    assert subscriber.wait_for(lambda _m: len(replies()) > before, timeout=10)
    return replies()[-1]


def _audit(site: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(site["document"]["clip_server"]["audit_log"])
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["action"] == "snapshot"]


def test_signed_snapshot_from_the_console_link_is_served_and_audited(
    site: dict[str, Any], tmp_path: Path, mosquitto: LocalBroker
) -> None:
    agent = start_agent(site["document"], tmp_path)
    link = CommandLink(
        BrokerAddress("127.0.0.1", mosquitto.port, False, "", ""), "csu/v1", site["signer"], "t"
    )
    link.start()
    try:
        time.sleep(1.0)  # the cameras' first frames
        result = link.call(
            "demo-site", "demo-pi", "snapshot", {"camera": "entrance", "officer": "lt-martin"}, 10
        )
    finally:
        link.stop()
        agent.stop()
    jpeg = base64.b64decode(result["jpeg_base64"])
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3)
    assert image[30:100, 50:180].max() < 12, "window mask missing from the snapshot"
    (line,) = _audit(site)
    assert (line["outcome"], line["camera"], line["officer"]) == ("accepted", "entrance", "lt-martin")
    assert line["client"] == site["signer"].key_id
    assert line["jpeg_sha256"] == hashlib.sha256(jpeg).hexdigest()
    assert len(line["request_id"]) == 32
    assert verify_log(Path(site["document"]["clip_server"]["audit_log"])).ok


def test_unsigned_replayed_forged_and_bad_snapshots_are_refused_and_audited(
    site: dict[str, Any], tmp_path: Path, mosquitto: LocalBroker
) -> None:
    signer = site["signer"]
    stranger = RequestSigner(Ed25519PrivateKey.generate())

    def signed(fields: dict[str, Any], by: RequestSigner = signer) -> tuple[dict[str, Any], str]:
        request_id = uuid.uuid4().hex
        return signed_command("snapshot", {**fields, "request_id": request_id}, by), request_id

    subscriber = Subscriber(mosquitto.port)
    agent = start_agent(site["document"], tmp_path)
    try:
        time.sleep(1.0)
        good, good_id = signed({"camera": "square"})
        assert _reply(subscriber, good, good_id)["ok"] is True
        cases = [
            ({"camera": "square", "request_id": "unsigned-1"}, "unsigned-1", "missing-signature"),
            (good, good_id, "replayed-nonce"),
            (*signed({"camera": "square"}, stranger), "unknown-key"),
            (*signed({"camera": "nope"}), "unknown-camera"),
            (*signed({"camera": "square", "zoom": "4"}), "unknown-parameter"),
            (*signed({"camera": "square", "officer": "../../etc"}), "bad-officer"),
        ]
        for payload, request_id, reason in cases:
            reply = _reply(subscriber, payload, request_id)
            assert reply["ok"] is False, reason
            assert reply["error"].startswith(f"snapshot: {reason}: "), reply["error"]
            assert reply["result"]["error"] == reason
    finally:
        agent.stop()
        subscriber.close()
    lines = _audit(site)
    assert [(e["outcome"], e.get("reason")) for e in lines] == [("accepted", None)] + [
        ("refused", reason) for *_, reason in cases
    ]
    # A request whose signature does not hold is credited to no key; a signed one with bad fields is.
    assert [e["client"] for e in lines[1:]] == ["-", "-", "-"] + [signer.key_id] * 3


def test_a_camera_without_a_frame_is_a_failed_snapshot(
    site: dict[str, Any], tmp_path: Path, mosquitto: LocalBroker
) -> None:
    site["document"]["cameras"][1]["source"] = "/dev/video-absent"  # never opens: no frame to give
    subscriber = Subscriber(mosquitto.port)
    agent = start_agent(site["document"], tmp_path)
    try:
        payload = signed_command("snapshot", {"camera": "square", "request_id": "no-frame-1"}, site["signer"])
        reply = _reply(subscriber, payload, "no-frame-1")
    finally:
        agent.stop()
        subscriber.close()
    assert reply["ok"] is False and reply["error"].startswith(
        "snapshot: no-frame: camera: 'square' has no frame"
    )
    (line,) = _audit(site)
    assert (line["outcome"], line["reason"], line["camera"]) == ("failed", "no-frame", "square")


@pytest.mark.parametrize(
    ("fields", "reason", "words"),
    [
        ({"camera": "square", "zoom": "4"}, "unknown-parameter", "zoom"),
        ({"camera": "square", "officer": 7}, "malformed-body", "officer"),
        ({"officer": "OPJ Martin"}, "missing-parameter", "camera"),
        ({"camera": ""}, "missing-parameter", "camera"),
        ({"camera": "../etc"}, "bad-camera-id", "camera"),
        ({"camera": "square", "request_id": "a b"}, "bad-request-id", "request_id"),
    ],
)
def test_bad_snapshot_fields_are_refused_by_name(fields: dict, reason: str, words: str) -> None:
    with pytest.raises(ParamError) as raised:
        check_order(fields, "collector-key", ["square"])
    assert raised.value.reason == reason and words in str(raised.value)
