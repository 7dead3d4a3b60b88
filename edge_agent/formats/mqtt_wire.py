"""The MQTT wire contract (DESIGN.md section 4): topics, payload builders, payload models and parsers.

Pure code only, so the device side (`edge_agent.link`), the collector and the fleet simulator share one
definition of what goes on the wire. The status document is a model both ways: the device builds a
`StatusMessage` (`edge_agent.link.status`) and sends `message.wire()`; the collector parses it back into
the same model. Every payload carries `"schema": 1`; times are UTC ISO 8601 with milliseconds
(`2024-05-01T12:00:00.123Z`). Parsers accept extra fields (the contract grows by adding fields) but
reject a wrong schema number, a missing field or a wrong type, naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
)

from edge_agent.formats.times import iso_ms, parse_iso

SCHEMA: Final = 1
COMMANDS = ("snapshot", "hold", "release", "reload", "upload_clip")
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


def cmd_result_payload(
    command: str, ts: float, request_id: Any = None, result: Mapping[str, Any] | None = None, error: str = ""
) -> dict[str, Any]:
    """A reply on `cmd_result`: `ok` with the handler's result, or the error naming what was wrong.

    `ok` is the command's outcome, one rule for every command: it is false on an `error`, and on a
    result that says `"ok": false` (a refusal by a layer that cannot raise the link's CommandError, such
    as the clip API's holds and uploads); the error is then the result's `error` and `message`, and the
    result stays in the reply so that its reason code can be read.
    """
    result = dict(result or {})
    refused = not error and result.get("ok") is False
    if refused:
        said = [str(result[k]) for k in ("error", "message") if result.get(k)]
        error = f"{command}: {': '.join(said) or 'refused'}"
    payload: dict[str, Any] = {"schema": SCHEMA, "command": command, "ts": iso_ms(ts), "ok": not error}
    if request_id is not None:
        payload["request_id"] = request_id
    if error:
        payload["error"] = error
    if not error or refused:
        payload["result"] = result
    return payload


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- models (the status built by the device) and parsers (collector side) --------------------------


_FROM_WIRE = {"wire": True}
"""Validation context of a payload read off the wire (see `_time`)."""


class _Wire(BaseModel):
    """A payload model: extra fields kept (the contract grows), frozen; `wire()` is its JSON document.

    Fields named in `_omit_when_none` are left out of the document while None: the device sends them
    only when it has them (a stopped camera has no frame counter), as it always did.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    _omit_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        document: dict[str, Any] = handler(self)
        return {k: v for k, v in document.items() if not (v is None and k in self._omit_when_none)}

    def wire(self) -> dict[str, Any]:
        """The JSON-able document, as sent (`encode` it to publish)."""
        return self.model_dump(mode="json", by_alias=True)


class _Payload(_Wire):
    schema_: Literal[1] = Field(alias="schema")


def _time(value: Any, info: ValidationInfo) -> Any:
    """A time: ISO 8601 text, as on the wire; epoch seconds only from Python code building a message."""
    if value is None or isinstance(value, str):
        return None if value is None else parse_iso(value)
    from_wire = bool(info.context and info.context.get("wire"))
    if from_wire or isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an ISO 8601 time string")
    return float(value)


def _iso_text(value: float | None) -> str | None:
    return None if value is None else iso_ms(value)


class RecorderStatus(_Wire):
    """A camera's recorder counters in a status document; `encoder` is the FFmpeg encoder in use and
    `fallback` why the recorder left the one before it (a hardware encoder that failed)."""

    _omit_when_none = frozenset({"encoder", "fallback"})

    segments: int = 0
    bytes: int = 0
    errors: int = 0
    frames_dropped_disk: int = 0
    encoder: str | None = None
    fallback: str | None = None


class CameraStatus(_Wire):
    """One camera in a status document (an `unconfigured` USB camera has only id, state and device)."""

    _omit_when_none = frozenset(
        {"recording", "frames", "reconnects", "event_open", "last_error", "device", "recorder"}
    )

    id: str
    state: str
    fps: float = 0.0
    drops: int = 0
    resolution: tuple[int, int] | None = None
    masks: int = 0
    recording: str | None = None
    frames: int | None = None
    reconnects: int | None = None
    event_open: bool | None = None
    last_error: str | None = None
    device: str | None = None
    recorder: RecorderStatus | None = None


class DiskStatus(_Wire):
    """Bytes on the filesystem holding the recordings, and the configured quota (0 = none).

    `footage`: the bytes of sealed footage (all that counts toward the quota); `problem`: why the disk
    is short of free space when footage is not the cause (footage is then kept, and the cause refused).
    """

    _omit_when_none = frozenset({"footage", "problem"})

    used: int
    free: int
    total: int
    quota: int = 0
    footage: int | None = None
    problem: str | None = None


class AuditStatus(_Wire):
    """The device's audit log: bytes held (with its rotated files), its quota, and the refusal lines
    withheld since start (past the quota, or refused by the disk: counted, not written)."""

    bytes: int = 0
    quota: int = 0
    withheld: int = 0


class RetentionStatus(_Wire):
    """The oldest footage kept (None: nothing yet) and the configured retention."""

    oldest_ts: float | None = None
    days: float = 0.0

    _oldest = field_validator("oldest_ts", mode="before")(_time)
    _oldest_text = field_serializer("oldest_ts")(_iso_text)


class DeletedCounts(_Wire):
    """Footage deleted for one reason since the agent started: segments, bytes, seconds of footage, and
    `early`: the segments of those that held footage younger than the legal retention."""

    segments: int = 0
    bytes: int = 0
    seconds: float = 0.0
    early: int = 0


class DeletedStatus(_Wire):
    """Footage deleted since the agent started, by reason: `age` (routine expiry at the retention),
    `quota` and `disk_free` (the space rules, which delete footage early when the disk is too small)."""

    age: DeletedCounts = Field(default_factory=DeletedCounts)
    quota: DeletedCounts = Field(default_factory=DeletedCounts)
    disk_free: DeletedCounts = Field(default_factory=DeletedCounts)


class OutboxStatus(_Wire):
    """Events waiting for the broker, dropped for room, and outbox files set aside as corrupt."""

    pending: int = 0
    dropped: int = 0
    corrupt_files: int = 0


class MqttStatus(_Wire):
    """The MQTT link's counters: connections made, messages the broker refused, commands answered."""

    connections: int = 0
    rejected: int = 0
    commands: int = 0
    command_errors: int = 0


class LocationStatus(_Wire):
    """Where the device stands (its config's `location`), for the plan on the CSU console's fleet page."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    label: str = ""


class StatusMessage(_Payload):
    """The status document (built by `edge_agent.link.status`, parsed by the collector).

    Fields after `cameras` default to None for a status that lacks them (an older device, a simulator).
    `delivery` is `push` when the CSU cannot reach the device and must ask it to upload clips (the
    `upload_clip` command); `heartbeat_s` is the longest gap between two statuses of an unchanged device;
    `deleted` counts the footage retention deleted, by reason; `audit` is the audit log's own space;
    `max_clip_seconds` lets the console refuse a longer range before asking.
    """

    _omit_when_none = frozenset(
        {"status_error", "location", "delivery", "heartbeat_s", "deleted", "audit", "max_clip_seconds"}
    )

    site: str
    device: str
    ts: float
    version: str = ""
    uptime_s: float = 0.0
    cameras: list[CameraStatus] = Field(default_factory=list)
    cpu_temp_c: float | None = None
    load: tuple[float, float, float] | None = None
    disk: DiskStatus | None = None
    retention: RetentionStatus | None = None
    clip_url: str = ""
    outbox: OutboxStatus | None = None
    mqtt: MqttStatus | None = None
    status_error: str | None = None
    location: LocationStatus | None = None
    delivery: str | None = None
    heartbeat_s: float | None = None
    deleted: DeletedStatus | None = None
    audit: AuditStatus | None = None
    max_clip_seconds: float | None = Field(None, gt=0)  # the longest clip the device serves in one request

    _ts = field_validator("ts", mode="before")(_time)
    _ts_text = field_serializer("ts")(_iso_text)


class MotionMessage(_Payload):
    """A parsed motion event phase."""

    event_id: str = Field(min_length=1, max_length=128)
    phase: Phase
    ts: float
    start_ts: float
    score: float = 0.0
    boxes: list[Box] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)

    _ts = field_validator("ts", "start_ts", mode="before")(_time)


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
        message = StatusMessage.model_validate(_load_object(raw), context=_FROM_WIRE)
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
        return MotionMessage.model_validate(_load_object(raw), context=_FROM_WIRE)
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
