"""Legal holds: exempt a camera's time range from retention for a judicial procedure.

One service behind both ways a hold arrives: the clip API (`POST /v1/holds`, `DELETE /v1/holds/{id}`)
and the MQTT commands `hold` / `release`. An MQTT command must carry the same collector signature as an
HTTP request (`signed_command` builds one; `handle_command` checks it), because releasing a hold lets
evidence be destroyed. Accepted changes are written to the audit log here; refusals by the caller.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from edge_agent.api.params import (
    ParamError,
    check_camera,
    check_officer,
    check_range,
    check_requisition,
    parse_time,
)
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.signing import RequestVerifier, SignatureError, signed_command, verify_command
from edge_agent.formats.times import Clock

if TYPE_CHECKING:
    from edge_agent.api.clip_server import SegmentSource

MAX_HOLD_SECONDS = 31 * 86400.0
DEFAULT_HOLD_DAYS = 365.0
MAX_HOLD_ID = 2**63 - 1  # the index's INTEGER: a larger id cannot name a hold
_HOLD_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HOLD_FIELDS = ("camera", "start", "end", "requisition", "expires", "officer")


class HoldService:
    """Validates hold requests, applies them to the ring buffer and audits them."""

    def __init__(
        self,
        ring: SegmentSource,
        audit: AuditLog,
        cameras: Collection[str],
        clock: Clock = time.time,
    ) -> None:
        self.ring = ring
        self.audit = audit
        self.cameras = cameras
        self.clock = clock

    def hold(self, payload: Any, actor: str) -> dict[str, Any]:
        """Add a hold from {camera, start, end, requisition, expires?, officer?}; ParamError names a bad
        field."""
        if not isinstance(payload, Mapping):
            raise ParamError("malformed-body", "body: a JSON object with camera, start, end, requisition")
        unknown = sorted(set(payload) - set(_HOLD_FIELDS))
        if unknown:
            raise ParamError("unknown-parameter", f"unknown field(s): {', '.join(unknown)}")
        missing = [f for f in ("camera", "start", "end", "requisition") if not payload.get(f)]
        if missing:
            raise ParamError("missing-parameter", f"missing field(s): {', '.join(missing)}")
        for name in _HOLD_FIELDS:
            _check_scalar(name, payload.get(name))
        camera = check_camera(str(payload["camera"]), self.cameras)
        start_ts = parse_time("start", str(payload["start"]))
        end_ts = parse_time("end", str(payload["end"]))
        check_range(start_ts, end_ts, MAX_HOLD_SECONDS)
        requisition = check_requisition(str(payload["requisition"]))
        officer = check_officer(str(payload["officer"])) if payload.get("officer") else ""
        now = self.clock()
        if payload.get("expires"):
            expires_at = parse_time("expires", str(payload["expires"]))
            if expires_at <= now:
                raise ParamError("expired", "expires: already in the past")
        else:
            expires_at = now + DEFAULT_HOLD_DAYS * 86400
        try:
            hold = self.ring.add_hold(camera, start_ts, end_ts, requisition, expires_at)
        except ValueError as error:
            raise ParamError("bad-hold", str(error)) from None
        record = asdict(hold)
        self.audit.append(
            action="hold",
            outcome="accepted",
            client=actor,
            camera=camera,
            start_ts=start_ts,
            end_ts=end_ts,
            requisition=requisition,
            expires_at=expires_at,
            hold_id=str(hold.id),
            **({"officer": officer} if officer else {}),
        )
        return record

    def release(self, hold_id: str, actor: str) -> dict[str, Any]:
        """Release a hold by id; ParamError (404) when there is no such hold."""
        if not _HOLD_ID_RE.match(hold_id):
            raise ParamError("bad-hold-id", f"hold id: {hold_id[:80]!r} is not a hold id")
        if hold_id.isdigit() and int(hold_id) > MAX_HOLD_ID:
            raise ParamError(
                "bad-hold-id", f"hold id: {hold_id} is beyond the largest hold id ({MAX_HOLD_ID})"
            )
        if not hold_id.isdigit() or not self.ring.release_hold(int(hold_id)):
            raise ParamError("unknown-hold", f"hold id: no hold {hold_id!r}", 404)
        self.audit.append(action="release", outcome="accepted", client=actor, hold_id=hold_id)
        return {"id": hold_id, "released": True}

    def list(self) -> list[dict[str, Any]]:
        """Every active hold."""
        return [asdict(h) for h in self.ring.holds()]

    def handle_command(
        self, name: str, payload: Mapping[str, Any], verifier: RequestVerifier
    ) -> dict[str, Any]:
        """Apply a signed MQTT `hold` / `release` command; the reply for `.../cmd_result`.

        Never raises for a bad command: the refusal is audited and returned as `{"ok": false, ...}`.
        """
        actor = "-"
        try:
            actor, fields = verify_command(name, payload, verifier)
            if name == "hold":
                return {"ok": True, "hold": self.hold(fields, actor)}
            if name == "release":
                if set(fields) != {"id"}:
                    raise ParamError("malformed-body", "release takes exactly one field: id")
                _check_scalar("id", fields["id"])
                return {"ok": True, **self.release(str(fields["id"]), actor)}
            raise ParamError("unknown-command", f"no command {name!r} here (hold, release)")
        except (SignatureError, ParamError) as error:
            self.audit.append_if_room(  # a refusal: within the audit log's quota, counted past it
                action=f"mqtt-{name}",
                outcome="refused",
                reason=error.reason,
                detail=str(error),
                client=actor,
            )
            return {"ok": False, "error": error.reason, "message": str(error)}


def _check_scalar(name: str, value: Any) -> None:
    """A hold field is a string or a number (absent: None); anything else is refused by name."""
    if value is None or isinstance(value, str):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError("bad-field-type", f"{name}: a string or a number, not {type(value).__name__}")


__all__ = ["HoldService", "signed_command"]
