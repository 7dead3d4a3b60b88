"""The clip API over TLS when a certificate is configured; a client without the CA is refused."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edge_agent.collector.download import DeviceEndpoint
from edge_agent.formats.signing import RequestSigner
from tests.clip_support import device_config, random_ring, running_server


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pi-01")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "clip.crt", directory / "clip.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_serves_signed_requests_and_checks_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    config = device_config(tmp_path, tls_cert=str(cert), tls_key=str(key))
    device, collector = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ring = random_ring(tmp_path / "ring", device, 1_700_000_000.0, 2)
    with running_server(config, ring, device, collector) as server:
        assert server.url.startswith("https://")
        trusted = DeviceEndpoint(
            server.url, RequestSigner(collector), ssl.create_default_context(cafile=cert)
        )
        query = [("camera", "cam1"), ("start", "1700000000"), ("end", "1700000004")]
        assert len(trusted.call_json("GET", "/v1/segments", query)["segments"]) == 2
        untrusted = DeviceEndpoint(server.url, RequestSigner(collector), ssl.create_default_context())
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.call_json("GET", "/v1/segments", query)
