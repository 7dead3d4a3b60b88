"""Runs a real `MqttLink` in its own process, for the tests that kill or restart the agent.

    python -m tests.mqtt_driver CONFIG.yaml [--events N] [--prefix P]

Starts the link, queues N motion events (`P-0000` start, ...), prints `ready` and then reads stdin:
`event ID PHASE` queues one more, `wait` prints `delivered` once the outbox is empty, `stop` stops
cleanly and exits. Each command is acknowledged with a line, so a test can sequence on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.formats.config import load_config
from edge_agent.link.mqtt import MqttLink
from edge_agent.link.status import CameraReport, DeviceReport


@dataclass
class DriverEvent:
    """Structurally a MotionEvent."""

    event_id: str
    camera_id: str
    phase: str
    ts: float
    start_ts: float
    score: float = 0.5
    boxes: list[tuple[float, float, float, float]] = field(default_factory=lambda: [(0.1, 0.2, 0.3, 0.4)])
    zones: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    """Run the link until `stop` (or until killed)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--prefix", default="ev")
    args = parser.parse_args(argv)
    config = load_config(args.config, environ={})
    camera = config.cameras[0].id if config.cameras else "cam1"
    link = MqttLink(config, lambda: DeviceReport([CameraReport(c) for c in config.cameras]))
    link.start()
    for i in range(args.events):
        now = time.time()
        link.publish_event(DriverEvent(f"{args.prefix}-{i:04d}", camera, "start", now, now))
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "event":
            now = time.time()
            link.publish_event(DriverEvent(words[1], camera, words[2], now, now))
            print("queued", flush=True)
        elif words[0] == "wait":
            print("delivered" if link.wait_delivered(20) else "timeout", flush=True)
        elif words[0] == "stop":
            break
    link.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
