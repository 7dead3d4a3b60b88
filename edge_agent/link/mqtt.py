"""The device's MQTT link (paho-mqtt 2): availability, status, motion events through the outbox, commands.

Topics and payloads are those of DESIGN.md section 4 (`mqtt_wire`; the status document is built by
`edge_agent.link.status`). `make_client` is the one paho client set-up (protocol, credentials, TLS), also
used by `edge-agent doctor`. Guarantees:
- availability is retained, `online` on every connection and `offline` from the last will (a killed
  process, a cut fiber) or from a clean `stop()`;
- status is retained, published on connection, soon after `status_changed()` (at most one per second),
  when a check every `status_interval_s` finds that something the CSU watches changed (`change_key`),
  and at least every `status_heartbeat_s` (a metered 4G link pays for every status);
- motion events go through the SQLite outbox: stored before sending, removed on PUBACK, resent after a
  reconnect or an agent restart, in order (the collector deduplicates a redelivered message);
- a command is answered on `.../cmd_result`; a malformed or unknown command, a missing, failing or
  hung handler all become an error reply naming what is wrong, never an exception in the agent;
- a reply's `ok` is the command's outcome, one rule for every command (`mqtt_wire.cmd_result_payload`):
  a handler refuses by raising `CommandError`, or by returning a result whose `ok` is false (the layers
  below the device, such as the clip API's holds and uploads, cannot import this module): either way
  the reply says `ok: false` with the `error`, and a refusing result is kept in it for its reason code.

Threads: paho's network thread only records acknowledgements and queues commands; a sender thread
moves messages from the outbox to paho and publishes status; a command thread answers commands one at
a time (a snapshot may take a second, which must not delay events), each handler in a thread of its
own so that one that hangs is answered as timed out and does not block the commands behind it.
"""

from __future__ import annotations

import logging
import queue
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.formats.clip_url import advertised_clip_url
from edge_agent.formats.config import AgentConfig
from edge_agent.formats.mqtt_wire import (
    MotionEventLike,
    PayloadError,
    StatusMessage,
    Topics,
    cmd_result_payload,
    encode,
    motion_payload,
    parse_command,
)
from edge_agent.formats.times import Clock
from edge_agent.link import health
from edge_agent.link.outbox import Outbox
from edge_agent.link.status import DeviceReport, LinkStats, build_status, change_key

log = logging.getLogger(__name__)

StatusProvider = Callable[[], DeviceReport]
"""The agent's part of the status: its cameras and the oldest footage kept."""

CommandHandler = Callable[[dict[str, Any]], Mapping[str, Any]]
"""Takes the command's JSON arguments, returns a JSON-able result; refuses by raising CommandError or
by returning a result with `"ok": false` (and `error`, `message`)."""

MIN_STATUS_GAP_S = 1.0
SPILL_MAX = 2_000
"""Events held in memory while the outbox cannot be written; beyond, the oldest is dropped and counted."""
_OFFLINE = b'"offline"'
_ONLINE = b'"online"'


class CommandError(Exception):
    """A command refused for a reason the CSU should read (bad argument, nothing to hold...)."""


class ClientSetupError(ValueError):
    """The MQTT client cannot be set up as configured; the message names the field."""


def make_client(config: AgentConfig, client_id: str = "") -> mqtt.Client:
    """A paho client set up from `config.mqtt`: protocol, credentials, TLS, reconnect delays, in-flight.

    Not connected, no callbacks. `client_id` defaults to the configured one, else `edge-{site}-{device}`;
    a tool that must not take a running agent's place (doctor) passes its own. A TLS file that cannot be
    loaded raises ClientSetupError here, before any connection.
    """
    cfg = config.mqtt
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or cfg.client_id or f"edge-{config.site_id}-{config.device_id}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    # A bug in a callback must not kill paho's network thread (and with it the link).
    client.suppress_exceptions = True
    client.enable_logger(logging.getLogger(__name__ + ".paho"))
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password or None)
    if cfg.tls is not None:
        try:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            )
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise ClientSetupError(f"mqtt.tls: cannot load the TLS files: {error}") from None
    client.reconnect_delay_set(cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s))
    client.max_inflight_messages_set(cfg.max_inflight)
    return client


def local_address(client: mqtt.Client) -> str:
    """The local address of the client's connection ("" without one, or over a websocket transport)."""
    sock = client.socket()
    try:
        return str(sock.getsockname()[0]) if isinstance(sock, socket.socket) else ""
    except OSError:  # the connection is already gone
        return ""


def route_address(host: str, port: int) -> str:
    """The local address this host would use to reach `host` ("" when it cannot tell).

    A UDP connect() only looks the route up in the kernel: no packet is sent.
    """
    try:
        family, kind, proto, _name, target = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            return str(probe.getsockname()[0])
    except (OSError, IndexError):
        return ""


class MqttLink:
    """One device's connection to the CSU broker."""

    def __init__(
        self,
        config: AgentConfig,
        status_provider: StatusProvider,
        handlers: Mapping[str, CommandHandler] | None = None,
        clip_port: int | None = None,
        clock: Clock = time.time,
    ) -> None:
        """Open the outbox (events can be queued before `start()`); nothing connects yet.

        `clip_port` is the port the clip server listens on, when it differs from the configured one.
        """
        self.config = config
        self.mqtt_config = config.mqtt
        self.topics = Topics(config.mqtt.topic_root, config.site_id, config.device_id)
        self._status_provider = status_provider
        self._handlers = dict(handlers or {})
        self._clip_port = clip_port
        self._clock = clock
        self._started_at = clock()
        self.client = make_client(config)  # first: a TLS error must not leave the outbox open
        self.outbox = Outbox(config.mqtt.outbox_path, config.mqtt.outbox_max_messages)
        self.client.will_set(self.topics.availability, _OFFLINE, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._acks: deque[tuple[int, int]] = deque()
        self._handed: dict[int, int] = {}  # paho mid -> outbox id, touched by the sender thread only
        self._cursor = 0  # highest outbox id handed to paho
        self._status_due = True
        self._last_status = 0.0
        self._last_check = 0.0
        self._published_key: tuple[object, ...] | None = None
        self._commands: queue.Queue[tuple[str, bytes, Properties | None] | None] = queue.Queue()
        self._command_timeout_s = config.mqtt.command_timeout_s
        self._running_handlers: dict[str, threading.Thread] = {}  # command thread only
        self._threads: list[threading.Thread] = []
        self._connections = 0
        self._rejected = 0
        self._command_count = 0
        self._command_errors = 0
        self._last_error = ""
        self._local_ip = ""
        self._final_stats: LinkStats | None = None
        self._spill: deque[tuple[str, bytes]] = deque()  # events the outbox could not take yet
        self._spill_lock = threading.Lock()
        self._spill_lost = 0

    # --- set-up ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the sender and command threads."""
        cfg = self.mqtt_config
        if cfg.protocol == "5":
            self.client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, clean_start=True)
        else:
            self.client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        self.client.loop_start()
        for target, name in ((self._send_loop, "mqtt-sender"), (self._command_loop, "mqtt-commands")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, drain_timeout_s: float = 2.0) -> None:
        """Publish `offline`, wait a little for in-flight acknowledgements, disconnect, close the outbox.

        Messages not acknowledged by then stay in the outbox for the next start. Events still held in
        memory (the outbox could not be written) get a last try; those it cannot take are lost with the
        process: logged, and counted as dropped.
        """
        self._stopping.set()
        self._wake.set()
        self._commands.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._drain_spill()
        with self._spill_lock:
            if self._spill:
                log.error(
                    "%d motion event(s) held in memory are lost: the outbox could not take them",
                    len(self._spill),
                )
                self._spill_lost += len(self._spill)
                self._spill.clear()
        if self.client.is_connected():
            deadline = time.monotonic() + drain_timeout_s
            while self._handed and time.monotonic() < deadline:
                time.sleep(0.02)
                self._apply_acks()
            info = self.client.publish(self.topics.availability, _OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=drain_timeout_s)
            except (RuntimeError, ValueError) as error:
                log.warning("offline message not confirmed before disconnecting: %s", error)
        # Stop the network thread first: disconnecting under it makes paho log a spurious
        # "not connected" error; without the thread, disconnect() sends DISCONNECT itself.
        self.client.loop_stop()
        self.client.disconnect()
        self._final_stats = self.stats()
        self.outbox.close()

    # --- public API -----------------------------------------------------------------------------

    def publish_event(self, event: MotionEventLike) -> int:
        """Queue a motion event phase; its outbox id once committed to disk, 0 while held in memory.

        When the outbox cannot be written (a full disk, an I/O error), the event waits in memory, in
        order behind any already waiting, and the sender moves it to the outbox as soon as a write
        succeeds: a disk filled by something else costs no event until SPILL_MAX of them wait.
        """
        payload = encode(motion_payload(event))
        topic = self.topics.motion(event.camera_id)
        message_id = 0
        with self._spill_lock:
            if self._spill:
                self._hold_in_memory(topic, payload)  # behind those already waiting: order is kept
            else:
                try:
                    message_id = self.outbox.put(topic, payload, qos=1, now=self._clock())
                except (sqlite3.Error, OSError) as error:
                    log.warning("outbox write failed (%s): events wait in memory until it succeeds", error)
                    self._last_error = f"outbox: {error}"
                    self._hold_in_memory(topic, payload)
        self._wake.set()
        return message_id

    def _hold_in_memory(self, topic: str, payload: bytes) -> None:
        if len(self._spill) >= SPILL_MAX:
            self._spill.popleft()
            self._spill_lost += 1
        self._spill.append((topic, payload))

    def _drain_spill(self) -> None:
        """Move events held in memory to the outbox, oldest first, while writes succeed."""
        with self._spill_lock:
            while self._spill:
                topic, payload = self._spill[0]
                try:
                    self.outbox.put(topic, payload, qos=1, now=self._clock())
                except (sqlite3.Error, OSError):
                    return
                self._spill.popleft()
            if self._last_error.startswith("outbox:"):
                log.info("outbox writable again: events held in memory are on disk")
                self._last_error = ""

    def status_changed(self) -> None:
        """A camera changed state: publish status soon (coalesced, at most one per second)."""
        self._status_due = True
        self._wake.set()

    def stats(self) -> LinkStats:
        """Connection and outbox counters (the last ones once stopped)."""
        if self._final_stats is not None:
            return self._final_stats
        outbox = self.outbox.stats()
        return LinkStats(
            connected=self.client.is_connected(),
            connections=self._connections,
            outbox_pending=outbox.pending + len(self._spill),
            outbox_dropped=outbox.dropped + self._spill_lost,
            outbox_corrupt_files=outbox.corrupt_files,
            rejected=self._rejected,
            commands=self._command_count,
            command_errors=self._command_errors,
            last_error=self._last_error,
        )

    def publish_result(self, command: str, result: Mapping[str, Any], request_id: Any = None) -> None:
        """A further reply on `cmd_result` of a command that goes on after its handler returned (the
        progress and outcome of `upload_clip`)."""
        payload = cmd_result_payload(command, self._clock(), request_id, result)
        self.client.publish(self.topics.cmd_result, encode(payload), qos=1)

    def wait_delivered(self, timeout_s: float) -> bool:
        """Block until the outbox is empty (every event acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.outbox.stats().pending == 0 and not self._spill:
                return True
            time.sleep(0.02)
        return False

    def build_status(self) -> StatusMessage:
        """The status document now: the agent's report, health, outbox and link counters, clip URL."""
        now = self._clock()
        error = ""
        try:
            report = self._status_provider()
        except Exception as failure:  # the provider is the agent's code: report, do not die
            log.exception("status provider failed")
            report, error = DeviceReport(), f"{type(failure).__name__}: {failure}"
        return build_status(
            self.config,
            report,
            now=now,
            started_at=self._started_at,
            health=health.sample(self.config.storage.path, self.config.storage.max_bytes),
            link=self.stats(),
            clip_url=self.clip_url(),
            error=error,
        )

    def clip_url(self) -> str:
        """The clip API URL published in status (`edge_agent.formats.clip_url`'s rule), a wildcard bind
        advertised under the local address of the broker connection ("" before the first one)."""
        return advertised_clip_url(self.config.clip_server, self._local_ip, self._clip_port)

    # --- paho callbacks (network thread: record and wake, nothing slow) ---------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self._last_error = f"broker refused the connection: {reason}"
            log.error("%s (%s:%s)", self._last_error, self.mqtt_config.host, self.mqtt_config.port)
            return
        self._connections += 1
        self._last_error = ""
        self._local_ip = local_address(client) or route_address(self.mqtt_config.host, self.mqtt_config.port)
        log.info("connected to %s:%s", self.mqtt_config.host, self.mqtt_config.port)
        client.publish(self.topics.availability, _ONLINE, qos=1, retain=True)
        client.subscribe(self.topics.commands, qos=1)
        self._status_due = True
        self._wake.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if not self._stopping.is_set():
            # A refused CONNECT is followed by a disconnect: keep the refusal, it says why.
            self._last_error = self._last_error or f"disconnected: {reason}"
            log.warning("broker connection lost (%s); events wait in the outbox", reason)

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        self._acks.append((mid, reason.value))
        self._wake.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        name = message.topic.rsplit("/", 1)[-1]
        self._commands.put((name, bytes(message.payload), getattr(message, "properties", None)))

    # --- sender thread --------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                self._drain_spill()
                self._apply_acks()
                if self.client.is_connected():
                    self._pump()
                    self._maybe_publish_status()
            except Exception:  # keep the link alive; the next wake retries
                log.exception("MQTT sender step failed")
                time.sleep(0.5)

    def _apply_acks(self) -> None:
        while self._acks:
            mid, reason = self._acks.popleft()
            message_id = self._handed.pop(mid, None)
            if message_id is None:
                continue  # status, availability or a command reply: not from the outbox
            if reason >= 0x80:
                # The broker refused it (ACL, quota): resending would block every later event.
                self._rejected += 1
                log.error("broker refused outbox message %d (reason 0x%02x); dropped", message_id, reason)
            self.outbox.ack(message_id)

    def _pump(self) -> None:
        room = self.mqtt_config.max_inflight - len(self._handed)
        if room <= 0:
            return
        for message in self.outbox.pending(after_id=self._cursor, limit=room):
            info = self.client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("paho refused outbox message %d: %s", message.id, mqtt.error_string(info.rc))
                return
            # Even with NO_CONN paho keeps the message and sends it, in order, after reconnecting.
            self._handed[info.mid] = message.id
            self._cursor = message.id

    def _maybe_publish_status(self) -> None:
        now = time.monotonic()
        since = now - self._last_status
        asked = self._status_due and since >= MIN_STATUS_GAP_S
        if not (asked or now - self._last_check >= self.mqtt_config.status_interval_s):
            return
        self._last_check = now
        message = self.build_status()
        key = change_key(message)
        if not asked and key == self._published_key and since < self.mqtt_config.status_heartbeat_s:
            return
        self._status_due = False
        self._last_status = now
        self._published_key = key
        self.client.publish(self.topics.status, encode(message.wire()), qos=1, retain=True)

    # --- command thread -------------------------------------------------------------------------

    def _command_loop(self) -> None:
        while True:
            item = self._commands.get()
            if item is None:
                return
            name, raw, props = item
            try:
                self._answer(name, raw, props)
            except Exception:
                log.exception("could not answer command %r", name)

    def _answer(self, name: str, raw: bytes, props: Properties | None) -> None:
        self._command_count += 1
        request_id: Any = None
        result: Mapping[str, Any] = {}
        error = ""
        try:
            args = parse_command(name, raw)
            request_id = args.get("request_id")
            handler = self._handlers.get(name)
            if handler is None:
                raise CommandError(f"command {name!r} is not supported on this device")
            result = self._run_handler(name, handler, args)
        except (PayloadError, CommandError) as refused:
            error = f"{name}: {refused}"
        except Exception as failure:  # a handler bug: answer and keep going
            log.exception("command %r failed", name)
            error = f"{name} failed: {type(failure).__name__}: {failure}"
        payload = cmd_result_payload(name, self._clock(), request_id, result, error)
        if not payload["ok"]:
            self._command_errors += 1
            log.warning("command refused: %s", payload["error"])
        reply_props = None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        if correlation is not None and self.mqtt_config.protocol == "5":
            reply_props = Properties(PacketTypes.PUBLISH)
            reply_props.CorrelationData = correlation
        self.client.publish(self.topics.cmd_result, encode(payload), qos=1, properties=reply_props)

    def _run_handler(self, name: str, handler: CommandHandler, args: dict[str, Any]) -> Mapping[str, Any]:
        """Run a handler in its own thread; CommandError when it is still running after the time limit.

        A Python thread cannot be killed: a hung handler is left running, and the same command is
        refused until it returns, so that hung calls do not pile up.
        """
        previous = self._running_handlers.get(name)
        if previous is not None and previous.is_alive():
            raise CommandError(f"the previous {name} is still running")
        outcome: list[Mapping[str, Any] | BaseException] = []

        def call() -> None:
            try:
                outcome.append(handler(args))
            except BaseException as error:  # handed to the command thread, which answers with it
                outcome.append(error)

        worker = threading.Thread(target=call, name=f"mqtt-cmd-{name}", daemon=True)
        self._running_handlers[name] = worker
        worker.start()
        worker.join(self._command_timeout_s)
        if not outcome:
            log.error("command %r still running after %.1f s", name, self._command_timeout_s)
            raise CommandError(
                f"no answer within {self._command_timeout_s:g} s (still running on the device)"
            )
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]
