"""The clip API over TLS when a certificate is configured; a client without the CA is refused."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.download import DeviceEndpoint, download_bundle
from edge_agent.formats.keys import generate_csu_keys, load_ed25519_private
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
        assert server.local_url.startswith("https://")
        query = [("camera", "cam1"), ("start", "1700000000"), ("end", "1700000004")]
        with DeviceEndpoint(server.local_url, RequestSigner(collector), ca_file=cert) as trusted:
            assert len(trusted.call_json("GET", "/v1/segments", query)["segments"]) == 2
            bundle = download_bundle(trusted, [*query, ("requisition", "PV-9")], tmp_path / "clip.tar")
        assert bundle.size == (tmp_path / "clip.tar").stat().st_size > 0
        with (
            DeviceEndpoint(server.local_url, RequestSigner(collector)) as untrusted,
            pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            untrusted.call_json("GET", "/v1/segments", query)


def test_cli_checks_the_device_certificate_against_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = _self_signed(tmp_path)
    config = device_config(tmp_path, tls_cert=str(cert), tls_key=str(key))
    csu = generate_csu_keys(tmp_path / "csu")
    device = Ed25519PrivateKey.generate()
    ring = random_ring(tmp_path / "ring", device, 1_700_000_000.0, 2)
    with running_server(config, ring, device, load_ed25519_private(csu.signing.private)) as server:
        common = [
            "--site", "ville-01", "--device", "pi-01", "--url", server.local_url,
            "--keys", str(csu.signing.private.parent), "--audit", str(tmp_path / "collector-audit.jsonl"),
        ]  # fmt: skip
        hold = ["--camera", "cam1", "--start", "1700000000", "--end", "1700000004", "--requisition", "PV-9"]
        assert collector_main(["hold", *common, *hold]) == 1
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
        assert ring.holds() == []
        # The attempt is in the collector's trail, as failed on the way: the device never saw it.
        (entry,) = [
            json.loads(line) for line in (tmp_path / "collector-audit.jsonl").read_text().splitlines()
        ]
        assert (entry["action"], entry["outcome"], entry["reason"]) == ("hold", "failed", "unreachable")
        assert "CERTIFICATE_VERIFY_FAILED" in entry["detail"]
        assert collector_main(["hold", *common, "--ca-file", str(cert), *hold]) == 0
        assert [h.requisition for h in ring.holds()] == ["PV-9"]
