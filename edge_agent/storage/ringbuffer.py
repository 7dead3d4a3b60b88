"""The ring buffer: sealed segment files per camera, their index, retention, legal holds, recovery.

`RingBuffer` is what the rest of the agent uses; each idea behind it has its own module: `index` (the
SQLite rows and the file layout), `recovery` (start-up repair), `holds` (hold rows and their mirror),
`retention` (the pure choice of what to delete) and `maintenance` (the thread that applies it).

Layout under `root`: `<camera>/<sequence, 12 digits>.seg` (a segment being written is
`<camera>/.<sequence>.seg.tmp`), `index.sqlite` (WAL), `holds.json` and `.rejected/`.

Write path: `begin(camera)` gives a temporary file, its journal (what crash recovery needs to close it:
see `recovery`) and the chain link (next sequence, previous hash); `commit` flushes, fsyncs, renames,
fsyncs the directory and only then adds the index row and drops the journal.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.formats.config import StorageConfig
from edge_agent.formats.durable import fsync_dir
from edge_agent.formats.sealing import SegmentInfo
from edge_agent.formats.times import Clock
from edge_agent.storage.holds import HOLDS_NAME, Hold, HoldBook
from edge_agent.storage.index import (
    INDEX_NAME,
    SegmentIndex,
    SegmentRecord,
    empty_stats,
    segment_file,
    temporary_file,
)
from edge_agent.storage.maintenance import Maintenance
from edge_agent.storage.recovery import journal_file
from edge_agent.storage.recovery import recover as recover_index
from edge_agent.storage.retention import (
    DAY,
    REASONS,
    DeletedFootage,
    Deletion,
    RetentionLimits,
    is_early,
    plan_retention,
)

log = logging.getLogger(__name__)

DiskFree = Callable[[Path], int]


@dataclass
class PendingSegment:
    """A segment being written: its temporary file, its journal and its place in the camera's chain."""

    camera: str
    sequence: int
    prev_sha256: str
    tmp_path: Path
    final_path: Path
    file: BinaryIO
    journal_path: Path
    journal: BinaryIO

    def close_files(self) -> None:
        """Close the segment file and its journal (OSError from either propagates, both are closed)."""
        try:
            self.file.close()
        finally:
            self.journal.close()


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _count_in(stats: dict[str, dict[str, float | int | None]], row: SegmentRecord) -> None:
    """Add one row to the per-camera figures of `SegmentIndex.stats`."""
    entry = stats.setdefault(row.camera, empty_stats())
    entry["segments"] = int(entry["segments"] or 0) + 1
    entry["partial"] = int(entry["partial"] or 0) + (row.state == "partial")
    entry["bytes"] = int(entry["bytes"] or 0) + row.size
    oldest, newest = entry["oldest_ts"], entry["newest_ts"]
    entry["oldest_ts"] = row.start_ts if oldest is None else min(oldest, row.start_ts)
    entry["newest_ts"] = row.end_ts if newest is None else max(newest, row.end_ts)


def _age(seconds: float) -> str:
    """An age in the unit a reader takes in at once: minutes, hours or days."""
    seconds = max(0.0, seconds)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < DAY else f"{seconds / DAY:.1f} days"


@dataclass(frozen=True)
class FootageSpace:
    """The disk under the ring: footage, free space, and what files other than footage (audit log,
    outbox, logs, anything else on the filesystem) took since the ring started."""

    footage_bytes: int
    free_bytes: int
    other_growth_bytes: int
    min_free_bytes: int

    @property
    def short_for_other_files(self) -> bool:
        """Free space under the floor, and not because of footage: what the free-space rule refuses to
        fix by deleting footage."""
        return (
            bool(self.min_free_bytes)
            and self.free_bytes < self.min_free_bytes
            and self.other_growth_bytes > 0
        )

    def problem(self) -> str:
        """Words for status and the log ("" when there is none)."""
        if not self.short_for_other_files:
            return ""
        return (
            f"disk short of free space ({self.free_bytes} bytes free, floor {self.min_free_bytes}):"
            f" files other than footage grew by {self.other_growth_bytes} bytes since start"
        )


class RingBuffer:
    """Sealed segments of every camera of a device, their index, retention and holds. Thread-safe."""

    def __init__(
        self,
        root: Path,
        storage: StorageConfig,
        clock: Clock = time.time,
        *,
        device_public_key: Ed25519PublicKey | None = None,
        device_key: Ed25519PrivateKey | None = None,
        disk_free: DiskFree = _disk_free,
        maintenance_interval_s: float = 30.0,
        recover: bool = True,
    ) -> None:
        self.root = Path(root)
        self.storage = storage
        self._clock = clock
        self._disk_free = disk_free
        self.root.mkdir(parents=True, exist_ok=True)
        self._index = SegmentIndex(self.root, clock, repair=recover)
        self._holds = HoldBook(self._index, self.root, clock)
        self._maintenance = Maintenance(
            self.enforce_retention, maintenance_interval_s, "ringbuffer-maintenance"
        )
        # Footage + free space at the first measure: what files other than footage took since is theirs.
        self._space_lock = threading.Lock()
        self._room_at_start: int | None = None
        self._short_for_others = False
        # Footage deleted since start, by reason (for status and /metrics).
        self._deleted_lock = threading.Lock()
        self._deleted = dict.fromkeys(REASONS, DeletedFootage())
        # The write path's own state: each camera's chain head, and rows a full disk kept out of the index.
        self._write_lock = threading.Lock()
        self._chain: dict[str, tuple[int, str]] = {}
        self._unindexed: list[SegmentRecord] = []
        # Without recovery (a read-only look while the agent runs) nothing on disk is changed. With the
        # device key, recovery closes and signs the segments a crash left unfinished.
        self.recovery = (
            recover_index(
                self.root, self._index, self._holds, device_public_key, device_key=device_key, now=clock()
            )
            if recover
            else []
        )

    # ---- write path --------------------------------------------------------------------------------

    def begin(self, camera: str) -> PendingSegment:
        """Open the temporary file of `camera`'s next segment (OSError when the disk refuses)."""
        sequence, prev = self._next_link(camera)
        tmp = temporary_file(self.root, camera, sequence)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        handle = tmp.open("wb")
        journal = journal_file(tmp)
        try:
            journal_handle = journal.open("wb")
        except OSError:
            handle.close()
            tmp.unlink(missing_ok=True)
            raise
        final = segment_file(self.root, camera, sequence)
        return PendingSegment(camera, sequence, prev, tmp, final, handle, journal, journal_handle)

    def _next_link(self, camera: str) -> tuple[int, str]:
        with self._write_lock:
            if camera not in self._chain:
                self._chain[camera] = self._index.chain_head(camera)
            last_sequence, last_sha256 = self._chain[camera]
        return last_sequence + 1, last_sha256

    def commit(self, pending: PendingSegment, sealed: SegmentInfo) -> SegmentRecord:
        """Make a finished segment durable and visible: fsync, rename, fsync directory, index row.

        Once renamed, the segment is kept whatever happens to the index: a row that cannot be written
        (disk full) is retried at the next commit, and recovery at start would add it anyway. A
        segment sealed for another camera or sequence than `pending` is dropped (ValueError): under
        that name, recovery would reject it.
        """
        if (sealed.camera, sealed.sequence) != (pending.camera, pending.sequence):
            self.abort(pending)
            raise ValueError(
                f"sealed segment {sealed.camera}#{sealed.sequence} committed as"
                f" {pending.camera}#{pending.sequence}"
            )
        try:
            pending.file.flush()
            os.fsync(pending.file.fileno())
        finally:
            pending.close_files()
        os.replace(pending.tmp_path, pending.final_path)
        fsync_dir(pending.final_path.parent)
        pending.journal_path.unlink(missing_ok=True)  # recovery also drops a journal left without its file
        record = SegmentRecord.from_info(sealed, pending.final_path)
        with self._write_lock:
            self._chain[pending.camera] = (sealed.sequence, sealed.sha256)
            self._unindexed.append(record)
            try:
                self._index.insert(self._unindexed)
                self._unindexed.clear()
            except sqlite3.Error as error:
                log.error(
                    "index row for %s#%d not written (%s): retried at the next commit",
                    pending.camera,
                    sealed.sequence,
                    error,
                )
        try:
            self.enforce_space()
        except (OSError, sqlite3.Error) as error:
            log.error("making room after %s#%d failed: %s", pending.camera, sealed.sequence, error)
        return record

    def abort(self, pending: PendingSegment) -> None:
        """Drop an unfinished segment (write error): its temporary file goes, the sequence is reused."""
        try:
            pending.close_files()
        except OSError as error:
            log.debug("closing %s: %s", pending.tmp_path, error)
        pending.tmp_path.unlink(missing_ok=True)
        pending.journal_path.unlink(missing_ok=True)

    # ---- queries -----------------------------------------------------------------------------------
    # Footage past the retention cap is never listed nor served, even before the maintenance pass that
    # deletes it (up to one interval later): every read hides what `plan_retention` would delete by age.

    def segments(
        self, camera: str, start_ts: float | None = None, end_ts: float | None = None
    ) -> list[SegmentRecord]:
        """Index rows of `camera` overlapping [start_ts, end_ts) (None = unbounded), in sequence order;
        footage past the retention cap (and not held) is left out."""
        lo = float("-inf") if start_ts is None else start_ts
        hi = float("inf") if end_ts is None else end_ts
        rows = self._index.segments(camera, lo, hi)
        cutoff = self._age_limits().oldest_allowed(self._clock())
        if cutoff is None or all(r.start_ts >= cutoff for r in rows):
            return rows
        expired = self._past_the_cap([r for r in rows if r.start_ts < cutoff])
        return [r for r in rows if (r.camera, r.sequence) not in expired]

    def cameras(self) -> list[str]:
        """Cameras with at least one segment or chain entry."""
        return self._index.cameras()

    def stats(self, *, past_cap: bool = False) -> dict[str, dict[str, float | int | None]]:
        """Per camera: segments, partial, bytes, oldest_ts, newest_ts, holds; of the footage that may
        still be served (within the retention cap, or held), or with `past_cap` of everything the disk
        holds (footage past the cap waits there for the next maintenance pass, or for a stopped agent)."""
        cutoff = self._age_limits().oldest_allowed(self._clock())
        if cutoff is None or past_cap:
            return self._index.stats()
        result = self._index.stats(since=cutoff)
        old = self._index.segments_started_before(cutoff)
        expired = self._past_the_cap(old)
        for row in old:
            if (row.camera, row.sequence) not in expired:
                _count_in(result, row)
        return result

    def total_bytes(self) -> int:
        """Size of every indexed segment (what the disk holds, served or not: the quota's measure)."""
        return self._index.total_bytes()

    def _age_limits(self) -> RetentionLimits:
        return RetentionLimits(self.storage.retention_days, 0, 0)

    def _past_the_cap(self, rows: list[SegmentRecord]) -> set[tuple[str, int]]:
        """(camera, sequence) of the rows that age retention deletes now, holds aside."""
        if not rows:
            return set()
        plan = plan_retention(
            rows,
            self._holds.rows(),
            now=self._clock(),
            limits=self._age_limits(),
            total_bytes=0,
            free_bytes=0,
        )
        return {(d.segment.camera, d.segment.sequence) for d in plan.deletions}

    # ---- holds -------------------------------------------------------------------------------------

    def add_hold(
        self, camera: str, start_ts: float, end_ts: float, requisition: str, expires_at: float
    ) -> Hold:
        """Keep `camera`'s footage in [start_ts, end_ts) until `expires_at`; ValueError on a bad range."""
        return self._holds.add(camera, start_ts, end_ts, requisition, expires_at)

    def release_hold(self, hold_id: int) -> bool:
        """Remove a hold; False if there was none with this id."""
        return self._holds.release(hold_id)

    def holds(self, camera: str | None = None) -> list[Hold]:
        """Holds not yet released nor removed by expiry, of one camera or all."""
        return self._holds.rows(camera)

    # ---- retention ---------------------------------------------------------------------------------

    def enforce_retention(self, now: float | None = None) -> list[Deletion]:
        """Expire holds, then delete by age, quota and free space; every deletion returned and logged."""
        now = self._clock() if now is None else now
        self._holds.expire(now)
        return self._apply_retention(now, RetentionLimits.of(self.storage))

    def enforce_space(self) -> list[Deletion]:
        """Only the quota and free-space limits (after each commit; age is the maintenance pass's job)."""
        if not self.storage.max_bytes and not self.storage.min_free_bytes:
            return []
        return self._apply_retention(self._clock(), RetentionLimits.of(self.storage, age=False))

    def _apply_retention(self, now: float, limits: RetentionLimits) -> list[Deletion]:
        """Measure, let `plan_retention` choose, delete; again while the measured free space is short.

        The plan counts a deletion as freeing its size; the disk may disagree (a file still open by a
        clip being served keeps its blocks), so the free space is measured again after each plan.
        """
        deletions: list[Deletion] = []
        others: int | None = None  # measured once a pass: within it, the disk's word is re-read
        try:
            while True:
                total = self._index.total_bytes()
                free = 0
                if limits.min_free_bytes:
                    free = self._disk_free(self.root)
                    if others is None:
                        others = self._measure_space(total, free).other_growth_bytes
                    free += others
                cutoff = limits.oldest_allowed(now)
                if limits.space_short(total, free):
                    candidates = self._index.all_segments()
                elif cutoff is not None:
                    candidates = self._index.segments_started_before(cutoff)
                else:
                    return deletions
                plan = plan_retention(
                    candidates, self._holds.rows(), now=now, limits=limits, total_bytes=total, free_bytes=free
                )
                for deletion in plan.deletions:
                    self._delete(deletion, now)
                    deletions.append(deletion)
                if plan.unmet:
                    log.error("retention: quota or free-space floor not met; every segment left is held")
                    return deletions
                if not plan.deletions:
                    return deletions
                limits = RetentionLimits(None, limits.max_bytes, limits.min_free_bytes)  # age is done
        finally:
            self._warn_early(deletions, now)

    def _delete(self, deletion: Deletion, now: float) -> None:
        segment = deletion.segment
        segment.path.unlink(missing_ok=True)
        self._index.delete(segment.camera, segment.sequence)
        early = is_early(segment, now, self.storage.retention_days)
        with self._deleted_lock:
            self._deleted[deletion.reason] = self._deleted[deletion.reason].plus(segment, early)
        log.info(
            "deleted segment %s#%d (%s, %d bytes, %.3f..%.3f): %s",
            segment.camera,
            segment.sequence,
            segment.path,
            segment.size,
            segment.start_ts,
            segment.end_ts,
            deletion.reason,
        )

    def _warn_early(self, deletions: list[Deletion], now: float) -> None:
        """One WARNING per pass that deleted footage younger than the legal retention (space rules)."""
        early = [d for d in deletions if is_early(d.segment, now, self.storage.retention_days)]
        if not early:
            return
        youngest = max(d.segment.end_ts for d in early)
        reasons = sorted({d.reason for d in early})
        log.warning(
            "%s: deleted %d segment(s) (%s; %d bytes) holding footage younger than the %g-day retention"
            " (the youngest %s old): the disk holds less than the retention; raise the quota or the"
            " disk, or lower the bit rate",
            " and ".join(reasons),
            len(early),
            ", ".join(f"{d.segment.camera}#{d.segment.sequence}" for d in early[:5])
            + (", ..." if len(early) > 5 else ""),
            sum(d.segment.size for d in early),
            self.storage.retention_days,
            _age(now - youngest),
        )

    def space(self) -> FootageSpace:
        """The disk as the free-space rule sees it now: footage, free space, what other files took."""
        return self._measure_space(self._index.total_bytes(), self._disk_free(self.root))

    def _measure_space(self, footage: int, free: int) -> FootageSpace:
        """Footage and free space measured together; the growth of everything else since the first
        measure is the shortfall in their sum. The free-space rule adds it back to the free space:
        only footage makes footage go. The audit log, outbox and logs have bounds of their own, and
        deleting evidence for them would only feed them; the shortfall is reported instead."""
        with self._space_lock:
            room = footage + self._bookkeeping_bytes() + free
            if self._room_at_start is None:
                self._room_at_start = room
            space = FootageSpace(
                footage, free, max(0, self._room_at_start - room), self.storage.min_free_bytes
            )
            changed = space.short_for_other_files != self._short_for_others
            self._short_for_others = space.short_for_other_files
        if changed and space.short_for_other_files:
            log.warning("%s; footage is kept", space.problem())
        elif changed:
            log.info("free space back above the floor (%d bytes free)", free)
        return space

    def _bookkeeping_bytes(self) -> int:
        """The ring's own files beside the footage (the index and its WAL, the holds mirror): they grow
        with the footage, so they are on its side of the measure."""
        total = 0
        for name in (INDEX_NAME, f"{INDEX_NAME}-wal", f"{INDEX_NAME}-shm", HOLDS_NAME):
            try:
                total += (self.root / name).stat().st_size
            except OSError:
                continue  # not there (yet)
        return total

    def deleted(self) -> dict[str, DeletedFootage]:
        """Footage deleted since start, by reason (`age`, `quota`, `disk-free`: each present)."""
        with self._deleted_lock:
            return dict(self._deleted)

    # ---- maintenance thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Run retention now and then every `maintenance_interval_s` in a background thread."""
        self._maintenance.start()

    def stop(self) -> None:
        """Stop the maintenance thread (waits for a pass in progress)."""
        self._maintenance.stop()

    def close(self) -> None:
        """Stop maintenance and close the index."""
        self.stop()
        self._index.close()
