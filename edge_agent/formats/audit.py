"""An append-only, hash-chained audit log (JSON lines), on the device and on the collector.

Each line is a JSON object with `seq` (1, 2, ...), `ts` (UTC ISO 8601, milliseconds), `prev` (the
`hash` of the previous line, 64 zeros for the first), the entry's own fields, and `hash`: the SHA-256 of
the line's canonical JSON (sorted keys, no spaces) without `hash`. Editing a line breaks its own hash;
removing or reordering lines breaks `seq` and `prev` of the next one. Removing the *last* lines is
caught by the head file beside the log (`<log>.head`: seq and hash of the last line, replaced
atomically after every append); publish `head()` elsewhere (MQTT status) to anchor it off the device.

Every line is flushed and fsynced before `append` returns: an access is on disk before it is answered.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.formats.times import Clock, iso_ms

GENESIS = "0" * 64
_RESERVED = ("seq", "ts", "prev", "hash")


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """The hash of an entry: SHA-256 of its canonical JSON without the `hash` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


@dataclass(frozen=True)
class AuditHead:
    """Where the chain ends: the last line's sequence number and hash."""

    seq: int
    hash: str


class AuditLog:
    """Appends hash-chained entries to a JSON-lines file; safe to share between threads."""

    def __init__(self, path: Path, clock: Clock = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._head = _read_tail_head(self.path)

    def head(self) -> AuditHead:
        """The current end of the chain."""
        with self._lock:
            return self._head

    def append(self, **fields: Any) -> dict[str, Any]:
        """Write one entry (fields must be JSON-serializable) and return it as written."""
        clash = [k for k in fields if k in _RESERVED]
        if clash:
            raise ValueError(f"audit fields {clash} are reserved")
        with self._lock:
            entry: dict[str, Any] = {
                "seq": self._head.seq + 1,
                "ts": iso_ms(self._clock()),
                "prev": self._head.hash,
                **fields,
            }
            entry["hash"] = entry_hash(entry)
            line = _canonical(entry) + b"\n"
            with self.path.open("ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._head = AuditHead(entry["seq"], entry["hash"])
            _write_head(head_path(self.path), self._head)
            return entry


def head_path(log_path: Path) -> Path:
    """The head file beside a log."""
    return log_path.with_name(log_path.name + ".head")


def _write_head(path: Path, head: AuditHead) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"seq": head.seq, "hash": head.hash}) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_tail_head(path: Path) -> AuditHead:
    """Continue the chain after the last complete, parseable line (a torn tail is left for verify)."""
    if not path.exists() or path.stat().st_size == 0:
        return AuditHead(0, GENESIS)
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        block = min(size, 1 << 16)
        handle.seek(size - block)
        tail = handle.read(block)
    if not tail.endswith(b"\n"):
        # A line torn by a crash: start the next entry on a new line so that it stays parseable.
        with path.open("ab") as handle:
            handle.write(b"\n")
    for raw in reversed(tail.split(b"\n")):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and "seq" in entry and "hash" in entry:
            return AuditHead(int(entry["seq"]), str(entry["hash"]))
    return AuditHead(0, GENESIS)


@dataclass(frozen=True)
class AuditReport:
    """The outcome of `verify_log`: entries checked and every problem found (empty when intact)."""

    entries: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True when the log is intact."""
        return not self.problems


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, raw.rstrip(b"\n")


def verify_log(path: Path) -> AuditReport:
    """Re-check the whole chain (streaming: memory does not grow with the log) and the head file."""
    problems: list[str] = []
    head, head_problem = _read_head_file(path)
    hash_at_head: str | None = None
    expected = AuditHead(0, GENESIS)
    count = 0
    for number, raw in _lines(path):
        try:
            entry = json.loads(raw)
        except ValueError:
            problems.append(f"line {number}: not valid JSON (edited or torn)")
            continue
        if not isinstance(entry, dict) or not all(k in entry for k in _RESERVED):
            problems.append(f"line {number}: not an audit entry")
            continue
        count += 1
        if entry["hash"] != entry_hash(entry):
            problems.append(f"line {number} (seq {entry['seq']}): content edited (hash mismatch)")
        if entry["seq"] != expected.seq + 1:
            problems.append(
                f"line {number}: seq {entry['seq']} follows {expected.seq}"
                f" ({_gap_words(expected.seq, entry['seq'])})"
            )
        elif entry["prev"] != expected.hash:
            problems.append(f"line {number} (seq {entry['seq']}): chain broken (prev mismatch)")
        expected = AuditHead(int(entry["seq"]), str(entry["hash"]))
        if head is not None and expected.seq == head.seq:
            hash_at_head = expected.hash
    if head_problem:
        problems.append(head_problem)
    elif head is not None:
        problems.extend(_compare_head(head, expected, hash_at_head))
    return AuditReport(count, problems)


def _gap_words(last: int, seq: Any) -> str:
    if isinstance(seq, int) and seq > last + 1:
        return f"{seq - last - 1} line(s) removed"
    return "lines reordered or duplicated"


def _read_head_file(path: Path) -> tuple[AuditHead | None, str]:
    head_file = head_path(path)
    if not head_file.exists():
        return None, f"{head_file.name} missing: removal of the last lines cannot be ruled out"
    try:
        data = json.loads(head_file.read_text(encoding="utf-8"))
        return AuditHead(int(data["seq"]), str(data["hash"])), ""
    except (ValueError, KeyError, TypeError):
        return None, f"{head_file.name}: unreadable"


def _compare_head(head: AuditHead, last: AuditHead, hash_at_head: str | None) -> list[str]:
    if head.seq > last.seq:
        return [f"log ends at seq {last.seq} but the head records seq {head.seq}: lines removed"]
    if hash_at_head != head.hash:
        return [f"line seq {head.seq} does not match the head file: rewritten"]
    # A head behind the log is a crash between an append and the head update: not a loss.
    return []
