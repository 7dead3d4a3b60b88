"""A simulated fleet: N devices x M cameras publishing availability, status and motion, without video.

    .venv/bin/python scripts/simulate_fleet.py --broker mqtt://127.0.0.1:1883 --devices 400 --cameras 5 \
        --status-interval 30 --motion-rate 100 --duration 60

Each device has its own MQTT connection with its last will, publishes a retained status every
`status-interval` seconds (first ones spread over the interval, as a real fleet booted at different
times) and the fleet as a whole publishes `motion-rate` motion messages per second: events open on a
random camera, get updates and end, as the device's tracker would. Payloads are built with the same
`mqtt_wire` functions and models as the agent's. The publication time of every motion message is kept so a
benchmark can measure the latency to the collector's store.
"""

from __future__ import annotations

import argparse
import heapq
import random
import selectors
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.camera.motion import MotionEvent
from edge_agent.collector.ingest import parse_broker_url
from edge_agent.formats.mqtt_wire import (
    SCHEMA,
    CameraStatus,
    DiskStatus,
    OutboxStatus,
    RetentionStatus,
    StatusMessage,
    Topics,
    encode,
    motion_payload,
)
from edge_agent.formats.times import parse_iso


@dataclass
class FleetReport:
    """What the simulation sent; `sent_at` maps (site, device, event_id, phase, ts) to publication time."""

    devices: int
    cameras: int
    seconds: float
    status_messages: int = 0
    motion_messages: int = 0
    sent_at: dict[tuple[str, str, str, str, float], float] = field(default_factory=dict)

    @property
    def motion_rate(self) -> float:
        """Motion messages per second actually published."""
        return self.motion_messages / self.seconds if self.seconds else 0.0


@dataclass
class _Device:
    site: str
    device: str
    topics: Topics
    client: mqtt.Client
    cameras: list[str]
    open_events: dict[str, MotionEvent] = field(default_factory=dict)


class Fleet:
    """The simulated devices, connected to one broker."""

    def __init__(
        self, broker_url: str, devices: int, cameras: int, topic_root: str = "csu/v1", seed: int = 1
    ) -> None:
        """Prepare `devices` clients (sites of 2 devices each, as an implantation point with 2 boxes)."""
        self.address = parse_broker_url(broker_url)
        self.rng = random.Random(seed)
        self.devices: list[_Device] = []
        run = uuid.uuid4().hex[:6]
        for index in range(devices):
            site, device = f"site-{index // 2:04d}", f"dev-{index:04d}"
            topics = Topics(topic_root, site, device)
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{run}-{index}", protocol=mqtt.MQTTv5
            )
            client.will_set(topics.availability, b'"offline"', qos=1, retain=True)
            client.max_inflight_messages_set(1000)
            self.devices.append(_Device(site, device, topics, client, [f"cam{c}" for c in range(cameras)]))
        self.cameras = cameras
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._selector = selectors.DefaultSelector()
        self._last_misc = 0.0
        self._written: set[mqtt.Client] = set()

    def connect(self, timeout_s: float = 60.0) -> None:
        """Connect every device, publish `online`, and wait for every CONNACK."""
        for dev in self.devices:
            dev.client.connect(self.address.host, self.address.port, keepalive=60)
            sock = dev.client.socket()
            assert isinstance(sock, socket.socket)
            self._selector.register(sock, selectors.EVENT_READ, dev.client)
            self._publish(dev, dev.topics.availability, b'"online"', retain=True)
            self._network(0)
        deadline = time.monotonic() + timeout_s
        while not all(d.client.is_connected() for d in self.devices):
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not accept every simulated device")
            self._network(0.05)

    def disconnect(self) -> None:
        """Publish `offline` and disconnect every device (after the queued messages are sent)."""
        self.wait_acknowledged(60)
        for dev in self.devices:
            self._pending.append(self._publish(dev, dev.topics.availability, b'"offline"', retain=True))
        self.wait_acknowledged(30)
        for dev in self.devices:
            sock = dev.client.socket()
            if isinstance(sock, socket.socket):
                self._selector.unregister(sock)
            dev.client.disconnect()
        self._selector.close()

    def _network(self, timeout_s: float) -> None:
        """All MQTT I/O of the fleet, in the calling thread (paho's own loop uses select(), which cannot
        watch the 1,000+ descriptors of a large fleet; one epoll loop also spares 400 threads)."""
        for key, _ in self._selector.select(max(0.0, timeout_s)):
            key.data.loop_read(100)
        # Only the clients that published since the last call can have bytes left to send (a full
        # socket buffer); looking at all 20,000 cameras' clients each time cost half a core.
        for client in self._written:
            if client.want_write():
                client.loop_write()
        self._written.clear()
        now = time.monotonic()
        if now - self._last_misc >= 1.0:
            self._last_misc = now
            for dev in self.devices:
                dev.client.loop_misc()
                if dev.client.want_write():
                    dev.client.loop_write()

    def _publish(
        self, dev: _Device, topic: str, payload: bytes, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        self._written.add(dev.client)
        return dev.client.publish(topic, payload, qos=1, retain=retain)

    def _status(self, dev: _Device, now: float) -> bytes:
        cameras = [
            CameraStatus(id=c, state="running", fps=10.0, drops=0, resolution=(1920, 1080), masks=2)
            for c in dev.cameras
        ]
        message = StatusMessage(
            schema=SCHEMA,
            site=dev.site,
            device=dev.device,
            ts=now,
            version="sim",
            uptime_s=3600,
            cameras=cameras,
            cpu_temp_c=round(self.rng.uniform(45, 70), 1),
            load=(0.8, 0.7, 0.6),
            disk=DiskStatus(used=20_000_000_000, free=40_000_000_000, total=64_000_000_000, quota=0),
            retention=RetentionStatus(oldest_ts=None, days=15),
            clip_url=f"https://{dev.device}.{dev.site}.csu.example:8480",
            outbox=OutboxStatus(pending=0, dropped=0),
        )
        return encode(message.wire())

    def _next_motion(self, dev: _Device, now: float) -> MotionEvent:
        camera = self.rng.choice(dev.cameras)
        box = (self.rng.random() * 0.8, self.rng.random() * 0.8, 0.1, 0.15)
        current = dev.open_events.get(camera)
        if current is None:
            event = MotionEvent(uuid.uuid4().hex, camera, "start", now, now, 0.3, [box], [])
            dev.open_events[camera] = event
            return event
        phase = "end" if self.rng.random() < 0.25 else "update"
        if phase == "end":
            del dev.open_events[camera]
        return MotionEvent(
            current.event_id, camera, phase, now, current.start_ts, self.rng.random(), [box], []
        )

    def run(self, seconds: float, status_interval_s: float, motion_rate: float) -> FleetReport:
        """Publish for `seconds`: statuses on their schedule, motion at `motion_rate` per second overall."""
        report = FleetReport(len(self.devices), self.cameras, seconds)
        start = time.monotonic()
        schedule: list[tuple[float, int, int]] = []  # (due, kind 0=status 1=motion, device index)
        for index in range(len(self.devices)):
            heapq.heappush(schedule, (start + self.rng.uniform(0, status_interval_s), 0, index))
        if motion_rate > 0:
            heapq.heappush(schedule, (start, 1, -1))
        end = start + seconds
        while schedule:
            due, kind, index = heapq.heappop(schedule)
            if due >= end:
                break
            self._network(due - time.monotonic())
            while time.monotonic() < due:
                self._network(due - time.monotonic())
            now = time.time()
            if kind == 0:
                dev = self.devices[index]
                self._publish(dev, dev.topics.status, self._status(dev, now), retain=True)
                report.status_messages += 1
                heapq.heappush(schedule, (due + status_interval_s, 0, index))
            else:
                dev = self.rng.choice(self.devices)
                event = self._next_motion(dev, now)
                payload = motion_payload(event)
                ts = parse_iso(payload["ts"])  # as the collector will store it (millisecond precision)
                report.sent_at[(dev.site, dev.device, event.event_id, event.phase, ts)] = time.time()
                self._pending.append(self._publish(dev, dev.topics.motion(event.camera_id), encode(payload)))
                report.motion_messages += 1
                heapq.heappush(schedule, (due + 1.0 / motion_rate, 1, -1))
        report.seconds = time.monotonic() - start
        return report

    def wait_acknowledged(self, timeout_s: float) -> int:
        """Wait for the broker's PUBACK of every motion message published; returns how many came."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(info.is_published() for info in self._pending):
            self._network(0.05)
        acked = sum(1 for info in self._pending if info.is_published())
        self._pending.clear()
        return acked


def main(argv: list[str] | None = None) -> int:
    """Run a fleet against a broker and print what it sent."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--cameras", type=int, default=5)
    parser.add_argument("--status-interval", type=float, default=30.0, help="seconds between statuses")
    parser.add_argument("--motion-rate", type=float, default=100.0, help="motion messages per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--topic-root", default="csu/v1")
    args = parser.parse_args(argv)
    fleet = Fleet(args.broker, args.devices, args.cameras, args.topic_root)
    fleet.connect()
    try:
        report = fleet.run(args.duration, args.status_interval, args.motion_rate)
        acked = fleet.wait_acknowledged(60)
    finally:
        fleet.disconnect()
    print(
        f"{report.devices} devices x {report.cameras} cameras for {report.seconds:.1f}s: "
        f"{report.status_messages} statuses, {report.motion_messages} motion ({report.motion_rate:.1f}/s), "
        f"{acked} acknowledged by the broker"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
