"""Start-up recovery: make the index match the segment files, which are the truth.

- a leftover temporary file is the segment in flight when the writer stopped (a crash, a SIGKILL): with
  the device key it is closed with a signed `recovered` trailer keeping every record that was sealed
  and journaled before the crash (`sealing.close_unfinished`), without the key cut back to its whole
  records as `partial`; then renamed to its final name and indexed like any file. One that holds no
  whole record (or whose header was cut short) is removed; one whose header is refused is set aside;
- a file the index does not know (a crash between rename and index row), or knows with another size,
  is verified and indexed; one without its signed trailer is cut back to its last whole record and
  indexed as `partial`;
- a file that fails verification (altered, foreign, crafted, stored under another segment's name) is
  set aside in `.rejected/`: never deleted (it may be evidence of tampering), never indexed nor served;
- a row whose file is gone is dropped;
- holds are restored from `holds.json` when the index has none.

(A corrupt index file is set aside and recreated empty by `index.SegmentIndex`; this then refills it.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.formats.durable import fsync_dir
from edge_agent.formats.sealing import MAGIC, SegmentError, close_unfinished, verify_segment
from edge_agent.formats.times import iso_ms
from edge_agent.storage.holds import HoldBook
from edge_agent.storage.index import SUFFIX, TMP_SUFFIX, SegmentIndex, SegmentRecord, segment_file

log = logging.getLogger(__name__)

REJECTED_DIR = ".rejected"
JOURNAL_SUFFIX = ".journal"


def camera_dirs(root: Path) -> list[Path]:
    """The camera directories under the ring's root (hidden ones, like `.rejected`, are not)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def journal_file(tmp: Path) -> Path:
    """The writer's journal beside a segment being written: `.<sequence>.seg.journal`."""
    return tmp.with_suffix(JOURNAL_SUFFIX)


def recover(
    root: Path,
    index: SegmentIndex,
    holds: HoldBook,
    device_public_key: Ed25519PublicKey | None,
    *,
    device_key: Ed25519PrivateKey | None = None,
    now: float,
) -> list[str]:
    """Repair the index from the files under `root`; returns one line per repair (also logged).

    `device_key` signs the trailer of segments a crash left unfinished (`now` is the recovery time
    it states) and is the key the files are verified with; otherwise `device_public_key`, or None to
    check the files' structure only (a device without its key).
    """
    if device_key is not None:
        device_public_key = device_key.public_key()
    repairs: list[str] = []
    known = {(r.camera, r.sequence): r for r in index.all_segments()}
    on_disk: set[tuple[str, int]] = set()
    for directory in camera_dirs(root):
        repairs.extend(close_in_flight(root, directory, device_key, now))
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            try:
                sequence = int(path.stem)
            except ValueError:
                continue
            key = (directory.name, sequence)
            on_disk.add(key)
            indexed = known.get(key)
            if indexed is not None and indexed.size == path.stat().st_size:
                continue
            repairs.extend(recover_file(root, index, directory.name, sequence, path, device_public_key))
    for camera, sequence in sorted(set(known) - on_disk):
        index.delete(camera, sequence)
        gone = known[(camera, sequence)].path.relative_to(root)
        repairs.append(f"segment {camera}#{sequence} ({gone}) is gone from disk: index row dropped")
    repairs.extend(holds.restore())
    for line in repairs:
        log.warning("recovery: %s", line)
    return repairs


def _sequence_of(tmp: Path) -> int | None:
    try:
        return int(tmp.name.removeprefix(".").removesuffix(TMP_SUFFIX))
    except ValueError:
        return None


def _torn_header(path: Path) -> bool:
    """True when the file ends before the header its first bytes announce (killed while creating it).

    The writer writes the whole header in one flushed write, so only a crash at that moment leaves this.
    """
    with path.open("rb") as handle:
        head = handle.read(len(MAGIC) + 4)
        size = os.fstat(handle.fileno()).st_size
    if len(head) < len(MAGIC) + 4:
        return True
    return size < len(head) + int.from_bytes(head[len(MAGIC) :], "big")


def close_in_flight(
    root: Path, directory: Path, device_key: Ed25519PrivateKey | None, recovered_at: float
) -> list[str]:
    """Close the temporary files of a camera directory (segments whose writer stopped); what was done.

    A closed segment is fsynced and renamed to its final name (the caller then verifies and indexes
    it); its journal is dropped once the rename is durable.
    """
    lines = []
    for tmp in sorted(directory.glob(f".*{TMP_SUFFIX}")):
        journal = journal_file(tmp)
        sequence = _sequence_of(tmp)
        final = None if sequence is None else segment_file(root, directory.name, sequence)
        if sequence is None or final is None or final.exists():
            rejected = set_aside(root, directory.name, tmp)
            lines.append(f"set aside unfinished {tmp} (moved to {rejected}): no free segment name for it")
            journal.unlink(missing_ok=True)
            continue
        try:
            if _torn_header(tmp):
                info = None
            else:
                log_bytes = journal.read_bytes() if journal.exists() else b""
                with tmp.open("r+b") as handle:
                    info = close_unfinished(
                        handle,
                        log_bytes,
                        device_key,
                        recovered_at,
                        expect_camera=directory.name,
                        expect_sequence=sequence,
                    )
                    os.fsync(handle.fileno())
        except SegmentError as error:
            rejected = set_aside(root, directory.name, tmp)
            journal.unlink(missing_ok=True)
            lines.append(f"rejected unfinished {tmp} (moved to {rejected}): {error}")
            continue
        if info is None:
            tmp.unlink()
            journal.unlink(missing_ok=True)
            lines.append(f"removed unfinished segment {tmp} (writer stopped before a whole record)")
            continue
        os.replace(tmp, final)
        fsync_dir(directory)
        journal.unlink(missing_ok=True)
        lines.append(
            f"closed unfinished segment {directory.name}#{sequence} after a crash: kept {info.packets}"
            f" packet(s) up to {iso_ms(info.end_ts)} as {info.state}"
        )
    for orphan in directory.glob(f".*{SUFFIX}{JOURNAL_SUFFIX}"):
        if not orphan.with_suffix(".tmp").exists():
            orphan.unlink()  # its segment was renamed (committed or closed) before the journal went
    return lines


def recover_file(
    root: Path,
    index: SegmentIndex,
    camera: str,
    sequence: int,
    path: Path,
    device_public_key: Ed25519PublicKey | None,
) -> list[str]:
    """Verify one file stored as `camera`#`sequence` and index it, or set it aside; what was done."""
    try:
        info = verify_segment(
            path, device_public_key, allow_partial=True, expect_camera=camera, expect_sequence=sequence
        )
    except SegmentError as error:
        rejected = set_aside(root, camera, path)
        index.delete(camera, sequence)
        return [f"rejected {path} (moved to {rejected}): {error}"]
    lines = []
    if not info.complete:
        if info.valid_length < info.size:
            with path.open("r+b") as handle:
                handle.truncate(info.valid_length)
                os.fsync(handle.fileno())
        info = verify_segment(path, device_public_key, allow_partial=True)
        lines.append(f"{info.name} has no signed trailer: kept {info.records} whole record(s) as partial")
    index.insert([SegmentRecord.from_info(info, path)])
    lines.append(f"indexed {info.name} ({info.state})")
    return lines


def set_aside(root: Path, camera: str, path: Path) -> Path:
    """Move a file that failed verification into `.rejected/` (kept for investigation); its new path."""
    rejected = root / REJECTED_DIR / f"{camera}-{path.name}"
    rejected.parent.mkdir(exist_ok=True)
    path.rename(rejected)
    return rejected
