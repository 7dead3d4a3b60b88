"""The device's clip API (shared/DESIGN.md section 4) on aiohttp.

Every request but `/healthz` (and `/metrics` when `metrics_public`) must carry a collector signature
(`edge_agent.formats.signing`); every request, accepted or refused, is audited. Refusals are cheap: past
a small budget per client address and overall they are tallied and audited as one line per address
and minute (`ratelimit.RefusalBudget`), within the audit log's own quota; connections are capped and
timed out (`connections`), so that no flood can take the disk or the descriptors recording needs.
Clip bundles (`edge_agent.formats.bundle`) are streamed in 1 MiB chunks read off the event loop, paced
per client, and honour `Range`/`If-Range` so an interrupted fetch resumes.

Run it inside an asyncio loop (`await server.start()`), or from threaded code with `ClipServerThread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.api.connections import (
    AuditedHandler,
    ConnectionGate,
    GatedSite,
    ServerLimits,
    connection_cap,
    delivered,
)
from edge_agent.api.delivery import plan_clip, request_verifier
from edge_agent.api.holds import HoldService
from edge_agent.api.params import ClipQuery, ParamError, parse_clip_query
from edge_agent.api.ratelimit import BucketMap, LogThrottle, RefusalBudget
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.bundle import BundlePlan, read_part
from edge_agent.formats.clip_url import local_clip_url
from edge_agent.formats.config import AgentConfig
from edge_agent.formats.mqtt_wire import CameraStatus
from edge_agent.formats.signing import HEADER_NONCE, RequestVerifier, SignatureError
from edge_agent.formats.times import Clock
from edge_agent.formats.upload import content_range
from edge_agent.storage.holds import Hold
from edge_agent.storage.index import SegmentRecord
from edge_agent.storage.retention import DeletedFootage

log = logging.getLogger(__name__)

LISTING_MAX_SECONDS = 31 * 86400.0
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_RANGE_DIGITS = 18  # any byte position of a bundle fits; more is no position at all


class SegmentSource(Protocol):
    """What the server needs of the ring buffer (`edge_agent.storage.ringbuffer.RingBuffer`)."""

    def segments(self, camera: str, start_ts: float, end_ts: float) -> list[SegmentRecord]: ...

    def add_hold(
        self, camera: str, start_ts: float, end_ts: float, requisition: str, expires_at: float
    ) -> Hold: ...

    def release_hold(self, hold_id: int) -> bool: ...

    def holds(self, camera: str | None = None) -> list[Hold]: ...

    def stats(self) -> Mapping[str, Mapping[str, Any]]: ...

    def deleted(self) -> Mapping[str, DeletedFootage]: ...


@dataclass(frozen=True)
class StatsProviders:
    """Optional callables the agent passes so /metrics can show the pipeline and the MQTT outbox.

    `cameras` gives each camera's entry of the status document (the same figures the CSU sees).
    """

    cameras: Callable[[], Mapping[str, CameraStatus]] | None = None
    outbox_depth: Callable[[], int] | None = None


class _Refusal(Exception):
    """A refused request: HTTP status, reason code for audit and metrics, message for the client.

    The same shape as `SignatureError` and `ParamError`, which are refused alike.
    """

    def __init__(
        self, status: int, reason: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


@dataclass
class _Exchange:
    """What the audit line of one request records."""

    action: str
    remote: str
    client: str = "-"
    fields: dict[str, Any] | None = None
    streaming: bool = False  # the answer's head is sent: an error can no longer be answered


class ClipServer:
    """The clip API of one device."""

    def __init__(
        self,
        config: AgentConfig,
        ring: SegmentSource,
        audit: AuditLog,
        device_key: Ed25519PrivateKey,
        collector_keys: Sequence[Ed25519PublicKey],
        stats: StatsProviders | None = None,
        clock: Clock = time.time,
        verifier: RequestVerifier | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        """`verifier`: the device's one verifier when another part (the uploader) shares it; `limits`:
        connection and timeout bounds (defaults suit a Raspberry Pi)."""
        self.config = config
        self.settings = config.clip_server
        self.limits = limits or ServerLimits()
        self.ring = ring
        self.audit = audit
        self.device_key = device_key
        self.clock = clock
        self.verifier = (
            request_verifier(self.settings, collector_keys, clock) if verifier is None else verifier
        )
        self.holds = HoldService(ring, audit, [c.id for c in config.cameras], clock)
        self.stats = stats or StatsProviders()
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "clip_api_requests",
            "Clip API requests by endpoint and outcome",
            ["endpoint", "outcome", "reason"],
            registry=self.registry,
        )
        self._bytes = Counter("clip_api_bytes_served", "Bundle bytes sent", registry=self.registry)
        self.registry.register(_DeviceCollector(self))
        self._byte_buckets = BucketMap(
            self.settings.rate_limit_bytes_s, max(self.settings.rate_limit_bytes_s, 1 << 20)
        )
        per_minute = self.settings.requests_per_minute
        self._request_buckets = BucketMap(per_minute / 60.0, per_minute)
        self.refusals = RefusalBudget()
        self.gate = ConnectionGate(connection_cap(self.limits.max_connections), self._turned_away)
        self._log = LogThrottle(log, 60.0)
        self._streams: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self._tally_task: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def cameras(self) -> list[str]:
        """Camera ids this device serves."""
        return [c.id for c in self.config.cameras]

    @property
    def local_url(self) -> str:
        """Base URL of the running server from this same host (the CSU is told another: see
        `edge_agent.formats.clip_url`)."""
        return local_clip_url(self.settings, self.port)

    def make_app(self) -> web.Application:
        """The aiohttp application (routes and nothing else)."""
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._framework_refusals])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/segments", self._guarded("segments", self._segments))
        app.router.add_get("/v1/clips", self._guarded("clip", self._clip))
        app.router.add_get("/v1/holds", self._guarded("holds", self._list_holds))
        app.router.add_post("/v1/holds", self._guarded("hold", self._add_hold))
        app.router.add_delete("/v1/holds/{hold_id}", self._guarded("release", self._release))
        return app

    async def start(self) -> None:
        """Listen on the configured address (port 0 picks a free one, see `port`).

        Connections past the cap are answered 503 at once; a connection must send a whole request head
        within the idle timeout, and an idle keep-alive connection is closed after it.
        """
        limits = self.limits
        handler_args: dict[str, Any] = {
            "access_log": None,
            "keepalive_timeout": limits.idle_timeout_s,
            "max_line_size": limits.max_request_line,
            "max_field_size": limits.max_header_bytes,
            "max_headers": limits.max_headers,
            # No waiting for the unread rest of a refused body: the connection just closes.
            "lingering_time": 0.0,
        }
        self._runner = web.AppRunner(self.make_app(), handle_signals=False, **handler_args)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None  # set by setup()

        def make_handler() -> asyncio.Protocol:
            return AuditedHandler(
                server, on_parse_error=self._parse_refused, throttle=self._log, **handler_args
            )

        site = GatedSite(
            self._runner, self.settings.bind, self.settings.port, self.gate, make_handler, self._ssl_context()
        )
        await site.start()
        self.port = site.bound_port()
        self._tally_task = asyncio.create_task(self._audit_tallies_every(self.refusals.window_s / 6))
        log.info("clip server listening on %s (at most %d connections)", self.local_url, self.gate.limit)

    async def stop(self) -> None:
        """Close the listener and open connections; audit the refusals tallied so far."""
        if self._tally_task is not None:
            self._tally_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tally_task
            self._tally_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._audit_tallies(force=True)

    def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An event-loop exception handler that logs each kind of error once a minute (a failing
        `accept`, say out of descriptors, would otherwise log a traceback per attempt)."""
        message = str(context.get("message") or "event loop error")
        self._log.exception(f"loop-{message}", "clip server: %s", message, exc_info=context.get("exception"))

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_cert is None or self.settings.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    # -- plumbing: authentication, refusals, audit ------------------------------------------------

    def _guarded(
        self, action: str, handler: Callable[[web.Request, _Exchange], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            exchange = _Exchange(action, request.remote or "-")
            try:
                if not self._request_buckets.get(exchange.remote).try_take():
                    raise _Refusal(429, "rate-limited", "too many requests; slow down")
                exchange.client = self._authenticate(request, await self._body(request))
                return await handler(request, exchange)
            except (_Refusal, SignatureError, ParamError) as refusal:
                return self._refuse(request, exchange, refusal)
            except web.HTTPException as error:
                return self._refuse(request, exchange, _framework_refusal(error))
            except Exception as error:
                if isinstance(error, ConnectionError) or exchange.streaming:
                    raise  # the answer is under way (and audited): nothing else can be sent
                return self._internal_error(request, exchange, error)

        return guarded

    async def _body(self, request: web.Request) -> bytes:
        """The request body, which must arrive whole within the idle timeout (a slow sender holds a
        connection and a handler); over `client_max_size` aiohttp refuses it (413)."""
        try:
            async with asyncio.timeout(self.limits.idle_timeout_s):
                return await request.read()
        except TimeoutError:
            raise _Refusal(408, "body-timeout", "request body: not received in time") from None

    @web.middleware
    async def _framework_refusals(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Refusals made before any endpoint runs (no such path: 404, method: 405), and any error an
        endpoint let through, answered and audited like every other refusal."""
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return self._refuse(request, _Exchange("http", request.remote or "-"), _framework_refusal(error))
        except ConnectionError:
            raise
        except Exception as error:
            return self._internal_error(request, _Exchange("http", request.remote or "-"), error)

    def _internal_error(self, request: web.Request, exchange: _Exchange, error: Exception) -> web.Response:
        self._log.exception(
            f"internal-{type(error).__name__}",
            "clip API: %s %s failed",
            request.method,
            request.path[:256],
            exc_info=error,
        )
        return self._refuse(request, exchange, _Refusal(500, "internal-error", "the device failed to answer"))

    def _parse_refused(self, remote: str, status: int, reason: str, detail: str) -> None:
        """A request aiohttp's parser refused (no endpoint saw it): counted, audited within the budget."""
        self._requests.labels("http", "refused", reason).inc()
        self._log.info(reason, "refused a request from %s: %s", remote, detail)
        if self.refusals.admit(remote, reason):
            self.audit.append_if_room(
                action="http", outcome="refused", status=status, reason=reason, detail=detail, remote=remote
            )

    def _turned_away(self, remote: str) -> None:
        """A connection over the cap (logged by the gate, once a minute): counted, tallied."""
        self._requests.labels("connection", "refused", "too-many-connections").inc()
        if self.refusals.admit(remote, "too-many-connections"):
            self.audit.append_if_room(
                action="connection",
                outcome="refused",
                status=503,
                reason="too-many-connections",
                remote=remote,
            )

    async def _audit_tallies_every(self, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            await loop.run_in_executor(None, self._audit_tallies, False)

    def _audit_tallies(self, force: bool) -> None:
        """One audit line per client address for the refusals of a finished window that had no line
        of their own (see `RefusalBudget`)."""
        for tally in self.refusals.drain(force):
            self.audit.append_if_room(
                action="refusals",
                outcome="tallied",
                remote=tally.remote,
                count=tally.count,
                reasons=tally.reasons,
                window_s=self.refusals.window_s,
            )

    def _authenticate(self, request: web.Request, body: bytes) -> str:
        return self.verifier.verify(
            request.method, request.path, list(request.query.items()), request.headers, body
        )

    def _refuse(
        self, request: web.Request, exchange: _Exchange, refusal: _Refusal | SignatureError | ParamError
    ) -> web.Response:
        """Answer a refusal. Its audit line costs a write only within the refusal budget (past it, the
        refusal is tallied: see `RefusalBudget`) and the audit log's quota; its log line is throttled."""
        self._requests.labels(exchange.action, "refused", refusal.reason).inc()
        self._log.info(refusal.reason, "refused %s %s: %s", request.method, request.path[:256], refusal)
        headers = refusal.headers if isinstance(refusal, _Refusal) else None
        answer = web.json_response(
            {"error": refusal.reason, "message": str(refusal)}, status=refusal.status, headers=headers
        )
        if refusal.status == 408:
            answer.force_close()  # the rest of its body may still come: not worth waiting for
        if not self.refusals.admit(exchange.remote, refusal.reason):
            return answer
        self.audit.append_if_room(
            action=exchange.action,
            outcome="refused",
            status=refusal.status,
            reason=refusal.reason,
            detail=str(refusal),
            client=exchange.client,
            remote=exchange.remote,
            method=request.method,
            path=request.path[:256],
            query=request.query_string[:512],
            **(exchange.fields or {}),
        )
        return answer

    def _accept(self, exchange: _Exchange, status: int, **fields: Any) -> None:
        self._requests.labels(exchange.action, "accepted", "").inc()
        self.audit.append(
            action=exchange.action,
            outcome="accepted",
            status=status,
            client=exchange.client,
            remote=exchange.remote,
            **(exchange.fields or {}),
            **fields,
        )

    # -- endpoints --------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.settings.metrics_public:
            exchange = _Exchange("metrics", request.remote or "-")
            try:
                exchange.client = self._authenticate(request, await request.read())
            except SignatureError as refusal:
                return self._refuse(request, exchange, refusal)
        data = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
        return web.Response(body=data, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _segments(self, request: web.Request, exchange: _Exchange) -> web.Response:
        query = parse_clip_query(request.query.items(), self.cameras, LISTING_MAX_SECONDS, False)
        exchange.fields = _query_fields(query)
        rows = await asyncio.get_running_loop().run_in_executor(
            None, self.ring.segments, query.camera, query.start_ts, query.end_ts
        )
        self._accept(exchange, 200, rows=len(rows))
        segments = [r.to_bundle_segment().to_listing() for r in rows]
        return web.json_response({"camera": query.camera, "segments": segments})

    async def _clip(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        query = parse_clip_query(request.query.items(), self.cameras, self.settings.max_clip_seconds, True)
        # The bundle answers this request: bound to its nonce (a resumed download names its first one's).
        query = dataclasses.replace(query, nonce=query.nonce or request.headers[HEADER_NONCE])
        exchange.fields = _query_fields(query)
        plan = await asyncio.get_running_loop().run_in_executor(None, self._plan, query)
        exchange.fields["bundle_id"] = plan.bundle_id
        byte_range = _requested_range(request, plan)
        if byte_range is None:
            # The size tells a client whose partial download is already whole that it is done.
            raise _Refusal(
                416,
                "unsatisfiable-range",
                f"bundle is {plan.size} bytes",
                {"Content-Range": f"bytes */{plan.size}"},
            )
        streams = self._streams.get(exchange.client, 0)
        if streams >= self.settings.max_streams_per_client:
            raise _Refusal(429, "too-many-streams", f"{streams} clip streams already open")
        self._streams[exchange.client] = streams + 1
        try:
            return await self._stream(request, exchange, plan, byte_range)
        finally:
            self._streams[exchange.client] -= 1

    def _plan(self, query: ClipQuery) -> BundlePlan:
        return plan_clip(self.config, self.ring, self.device_key, query)

    async def _stream(
        self,
        request: web.Request,
        exchange: _Exchange,
        plan: BundlePlan,
        byte_range: tuple[int, int],
    ) -> web.StreamResponse:
        start, end = byte_range
        partial = (start, end) != (0, plan.size)
        response = web.StreamResponse(status=206 if partial else 200)
        response.content_length = end - start
        response.content_type = "application/x-tar"
        response.headers["ETag"] = f'"{plan.bundle_id}"'
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["Content-Disposition"] = f'attachment; filename="{plan.bundle_id}.tar"'
        if partial:
            response.headers["Content-Range"] = content_range(start, end, plan.size)
        self._accept(
            exchange,
            response.status,
            event="start",
            range=[start, end],
            size=plan.size,
            segments=len(plan.manifest["segments"]),
            gaps=len(plan.manifest["gaps"]),
        )
        exchange.streaming = True
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        bucket = self._byte_buckets.get(exchange.client)
        sent = 0
        outcome = "served"
        try:
            for part, offset, length in plan.chunks(start, end):
                data = (
                    part.data[offset : offset + length]
                    if part.path is None
                    else (await loop.run_in_executor(None, read_part, part, offset, length))
                )
                await bucket.take(len(data))
                await _write_or_cut(request, response, data, self.limits.idle_timeout_s)
                sent += len(data)
                self._bytes.inc(len(data))
            await response.write_eof()
            # Written is not received: the last bytes may still sit in the send queue when the client
            # is cut off. Served means the client's TCP acknowledged every byte.
            if not await delivered(request.transport, self.limits.delivery_timeout_s):
                outcome = "interrupted"
        except (ConnectionError, asyncio.CancelledError):
            outcome = "interrupted"
            raise
        except OSError as error:
            outcome = f"aborted: {error}"
            raise
        finally:
            self.audit.append(
                action="clip",
                outcome=outcome,
                client=exchange.client,
                remote=exchange.remote,
                bundle_id=plan.bundle_id,
                bytes=sent,
                **{k: v for k, v in (exchange.fields or {}).items() if k != "bundle_id"},
            )
        return response

    async def _list_holds(self, request: web.Request, exchange: _Exchange) -> web.Response:
        if request.query:
            raise ParamError("unknown-parameter", "GET /v1/holds takes no parameters")
        holds = await asyncio.get_running_loop().run_in_executor(None, self.holds.list)
        self._accept(exchange, 200, rows=len(holds))
        return web.json_response({"holds": holds})

    async def _add_hold(self, request: web.Request, exchange: _Exchange) -> web.Response:
        if request.query:
            raise ParamError("unknown-parameter", "POST /v1/holds takes a JSON body, no parameters")
        try:
            payload = json.loads(await request.read() or b"null")
        except ValueError:
            raise ParamError("malformed-body", "body: not JSON") from None
        except RecursionError:
            raise ParamError("malformed-body", "body: JSON nested too deeply") from None
        hold = await asyncio.get_running_loop().run_in_executor(
            None, self.holds.hold, payload, exchange.client
        )
        self._requests.labels("hold", "accepted", "").inc()
        return web.json_response(hold, status=201)

    async def _release(self, request: web.Request, exchange: _Exchange) -> web.Response:
        hold_id = request.match_info["hold_id"]
        result = await asyncio.get_running_loop().run_in_executor(
            None, self.holds.release, hold_id, exchange.client
        )
        self._requests.labels("release", "accepted", "").inc()
        return web.json_response(result)


async def _write_or_cut(
    request: web.Request, response: web.StreamResponse, data: bytes, timeout_s: float
) -> None:
    """Write one chunk; a client that takes none of it within `timeout_s` is cut off (it would hold a
    connection, a stream slot and the open segment files for ever)."""
    try:
        async with asyncio.timeout(timeout_s):
            await response.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("the client stopped reading") from None


_FRAMEWORK_REASONS = {
    404: "unknown-path",
    405: "method-not-allowed",
    413: "body-too-large",
    414: "request-too-large",
    431: "request-too-large",
}


def _framework_refusal(error: web.HTTPException) -> _Refusal:
    """aiohttp's own refusal (no such path, method, too large a body) as a refusal of ours."""
    reason = _FRAMEWORK_REASONS.get(error.status, f"http-{error.status}")
    return _Refusal(error.status, reason, error.text or error.reason)


def _query_fields(query: ClipQuery) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "camera": query.camera,
        "start_ts": query.start_ts,
        "end_ts": query.end_ts,
    }
    if query.requisition:
        fields["requisition"] = query.requisition
    if query.officer:
        fields["officer"] = query.officer
    if query.nonce:
        fields["request_nonce"] = query.nonce
    return fields


def _requested_range(request: web.Request, plan: BundlePlan) -> tuple[int, int] | None:
    """[start, end) to send: the whole bundle unless a valid single Range applies; None for 416."""
    header = request.headers.get("Range")
    if not header:
        return 0, plan.size
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != f'"{plan.bundle_id}"':
        return 0, plan.size  # the bundle changed since the client's first part: send it all again
    match = _RANGE_RE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return 0, plan.size  # multiple or odd ranges: RFC 9110 lets a server ignore Range
    first, last = match.groups()
    if max(len(first), len(last)) > _RANGE_DIGITS:
        raise ParamError("bad-range", f"Range: byte positions have at most {_RANGE_DIGITS} digits")
    if first == "":
        start, end = max(0, plan.size - int(last)), plan.size
    else:
        start = int(first)
        end = min(plan.size, int(last) + 1) if last else plan.size
    if start >= plan.size or start >= end:
        return None
    return start, end


class _DeviceCollector(Collector):
    """Scrape-time gauges from the ring buffer and the agent's stats providers."""

    def __init__(self, server: ClipServer) -> None:
        self._server = server

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        server = self._server
        now = server.clock()
        yield from _ring_metrics(server.ring.stats() or {}, now)
        yield from _deletion_metrics(server.ring.deleted())
        if server.stats.cameras is not None:
            fps = GaugeMetricFamily("camera_fps", "Frames per second", labels=["camera"])
            drops = GaugeMetricFamily("camera_drops", "Frames dropped since start", labels=["camera"])
            for camera, values in sorted(server.stats.cameras().items()):
                fps.add_metric([camera], values.fps)
                drops.add_metric([camera], values.drops)
            yield fps
            yield drops
        if server.stats.outbox_depth is not None:
            yield GaugeMetricFamily(
                "mqtt_outbox_depth", "Messages waiting for the broker", value=server.stats.outbox_depth()
            )
        yield from _defence_metrics(server)


def _defence_metrics(server: ClipServer) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
    """What a flood costs: open and turned-away connections, refusals tallied, the audit log's space."""
    usage = server.audit.usage()
    yield GaugeMetricFamily("clip_api_connections_open", "Open clip API connections", value=server.gate.open)
    yield CounterMetricFamily(
        "clip_api_connections_turned_away", "Connections over the cap", value=server.gate.turned_away
    )
    yield CounterMetricFamily(
        "clip_api_refusals_tallied", "Refusals past the audit budget (tallied)", value=server.refusals.tallied
    )
    yield GaugeMetricFamily("audit_log_bytes", "Audit log and rotated files", value=usage.bytes)
    yield GaugeMetricFamily("audit_log_quota_bytes", "Audit log quota", value=usage.max_bytes)
    yield CounterMetricFamily(
        "audit_lines_withheld", "Refusal lines not written (quota or disk)", value=usage.withheld
    )


def _ring_metrics(per_camera: Mapping[str, Mapping[str, Any]], now: float) -> Iterable[GaugeMetricFamily]:
    segments = GaugeMetricFamily("ring_segments", "Sealed segments kept", labels=["camera"])
    size = GaugeMetricFamily("ring_bytes", "Bytes of sealed segments kept", labels=["camera"])
    age = GaugeMetricFamily(
        "ring_oldest_segment_age_seconds", "Age of the oldest kept segment", labels=["camera"]
    )
    for camera, entry in sorted(per_camera.items()):
        segments.add_metric([camera], entry.get("segments") or 0)
        size.add_metric([camera], entry.get("bytes") or 0)
        oldest = entry.get("oldest_ts")
        if oldest is not None:
            age.add_metric([camera], max(0.0, now - oldest))
    yield segments
    yield size
    yield age


def _deletion_metrics(by_reason: Mapping[str, DeletedFootage]) -> Iterable[CounterMetricFamily]:
    """Footage retention deleted since start, by reason; `early`: younger than the legal retention."""
    segments = CounterMetricFamily("ring_deleted_segments", "Segments deleted", labels=["reason"])
    size = CounterMetricFamily("ring_deleted_bytes", "Bytes of segments deleted", labels=["reason"])
    early = CounterMetricFamily(
        "ring_deleted_early_segments",
        "Segments deleted while holding footage younger than the legal retention",
        labels=["reason"],
    )
    for reason, counts in sorted(by_reason.items()):
        segments.add_metric([reason], counts.segments)
        size.add_metric([reason], counts.bytes)
        early.add_metric([reason], counts.early)
    yield segments
    yield size
    yield early


class ClipServerThread:
    """Runs a ClipServer in a background thread with its own event loop (for the threaded agent)."""

    def __init__(self, server: ClipServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="clip-server", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once the port is open (raises what start() raised)."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("clip server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(self.server.loop_error)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as error:  # handed to the starting thread
            self._error = error
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.server.stop())
        self._loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and its thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
