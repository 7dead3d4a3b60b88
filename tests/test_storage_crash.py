"""A real writer process killed with SIGKILL: the buffer reopens consistent, keeping what was written.

Also what recovery does with files it did not write: crafted headers, torn or foreign leftovers.
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
from pathlib import Path

import pytest

from edge_agent.formats.bundle import BundleSegment, Gap, find_gaps
from edge_agent.formats.sealing import open_segment, verify_chain, verify_segment
from edge_agent.storage.ringbuffer import RingBuffer
from tests.storage_support import (
    WriterSettings,
    footage_clock,
    make_keys,
    make_writer_keys,
    measure_crash_loss,
    run_and_kill,
    storage,
)
from tests.test_sealing import CRAFTED, _crafted_header, _rewrite, _seal


def test_sigkill_at_random_points_keeps_every_record_written(tmp_path: Path) -> None:
    keys = make_writer_keys(tmp_path / "keys")
    root = tmp_path / "ring"
    rng = random.Random(os.getpid())
    durable: dict[int, str] = {}
    states: list[str] = []
    last_rows = []
    # Kills at random points, but the first one inside a segment: a kill between a commit and the next
    # segment's first record leaves nothing to recover, and the stretch after it reads `not-recorded`.
    for kill in range(3):
        settings = WriterSettings(paced=kill == 0)
        run = run_and_kill(root, tmp_path / "keys", rng.uniform(0.3, 1.5), settings, mid_segment=kill == 0)
        durable.update(run.committed)
        ring = RingBuffer(root, storage(root), footage_clock, device_key=keys.device)
        rows = ring.segments("cam1")
        # Consistent: no leftovers, every row a whole signed file, sequences contiguous, chain whole.
        assert not list(root.glob("cam1/.*"))
        assert {p for p in root.glob("cam1/*.seg")} == {r.path for r in rows}
        infos = [verify_segment(r.path, keys.device.public_key(), expect_sequence=r.sequence) for r in rows]
        assert all(i.complete for i in infos)
        assert [r.sequence for r in rows] == list(range(1, len(rows) + 1))
        assert verify_chain(infos) == []
        # Nothing the writer reported durable was lost: the segment in flight was closed, not dropped.
        stored = {r.sequence: r.sha256 for r in rows}
        assert all(stored.get(seq) == sha for seq, sha in durable.items())
        assert len(stored) - len(durable) in (0, 1, 2)
        assert run.last_frame_ts is not None and rows[-1].end_ts > run.last_frame_ts - 1.0
        durable = stored
        states = [i.state for i in infos]
        # A recovered segment opens at the CSU, each packet matching its device-signed frame hash.
        for info in infos:
            if info.state == "recovered":
                opened = open_segment(info.path or Path(), keys.csu, keys.device.public_key())
                assert len(opened.packets) == info.packets > 0
        last_rows = rows
        ring.close()
    assert len(durable) >= 3
    assert "recovered" in states or states.count("complete") == len(states)
    # Each restart left a stretch unrecorded after the segment closed at recovery: labelled `crash`.
    gaps = find_gaps(
        [r.to_bundle_segment() for r in last_rows],
        last_rows[0].start_ts,
        last_rows[-1].end_ts,
        last_rows[0].start_ts,
        last_rows[-1].end_ts,
    )
    by_end = {round(r.end_ts, 3): r.state for r in last_rows}
    assert gaps and all(g.reason == "crash" for g in gaps if by_end.get(round(g.start_ts, 3)) == "recovered")
    assert any(g.reason == "crash" for g in gaps)


def test_footage_lost_per_sigkill_at_10_fps_is_under_a_second(tmp_path: Path) -> None:
    settings = WriterSettings(size=(160, 120), fps=10.0, segment_seconds=4.0, paced=True)
    losses = measure_crash_loss(tmp_path, kills=3, settings=settings)
    assert len(losses) == 3
    assert statistics.median(losses) <= 1.0, losses


def _sealed_clock() -> float:
    """`_seal` writes footage of 1970: a clock soon after keeps it within retention."""
    return 2000.0


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_segment_in_the_folder_is_set_aside_and_the_ring_opens(tmp_path: Path, kind: str) -> None:
    keys = make_keys()
    root = tmp_path / "ring"
    (root / "cam1").mkdir(parents=True)
    good = _seal(keys, sequence=1)
    (root / "cam1" / "000000000001.seg").write_bytes(good)
    second = _seal(keys, sequence=2)
    (root / "cam1" / "000000000002.seg").write_bytes(_rewrite(second, header=_crafted_header(second, kind)))
    (root / "cam1" / ".000000000003.seg.tmp").write_bytes(
        _rewrite(second, header=_crafted_header(second, kind))
    )
    ring = RingBuffer(root, storage(root), _sealed_clock, device_key=keys.device)
    assert [r.sequence for r in ring.segments("cam1")] == [1]
    assert (root / ".rejected" / "cam1-000000000002.seg").exists()
    assert (root / ".rejected" / "cam1-.000000000003.seg.tmp").exists()
    rejected = [line for line in ring.recovery if "rejected" in line]
    assert len(rejected) == 2 and all(CRAFTED[kind] in line for line in rejected), ring.recovery
    ring.close()


def test_unfinished_leftovers_without_the_device_key_are_kept_as_partial_or_removed(tmp_path: Path) -> None:
    keys = make_keys()
    root = tmp_path / "ring"
    (root / "cam1").mkdir(parents=True)
    (root / "cam1" / "000000000001.seg").write_bytes(_seal(keys, sequence=1))
    cut = _seal(keys, sequence=2)
    (root / "cam1" / ".000000000002.seg.tmp").write_bytes(cut[: len(cut) // 2])
    (root / "cam1" / ".000000000005.seg.tmp").write_bytes(b"EDGESEG1\x00\x00\x01\x00{")  # torn header
    (root / "cam1" / ".000000000007.seg.journal").write_bytes(b"\x00" * 40)  # orphan journal
    ring = RingBuffer(root, storage(root), _sealed_clock, device_public_key=keys.device.public_key())
    rows = ring.segments("cam1")
    assert [(r.sequence, r.state) for r in rows] == [(1, "complete"), (2, "partial")]
    assert not list(root.glob("cam1/.*"))
    assert any("removed unfinished segment" in line and "000000000005" in line for line in ring.recovery)
    ring.close()


def test_an_unfinished_segment_of_another_device_key_is_set_aside_unsigned(tmp_path: Path) -> None:
    foreign = make_keys()
    root = tmp_path / "ring"
    (root / "cam1").mkdir(parents=True)
    cut = _seal(foreign, sequence=1)
    (root / "cam1" / ".000000000001.seg.tmp").write_bytes(cut[: len(cut) // 2])
    ring = RingBuffer(root, storage(root), _sealed_clock, device_key=make_keys().device)
    assert ring.segments("cam1") == []
    assert (root / ".rejected" / "cam1-.000000000001.seg.tmp").read_bytes() == cut[: len(cut) // 2]
    assert any("not this device's" in line for line in ring.recovery)
    ring.close()


def test_a_leftover_under_a_taken_name_is_set_aside_and_a_whole_one_is_kept_as_sealed(tmp_path: Path) -> None:
    keys = make_keys()
    root = tmp_path / "ring"
    (root / "cam1").mkdir(parents=True)
    first = _seal(keys, sequence=1)
    (root / "cam1" / "000000000001.seg").write_bytes(first)
    # Another segment #1 left unfinished: renaming it would replace the sealed one.
    impostor = _seal(keys, sequence=1)
    (root / "cam1" / ".000000000001.seg.tmp").write_bytes(impostor)
    # Killed after `finish`, before the rename: the file is whole and signed by its writer.
    second = _seal(keys, sequence=2, prev=hashlib.sha256(first).hexdigest())
    (root / "cam1" / ".000000000002.seg.tmp").write_bytes(second)
    ring = RingBuffer(root, storage(root), _sealed_clock, device_key=keys.device)
    rows = ring.segments("cam1")
    assert [(r.sequence, r.state) for r in rows] == [(1, "complete"), (2, "complete")]
    assert (root / "cam1" / "000000000001.seg").read_bytes() == first
    assert (root / "cam1" / "000000000002.seg").read_bytes() == second  # kept as its writer sealed it
    assert (root / ".rejected" / "cam1-.000000000001.seg.tmp").read_bytes() == impostor
    assert any("no free segment name" in line for line in ring.recovery), ring.recovery
    assert not list(root.glob("cam1/.*"))
    ring.close()


def _row(sequence: int, start: float, end: float, state: str) -> BundleSegment:
    return BundleSegment(f"segments/{sequence:012d}.seg", sequence, start, end, 1, "ab" * 32, "", state)


@pytest.mark.parametrize("state", ["recovered", "partial"])
def test_a_gap_after_a_segment_closed_by_recovery_is_a_crash(state: str) -> None:
    rows = [_row(1, 0, 10, "complete"), _row(2, 10, 14, state), _row(3, 17, 27, "complete")]
    assert find_gaps(rows, 0, 27, 0, 27) == [Gap(14, 17, "crash")]
    # At the start of the range, the state of the segment before it tells.
    assert find_gaps(rows[2:], 15, 27, 0, 27, sequence_before=2, state_before=state) == [Gap(15, 17, "crash")]
    # A skipped sequence is still a chain break, and after a sealed segment it is not a crash.
    assert [g.reason for g in find_gaps([rows[1], _row(4, 17, 20, "complete")], 10, 20, 0, 20)] == [
        "chain-break"
    ]
    sealed = [rows[0], _row(2, 12, 15, "complete")]
    assert [g.reason for g in find_gaps(sealed, 0, 15, 0, 15)] == ["not-recorded"]
