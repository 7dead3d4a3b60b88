"""The hash-chained audit log and `edge-agent audit verify`."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.commands.cli import main
from edge_agent.formats.audit import AuditLog, head_path, verify_log


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
