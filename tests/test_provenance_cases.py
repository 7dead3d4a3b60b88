"""Provenance beyond the common export: old segments, other certificates, the sealed original, the
command line, and the standalone script's own rules (issue 15)."""

from __future__ import annotations

import ast
import datetime
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.evidence import process_bundle
from edge_agent.collector.pki import import_credential, init_pki, load_credential
from edge_agent.collector.provenance import read_manifest, sign_clip, sign_export, verify_clip
from tests.test_provenance import SCRIPT, _both, _copy, _pem, _script, site  # noqa: F401 (the module fixture)

FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"
NOW = datetime.datetime.now(datetime.UTC)


def test_old_format_segments_export_with_a_statement_not_a_failure(tmp_path: Path) -> None:
    device = load_pem_private_key((FIXTURE / "device_ed25519.pem").read_bytes(), None)
    csu = load_pem_private_key((FIXTURE / "csu_x25519.pem").read_bytes(), None)
    assert isinstance(device, Ed25519PrivateKey) and isinstance(csu, X25519PrivateKey)
    init_pki(tmp_path / "pki", "Ville", NOW)
    credential = load_credential(tmp_path / "pki")
    shutil.copy(FIXTURE / "export" / "bundle.tar", tmp_path / "bundle.tar")
    clip = tmp_path / "clip.mp4"
    check = process_bundle(tmp_path / "bundle.tar", device.public_key(), csu, clip)
    sign_export(
        clip, check.manifest, device.public_key(), check.sealed, check.samples, check.gaps(), [], credential
    )
    report = verify_clip(clip, credential.ca_pem(), tmp_path / "bundle.tar", [device.public_key()])
    frames = [line for line in report.lines() if line.startswith("frames ")]
    assert frames == ["frames 00:00:00-00:00:04: no frame-level signature (segments before version 2)"]
    assert report.ok, report.lines()
    (tmp_path / "pi-01.pub").write_bytes(_pem(device))
    code, lines = _script(clip, tmp_path / "pki" / "csu_ca.pem", "--device-keys", str(tmp_path / "pi-01.pub"))
    assert (code, lines) == (0, report.lines())


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_an_imported_ecdsa_certificate_signs_trusted_exports(site, tmp_path: Path) -> None:  # noqa: F811
    """A town's existing PKI uses ECDSA: `pki import` accepts its certificate, and C2PA validators too."""
    ca_credential = site["credential"]
    ca_key = load_pem_private_key((site["csu_dir"] / "csu_ca_key.pem").read_bytes(), None)
    assert isinstance(ca_key, Ed25519PrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector-2")]))
        .issuer_name(ca_credential.ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, None)
    )
    pem = serialization.Encoding.PEM
    import_credential(
        tmp_path / "keys",
        _write(tmp_path / "cert.pem", cert.public_bytes(pem)),
        _write(
            tmp_path / "key.pem",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
        _write(tmp_path / "ca.pem", ca_credential.ca.public_bytes(pem)),
        NOW,
    )
    credential = load_credential(tmp_path / "keys")
    assert credential.algorithm == "ES256"
    clip = _copy(site, tmp_path) / "clip.mp4"
    assertion = read_manifest(clip, credential.ca_pem()).assertion
    assert assertion is not None
    sign_clip(clip, assertion, credential)
    lines = _both(site, clip)
    assert (
        lines[0] == "C2PA manifest: signed by collector-2 (issuer ?), valid, trusted: issued under the CSU CA"
    )
    assert lines[-1] == "result: VERIFIED"


def test_a_certificate_under_another_ca_is_valid_but_not_trusted(site, tmp_path: Path) -> None:  # noqa: F811
    clip = _copy(site, tmp_path) / "clip.mp4"
    assertion = read_manifest(clip, site["credential"].ca_pem()).assertion
    assert assertion is not None
    init_pki(tmp_path / "elsewhere", "Ailleurs", NOW)
    sign_clip(clip, assertion, load_credential(tmp_path / "elsewhere"))
    lines = _both(site, clip)
    assert lines[0] == (
        "C2PA manifest: signed by Ailleurs CSU collector (issuer Ailleurs),"
        " valid, but NOT issued under the CSU CA"
    )
    assert "problem: C2PA: signingCredential.untrusted: signing certificate untrusted" in lines


def test_the_device_signatures_need_the_sealed_original(site, tmp_path: Path) -> None:  # noqa: F811
    export = _copy(site, tmp_path)
    clip = export / "clip.mp4"
    (export / "bundle.tar").rename(tmp_path / "elsewhere.tar")
    lines = _both(site, clip)
    assert "problem: no bundle.tar (the sealed original): the device's signatures cannot be checked" in lines
    # A segment altered inside the sealed original is named.
    with tarfile.open(tmp_path / "elsewhere.tar") as archive:
        offset = archive.getmember("segments/000000000004.seg").offset_data
    data = bytearray((tmp_path / "elsewhere.tar").read_bytes())
    data[offset + 2000] ^= 0x01
    (export / "bundle.tar").write_bytes(bytes(data))
    lines = _both(site, clip)
    assert "problem: segment cam1#4: fails verification in the sealed original" in lines
    # Another device's bundle: its manifest is not signed by the device the clip names.
    shutil.copy(FIXTURE / "export" / "bundle.tar", export / "bundle.tar")
    lines = _both(site, clip)
    assert "problem: bundle.tar: unreadable, or its manifest is not signed by device pi-01" in lines


def test_fetch_clip_signs_with_the_certificate_in_the_key_directory(site, tmp_path: Path, capsys) -> None:  # noqa: F811
    from tests.clip_support import device_config, encode_segments, running_server

    keys = site["keys"]
    csu_dir = tmp_path / "keys"
    shutil.copytree(site["csu_dir"], csu_dir)
    for name, key in (("csu_ed25519.pem", keys["collector"]), ("csu_x25519.pem", keys["csu"])):
        path = csu_dir / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
    ring = encode_segments(tmp_path / "ring", keys["device"], keys["csu"].public_key(), 1_700_000_000.0, 6.0)
    config = device_config(tmp_path, max_clip_seconds=60)
    device_key = csu_dir / "devices" / "ville-01" / "pi-01.pub"
    try:
        with running_server(config, ring, keys["device"], keys["collector"]) as server:
            argv = ["fetch-clip", "--site", "ville-01", "--device", "pi-01", "--url", server.local_url]
            argv += ["--keys", str(csu_dir), "--device-key", str(device_key), "--camera", "cam1"]
            argv += ["--start", "1700000000.5", "--end", "1700000005", "--requisition", "PV 9"]
            argv += ["-o", str(tmp_path / "out"), "--no-progress", "--audit", str(tmp_path / "audit.jsonl")]
            assert collector_main(argv) == 0, capsys.readouterr()
    finally:
        ring.close()
    assert read_manifest(tmp_path / "out" / "clip.mp4", site["credential"].ca_pem()).state == "Trusted"
    capsys.readouterr()
    assert collector_main(["verify", str(tmp_path / "out"), "--keys", str(csu_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "result: VERIFIED" in out
    assert out[-1].endswith("intact (verified), cam1 requisition PV 9")
    # A CA file that is not one is named, not a traceback.
    (tmp_path / "bad.pem").write_text("nothing\n")
    argv = ["verify", str(tmp_path / "out"), "--keys", str(csu_dir), "--ca", str(tmp_path / "bad.pem")]
    assert collector_main(argv) == 2
    assert "bad.pem: not a PEM certificate file" in capsys.readouterr().err


def test_the_script_imports_only_what_a_court_expert_installs() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"av", "c2pa", "cryptography"}
    assert len(SCRIPT.read_text().splitlines()) < 500  # read in an hour


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["clip", "--ca", "missing-ca.pem"], "missing-ca.pem"),
        (["clip", "--ca", "ca", "--device-keys", "rsa.pub"], "rsa.pub: not an Ed25519 public key"),
        (["nothing.mp4", "--ca", "ca"], "nothing.mp4: no such file"),
    ],
)
def test_the_script_names_bad_arguments(site, tmp_path: Path, argv: list[str], named: str) -> None:  # noqa: F811
    rsa_key = rsa.generate_private_key(65537, 2048)
    (tmp_path / "rsa.pub").write_bytes(_pem(rsa_key))
    paths = {"clip": str(site["outcome"].export_dir / "clip.mp4"), "ca": str(site["csu_dir"] / "csu_ca.pem")}
    argv = [paths.get(a, str(tmp_path / a) if a.endswith((".pem", ".pub", ".mp4")) else a) for a in argv]
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert named in done.stderr


def test_a_gap_in_the_device_chain_is_said_in_words(site, tmp_path: Path) -> None:  # noqa: F811
    """A segment removed from the device's card: the clip is exported without it (incomplete), and
    the verifiers say where the gap is and that the chain skips it."""
    from edge_agent.collector.download import DeviceEndpoint
    from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
    from edge_agent.formats.audit import AuditLog
    from edge_agent.formats.config import StorageConfig
    from edge_agent.formats.signing import RequestSigner
    from edge_agent.storage.ringbuffer import RingBuffer
    from tests.clip_support import device_config, running_server

    keys, t0 = site["keys"], 1_700_000_000.0
    shutil.copytree(site["root"] / "ring", tmp_path / "ring")
    (removed,) = (tmp_path / "ring" / "cam1").glob("000000000004.*")  # T0+6 .. T0+8
    removed.unlink()
    storage = StorageConfig(path=tmp_path / "ring", min_free_bytes=0)
    ring = RingBuffer(
        tmp_path / "ring", storage, lambda: t0 + 60, device_public_key=keys["device"].public_key()
    )
    credential = site["credential"]
    collector_keys = CollectorKeys(keys["collector"], keys["csu"], keys["device"].public_key(), credential)
    request = ClipRequest("ville-01", "pi-01", "cam1", t0 + 2, t0 + 12, "PV 2024/119")
    try:
        with running_server(
            device_config(tmp_path, max_clip_seconds=60), ring, keys["device"], keys["collector"]
        ) as server:
            endpoint = DeviceEndpoint(server.local_url, RequestSigner(keys["collector"]))
            outcome = fetch_clip(
                endpoint, request, collector_keys, tmp_path / "export", AuditLog(tmp_path / "a.jsonl")
            )
    finally:
        ring.close()
    assert outcome.evidence["verification"]["result"] == "incomplete"
    lines = _both(site, tmp_path / "export" / "clip.mp4")
    assert "gap 00:00:04-00:00:06: footage missing: the device's hash chain is broken here" in lines
    assert "chain: cam1#4 absent between cam1#3 and cam1#5" in lines
    assert lines[-1] == "result: VERIFIED"  # what is there is the device's, and the gap is said


def test_a_malformed_assertion_is_named_not_a_traceback(site, tmp_path: Path) -> None:  # noqa: F811
    clip = _copy(site, tmp_path) / "clip.mp4"
    assertion = read_manifest(clip, site["credential"].ca_pem()).assertion
    assert assertion is not None
    del assertion["samples"]
    assertion["device_key"]["ed25519"] = "not hex"
    sign_clip(clip, assertion, site["credential"])
    lines = _both(site, clip)
    assert lines[1:] == [
        "problem: the fr.csu.evidence.v1 assertion is malformed"
        " (ValueError: non-hexadecimal number found in fromhex() arg at position 0)",
        "result: NOT VERIFIED (1 problem(s))",
    ]


def test_every_gap_reason_has_words_in_both_verifiers() -> None:
    """A gap the device or the collector names must read as a sentence in a report, not as a code."""
    import importlib.util

    from edge_agent.collector.provenance import GAP_WORDS
    from edge_agent.formats.bundle import GAP_REASONS

    spec = importlib.util.spec_from_file_location("verify_evidence", SCRIPT)
    assert spec is not None and spec.loader is not None
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    collector_reasons = ("missing", "tampered")  # the collector's own, for segments it refused or lacks
    for reason in (*GAP_REASONS, *collector_reasons):
        assert reason in GAP_WORDS and reason in standalone.GAP_WORDS, reason
    assert GAP_WORDS == standalone.GAP_WORDS  # the same words whichever tool the court expert runs
