"""The hash-chained audit log and `edge-agent audit verify`."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.commands.cli import main
from edge_agent.formats.audit import AuditLog, AuditQuota, head_path, log_files, verify_log


def _log(tmp_path: Path, entries: int = 5) -> Path:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(entries):
        log.append(action="clip", outcome="accepted", camera="cam1", bytes=i * 1000)
    return log.path


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_intact_log_verifies_and_chain_continues_after_reopen(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    entry = AuditLog(path).append(action="release", outcome="refused", reason="unknown hold")
    assert entry["seq"] == 4
    report = verify_log(path)
    assert report.ok, report.problems
    assert report.entries == 4


def test_edited_line_is_detected(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"outcome":"accepted"', b'"outcome":"refused"')
    _rewrite(path, lines)
    problems = verify_log(path).problems
    assert problems == ["line 3 (seq 3): content edited (hash mismatch)"]


def test_recomputed_hash_still_breaks_the_chain(tmp_path: Path) -> None:
    from edge_agent.formats.audit import entry_hash

    path = _log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["camera"] = "cam9"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    _rewrite(path, lines)
    assert verify_log(path).problems == ["line 3 (seq 3): chain broken (prev mismatch)"]


def test_removed_middle_and_last_lines_are_detected(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    _rewrite(path, lines[:2] + lines[3:])
    assert verify_log(path).problems == ["line 3: seq 4 follows 2 (1 line(s) removed)"]
    _rewrite(path, lines[:4])
    assert verify_log(path).problems == ["log ends at seq 4 but the head records seq 5: lines removed"]


def test_missing_head_file_is_reported(tmp_path: Path) -> None:
    path = _log(tmp_path)
    head_path(path).unlink()
    assert "missing" in verify_log(path).problems[0]


def test_torn_tail_is_reported_and_appends_stay_parseable(tmp_path: Path) -> None:
    path = _log(tmp_path, 2)
    with path.open("ab") as handle:
        handle.write(b'{"seq":3,"ts":')
    log = AuditLog(path)
    assert log.append(action="x")["seq"] == 3
    assert verify_log(path).problems == ["line 3: not valid JSON (edited or torn)"]


def test_cli_audit_verify(tmp_path: Path, capsys) -> None:
    path = _log(tmp_path)
    assert main(["audit", "verify", str(path)]) == 0
    assert "ok, 5 entries" in capsys.readouterr().out
    lines = path.read_bytes().splitlines(keepends=True)
    _rewrite(path, lines[:1] + lines[2:])
    assert main(["audit", "verify", str(path)]) == 1
    assert "removed" in capsys.readouterr().out


def _quota_log(tmp_path: Path, max_bytes: int = 20_000, rotate_bytes: int = 2_000) -> AuditLog:
    return AuditLog(
        tmp_path / "audit.jsonl", quota=AuditQuota(max_bytes=max_bytes, rotate_bytes=rotate_bytes)
    )


def test_rotated_files_continue_one_chain_that_verify_checks_across(tmp_path: Path, capsys) -> None:
    log = _quota_log(tmp_path)
    for i in range(40):
        log.append(action="clip", outcome="accepted", camera="cam1", bytes=i)
    files = log_files(log.path)
    assert len(files) > 3 and files[-1] == log.path
    assert all(f.stat().st_size <= 2_000 for f in files)
    # Each rotated file is named after its first line; the next file's first line chains to its last.
    first_of_second = json.loads(files[1].read_bytes().splitlines()[0])
    last_of_first = json.loads(files[0].read_bytes().splitlines()[-1])
    assert files[1].name == f"audit.jsonl.{first_of_second['seq']:012d}"
    assert first_of_second["prev"] == last_of_first["hash"]
    assert verify_log(log.path).ok and verify_log(log.path).entries == 40
    assert main(["audit", "verify", str(log.path)]) == 0
    assert f"ok, 40 entries in {len(files)} files" in capsys.readouterr().out
    # Reopened, the log goes on where it ended.
    assert AuditLog(log.path, quota=log.quota).append(action="x")["seq"] == 41


def test_a_removed_rotated_file_is_detected(tmp_path: Path, capsys) -> None:
    log = _quota_log(tmp_path)
    for i in range(40):
        log.append(action="clip", outcome="accepted", bytes=i)
    files = log_files(log.path)
    in_first, in_second = (len(f.read_bytes().splitlines()) for f in files[:2])
    files[1].unlink()
    assert verify_log(log.path).problems == [
        f"{files[2].name} line 1: seq {in_first + in_second + 1} follows {in_first}"
        f" ({in_second} line(s) removed)"
    ]
    files[0].unlink()  # the oldest file too: the chain no longer starts at seq 1
    assert verify_log(log.path).problems == [
        f"{files[2].name} line 1: seq {in_first + in_second + 1} follows 0"
        f" ({in_first + in_second} line(s) removed)"
    ]
    assert main(["audit", "verify", str(log.path)]) == 1
    assert "removed" in capsys.readouterr().out


def test_refusal_lines_stop_at_the_quota_and_the_next_line_says_how_many(tmp_path: Path) -> None:
    log = _quota_log(tmp_path, max_bytes=3_000, rotate_bytes=1_000)
    written = [
        log.append_if_room(action="clip", outcome="refused", reason="missing-signature") for _ in range(60)
    ]
    kept = [e for e in written if e is not None]
    usage = log.usage()
    assert 0 < len(kept) < 60 and usage.withheld == 60 - len(kept) and usage.full
    assert usage.bytes < 3_000 + 200  # one line past the quota at most
    # Accesses are always written, and the first one after says what was held back.
    access = log.append(action="clip", outcome="accepted", camera="cam1")
    assert access["withheld_before"] == usage.withheld
    assert log.append(action="clip", outcome="accepted").get("withheld_before") is None
    assert verify_log(log.path).ok


def test_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    import subprocess

    import pytest

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        log = AuditLog(mount / "audit.jsonl", quota=AuditQuota(max_bytes=1 << 30, rotate_bytes=1 << 30))
        refused = 0
        for i in range(400):
            if log.append_if_room(action="clip", outcome="refused", reason="x" * 300, n=i) is None:
                refused += 1
        assert refused and log.usage().withheld == refused and "No space" in log.usage().last_error
        with pytest.raises(OSError):
            log.append(action="clip", outcome="accepted", detail="y" * 4000)
        assert log.path.read_bytes().endswith(b"\n")
        report = verify_log(log.path)
        assert report.ok, report.problems
        assert report.entries == 400 - refused
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
