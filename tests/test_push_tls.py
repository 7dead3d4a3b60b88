"""Push delivery over HTTPS without a reverse proxy: `fetch-clip --tls-cert/--tls-key` serves the upload
endpoint over TLS, a nomad device trusts the CSU's own CA through `clip_server.collector_ca_file`; a bad
certificate or key stops the command before anything starts, and `check-config` names a CA file that
would not load."""

from __future__ import annotations

import datetime
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.evidence import verify_export
from edge_agent.commands.cli import main as agent_main
from edge_agent.commands.config_cmd import pem_ca_problem
from edge_agent.device.agent import Agent
from edge_agent.formats.config import parse_config
from edge_agent.formats.keys import (
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_private,
)
from edge_agent.formats.times import iso_ms
from edge_agent.link.localbroker import LocalBroker, free_port
from tests.clip_support import encode_segments
from tests.push_support import DEVICE, SITE, audit_entries, nomad_document
from tests.test_push_http import tls_files


@pytest.fixture
def nomad(tmp_path: Path) -> dict[str, Any]:
    """Keys on disk and 10 s of real H.264 footage sealed in the device's ring, ending a minute ago."""
    csu = generate_csu_keys(tmp_path / "csu")
    device = generate_device_key(tmp_path / "device-keys")
    t0 = time.time() - 70.0
    ring = encode_segments(
        tmp_path / "segments",
        load_ed25519_private(device.private),
        load_x25519_private(csu.sealing.private).public_key(),
        t0,
        10.0,
    )
    ring.close()
    return {"csu": csu, "device": device, "t0": t0}


def _fetch_args(tmp_path: Path, nomad: dict[str, Any], broker: str, listen: str, *extra: str) -> list[str]:
    t0 = nomad["t0"]
    return [
        "fetch-clip",
        "--site", SITE, "--device", DEVICE, "--camera", "cam1",
        "--start", iso_ms(t0 + 1), "--end", iso_ms(t0 + 9), "--requisition", "PV 2026/311",
        "--keys", str(tmp_path / "csu"), "--device-key", str(nomad["device"].public),
        "--audit", str(tmp_path / "csu-audit.jsonl"), "-o", str(tmp_path / "export"), "--no-progress",
        "--via", "push", "--broker", broker, "--upload-listen", listen,
        "--push-timeout", "60",  # a test that fails ends within a minute, not after the default 6 h
        *extra,
    ]  # fmt: skip


def test_a_nomad_device_pushes_over_https_to_a_collector_certified_by_the_csu_ca(
    tmp_path: Path, mosquitto: LocalBroker, nomad: dict[str, Any]
) -> None:
    ca, cert, key = tls_files(tmp_path / "csu-pki", ca_name="Ville-01 CSU CA")
    upload_port = free_port()
    collector_url = f"https://127.0.0.1:{upload_port}"
    document = nomad_document(
        tmp_path, mosquitto.port, nomad["device"], nomad["csu"], [collector_url], collector_ca_file=str(ca)
    )
    (tmp_path / "nomad.yaml").write_text(yaml.safe_dump(document))
    agent = Agent(parse_config(document), tmp_path / "nomad.yaml", hotplug=False)
    agent.start()
    try:
        tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
        broker = f"mqtt://127.0.0.1:{mosquitto.port}"
        code = collector_main(_fetch_args(tmp_path, nomad, broker, f"127.0.0.1:{upload_port}", *tls))
    finally:
        agent.stop()
    assert code == 0
    export = tmp_path / "export"
    evidence, problems = verify_export(export, [load_ed25519_public(nomad["csu"].signing.public)])
    assert problems == [] and evidence is not None
    assert evidence["verification"]["result"] == "verified"
    assert evidence["source"].startswith(f"{collector_url}/v1/uploads/")
    outcomes = [(e["action"], e["outcome"]) for e in audit_entries(tmp_path / "audit.jsonl")]
    assert outcomes == [("upload_clip", "accepted"), ("upload_clip", "delivered")]


def _expired_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that expired yesterday, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    paths = directory / "expired.crt", directory / "expired.key"
    paths[0].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _bad_tls_options(tmp_path: Path, case: str) -> list[str]:
    """The TLS options of one bad case (files made under tmp_path)."""
    _, cert, key = tls_files(tmp_path / "pki")
    _, _, other_key = tls_files(tmp_path / "other-pki")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    expired_cert, expired_key = _expired_pair(tmp_path)
    missing = tmp_path / "missing.pem"
    return {
        "cert-alone": ["--tls-cert", str(cert)],
        "key-alone": ["--tls-key", str(key)],
        "missing-cert": ["--tls-cert", str(missing), "--tls-key", str(key)],
        "missing-key": ["--tls-cert", str(cert), "--tls-key", str(missing)],
        "garbage-cert": ["--tls-cert", str(garbage), "--tls-key", str(key)],
        "garbage-key": ["--tls-cert", str(cert), "--tls-key", str(garbage)],
        "key-of-another": ["--tls-cert", str(cert), "--tls-key", str(other_key)],
        "encrypted-key": ["--tls-cert", str(cert), "--tls-key", str(encrypted)],
        "expired-cert": ["--tls-cert", str(expired_cert), "--tls-key", str(expired_key)],
        "http-upload-url": [
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--upload-url",
            "http://csu:8490",
        ],
    }[case]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("cert-alone", "--tls-cert and --tls-key go together"),
        ("key-alone", "--tls-cert and --tls-key go together"),
        ("missing-cert", "--tls-cert {tmp}/missing.pem: cannot read"),
        ("missing-key", "--tls-key {tmp}/missing.pem: cannot read"),
        ("garbage-cert", "--tls-cert {tmp}/garbage.pem: not a PEM certificate"),
        ("garbage-key", "--tls-key {tmp}/garbage.pem: not a PEM private key"),
        ("key-of-another", "--tls-key {tmp}/other-pki/server.key: not the key of the certificate"),
        ("encrypted-key", "--tls-key {tmp}/encrypted.key: encrypted with a passphrase"),
        ("expired-cert", "--tls-cert {tmp}/expired.crt: valid from"),
        ("http-upload-url", "--upload-url 'http://csu:8490': the endpoint serves HTTPS"),
    ],
)
def test_a_bad_tls_certificate_or_key_is_named_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, words: str
) -> None:
    nomad = {"t0": time.time() - 60, "device": generate_device_key(tmp_path / "device-keys")}
    upload_port = free_port()
    args = _fetch_args(
        tmp_path, nomad, "mqtt://127.0.0.1:1", f"127.0.0.1:{upload_port}", *_bad_tls_options(tmp_path, case)
    )
    code = collector_main(args)
    error = capsys.readouterr().err
    assert code == 2, error  # a usage error: not 1, which a refused or failed push would give
    assert words.format(tmp=tmp_path) in error
    # Nothing started: no export directory, no audit line, the port still free.
    assert not (tmp_path / "export").exists() and not (tmp_path / "csu-audit.jsonl").exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", upload_port)) != 0


# -- check-config --------------------------------------------------------------------------------------


def _check_config(tmp_path: Path, ca_file: Path) -> int:
    """check-config on a nomad kit's config (real key files) naming `ca_file`: its exit code."""
    csu = generate_csu_keys(tmp_path / "csu")
    device = generate_device_key(tmp_path / "device-keys")
    document = nomad_document(
        tmp_path, 1883, device, csu, ["https://collector.csu.example"], collector_ca_file=str(ca_file)
    )
    path = tmp_path / "nomad.yaml"
    path.write_text(yaml.safe_dump(document))
    return agent_main(["check-config", str(path)])


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("missing", "no such file"),
        ("garbage", "not a PEM certificate"),
        ("private-key", "not a PEM certificate"),
        ("leaf", "CN=127.0.0.1: not a CA certificate"),
    ],
)
def test_check_config_names_a_collector_ca_file_that_is_no_pem_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, problem: str
) -> None:
    _, leaf, key = tls_files(tmp_path / "pki")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    ca_file = {
        "missing": tmp_path / "missing.pem",
        "garbage": garbage,
        "private-key": key,
        "leaf": leaf,
    }[case]
    code = _check_config(tmp_path, ca_file)
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"clip_server.collector_ca_file: {ca_file}: {problem}" in out


def test_a_collector_ca_is_checked_for_its_validity_period(tmp_path: Path) -> None:
    ca, _, _ = tls_files(tmp_path / "pki")  # valid for a day
    assert pem_ca_problem(ca) == ""
    assert "CN=Test collector CA: valid from" in pem_ca_problem(ca, now=time.time() + 3 * 86400)
    assert "CN=Test collector CA: valid from" in pem_ca_problem(ca, now=time.time() - 3 * 86400)


def test_check_config_accepts_a_csu_ca_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root_ca, _, _ = tls_files(tmp_path / "pki", ca_name="Ville-01 CSU CA")
    other_ca, _, _ = tls_files(tmp_path / "pki-2", ca_name="Ville-01 CSU CA 2026")
    bundle = tmp_path / "csu-cas.pem"
    bundle.write_bytes(root_ca.read_bytes() + other_ca.read_bytes())
    code = _check_config(tmp_path, bundle)
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("ok\n"), out
