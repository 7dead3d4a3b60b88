"""Hot-plug: udev events in, camera workers started and stopped by stable identity.

udev cannot be driven here (no USB camera, no permission to synthesize kernel events), so the events are
real `pyudev.Device` objects built by libudev from a udev-style environment (`Devices.from_environment`,
the constructor udev helper programs use), fed through `UdevWatcher` exactly as the netlink monitor's
`poll()` would deliver them. The real netlink monitor is also started once to show the default path runs.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from edge_agent.device.hotplug import (
    CameraIdentity,
    HotplugTracker,
    UdevWatcher,
    configured_usb_ids,
    identity_of,
    usb_port_of,
)
from edge_agent.formats.config import CameraConfig, parse_config

pyudev = pytest.importorskip("pyudev")

MASK = [{"name": "window", "points": [[0, 0], [0.3, 0], [0.3, 0.3]]}]
SERIAL_CAM = {"vendor": "046d", "product": "0825", "port": "1-1.2", "serial": "A1B2C3D4"}
NOSERIAL_CAM = {"vendor": "1b3f", "product": "2247", "port": "1-1.3", "serial": ""}
TWIN_CAM = {"vendor": "1b3f", "product": "2247", "port": "1-1.4", "serial": ""}


def cameras(*entries: tuple[str, str]) -> list[CameraConfig]:
    """Camera configs with masks, each named by `(camera_id, usb_id)`."""
    config = parse_config(
        {
            "site_id": "ville-01",
            "device_id": "nomad-03",
            "cameras": [
                {
                    "id": cid,
                    "source": {"kind": "opencv", "uri": f"/dev/edge-camera-{cid}", "usb_id": usb_id},
                    "masks": MASK,
                }
                for cid, usb_id in entries
            ],
        }
    )
    return list(config.cameras)


def udev_device(action: str, node: str, cam: dict[str, str], capture: bool = True, seq: int = 1) -> Any:
    """A real pyudev Device, as the monitor hands it over for a UVC camera's video node."""
    port = cam["port"]
    number = node.removeprefix("/dev/video")
    env = {
        "ACTION": action,
        "SEQNUM": str(seq),
        "SUBSYSTEM": "video4linux",
        "DEVNAME": node,
        "DEVPATH": f"/devices/platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0/usb1/"
        f"{port.split('.')[0]}/{port}/{port}:1.0/video4linux/video{number}",
        "MAJOR": "81",
        "MINOR": number,
        "ID_V4L_VERSION": "2",
        "ID_V4L_PRODUCT": "UVC Camera",
        "ID_V4L_CAPABILITIES": ":capture:" if capture else ":",
        "ID_BUS": "usb",
        "ID_VENDOR_ID": cam["vendor"],
        "ID_MODEL_ID": cam["product"],
        "ID_PATH": f"platform-fd500000.pcie-pci-0000:01:00.0-usb-0:{port.split('-')[1]}:1.0",
    }
    if cam["serial"]:
        env["ID_SERIAL_SHORT"] = cam["serial"]
    return _device_from_environment(env)


def _device_from_environment(env: dict[str, str]) -> Any:
    """libudev parses the C environment in place (it cuts each `KEY=value` string at `=`), so the
    environment is replaced wholesale with clearenv() around the call, then restored from os.environ."""
    libc = ctypes.CDLL(None)
    libc.clearenv()
    for key, value in env.items():
        os.putenv(key, value)
    try:
        return pyudev.Devices.from_environment(pyudev.Context())
    finally:
        libc.clearenv()
        for key, value in os.environ.items():
            os.putenv(key, value)


class Supervisor:
    """Records the calls the agent would get, and lets a test wait for them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self._changed = threading.Condition()

    def _record(self, *call: str) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def attach(self, camera_id: str, device_node: str) -> None:
        self._record("attach", camera_id, device_node)

    def detach(self, camera_id: str) -> None:
        self._record("detach", camera_id)

    def report_unconfigured(self, identity: CameraIdentity, device_node: str) -> None:
        self._record("unconfigured", identity.keys[0], device_node)

    def forget_unconfigured(self, identity: CameraIdentity) -> None:
        self._record("forget", identity.keys[0])

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, ...]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.calls) >= count, timeout), self.calls
            return list(self.calls)


class QueueMonitor:
    """Stands in for `pyudev.Monitor` (needs kernel events): same `start`/`poll` interface."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.started = False

    def start(self) -> None:
        self.started = True

    def poll(self, timeout: float | None = None) -> Any:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None


def tracker_for(*entries: tuple[str, str]) -> tuple[HotplugTracker, Supervisor]:
    """A tracker over cameras named `(camera_id, usb_id)`, and the supervisor recording its calls."""
    supervisor = Supervisor()
    return HotplugTracker(cameras(*entries), supervisor), supervisor


def plug(tracker: HotplugTracker, *nodes: tuple[str, dict[str, str]]) -> None:
    """`add` events for capture nodes `(device node, camera)`, handed to the tracker directly."""
    for node, cam in nodes:
        tracker.handle("add", udev_device("add", node, cam).properties)


@pytest.fixture
def rig() -> Iterator[tuple[QueueMonitor, Supervisor, list[Any], Any]]:
    """A watcher over a config naming `front` by serial and `side` by vendor:product@port."""
    monitor, present = QueueMonitor(), []
    tracker, supervisor = tracker_for(("front", "A1B2C3D4"), ("side", "1b3f:2247@1-1.3"))
    watcher = UdevWatcher(tracker, monitor=monitor, list_devices=lambda: present, poll_timeout_s=0.05)

    def start() -> None:
        watcher.start()
        assert watcher.wait_ready(5)

    yield monitor, supervisor, present, start
    watcher.stop()


def test_plug_unplug_replug_on_another_node(rig: Any) -> None:
    monitor, supervisor, _, start = rig
    start()
    assert supervisor.wait_for(2) == [("detach", "front"), ("detach", "side")]  # absent at start
    monitor.events.put(udev_device("add", "/dev/video0", SERIAL_CAM))
    monitor.events.put(udev_device("add", "/dev/video1", SERIAL_CAM, capture=False))  # metadata
    assert supervisor.wait_for(3)[2] == ("attach", "front", "/dev/video0")
    monitor.events.put(udev_device("remove", "/dev/video1", SERIAL_CAM, capture=False))
    monitor.events.put(udev_device("remove", "/dev/video0", SERIAL_CAM))
    assert supervisor.wait_for(4)[3] == ("detach", "front")
    # Replugged after another camera took /dev/video0: the same camera, found on /dev/video2.
    monitor.events.put(udev_device("add", "/dev/video0", NOSERIAL_CAM))
    monitor.events.put(udev_device("add", "/dev/video2", SERIAL_CAM))
    calls = supervisor.wait_for(6)
    assert calls[4:] == [("attach", "side", "/dev/video0"), ("attach", "front", "/dev/video2")]


def test_unknown_camera_is_reported_and_never_attached(rig: Any) -> None:
    monitor, supervisor, _, start = rig
    start()
    supervisor.wait_for(2)
    unknown = {"vendor": "0c45", "product": "6366", "port": "1-1.1", "serial": "XYZ"}
    monitor.events.put(udev_device("add", "/dev/video4", unknown))
    assert supervisor.wait_for(3)[2] == ("unconfigured", "XYZ", "/dev/video4")
    monitor.events.put(udev_device("remove", "/dev/video4", unknown))
    calls = supervisor.wait_for(4)
    assert calls[3] == ("forget", "XYZ")
    assert not any(call[0] == "attach" for call in calls)


def test_enumeration_at_start_attaches_present_cameras(rig: Any) -> None:
    monitor, supervisor, present, start = rig
    present.extend(
        [
            udev_device("add", "/dev/video3", NOSERIAL_CAM, capture=False),
            udev_device("add", "/dev/video2", NOSERIAL_CAM),
        ]
    )
    start()
    assert supervisor.wait_for(2) == [("attach", "side", "/dev/video2"), ("detach", "front")]
    # The monitor was started before enumerating: the same add seen again changes nothing.
    assert monitor.started
    monitor.events.put(udev_device("add", "/dev/video2", NOSERIAL_CAM))
    monitor.events.put(udev_device("add", "/dev/video0", SERIAL_CAM))
    assert supervisor.wait_for(3)[2:] == [("attach", "front", "/dev/video0")]


def test_identical_models_told_apart_by_port() -> None:
    tracker, supervisor = tracker_for(("left", "1b3f:2247@1-1.3"), ("right", "1B3F:2247@1-1.4"))
    plug(tracker, ("/dev/video0", TWIN_CAM), ("/dev/video2", NOSERIAL_CAM))
    assert supervisor.calls == [
        ("attach", "right", "/dev/video0"),
        ("attach", "left", "/dev/video2"),
    ]
    assert tracker.attached() == {"right": "/dev/video0", "left": "/dev/video2"}


def test_second_capture_node_of_same_camera_is_not_used() -> None:
    tracker, supervisor = tracker_for(("front", "A1B2C3D4"))
    plug(tracker, ("/dev/video0", SERIAL_CAM), ("/dev/video2", SERIAL_CAM))
    assert supervisor.calls == [("attach", "front", "/dev/video0")]


def test_lost_remove_event_then_another_camera_on_the_node() -> None:
    tracker, supervisor = tracker_for(("front", "A1B2C3D4"), ("side", "1b3f:2247@1-1.3"))
    plug(tracker, ("/dev/video0", SERIAL_CAM), ("/dev/video0", NOSERIAL_CAM))
    assert supervisor.calls == [
        ("attach", "front", "/dev/video0"),
        ("detach", "front"),
        ("attach", "side", "/dev/video0"),
    ]


def test_reload_names_an_unconfigured_camera() -> None:
    tracker, supervisor = tracker_for(("front", "A1B2C3D4"))
    plug(tracker, ("/dev/video0", SERIAL_CAM), ("/dev/video2", NOSERIAL_CAM))
    assert supervisor.calls[1] == ("unconfigured", "1b3f:2247@1-1.3", "/dev/video2")
    tracker.reconfigure(cameras(("front", "A1B2C3D4"), ("side", "1b3f:2247@1-1.3")))
    # `front` keeps running untouched; the newly named camera leaves `unconfigured` and starts.
    assert supervisor.calls[2:] == [
        ("forget", "1b3f:2247@1-1.3"),
        ("attach", "side", "/dev/video2"),
    ]
    tracker.reconfigure(cameras(("side", "1b3f:2247@1-1.3")))
    assert supervisor.calls[4:] == [("detach", "front"), ("unconfigured", "A1B2C3D4", "/dev/video0")]


def test_non_usb_and_non_video_nodes_are_ignored() -> None:
    tracker, supervisor = tracker_for(("front", "A1B2C3D4"))
    isp = dict(udev_device("add", "/dev/video13", SERIAL_CAM).properties)
    isp["DEVPATH"] = "/devices/platform/soc/fe00b840.mailbox/bcm2835-isp/video4linux/video13"
    tracker.handle("add", isp)
    tracker.handle("add", {**isp, "SUBSYSTEM": "media", "DEVNAME": "/dev/media0"})
    tracker.handle("bind", udev_device("add", "/dev/video0", SERIAL_CAM).properties)
    assert supervisor.calls == []


def test_a_failing_supervisor_does_not_stop_the_watcher() -> None:
    class Flaky(Supervisor):
        def attach(self, camera_id: str, device_node: str) -> None:
            super().attach(camera_id, device_node)
            if camera_id == "front":
                raise RuntimeError("worker failed to start")

    monitor, supervisor = QueueMonitor(), Flaky()
    tracker = HotplugTracker(cameras(("front", "A1B2C3D4"), ("side", "1b3f:2247@1-1.3")), supervisor)
    watcher = UdevWatcher(tracker, monitor=monitor, list_devices=list, poll_timeout_s=0.05)
    watcher.start()
    try:
        monitor.events.put(udev_device("add", "/dev/video0", SERIAL_CAM))
        monitor.events.put(udev_device("add", "/dev/video2", NOSERIAL_CAM))
        assert supervisor.wait_for(4)[3] == ("attach", "side", "/dev/video2")
    finally:
        watcher.stop()


def test_duplicate_usb_id_in_config_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'a' and 'b' have the same source\.usb_id '046d:0825@1-2'"):
        configured_usb_ids(cameras(("a", "046D:0825@1-2"), ("b", "046d:0825@1-2")))


def test_identity_helpers() -> None:
    assert (
        usb_port_of("/devices/pci0000:00/0000:00:14.0/usb2/2-3/2-3.1/2-3.1:1.0/video4linux/video0") == "2-3.1"
    )
    assert usb_port_of("/devices/platform/soc/bcm2835-codec/video4linux/video10") == ""
    identity = identity_of(udev_device("add", "/dev/video0", SERIAL_CAM).properties)
    assert identity is not None
    assert identity.keys == ("A1B2C3D4", "046d:0825@1-1.2")
    assert str(identity) == "046d:0825@1-1.2 serial A1B2C3D4 (UVC Camera)"


def test_real_netlink_monitor_starts_and_stops() -> None:
    """The default path: pyudev's netlink monitor and /sys enumeration (no cameras here)."""
    tracker, supervisor = tracker_for(("front", "A1B2C3D4"))
    try:
        watcher = UdevWatcher(tracker, poll_timeout_s=0.05)
    except OSError as error:
        pytest.skip(f"no udev netlink socket in this sandbox: {error}")
    watcher.start()
    try:
        assert watcher.wait_ready(5)
        assert ("detach", "front") in supervisor.wait_for(1)
    finally:
        watcher.stop()
