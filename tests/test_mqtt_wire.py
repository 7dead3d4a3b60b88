"""The wire contract alone: times, topics, payload builders and the collector's parsers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from edge_agent.formats.mqtt_wire import (
    SCHEMA,
    CameraStatus,
    PayloadError,
    RetentionStatus,
    StatusMessage,
    TopicInfo,
    Topics,
    cmd_result_payload,
    encode,
    motion_payload,
    parse_availability,
    parse_command,
    parse_motion,
    parse_status,
    parse_topic,
)


@dataclass
class Ev:
    event_id: str = "e1"
    camera_id: str = "cam1"
    phase: str = "update"
    ts: float = 1714564800.0
    start_ts: float = 1714564790.25
    score: float = 0.123456
    boxes: list[tuple[float, float, float, float]] = field(default_factory=lambda: [(0.1, 0.2, 0.3, 0.4)])
    zones: list[str] = field(default_factory=list)


def test_topics_and_their_parsing() -> None:
    topics = Topics("csu/v1", "s1", "d1")
    assert topics.motion("cam2") == "csu/v1/s1/d1/cam2/motion"
    assert topics.commands == "csu/v1/s1/d1/cmd/+"
    assert parse_topic("csu/v1", topics.status) == TopicInfo("status", "s1", "d1")
    assert parse_topic("csu/v1", topics.motion("cam2")) == TopicInfo("motion", "s1", "d1", "cam2")
    with pytest.raises(PayloadError, match="outside the root"):
        parse_topic("csu/v1", "other/s1/d1/status")
    with pytest.raises(PayloadError, match="not availability, status"):
        parse_topic("csu/v1", "csu/v1/s1/d1/cam2/whatever")


def test_motion_payload_round_trip() -> None:
    payload = motion_payload(Ev())
    assert payload["schema"] == 1 and payload["score"] == 0.1235
    assert payload["start_ts"] == "2024-05-01T11:59:50.250Z"
    parsed = parse_motion(encode(payload))
    assert (parsed.event_id, parsed.phase, parsed.ts, parsed.start_ts) == (
        "e1",
        "update",
        1714564800.0,
        1714564790.25,
    )
    assert parsed.boxes == [(0.1, 0.2, 0.3, 0.4)]
    with pytest.raises(PayloadError, match="phase 'middle'"):
        motion_payload(Ev(phase="middle"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": 2}, "schema: Input should be 1"),
        ({"phase": "later"}, "phase: Input should be 'start', 'update' or 'end'"),
        ({"ts": 1714564800}, "ts: must be an ISO 8601 time string"),
        ({"start_ts": "noon"}, "start_ts: 'noon' is not an ISO 8601 time"),
        ({"boxes": [[0.1, 0.2]]}, "boxes.0"),
        ({"event_id": ""}, "event_id: String should have at least 1 character"),
    ],
)
def test_bad_motion_payloads_name_the_field(change: dict, message: str) -> None:
    payload = {**motion_payload(Ev()), **change}
    with pytest.raises(PayloadError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_motion(json.dumps(payload).encode())


def test_missing_field_and_non_json() -> None:
    payload = motion_payload(Ev())
    del payload["event_id"]
    with pytest.raises(PayloadError, match="event_id: Field required"):
        parse_motion(encode(payload))
    with pytest.raises(PayloadError, match="not UTF-8 JSON"):
        parse_motion(b"\xff\xfe")
    with pytest.raises(PayloadError, match="must be a JSON object, got str"):
        parse_motion(b'"start"')


def test_status_must_match_its_topic() -> None:
    message = StatusMessage(
        schema=SCHEMA,
        site="s1",
        device="d1",
        ts=0.0,
        version="1",
        uptime_s=3.0,
        cameras=[CameraStatus(id="c", state="running")],
    )
    raw = encode(message.wire())
    status = parse_status(raw, TopicInfo("status", "s1", "d1"))
    assert status == message and status.cameras[0].id == "c"
    with pytest.raises(PayloadError, match="differ from the topic's s1/d2"):
        parse_status(raw, TopicInfo("status", "s1", "d2"))


def test_status_times_on_the_wire_are_iso_text_only() -> None:
    """Python code builds a status with epoch seconds; a payload read off the wire must carry ISO text."""
    message = StatusMessage(
        schema=SCHEMA,
        site="s1",
        device="d1",
        ts=1714564800.5,
        retention=RetentionStatus(oldest_ts=1714564700.0),
    )
    document = message.wire()
    assert document["ts"] == "2024-05-01T12:00:00.500Z"
    assert document["retention"] == {"oldest_ts": "2024-05-01T11:58:20.000Z", "days": 0.0}
    where = TopicInfo("status", "s1", "d1")
    with pytest.raises(PayloadError, match=r"^ts: must be an ISO 8601 time string$"):
        parse_status(encode({**document, "ts": 1714564800.5}), where)
    with pytest.raises(PayloadError, match=r"^retention\.oldest_ts: must be an ISO 8601 time string$"):
        parse_status(encode({**document, "retention": {"oldest_ts": 1714564700, "days": 15}}), where)
    with pytest.raises(PayloadError, match=r"^ts: 'yesterday' is not an ISO 8601 time$"):
        parse_status(encode({**document, "ts": "yesterday"}), where)
    with pytest.raises(PayloadError, match=r"^cameras\.0\.state: Field required$"):
        parse_status(encode({**document, "cameras": [{"id": "c"}]}), where)


def test_status_keeps_fields_it_does_not_know() -> None:
    """The contract grows by added fields: a collector parsing a newer status keeps them."""
    raw = encode({"schema": 1, "site": "s1", "device": "d1", "ts": "2024-05-01T12:00:00.000Z", "gps": [1, 2]})
    status = parse_status(raw, TopicInfo("status", "s1", "d1"))
    assert status.wire()["gps"] == [1, 2] and status.clip_url == ""


def test_availability_and_commands() -> None:
    assert parse_availability(b'"online"') == "online"
    assert parse_availability(b"offline") == "offline"
    with pytest.raises(PayloadError, match="online or offline"):
        parse_availability(b"maybe")
    assert parse_command("reload", b"") == {}
    assert parse_command("hold", b'{"camera": "c"}') == {"camera": "c"}
    with pytest.raises(PayloadError, match="unknown command 'format'"):
        parse_command("format", b"{}")
    reply = cmd_result_payload("hold", 0.0, "r1", error="hold: bad range")
    assert reply == {
        "schema": 1,
        "command": "hold",
        "ts": "1970-01-01T00:00:00.000Z",
        "ok": False,
        "request_id": "r1",
        "error": "hold: bad range",
    }


def test_a_result_that_says_it_refused_is_a_refused_reply() -> None:
    """A handler below the link (holds, uploads) refuses by returning `"ok": false`: the reply says so."""
    refusal = {"ok": False, "error": "replayed-nonce", "message": "this request was already used"}
    reply = cmd_result_payload("hold", 0.0, None, refusal)
    assert reply["ok"] is False
    assert reply["error"] == "hold: replayed-nonce: this request was already used"
    assert reply["result"] == refusal  # kept, for its reason code
    assert cmd_result_payload("hold", 0.0, None, {"ok": False})["error"] == "hold: refused"
    accepted = cmd_result_payload("hold", 0.0, None, {"ok": True, "hold": {"id": 3}})
    assert (accepted["ok"], accepted["result"], "error" in accepted) == (
        True,
        {"ok": True, "hold": {"id": 3}},
        False,
    )
    assert cmd_result_payload("reload", 0.0)["result"] == {}
