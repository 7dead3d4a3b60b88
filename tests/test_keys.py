"""Key files: generation, permissions, types, and the two keygen commands."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_agent.collector.commands import cli as collector_cli
from edge_agent.commands import cli
from edge_agent.formats.keys import (
    KeyFileError,
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_private,
    load_x25519_public,
    public_key_id,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_device_key_is_written_private_and_loads_back(tmp_path: Path) -> None:
    paths = generate_device_key(tmp_path / "keys")
    assert _mode(paths.private) == 0o600 and _mode(paths.public) == 0o644
    private = load_ed25519_private(paths.private)
    assert public_key_id(load_ed25519_public(paths.public)) == public_key_id(private.public_key())
    assert b"PRIVATE KEY" in paths.private.read_bytes() and b"PRIVATE" not in paths.public.read_bytes()
    assert not list((tmp_path / "keys").glob(".*"))  # no temporary file left behind


def test_csu_keys_are_one_x25519_and_one_ed25519_pair(tmp_path: Path) -> None:
    paths = generate_csu_keys(tmp_path)
    sealing = load_x25519_private(paths.sealing.private)
    assert public_key_id(load_x25519_public(paths.sealing.public)) == public_key_id(sealing.public_key())
    signing = load_ed25519_private(paths.signing.private)
    assert public_key_id(load_ed25519_public(paths.signing.public)) == public_key_id(signing.public_key())
    assert {_mode(paths.sealing.private), _mode(paths.signing.private)} == {0o600}


def test_existing_keys_are_never_overwritten_unless_forced(tmp_path: Path) -> None:
    first = generate_device_key(tmp_path).private.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_device_key(tmp_path)
    assert (tmp_path / "device_ed25519.pem").read_bytes() == first
    assert generate_device_key(tmp_path, overwrite=True).private.read_bytes() != first
    generate_csu_keys(tmp_path / "csu")
    with pytest.raises(KeyFileError, match=r"csu_x25519\.pem"):
        generate_csu_keys(tmp_path / "csu")


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    paths = generate_device_key(tmp_path)
    paths.private.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"accessible by group or others \(mode 0644\).*chmod 600"):
        load_ed25519_private(paths.private)


def test_wrong_key_types_are_named(tmp_path: Path) -> None:
    csu = generate_csu_keys(tmp_path)
    with pytest.raises(KeyFileError, match="expected an Ed25519 private key, found X25519 private key"):
        load_ed25519_private(csu.sealing.private)
    with pytest.raises(KeyFileError, match="expected an X25519 private key, found Ed25519 private key"):
        load_x25519_private(csu.signing.private)
    with pytest.raises(KeyFileError, match=r"csu_ed25519.pub: expected an X25519 public key"):
        load_x25519_public(csu.signing.public)
    with pytest.raises(KeyFileError, match="expected an Ed25519 public key"):
        load_ed25519_public(csu.sealing.public)
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_ed25519_public(csu.sealing.private)


def test_missing_and_garbage_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"missing.pem: cannot read key file"):
        load_ed25519_private(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    junk.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"junk\.pem: not an unencrypted PEM private key"):
        load_ed25519_private(junk)


def test_raw_hex_public_keys_are_accepted(tmp_path: Path) -> None:
    csu = generate_csu_keys(tmp_path)
    key = load_x25519_public(csu.sealing.public)
    raw = tmp_path / "raw.txt"
    raw.write_text(key.public_bytes_raw().hex() + "\n")
    assert public_key_id(load_x25519_public(raw)) == public_key_id(key)


def test_keygen_commands_print_public_facts_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keygen", "--dir", str(tmp_path / "dev")]) == 0
    assert collector_cli.main(["keygen", "--dir", str(tmp_path / "csu")]) == 0
    out = capsys.readouterr().out
    assert "key id:" in out and "sealing key (X25519)" in out
    secrets = [p.read_text() for p in (tmp_path / "dev").glob("*.pem")] + [
        p.read_text() for p in (tmp_path / "csu").glob("*.pem")
    ]
    body_lines = {line for s in secrets for line in s.splitlines() if "-----" not in line}
    assert not any(line in out for line in body_lines)
    assert cli.main(["keygen", "--dir", str(tmp_path / "dev")]) == 1
    assert "refusing to overwrite" in capsys.readouterr().out
