"""The collector's X.509 credential under the CSU's CA: it signs the C2PA manifest of every export.

A court checks an exported MP4 against one published file, the CSU's CA certificate (`csu_ca.pem`);
the collector signs with a certificate that CA issued. Two ways to get one, both writing into the CSU
key directory (`--keys`, next to `keygen`'s keys):

- `init_pki`: a town without a PKI gets a new Ed25519 CA and a collector certificate it issued. The CA's
  private key (`csu_ca_key.pem`) is only needed to issue the next collector certificate: keep it offline.
- `import_credential`: an existing certificate (Ed25519 or ECDSA P-256/P-384/P-521) and its key, checked
  here against what C2PA validators require, so that a refusal happens now, not at the first export.

Files: `csu_ca.pem` (the trust anchor to publish), `collector_cert.pem` (the collector's certificate,
then any intermediates), `collector_cert_key.pem` (its private key, 0600).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.formats.keys import KeyFileError, read_key_file, write_key_file

CA_CERT_NAME = "csu_ca.pem"
CA_KEY_NAME = "csu_ca_key.pem"
COLLECTOR_CERT_NAME = "collector_cert.pem"
COLLECTOR_KEY_NAME = "collector_cert_key.pem"

# C2PA validators accept a signing certificate whose extended key usage names one of these.
C2PA_KEY_USAGES = (
    ExtendedKeyUsageOID.EMAIL_PROTECTION,
    x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36"),  # id-kp-documentSigning
)
# C2PA signature algorithm per supported key (the name c2pa-python's C2paSigningAlg uses).
_CURVE_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_CURVE_HASHES: dict[str, hashes.HashAlgorithm] = {
    "ES256": hashes.SHA256(),
    "ES384": hashes.SHA384(),
    "ES512": hashes.SHA512(),
}

SigningKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class PkiError(Exception):
    """A certificate or key that cannot sign exports; the message names the file and the problem."""


@dataclass(frozen=True)
class PkiPaths:
    """Where the CSU's certificates and the collector's key are."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CSU CA certificate: the trust anchor given to anyone who checks an export."""
        return self.directory / CA_CERT_NAME

    @property
    def ca_key(self) -> Path:
        """The CA's private key (only after `init_pki`)."""
        return self.directory / CA_KEY_NAME

    @property
    def collector_cert(self) -> Path:
        """The collector's certificate followed by any intermediates."""
        return self.directory / COLLECTOR_CERT_NAME

    @property
    def collector_key(self) -> Path:
        """The collector certificate's private key."""
        return self.directory / COLLECTOR_KEY_NAME


@dataclass(frozen=True)
class CollectorCredential:
    """The collector's signing key, its certificate chain (leaf first) and the CSU CA above it."""

    key: SigningKey
    chain: tuple[x509.Certificate, ...]
    ca: x509.Certificate

    @property
    def algorithm(self) -> str:
        """`Ed25519`, `ES256`, `ES384` or `ES512`."""
        return signing_algorithm(self.key)

    def chain_pem(self) -> str:
        """The certificate chain as concatenated PEM."""
        return _pem(self.chain).decode()

    def ca_pem(self) -> str:
        """The CSU CA certificate as PEM (the trust anchor exports are checked against)."""
        return _pem([self.ca]).decode()

    def sign(self, data: bytes) -> bytes:
        """A signature of `data` in the form C2PA expects for the algorithm."""
        if isinstance(self.key, Ed25519PrivateKey):
            return self.key.sign(data)
        return self.key.sign(data, ec.ECDSA(_CURVE_HASHES[self.algorithm]))


def signing_algorithm(key: object) -> str:
    """The C2PA algorithm of a private key; PkiError for a key C2PA signing cannot use here."""
    if isinstance(key, Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _CURVE_ALGS:
        return _CURVE_ALGS[key.curve.name]
    raise PkiError(
        f"a {type(key).__name__.lstrip('_')} cannot sign exports: use Ed25519 or ECDSA P-256/384/521"
    )


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


def _pem(certificates: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _private_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _usage(*, sign: bool, certify: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certify,
        crl_sign=certify,
        encipher_only=False,
        decipher_only=False,
    )


def issue_collector_certificate(
    ca_cert: x509.Certificate,
    ca_key: Ed25519PrivateKey,
    collector_key: SigningKey,
    organization: str,
    now: datetime.datetime,
    days: int,
) -> x509.Certificate:
    """A collector certificate with what C2PA requires: end entity, digital signature, documentSigning
    and emailProtection usages, subject and authority key identifiers."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"{organization} CSU collector", organization))
        .issuer_name(ca_cert.subject)
        .public_key(collector_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign=True, certify=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(C2PA_KEY_USAGES)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(collector_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, None)
    )


def init_pki(
    directory: Path,
    organization: str,
    now: datetime.datetime,
    ca_days: int = 30 * 365,
    collector_days: int = 10 * 365,
    overwrite: bool = False,
) -> PkiPaths:
    """Create a CSU CA and a collector certificate it issued (Ed25519 both) in `directory`.

    Long lives on purpose: an export signed without a time-stamping authority is checked against the
    certificate's validity on the day it is checked, possibly years later in court.
    """
    paths = PkiPaths(Path(directory))
    if not overwrite:
        existing = [str(p) for p in _all_files(paths) if p.exists()]
        if existing:
            raise PkiError(f"refusing to overwrite existing file(s): {', '.join(existing)}")
    ca_key = Ed25519PrivateKey.generate()
    ca_name = _name(f"{organization} CSU evidence CA", organization)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(sign=False, certify=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, None)
    )
    collector_key = Ed25519PrivateKey.generate()
    collector_cert = issue_collector_certificate(
        ca_cert, ca_key, collector_key, organization, now, collector_days
    )
    try:
        write_key_file(paths.ca_key, _private_pem(ca_key), private=True, overwrite=overwrite)
        write_key_file(paths.ca_cert, _pem([ca_cert]), private=False, overwrite=overwrite)
        write_key_file(paths.collector_key, _private_pem(collector_key), private=True, overwrite=overwrite)
        write_key_file(paths.collector_cert, _pem([collector_cert]), private=False, overwrite=overwrite)
    except KeyFileError as error:
        raise PkiError(str(error)) from None
    return paths


def _all_files(paths: PkiPaths) -> list[Path]:
    return [paths.ca_cert, paths.ca_key, paths.collector_cert, paths.collector_key]


def _load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(read_key_file(path, private=False))
    except KeyFileError as error:
        raise PkiError(str(error)) from None
    except ValueError as error:
        raise PkiError(f"{path}: not a PEM certificate file ({error})") from None
    return certificates


def _load_key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(read_key_file(path, private=True), password=None)
    except KeyFileError as error:
        raise PkiError(str(error)) from None
    except (ValueError, TypeError) as error:
        raise PkiError(f"{path}: not an unencrypted PEM private key ({error})") from None
    try:
        signing_algorithm(key)
    except PkiError as error:
        raise PkiError(f"{path}: {error}") from None
    assert isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
    return key


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def credential_problems(
    chain: list[x509.Certificate], key: SigningKey, ca: x509.Certificate, now: datetime.datetime
) -> list[str]:
    """Why `chain` (leaf first) and `key` cannot sign exports that validate under `ca` ([] when they can)."""
    leaf = chain[0]
    problems: list[str] = []
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        problems.append("the key is not the certificate's key")
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        problems.append(
            f"the certificate is valid {leaf.not_valid_before_utc:%Y-%m-%d}"
            f" to {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    extensions = {e.oid: e.value for e in leaf.extensions}
    basic = extensions.get(x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
    if isinstance(basic, x509.BasicConstraints) and basic.ca:
        problems.append("the certificate is a CA certificate, not an end entity")
    usage = extensions.get(x509.oid.ExtensionOID.KEY_USAGE)
    if not isinstance(usage, x509.KeyUsage) or not usage.digital_signature:
        problems.append("its key usage does not name digitalSignature (C2PA requires it)")
    extended = extensions.get(x509.oid.ExtensionOID.EXTENDED_KEY_USAGE)
    if not isinstance(extended, x509.ExtendedKeyUsage) or not set(extended) & set(C2PA_KEY_USAGES):
        problems.append("its extended key usage names neither documentSigning nor emailProtection (C2PA)")
    if x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER not in extensions:
        problems.append("it has no authority key identifier (C2PA requires one)")
    for child, parent in zip(chain, [*chain[1:], ca], strict=True):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(
                f"{child.subject.rfc4514_string()} is not issued by {parent.subject.rfc4514_string()}"
            )
    return problems


def import_credential(
    directory: Path,
    cert_path: Path,
    key_path: Path,
    ca_path: Path | None,
    now: datetime.datetime,
    overwrite: bool = False,
) -> PkiPaths:
    """Check an existing certificate (with intermediates), its key and the CSU CA, then copy them in.

    Without `ca_path` the CA is the self-signed certificate at the end of `cert_path`.
    """
    chain = _load_certificates(cert_path)
    if not chain:
        raise PkiError(f"{cert_path}: no certificate in the file")
    key = _load_key(key_path)
    if ca_path is not None:
        ca = load_ca(ca_path)
    elif len(chain) > 1 and chain[-1].issuer == chain[-1].subject:
        ca = chain.pop()
    else:
        raise PkiError(f"--ca: {cert_path} does not end with the CSU's root certificate; give it with --ca")
    problems = credential_problems(chain, key, ca, now)
    if problems:
        raise PkiError(f"{cert_path}: cannot sign exports: " + "; ".join(problems))
    paths = PkiPaths(Path(directory))
    try:
        write_key_file(paths.ca_cert, _pem([ca]), private=False, overwrite=overwrite)
        write_key_file(paths.collector_key, _private_pem(key), private=True, overwrite=overwrite)
        write_key_file(paths.collector_cert, _pem(chain), private=False, overwrite=overwrite)
    except KeyFileError as error:
        raise PkiError(str(error)) from None
    return paths


def load_credential(directory: Path) -> CollectorCredential:
    """The collector's credential from a key directory written by `init_pki` or `import_credential`."""
    paths = PkiPaths(Path(directory))
    chain = _load_certificates(paths.collector_cert)
    if not chain:
        raise PkiError(f"{paths.collector_cert}: no certificate in the file")
    return CollectorCredential(_load_key(paths.collector_key), tuple(chain), load_ca(paths.ca_cert))


def optional_credential(directory: Path) -> CollectorCredential | None:
    """The collector's credential, or None when the key directory has none (`pki init` never run:
    exports are then not C2PA-signed)."""
    if not PkiPaths(Path(directory)).collector_cert.exists():
        return None
    return load_credential(directory)


def load_ca(path: Path) -> x509.Certificate:
    """The CSU CA certificate in `path` (one PEM certificate)."""
    certificates = _load_certificates(path)
    if len(certificates) != 1:
        raise PkiError(f"{path}: expected one CA certificate, found {len(certificates)}")
    return certificates[0]
