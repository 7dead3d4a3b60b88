"""The CSU broker's shipped config and ACL on a real mosquitto: a device publishes only under its own
site/device topics and reads only its own commands; the TLS listener config starts and authenticates."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.link.localbroker import LocalBroker, free_port

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware_cfg" / "mosquitto"
NO_SUBSCRIBERS = 16  # MQTT 5 PUBACK: accepted, nobody subscribed
ACCOUNTS = {"ville-01/pt-042": "pw-042", "ville-01/pt-043": "pw-043", "csu-collector": "pw-csu"}

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd (Debian mosquitto) missing"
)


def password_file(directory: Path) -> Path:
    path = directory / "passwd"
    path.touch(mode=0o600)
    for user, password in ACCOUNTS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True)
    return path


class Client:
    """A paho MQTT v5 client that records deliveries and broker acknowledgements."""

    def __init__(self, port: int, user: str | None, password: str | None = None, **tls: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.connect_reason: int | None = None
        self.granted: list[int] = []
        self._event = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        if user:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set(ca_certs=tls["ca"])
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1" if not tls else "localhost", port)
        self.client.loop_start()
        self.wait(lambda: self.connect_reason is not None)

    def _notify(self) -> None:
        with self._event:
            self._event.notify_all()

    def _on_connect(self, _c, _u, _f, reason, _p=None) -> None:  # type: ignore[no-untyped-def]
        self.connect_reason = reason.value
        self._notify()

    def _on_message(self, _c, _u, message) -> None:  # type: ignore[no-untyped-def]
        self.messages.append((message.topic, message.payload))
        self._notify()

    def _on_publish(self, _c, _u, mid, reason, _p=None) -> None:  # type: ignore[no-untyped-def]
        self.acks[mid] = reason.value
        self._notify()

    def _on_subscribe(self, _c, _u, _mid, reasons, _p=None) -> None:  # type: ignore[no-untyped-def]
        self.granted.extend(r.value for r in reasons)
        self._notify()

    def wait(self, ready, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
        with self._event:
            assert self._event.wait_for(ready, timeout), "broker did not answer in time"

    def publish(self, topic: str) -> int:
        """Publish at QoS 1; the PUBACK reason code (0 or 16 accepted, 135 not authorized)."""
        info = self.client.publish(topic, topic.encode(), qos=1)
        self.wait(lambda: info.mid in self.acks)
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        count = len(self.granted)
        self.client.subscribe(topic, qos=1)
        self.wait(lambda: len(self.granted) > count)
        return self.granted[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A real mosquitto running the shipped ACL file with per-device accounts."""
    extra = [
        "allow_anonymous false",
        f"password_file {password_file(tmp_path)}",
        f"acl_file {FIRMWARE / 'csu-broker.acl'}",
    ]
    with LocalBroker(extra_config=extra, persistence=False) as broker:
        yield broker


def test_device_cannot_publish_under_another_device(acl_broker: LocalBroker) -> None:
    collector = Client(acl_broker.port, "csu-collector", "pw-csu")
    device = Client(acl_broker.port, "ville-01/pt-042", "pw-042")
    try:
        assert collector.subscribe("csu/v1/#") == 1
        own = [
            "csu/v1/ville-01/pt-042/status",
            "csu/v1/ville-01/pt-042/availability",
            "csu/v1/ville-01/pt-042/cam-1/motion",
            "csu/v1/ville-01/pt-042/cmd_result",
        ]
        foreign = [
            "csu/v1/ville-01/pt-043/status",  # the neighbour on the same site
            "csu/v1/ville-02/pt-042/status",  # same device id on another site
            "csu/v1/ville-01/status",  # a site-level topic
            "csu/v2/ville-01/pt-042/status",  # another root
        ]
        assert [device.publish(t) for t in own] == [0, 0, 0, 0]
        assert [device.publish(t) for t in foreign] == [135, 135, 135, 135]  # not authorized
        collector.wait(lambda: len(collector.messages) >= len(own))
        time.sleep(0.2)  # a leaked foreign message would arrive in this window
        assert [topic for topic, _ in collector.messages] == own
    finally:
        collector.close()
        device.close()


def test_device_reads_only_its_own_commands(acl_broker: LocalBroker) -> None:
    collector = Client(acl_broker.port, "csu-collector", "pw-csu")
    device = Client(acl_broker.port, "ville-01/pt-042", "pw-042")
    try:
        neighbour = Client(acl_broker.port, "ville-01/pt-043", "pw-043")
        # mosquitto 2 grants a wide subscription and applies the read ACL to each message delivered.
        assert device.subscribe("csu/v1/#") == 1
        assert neighbour.publish("csu/v1/ville-01/pt-043/cam-1/motion") == 0
        neighbour.close()
        assert collector.publish("csu/v1/ville-01/pt-043/cmd/hold") == 0
        assert collector.publish("csu/v1/ville-01/pt-042/cmd/snapshot") == 0
        device.wait(lambda: len(device.messages) >= 1)
        time.sleep(0.2)
        assert [topic for topic, _ in device.messages] == ["csu/v1/ville-01/pt-042/cmd/snapshot"]
        # The collector may command devices but not speak for them.
        assert collector.publish("csu/v1/ville-01/pt-042/status") == 135
    finally:
        collector.close()
        device.close()


def test_unknown_or_wrong_credentials_are_refused(acl_broker: LocalBroker) -> None:
    for user, password in (("ville-01/pt-042", "pw-043"), (None, None), ("ville-01/pt-999", "x")):
        client = Client(acl_broker.port, user, password)
        try:
            assert client.connect_reason in (134, 135), (user, client.connect_reason)
        finally:
            client.close()


def _tls_material(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost, as the CSU's PKI would issue them."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer, ca: bool):  # type: ignore[no-untyped-def]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    files = {"ca": directory / "ca.crt", "crt": directory / "server.crt", "key": directory / "server.key"}
    pem = serialization.Encoding.PEM
    files["ca"].write_bytes(cert("CSU test CA", ca_key, "CSU test CA", ca_key, True).public_bytes(pem))
    files["crt"].write_bytes(cert("localhost", server_key, "CSU test CA", ca_key, False).public_bytes(pem))
    files["key"].write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def test_shipped_broker_config_serves_tls_with_the_acl(tmp_path: Path) -> None:
    """csu-broker.conf itself, with only its file locations and ports moved into the test directory."""
    tls = _tls_material(tmp_path)
    tls_port, admin_port = free_port(), free_port()
    replacements = {
        "/etc/mosquitto/csu/passwd": str(password_file(tmp_path)),
        "/etc/mosquitto/csu/csu-broker.acl": str(FIRMWARE / "csu-broker.acl"),
        "/etc/mosquitto/csu/tls/server.crt": str(tls["crt"]),
        "/etc/mosquitto/csu/tls/server.key": str(tls["key"]),
        "/etc/mosquitto/csu/tls/ca.crt": str(tls["ca"]),
        "/var/lib/mosquitto/": f"{tmp_path}/",
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "listener 1883 127.0.0.1": f"listener {admin_port} 127.0.0.1",
    }
    text = (FIRMWARE / "csu-broker.conf").read_text()
    for old, new in replacements.items():
        assert old in text, f"csu-broker.conf no longer contains {old!r}"
        text = text.replace(old, new)
    with LocalBroker(extra_config=text.splitlines(), persistence=False) as broker:
        device = Client(tls_port, "ville-01/pt-042", "pw-042", ca=str(tls["ca"]))
        try:
            assert device.connect_reason == 0, broker.log()
            assert device.publish("csu/v1/ville-01/pt-042/status") == NO_SUBSCRIBERS  # accepted
            assert device.publish("csu/v1/ville-01/pt-043/status") == 135
        finally:
            device.close()
        anonymous = Client(tls_port, None, ca=str(tls["ca"]))
        try:
            assert anonymous.connect_reason == 135
        finally:
            anonymous.close()
