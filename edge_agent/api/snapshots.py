"""The MQTT `snapshot` command: a masked frame leaves the device only on a signed, audited request.

A snapshot shows what a camera sees now, so it is asked like footage (DESIGN.md section 4): the command
carries the collector's signature over its fields (`formats.signing.signed_command`: freshness, replay,
key), its fields are checked one by one (`camera` of this device, optional `officer` and `request_id`),
and every command, accepted, refused or without a frame to give, leaves a line in the device's audit log
naming the collector key, the camera and the officer. The frame itself is taken by the device
(`edge_agent.device.agent`: this layer cannot see the cameras), handed in as `take`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.api.params import (
    ParamError,
    check_camera,
    check_command_fields,
    check_officer,
    check_request_id,
)
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.signing import RequestVerifier, SignatureError, verify_command

COMMAND = "snapshot"
_OPTIONAL = ("officer", "request_id")


class NoFrame(Exception):
    """The camera has no frame to give (stopped, starting, masks missing); the message says which."""


@dataclass(frozen=True)
class SnapshotOrder:
    """A checked `snapshot` command."""

    camera: str
    officer: str
    request_id: str
    client: str

    def audit_fields(self) -> dict[str, Any]:
        """What the device's audit line records of it."""
        fields: dict[str, Any] = {"client": self.client, "camera": self.camera}
        if self.officer:
            fields["officer"] = self.officer
        if self.request_id:
            fields["request_id"] = self.request_id
        return fields


FrameTaker = Callable[[str], Mapping[str, Any]]
"""Takes a camera's latest masked frame: {camera, captured_at, width, height, jpeg_base64}; NoFrame."""


class SnapshotService:
    """Checks and audits `snapshot` commands; the frame comes from `take`."""

    def __init__(
        self,
        audit: AuditLog,
        verifier: RequestVerifier,
        cameras: Callable[[], Collection[str]],
        take: FrameTaker,
    ) -> None:
        self.audit = audit
        self.verifier = verifier
        self.cameras = cameras
        self.take = take

    def handle_command(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Answer a signed `snapshot`: the frame, or `{"ok": false, "error", "message"}` (audited)."""
        actor = "-"
        try:
            actor, fields = verify_command(COMMAND, payload, self.verifier)
            order = check_order(fields, actor, self.cameras())
        except (SignatureError, ParamError) as error:
            self.audit.append_if_room(
                action=COMMAND, outcome="refused", reason=error.reason, detail=str(error), client=actor
            )
            return {"ok": False, "error": error.reason, "message": str(error)}
        try:
            frame = dict(self.take(order.camera))
        except NoFrame as error:
            self.audit.append(
                action=COMMAND, outcome="failed", reason="no-frame", detail=str(error), **order.audit_fields()
            )
            return {"ok": False, "error": "no-frame", "message": str(error)}
        jpeg = base64.b64decode(frame["jpeg_base64"])
        self.audit.append(
            action=COMMAND,
            outcome="accepted",
            captured_at=frame["captured_at"],
            width=frame["width"],
            height=frame["height"],
            jpeg_sha256=hashlib.sha256(jpeg).hexdigest(),
            **order.audit_fields(),
        )
        return frame


def check_order(fields: Mapping[str, Any], client: str, cameras: Collection[str]) -> SnapshotOrder:
    """The command's fields, checked; ParamError naming the first bad one."""
    check_command_fields(fields, ("camera",), _OPTIONAL)
    camera = check_camera(fields["camera"], cameras)
    officer = check_officer(fields["officer"]) if fields.get("officer") else ""
    request_id = check_request_id(fields["request_id"]) if fields.get("request_id") else ""
    return SnapshotOrder(camera, officer, request_id, client)
