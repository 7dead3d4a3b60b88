"""Start-up recovery: make the index match the segment files, which are the truth.

- a leftover temporary file is the segment in flight when the writer stopped: removed;
- a file the index does not know (a crash between rename and index row), or knows with another size,
  is verified and indexed; one without its signed trailer is cut back to its last whole record and
  indexed as `partial`;
- a file that fails verification (altered, foreign, stored under another segment's name) is set aside
  in `.rejected/`: never deleted (it may be evidence of tampering), never indexed nor served;
- a row whose file is gone is dropped;
- holds are restored from `holds.json` when the index has none.

(A corrupt index file is set aside and recreated empty by `index.SegmentIndex`; this then refills it.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.formats.sealing import SegmentError, verify_segment
from edge_agent.storage.holds import HoldBook
from edge_agent.storage.index import SUFFIX, TMP_SUFFIX, SegmentIndex, SegmentRecord

log = logging.getLogger(__name__)

REJECTED_DIR = ".rejected"


def camera_dirs(root: Path) -> list[Path]:
    """The camera directories under the ring's root (hidden ones, like `.rejected`, are not)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def recover(
    root: Path, index: SegmentIndex, holds: HoldBook, device_public_key: Ed25519PublicKey | None
) -> list[str]:
    """Repair the index from the files under `root`; returns one line per repair (also logged).

    `device_public_key=None` checks the files' structure only (a device without its key).
    """
    repairs: list[str] = []
    known = {(r.camera, r.sequence): r for r in index.all_segments()}
    on_disk: set[tuple[str, int]] = set()
    for directory in camera_dirs(root):
        repairs.extend(remove_unfinished(directory))
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


def remove_unfinished(directory: Path) -> list[str]:
    """Remove the temporary files of a camera directory (segments whose writer stopped)."""
    lines = []
    for tmp in directory.glob(f".*{TMP_SUFFIX}"):
        tmp.unlink()
        lines.append(f"removed unfinished segment {tmp} (writer stopped while writing it)")
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
