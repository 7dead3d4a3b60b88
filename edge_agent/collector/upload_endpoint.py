"""The collector's upload endpoint: where devices the CSU cannot reach push the bundles it asked for.

The protocol is `edge_agent.formats.upload` (HTTP PUT with Content-Range, each chunk acknowledged with the
count now held). An upload is registered before its command goes out (`register`): its id (the last part
of the upload URL), the SHA-256 of its one-time token (the token itself is never stored), an expiry and a
size cap. The spool folder keeps each registration (`<id>.json`) and the bytes received (`<id>.part`),
appended as they arrive and fsynced before they are acknowledged: an endpoint restarted after a crash
answers with what it really holds, and the device goes on from there.

Nothing here trusts the bytes: the bundle is verified like a pulled one once it is complete
(`edge_agent.collector.fetch.export_bundle`). The token does travel in the clear on plain HTTP, though,
and the device must be able to tell the CSU's endpoint from another: given a certificate and its key
(`server_tls_context`), the endpoint serves HTTPS itself, without a reverse proxy in front.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import ssl
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from edge_agent.formats.audit import AuditLog
from edge_agent.formats.times import Clock
from edge_agent.formats.upload import (
    UPLOAD_ID_RE,
    UPLOAD_PATH_PREFIX,
    ContentRange,
    UploadAck,
    parse_content_range,
)

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 16 << 20
"""Largest body of one PUT (devices send 1 MiB)."""
_PIECE = 64 * 1024


@dataclass
class Registration:
    """One expected upload."""

    upload_id: str
    token_sha256: str
    expires_at: float
    max_bytes: int
    size: int | None = None  # the total the device announced in its first PUT

    def token_matches(self, token: str) -> bool:
        """Whether `token` is this upload's (compared in constant time)."""
        return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), self.token_sha256)


class TlsFileError(ValueError):
    """A certificate or key the endpoint cannot serve HTTPS with; `file` says which (`cert` or `key`)."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(message)
        self.file = file


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The endpoint's TLS context: `cert` (PEM, the certificate then its intermediates) and its
    unencrypted PEM `key`; TLS 1.2 at least, as the device asks. Each file is checked on its own first, so
    that the error says which one is wrong (OpenSSL's own says neither): TlsFileError."""
    certificate = _served_certificate(cert, time.time())
    private_key = _private_key(key)
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if private_key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise TlsFileError("key", f"{key}: not the key of the certificate in {cert}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise TlsFileError("cert", f"{cert}: OpenSSL refuses it with {key}: {error}") from None
    return context


def _served_certificate(path: Path, now: float) -> x509.Certificate:
    """The first certificate of a PEM file, valid at `now` (an expired one: every device refuses it)."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise TlsFileError("cert", f"{path}: cannot read ({error.strerror})") from None
    except ValueError:
        raise TlsFileError("cert", f"{path}: not a PEM certificate") from None
    certificate = certificates[0]
    valid_from, valid_to = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if not valid_from.timestamp() <= now <= valid_to.timestamp():
        raise TlsFileError(
            "cert",
            f"{path}: valid from {valid_from:%Y-%m-%d %H:%M} to {valid_to:%Y-%m-%d %H:%M} UTC, not now",
        )
    return certificate


def _private_key(path: Path) -> PrivateKeyTypes:
    """An unencrypted PEM private key (the endpoint starts unattended: no passphrase to ask for)."""
    try:
        return load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise TlsFileError("key", f"{path}: cannot read ({error.strerror})") from None
    except TypeError:
        raise TlsFileError(
            "key", f"{path}: encrypted with a passphrase; the endpoint needs it without"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError("key", f"{path}: not a PEM private key") from None


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class UploadEndpoint:
    """An aiohttp server receiving pushed bundles into a spool folder, over HTTPS when given a TLS context
    (`server_tls_context`)."""

    def __init__(
        self,
        spool: Path,
        bind: str = "127.0.0.1",
        port: int = 0,
        audit: AuditLog | None = None,
        clock: Clock = time.time,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.bind = bind
        self.port = port
        self.tls = tls
        self.audit = audit
        self.clock = clock
        self._uploads = {r.upload_id: r for r in self._load()}
        self._locks: dict[str, asyncio.Lock] = {}
        self._changed = threading.Condition()
        self._runner: web.AppRunner | None = None

    # -- registrations (any thread) ----------------------------------------------------------------

    def register(self, upload_id: str, token: str, expires_at: float, max_bytes: int) -> None:
        """Expect an upload; ValueError for an id that is not 32 hex digits or is already known."""
        if not UPLOAD_ID_RE.match(upload_id):
            raise ValueError(f"upload id {upload_id!r}: 32 lowercase hex digits")
        with self._changed:
            if upload_id in self._uploads:
                raise ValueError(f"upload id {upload_id}: already registered")
            token_hash = hashlib.sha256(token.encode()).hexdigest()
            registration = Registration(upload_id, token_hash, expires_at, max_bytes)
            self._save(registration)
            self.part_path(upload_id).touch()
            self._uploads[upload_id] = registration

    def part_path(self, upload_id: str) -> Path:
        """Where the bytes of an upload are received."""
        return self.spool / f"{upload_id}.part"

    def held(self, upload_id: str) -> int:
        """Bytes received and kept so far (0 for an unknown upload)."""
        try:
            return self.part_path(upload_id).stat().st_size
        except FileNotFoundError:
            return 0

    def is_complete(self, upload_id: str) -> bool:
        """Whether every announced byte is held."""
        registration = self._uploads.get(upload_id)
        return bool(
            registration and registration.size is not None and self.held(upload_id) == registration.size
        )

    def wait_changed(self, timeout_s: float) -> None:
        """Block until some upload received bytes, or `timeout_s` passed."""
        with self._changed:
            self._changed.wait(timeout_s)

    def forget(self, upload_id: str) -> None:
        """Drop a registration and its bytes (after the bundle was moved out, or given up)."""
        with self._changed:
            self._uploads.pop(upload_id, None)
        self._locks.pop(upload_id, None)  # else one lock per upload ever made stays for the process's life
        self.part_path(upload_id).unlink(missing_ok=True)
        self._json_path(upload_id).unlink(missing_ok=True)

    def _json_path(self, upload_id: str) -> Path:
        return self.spool / f"{upload_id}.json"

    def _save(self, registration: Registration) -> None:
        path = self._json_path(registration.upload_id)
        fresh = path.with_suffix(".tmp")
        fresh.write_text(json.dumps(asdict(registration)))
        os.replace(fresh, path)

    def _load(self) -> list[Registration]:
        found = []
        for path in sorted(self.spool.glob("*.json")):
            try:
                found.append(Registration(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as error:
                log.warning("upload spool: %s is unreadable (%s); ignored", path.name, error)
        return found

    # -- the server --------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application: one route."""
        app = web.Application(client_max_size=MAX_CHUNK_BYTES)
        app.router.add_put(UPLOAD_PATH_PREFIX + "{upload_id}", self._put)
        return app

    async def start(self) -> None:
        """Listen (port 0 picks a free one, see `port`)."""
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port, ssl_context=self.tls)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.port
        scheme = "https" if self.tls is not None else "http"
        log.info("upload endpoint listening on %s://%s:%s", scheme, self.bind, self.port)

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _put(self, request: web.Request) -> web.Response:
        upload_id = request.match_info["upload_id"]
        try:
            registration = self._authorize(request, upload_id)
            announced = _content_range(request)
            lock = self._locks.setdefault(upload_id, asyncio.Lock())
            async with lock:
                ack, in_order = await self._receive(request, registration, announced)
        except _Refusal as refusal:
            if self.audit is not None:  # a refusal: within the audit log's quota, counted past it
                self.audit.append_if_room(
                    action="upload",
                    outcome="refused",
                    status=refusal.status,
                    reason=refusal.reason,
                    detail=str(refusal),
                    upload_id=upload_id[:64],
                    remote=request.remote or "-",
                )
            log.info("upload %s refused: %s", upload_id[:64], refusal)
            return web.json_response(
                {"error": refusal.reason, "message": str(refusal)}, status=refusal.status
            )
        except (ConnectionError, HttpProcessingError) as error:
            # The link dropped mid-chunk: what arrived is kept, the device will ask for the count.
            log.info("upload %s cut at %d bytes: %s", upload_id, self.held(upload_id), error)
            raise web.HTTPBadRequest() from None
        return web.json_response(ack.to_json(), status=200 if in_order else 409)

    def _authorize(self, request: web.Request, upload_id: str) -> Registration:
        registration = self._uploads.get(upload_id)
        if registration is None:
            raise _Refusal(404, "unknown-upload", "no such upload")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not registration.token_matches(token.strip()):
            raise _Refusal(401, "bad-token", "the upload token is missing or wrong")
        if self.clock() >= registration.expires_at:
            raise _Refusal(410, "expired", "the upload order has expired")
        return registration

    async def _receive(
        self, request: web.Request, registration: Registration, announced: ContentRange
    ) -> tuple[UploadAck, bool]:
        """Append the body if it starts at the count held: the acknowledgement of what is held now, and
        whether the PUT was in order (a count query is)."""
        if announced.total > registration.max_bytes:
            raise _Refusal(
                413, "too-large", f"{announced.total} bytes: over the {registration.max_bytes} allowed"
            )
        if registration.size is None:
            registration.size = announced.total
            self._save(registration)
        elif registration.size != announced.total:
            raise _Refusal(
                400, "size-changed", f"this upload is {registration.size} bytes, not {announced.total}"
            )
        held = self.held(registration.upload_id)
        if announced.is_query or announced.first != held or announced.end is None:
            return UploadAck(held, registration.size, held == registration.size), announced.is_query
        length = announced.end - held
        if request.content_length != length:
            raise _Refusal(400, "bad-length", f"Content-Length must be {length}, the size of the range")
        if length > MAX_CHUNK_BYTES:
            raise _Refusal(413, "chunk-too-large", f"at most {MAX_CHUNK_BYTES} bytes per PUT")
        await self._append(request, registration.upload_id, length)
        held = self.held(registration.upload_id)
        return UploadAck(held, registration.size, held == registration.size), True

    async def _append(self, request: web.Request, upload_id: str, length: int) -> None:
        """Write the body as it arrives; what came before a cut is kept (the next bytes, in order)."""
        loop = asyncio.get_running_loop()
        with self.part_path(upload_id).open("ab") as out:
            try:
                async for piece in request.content.iter_chunked(_PIECE):
                    out.write(piece)
            finally:
                out.flush()
                await asyncio.shield(loop.run_in_executor(None, os.fsync, out.fileno()))
                with self._changed:
                    self._changed.notify_all()


def _content_range(request: web.Request) -> ContentRange:
    header = request.headers.get("Content-Range")
    if header is None:
        raise _Refusal(400, "missing-range", "Content-Range is required")
    try:
        return parse_content_range(header)
    except ValueError as error:
        raise _Refusal(400, "bad-range", str(error)) from None


class UploadEndpointThread:
    """Runs an UploadEndpoint in a background thread with its own event loop (for `fetch-clip`)."""

    def __init__(self, endpoint: UploadEndpoint) -> None:
        self.endpoint = endpoint
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="upload-endpoint", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once the port is open (raises what start() raised)."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("upload endpoint did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.endpoint.start())
        except BaseException as error:  # handed to the starting thread
            self._error = error
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.endpoint.stop())
        self._loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the endpoint and its thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
