"""One device wired together: camera workers, recorder, ring buffer, MQTT link, clip server, hot-plug.

`Agent.start()` brings the parts up in dependency order (keys, ring buffer, audit log, clip server,
MQTT link, cameras, hot-plug) and `stop()` takes them down in reverse, so that the last status says
`offline` only after every camera has sealed its segment in flight. `tick()` is the supervision step the
`run` command (and the demo) calls twice a second: it notices camera state changes and asks the MQTT link
for a fresh status.

Cameras named by a USB identity (`source.usb_id`) are not opened at start: hot-plug attaches them to
whatever /dev node they appear on.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import logging
import os
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge_agent.api.clip_server import ClipServer, ClipServerThread, StatsProviders
from edge_agent.api.delivery import request_verifier
from edge_agent.api.holds import HoldService
from edge_agent.api.snapshots import NoFrame, SnapshotService
from edge_agent.api.uploader import Uploader
from edge_agent.camera.pipeline import CameraWorker, FrameSink
from edge_agent.camera.sources import open_source
from edge_agent.device.hotplug import CameraIdentity, HotplugTracker, UdevWatcher
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.config import AgentConfig, CameraConfig, ConfigError, RecordingMode, load_config
from edge_agent.formats.keys import (
    KeyFileError,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_public,
)
from edge_agent.formats.mqtt_wire import CameraStatus
from edge_agent.formats.signing import RequestVerifier
from edge_agent.formats.times import Clock
from edge_agent.link.mqtt import ClientSetupError, CommandError, MqttLink
from edge_agent.link.status import CameraReport, DeviceReport, camera_status, camera_statuses
from edge_agent.storage.recorder import Recorder
from edge_agent.storage.ringbuffer import RingBuffer

log = logging.getLogger(__name__)


class AgentError(Exception):
    """The agent cannot start as configured; the message names the field or file to fix."""


@dataclass(frozen=True)
class DeviceKeys:
    """Key material from provisioning: the device signs, the CSU key seals, collectors may ask."""

    device: Ed25519PrivateKey
    csu_sealing: X25519PublicKey
    collectors: list[Ed25519PublicKey]


def load_device_keys(config: AgentConfig) -> DeviceKeys:
    """Load every key the config names; AgentError naming the `keys.*` field otherwise."""
    keys = config.keys
    try:
        device = load_ed25519_private(keys.device_key)
    except KeyFileError as error:
        raise AgentError(f"keys.device_key: {error} (create it with `edge-agent keygen`)") from None
    try:
        sealing = load_x25519_public(keys.csu_sealing_public_key)
    except KeyFileError as error:
        raise AgentError(f"keys.csu_sealing_public_key: {error}") from None
    collectors = []
    for index, path in enumerate(keys.collector_public_keys):
        try:
            collectors.append(load_ed25519_public(path))
        except KeyFileError as error:
            raise AgentError(f"keys.collector_public_keys[{index}]: {error}") from None
    return DeviceKeys(device, sealing, collectors)


@dataclass
class _CameraSlot:
    """A configured camera and, while it runs, its worker and recorder."""

    config: CameraConfig
    worker: CameraWorker | None = None
    recorder: Recorder | None = None
    device_node: str = ""


class Agent:
    """Runs one device until `stop()`."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path | None = None,
        *,
        clock: Clock = time.time,
        source_factory: Any = open_source,
        hotplug: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._clock = clock
        self._source_factory = source_factory
        self._hotplug_enabled = hotplug
        self._lock = threading.RLock()
        self._slots: dict[str, _CameraSlot] = {}
        self._unconfigured: dict[str, str] = {}
        self._last_states: dict[str, str] = {}
        self.keys: DeviceKeys | None = None
        self.ring: RingBuffer | None = None
        self.audit: AuditLog | None = None
        self.verifier: RequestVerifier | None = None
        self.uploader: Uploader | None = None
        self.clip_server: ClipServer | None = None
        self._clip_thread: ClipServerThread | None = None
        self.mqtt: MqttLink | None = None
        self._hotplug: HotplugTracker | None = None
        self._watcher: UdevWatcher | None = None

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bring every part up; on AgentError whatever had started is stopped again."""
        try:
            self._start_parts()
        except AgentError:
            self.stop()
            raise

    def _start_parts(self) -> None:
        self.keys = load_device_keys(self.config)
        storage = self.config.storage
        try:
            self.ring = RingBuffer(storage.path, storage, self._clock, device_key=self.keys.device)
        except (OSError, sqlite3.Error) as error:
            raise AgentError(
                f"storage.path: cannot open the ring buffer in {storage.path}: {error}"
            ) from None
        self.ring.start()
        try:
            self.audit = AuditLog(self.config.clip_server.audit_log, self._clock)
        except OSError as error:
            raise AgentError(f"clip_server.audit_log: {error}") from None
        self.verifier = request_verifier(self.config.clip_server, self.keys.collectors, self._clock)
        self.uploader = Uploader(
            self.config,
            self.ring,
            self.audit,
            self.keys.device,
            self.verifier,
            self._publish_upload,
            self._clock,
        )
        clip_port = self._start_clip_server(self.keys, self.ring, self.audit)
        if self.config.mqtt.enabled:
            try:
                self.mqtt = MqttLink(
                    self.config, self.device_report, self._command_handlers(), clip_port, self._clock
                )
            except ClientSetupError as error:
                raise AgentError(str(error)) from None
            except (OSError, sqlite3.Error) as error:
                raise AgentError(
                    f"mqtt.outbox_path: cannot open {self.config.mqtt.outbox_path}: {error}"
                ) from None
            self.mqtt.start()
        with self._lock:
            for camera in self.config.cameras:
                slot = _CameraSlot(camera)
                self._slots[camera.id] = slot
                if not camera.source.usb_id:
                    self._start_camera(slot)
        self._start_hotplug()

    def _start_clip_server(self, keys: DeviceKeys, ring: RingBuffer, audit: AuditLog) -> int | None:
        """Start the clip API; the port it listens on, or None when disabled."""
        settings = self.config.clip_server
        if not settings.enabled:
            return None
        self.clip_server = ClipServer(
            self.config,
            ring,
            audit,
            keys.device,
            keys.collectors,
            StatsProviders(cameras=self._running_camera_statuses, outbox_depth=self._outbox_depth),
            self._clock,
            self.verifier,
        )
        thread = ClipServerThread(self.clip_server)
        try:
            thread.start()
        except (OSError, ssl.SSLError) as error:
            raise AgentError(
                f"clip_server: cannot listen on {settings.bind}:{settings.port}: {error}"
            ) from None
        self._clip_thread = thread
        return self.clip_server.port

    def stop(self) -> None:
        """Stop cameras first (their segments get sealed), then the links, then storage.

        Safe on a partly started agent and when called twice; a part that fails to stop is logged and
        the others are still stopped (the ring buffer's index is closed last, whatever happened).
        """
        if self._watcher is not None:
            _stop_part("hot-plug", self._watcher.stop)
            self._watcher = None
        with self._lock:
            for slot in self._slots.values():
                _stop_part(f"camera {slot.config.id}", functools.partial(self._stop_camera, slot))
        if self.uploader is not None:
            _stop_part("uploader", self.uploader.stop)
        if self.mqtt is not None:
            _stop_part("MQTT link", self.mqtt.stop)
            self.mqtt = None
        if self._clip_thread is not None:
            _stop_part("clip server", self._clip_thread.stop)
            self._clip_thread = None
        if self.ring is not None:
            _stop_part("ring buffer", self.ring.close)
            self.ring = None

    def tick(self) -> None:
        """Supervision step: a camera changed state -> a fresh status soon."""
        states = {entry.id: entry.state for entry in self.camera_statuses()}
        if states != self._last_states:
            self._last_states = states
            if self.mqtt is not None:
                self.mqtt.status_changed()

    # ---- cameras ------------------------------------------------------------------------------

    def _start_camera(self, slot: _CameraSlot, device_node: str = "") -> None:
        camera = slot.config
        if device_node:
            camera = camera.model_copy(
                update={"source": camera.source.model_copy(update={"uri": device_node})}
            )
        sinks: list[FrameSink] = []
        if camera.recording is not RecordingMode.OFF:
            assert self.ring is not None and self.keys is not None
            slot.recorder = Recorder(
                camera,
                self.config.storage,
                self.ring,
                self.keys.device,
                self.keys.csu_sealing,
                device_id=self.config.device_id,
            )
            sinks.append(slot.recorder)
        event_sinks = [self.mqtt.publish_event] if self.mqtt is not None else []
        slot.worker = CameraWorker(camera, sinks, event_sinks, self._source_factory, self._clock)
        slot.device_node = device_node
        slot.worker.start()

    def _stop_camera(self, slot: _CameraSlot) -> None:
        if slot.worker is not None:
            slot.worker.stop()
        slot.worker = None
        slot.recorder = None
        slot.device_node = ""

    def device_report(self) -> DeviceReport:
        """What the agent knows for the status document (`edge_agent.link.status` builds it)."""
        report = self._cameras_report()
        if self.ring is None:
            return report
        starts = [float(oldest) for s in self.ring.stats().values() if (oldest := s.get("oldest_ts"))]
        space = self.ring.space()
        return dataclasses.replace(
            report,
            oldest_ts=min(starts) if starts else None,
            deleted=self.ring.deleted(),
            footage_bytes=space.footage_bytes,
            disk_problem=space.problem(),
            audit=None if self.audit is None else self.audit.usage(),
        )

    def camera_statuses(self) -> list[CameraStatus]:
        """Every camera's status entry: configured ones, then unconfigured USB cameras."""
        return camera_statuses(self._cameras_report())

    def _cameras_report(self) -> DeviceReport:
        with self._lock:
            cameras = [_camera_report(slot) for slot in self._slots.values()]
            return DeviceReport(cameras, dict(self._unconfigured))

    def _running_camera_statuses(self) -> dict[str, CameraStatus]:
        """The entries of the cameras that have a worker, for the clip server's /metrics."""
        with self._lock:
            running = [_camera_report(slot) for slot in self._slots.values() if slot.worker is not None]
        return {report.config.id: camera_status(report) for report in running}

    def _outbox_depth(self) -> int:
        return self.mqtt.stats().outbox_pending if self.mqtt is not None else 0

    # ---- hot-plug (CameraSupervisor, called from the udev thread) -------------------------------

    def _start_hotplug(self) -> None:
        """Watch udev even when no camera is named by USB identity, so that a camera a technician
        plugs in unannounced shows up as `unconfigured` at the CSU."""
        if not self._hotplug_enabled:
            return
        self._hotplug = HotplugTracker(self.config.cameras, self)
        try:
            self._watcher = UdevWatcher(self._hotplug)
            self._watcher.start()
        except (RuntimeError, OSError, ImportError) as error:
            self._watcher = None
            if any(c.source.usb_id for c in self.config.cameras):
                log.error("hot-plug unavailable (%s): USB cameras named by usb_id stay disconnected", error)
            else:
                log.info("hot-plug unavailable (%s): unannounced USB cameras will not be reported", error)

    def attach(self, camera_id: str, device_node: str) -> None:
        """A configured USB camera appeared on `device_node`: (re)start its worker there."""
        with self._lock:
            slot = self._slots.get(camera_id)
            if slot is None:
                return
            if slot.worker is not None and slot.device_node == device_node:
                return
            self._stop_camera(slot)
            log.info("camera %s attached on %s", camera_id, device_node)
            self._start_camera(slot, device_node)

    def detach(self, camera_id: str) -> None:
        """A configured USB camera vanished: stop it, it shows as `disconnected`."""
        with self._lock:
            slot = self._slots.get(camera_id)
            if slot is not None and slot.worker is not None:
                log.warning("camera %s disconnected from %s", camera_id, slot.device_node)
                self._stop_camera(slot)

    def report_unconfigured(self, identity: CameraIdentity, device_node: str) -> None:
        """A USB camera no config names: shown in status, never opened (privacy fails closed).

        A node that a configured camera opens by path (`source: /dev/video0`) is not a stranger.
        """
        with self._lock:
            if self._node_in_use(device_node):
                return
            self._unconfigured[identity.keys[0]] = device_node
        log.warning(
            "unconfigured camera %s on %s: not recording until a config with masks names it",
            identity,
            device_node,
        )

    def _node_in_use(self, device_node: str) -> bool:
        node = os.path.realpath(device_node)
        for camera in self.config.cameras:
            uri = camera.source.uri
            path = f"/dev/video{uri}" if uri.isdigit() else uri
            if uri and os.path.realpath(path) == node:
                return True
        return False

    def forget_unconfigured(self, identity: CameraIdentity) -> None:
        """The unconfigured camera was unplugged."""
        with self._lock:
            self._unconfigured.pop(identity.keys[0], None)

    # ---- commands -----------------------------------------------------------------------------

    def _command_handlers(self) -> dict[str, Any]:
        handlers: dict[str, Any] = {"reload": self.reload_command}
        if self.audit is not None and self.verifier is not None:
            snapshots = SnapshotService(self.audit, self.verifier, self._camera_ids, self.latest_snapshot)
            handlers["snapshot"] = snapshots.handle_command
        if self.uploader is not None:
            handlers["upload_clip"] = self.uploader.handle_command
        holds = self._hold_service()
        verifier = self.verifier
        if holds is not None and verifier is not None:
            # Holds by MQTT work with the clip server disabled too: a nomad kit behind carrier NAT must
            # still be able to keep footage for a procedure.
            handlers["hold"] = lambda payload: holds.handle_command("hold", payload, verifier)
            handlers["release"] = lambda payload: holds.handle_command("release", payload, verifier)
        return handlers

    def _hold_service(self) -> HoldService | None:
        if self.clip_server is not None:
            return self.clip_server.holds
        if self.ring is None or self.audit is None:
            return None
        return HoldService(self.ring, self.audit, self._camera_ids(), self._clock)

    def _publish_upload(self, result: Mapping[str, Any], request_id: str | None) -> None:
        """An upload's progress or outcome, on `cmd_result` (kept in the audit log whatever happens)."""
        if self.mqtt is not None:
            self.mqtt.publish_result("upload_clip", result, request_id)

    def _camera_ids(self) -> list[str]:
        """The cameras configured now (a reload may change them)."""
        return [c.id for c in self.config.cameras]

    def latest_snapshot(self, camera_id: str) -> dict[str, Any]:
        """A camera's latest masked frame as a base64 JPEG (never stored here), for the signed `snapshot`
        command (`edge_agent.api.snapshots`); NoFrame when it has none to give."""
        with self._lock:
            slot = self._slots.get(camera_id)
            if slot is None:
                raise NoFrame(f"camera: no camera {camera_id!r} on this device")
            frame = slot.worker.latest_frame() if slot.worker is not None else None
            if frame is None:
                state = camera_status(_camera_report(slot)).state
                raise NoFrame(f"camera: {camera_id!r} has no frame yet (state {state})")
        ok, jpeg = cv2.imencode(".jpg", frame.bgr(), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise NoFrame(f"camera: {camera_id!r}: JPEG encoding failed")
        width, height = frame.size
        return {
            "camera": camera_id,
            "captured_at": frame.captured_at,
            "width": width,
            "height": height,
            "jpeg_base64": base64.b64encode(jpeg.tobytes()).decode("ascii"),
        }

    def reload_command(self, payload: dict[str, Any]) -> dict[str, Any]:
        """`reload` command: see `reload`."""
        return self.reload()

    def reload(self) -> dict[str, Any]:
        """Re-read the config file and restart the cameras whose settings changed.

        An invalid file changes nothing (CommandError lists its errors). Sections other than `cameras`
        (storage, mqtt, clip server, keys) take effect at the next restart; the reply says which changed.
        """
        if self.config_path is None:
            raise CommandError("reload: the agent was started without a config file")
        try:
            new = load_config(self.config_path)
        except ConfigError as error:
            raise CommandError("reload refused, config unchanged: " + "; ".join(error.errors)) from None
        if (new.site_id, new.device_id) != (self.config.site_id, self.config.device_id):
            raise CommandError("reload refused: site_id and device_id cannot change while running")
        restart_needed = [
            name
            for name in ("storage", "mqtt", "clip_server", "keys")
            if getattr(new, name) != getattr(self.config, name)
        ]
        camera_set_changed = {c.id for c in new.cameras} != {c.id for c in self.config.cameras}
        if camera_set_changed and "clip_server" not in restart_needed:
            restart_needed.append("clip_server")  # it serves the camera ids it started with
        changed = self._apply_cameras(new.cameras)
        self.config = new
        if self._hotplug is not None:
            self._hotplug.reconfigure(new.cameras)
        self.tick()
        return {"reloaded": True, "cameras_restarted": changed, "needs_restart": restart_needed}

    def _apply_cameras(self, cameras: list[CameraConfig]) -> list[str]:
        changed = []
        with self._lock:
            wanted = {c.id: c for c in cameras}
            for camera_id in list(self._slots):
                if camera_id not in wanted:
                    self._stop_camera(self._slots.pop(camera_id))
                    changed.append(camera_id)
            for camera_id, camera in wanted.items():
                slot = self._slots.get(camera_id)
                if slot is not None and slot.config == camera:
                    continue
                # A USB camera that is plugged in stays on its node: hot-plug only reports changes of node.
                node = slot.device_node if slot is not None and slot.worker is not None else ""
                if slot is not None:
                    self._stop_camera(slot)
                slot = _CameraSlot(camera)
                self._slots[camera_id] = slot
                changed.append(camera_id)
                if not camera.source.usb_id or node:
                    self._start_camera(slot, node)
        return changed


def _stop_part(name: str, stop: Callable[[], None]) -> None:
    try:
        stop()
    except Exception:
        log.exception("stopping the %s failed; stopping the rest", name)


def _camera_report(slot: _CameraSlot) -> CameraReport:
    """A slot's camera as the status builder takes it (the caller holds the agent's lock)."""
    worker = slot.worker.stats() if slot.worker is not None else None
    recorder = slot.recorder.stats() if slot.recorder is not None else None
    return CameraReport(slot.config, worker, recorder, slot.device_node)
