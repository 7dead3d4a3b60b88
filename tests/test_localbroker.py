"""LocalBroker: a real mosquitto that starts, accepts MQTT, stops, restarts on its port, takes extras."""

from __future__ import annotations

import shutil
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest

from edge_agent.link.localbroker import BrokerError, LocalBroker, _accepts


def _roundtrip(port: int, **auth: str) -> int:
    """Connect, and return the CONNACK reason code (0 = accepted)."""
    done = threading.Event()
    result: dict[str, int] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if auth:
        client.username_pw_set(auth["username"], auth["password"])

    def on_connect(_c, _u, _f, reason_code, _p):
        result["rc"] = reason_code.value
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert done.wait(5), "no CONNACK"
    client.disconnect()
    client.loop_stop()
    return result["rc"]


def test_starts_accepts_and_stops() -> None:
    with LocalBroker() as broker:
        assert broker.running
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert _roundtrip(broker.port) == 0
        workdir = broker.workdir
    assert not broker.running
    assert not _accepts("127.0.0.1", broker.port)
    assert not workdir.exists()


def test_restart_on_same_port_keeps_retained_messages(mosquitto: LocalBroker) -> None:
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    publisher.publish("t/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
    publisher.disconnect()
    publisher.loop_stop()
    port = mosquitto.port
    mosquitto.stop()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.port == port

    got = threading.Event()
    received: list[bytes] = []
    reader = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    reader.on_connect = lambda c, *_: c.subscribe("t/retained", qos=1)
    reader.on_message = lambda _c, _u, msg: (received.append(msg.payload), got.set())
    reader.connect("127.0.0.1", port)
    reader.loop_start()
    try:
        assert got.wait(5), "retained message lost across restart"
    finally:
        reader.disconnect()
        reader.loop_stop()
    assert received == [b"kept"]


def test_password_file_extra_config(mosquitto_factory, tmp_path) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd missing (mosquitto-clients/mosquitto package)")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "alice", "s3cret"], check=True)
    broker = mosquitto_factory([f"password_file {passwd}", "allow_anonymous false"])
    assert "allow_anonymous true" not in broker.config_text()
    assert _roundtrip(broker.port, username="alice", password="s3cret") == 0
    assert _roundtrip(broker.port, username="alice", password="wrong") != 0


def test_bad_config_is_reported_with_mosquittos_reason() -> None:
    broker = LocalBroker(["no_such_option 1"])
    try:
        with pytest.raises(BrokerError, match=r"no_such_option|Unknown configuration"):
            broker.start()
    finally:
        broker.cleanup()
