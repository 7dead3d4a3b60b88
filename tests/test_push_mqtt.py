"""MQTT on a metered link: status on change plus a slow heartbeat, not every interval."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from edge_agent.camera.pipeline import CameraState, CameraStats
from edge_agent.collector.console.fleet import FleetRules, device_view
from edge_agent.collector.store import DeviceStatus
from edge_agent.formats.config import parse_config
from edge_agent.formats.times import iso_ms
from edge_agent.link.localbroker import LocalBroker
from edge_agent.link.mqtt import MqttLink
from edge_agent.link.status import CameraReport, DeviceReport
from tests.mqtt_support import Recorder as Subscriber

TOPIC = "csu/v1/ville-01/nomad-03/status"


def _link(tmp_path: Path, port: int, heartbeat_s: float) -> tuple[MqttLink, list[DeviceReport]]:
    config = parse_config(
        {
            "site_id": "ville-01",
            "device_id": "nomad-03",
            "cameras": [{"id": "cam1", "source": "synthetic", "require_masks": False}],
            "storage": {"path": str(tmp_path / "segments")},
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "outbox_path": str(tmp_path / "outbox.sqlite"),
                "status_interval_s": 1,
                "status_heartbeat_s": heartbeat_s,
            },
            "clip_server": {"enabled": False, "collector_urls": ["https://csu.example"]},
        }
    )
    stats = CameraStats("cam1", CameraState.RUNNING, 10.0, 100, 0, (320, 240), 0, 0, False, 0, "")
    reports = [DeviceReport([CameraReport(config.cameras[0], stats)])]
    return MqttLink(config, lambda: reports[-1]), reports


def test_an_idle_device_publishes_status_at_the_heartbeat_and_at_once_on_a_change(
    tmp_path: Path, mosquitto: LocalBroker
) -> None:
    subscriber = Subscriber(mosquitto.port, TOPIC)
    link, reports = _link(tmp_path, mosquitto.port, heartbeat_s=3)
    link.start()
    try:
        assert subscriber.wait_for(lambda m: len(m) == 1, timeout=10)
        first = subscriber.json_on(TOPIC)[0]
        assert (first["heartbeat_s"], first["delivery"]) == (3.0, "push")
        # Figures that move all the time are no change: frames and fps ride on the heartbeat.
        camera = reports[-1].cameras[0]
        assert camera.worker is not None
        busier = dataclasses.replace(camera.worker, frames=5000, fps=9.5)
        reports.append(DeviceReport([dataclasses.replace(camera, worker=busier)]))
        time.sleep(2.2)
        assert len(subscriber.on(TOPIC)) == 1, "status published for a mere figure"
        assert subscriber.wait_for(lambda m: len(m) == 2, timeout=3), "no heartbeat"
        heartbeat_at = time.monotonic()
        # A camera that stops is news: published within a check interval, not at the next heartbeat.
        reports.append(DeviceReport([dataclasses.replace(camera, worker=None)]))
        assert subscriber.wait_for(lambda m: len(m) == 3, timeout=2.5)
        assert time.monotonic() - heartbeat_at < 2.5
        assert subscriber.json_on(TOPIC)[-1]["cameras"][0]["state"] == "stopped"
    finally:
        link.stop()
        subscriber.close()


def test_a_heartbeat_equal_to_the_interval_keeps_the_old_cadence(
    tmp_path: Path, mosquitto: LocalBroker
) -> None:
    subscriber = Subscriber(mosquitto.port, TOPIC)
    link, _ = _link(tmp_path, mosquitto.port, heartbeat_s=1)
    link.start()
    try:
        assert subscriber.wait_for(lambda m: len(m) >= 4, timeout=6)
    finally:
        link.stop()
        subscriber.close()


def test_the_console_judges_silence_by_the_device_heartbeat() -> None:
    now = time.time()
    rules = FleetRules(status_interval_s=30)

    def stale(age: float, heartbeat: float | None) -> bool:
        document = {"ts": iso_ms(now - age), "cameras": []}
        if heartbeat is not None:
            document["heartbeat_s"] = heartbeat
        row = DeviceStatus("s1", "d1", True, now, "1.0", "", document)
        return any(p.code == "stale" for p in device_view(row, now, rules).problems)

    assert stale(120, None)  # an older device: 3 x 30 s
    assert not stale(120, 300.0)
    assert stale(1000, 300.0)
