"""Helpers of the MQTT and collector tests: a recording subscriber, configs, a collector on a broker."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from edge_agent.collector.ingest import Ingestor, parse_broker_url
from edge_agent.collector.store import open_store
from edge_agent.formats.config import AgentConfig, parse_config
from edge_agent.link.localbroker import LocalBroker

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def agent_config(broker: LocalBroker, tmp: Path, **mqtt_fields: Any) -> dict[str, Any]:
    """A device config document pointing at the broker, with its outbox in `tmp`."""
    return {
        "site_id": "ville-01",
        "device_id": "pi-07",
        "cameras": [
            {"id": "cam1", "source": "synthetic", "masks": [{"points": [[0, 0], [0.2, 0], [0.2, 0.2]]}]},
        ],
        "storage": {"path": str(tmp / "segments")},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port,
            "outbox_path": str(tmp / "outbox.sqlite"),
            "keepalive_s": 5,
            "reconnect_min_s": 1,
            "reconnect_max_s": 2,
            **mqtt_fields,
        },
        "clip_server": {"advertise_url": "https://pi-07.ville-01.example:8480"},
    }


def parsed(document: dict[str, Any]) -> AgentConfig:
    """The validated config."""
    return parse_config(document)


def write_config(document: dict[str, Any], path: Path) -> Path:
    """Write a config document as YAML."""
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


class Recorder:
    """A subscriber that keeps every message (topic, payload, retain flag) it receives."""

    def __init__(self, port: int, topic: str = "csu/v1/#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "recorder could not subscribe"

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 10
    ) -> bool:
        """Wait until `predicate(messages)` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on one topic, in order."""
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[Any]:
        """Decoded JSON payloads on one topic."""
        return [json.loads(p) for p in self.on(topic)]

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        """Publish and wait for the broker's acknowledgement."""
        self.client.publish(topic, payload, qos=1, **kwargs).wait_for_publish(5)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


class Collector:
    """An in-process collector (real Ingestor and SQLite store) following a broker."""

    def __init__(self, broker: LocalBroker, db: Path, share_group: str = "", client_id: str = "") -> None:
        self.store = open_store(db)
        self.ingestor = Ingestor(self.store)
        self.ingestor.start(
            parse_broker_url(broker.url), share_group, client_id or f"collector-{uuid.uuid4().hex[:8]}"
        )
        assert self.ingestor.ready.wait(10), "collector did not subscribe"

    def wait_events(self, count: int, timeout: float = 15) -> bool:
        """Wait until `count` motion messages of the devices are stored (not counting the ends the
        collector writes when a device goes offline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(e.end_reason is None for e in self.store.events()) >= count:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop following and close the store."""
        self.ingestor.stop()
        self.store.close()
