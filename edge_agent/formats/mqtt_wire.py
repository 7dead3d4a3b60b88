"""The MQTT wire contract (DESIGN.md section 4): topics, payload builders and payload parsers.

Pure functions only, so the device side (`mqtt.py`), the collector and the fleet simulator share one
definition of what goes on the wire. Every payload carries `"schema": 1`; times are UTC ISO 8601 with
milliseconds (`2024-05-01T12:00:00.123Z`). Parsers accept extra fields (the contract grows by adding
fields) but reject a wrong schema number, a missing field or a wrong type, naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.formats.times import iso_ms, parse_iso

SCHEMA = 1
COMMANDS = ("snapshot", "hold", "release", "reload")
Phase = Literal["start", "update", "end"]
Box = tuple[float, float, float, float]


class PayloadError(ValueError):
    """A payload or topic that does not follow the contract; the message names what is wrong."""


# --- topics -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    """The topics of one device under a topic root."""

    root: str
    site: str
    device: str

    @property
    def base(self) -> str:
        """`{root}/{site}/{device}`."""
        return f"{self.root}/{self.site}/{self.device}"

    @property
    def availability(self) -> str:
        """Retained `online`/`offline`; the last will sets `offline`."""
        return f"{self.base}/availability"

    @property
    def status(self) -> str:
        """Retained status document."""
        return f"{self.base}/status"

    def motion(self, camera_id: str) -> str:
        """Motion events of one camera."""
        return f"{self.base}/{camera_id}/motion"

    @property
    def commands(self) -> str:
        """Subscription filter for every command to this device."""
        return f"{self.base}/cmd/+"

    @property
    def cmd_result(self) -> str:
        """Where command replies go."""
        return f"{self.base}/cmd_result"


@dataclass(frozen=True)
class TopicInfo:
    """What a collector learns from a topic: which site, device, camera, and the kind of message."""

    kind: Literal["availability", "status", "motion", "cmd_result"]
    site: str
    device: str
    camera: str = ""


def collector_filters(root: str) -> list[str]:
    """The subscription filters a collector needs under `root`."""
    return [f"{root}/+/+/availability", f"{root}/+/+/status", f"{root}/+/+/+/motion"]


def parse_topic(root: str, topic: str) -> TopicInfo:
    """Split a device topic; PayloadError when it is not one a collector handles."""
    prefix = root.rstrip("/") + "/"
    if not topic.startswith(prefix):
        raise PayloadError(f"topic {topic!r} is outside the root {root!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) == 3 and parts[2] in ("availability", "status", "cmd_result"):
        return TopicInfo(parts[2], parts[0], parts[1])  # type: ignore[arg-type]
    if len(parts) == 4 and parts[3] == "motion":
        return TopicInfo("motion", parts[0], parts[1], parts[2])
    raise PayloadError(f"topic {topic!r} is not availability, status or {{camera}}/motion")


# --- builders (device side) ---------------------------------------------------------------------


class MotionEventLike(Protocol):
    """What `edge_agent.camera.motion.MotionEvent` provides (structural, so either side can land first)."""

    # Read-only members, so that a frozen dataclass with narrower field types (list[Box]) matches.
    @property
    def event_id(self) -> str: ...
    @property
    def camera_id(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def ts(self) -> float: ...
    @property
    def start_ts(self) -> float: ...
    @property
    def score(self) -> float: ...
    @property
    def boxes(self) -> Sequence[Sequence[float]]: ...
    @property
    def zones(self) -> Sequence[str]: ...


def motion_payload(event: MotionEventLike) -> dict[str, Any]:
    """The motion message of one event phase."""
    if event.phase not in ("start", "update", "end"):
        raise PayloadError(f"phase {event.phase!r}: must be start, update or end")
    return {
        "schema": SCHEMA,
        "event_id": event.event_id,
        "camera": event.camera_id,
        "phase": event.phase,
        "ts": iso_ms(event.ts),
        "start_ts": iso_ms(event.start_ts),
        "score": round(float(event.score), 4),
        "boxes": [[round(float(v), 4) for v in box] for box in event.boxes],
        "zones": list(event.zones),
    }


def status_payload(
    *,
    site: str,
    device: str,
    ts: float,
    version: str,
    uptime_s: float,
    cameras: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status document; `extra` carries the other parts (health, disk, retention, clip_url...)."""
    payload: dict[str, Any] = {
        "schema": SCHEMA,
        "site": site,
        "device": device,
        "ts": iso_ms(ts),
        "version": version,
        "uptime_s": round(uptime_s, 1),
        "cameras": [dict(c) for c in cameras],
    }
    for key, value in (extra or {}).items():
        payload.setdefault(key, value)
    return payload


def cmd_result_payload(
    command: str, ts: float, request_id: Any = None, result: Mapping[str, Any] | None = None, error: str = ""
) -> dict[str, Any]:
    """A reply on `cmd_result`: `ok` with the handler's result, or the error naming what was wrong."""
    payload: dict[str, Any] = {"schema": SCHEMA, "command": command, "ts": iso_ms(ts), "ok": not error}
    if request_id is not None:
        payload["request_id"] = request_id
    if error:
        payload["error"] = error
    else:
        payload["result"] = dict(result or {})
    return payload


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- parsers (collector side) -------------------------------------------------------------------


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    schema_: Literal[1] = Field(alias="schema")


def _iso(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time string")
    return parse_iso(value)


class CameraStatus(BaseModel):
    """One camera in a status document."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    state: str
    fps: float = 0.0
    drops: int = 0
    resolution: tuple[int, int] | None = None
    masks: int = 0


class StatusMessage(_Payload):
    """A parsed status document."""

    site: str
    device: str
    ts: float
    version: str = ""
    uptime_s: float = 0.0
    cameras: list[CameraStatus] = Field(default_factory=list)
    clip_url: str = ""

    _ts = field_validator("ts", mode="before")(_iso)


class MotionMessage(_Payload):
    """A parsed motion event phase."""

    event_id: str = Field(min_length=1, max_length=128)
    phase: Phase
    ts: float
    start_ts: float
    score: float = 0.0
    boxes: list[tuple[float, float, float, float]] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)

    _ts = field_validator("ts", "start_ts", mode="before")(_iso)


def _errors(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(payload)"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PayloadError(f"payload is not UTF-8 JSON ({error})") from None
    if not isinstance(data, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(data).__name__}")
    return data


def parse_status(raw: bytes, where: TopicInfo) -> StatusMessage:
    """Validate a status document and check it matches the topic's site and device."""
    try:
        message = StatusMessage.model_validate(_load_object(raw))
    except ValidationError as error:
        raise PayloadError(_errors(error)) from None
    if (message.site, message.device) != (where.site, where.device):
        raise PayloadError(
            f"payload site/device {message.site}/{message.device} differ from the topic's "
            f"{where.site}/{where.device}"
        )
    return message


def parse_motion(raw: bytes) -> MotionMessage:
    """Validate a motion event phase."""
    try:
        return MotionMessage.model_validate(_load_object(raw))
    except ValidationError as error:
        raise PayloadError(_errors(error)) from None


def parse_availability(raw: bytes) -> Literal["online", "offline"]:
    """`online` or `offline` (a bare word or a JSON string)."""
    text = raw.decode("utf-8", errors="replace").strip().strip('"')
    if text not in ("online", "offline"):
        raise PayloadError(f"availability must be online or offline, got {text[:40]!r}")
    return text  # type: ignore[return-value]


def parse_command(name: str, raw: bytes) -> dict[str, Any]:
    """A command's arguments: an empty payload means none; otherwise a JSON object."""
    if name not in COMMANDS:
        raise PayloadError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
    if not raw.strip():
        return {}
    return _load_object(raw)
