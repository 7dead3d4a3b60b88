"""Validation of the clip API's query parameters: one clear refusal per bad value.

Pure functions, no I/O: the server maps a `ParamError` to its HTTP status and writes the audit line.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.formats import times
from edge_agent.formats.references import reference_problem
from edge_agent.formats.signing import NONCE_RE
from edge_agent.formats.times import TimeFormatError

_CAMERA_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PATH_HINTS = ("/", "\\", "..", "\x00", "%2f", "%2e", "%5c", "~")


class ParamError(ValueError):
    """A request parameter that cannot be used; `reason` is a short code for audit and metrics."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class ClipQuery:
    """A validated request for a camera's time range."""

    camera: str
    start_ts: float
    end_ts: float
    requisition: str = ""
    officer: str = ""
    nonce: str = ""
    """The request nonce the bundle answers (`edge_agent.formats.bundle`): the `request_nonce` parameter
    when given (the later requests of a resumed download name their first one's), else the request's
    own signature nonce, which the server fills in."""


def parse_time(name: str, raw: str) -> float:
    """A time parameter (see `formats.times.parse_time`); a bad one is a `malformed-time` refusal."""
    try:
        return times.parse_time(name, raw)
    except TimeFormatError as error:
        raise ParamError("malformed-time", str(error)) from None


def single_values(
    pairs: Iterable[tuple[str, str]], required: Collection[str], optional: Collection[str] = ()
) -> dict[str, str]:
    """The query as a dict; refuses unknown, repeated and missing parameters."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in required and name not in optional:
            raise ParamError("unknown-parameter", f"unknown parameter {name!r}")
        if name in values:
            raise ParamError("repeated-parameter", f"{name}: given more than once")
        values[name] = value
    missing = [n for n in required if not values.get(n)]
    if missing:
        raise ParamError("missing-parameter", f"missing parameter(s): {', '.join(missing)}")
    return values


def check_command_fields(
    fields: Mapping[str, Any], required: Collection[str], optional: Collection[str] = ()
) -> None:
    """A signed MQTT command's fields: none unknown, all strings, the required ones given; ParamError
    naming the bad ones."""
    unknown = sorted(set(fields) - set(required) - set(optional))
    if unknown:
        raise ParamError("unknown-parameter", f"unknown field(s): {', '.join(unknown)}")
    not_text = sorted(name for name, value in fields.items() if not isinstance(value, str))
    if not_text:
        raise ParamError("malformed-body", f"field(s) {', '.join(not_text)}: must be strings")
    missing = [name for name in required if not fields.get(name)]
    if missing:
        raise ParamError("missing-parameter", f"missing field(s): {', '.join(missing)}")


def check_camera(raw: str, known: Collection[str]) -> str:
    """A camera id of this device: path-like values are refused before the lookup."""
    if any(hint in raw.lower() for hint in _PATH_HINTS) or not _CAMERA_RE.match(raw):
        raise ParamError("bad-camera-id", f"camera: {raw!r} is not a camera id ([a-z0-9_-])")
    if raw not in known:
        raise ParamError("unknown-camera", f"camera: no camera {raw!r} on this device", 404)
    return raw


def check_requisition(raw: str) -> str:
    """A requisition reference: printable, short, never path-like."""
    problem = reference_problem("requisition", raw)
    if problem:
        raise ParamError("bad-requisition", problem)
    return raw


def check_officer(raw: str) -> str:
    """The officer who asked (optional on the wire): the same rule as a requisition reference."""
    problem = reference_problem("officer", raw)
    if problem:
        raise ParamError("bad-officer", problem)
    return raw


def check_request_nonce(raw: str) -> str:
    """A `request_nonce`: shaped like a signature nonce (`X-CSU-Nonce`)."""
    if not NONCE_RE.match(raw):
        raise ParamError("bad-request-nonce", "request_nonce: 16 to 64 characters of [A-Za-z0-9_-]")
    return raw


def check_request_id(raw: str) -> str:
    """A command's `request_id` (echoed on `cmd_result` and in the audit line): 1 to 64 of `[A-Za-z0-9_-]`."""
    if not _REQUEST_ID_RE.match(raw):
        raise ParamError("bad-request-id", "request_id: 1 to 64 characters of [A-Za-z0-9_-]")
    return raw


def check_range(start_ts: float, end_ts: float, max_seconds: float) -> None:
    """Start before end, and no longer than the configured maximum."""
    if end_ts <= start_ts:
        raise ParamError("inverted-range", "end must be after start")
    if end_ts - start_ts > max_seconds:
        raise ParamError(
            "range-too-long",
            f"range of {end_ts - start_ts:g}s exceeds the maximum of {max_seconds:g}s",
        )


def parse_clip_query(
    pairs: Iterable[tuple[str, str]],
    cameras: Collection[str],
    max_seconds: float,
    need_requisition: bool,
) -> ClipQuery:
    """Validate `camera`, `start`, `end` (and `requisition`, optional `officer` and `request_nonce`) of a
    segments or clips request."""
    required = ("camera", "start", "end", "requisition") if need_requisition else ("camera", "start", "end")
    values = single_values(pairs, required, optional=("requisition", "officer", "request_nonce"))
    camera = check_camera(values["camera"], cameras)
    start_ts = parse_time("start", values["start"])
    end_ts = parse_time("end", values["end"])
    check_range(start_ts, end_ts, max_seconds)
    requisition = values.get("requisition", "")
    if requisition:
        check_requisition(requisition)
    officer = values.get("officer", "")
    if officer:
        check_officer(officer)
    nonce = values.get("request_nonce", "")
    if nonce:
        check_request_nonce(nonce)
    return ClipQuery(camera, start_ts, end_ts, requisition, officer, nonce)
