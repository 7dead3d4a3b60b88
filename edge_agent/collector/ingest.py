"""`csu-collector serve`: follow the fleet over MQTT and keep the registry (collector/store.py).

The collector keeps a persistent session (fixed client id, clean start off, QoS 1 subscriptions), so
messages published while it is restarting, or while the broker restarts with persistence, are queued
for it. Several collectors can split the load with a shared subscription (`--share-group G` subscribes
to `$share/G/...`; note that brokers do not send retained messages on shared subscriptions).

paho's network thread only queues messages; a writer thread stores them in batches (one commit for
whatever arrived meanwhile), which keeps latency low at rest and throughput high under load. A payload
that does not parse or fails its schema is counted, logged with its topic, and skipped.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.collector.store import Store
from edge_agent.formats.mqtt_wire import (
    PayloadError,
    collector_filters,
    parse_availability,
    parse_motion,
    parse_status,
    parse_topic,
)
from edge_agent.formats.times import Clock

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
BATCH_MAX = 1000


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


@dataclass
class IngestCounters:
    """What the collector did since it started."""

    received: int = 0
    stored: int = 0
    duplicate: int = 0
    stale: int = 0
    malformed: int = 0
    ignored: int = 0


class Ingestor:
    """Parses device messages and writes them to the store; `start()` connects it to a broker."""

    def __init__(
        self,
        store: Store,
        topic_root: str = "csu/v1",
        clock: Clock = time.time,
    ) -> None:
        """Handle messages under `topic_root` into `store`."""
        self.store = store
        self.topic_root = topic_root.rstrip("/")
        self.clock = clock
        self.counters = IngestCounters()
        self.ready = threading.Event()
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None
        self._share_group = ""
        self._stopping = False

    # --- pure handling (no broker needed) -------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> str:
        """Store one message; returns what happened: stored, duplicate, stale, malformed or ignored."""
        self.counters.received += 1
        now = self.clock()
        try:
            where = parse_topic(self.topic_root, topic)
            if where.kind == "availability":
                self.store.record_availability(where.site, where.device, parse_availability(payload), now)
                outcome = "stored"
            elif where.kind == "status":
                status = parse_status(payload, where)
                stored = self.store.record_status(status, payload.decode("utf-8"), now)
                outcome = "stored" if stored else "stale"
            elif where.kind == "motion":
                event = parse_motion(payload)
                inserted = self.store.record_motion(where.site, where.device, where.camera, event, now)
                outcome = "stored" if inserted else "duplicate"
            else:
                outcome = "ignored"
        except PayloadError as error:
            log.warning("malformed payload on %s skipped: %s", topic, error)
            self.store.record_malformed(topic, str(error), now)
            outcome = "malformed"
        setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
        return outcome

    def handle_batch(self, messages: list[tuple[str, bytes]]) -> None:
        """Store several messages in one transaction."""
        with self.store.batch():
            for topic, payload in messages:
                self.handle(topic, payload)

    # --- broker connection ----------------------------------------------------------------------

    def start(
        self,
        broker: BrokerAddress,
        share_group: str = "",
        client_id: str = "",
        ca_file: Path | None = None,
        protocol: str = "5",
    ) -> None:
        """Connect (persistent session), subscribe at QoS 1 and start storing in the background."""
        self._share_group = share_group
        v5 = protocol == "5"
        if not client_id:
            client_id = f"csu-collector-{socket.gethostname()}" + (f"-{share_group}" if share_group else "")
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        client.suppress_exceptions = True
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
            client.connect_async(broker.host, broker.port, 30, clean_start=False, properties=props)
        else:
            client.connect_async(broker.host, broker.port, 30)
        self._client = client
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer", daemon=True)
        self._writer.start()
        client.loop_start()

    def stop(self) -> None:
        """Disconnect and store what is already queued."""
        self._stopping = True
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join(timeout=30)

    def _filters(self) -> list[str]:
        filters = collector_filters(self.topic_root)
        if self._share_group:
            filters = [f"$share/{self._share_group}/{f}" for f in filters]
        return filters

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the collector: %s", reason)
            return
        log.info("collector connected (session present: %s)", getattr(flags, "session_present", "?"))
        client.subscribe([(f, 1) for f in self._filters()])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("subscriptions refused by the broker: %s", ", ".join(refused))
            return
        self.ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.ready.clear()
        if not self._stopping:
            log.warning("collector lost the broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload)))

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[tuple[str, bytes]] = []
            done = item is None
            if item is not None:
                batch.append(item)
            while not done and len(batch) < BATCH_MAX:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                else:
                    batch.append(item)
            if batch:
                try:
                    self.handle_batch(batch)
                except Exception:  # a store failure must not stop ingestion of later messages
                    log.exception("could not store %d message(s)", len(batch))
            if done:
                return


# --- command ------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `csu-collector serve`."""
    parser = subparsers.add_parser("serve", help="follow the fleet over MQTT into the registry database")
    parser.add_argument("--broker", required=True, help="mqtt://[user:pass@]host[:port] or mqtts://...")
    parser.add_argument("--db", required=True, type=Path, help="SQLite registry file (created if missing)")
    parser.add_argument("--share-group", default="", help="shared subscription group ($share/GROUP/...)")
    parser.add_argument("--topic-root", default="csu/v1", help="topic root of the devices (default csu/v1)")
    parser.add_argument("--client-id", default="", help="MQTT client id (stable: it keeps the session)")
    parser.add_argument("--ca", type=Path, default=None, help="CA bundle for mqtts://")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")
    parser.add_argument("--stats-every", type=float, default=60.0, help="seconds between counter logs")
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM."""
    try:
        broker = parse_broker_url(args.broker)
    except ValueError as error:
        print(f"--broker: {error}")
        return 2
    store = Store(args.db)
    ingestor = Ingestor(store, args.topic_root)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    ingestor.start(broker, args.share_group, args.client_id, args.ca, args.protocol)
    log.info("collector on %s:%s writing %s", broker.host, broker.port, args.db)
    while not stopping.wait(args.stats_every):
        log.info("collector counters: %s", ingestor.counters)
    ingestor.stop()
    store.close()
    log.info("collector stopped: %s", ingestor.counters)
    return 0
