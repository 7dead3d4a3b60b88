"""An append-only, hash-chained audit log (JSON lines), on the device and on the collector.

Each line is a JSON object with `seq` (1, 2, ...), `ts` (UTC ISO 8601, milliseconds), `prev` (the
`hash` of the previous line, 64 zeros for the first), the entry's own fields, and `hash`: the SHA-256 of
the line's canonical JSON (sorted keys, no spaces) without `hash`. Editing a line breaks its own hash;
removing or reordering lines breaks `seq` and `prev` of the next one. Removing the *last* lines is
caught by the head file beside the log (`<log>.head`: seq and hash of the last line, replaced
atomically after every append); publish `head()` elsewhere (MQTT status) to anchor it off the device.

Every line is flushed and fsynced before `append` returns: an access is on disk before it is answered.
A write the disk refuses is cut back off, so that it never leaves a torn line.

Quota and rotation: past `AuditQuota.rotate_bytes` the log is renamed `<log>.<first seq, 12 digits>`
and a new one continues the same chain (its first line's `prev` is the hash of the last rotated line),
so `verify_log` checks the rotated files and the log as one sequence and still sees any line or file
removed. Rotated files are never deleted here. Lines that only record a refusal are written with
`append_if_room`: once the log and its rotated files reach `AuditQuota.max_bytes` they are counted, not
written (`usage().withheld`), and the next line written says how many were held back
(`withheld_before`); accesses (`append`) are always written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.formats.durable import append_durably, fsync_dir
from edge_agent.formats.strictjson import canonical
from edge_agent.formats.times import Clock, iso_ms

GENESIS = "0" * 64
_RESERVED = ("seq", "ts", "prev", "hash")
WITHHELD_FIELD = "withheld_before"
_ROTATED_SUFFIX = re.compile(r"^\.(\d{12})$")


def entry_hash(entry: dict[str, Any]) -> str:
    """The hash of an entry: SHA-256 of its canonical JSON without the `hash` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class AuditHead:
    """Where the chain ends: the last line's sequence number and hash."""

    seq: int
    hash: str


@dataclass(frozen=True)
class AuditQuota:
    """The audit log's own space: `max_bytes` for the log and its rotated files together (refusal lines
    stop there), and the size past which the log is rotated."""

    max_bytes: int = 64 << 20
    rotate_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if not 0 < self.rotate_bytes <= self.max_bytes:
            raise ValueError("audit quota: 0 < rotate_bytes <= max_bytes")


@dataclass(frozen=True)
class AuditUsage:
    """What the audit log holds, its quota, and the refusal lines withheld since start (quota or a disk
    that refused them)."""

    bytes: int
    max_bytes: int
    withheld: int
    last_error: str = ""

    @property
    def full(self) -> bool:
        """True when refusal lines are no longer written."""
        return self.bytes >= self.max_bytes


class AuditLog:
    """Appends hash-chained entries to a JSON-lines file; safe to share between threads."""

    def __init__(self, path: Path, clock: Clock = time.time, quota: AuditQuota | None = None) -> None:
        self.path = Path(path)
        self.quota = quota or AuditQuota()
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rotated = rotated_files(self.path)
        self._head = _read_tail_head(self.path, rotated)
        self._rotated_bytes = sum(f.stat().st_size for f in rotated)
        self._active_bytes = self.path.stat().st_size if self.path.exists() else 0
        self._active_first_seq = _first_seq(self.path)
        self._withheld = 0
        self._withheld_unsaid = 0
        self._last_error = ""

    def head(self) -> AuditHead:
        """The current end of the chain."""
        with self._lock:
            return self._head

    def usage(self) -> AuditUsage:
        """Bytes held (the log and its rotated files), the quota, the refusal lines withheld."""
        with self._lock:
            return AuditUsage(
                self._rotated_bytes + self._active_bytes,
                self.quota.max_bytes,
                self._withheld,
                self._last_error,
            )

    def append(self, **fields: Any) -> dict[str, Any]:
        """Write one entry (fields must be JSON-serializable) and return it as written; OSError when the
        disk refuses it (nothing of it is left in the log then)."""
        _check_fields(fields)
        with self._lock:
            return self._write(fields)

    def append_if_room(self, **fields: Any) -> dict[str, Any] | None:
        """Write one entry of the kind that may be withheld (a refusal): None, and counted, when the
        quota is reached or the disk refuses it."""
        _check_fields(fields)
        with self._lock:
            if self._rotated_bytes + self._active_bytes >= self.quota.max_bytes:
                self._withhold("quota reached")
                return None
            try:
                return self._write(fields)
            except OSError as error:
                self._withhold(str(error))
                return None

    def _withhold(self, why: str) -> None:
        self._withheld += 1
        self._withheld_unsaid += 1
        self._last_error = why

    def _write(self, fields: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "seq": self._head.seq + 1,
            "ts": iso_ms(self._clock()),
            "prev": self._head.hash,
            **fields,
        }
        if self._withheld_unsaid:
            entry[WITHHELD_FIELD] = self._withheld_unsaid
        entry["hash"] = entry_hash(entry)
        line = canonical(entry) + b"\n"
        if self._active_bytes and self._active_bytes + len(line) > self.quota.rotate_bytes:
            self._rotate()
        start = append_durably(self.path, line)
        self._active_bytes = start + len(line)
        if self._active_first_seq is None:
            self._active_first_seq = entry["seq"]
        self._head = AuditHead(entry["seq"], entry["hash"])
        self._withheld_unsaid = 0
        try:
            _write_head(head_path(self.path), self._head)
        except OSError as error:
            # The line is written; a head file behind the log reads as a crash, and the next append
            # writes it again.
            self._last_error = f"head file: {error}"
        return entry

    def _rotate(self) -> None:
        first = self._active_first_seq if self._active_first_seq is not None else self._head.seq
        target = self.path.with_name(f"{self.path.name}.{first:012d}")
        os.replace(self.path, target)
        fsync_dir(self.path.parent)
        self._rotated_bytes += self._active_bytes
        self._active_bytes = 0
        self._active_first_seq = None


def _check_fields(fields: dict[str, Any]) -> None:
    clash = [k for k in fields if k in _RESERVED or k == WITHHELD_FIELD]
    if clash:
        raise ValueError(f"audit fields {clash} are reserved")


def rotated_files(log_path: Path) -> list[Path]:
    """The rotated files of a log, oldest first."""
    if not log_path.parent.is_dir():
        return []
    found = [
        p
        for p in log_path.parent.glob(f"{log_path.name}.*")
        if _ROTATED_SUFFIX.match(p.name[len(log_path.name) :])
    ]
    return sorted(found, key=lambda p: p.name)


def log_files(log_path: Path) -> list[Path]:
    """Every file of a log in chain order: the rotated ones, then the log itself (when it exists)."""
    return rotated_files(log_path) + ([log_path] if log_path.exists() else [])


def _first_seq(path: Path) -> int | None:
    if not path.exists():
        return None
    with path.open("rb") as handle:
        first = handle.readline(1 << 16)
    try:
        entry = json.loads(first)
        return int(entry["seq"]) if isinstance(entry, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def head_path(log_path: Path) -> Path:
    """The head file beside a log."""
    return log_path.with_name(log_path.name + ".head")


def _write_head(path: Path, head: AuditHead) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"seq": head.seq, "hash": head.hash}) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_tail_head(path: Path, rotated: list[Path]) -> AuditHead:
    """Continue the chain after the last complete, parseable line (a torn tail is left for verify); of
    the newest rotated file when the log itself is empty (a crash just after a rotation)."""
    if not path.exists() or path.stat().st_size == 0:
        return _read_tail_head(rotated[-1], rotated[:-1]) if rotated else AuditHead(0, GENESIS)
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
    """Re-check the whole chain, across the rotated files and the log (streaming: memory does not grow
    with the log), and the head file. Problems name the line (and its file, when rotated files exist)."""
    problems: list[str] = []
    head, head_problem = _read_head_file(path)
    hash_at_head: str | None = None
    expected = AuditHead(0, GENESIS)
    count = 0
    files = log_files(path)
    for file in files:
        where = "line" if files == [path] else f"{file.name} line"
        for number, raw in _lines(file):
            try:
                entry = json.loads(raw)
            except ValueError:
                problems.append(f"{where} {number}: not valid JSON (edited or torn)")
                continue
            if not isinstance(entry, dict) or not all(k in entry for k in _RESERVED):
                problems.append(f"{where} {number}: not an audit entry")
                continue
            count += 1
            if entry["hash"] != entry_hash(entry):
                problems.append(f"{where} {number} (seq {entry['seq']}): content edited (hash mismatch)")
            if entry["seq"] != expected.seq + 1:
                problems.append(
                    f"{where} {number}: seq {entry['seq']} follows {expected.seq}"
                    f" ({_gap_words(expected.seq, entry['seq'])})"
                )
            elif entry["prev"] != expected.hash:
                problems.append(f"{where} {number} (seq {entry['seq']}): chain broken (prev mismatch)")
            expected = AuditHead(_as_seq(entry["seq"]), str(entry["hash"]))
            if head is not None and expected.seq == head.seq:
                hash_at_head = expected.hash
    if head_problem:
        problems.append(head_problem)
    elif head is not None:
        problems.extend(_compare_head(head, expected, hash_at_head))
    return AuditReport(count, problems)


def _as_seq(value: Any) -> int:
    """A line's seq as a number (an edited, non-numeric one counts as 0: its line is reported already)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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
