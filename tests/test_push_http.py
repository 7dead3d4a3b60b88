"""The device's side of a push upload over HTTP and HTTPS (http.client, no `requests` on the device):
the collector's certificate is checked (against certifi, or the CSU's own CA in
`clip_server.collector_ca_file`; the endpoint serving HTTPS itself or behind a TLS front), a refusal ends
the upload, a 5xx or a garbled reply is retried, a kept-alive connection the collector closed is
replaced without a retry."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edge_agent.api.uploader import CHUNK_BYTES, _Collector
from edge_agent.collector.upload_endpoint import UploadEndpoint, UploadEndpointThread, server_tls_context
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.signing import RequestSigner
from edge_agent.formats.upload import UploadAck, parse_content_range
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import random_ring
from tests.push_support import DeviceSide, device_side, upload_command, upload_endpoint, uploader_config
from tests.relay_support import LoopbackRelay

REPO = Path(__file__).resolve().parent.parent
T0 = time.time() - 3600
TOKEN = "https-" + "h" * 30
UPLOAD_ID = "00112233445566778899aabbccddeeff"
UPLOAD_PATH = f"/v1/uploads/{UPLOAD_ID}"


def test_the_device_agent_does_not_import_requests() -> None:
    code = "import edge_agent.device.agent, edge_agent.commands.cli, sys; print('requests' in sys.modules)"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.strip() == "False"


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {"device": Ed25519PrivateKey.generate(), "collector": Ed25519PrivateKey.generate()}


@pytest.fixture
def ring(tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> Iterator[RingBuffer]:
    ring = random_ring(tmp_path / "ring", keys["device"], T0, 40)  # 80 s, ~2.5 MB: three chunks
    yield ring
    ring.close()


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[UploadEndpoint]:
    with upload_endpoint(tmp_path / "spool", UPLOAD_ID, TOKEN) as running:
        yield running


def _side(tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], base: str, **clip: Any) -> DeviceSide:
    return device_side(uploader_config(tmp_path, [base], **clip), ring, keys["device"], keys["collector"])


def _upload(
    side: DeviceSide, keys: dict[str, Any], url: str, token: str, lifetime_s: float
) -> dict[str, Any]:
    """Run one upload to its end; its outcome (delivered or failed)."""
    command = upload_command(
        RequestSigner(keys["collector"]), T0, T0 + 80, url, token, expires_at=time.time() + lifetime_s
    )
    assert side.uploader.handle_command(command)["ok"]
    assert side.uploader.wait(60)
    [outcome] = side.published("delivered") + side.published("failed")
    return outcome


# -- HTTPS: a TLS front before the upload endpoint, as a reverse proxy stands before a collector ----------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


LOOPBACK = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))


def tls_files(
    directory: Path, server_name: x509.GeneralName = LOOPBACK, ca_name: str = "Test collector CA"
) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signs for `server_name` (common name 127.0.0.1 whatever the
    name): the CA's, the server's certificate and the server's key, as PEM files in `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([server_name]), False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


class TlsFront(LoopbackRelay):
    """Terminates TLS on a loopback port and passes the plain stream to the endpoint; counts handshakes
    that succeeded and those the client broke off."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self.handshakes = 0
        self.broken_off = 0
        super().__init__(target_port)

    def relay(self, client: socket.socket) -> None:
        """Shake hands (within 10 s), then relay."""
        client.settimeout(10)
        try:
            tls = self._context.wrap_socket(client, server_side=True)
        except OSError:  # ssl.SSLError included: the device refused the certificate
            self.broken_off += 1
            client.close()
            return
        tls.settimeout(None)
        self.handshakes += 1
        self.pump(tls)


@pytest.mark.parametrize(
    ("trusted", "server_name", "delivered"),
    [
        (True, LOOPBACK, True),
        (False, LOOPBACK, False),
        (True, x509.DNSName("collector.example"), False),
    ],
    ids=["trusted", "unknown-ca", "other-name"],
)
def test_https_delivers_only_to_a_certificate_the_ca_bundle_vouches_for_by_name(
    tmp_path: Path,
    ring: RingBuffer,
    keys: dict[str, Any],
    endpoint: UploadEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    trusted: bool,
    server_name: x509.GeneralName,
    delivered: bool,
) -> None:
    ca, cert, key = tls_files(tmp_path, server_name)
    if trusted:  # the device trusts certifi's bundle, as under requests: this test's CA stands in for it
        monkeypatch.setattr(certifi, "where", lambda: str(ca))
    front = TlsFront(endpoint.port, cert, key)
    base = f"https://127.0.0.1:{front.port}"
    side = _side(tmp_path, ring, keys, base)
    try:
        outcome = _upload(side, keys, base + UPLOAD_PATH, TOKEN, 60.0 if delivered else 2.5)
    finally:
        front.close()
    counters = side.uploader.last_counters
    assert counters is not None
    if delivered:
        assert outcome["phase"] == "delivered" and endpoint.is_complete(UPLOAD_ID)
        # One connection carried the count query and every chunk.
        puts = 1 + -(-outcome["size"] // CHUNK_BYTES)
        assert (front.handshakes, front.broken_off, counters.puts, counters.retries) == (1, 0, puts, 0)
    else:
        # Refused at every attempt until the order expired: not one byte reached the endpoint.
        assert (outcome["phase"], outcome["error"]) == ("failed", "expired")
        assert front.handshakes == 0 and front.broken_off == counters.retries >= 2
        assert endpoint.held(UPLOAD_ID) == 0


# -- HTTPS served by the endpoint itself, its certificate from the CSU's own CA --------------------------


@contextmanager
def _https_endpoint(tmp_path: Path, cert: Path, key: Path) -> Iterator[UploadEndpoint]:
    """The real upload endpoint serving HTTPS on loopback, auditing what it refuses, one upload registered."""
    endpoint = UploadEndpoint(
        tmp_path / "tls-spool",
        audit=AuditLog(tmp_path / "csu-audit.jsonl"),
        tls=server_tls_context(cert, key),
    )
    thread = UploadEndpointThread(endpoint)
    thread.start()
    endpoint.register(UPLOAD_ID, TOKEN, time.time() + 600, 50 << 20)
    try:
        yield endpoint
    finally:
        thread.stop()


def _reached(tmp_path: Path, endpoint: UploadEndpoint) -> bool:
    """Whether any PUT reached the endpoint's HTTP layer: the first sets the announced size in the
    registration file, a refused one leaves a line in the collector's audit log."""
    registration = json.loads((endpoint.spool / f"{UPLOAD_ID}.json").read_text())
    audit = tmp_path / "csu-audit.jsonl"
    return registration["size"] is not None or (audit.exists() and bool(audit.read_text().strip()))


@pytest.mark.parametrize(
    ("device_ca", "delivered"),
    [("csu", True), (None, False), ("other", False)],
    ids=["csu-ca", "certifi-only", "wrong-ca"],
)
def test_the_endpoint_serves_https_that_the_device_trusts_through_collector_ca_file(
    tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], device_ca: str | None, delivered: bool
) -> None:
    csu_ca, cert, key = tls_files(tmp_path / "csu-pki", ca_name="Ville-01 CSU CA")
    other_ca, _, _ = tls_files(tmp_path / "other-pki", ca_name="Ville-01 CSU CA")  # same name, other key
    clip = {"collector_ca_file": str({"csu": csu_ca, "other": other_ca}[device_ca])} if device_ca else {}
    with _https_endpoint(tmp_path, cert, key) as endpoint:
        base = f"https://127.0.0.1:{endpoint.port}"
        side = _side(tmp_path, ring, keys, base, **clip)
        outcome = _upload(side, keys, base + UPLOAD_PATH, TOKEN, 60.0 if delivered else 2.5)
        counters = side.uploader.last_counters
        assert counters is not None
        if delivered:
            assert outcome["phase"] == "delivered" and endpoint.is_complete(UPLOAD_ID)
            assert (counters.sent, counters.retries) == (outcome["size"], 0)
            assert endpoint.part_path(UPLOAD_ID).stat().st_size == outcome["size"]
        else:
            # TLS refused the endpoint at every attempt until the order expired: no PUT reached it.
            assert (outcome["phase"], outcome["error"]) == ("failed", "expired")
            assert "CERTIFICATE_VERIFY_FAILED" in outcome["message"]
            assert counters.retries >= 2 and counters.sent == 0
            assert not _reached(tmp_path, endpoint) and endpoint.held(UPLOAD_ID) == 0


def test_the_device_refuses_plain_http_from_an_endpoint_that_serves_https(
    tmp_path: Path, ring: RingBuffer, keys: dict[str, Any]
) -> None:
    """An endpoint given a certificate does not also take the token in the clear: a plain HTTP PUT to it
    never reaches its HTTP layer."""
    _, cert, key = tls_files(tmp_path / "csu-pki")
    with _https_endpoint(tmp_path, cert, key) as endpoint:
        base = f"http://127.0.0.1:{endpoint.port}"
        outcome = _upload(_side(tmp_path, ring, keys, base), keys, base + UPLOAD_PATH, TOKEN, 2.5)
        assert (outcome["phase"], outcome["error"]) == ("failed", "expired")
        assert not _reached(tmp_path, endpoint)


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "garbage"])
def test_a_collector_ca_file_that_does_not_load_fails_the_upload_at_once(
    tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], content: bytes | None
) -> None:
    ca_file = tmp_path / "csu-ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    _, cert, key = tls_files(tmp_path / "csu-pki")
    with _https_endpoint(tmp_path, cert, key) as endpoint:
        base = f"https://127.0.0.1:{endpoint.port}"
        side = _side(tmp_path, ring, keys, base, collector_ca_file=str(ca_file))
        started = time.monotonic()
        outcome = _upload(side, keys, base + UPLOAD_PATH, TOKEN, 60.0)
        assert time.monotonic() - started < 10  # not retried until the order expires
        assert (outcome["phase"], outcome["error"]) == ("failed", "collector-ca")
        assert f"clip_server.collector_ca_file {ca_file}" in outcome["message"]
        assert not _reached(tmp_path, endpoint)


def test_a_token_the_collector_refuses_ends_the_upload_at_once(
    tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], endpoint: UploadEndpoint
) -> None:
    base = f"http://127.0.0.1:{endpoint.port}"
    side = _side(tmp_path, ring, keys, base)
    outcome = _upload(side, keys, base + UPLOAD_PATH, "wrong-" + "w" * 30, 60.0)
    assert (outcome["phase"], outcome["error"]) == ("failed", "token-refused")
    assert "HTTP 401" in outcome["message"] and "bad-token" in outcome["message"]
    counters = side.uploader.last_counters
    assert counters is not None and (counters.puts, counters.retries, counters.sent) == (1, 0, 0)


# -- faults the real endpoint does not make: a collector on http.server --------------------------------


class FakeCollector(ThreadingHTTPServer):
    """The upload protocol on http.server, with scripted faults: `faults` answers the first PUTs with
    (status, body) instead of an acknowledgement; `hang_up` closes every connection after its reply
    without saying so (no `Connection: close`), as an idle timeout in a reverse proxy does, and sets
    `hung_up`."""

    daemon_threads = True

    def __init__(self, faults: list[tuple[int, bytes]], hang_up: bool) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.faults = faults
        self.hang_up = hang_up
        self.hung_up = threading.Event()
        self.held = bytearray()
        self.connections = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """The upload URL."""
        return f"http://127.0.0.1:{self.server_address[1]}{UPLOAD_PATH}"

    def stop(self) -> None:
        """Stop serving and close the listener."""
        self.shutdown()
        self.server_close()


class _CollectorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeCollector

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_PUT(self) -> None:
        collector = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        asked = parse_content_range(self.headers["Content-Range"])
        if collector.faults:
            status, reply = collector.faults.pop(0)
        else:
            in_order = asked.first == len(collector.held)
            if in_order:
                collector.held += body
            held = len(collector.held)
            status = 200 if in_order or asked.is_query else 409
            reply = json.dumps(UploadAck(held, asked.total, held == asked.total).to_json()).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        self.wfile.flush()
        if collector.hang_up:
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            collector.hung_up.set()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def collector_factory() -> Iterator[Any]:
    started: list[FakeCollector] = []

    def start(faults: list[tuple[int, bytes]], hang_up: bool = False) -> FakeCollector:
        started.append(FakeCollector(faults, hang_up))
        return started[-1]

    yield start
    for collector in started:
        collector.stop()


def test_a_5xx_and_a_reply_that_is_no_ack_are_retried_without_resending(
    tmp_path: Path, ring: RingBuffer, keys: dict[str, Any], collector_factory: Any
) -> None:
    collector = collector_factory([(503, b"busy"), (200, b"<html>proxy</html>")])
    side = _side(tmp_path, ring, keys, collector.url.removesuffix(UPLOAD_PATH))
    outcome = _upload(side, keys, collector.url, TOKEN, 60.0)
    assert outcome["phase"] == "delivered" and len(collector.held) == outcome["size"]
    counters = side.uploader.last_counters
    assert counters is not None and (counters.retries, counters.resent) == (2, 0)


def test_a_connection_the_collector_hung_up_is_replaced_before_the_next_put(collector_factory: Any) -> None:
    collector = collector_factory([], hang_up=True)
    with _Collector(collector.url, TOKEN) as link:
        first = link.put("bytes 0-9/20", iter([b"0123456789"]), 10)
        assert collector.hung_up.wait(5)
        # Sent on the old connection, this PUT would find nobody to answer it.
        second = link.put("bytes 10-19/20", iter([b"abcdefghij"]), 10)
    assert [status for status, _ in (first, second)] == [200, 200]
    assert UploadAck.parse(second[1]) == UploadAck(20, 20, True)
    assert collector.held == b"0123456789abcdefghij" and collector.connections == 2
