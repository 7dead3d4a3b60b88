"""Retention: which segments to delete, and why. A pure choice: no clock, no disk, no index.

The caller measures first (the time, the indexed bytes, the free space) and passes the figures in; the
choice comes back as a plan, and the ring buffer applies it. Rules, in order:

1. `age`: nothing whose footage starts before `now - retention_days` survives (a legal cap, whatever
   the free space);
2. `quota` then `disk-free`: the oldest segments go until the indexed bytes are within `max_bytes` and
   the free space is back above `min_free_bytes` (a deletion is counted as freeing its size).

A segment overlapping an active hold of its camera is never chosen, by any rule. What was deleted is
tallied by reason (`DeletedFootage`): the space rules may delete footage younger than the legal
retention (`is_early`), which status, metrics and the log must show, unlike routine expiry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.formats.config import StorageConfig
from edge_agent.storage.holds import Hold
from edge_agent.storage.index import SegmentRecord

DAY = 86400.0

AGE = "age"
QUOTA = "quota"
DISK_FREE = "disk-free"
REASONS = (AGE, QUOTA, DISK_FREE)


@dataclass(frozen=True)
class RetentionLimits:
    """The limits of one pass. `retention_days=None` checks space only (the pass after a commit)."""

    retention_days: float | None
    max_bytes: int  # 0: no quota
    min_free_bytes: int  # 0: no free-space floor

    @classmethod
    def of(cls, storage: StorageConfig, *, age: bool = True) -> RetentionLimits:
        """The limits the storage settings set (`age=False`: leave age to the maintenance pass)."""
        return cls(storage.retention_days if age else None, storage.max_bytes, storage.min_free_bytes)

    def oldest_allowed(self, now: float) -> float | None:
        """Footage starting before this goes (None: no age limit in this pass)."""
        return None if self.retention_days is None else now - self.retention_days * DAY

    def space_short(self, total_bytes: int, free_bytes: int) -> bool:
        """Whether the quota or the free-space floor is crossed."""
        over_quota = bool(self.max_bytes) and total_bytes > self.max_bytes
        low_disk = bool(self.min_free_bytes) and free_bytes < self.min_free_bytes
        return over_quota or low_disk


@dataclass(frozen=True)
class Deletion:
    """A segment chosen for deletion, and why (`age`, `quota` or `disk-free`)."""

    segment: SegmentRecord
    reason: str


def is_early(segment: SegmentRecord, now: float, retention_days: float) -> bool:
    """Whether some of the segment's footage is younger than the legal retention at `now` (deleting it
    shortens what the device keeps below what the law asks for)."""
    return segment.end_ts > now - retention_days * DAY


@dataclass(frozen=True)
class DeletedFootage:
    """Footage deleted for one reason: segments, bytes, seconds of footage, and `early`, the segments of
    those that still held footage younger than the legal retention."""

    segments: int = 0
    bytes: int = 0
    seconds: float = 0.0
    early: int = 0

    def plus(self, segment: SegmentRecord, early: bool) -> DeletedFootage:
        """These counts with one more deleted segment."""
        return DeletedFootage(
            segments=self.segments + 1,
            bytes=self.bytes + segment.size,
            seconds=self.seconds + max(0.0, segment.end_ts - segment.start_ts),
            early=self.early + int(early),
        )


@dataclass(frozen=True)
class RetentionPlan:
    """What to delete, in order; `unmet` when the space limits still fail because the rest is held."""

    deletions: tuple[Deletion, ...]
    unmet: bool = False


def plan_retention(
    segments: Sequence[SegmentRecord],
    holds: Sequence[Hold],
    *,
    now: float,
    limits: RetentionLimits,
    total_bytes: int,
    free_bytes: int,
) -> RetentionPlan:
    """Choose the segments to delete at `now`, each with its reason, never a held one.

    `segments` must hold every segment older than the age cut-off and, when
    `limits.space_short(total_bytes, free_bytes)`, every segment (the caller may leave out the rest to
    avoid reading a whole index at each pass). `total_bytes` is the size of every indexed segment,
    `free_bytes` the free space measured now. Holds that lapsed by `now` protect nothing.
    """
    active = [h for h in holds if h.active(now)]

    def held(segment: SegmentRecord) -> bool:
        return any(h.covers(segment.camera, segment.start_ts, segment.end_ts) for h in active)

    oldest_first = sorted(segments, key=lambda s: (s.start_ts, s.camera, s.sequence))
    cutoff = limits.oldest_allowed(now)
    deletions = [
        Deletion(s, AGE) for s in oldest_first if cutoff is not None and s.start_ts < cutoff and not held(s)
    ]
    freed = sum(d.segment.size for d in deletions)
    total, free = total_bytes - freed, free_bytes + freed
    if not limits.space_short(total, free):
        return RetentionPlan(tuple(deletions))
    chosen = {(d.segment.camera, d.segment.sequence) for d in deletions}
    for segment in oldest_first:
        if (segment.camera, segment.sequence) in chosen or held(segment):
            continue
        over_quota = bool(limits.max_bytes) and total > limits.max_bytes
        deletions.append(Deletion(segment, QUOTA if over_quota else DISK_FREE))
        total, free = total - segment.size, free + segment.size
        if not limits.space_short(total, free):
            return RetentionPlan(tuple(deletions))
    return RetentionPlan(tuple(deletions), unmet=True)
