"""The console's way to the devices: signed HTTP to their clip API, signed MQTT commands (snapshots).

Every request is signed with the CSU's Ed25519 key exactly like `csu-collector fetch-clip` signs its
own; each names the officer (the logged-in user) so that the device's audit line names the person.
A device's public key is the one from provisioning, kept at the CSU as `<device-keys>/<site>/<device>.pub`;
it is never taken from what the device sends.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.collector.console.data import ConsoleData
from edge_agent.collector.download import DeviceEndpoint, FetchError
from edge_agent.collector.ingest import BrokerAddress
from edge_agent.collector.pki import CollectorCredential, optional_credential
from edge_agent.formats.keys import (
    CSU_SEALING_NAME,
    CSU_SIGNING_NAME,
    PRIVATE_SUFFIX,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_private,
)
from edge_agent.formats.mqtt_wire import Topics
from edge_agent.formats.signing import RequestSigner, signed_command
from edge_agent.formats.times import iso_ms

log = logging.getLogger(__name__)


class DeviceError(Exception):
    """A device could not be asked or refused; the message says which and why."""


@dataclass(frozen=True)
class CsuKeys:
    """The CSU's private keys: Ed25519 signs requests, X25519 opens segments."""

    signing: Ed25519PrivateKey
    sealing: X25519PrivateKey
    credential: CollectorCredential | None = None
    """The collector's certificate (`csu-collector pki init`): clips the console fetches are then C2PA-signed
    like those of `fetch-clip`."""

    @classmethod
    def load(cls, directory: Path) -> CsuKeys:
        """Read both from a key directory written by `csu-collector keygen` (KeyFileError if absent)."""
        return cls(
            load_ed25519_private(directory / f"{CSU_SIGNING_NAME}{PRIVATE_SUFFIX}"),
            load_x25519_private(directory / f"{CSU_SEALING_NAME}{PRIVATE_SUFFIX}"),
            optional_credential(directory),
        )


@dataclass(frozen=True)
class Snapshot:
    """A masked frame a device sent (kept in memory only: never written at the CSU)."""

    site: str
    device: str
    camera: str
    captured_at: float
    jpeg: bytes


class CommandLink:
    """Signed MQTT commands to devices and their replies on `cmd_result` (a client of its own)."""

    def __init__(self, broker: BrokerAddress, topic_root: str, signer: RequestSigner, client_id: str) -> None:
        self.topic_root = topic_root.rstrip("/")
        self.signer = signer
        self._pending: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.suppress_exceptions = True
        if broker.username:
            client.username_pw_set(broker.username, broker.password or None)
        if broker.tls:
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_args: self.ready.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        client.connect_async(broker.host, broker.port, 30)
        self._client = client

    def start(self) -> None:
        """Connect in the background."""
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self._client.loop_stop()
        self._client.disconnect()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the console's command link: %s", reason)
            return
        client.subscribe(f"{self.topic_root}/+/+/cmd_result", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            reply = json.loads(message.payload)
        except ValueError:
            return
        request_id = reply.get("request_id") if isinstance(reply, dict) else None
        with self._lock:
            waiting = self._pending.get(str(request_id))
        if waiting is not None:
            waiting.put(reply)

    @contextmanager
    def send(
        self, site: str, device: str, name: str, fields: dict[str, Any], nonce: str | None = None
    ) -> Iterator[queue.Queue[dict[str, Any]]]:
        """Send a signed command (signed with `nonce` when given: an `upload_clip`'s bundle names it);
        its replies (a command like `upload_clip` sends several) arrive on the queue until the block ends."""
        request_id = uuid.uuid4().hex
        replies: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._pending[request_id] = replies
        try:
            payload = signed_command(name, {**fields, "request_id": request_id}, self.signer, nonce)
            topic = f"{Topics(self.topic_root, site, device).base}/cmd/{name}"
            self._client.publish(topic, json.dumps(payload).encode(), qos=1)
            yield replies
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def call(
        self, site: str, device: str, name: str, fields: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """Send a signed command and wait for its reply's `result`; DeviceError on refusal or silence."""
        if not self.ready.wait(min(timeout_s, 5.0)):
            raise DeviceError("the console is not connected to the broker")
        with self.send(site, device, name, fields) as replies:
            try:
                reply = replies.get(timeout=timeout_s)
            except queue.Empty:
                raise DeviceError(f"{site}/{device} did not answer {name} within {timeout_s:g} s") from None
        if not reply.get("ok"):
            raise DeviceError(f"{site}/{device} refused {name}: {reply.get('error', 'no reason given')}")
        result: dict[str, Any] = reply.get("result") or {}
        return result


class DeviceGateway:
    """Signed requests to one device or another, found through the registry."""

    def __init__(
        self,
        data: ConsoleData,
        keys: CsuKeys,
        device_keys: Path,
        link: CommandLink | None = None,
        ca_file: Path | None = None,
        timeout_s: float = 15.0,
    ) -> None:
        self.data = data
        self.keys = keys
        self.device_keys = device_keys
        self.link = link
        self.signer = RequestSigner(keys.signing)
        self.ca_file = ca_file
        self.timeout_s = timeout_s

    def endpoint(self, site: str, device: str) -> DeviceEndpoint:
        """The device's clip API, at the URL of its last status (close it after use)."""
        status = self.data.device_status(site, device)
        if status is None:
            raise DeviceError(f"device {site}/{device} has never been heard by this collector")
        if not status.clip_url:
            raise DeviceError(f"device {site}/{device} published no clip URL (its clip server may be off)")
        return DeviceEndpoint(status.clip_url, self.signer, self.ca_file, self.timeout_s)

    def device_key(self, site: str, device: str) -> Ed25519PublicKey:
        """The device's provisioned public key."""
        path = self.device_keys / site / f"{device}.pub"
        if not path.exists():
            raise DeviceError(f"no provisioned key for {site}/{device}: expected {path}")
        return load_ed25519_public(path)

    def _json(self, site: str, device: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            with self.endpoint(site, device) as endpoint:
                return endpoint.call_json(method, path, **kw)
        except FetchError as error:
            raise DeviceError(f"{site}/{device}: {error}") from None
        except OSError as error:
            raise DeviceError(f"{site}/{device} unreachable: {error}") from None

    def segments(
        self, site: str, device: str, camera: str, start_ts: float, end_ts: float
    ) -> list[dict[str, Any]]:
        """The device's index rows (no footage) of a camera over a range."""
        query = [("camera", camera), ("start", iso_ms(start_ts)), ("end", iso_ms(end_ts))]
        rows: list[dict[str, Any]] = self._json(site, device, "GET", "/v1/segments", query=query)["segments"]
        return rows

    def holds(self, site: str, device: str) -> list[dict[str, Any]]:
        """The device's active holds."""
        holds: list[dict[str, Any]] = self._json(site, device, "GET", "/v1/holds")["holds"]
        return holds

    def add_hold(self, site: str, device: str, body: dict[str, Any]) -> dict[str, Any]:
        """Place a hold (body: camera, start, end, requisition, expires?, officer)."""
        return self._json(site, device, "POST", "/v1/holds", body=json.dumps(body).encode())

    def release_hold(self, site: str, device: str, hold_id: str) -> dict[str, Any]:
        """Release a hold by id."""
        return self._json(site, device, "DELETE", f"/v1/holds/{hold_id}")

    def snapshot(self, site: str, device: str, camera: str, officer: str) -> Snapshot:
        """The camera's latest masked frame, by the device's signed `snapshot` command."""
        if self.link is None:
            raise DeviceError("snapshots need the broker: start the console with --broker")
        result = self.link.call(
            site, device, "snapshot", {"camera": camera, "officer": officer}, self.timeout_s
        )
        try:
            jpeg = base64.b64decode(result["jpeg_base64"], validate=True)
            captured_at = float(result.get("captured_at") or 0.0)
        except (KeyError, ValueError, TypeError) as error:
            raise DeviceError(f"{site}/{device} sent an unusable snapshot ({error})") from None
        if not jpeg.startswith(b"\xff\xd8"):
            raise DeviceError(f"{site}/{device} sent a snapshot that is not a JPEG")
        return Snapshot(site, device, camera, captured_at, jpeg)
