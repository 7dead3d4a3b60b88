"""The collector's audit log has one home (issue 14 item 11): every `csu-collector` command and the console
write to `--audit`, else `$CSU_AUDIT_LOG`, else `csu-audit.jsonl` in the CSU key directory, whatever the
working folder they are run from; nothing lands in the current folder."""

from __future__ import annotations

import argparse
import io
import json
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.collector.commands import console_cmd
from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.formats.audit import verify_log
from edge_agent.formats.keys import generate_csu_keys, load_ed25519_private
from tests.clip_support import device_config, random_ring, running_server

T0 = 1_700_000_000.0


@pytest.fixture
def csu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CSU key directory, and commands run from an unrelated working folder without CSU_* variables."""
    keys = generate_csu_keys(tmp_path / "csu-keys").signing.private.parent
    monkeypatch.delenv("CSU_AUDIT_LOG", raising=False)
    monkeypatch.delenv("CSU_KEYS_DIR", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return keys


def _actions(path: Path) -> list[str]:
    return [json.loads(line)["action"] for line in path.read_text().splitlines()]


def test_device_commands_user_accounts_and_console_share_the_log_in_the_key_directory(
    tmp_path: Path, csu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = Ed25519PrivateKey.generate()
    config = device_config(tmp_path)
    ring = random_ring(tmp_path / "ring", device, T0, count=3)
    collector = load_ed25519_private(csu / "csu_ed25519.pem")
    common = ["--site", "ville-01", "--device", "pi-01", "--keys", str(csu)]
    with running_server(config, ring, device, collector) as server:
        hold = ["hold", *common, "--url", server.local_url, "--camera", "cam1", "--requisition", "PV-1"]
        assert collector_main([*hold, "--start", str(T0), "--end", str(T0 + 4)]) == 0
        assert collector_main(["release", *common, "--url", server.local_url, "999"]) == 1  # refused
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough passphrase\n"))
    db = tmp_path / "store.sqlite"
    user = ["user", "add", "lt-martin", "--role", "investigator", "--db", str(db), "--keys", str(csu)]
    assert collector_main(["db", "upgrade", "--db", str(db)]) == 0
    assert collector_main([*user, "--password-stdin"]) == 0
    home = csu / "csu-audit.jsonl"
    assert _actions(home) == ["hold", "release", "console-user-add"]
    assert verify_log(home).ok
    assert not any(Path.cwd().iterdir()), "nothing is written to the working folder"
    # The console (and `serve --console`) resolve the same file.
    parser = argparse.ArgumentParser()
    console_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["console", "--db", str(db), "--keys", str(csu)])
    assert console_cmd.console_options(args).audit == home


def test_the_variable_and_the_option_say_where_it_goes_instead(
    tmp_path: Path, csu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "store.sqlite"
    assert collector_main(["db", "upgrade", "--db", str(db)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough passphrase\nanother long passphrase\n"))
    configured = tmp_path / "var" / "csu-audit.jsonl"
    monkeypatch.setenv("CSU_AUDIT_LOG", str(configured))
    base = ["user", "add", "--role", "operator", "--db", str(db), "--keys", str(csu), "--password-stdin"]
    assert collector_main([*base, "op-one"]) == 0
    given = tmp_path / "given.jsonl"
    assert collector_main([*base, "op-two", "--audit", str(given)]) == 0
    assert _actions(configured) == ["console-user-add"] and _actions(given) == ["console-user-add"]
    assert not (csu / "csu-audit.jsonl").exists()


def test_the_key_directory_comes_from_the_environment_too(csu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSU_KEYS_DIR", str(csu))
    parser = argparse.ArgumentParser()
    console_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["console", "--db", "store.sqlite"])
    assert console_cmd.console_options(args).audit == csu / "csu-audit.jsonl"


def test_a_device_out_of_reach_is_an_audited_failure_and_a_broken_store_a_named_error(
    tmp_path: Path, csu: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 and a `failed` line for a hold or release that never reached the device (2 is for what
    was never sent); a --store that is not a collector database is named, not a traceback."""
    common = ["--site", "ville-01", "--device", "pi-01", "--keys", str(csu)]
    closed = f"http://127.0.0.1:{_closed_port()}"
    hold = ["hold", *common, "--url", closed, "--camera", "cam1", "--requisition", "PV-2"]
    assert collector_main([*hold, "--start", str(T0), "--end", str(T0 + 4)]) == 1
    assert collector_main(["release", *common, "--url", closed, "7"]) == 1
    entries = [json.loads(line) for line in (csu / "csu-audit.jsonl").read_text().splitlines()]
    assert [(e["action"], e["outcome"], e["reason"]) for e in entries] == [
        ("hold", "failed", "unreachable"),
        ("release", "failed", "unreachable"),
    ]
    not_a_store = tmp_path / "store.sqlite"
    not_a_store.write_text("not a database")
    capsys.readouterr()
    hold = ["hold", *common, "--store", str(not_a_store), "--camera", "cam1", "--requisition", "PV-3"]
    assert collector_main([*hold, "--start", str(T0), "--end", str(T0 + 4)]) == 2
    assert f"--store: {not_a_store}: not a collector database" in capsys.readouterr().err
    assert collector_main(["events", "--db", str(not_a_store), "--site", "ville-01"]) == 2
    assert "not a collector database" in capsys.readouterr().out
    known = tmp_path / "known.sqlite"
    assert collector_main(["db", "upgrade", "--db", str(known)]) == 0
    hold = ["hold", *common, "--store", str(known), "--camera", "cam1", "--requisition", "PV-4"]
    assert collector_main([*hold, "--start", str(T0), "--end", str(T0 + 4)]) == 2
    assert "device ville-01/pi-01 has never been heard by this collector" in capsys.readouterr().err
    assert len((csu / "csu-audit.jsonl").read_text().splitlines()) == 2  # nothing was sent: not audited


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
