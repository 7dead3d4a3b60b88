"""Push delivery end to end: a nomad device (clip server off) uploads a clip through a real mosquitto to
the collector's upload endpoint on loopback; the collector verifies and exports it like a pulled one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.download import FetchError
from edge_agent.collector.evidence import ClipRejected, verify_export
from edge_agent.collector.fetch import ClipRequest, CollectorKeys
from edge_agent.collector.ingest import parse_broker_url
from edge_agent.collector.push import PushSettings, push_clip
from edge_agent.device.agent import Agent
from edge_agent.formats.audit import AuditLog, verify_log
from edge_agent.formats.config import parse_config
from edge_agent.formats.keys import (
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_private,
)
from edge_agent.formats.signing import RequestSigner, signed_command
from edge_agent.formats.times import iso_ms
from edge_agent.link.localbroker import LocalBroker, free_port
from tests.clip_support import encode_segments
from tests.mqtt_support import Recorder as Subscriber
from tests.push_support import DEVICE, SITE, TamperingProxy, audit_entries, nomad_document

TOPIC = f"csu/v1/{SITE}/{DEVICE}"


@pytest.fixture
def nomad(tmp_path: Path) -> dict:
    """Keys on disk and 20 s of real H.264 footage (10 fps, 2 s segments) sealed in the device's ring.

    The footage ends a minute ago: recent enough that the agent's retention keeps it.
    """
    csu = generate_csu_keys(tmp_path / "csu")
    device = generate_device_key(tmp_path / "device-keys")
    t0 = time.time() - 80.0
    ring = encode_segments(
        tmp_path / "segments",
        load_ed25519_private(device.private),
        load_x25519_private(csu.sealing.private).public_key(),
        t0,
        20.0,
    )
    ring.close()
    return {"csu": csu, "device": device, "t0": t0}


def _start(document: dict, tmp_path: Path) -> Agent:
    path = tmp_path / "nomad.yaml"
    path.write_text(yaml.safe_dump(document))
    agent = Agent(parse_config(document), path, hotplug=False)
    agent.start()
    return agent


def test_a_device_without_clip_server_delivers_by_push_through_the_broker(
    tmp_path: Path, mosquitto: LocalBroker, nomad: dict
) -> None:
    upload_port = free_port()
    collector_url = f"http://127.0.0.1:{upload_port}"
    document = nomad_document(tmp_path, mosquitto.port, nomad["device"], nomad["csu"], [collector_url])
    subscriber = Subscriber(mosquitto.port, f"{TOPIC}/#")
    agent = _start(document, tmp_path)
    try:
        assert agent.clip_server is None
        assert subscriber.wait_for(lambda _m: bool(subscriber.on(f"{TOPIC}/status")), timeout=15)
        status = subscriber.json_on(f"{TOPIC}/status")[-1]
        assert (status["clip_url"], status["delivery"]) == ("", "push")
        t0 = nomad["t0"]
        export = tmp_path / "export"
        code = collector_main(
            [
                "fetch-clip",
                "--site", SITE, "--device", DEVICE, "--camera", "cam1",
                "--start", iso_ms(t0 + 3), "--end", iso_ms(t0 + 15), "--requisition", "PV 2024/118",
                "--keys", str(tmp_path / "csu"), "--device-key", str(nomad["device"].public),
                "--audit", str(tmp_path / "csu-audit.jsonl"), "-o", str(export), "--no-progress",
                "--via", "push", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}",
                "--upload-listen", f"127.0.0.1:{upload_port}",
            ]
        )  # fmt: skip
        assert code == 0
    finally:
        agent.stop()
        subscriber.close()
    evidence, problems = verify_export(export, [load_ed25519_public(nomad["csu"].signing.public)])
    assert problems == [] and evidence is not None
    assert evidence["verification"]["result"] == "verified"
    assert evidence["clip"]["frames"] == 120
    assert evidence["source"].startswith(f"{collector_url}/v1/uploads/")
    assert sorted(p.name for p in export.iterdir()) == [
        "bundle.tar",
        "clip.mp4",
        "evidence.json",
        "evidence.sig",
    ]
    # The device audited the command and the delivery; the collector the export, saying how it came.
    device_audit = audit_entries(tmp_path / "audit.jsonl")
    assert verify_log(tmp_path / "audit.jsonl").ok
    outcomes = [(e["action"], e["outcome"]) for e in device_audit]
    assert outcomes == [("upload_clip", "accepted"), ("upload_clip", "delivered")]
    delivered = device_audit[-1]
    assert delivered["size"] == evidence["bundle"]["size"]
    # Every byte once, unless a PUT failed under load and was retried (the retry is counted, and no byte
    # the collector had acknowledged is ever sent again).
    assert delivered["sent"] == delivered["size"] or delivered["retries"] > 0, delivered
    assert delivered["resent"] == 0
    assert "token" not in delivered
    collector_audit = audit_entries(tmp_path / "csu-audit.jsonl")
    assert [(e["action"], e["outcome"], e["via"]) for e in collector_audit] == [
        ("fetch-clip", "exported", "push")
    ]
    # The device reported progress and the outcome on cmd_result.
    replies = [
        r["result"] for r in subscriber.json_on(f"{TOPIC}/cmd_result") if r["command"] == "upload_clip"
    ]
    assert (replies[0]["phase"], replies[-1]["phase"]) == ("accepted", "delivered")


def test_a_bundle_altered_during_upload_is_rejected_by_the_collector(
    tmp_path: Path, mosquitto: LocalBroker, nomad: dict
) -> None:
    upload_port = free_port()
    # The device reaches the endpoint through a proxy that flips one byte of the upload, inside the
    # footage (past the count query and the manifest): the endpoint's URL for devices is the proxy's.
    proxy = TamperingProxy(upload_port, flip_at=20_000)
    document = nomad_document(tmp_path, mosquitto.port, nomad["device"], nomad["csu"], [proxy.url])
    agent = _start(document, tmp_path)
    csu = nomad["csu"]
    keys = CollectorKeys(
        load_ed25519_private(csu.signing.private),
        load_x25519_private(csu.sealing.private),
        load_ed25519_public(nomad["device"].public),
    )
    settings = PushSettings(
        parse_broker_url(f"mqtt://127.0.0.1:{mosquitto.port}"), "127.0.0.1", upload_port, upload_url=proxy.url
    )
    t0 = nomad["t0"]
    request = ClipRequest(SITE, DEVICE, "cam1", t0 + 1, t0 + 19, "PV 2024/118", "OPJ Martin")
    audit = AuditLog(tmp_path / "csu-audit.jsonl")
    try:
        with pytest.raises(ClipRejected, match=r"tampered|missing|not listed|signature"):
            push_clip(settings, request, keys, tmp_path / "export", audit)
    finally:
        agent.stop()
        proxy.close()
    assert proxy.forwarded > 20_000
    assert not (tmp_path / "export" / "clip.mp4").exists()
    entries = audit_entries(tmp_path / "csu-audit.jsonl")
    assert [(e["outcome"], e["reason"], e["via"]) for e in entries] == [("rejected", "verification", "push")]
    assert entries[0]["officer"] == "OPJ Martin"


def test_a_device_that_refuses_the_command_fails_the_fetch_at_once(
    tmp_path: Path, mosquitto: LocalBroker, nomad: dict
) -> None:
    upload_port = free_port()
    # The device only trusts another collector: the command's upload URL is not under it.
    document = nomad_document(
        tmp_path, mosquitto.port, nomad["device"], nomad["csu"], ["https://collector.csu.example"]
    )
    agent = _start(document, tmp_path)
    csu = nomad["csu"]
    keys = CollectorKeys(
        load_ed25519_private(csu.signing.private),
        load_x25519_private(csu.sealing.private),
        load_ed25519_public(nomad["device"].public),
    )
    settings = PushSettings(parse_broker_url(f"mqtt://127.0.0.1:{mosquitto.port}"), "127.0.0.1", upload_port)
    t0 = nomad["t0"]
    audit = AuditLog(tmp_path / "csu-audit.jsonl")
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match="upload-url-not-allowed") as raised:
            push_clip(
                settings, ClipRequest(SITE, DEVICE, "cam1", t0, t0 + 10, "PV-1"), keys, tmp_path / "x", audit
            )
    finally:
        agent.stop()
    assert time.monotonic() - started < 10
    assert raised.value.reason == "upload-url-not-allowed"
    device_lines = audit_entries(tmp_path / "audit.jsonl")
    assert [(e["action"], e["outcome"], e["reason"]) for e in device_lines] == [
        ("mqtt-upload_clip", "refused", "upload-url-not-allowed")
    ]
    assert [e["outcome"] for e in audit_entries(tmp_path / "csu-audit.jsonl")] == ["failed"]


@pytest.mark.parametrize(
    ("clip_url", "delivery", "chosen"),
    [
        ("https://pt-042.ville-01:8480", None, "pull"),
        ("", None, "push"),
        ("https://nomad-01.ville-01:8480", "push", "push"),
    ],
)
def test_fetch_clip_chooses_push_from_the_last_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clip_url: str, delivery: str | None, chosen: str
) -> None:
    from edge_agent.collector.store import StatusRecord, open_store
    from edge_agent.formats.mqtt_wire import SCHEMA, StatusMessage

    now = time.time()
    message = StatusMessage(
        schema=SCHEMA, site=SITE, device=DEVICE, ts=now, clip_url=clip_url, delivery=delivery
    )
    store = open_store(tmp_path / "collector.sqlite")
    store.write([StatusRecord(message, json.dumps(message.wire()), now)], now)
    store.close()
    (tmp_path / "keys").mkdir()  # empty: a pull stops at the missing signing key, a push at --broker
    code = collector_main(
        [
            "fetch-clip", "--site", SITE, "--device", DEVICE, "--camera", "cam1",
            "--start", iso_ms(now - 60), "--end", iso_ms(now - 30), "--requisition", "PV-1",
            "--keys", str(tmp_path / "keys"), "--device-key", str(tmp_path / "device.pub"),
            "--store", str(tmp_path / "collector.sqlite"), "-o", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2
    assert ("--broker" in error) == (chosen == "push"), error
    assert ("csu_ed25519" in error) == (chosen == "pull"), error


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ([], "--broker"),
        (["--broker", "mqtt://127.0.0.1"], "--upload-listen"),
        (["--broker", "http://127.0.0.1", "--upload-listen", "127.0.0.1:8490"], "--broker"),
        (["--broker", "mqtt://127.0.0.1", "--upload-listen", "8490"], "HOST:PORT"),
        (["--broker", "mqtt://127.0.0.1", "--upload-listen", "h:99999"], "HOST:PORT"),
        (["--broker", "mqtt://b", "--upload-listen", "h:1", "--upload-url", "ftp://x"], "--upload-url"),
        (["--broker", "mqtt://b", "--upload-listen", "h:1", "--push-timeout", "0"], "--push-timeout"),
    ],
)
def test_bad_push_options_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], words: str
) -> None:
    code = collector_main(
        [
            "fetch-clip", "--site", SITE, "--device", DEVICE, "--camera", "cam1",
            "--start", "2024-05-01T12:00:00Z", "--end", "2024-05-01T12:01:00Z", "--requisition", "PV-1",
            "--device-key", str(tmp_path / "device.pub"), "-o", str(tmp_path / "out"), "--via", "push",
            *options,
        ]
    )  # fmt: skip
    assert code == 2
    assert words in capsys.readouterr().err


def test_a_nomad_device_without_clip_server_takes_a_signed_hold_by_mqtt(
    tmp_path: Path, mosquitto: LocalBroker, nomad: dict
) -> None:
    """A judicial hold must reach a kit the CSU cannot connect to: MQTT holds work without the HTTP API."""
    document = nomad_document(tmp_path, mosquitto.port, nomad["device"], nomad["csu"], ["http://127.0.0.1:9"])
    subscriber = Subscriber(mosquitto.port, f"{TOPIC}/#")
    agent = _start(document, tmp_path)
    try:
        assert agent.clip_server is None and agent.ring is not None
        assert subscriber.wait_for(lambda _m: bool(subscriber.on(f"{TOPIC}/status")), timeout=15)
        signer = RequestSigner(load_ed25519_private(nomad["csu"].signing.private))
        t0 = nomad["t0"]
        fields = {"camera": "cam1", "start": iso_ms(t0), "end": iso_ms(t0 + 10), "requisition": "PV 2026/77"}
        payload = signed_command("hold", fields, signer)
        subscriber.publish(f"{TOPIC}/cmd/hold", json.dumps(payload).encode())
        assert subscriber.wait_for(lambda _m: bool(subscriber.on(f"{TOPIC}/cmd_result")), timeout=15)
        reply = subscriber.json_on(f"{TOPIC}/cmd_result")[-1]
        assert reply["ok"] is True, reply
        assert [h.requisition for h in agent.ring.holds()] == ["PV 2026/77"]
    finally:
        agent.stop()
        subscriber.close()
