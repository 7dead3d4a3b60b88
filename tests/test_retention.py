"""Retention as a pure choice: a table of scenarios -> the segments to delete and why.

Every figure is passed in (now, indexed bytes, free bytes), so each row of the table is one call of
`plan_retention`, with no disk or clock. Times are seconds from T0; sizes are bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_agent.formats.config import StorageConfig
from edge_agent.storage.holds import Hold
from edge_agent.storage.index import SegmentRecord
from edge_agent.storage.retention import DAY, Deletion, RetentionLimits, plan_retention

T0 = 1_700_000_000.0
NOW = T0 + 10 * DAY


def seg(camera: str, sequence: int, start: float, seconds: float = 10.0, size: int = 100) -> SegmentRecord:
    """An index row of `camera` starting `start` s after T0."""
    return SegmentRecord(
        camera=camera,
        sequence=sequence,
        start_ts=T0 + start,
        end_ts=T0 + start + seconds,
        size=size,
        sha256=f"{camera}-{sequence}",
        prev_sha256="",
        path=Path(f"/ring/{camera}/{sequence:012d}.seg"),
        state="complete",
    )


def hold(camera: str, start: float, end: float, expires: float = NOW + DAY, hold_id: int = 1) -> Hold:
    """A hold of `camera` on [T0 + start, T0 + end), lapsing at `expires`."""
    return Hold(hold_id, camera, T0 + start, T0 + end, "PV 2024/117", T0, expires)


@dataclass(frozen=True)
class Case:
    """One scenario: the index, the holds and the figures of the pass -> what goes, and why."""

    segments: list[SegmentRecord]
    expected: list[tuple[str, int, str]]  # (camera, sequence, reason), in deletion order
    holds: list[Hold] = field(default_factory=list)
    retention_days: float | None = 9.0  # cut-off at T0 + 1 day
    max_bytes: int = 0
    min_free_bytes: int = 0
    free_bytes: int = 10**12
    unmet: bool = False


OLD = 0.0  # before the 9-day cut-off (T0 + 1 day)
YOUNG = 2 * DAY  # after it

CASES = {
    "nothing-to-do": Case([seg("cam1", 1, YOUNG), seg("cam1", 2, YOUNG + 10)], []),
    "an-empty-index-cannot-make-room": Case([], [], max_bytes=1, min_free_bytes=10**13, unmet=True),
    "age-oldest-first-young-kept": Case(
        [seg("cam1", 2, OLD + 10), seg("cam1", 1, OLD), seg("cam1", 3, YOUNG)],
        [("cam1", 1, "age"), ("cam1", 2, "age")],
    ),
    "age-straddling-the-cut-off-goes": Case([seg("cam1", 1, DAY - 5, seconds=10)], [("cam1", 1, "age")]),
    "age-starting-at-the-cut-off-stays": Case([seg("cam1", 1, DAY)], []),
    "age-no-limit-in-a-space-only-pass": Case([seg("cam1", 1, OLD)], [], retention_days=None),
    "age-held-segment-kept": Case(
        [seg("cam1", 1, OLD), seg("cam1", 2, OLD + 10), seg("cam1", 3, OLD + 20)],
        [("cam1", 1, "age"), ("cam1", 3, "age")],
        holds=[hold("cam1", 12, 15)],
    ),
    "age-a-hold-protects-its-camera-only": Case(
        [seg("cam1", 1, OLD), seg("cam2", 1, OLD)], [("cam2", 1, "age")], holds=[hold("cam1", 0, 10)]
    ),
    "age-a-hold-ending-where-a-segment-starts-does-not-cover-it": Case(
        [seg("cam1", 1, OLD), seg("cam1", 2, OLD + 10)], [("cam1", 2, "age")], holds=[hold("cam1", 0, 10)]
    ),
    "age-a-lapsed-hold-protects-nothing": Case(
        [seg("cam1", 1, OLD)], [("cam1", 1, "age")], holds=[hold("cam1", 0, 10, expires=NOW)]
    ),
    "quota-oldest-first-across-cameras": Case(
        [
            seg("cam1", 1, YOUNG),
            seg("cam2", 1, YOUNG + 10),
            seg("cam1", 2, YOUNG + 20),
            seg("cam2", 2, YOUNG + 30),
        ],
        [("cam1", 1, "quota"), ("cam2", 1, "quota")],
        max_bytes=200,
    ),
    "quota-exactly-met-deletes-nothing": Case(
        [seg("cam1", 1, YOUNG), seg("cam1", 2, YOUNG + 10)], [], max_bytes=200
    ),
    "quota-zero-means-no-quota": Case([seg("cam1", 1, YOUNG, size=10**9)], [], max_bytes=0),
    "quota-met-by-age-deletions-alone": Case(
        [seg("cam1", 1, OLD), seg("cam1", 2, YOUNG), seg("cam1", 3, YOUNG + 10)],
        [("cam1", 1, "age")],
        max_bytes=200,
    ),
    "quota-skips-held-segments": Case(
        [seg("cam1", 1, YOUNG), seg("cam1", 2, YOUNG + 10), seg("cam1", 3, YOUNG + 20)],
        [("cam1", 2, "quota")],
        holds=[hold("cam1", YOUNG, YOUNG + 5)],
        max_bytes=200,
    ),
    "quota-unmet-when-the-rest-is-held": Case(
        [seg("cam1", 1, YOUNG), seg("cam1", 2, YOUNG + 10), seg("cam1", 3, YOUNG + 20)],
        [("cam1", 3, "quota")],
        holds=[hold("cam1", YOUNG, YOUNG + 20)],
        max_bytes=100,
        unmet=True,
    ),
    "quota-ties-in-time-go-by-camera-then-sequence": Case(
        [seg("cam2", 7, YOUNG), seg("cam1", 9, YOUNG), seg("cam1", 8, YOUNG)],
        [("cam1", 8, "quota"), ("cam1", 9, "quota")],
        max_bytes=100,
    ),
    "disk-free-until-the-floor-is-met": Case(
        [seg("cam1", 1, YOUNG), seg("cam1", 2, YOUNG + 10), seg("cam1", 3, YOUNG + 20)],
        [("cam1", 1, "disk-free"), ("cam1", 2, "disk-free")],
        min_free_bytes=1000,
        free_bytes=850,
    ),
    "disk-free-at-the-floor-deletes-nothing": Case(
        [seg("cam1", 1, YOUNG)], [], min_free_bytes=1000, free_bytes=1000
    ),
    "disk-free-zero-floor-means-none": Case([seg("cam1", 1, YOUNG)], [], min_free_bytes=0, free_bytes=0),
    "disk-free-counts-what-age-freed": Case(
        [seg("cam1", 1, OLD, size=300), seg("cam1", 2, YOUNG)],
        [("cam1", 1, "age")],
        min_free_bytes=1000,
        free_bytes=750,
    ),
    "quota-first-then-disk-free": Case(
        [seg("cam1", i, YOUNG + 10 * i) for i in range(1, 6)],
        [("cam1", 1, "quota"), ("cam1", 2, "disk-free"), ("cam1", 3, "disk-free")],
        max_bytes=400,
        min_free_bytes=1000,
        free_bytes=750,
    ),
    "disk-free-unmet-when-everything-is-held": Case(
        [seg("cam1", 1, YOUNG), seg("cam1", 2, OLD)],
        [],
        holds=[hold("cam1", OLD, YOUNG + 10)],
        min_free_bytes=1000,
        free_bytes=0,
        unmet=True,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_retention_chooses(case: Case) -> None:
    limits = RetentionLimits(case.retention_days, case.max_bytes, case.min_free_bytes)
    plan = plan_retention(
        case.segments,
        case.holds,
        now=NOW,
        limits=limits,
        total_bytes=sum(s.size for s in case.segments),
        free_bytes=case.free_bytes,
    )
    assert [(d.segment.camera, d.segment.sequence, d.reason) for d in plan.deletions] == case.expected
    assert plan.unmet is case.unmet


def test_only_old_rows_are_needed_while_space_is_not_short() -> None:
    young = [seg("cam1", i, YOUNG + 10 * i) for i in range(2, 50)]
    old = [seg("cam1", 1, OLD)]
    total = sum(s.size for s in old + young)
    limits = RetentionLimits(9.0, total, 0)
    assert not limits.space_short(total, 0)
    everything = plan_retention(old + young, [], now=NOW, limits=limits, total_bytes=total, free_bytes=0)
    only_old = plan_retention(old, [], now=NOW, limits=limits, total_bytes=total, free_bytes=0)
    assert everything == only_old and [d.reason for d in only_old.deletions] == ["age"]


def test_limits_come_from_the_storage_settings() -> None:
    storage = StorageConfig(path=Path("/ring"), retention_days=15, max_bytes=10**9, min_free_bytes=10**8)
    assert RetentionLimits.of(storage) == RetentionLimits(15, 10**9, 10**8)
    assert RetentionLimits.of(storage, age=False) == RetentionLimits(None, 10**9, 10**8)
    assert RetentionLimits.of(storage).oldest_allowed(NOW) == NOW - 15 * DAY
    assert RetentionLimits.of(storage, age=False).oldest_allowed(NOW) is None


@pytest.mark.parametrize("seed", range(40))
def test_a_held_segment_is_never_chosen_whatever_the_limits(seed: int) -> None:
    rng = random.Random(seed)
    cameras = ("cam1", "cam2", "cam3")
    segments = [
        seg(camera, sequence, rng.uniform(0, 3 * DAY), seconds=rng.uniform(1, 60), size=rng.randrange(1, 500))
        for camera in cameras
        for sequence in range(1, 30)
    ]
    holds = [
        hold(
            rng.choice(cameras),
            start,
            start + rng.uniform(1, 600),
            expires=NOW + rng.uniform(-DAY, DAY),
            hold_id=i,
        )
        for i, start in enumerate(rng.uniform(0, 3 * DAY) for _ in range(6))
    ]
    total = sum(s.size for s in segments)
    limits = RetentionLimits(rng.choice([None, 8.0, 9.5]), rng.randrange(0, total), rng.randrange(0, 20_000))
    free = rng.randrange(0, 20_000)
    plan = plan_retention(segments, holds, now=NOW, limits=limits, total_bytes=total, free_bytes=free)
    active = [h for h in holds if h.expires_at > NOW]
    chosen = [d.segment for d in plan.deletions]
    assert not any(h.covers(s.camera, s.start_ts, s.end_ts) for s in chosen for h in active)
    assert len({(s.camera, s.sequence) for s in chosen}) == len(chosen)  # nothing chosen twice
    # The input order does not matter.
    shuffled = rng.sample(segments, len(segments))
    again = plan_retention(shuffled, holds, now=NOW, limits=limits, total_bytes=total, free_bytes=free)
    assert again == plan
    # Once applied, the limits hold unless the plan says they cannot be met.
    left = total - sum(s.size for s in chosen)
    if not plan.unmet:
        assert not limits.space_short(left, free + sum(s.size for s in chosen))


def test_a_deletion_names_its_segment_and_reason() -> None:
    segment = seg("cam1", 1, OLD)
    plan = plan_retention(
        [segment], [], now=NOW, limits=RetentionLimits(9.0, 0, 0), total_bytes=100, free_bytes=0
    )
    assert plan.deletions == (Deletion(segment, "age"),)
