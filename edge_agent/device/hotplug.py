"""USB cameras plugged in or pulled out while the agent runs.

`HotplugTracker` is the logic: it consumes udev events (an action and the device's properties) and tells
a `CameraSupervisor` (implemented by the agent) which camera worker to start or stop. `UdevWatcher` feeds
it from a pyudev monitor on subsystem `video4linux`, after enumerating the cameras already present.

A camera is matched to its config by a stable identity, never by `/dev/videoN` order (which changes with
plug order and reboots): `source.usb_id` is either the USB serial number (`ID_SERIAL_SHORT`), or
`vendor:product@port` where `port` is the kernel's USB port path (`1-1.2`: bus 1, port 1, hub port 2), for
cameras without a serial or with a serial shared by identical models. Only capture nodes count: a UVC
camera also creates a metadata node, which udev's `v4l_id` reports without `:capture:`.

Privacy fails closed: a camera that no config names is reported `unconfigured` and never started; it
records nothing until a config with masks names it. A configured camera without a device is reported
`disconnected` (stopped, visible in status), not silently dropped.

Threading: `UdevWatcher` calls the tracker, hence the supervisor, from its own thread; `reconfigure` may be
called from any thread. The supervisor must hand work over to the agent's own loop or lock.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.formats.config import CameraConfig

log = logging.getLogger(__name__)

SUBSYSTEM = "video4linux"
# Kernel name of a USB device in sysfs: bus number, dash, dotted port chain ("1-1.2").
_USB_PORT = re.compile(r"^\d+-\d+(\.\d+)*$")
_VID_PID_PORT = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})@(\d+-\d+(?:\.\d+)*)$")


@dataclass(frozen=True)
class CameraIdentity:
    """What identifies a USB camera whatever /dev node it gets."""

    vendor_id: str
    product_id: str
    port: str
    serial: str = ""
    model: str = ""

    @property
    def port_key(self) -> str:
        """`vendor:product@port`, valid for any camera on this USB port."""
        return f"{self.vendor_id}:{self.product_id}@{self.port}"

    @property
    def keys(self) -> tuple[str, ...]:
        """Every `usb_id` value that names this camera: the serial (if any), then the port key."""
        return (self.serial, self.port_key) if self.serial else (self.port_key,)

    def __str__(self) -> str:
        serial = f" serial {self.serial}" if self.serial else ""
        model = f" ({self.model})" if self.model else ""
        return f"{self.port_key}{serial}{model}"


class CameraSupervisor(Protocol):
    """What the agent does when cameras come and go (called from the watcher's thread)."""

    def attach(self, camera_id: str, device_node: str) -> None:
        """The configured camera is present at `device_node`: start (or restart) its worker there."""

    def detach(self, camera_id: str) -> None:
        """The camera has no device (unplugged, or absent at start): stop its worker, report it
        `disconnected`."""

    def report_unconfigured(self, identity: CameraIdentity, device_node: str) -> None:
        """A camera no config names is plugged in: report it `unconfigured`; capture nothing."""

    def forget_unconfigured(self, identity: CameraIdentity) -> None:
        """The unconfigured camera was unplugged: remove it from status."""


def normalize_usb_id(usb_id: str) -> str:
    """Canonical form of a `usb_id`: hex ids in lower case; a serial is kept as written."""
    usb_id = usb_id.strip()
    match = _VID_PID_PORT.match(usb_id)
    if match:
        vendor, product, port = match.groups()
        return f"{vendor.lower()}:{product.lower()}@{port}"
    return usb_id


def is_capture_node(properties: Mapping[str, str]) -> bool:
    """True for a video4linux node that can capture video (not metadata, output or codec nodes)."""
    return properties.get("SUBSYSTEM") == SUBSYSTEM and ":capture:" in properties.get(
        "ID_V4L_CAPABILITIES", ""
    )


def usb_port_of(devpath: str) -> str:
    """The USB port path (`1-1.2`) from a sysfs device path, or "" when the node is not on USB."""
    port = ""
    for part in devpath.split("/"):
        if _USB_PORT.match(part):
            port = part
    return port


def identity_of(properties: Mapping[str, str]) -> CameraIdentity | None:
    """The stable identity of a USB camera from its udev properties; None when it is not on USB."""
    port = usb_port_of(properties.get("DEVPATH", ""))
    vendor = properties.get("ID_VENDOR_ID", "").lower()
    product = properties.get("ID_MODEL_ID", "").lower()
    if not (port and vendor and product):
        return None
    return CameraIdentity(
        vendor_id=vendor,
        product_id=product,
        port=port,
        serial=properties.get("ID_SERIAL_SHORT", "").strip(),
        model=properties.get("ID_V4L_PRODUCT", "") or properties.get("ID_MODEL", ""),
    )


def configured_usb_ids(cameras: Sequence[CameraConfig]) -> dict[str, str]:
    """`usb_id` -> camera id for the hot-plug cameras; ValueError if two cameras share a `usb_id`."""
    table: dict[str, str] = {}
    for camera in cameras:
        if not camera.source.usb_id:
            continue
        key = normalize_usb_id(camera.source.usb_id)
        if key in table:
            raise ValueError(f"cameras {table[key]!r} and {camera.id!r} have the same source.usb_id {key!r}")
        table[key] = camera.id
    return table


@dataclass
class _Present:
    identity: CameraIdentity
    camera_id: str | None  # None: unconfigured, or a second capture node of an attached camera
    reported: bool  # reported as unconfigured


class HotplugTracker:
    """Turns udev events into supervisor calls; holds which camera is on which node."""

    def __init__(self, cameras: Sequence[CameraConfig], supervisor: CameraSupervisor) -> None:
        self._supervisor = supervisor
        self._lock = threading.RLock()
        self._by_usb_id = configured_usb_ids(cameras)
        self._present: dict[str, _Present] = {}

    def attached(self) -> dict[str, str]:
        """camera id -> device node of the cameras currently attached."""
        with self._lock:
            return {p.camera_id: node for node, p in self._present.items() if p.camera_id}

    def enumerate(self, devices: Iterable[Mapping[str, str]]) -> None:
        """Start-up: the properties of every node already present; configured cameras not among
        them are reported disconnected."""
        with self._lock:
            for properties in sorted(devices, key=_node_order):
                self.handle("add", properties)
            attached = {p.camera_id for p in self._present.values()}
            for camera_id in sorted(set(self._by_usb_id.values()) - attached):
                self._supervisor.detach(camera_id)

    def handle(self, action: str, properties: Mapping[str, str]) -> None:
        """One udev event: `add`/`change` plug a node in, `remove` pulls it out; others are ignored."""
        node = properties.get("DEVNAME", "")
        if not node or properties.get("SUBSYSTEM") != SUBSYSTEM:
            return
        with self._lock:
            if action == "remove":
                self._unplug(node)
            elif action in ("add", "change"):
                self._plug(node, properties)

    def reconfigure(self, cameras: Sequence[CameraConfig]) -> None:
        """A new config (reload): cameras it newly names are attached, those it drops are stopped,
        the others keep running untouched."""
        table = configured_usb_ids(cameras)
        with self._lock:
            self._by_usb_id = table
            for node in sorted(self._present, key=_node_number):
                present = self._present[node]
                wanted = self._match(present.identity)
                if present.camera_id is not None and present.camera_id == wanted:
                    continue
                if present.camera_id is None and not present.reported and wanted is not None:
                    continue  # still a spare node of a camera attached elsewhere
                self._unplug(node)
                self._place(node, present.identity)
            attached = {p.camera_id for p in self._present.values()}
            for camera_id in sorted(set(table.values()) - attached):
                self._supervisor.detach(camera_id)

    def _match(self, identity: CameraIdentity) -> str | None:
        for key in identity.keys:
            camera_id = self._by_usb_id.get(normalize_usb_id(key))
            if camera_id:
                return camera_id
        return None

    def _plug(self, node: str, properties: Mapping[str, str]) -> None:
        if not is_capture_node(properties):
            return
        identity = identity_of(properties)
        if identity is None:
            log.debug("%s is not a USB camera: left to its fixed config", node)
            return
        known = self._present.get(node)
        if known is not None:
            if known.identity == identity:
                return  # a `change` event, or the enumeration racing the monitor
            self._unplug(node)  # the remove event was lost: the node now holds another camera
        self._place(node, identity)

    def _place(self, node: str, identity: CameraIdentity) -> None:
        camera_id = self._match(identity)
        attached = self.attached()
        if camera_id is not None and camera_id in attached:
            log.info(
                "%s is a second capture node of camera %s (on %s): not used",
                node,
                camera_id,
                attached[camera_id],
            )
            self._present[node] = _Present(identity, None, reported=False)
            return
        if camera_id is not None:
            log.info("camera %s (%s) attached at %s", camera_id, identity, node)
            self._present[node] = _Present(identity, camera_id, reported=False)
            self._supervisor.attach(camera_id, node)
            return
        log.warning(
            "unconfigured camera %s at %s: nothing is captured until a config with masks names it"
            " (source.usb_id: %r)",
            identity,
            node,
            identity.keys[0],
        )
        self._present[node] = _Present(identity, None, reported=True)
        self._supervisor.report_unconfigured(identity, node)

    def _unplug(self, node: str) -> None:
        present = self._present.pop(node, None)
        if present is None:
            return
        if present.camera_id is not None:
            log.warning("camera %s detached (%s)", present.camera_id, node)
            self._supervisor.detach(present.camera_id)
        elif present.reported:
            self._supervisor.forget_unconfigured(present.identity)


def _node_number(node: str) -> tuple[int, str]:
    digits = re.search(r"(\d+)$", node)
    return (int(digits.group(1)) if digits else 1 << 30, node)


def _node_order(properties: Mapping[str, str]) -> tuple[int, str]:
    return _node_number(properties.get("DEVNAME", ""))


class UdevMonitor(Protocol):
    """The part of `pyudev.Monitor` the watcher uses."""

    def start(self) -> None:
        """Start receiving events."""

    def poll(self, timeout: float | None = None) -> Any:
        """The next device event (`pyudev.Device` with `.action` and `.properties`), or None."""


class UdevWatcher:
    """Feeds a `HotplugTracker` from udev: the nodes present at start, then every event, in a thread."""

    def __init__(
        self,
        tracker: HotplugTracker,
        monitor: UdevMonitor | None = None,
        list_devices: Callable[[], Iterable[Any]] | None = None,
        poll_timeout_s: float = 0.5,
    ) -> None:
        if monitor is None or list_devices is None:
            monitor, list_devices = _pyudev_sources(monitor, list_devices)
        self._tracker = tracker
        self._monitor = monitor
        self._list_devices = list_devices
        self._poll_timeout_s = poll_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        """Start the monitor, then enumerate: an event in between is seen twice (harmless), never
        missed."""
        self._monitor.start()
        self._thread = threading.Thread(target=self._run, name="udev-watcher", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the initial enumeration has been handled."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        """Stop the thread (within one poll timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._poll_timeout_s * 4 + 1)

    def _run(self) -> None:
        try:
            self._tracker.enumerate([dict(d.properties) for d in self._list_devices()])
        except Exception:
            log.exception("enumerating video devices failed")
        self._ready.set()
        while not self._stop.is_set():
            try:
                device = self._monitor.poll(timeout=self._poll_timeout_s)
                if device is not None:
                    self._tracker.handle(device.action or "", dict(device.properties))
            except Exception:
                # One malformed event or a supervisor error must not stop hot-plug for the rest.
                log.exception("handling a udev event failed")


def _pyudev_sources(
    monitor: UdevMonitor | None, list_devices: Callable[[], Iterable[Any]] | None
) -> tuple[UdevMonitor, Callable[[], Iterable[Any]]]:
    try:
        import pyudev
    except ImportError as error:
        raise RuntimeError("hot-plug needs pyudev: pip install 'edge_agent[pi]' (or pyudev)") from error
    context = pyudev.Context()
    if monitor is None:
        udev_monitor = pyudev.Monitor.from_netlink(context)
        udev_monitor.filter_by(subsystem=SUBSYSTEM)
        monitor = udev_monitor
    if list_devices is None:

        def list_devices() -> Iterable[Any]:
            return list(context.list_devices(subsystem=SUBSYSTEM))

    return monitor, list_devices
