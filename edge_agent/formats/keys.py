"""Key material of a device and of the CSU: generation, files, loading.

A device has one Ed25519 identity key (it signs sealed segments and clip bundles). The CSU has an X25519
key pair (segments are sealed to its public half; only the CSU can open them) and an Ed25519 key pair (it
signs clip requests and commands). Private keys are PKCS#8 PEM files of mode 0600, created exclusively so
an existing key is never overwritten by accident; public keys are SubjectPublicKeyInfo PEM files, 0644.
Loading checks the key type and, for a private key, that neither group nor others can read the file.
Nothing here logs or prints key bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

DEVICE_KEY_NAME = "device_ed25519"
CSU_SEALING_NAME = "csu_x25519"
CSU_SIGNING_NAME = "csu_ed25519"
PRIVATE_SUFFIX = ".pem"
PUBLIC_SUFFIX = ".pub"

PrivateKey = Ed25519PrivateKey | X25519PrivateKey
PublicKey = Ed25519PublicKey | X25519PublicKey

_RAW_HEX = re.compile(rb"^[0-9a-fA-F]{64}$")


class KeyFileError(Exception):
    """A key file that is missing, unreadable, too open, or of the wrong type; the message names it."""


@dataclass(frozen=True)
class KeyPairPaths:
    """Where one key pair was written."""

    private: Path
    public: Path


@dataclass(frozen=True)
class CsuKeyPaths:
    """The CSU's two key pairs: X25519 to open segments, Ed25519 to sign requests."""

    sealing: KeyPairPaths
    signing: KeyPairPaths


def public_key_id(key: PublicKey) -> str:
    """16 hex digits of the SHA-256 of the raw public key (the one key id of the project)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_device_key(directory: Path, overwrite: bool = False) -> KeyPairPaths:
    """Create the device's Ed25519 identity in `directory` (private 0600 + public PEM)."""
    return _write_pair(Path(directory), DEVICE_KEY_NAME, Ed25519PrivateKey.generate(), overwrite)


def generate_csu_keys(directory: Path, overwrite: bool = False) -> CsuKeyPaths:
    """Create the CSU's X25519 sealing pair and Ed25519 signing pair in `directory`."""
    directory = Path(directory)
    targets = [
        directory / f"{name}{suffix}"
        for name in (CSU_SEALING_NAME, CSU_SIGNING_NAME)
        for suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX)
    ]
    if not overwrite:
        _refuse_existing(targets)
    sealing = _write_pair(directory, CSU_SEALING_NAME, X25519PrivateKey.generate(), overwrite)
    signing = _write_pair(directory, CSU_SIGNING_NAME, Ed25519PrivateKey.generate(), overwrite)
    return CsuKeyPaths(sealing=sealing, signing=signing)


def _refuse_existing(paths: list[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise KeyFileError(f"refusing to overwrite existing key file(s): {', '.join(existing)}")


def _write_pair(directory: Path, name: str, key: PrivateKey, overwrite: bool) -> KeyPairPaths:
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    if not overwrite:
        _refuse_existing([private_path, public_path])
    directory.mkdir(parents=True, exist_ok=True)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_file(private_path, private_pem, 0o600, overwrite)
    _write_file(public_path, public_pem, 0o644, overwrite)
    return KeyPairPaths(private=private_path, public=public_path)


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write through a temporary file created with `mode` (never readable by others, even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed `mode`; widen public files back to 0644
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if overwrite:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)  # fails if `path` appeared meanwhile: never clobber a key
        finally:
            tmp.unlink()


def write_key_file(path: Path, data: bytes, *, private: bool, overwrite: bool = False) -> None:
    """Write a key or certificate file: 0600 when `private`, else 0644; never clobbers unless `overwrite`.

    KeyFileError when the file exists and `overwrite` is false.
    """
    path = Path(path)
    if not overwrite:
        _refuse_existing([path])
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_file(path, data, 0o600 if private else 0o644, overwrite)


def read_key_file(path: Path, *, private: bool) -> bytes:
    """The bytes of a key or certificate file; a private one must not be readable by group or others."""
    return _read(Path(path), private)


def _read(path: Path, private: bool) -> bytes:
    path = Path(path)
    try:
        info = path.stat()
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read key file ({error.strerror})") from None
    if private and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: private key is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o});"
            f" run `chmod 600 {path}`"
        )
    try:
        return path.read_bytes()
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read key file ({error.strerror})") from None


def _load_private(path: Path) -> object:
    data = _read(path, private=True)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({error})") from None


def _load_public(path: Path, raw_type: type[Ed25519PublicKey] | type[X25519PublicKey]) -> object:
    data = _read(path, private=False)
    if _RAW_HEX.match(data.strip()):
        return raw_type.from_public_bytes(bytes.fromhex(data.strip().decode("ascii")))
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise KeyFileError(f"{path}: not a PEM public key ({error})") from None


def _kind(key: object) -> str:
    return (
        type(key)
        .__name__.lstrip("_")
        .replace("PrivateKey", " private key")
        .replace("PublicKey", " public key")
    )


def load_ed25519_private(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in `path` (PEM PKCS#8, mode 0600 or stricter)."""
    key = _load_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 private key, found {_kind(key)}")
    return key


def load_x25519_private(path: Path) -> X25519PrivateKey:
    """The X25519 private key in `path` (PEM PKCS#8, mode 0600 or stricter)."""
    key = _load_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path}: expected an X25519 private key, found {_kind(key)}")
    return key


def load_ed25519_public(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in `path` (PEM, or 64 hex digits of the raw key)."""
    key = _load_public(path, Ed25519PublicKey)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected an Ed25519 public key, found {_kind(key)}")
    return key


def load_x25519_public(path: Path) -> X25519PublicKey:
    """The X25519 public key in `path` (PEM, or 64 hex digits of the raw key)."""
    key = _load_public(path, X25519PublicKey)
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(f"{path}: expected an X25519 public key, found {_kind(key)}")
    return key
