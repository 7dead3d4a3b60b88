"""`csu-collector pki`: a CA and collector certificate for a town without a PKI, or an imported one."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.pki import (
    C2PA_KEY_USAGES,
    PkiError,
    PkiPaths,
    import_credential,
    init_pki,
    load_ca,
    load_credential,
)

NOW = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_a_ca_and_a_collector_certificate_c2pa_accepts(tmp_path: Path, capsys) -> None:
    assert collector_main(["pki", "init", "--keys", str(tmp_path), "--org", "Ville de Test"]) == 0
    out = capsys.readouterr().out
    assert "move it offline" in out
    paths = PkiPaths(tmp_path)
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
        "csu_ca.pem": 0o644,
        "csu_ca_key.pem": 0o600,
        "collector_cert.pem": 0o644,
        "collector_cert_key.pem": 0o600,
    }
    ca = load_ca(paths.ca_cert)
    credential = load_credential(tmp_path)
    leaf = credential.chain[0]
    assert credential.algorithm == "Ed25519"
    assert isinstance(leaf.public_key(), Ed25519PublicKey)
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    assert not leaf.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    usages = set(leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value)
    assert usages == set(C2PA_KEY_USAGES)
    assert "Ville de Test" in leaf.subject.rfc4514_string()
    assert collector_main(["pki", "show", "--keys", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "collector (Ed25519): O=Ville de Test,CN=Ville de Test CSU collector" in shown


def test_init_never_replaces_a_ca_unless_forced(tmp_path: Path, capsys) -> None:
    init_pki(tmp_path, "Ville", NOW)
    before = (tmp_path / "csu_ca.pem").read_bytes()
    assert collector_main(["pki", "init", "--keys", str(tmp_path)]) == 1
    assert "refusing to overwrite existing file(s)" in capsys.readouterr().err
    assert (tmp_path / "csu_ca.pem").read_bytes() == before
    assert collector_main(["pki", "init", "--keys", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "csu_ca.pem").read_bytes() != before
    assert collector_main(["pki", "init", "--keys", str(tmp_path / "other"), "--days", "0"]) == 2
    assert "--days must be positive" in capsys.readouterr().err


def _town_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A town's existing ECDSA CA (not made by us)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mairie Root CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=400))
        .not_valid_after(NOW + datetime.timedelta(days=4000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _sha256())
    )
    return cert, key


def _sha256() -> hashes.SHA256:
    return hashes.SHA256()


def _issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: object,
    *,
    usages: list[x509.ObjectIdentifier] | None = None,
    end_entity: bool = True,
    days: int = 365,
    with_aki: bool = True,
    key_usage: bool = True,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector.mairie")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=not end_entity, path_length=None), critical=True)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if key_usage:
        signing = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        builder = builder.add_extension(signing, critical=True)
    if with_aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    return builder.sign(ca_key, _sha256())


def _write(path: Path, *items: object) -> Path:
    data = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            data += item.public_bytes(serialization.Encoding.PEM)
        else:
            data += item.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_import_takes_an_existing_ecdsa_certificate_and_its_ca(tmp_path: Path, capsys) -> None:
    ca, ca_key = _town_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(ca, ca_key, key, usages=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    keys = tmp_path / "keys"
    chain = _write(tmp_path / "chain.pem", cert, ca)  # the root at the end stands for --ca
    argv = [
        "pki",
        "import",
        "--keys",
        str(keys),
        "--cert",
        str(chain),
        "--key",
        str(_write(tmp_path / "k", key)),
    ]
    assert collector_main(argv) == 0, capsys.readouterr().err
    credential = load_credential(keys)
    assert credential.algorithm == "ES256"
    assert credential.chain == (cert,)
    assert load_ca(keys / "csu_ca.pem") == ca
    assert _mode(keys / "collector_cert_key.pem") == 0o600
    assert collector_main([*argv]) == 1  # already there
    assert "refusing to overwrite" in capsys.readouterr().err
    assert collector_main(["pki", "show", "--keys", str(keys)]) == 0


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("other key", "the key is not the certificate's key"),
        ("ca as collector", "is a CA certificate, not an end entity"),
        ("no usage", "names neither documentSigning nor emailProtection"),
        ("tls usage", "names neither documentSigning nor emailProtection"),
        ("no aki", "no authority key identifier"),
        ("no key usage", "its key usage does not name digitalSignature"),
        ("expired", "the certificate is valid"),
        ("other ca", "is not issued by CN=Mairie Root CA"),
    ],
)
def test_import_refuses_what_c2pa_validators_would_reject(tmp_path: Path, case: str, named: str) -> None:
    ca, ca_key = _town_ca()
    key = Ed25519PrivateKey.generate()
    good = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    cert = {
        "other key": lambda: _issue(ca, ca_key, Ed25519PrivateKey.generate(), usages=good),
        "ca as collector": lambda: _issue(ca, ca_key, key, usages=good, end_entity=False),
        "no usage": lambda: _issue(ca, ca_key, key),
        "tls usage": lambda: _issue(ca, ca_key, key, usages=[ExtendedKeyUsageOID.SERVER_AUTH]),
        "no aki": lambda: _issue(ca, ca_key, key, usages=good, with_aki=False),
        "no key usage": lambda: _issue(ca, ca_key, key, usages=good, key_usage=False),
        "expired": lambda: _issue(ca, ca_key, key, usages=good, days=-1),
        "other ca": lambda: _issue(*_town_ca(), key, usages=good),
    }[case]()
    with pytest.raises(PkiError) as refused:
        import_credential(
            tmp_path / "keys",
            _write(tmp_path / "cert.pem", cert),
            _write(tmp_path / "key.pem", key),
            _write(tmp_path / "ca.pem", ca),
            NOW,
        )
    assert named in str(refused.value)
    assert "cert.pem: cannot sign exports" in str(refused.value)
    assert not (tmp_path / "keys").exists()


def test_import_names_unusable_files(tmp_path: Path) -> None:
    ca, ca_key = _town_ca()
    key = Ed25519PrivateKey.generate()
    cert = _write(
        tmp_path / "cert.pem", _issue(ca, ca_key, key, usages=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    )
    rsa_key = _write(tmp_path / "rsa.pem", rsa.generate_private_key(65537, 2048))
    ca_file = _write(tmp_path / "ca.pem", ca)
    with pytest.raises(PkiError, match=r"rsa.pem: a RSAPrivateKey cannot sign exports"):
        import_credential(tmp_path / "keys", cert, rsa_key, ca_file, NOW)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(PkiError, match=r"garbage.pem: no certificate in the file|garbage.pem: not a PEM"):
        import_credential(tmp_path / "keys", garbage, _write(tmp_path / "key.pem", key), ca_file, NOW)
    with pytest.raises(PkiError, match=r"--ca: .*cert.pem does not end with the CSU's root"):
        import_credential(tmp_path / "keys", cert, tmp_path / "key.pem", None, NOW)
    two_cas = tmp_path / "two-cas.pem"
    two_cas.write_bytes(ca_file.read_bytes() * 2)
    with pytest.raises(PkiError, match=r"two-cas.pem: expected one CA certificate, found 2"):
        import_credential(tmp_path / "keys", cert, tmp_path / "key.pem", two_cas, NOW)
    (tmp_path / "key.pem").chmod(0o644)
    with pytest.raises(PkiError, match=r"key.pem: private key is accessible by group or others"):
        import_credential(tmp_path / "keys", cert, tmp_path / "key.pem", ca_file, NOW)
    with pytest.raises(PkiError, match=r"nokeys/collector_cert.pem: cannot read"):
        load_credential(tmp_path / "nokeys")


def test_show_says_when_the_certificate_cannot_sign(tmp_path: Path, capsys) -> None:
    init_pki(tmp_path / "csu", "Ville", NOW)
    init_pki(tmp_path / "other", "Ailleurs", NOW)
    for name in ("collector_cert.pem", "collector_cert_key.pem"):
        (tmp_path / "csu" / name).write_bytes((tmp_path / "other" / name).read_bytes())
    assert collector_main(["pki", "show", "--keys", str(tmp_path / "csu")]) == 1
    assert (
        "cannot sign exports: O=Ailleurs,CN=Ailleurs CSU collector is not issued by"
        in capsys.readouterr().out
    )
    assert collector_main(["pki", "show", "--keys", str(tmp_path / "none")]) == 1
    assert "none/collector_cert.pem: cannot read" in capsys.readouterr().err
