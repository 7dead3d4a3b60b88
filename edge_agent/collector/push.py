"""Push delivery, the collector side (DESIGN.md section 4, "Push delivery").

A device the CSU cannot reach (a nomad kit on 4G behind a carrier NAT) still reads its MQTT commands. So
instead of fetching, the collector:

1. starts its upload endpoint (`edge_agent.collector.upload_endpoint`) and registers one upload there: a
   fresh id (in the upload URL), a one-time token, an expiry, a size cap;
2. publishes the signed `upload_clip` command (camera, range, requisition, officer, upload URL, token,
   expiry: signed like an HTTP request, so the device checks it exactly like a `GET /v1/clips`);
3. follows the device's replies on `cmd_result` (accepted or refused, progress, delivered or failed) and
   the bytes the endpoint holds, until the bundle is complete, the device gives up or the order expires;
4. verifies and exports the bundle exactly like a pulled one (`edge_agent.collector.fetch.export_bundle`).

Every outcome leaves a line in the collector's audit log (`via: push`).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import secrets
import shutil
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.collector.console.devices import CommandLink
from edge_agent.collector.download import FetchError
from edge_agent.collector.evidence import BUNDLE_FILE
from edge_agent.collector.fetch import ClipRequest, CollectorKeys, FetchOutcome, audit_failure, export_bundle
from edge_agent.collector.ingest import BrokerAddress
from edge_agent.collector.progress import ProgressBar
from edge_agent.collector.upload_endpoint import UploadEndpoint, UploadEndpointThread
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.signing import RequestSigner, new_nonce
from edge_agent.formats.times import Clock, iso_ms
from edge_agent.formats.upload import UPLOAD_PATH_PREFIX

COMMAND = "upload_clip"
SPOOL_DIR = ".upload"
"""Where, inside the export directory, the bundle arrives before it is verified."""


@dataclass(frozen=True)
class PushSettings:
    """How the collector asks for a push and where the device sends it."""

    broker: BrokerAddress
    listen_host: str
    listen_port: int
    upload_url: str = ""
    """The endpoint's base URL as devices reach it (a public name, a NAT); default `http://host:port`
    (`https://` with `tls`)."""
    tls: ssl.SSLContext | None = None
    """The endpoint serves HTTPS with it (`upload_endpoint.server_tls_context`); None: plain HTTP, for a
    TLS reverse proxy in front or a closed network."""
    topic_root: str = "csu/v1"
    accept_timeout_s: float = 60.0
    """How long the device has to accept or refuse the command (an offline device never answers)."""
    order_ttl_s: float = 6 * 3600.0
    """How long the upload order stays valid: a 4G upload of an hour of footage takes a while."""
    max_bytes: int = 16 << 30

    def base_url(self, port: int) -> str:
        """The upload endpoint's base URL given the port it really listens on."""
        scheme = "https" if self.tls is not None else "http"
        return self.upload_url.rstrip("/") or f"{scheme}://{self.listen_host}:{port}"


def push_clip(
    settings: PushSettings,
    request: ClipRequest,
    keys: CollectorKeys,
    export_dir: Path,
    audit: AuditLog,
    progress: ProgressBar | None = None,
    allow_partial: bool = False,
    clock: Clock = time.time,
) -> FetchOutcome:
    """Have the device upload the clip, then verify and export it; FetchError or ClipRejected on failure.

    The command is signed with a nonce drawn here, which the device's bundle must name (`fetch`)."""
    export_dir.mkdir(parents=True, exist_ok=True)
    request = dataclasses.replace(request, nonce=new_nonce())
    spool = export_dir / SPOOL_DIR
    endpoint = UploadEndpoint(spool, settings.listen_host, settings.listen_port, audit, clock, settings.tls)
    server = UploadEndpointThread(endpoint)
    upload_id = uuid.uuid4().hex
    upload_url = f"{settings.base_url(settings.listen_port)}{UPLOAD_PATH_PREFIX}{upload_id}"
    try:
        server.start()
    except OSError as error:
        failure = FetchError(
            f"upload endpoint: cannot listen on {settings.listen_host}:{settings.listen_port}: {error}",
            reason="listen",
        )
        audit_failure(audit, request, upload_url, failure, via="push")
        raise failure from None
    upload_url = f"{settings.base_url(endpoint.port)}{UPLOAD_PATH_PREFIX}{upload_id}"
    link = CommandLink(
        settings.broker, settings.topic_root, RequestSigner(keys.signing, clock), f"csu-push-{upload_id[:12]}"
    )
    started = time.perf_counter()
    try:
        link.start()
        token = secrets.token_urlsafe(32)
        expires_at = clock() + settings.order_ttl_s
        endpoint.register(upload_id, token, expires_at, settings.max_bytes)
        order = _Order(request, upload_id, upload_url, token, expires_at)
        _await_upload(link, endpoint, order, settings, progress, clock)
        os.replace(endpoint.part_path(upload_id), export_dir / BUNDLE_FILE)
    except FetchError as error:
        audit_failure(audit, request, upload_url, error, via="push")
        raise
    finally:
        link.stop()
        server.stop()
        endpoint.forget(upload_id)
        shutil.rmtree(spool, ignore_errors=True)
    transfer_s = time.perf_counter() - started
    return export_bundle(
        request, keys, export_dir, audit, upload_url, allow_partial, clock, transfer_s, "push"
    )


@dataclass(frozen=True)
class _Order:
    """One upload asked of a device."""

    request: ClipRequest
    upload_id: str
    upload_url: str
    token: str
    expires_at: float

    def fields(self) -> dict[str, str]:
        """The command's fields (signed with it)."""
        request = self.request
        fields = {
            "camera": request.camera,
            "start": iso_ms(request.start_ts),
            "end": iso_ms(request.end_ts),
            "requisition": request.requisition,
            "upload_url": self.upload_url,
            "token": self.token,
            "expires": iso_ms(self.expires_at),
        }
        if request.officer:
            fields["officer"] = request.officer
        return fields


def _await_upload(
    link: CommandLink,
    endpoint: UploadEndpoint,
    order: _Order,
    settings: PushSettings,
    progress: ProgressBar | None,
    clock: Clock,
) -> None:
    """Send the command and wait until the endpoint holds the whole bundle; FetchError otherwise."""
    request = order.request
    device = f"{request.site}/{request.device}"
    if not link.ready.wait(settings.accept_timeout_s):
        broker = settings.broker
        raise FetchError(f"cannot reach the broker at {broker.host}:{broker.port}", reason="broker")
    with link.send(request.site, request.device, COMMAND, order.fields(), request.nonce) as replies:
        try:
            first = replies.get(timeout=settings.accept_timeout_s)
        except queue.Empty:
            raise FetchError(
                f"{device} did not answer {COMMAND} within {settings.accept_timeout_s:g} s (offline?)",
                reason="no-answer",
            ) from None
        accepted = _result(device, first)
        if progress is not None:
            progress.start(int(accepted.get("size") or 0), endpoint.held(order.upload_id))
        while not endpoint.is_complete(order.upload_id):
            if clock() >= order.expires_at:
                held = endpoint.held(order.upload_id)
                raise FetchError(
                    f"{device}: the upload order expired with {held} bytes held", reason="expired"
                )
            try:
                result = _result(device, replies.get_nowait())
            except queue.Empty:
                result = {}
            if result.get("phase") == "delivered" and not endpoint.is_complete(order.upload_id):
                raise FetchError(f"{device} says delivered, the endpoint holds less", reason="incomplete")
            endpoint.wait_changed(0.5)
            if progress is not None:
                progress.advance(endpoint.held(order.upload_id) - progress.done)
        if progress is not None:
            progress.advance(endpoint.held(order.upload_id) - progress.done)
            progress.finish()


def _result(device: str, reply: dict[str, Any]) -> dict[str, Any]:
    """The device's result in a `cmd_result` reply; FetchError when it refused or gave up (with the
    device's reason code when its result names one)."""
    result: dict[str, Any] = reply.get("result") or {}
    if reply.get("ok") and result.get("ok"):
        return result
    if result.get("error"):
        error, message = result["error"], result.get("message", "")
        raise FetchError(f"{device}: {COMMAND} {error}: {message}", reason=str(error))
    raise FetchError(f"{device} refused {COMMAND}: {reply.get('error', 'no reason given')}", reason="refused")
