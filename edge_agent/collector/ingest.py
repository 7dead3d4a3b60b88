"""`csu-collector serve`: follow the fleet over MQTT and keep the registry (collector/store/).

The collector keeps a persistent MQTT 5 session (a stable client id, clean start off, a session expiry),
so messages published while it restarts are queued for it by the broker. Several collectors split the
fleet with a shared subscription (`--share-group G` subscribes to `$share/G/...`; brokers send no
retained messages on shared subscriptions), each with its own client id, all writing one PostgreSQL
database.

Nothing is lost between the broker and the database: paho's network thread only queues messages; a
writer thread validates each one, stores them in batches (up to `--batch-size` messages or `--batch-ms`
after the first, one transaction each) and acknowledges a message to the broker only once its batch is
committed. A collector killed mid-batch has acknowledged nothing of it, so the broker delivers it again
when the collector's session resumes, and the store's idempotent writes make that redelivery harmless.

Every message is checked on its own before it joins a batch (size, finite numbers, bounded lists and
texts, plausible times), so one bad message is refused, counted and logged with its device, and never
costs the batch; should the database still refuse a batch, its records are written one by one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import queue
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.collector.store import (
    DB_ERRORS,
    DEFAULT_POOL_SIZE,
    AvailabilityRecord,
    MalformedRecord,
    MotionRecord,
    Outcome,
    Record,
    StatusRecord,
    Store,
    StoreUnavailable,
    db_exit,
    open_store,
)
from edge_agent.formats.mqtt_wire import (
    MotionMessage,
    PayloadError,
    StatusMessage,
    TopicInfo,
    collector_filters,
    parse_availability,
    parse_motion,
    parse_status,
    parse_topic,
)
from edge_agent.formats.times import Clock, iso_ms

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
BATCH_SIZE = 500
BATCH_WAIT_S = 0.010
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
RETENTION_DAYS = 30.0
PURGE_EVERY_S = 3600.0
LOG_EVERY_S = 60.0
"""A device sending bad messages gets one log line per minute (with how many were refused meanwhile)."""
TRACKED_DEVICES = 10_000
"""Devices remembered for the per-device malformed counts and log limits."""
LOGGED_DEVICES = 20
"""The stats line names the devices with the most malformed messages, not all of them."""
SESSION_TAKEN_OVER = 142
INT64_MAX = 2**63 - 1


RETAINED_WINDOW_S = 5.0
"""How long a share-group collector keeps its plain subscription to retained availability and status."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, from `mqtt://[user:pass@]host[:port]` or `mqtts://...`."""

    host: str
    port: int
    tls: bool
    username: str
    password: str


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r}: no host")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(f"broker URL {url!r}: the port is not a number in 1..65535") from None
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
    )


# --- per-message checks, before a message joins a batch -------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What a message must respect to be stored; each refusal names the field."""

    max_payload_bytes: int = 64 * 1024
    max_name: int = 64
    """site, device, camera, zone and camera state names."""
    max_text: int = 2048
    """clip_url and the other free texts stored in columns."""
    max_list: int = 64
    """boxes, zones, cameras."""
    earliest_ts: float = 1577836800.0
    """2020-01-01: a device that never synchronised its clock reports 1970."""
    max_ahead_s: float = 86400.0
    """How far ahead of the collector's clock a device's time may be."""


def _name(field_name: str, value: str, limit: int) -> None:
    if not value or len(value) > limit or not value.isprintable():
        raise PayloadError(f"{field_name}: must be 1 to {limit} printable characters")


def _number(field_name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise PayloadError(f"{field_name}: must be a finite number")
    if not low <= value <= high:
        raise PayloadError(f"{field_name}: {value!r} is outside {low:g}..{high:g}")


def _moment(field_name: str, value: float, now: float, limits: Limits) -> None:
    latest = now + limits.max_ahead_s
    if not math.isfinite(value) or not limits.earliest_ts <= value <= latest:
        raise PayloadError(
            f"{field_name}: not a plausible time (between {iso_ms(limits.earliest_ts)} and {iso_ms(latest)})"
        )


def _finite_everywhere(value: Any, where: str = "") -> None:
    """No NaN or infinity anywhere in the message (JSON readers accept them; SQL and browsers do not)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PayloadError(f"{where or '(payload)'}: must be a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_everywhere(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _finite_everywhere(item, f"{where}.{index}")


def check_origin(where: TopicInfo, limits: Limits) -> None:
    """The site and device the topic names fit in the registry (the camera is checked with the message)."""
    _name("topic site", where.site, limits.max_name)
    _name("topic device", where.device, limits.max_name)


def check_motion(event: MotionMessage, now: float, limits: Limits) -> None:
    """PayloadError naming the first field of a motion message that is out of bounds."""
    _finite_everywhere(event.model_dump())
    _name("event_id", event.event_id, 128)
    _moment("ts", event.ts, now, limits)
    _moment("start_ts", event.start_ts, now, limits)
    if event.start_ts > event.ts:
        raise PayloadError("start_ts: after ts")
    _number("score", event.score, 0.0, 1.0)
    if len(event.boxes) > limits.max_list:
        raise PayloadError(f"boxes: more than {limits.max_list}")
    for index, box in enumerate(event.boxes):
        for value in box:
            _number(f"boxes.{index}", value, 0.0, 1.0)
    if len(event.zones) > limits.max_list:
        raise PayloadError(f"zones: more than {limits.max_list}")
    for index, zone in enumerate(event.zones):
        _name(f"zones.{index}", zone, limits.max_name)


def check_status(status: StatusMessage, now: float, limits: Limits) -> None:
    """PayloadError naming the first field of a status document that is out of bounds."""
    _finite_everywhere(status.model_dump())
    _moment("ts", status.ts, now, limits)
    if len(status.version) > limits.max_name or not status.version.isprintable():
        raise PayloadError(f"version: at most {limits.max_name} printable characters")
    if len(status.clip_url) > limits.max_text or not status.clip_url.isprintable():
        raise PayloadError(f"clip_url: at most {limits.max_text} printable characters")
    _number("uptime_s", status.uptime_s, 0.0, 1e10)
    if status.heartbeat_s is not None:  # the period a status goes stale by: the device config's bounds
        _number("heartbeat_s", status.heartbeat_s, 1.0, 86400.0)
    if len(status.cameras) > limits.max_list:
        raise PayloadError(f"cameras: more than {limits.max_list}")
    seen: set[str] = set()
    for index, camera in enumerate(status.cameras):
        where = f"cameras.{index}"
        _name(f"{where}.id", camera.id, limits.max_name)
        if camera.id in seen:
            raise PayloadError(f"{where}.id: {camera.id!r} appears twice")
        seen.add(camera.id)
        _name(f"{where}.state", camera.state, limits.max_name)
        _number(f"{where}.fps", camera.fps, 0.0, 1000.0)
        _number(f"{where}.drops", camera.drops, 0, INT64_MAX)
        _number(f"{where}.masks", camera.masks, 0, 100_000)
        for value in camera.resolution or ():
            _number(f"{where}.resolution", value, 0, 100_000)


def _printable(text: str, limit: int) -> str:
    """A text safe to log and store: control characters replaced, length bounded."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


class _PerDeviceLog:
    """One warning per device and minute, saying how many were held back since the last one."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, device: str, now: float, message: str, *args: object) -> None:
        if device not in self._last and len(self._last) >= TRACKED_DEVICES:
            self._last.clear()  # bounded memory; at worst a device logs twice in a minute
        last, held = self._last.get(device, (-math.inf, 0))
        if now - last < self.every_s:
            self._last[device] = (last, held + 1)
            return
        self._last[device] = (now, 0)
        suffix = f" ({held} more from {device} refused since the last line)" if held else ""
        log.warning(message + suffix, *args)


# --- ingestion --------------------------------------------------------------------------------------


@dataclass
class IngestCounters:
    """What the collector did since it started (logged as JSON at every `--stats-every`)."""

    received: int = 0
    stored: int = 0
    duplicate: int = 0
    stale: int = 0
    malformed: int = 0
    ignored: int = 0
    batches: int = 0
    write_s: float = 0.0
    write_max_s: float = 0.0
    store_retries: int = 0
    malformed_by_device: dict[str, int] = field(default_factory=dict)

    def json(self) -> str:
        """One line of JSON: write times to the microsecond, the devices with the most malformed messages.

        Called from another thread than the writer's: the per-device dict is copied in one step first.
        """
        by_device = sorted(dict(self.malformed_by_device).items(), key=lambda item: -item[1])
        document: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        document["malformed_by_device"] = dict(by_device[:LOGGED_DEVICES])
        document["write_s"] = round(self.write_s, 6)
        document["write_max_s"] = round(self.write_max_s, 6)
        return json.dumps(document, sort_keys=True)


@dataclass(frozen=True)
class _Delivery:
    """A message as paho handed it over, with what acknowledging it needs."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int


class Ingestor:
    """Checks device messages and writes them to the store in batches; `start()` follows a broker."""

    def __init__(
        self,
        store: Store,
        topic_root: str = "csu/v1",
        clock: Clock = time.time,
        limits: Limits | None = None,
        batch_size: int = BATCH_SIZE,
        batch_wait_s: float = BATCH_WAIT_S,
    ) -> None:
        """Handle messages under `topic_root` into `store`."""
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size}: must be at least 1")
        if batch_wait_s < 0:
            raise ValueError(f"batch wait {batch_wait_s}: must not be negative")
        self.store = store
        self.topic_root = topic_root.rstrip("/")
        self.clock = clock
        self.limits = limits or Limits()
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.counters = IngestCounters()
        self.ready = threading.Event()
        self._queue: queue.Queue[_Delivery | None] = queue.Queue()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None
        self._share_group = ""
        self._client_id = ""
        self._connection = 0
        self._stopping = threading.Event()
        self._bad_log = _PerDeviceLog()

    # --- pure handling (no broker needed) -------------------------------------------------------

    def parse(self, topic: str, payload: bytes, now: float) -> Record | None:
        """The record a message becomes (a MalformedRecord when it is refused); None for a topic not kept."""
        try:
            where = parse_topic(self.topic_root, topic)
            check_origin(where, self.limits)
        except PayloadError as error:
            return self._refuse(topic, "", "", str(error), now)
        try:
            if len(payload) > self.limits.max_payload_bytes:
                raise PayloadError(f"payload of {len(payload)} bytes, over {self.limits.max_payload_bytes}")
            if where.kind == "availability":
                return AvailabilityRecord(where.site, where.device, parse_availability(payload), now)
            if where.kind == "status":
                status = parse_status(payload, where)
                check_status(status, now, self.limits)
                return StatusRecord(status, payload.decode("utf-8"), now)
            if where.kind == "motion":
                _name("topic camera", where.camera, self.limits.max_name)
                event = parse_motion(payload)
                check_motion(event, now, self.limits)
                return MotionRecord(where.site, where.device, where.camera, event, now)
            return None
        except Exception as error:  # whatever one message does to a parser is that message's fault only
            reason = str(error) if isinstance(error, PayloadError) else f"{type(error).__name__}: {error}"
            return self._refuse(topic, where.site, where.device, reason, now)

    def _refuse(self, topic: str, site: str, device: str, reason: str, now: float) -> MalformedRecord:
        record = MalformedRecord(_printable(topic, 300), site, device, _printable(reason, 500), now)
        origin = f"{site}/{device}" if device else "(no device)"
        by_device = self.counters.malformed_by_device
        if origin not in by_device and len(by_device) >= TRACKED_DEVICES:
            origin = "(other devices)"  # a flood of invented device names must not grow memory
        by_device[origin] = by_device.get(origin, 0) + 1
        self._bad_log.warn(
            origin, now, "malformed payload from %s on %s skipped: %s", origin, record.topic, record.error
        )
        return record

    def handle(self, topic: str, payload: bytes) -> str:
        """Store one message; what happened: stored, duplicate, stale, malformed or ignored."""
        return self.handle_batch([(topic, payload)])[0]

    def handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> list[str]:
        """Check each message, then store the good ones and the refusals in one transaction.

        StoreUnavailable propagates (nothing of the batch is stored: retry it later).
        """
        now = self.clock()
        parsed = [(topic, self.parse(topic, payload, now)) for topic, payload in messages]
        kept = [(topic, record) for topic, record in parsed if record is not None]
        started = time.monotonic()
        try:
            written = self.store.write([record for _, record in kept], now)
        except StoreUnavailable:
            raise
        except Exception as error:  # a record the database refuses must not cost the others
            log.error(
                "batch of %d refused by the store (%s); storing its messages one by one", len(kept), error
            )
            written = [self._write_alone(topic, record, now) for topic, record in kept]
        elapsed = time.monotonic() - started
        self.counters.batches += 1
        self.counters.write_s += elapsed
        self.counters.write_max_s = max(self.counters.write_max_s, elapsed)
        outcomes = iter(written)
        results = ["ignored" if record is None else next(outcomes) for _, record in parsed]
        self.counters.received += len(results)
        for outcome in results:
            setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
        return results

    def _write_alone(self, topic: str, record: Record, now: float) -> Outcome:
        try:
            return self.store.write([record], now)[0]
        except StoreUnavailable:
            raise
        except Exception as error:
            refusal = self._refuse(topic, record.site, record.device, f"refused by the store: {error}", now)
            return self.store.write([refusal], now)[0]

    # --- broker connection ----------------------------------------------------------------------

    def start(
        self,
        broker: BrokerAddress,
        share_group: str = "",
        client_id: str = "",
        ca_file: Path | None = None,
        protocol: str = "5",
    ) -> None:
        """Connect (persistent session, manual acknowledgements), subscribe at QoS 1, start storing."""
        self._share_group = share_group
        v5 = protocol == "5"
        if not client_id:
            client_id = f"csu-collector-{socket.gethostname()}" + (f"-{share_group}" if share_group else "")
        self._client_id = client_id
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        client.suppress_exceptions = True
        client.manual_ack_set(True)
        if broker.username:
            client.username_pw_set(broker.username, broker.password or None)
        if broker.tls:
            client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            # Unacknowledged messages the broker may have in flight to us: room for the batch being
            # written and the next one filling (the broker's default is as low as 20).
            props.ReceiveMaximum = min(65535, max(100, 2 * self.batch_size))
            client.connect_async(broker.host, broker.port, 30, clean_start=False, properties=props)
        else:
            client.connect_async(broker.host, broker.port, 30)
        self._client = client
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer", daemon=True)
        self._writer.start()
        client.loop_start()

    def stop(self) -> None:
        """Stop receiving, store and acknowledge what was received, disconnect (the session stays)."""
        self._stopping.set()
        if self._client is not None:
            self._client.loop_stop()
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join(timeout=30)
        if self._client is not None:
            self._client.disconnect()

    def _filters(self) -> list[str]:
        filters = collector_filters(self.topic_root)
        if self._share_group:
            filters = [f"$share/{self._share_group}/{f}" for f in filters]
        return filters

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the collector: %s", reason)
            return
        self._connection += 1  # messages of an older connection are redelivered on this one, not acked
        log.info("collector connected (session present: %s)", getattr(flags, "session_present", "?"))
        client.subscribe([(f, 1) for f in self._filters()])
        if self._share_group:
            self._catch_up_retained(client)

    def _catch_up_retained(self, client: mqtt.Client) -> None:
        """Read the fleet's retained availability and status once, outside the share group.

        A broker sends no retained message on a shared subscription, so a collector started after the
        devices would never learn who is online: a plain subscription to those two topics brings the
        retained ones, and is dropped after RETAINED_WINDOW_S so that live messages stay shared. What it
        delivers twice is harmless (idempotent writes).
        """
        filters = [f for f in collector_filters(self.topic_root) if f.endswith(("/availability", "/status"))]
        client.subscribe([(f, 1) for f in filters])
        timer = threading.Timer(RETAINED_WINDOW_S, client.unsubscribe, args=(filters,))
        timer.daemon = True
        timer.start()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("subscriptions refused by the broker: %s", ", ".join(refused))
            return
        log.info("collector subscribed to %s", ", ".join(self._filters()))
        self.ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.ready.clear()
        if self._stopping.is_set():
            return
        if reason.value == SESSION_TAKEN_OVER:
            log.error(
                "another collector connected with the client id %r: give each `serve` its own --client-id",
                self._client_id,
            )
        else:
            log.warning("collector lost the broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put(
            _Delivery(message.topic, bytes(message.payload), message.mid, message.qos, self._connection)
        )

    def _write_loop(self) -> None:
        while True:
            batch, done = self._next_batch()
            if batch:
                try:
                    stored = self._store_until_done([(d.topic, d.payload) for d in batch])
                except Exception:  # a bug must not stop ingestion: log it, acknowledge, go on
                    log.exception("could not store %d message(s)", len(batch))
                    stored = True
                if stored:
                    self._acknowledge(batch)
            if done:
                return

    def _next_batch(self) -> tuple[list[_Delivery], bool]:
        """Up to `batch_size` messages, `batch_wait_s` at most after the first; and whether to stop."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _store_until_done(self, messages: list[tuple[str, bytes]]) -> bool:
        """Store the batch, retrying while the database is unavailable; False if stopping first."""
        delay = RETRY_MIN_S
        while True:
            try:
                self.handle_batch(messages)
                return True
            except StoreUnavailable as error:
                self.counters.store_retries += 1
                log.warning(
                    "store unavailable, %d message(s) held, retry in %.1f s: %s", len(messages), delay, error
                )
            if self._stopping.wait(delay):
                return False  # not acknowledged: the broker delivers them again to this session
            delay = min(delay * 2, RETRY_MAX_S)

    def _acknowledge(self, batch: list[_Delivery]) -> None:
        if self._client is None:
            return
        for delivery in batch:
            if delivery.qos > 0 and delivery.connection == self._connection:
                self._client.ack(delivery.mid, delivery.qos)


def purge_periodically(
    store: Store, retention_days: float, every_s: float, stop: threading.Event, clock: Clock = time.time
) -> None:
    """Until `stop` is set: purge the rows older than `retention_days`, now and every `every_s`."""
    while True:
        try:
            purged = store.purge(clock() - retention_days * 86400)
            if any(asdict(purged).values()):
                log.info("retention (%g days): purged %s", retention_days, purged)
        except StoreUnavailable as error:
            log.warning("retention skipped, store unavailable: %s", error)
        if stop.wait(every_s):
            return


# --- command ------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `csu-collector serve`."""
    parser = subparsers.add_parser("serve", help="follow the fleet over MQTT into the registry database")
    parser.add_argument("--broker", required=True, help="mqtt://[user:pass@]host[:port] or mqtts://...")
    parser.add_argument(
        "--db", required=True, help="SQLite file (created, schema upgraded) or postgresql://user@host/db"
    )
    parser.add_argument("--share-group", default="", help="shared subscription group ($share/GROUP/...)")
    parser.add_argument("--topic-root", default="csu/v1", help="topic root of the devices (default csu/v1)")
    parser.add_argument(
        "--client-id", default="", help="MQTT client id: stable (it keeps the session), one per collector"
    )
    parser.add_argument("--ca", type=Path, default=None, help="CA bundle for mqtts://")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")
    parser.add_argument("--stats-every", type=float, default=60.0, help="seconds between counter logs")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="messages per transaction at most")
    parser.add_argument(
        "--batch-ms", type=float, default=BATCH_WAIT_S * 1000, help="wait for more messages after the first"
    )
    parser.add_argument(
        "--pool-size", type=int, default=DEFAULT_POOL_SIZE, help="PostgreSQL connections of this collector"
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        default=RETENTION_DAYS,
        help="purge motion events and statuses older than this (0: keep everything)",
    )
    parser.add_argument("--console", default="", metavar="HOST:PORT", help="also serve the web console there")
    # Imported here: the console's command module imports this one.
    from edge_agent.collector.commands.console_cmd import add_console_arguments

    add_console_arguments(parser)
    parser.set_defaults(handler=serve)


def _argument_error(args: argparse.Namespace) -> str:
    checks = [
        (args.batch_size >= 1, f"--batch-size {args.batch_size}: must be at least 1"),
        (args.batch_ms >= 0, f"--batch-ms {args.batch_ms}: must not be negative"),
        (args.pool_size >= 1, f"--pool-size {args.pool_size}: must be at least 1"),
        (args.retention_days >= 0, f"--retention-days {args.retention_days}: must not be negative"),
        (args.stats_every > 0, f"--stats-every {args.stats_every}: must be positive"),
    ]
    return next((message for ok, message in checks if not ok), "")


def serve(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM."""
    try:
        broker = parse_broker_url(args.broker)
    except ValueError as error:
        print(f"--broker: {error}")
        return 2
    problem = _argument_error(args)
    if problem:
        print(problem)
        return 2
    try:
        store = open_store(args.db, pool_size=args.pool_size)
    except DB_ERRORS as error:
        return db_exit(error)
    ingestor = Ingestor(store, args.topic_root, batch_size=args.batch_size, batch_wait_s=args.batch_ms / 1000)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    retention: threading.Thread | None = None
    if args.retention_days > 0:
        retention = threading.Thread(
            target=purge_periodically,
            args=(store, args.retention_days, PURGE_EVERY_S, stopping),
            name="collector-retention",
            daemon=True,
        )
        retention.start()
    ingestor.start(broker, args.share_group, args.client_id, args.ca, args.protocol)
    log.info("collector on %s:%s writing %s", broker.host, broker.port, store.description)
    console = None
    if args.console:
        from edge_agent.collector.commands.console_cmd import start_console

        console = start_console(args, args.console)
        if console is None:
            stopping.set()
    while not stopping.wait(args.stats_every):
        log.info("collector counters: %s", ingestor.counters.json())
    if console is not None:
        console.stop()
    ingestor.stop()
    if retention is not None:
        retention.join(timeout=30)
    store.close()
    log.info("collector stopped: %s", ingestor.counters.json())
    return 0 if console is not None or not args.console else 2
