"""Push delivery, the device side: upload a clip bundle to the collector that asked (DESIGN.md section 4).

A nomad kit behind a carrier NAT can connect out but nobody can connect in, so the collector publishes a
signed `upload_clip` command instead of fetching. The command is checked as strictly as a
`GET /v1/clips`: collector signature, freshness and replay (the device's one verifier, its nonces
journalled), then the clip parameters (camera of this device, range within `max_clip_seconds`, a
requisition), then the upload URL, which must lie under one of `clip_server.collector_urls`: a URL taken
from a command alone is never enough, so that a leaked collector key cannot send footage elsewhere.

The bundle is the one the clip server would stream (`edge_agent.api.delivery.plan_clip`), sent with the
protocol of `edge_agent.formats.upload` in 1 MiB chunks, paced at `clip_server.upload_kbps`. After a cut
the device asks the collector how many bytes it holds and goes on from there: acknowledged bytes are never
sent twice. Progress (every tenth of the bundle) and the outcome go to `cmd_result` with the command's
`request_id`; every command, accepted or refused, and every outcome is written to the audit log. The
upload runs in a thread of its own: the command is answered (accepted or refused) at once.

Nothing here depends on the clip server: a kit with `clip_server.enabled: false` still delivers by push.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import certifi
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.api.delivery import FootageIndex, plan_clip
from edge_agent.api.params import (
    ClipQuery,
    ParamError,
    check_command_fields,
    check_request_id,
    parse_clip_query,
    parse_time,
)
from edge_agent.api.ratelimit import TokenBucket
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.bundle import BundlePlan, read_part
from edge_agent.formats.config import AgentConfig, collector_url_problem
from edge_agent.formats.signing import RequestVerifier, SignatureError, verify_command
from edge_agent.formats.times import Clock
from edge_agent.formats.upload import TOKEN_RE, UploadAck, content_range

log = logging.getLogger(__name__)

COMMAND = "upload_clip"
CHUNK_BYTES = 1 << 20
"""Bytes per PUT: each is acknowledged, so at most this much is in doubt when a link drops."""
PIECE_BYTES = 16 * 1024
"""Pacing granularity within a chunk (the rate cap holds within a chunk, not only between chunks)."""
MAX_EXPIRY_S = 2 * 86400.0
"""An upload order valid for longer than this is refused (a command must not outlive its purpose)."""
PROGRESS_STEPS = 10
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0
"""Time limit of connecting, and of each send within a PUT (a link that stalls mid-chunk is noticed)."""
READ_TIMEOUT_S = 60.0
"""Time limit of the collector's answer to a PUT."""
_PATH_SAFE = "!#$%&'()*+,/:;=?@[]~"
"""What the upload URL's path keeps as it is (`%` too: escapes are not escaped again)."""

_CLIP_FIELDS = ("camera", "start", "end", "requisition", "officer")
_REQUIRED = ("camera", "start", "end", "requisition", "upload_url", "token", "expires")
_OPTIONAL = ("officer", "request_id")
# Replies that a new attempt cannot change: the upload is given up.
_FINAL_STATUSES = {400: "bad-request", 401: "token-refused", 403: "forbidden", 404: "unknown-upload"}
_FINAL_STATUSES |= {410: "upload-closed", 413: "too-large"}

ResultPublisher = Callable[[Mapping[str, Any], str | None], None]
"""Publishes one `upload_clip` result (progress or outcome) on `cmd_result` with the command's request id."""


@dataclass(frozen=True)
class UploadOrder:
    """A checked `upload_clip` command."""

    query: ClipQuery
    upload_url: str
    token: str
    expires_at: float
    request_id: str | None
    client: str

    def audit_fields(self) -> dict[str, Any]:
        """What the device's audit line records of it (never the token)."""
        fields: dict[str, Any] = {
            "camera": self.query.camera,
            "start_ts": self.query.start_ts,
            "end_ts": self.query.end_ts,
            "requisition": self.query.requisition,
            "upload_url": self.upload_url,
        }
        if self.query.officer:
            fields["officer"] = self.query.officer
        if self.request_id:
            fields["request_id"] = self.request_id
        return fields


@dataclass
class UploadCounters:
    """What one upload cost: bytes put on the wire, PUTs, cut links, and bytes sent again although the
    collector had acknowledged them (the resume rule makes that 0; it is counted to show it)."""

    sent: int = 0
    puts: int = 0
    retries: int = 0
    resent: int = 0


class _Failed(Exception):
    """An upload that will not succeed by retrying; `reason` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Stopped(Exception):
    """The agent is stopping: the upload ends where it is (the collector keeps what it holds)."""


class _Retry(Exception):
    """An answer another attempt may change: a 5xx or 429, a proxy's page, a reply that is not an ack."""


# What ends one attempt and starts another: a cut or refused connection, a timeout, a TLS failure (a
# certificate the trusted CAs do not vouch for is retried until the order expires), a garbled HTTP answer.
_RETRYABLE = (OSError, http.client.HTTPException, _Retry)


def upload_url_allowed(url: str, bases: list[str]) -> bool:
    """Whether `url` lies under one of the collector base URLs: same scheme, host and port, and a path
    inside the base's path (segment-wise: `https://csu/up` does not cover `https://csu/upload-evil`)."""
    parts = urlsplit(url)
    segments = unquote(parts.path).split("/")
    if any(s in (".", "..") for s in segments) or "\\" in parts.path:
        return False
    for base in bases:
        allowed = urlsplit(base)
        if (parts.scheme, parts.hostname, _port(parts.scheme, parts.port)) != (
            allowed.scheme,
            allowed.hostname,
            _port(allowed.scheme, allowed.port),
        ):
            continue
        prefix = allowed.path.rstrip("/")
        if parts.path == prefix or parts.path.startswith(prefix + "/"):
            return True
    return False


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


@dataclass
class _Upload:
    """One running upload."""

    order: UploadOrder
    plan: BundlePlan
    counters: UploadCounters = field(default_factory=UploadCounters)
    reported_step: int = 0
    acknowledged: int = 0  # the highest count the collector acknowledged


class Uploader:
    """Obeys signed `upload_clip` commands: one upload at a time, each in its own thread."""

    def __init__(
        self,
        config: AgentConfig,
        ring: FootageIndex,
        audit: AuditLog,
        device_key: Ed25519PrivateKey,
        verifier: RequestVerifier,
        publish: ResultPublisher,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.settings = config.clip_server
        self.ring = ring
        self.audit = audit
        self.device_key = device_key
        self.verifier = verifier
        self.publish = publish
        self.clock = clock
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self._stopping = threading.Event()
        self.last_counters: UploadCounters | None = None

    @property
    def cameras(self) -> list[str]:
        """Camera ids this device records."""
        return [c.id for c in self.config.cameras]

    # -- the command ------------------------------------------------------------------------------

    def handle_command(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Check a signed `upload_clip` and start the upload; the reply for `.../cmd_result`.

        Never raises for a bad command: the refusal is audited and returned as `{"ok": false, ...}`.
        """
        actor = "-"
        try:
            actor, fields = verify_command(COMMAND, payload, self.verifier)
            order = self.check(fields, actor)
            # The bundle answers this command: bound to its nonce, as a pulled one to its GET's.
            query = dataclasses.replace(order.query, nonce=str(payload["nonce"]))
            plan = plan_clip(self.config, self.ring, self.device_key, query)
            self._start(_Upload(order, plan))
        except (SignatureError, ParamError) as error:
            self.audit.append_if_room(  # a refusal: within the audit log's quota, counted past it
                action=f"mqtt-{COMMAND}",
                outcome="refused",
                reason=error.reason,
                detail=str(error),
                client=actor,
            )
            log.info("upload_clip refused: %s", error)
            return {"ok": False, "error": error.reason, "message": str(error)}
        return {
            "ok": True,
            "phase": "accepted",
            "bundle_id": plan.bundle_id,
            "size": plan.size,
            "segments": len(plan.manifest["segments"]),
            "gaps": len(plan.manifest["gaps"]),
        }

    def check(self, fields: Mapping[str, Any], client: str) -> UploadOrder:
        """The command's fields, checked; ParamError naming the first bad one."""
        check_command_fields(fields, _REQUIRED, _OPTIONAL)
        pairs = [(name, fields[name]) for name in _CLIP_FIELDS if name in fields]
        query = parse_clip_query(pairs, self.cameras, self.settings.max_clip_seconds, True)
        upload_url = self._check_upload_url(fields["upload_url"])
        token = fields["token"]
        if not TOKEN_RE.match(token):
            raise ParamError("bad-token", "token: 22 to 128 characters of [A-Za-z0-9_-]")
        expires_at = parse_time("expires", fields["expires"])
        now = self.clock()
        if expires_at <= now:
            raise ParamError("expired", "expires: already in the past")
        if expires_at > now + MAX_EXPIRY_S:
            raise ParamError("bad-expiry", f"expires: more than {MAX_EXPIRY_S / 3600:g} h ahead")
        request_id = fields.get("request_id")
        if request_id is not None:
            check_request_id(request_id)
        return UploadOrder(query, upload_url, token, expires_at, request_id, client)

    def _check_upload_url(self, url: str) -> str:
        bases = self.settings.collector_urls
        if not bases:
            raise ParamError(
                "push-disabled",
                "upload_url: clip_server.collector_urls is empty, this device pushes nowhere",
                403,
            )
        problem = collector_url_problem(url)
        if problem:
            raise ParamError("bad-upload-url", f"upload_url: {problem}")
        if not upload_url_allowed(url, bases):
            raise ParamError(
                "upload-url-not-allowed",
                f"upload_url: {url[:200]!r} is not under a collector URL of clip_server.collector_urls",
                403,
            )
        return url

    def _start(self, upload: _Upload) -> None:
        with self._lock:
            if self._running is not None and self._running.is_alive():
                raise ParamError("busy", "another upload is running; ask again when it has ended", 503)
            if self._stopping.is_set():
                raise ParamError("stopping", "the agent is stopping", 503)
            # Written before the upload starts, so that its outcome always comes after it in the log.
            plan = upload.plan
            self.audit.append(
                action=COMMAND,
                outcome="accepted",
                client=upload.order.client,
                bundle_id=plan.bundle_id,
                size=plan.size,
                segments=len(plan.manifest["segments"]),
                gaps=len(plan.manifest["gaps"]),
                **upload.order.audit_fields(),
            )
            thread = threading.Thread(target=self._run, args=(upload,), name="clip-upload", daemon=True)
            self._running = thread
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """End a running upload (the collector keeps what it holds; the CSU may ask again)."""
        self._stopping.set()
        with self._lock:
            thread = self._running
        if thread is not None:
            thread.join(timeout_s)

    def wait(self, timeout_s: float) -> bool:
        """Block until no upload runs; False on timeout (tests and tools)."""
        with self._lock:
            thread = self._running
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    # -- the upload -------------------------------------------------------------------------------

    def _run(self, upload: _Upload) -> None:
        started = time.monotonic()
        outcome: dict[str, Any]
        try:
            self._deliver(upload)
        except _Failed as failure:
            outcome = {"ok": False, "phase": "failed", "error": failure.reason, "message": str(failure)}
        except _Stopped:
            outcome = {"ok": False, "phase": "failed", "error": "stopped", "message": "the agent stopped"}
        except Exception as failure:  # a bug must still end the upload with an answer and an audit line
            log.exception("upload of %s failed", upload.plan.bundle_id)
            outcome = {"ok": False, "phase": "failed", "error": "internal", "message": repr(failure)}
        else:
            outcome = {"ok": True, "phase": "delivered", "held": upload.plan.size}
        counters = upload.counters
        self.last_counters = counters
        figures = {
            "bundle_id": upload.plan.bundle_id,
            "size": upload.plan.size,
            "sent": counters.sent,
            "puts": counters.puts,
            "retries": counters.retries,
            "resent": counters.resent,
            "seconds": round(time.monotonic() - started, 3),
        }
        self.audit.append(
            action=COMMAND,
            outcome=outcome["phase"],
            client=upload.order.client,
            **({"reason": outcome["error"], "detail": outcome["message"]} if not outcome["ok"] else {}),
            **figures,
            **upload.order.audit_fields(),
        )
        self._publish(upload, {**outcome, **figures})

    def _publish(self, upload: _Upload, result: Mapping[str, Any]) -> None:
        try:
            self.publish(result, upload.order.request_id)
        except Exception:  # the link is the agent's: an upload's outcome is in the audit log anyway
            log.exception("could not publish the upload result")

    def _deliver(self, upload: _Upload) -> None:
        """Send every byte the collector does not hold yet, resuming after each cut until it expires."""
        order, size = upload.order, upload.plan.size
        kbps = self.settings.upload_kbps
        bucket = TokenBucket(kbps * 1000 / 8, PIECE_BYTES) if kbps else None
        delay = RETRY_MIN_S
        held: int | None = None
        last_error = ""  # said when the order expires: a certificate the device refuses, a dead host
        tls = self._tls_context() if urlsplit(order.upload_url).scheme == "https" else None
        with _Collector(order.upload_url, order.token, tls) as collector:
            while True:
                if self._stopping.is_set():
                    raise _Stopped()
                if self.clock() >= order.expires_at:
                    raise _Failed(
                        "expired",
                        f"the upload order expired with {held or 0} of {size} bytes held{last_error}",
                    )
                try:
                    if held is None:
                        held = self._put(collector, upload, 0, 0, None).held
                    if held >= size:
                        return
                    end = min(held + CHUNK_BYTES, size)
                    held = self._put(collector, upload, held, end, bucket).held
                    delay = RETRY_MIN_S
                    self._progress(upload, held)
                except _RETRYABLE as error:
                    upload.counters.retries += 1
                    last_error = f"; last attempt: {str(error)[:200]}"
                    log.warning(
                        "upload of %s cut at %s bytes (%s); resuming", upload.plan.bundle_id, held, error
                    )
                    held = None  # ask the collector: it may hold more than it could acknowledge
                    if self._stopping.wait(delay):
                        raise _Stopped() from None
                    delay = min(RETRY_MAX_S, delay * 2)

    def _tls_context(self) -> ssl.SSLContext:
        """The context checking the collector's certificate; _Failed when the configured CA file cannot
        be loaded (no retry mends a file: `edge-agent check-config` says what is wrong with it)."""
        ca_file = self.settings.collector_ca_file
        try:
            return collector_tls_context(ca_file)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise _Failed(
                "collector-ca", f"clip_server.collector_ca_file {ca_file}: cannot be loaded ({error})"
            ) from None

    def _put(
        self, collector: _Collector, upload: _Upload, first: int, end: int, bucket: TokenBucket | None
    ) -> UploadAck:
        """PUT bytes [first, end) (none: ask the count held); the acknowledgement. A 409 also carries it."""
        size = upload.plan.size
        data = _read(upload.plan, first, end)
        upload.counters.puts += 1
        upload.counters.resent += max(0, min(end, upload.acknowledged) - first)
        status, reply = collector.put(
            content_range(first, end, size),
            _paced(data, bucket, upload.counters, self._stopping),
            len(data),
        )
        if status in (200, 409):
            try:
                ack = UploadAck.parse(reply)
            except ValueError as error:
                raise _Retry(str(error)) from None
            if ack.size != size:
                raise _Failed(
                    "size-mismatch", f"the collector expects {ack.size} bytes, the bundle has {size}"
                )
            upload.acknowledged = max(upload.acknowledged, ack.held)
            return ack
        reason = _FINAL_STATUSES.get(status)
        if reason is not None:
            text = reply.decode("utf-8", "replace")[:200]
            raise _Failed(reason, f"the collector refused the upload: HTTP {status} {text}")
        # 5xx, 429, a proxy's answer, a redirect (never followed): worth another attempt.
        raise _Retry(f"HTTP {status} from the collector")

    def _progress(self, upload: _Upload, held: int) -> None:
        """One result per tenth of the bundle: enough to follow on a metered link, not more."""
        size = upload.plan.size
        step = held * PROGRESS_STEPS // size if size else PROGRESS_STEPS
        if step <= upload.reported_step or held >= size:
            return
        upload.reported_step = step
        self._publish(
            upload,
            {"ok": True, "phase": "progress", "held": held, "size": size, "bundle_id": upload.plan.bundle_id},
        )


def _read(plan: BundlePlan, first: int, end: int) -> bytes:
    """Bytes [first, end) of the bundle; _Failed when a segment vanished or changed meanwhile."""
    try:
        return b"".join(read_part(part, offset, length) for part, offset, length in plan.chunks(first, end))
    except OSError as error:
        raise _Failed("footage-changed", f"a segment of the bundle changed on the device: {error}") from None


class _Collector:
    """The HTTP(S) connection of one upload, kept open from one PUT to the next and opened again after a
    cut. Every PUT carries the bearer token and asks for bytes as stored; no proxy variable or ~/.netrc
    is read (http.client reads none): the device talks to the configured collector, directly."""

    def __init__(self, url: str, token: str, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        self._target = quote(parts.path or "/", safe=_PATH_SAFE)
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept-Encoding": "identity",
            "Content-Type": "application/x-tar",
        }
        host, port = parts.hostname or "", parts.port
        self._connection = (
            http.client.HTTPSConnection(
                host,
                port,
                timeout=CONNECT_TIMEOUT_S,
                context=tls if tls is not None else collector_tls_context(),
            )
            if parts.scheme == "https"
            else http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT_S)
        )

    def __enter__(self) -> _Collector:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._connection.close()

    def put(self, content_range: str, body: Iterator[bytes], length: int) -> tuple[int, bytes]:
        """One PUT of `length` bytes: the status and the whole reply. Raises what ended the attempt
        (OSError, http.client.HTTPException, _Stopped) with the connection closed."""
        connection = self._connection
        headers = {**self._headers, "Content-Range": content_range, "Content-Length": str(length)}
        try:
            if connection.sock is not None and _closed_by_peer(connection.sock):
                connection.close()  # an idle connection the collector has ended: connect again, unharmed
            _set_timeout(connection, CONNECT_TIMEOUT_S)
            if connection.sock is None:
                connection.connect()  # not within the suppress below: a failed handshake must raise
            # A refusal (401, 413) may come before the body is all sent: its answer is read below.
            with suppress(BrokenPipeError, ConnectionResetError):
                connection.request("PUT", self._target, body, headers)
            _set_timeout(connection, READ_TIMEOUT_S)
            response = connection.getresponse()
            return response.status, response.read()
        except BaseException:
            connection.close()  # a connection left mid-exchange cannot carry the next PUT
            raise


def collector_tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Checks the collector's certificate against `ca_file` (`clip_server.collector_ca_file`: the CSU's
    own PKI), else against certifi's CA bundle as `requests` did (never the system's store nor a bundle
    named in the environment); the host name against subjectAltName only, TLS 1.2 at least, no session
    tickets. OSError or ValueError when `ca_file` cannot be loaded."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.hostname_checks_common_name = False
    context.options |= ssl.OP_NO_TICKET
    context.set_alpn_protocols(["http/1.1"])
    return context


def _set_timeout(connection: http.client.HTTPConnection, seconds: float) -> None:
    """The time limit of the next connect, and of the open socket if there is one."""
    connection.timeout = seconds
    if connection.sock is not None:
        connection.sock.settimeout(seconds)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection has something to read: its end, or bytes nobody asked for;
    either way it cannot carry the next PUT."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _paced(
    data: bytes, bucket: TokenBucket | None, counters: UploadCounters, stopping: threading.Event
) -> Iterator[bytes]:
    """A request body in pieces, each paid for in the rate bucket first; counts what it hands over."""
    view = memoryview(data)
    for offset in range(0, len(view), PIECE_BYTES):
        piece = view[offset : offset + PIECE_BYTES]
        if bucket is not None:
            delay = bucket.delay_for(len(piece))
            if delay > 0 and stopping.wait(delay):
                raise _Stopped()
        counters.sent += len(piece)
        yield bytes(piece)
