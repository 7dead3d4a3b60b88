"""The recorder end to end: masked frames -> encoded, sealed segments -> verified, decrypted, decoded."""

from __future__ import annotations

import itertools
import sqlite3
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.camera.frames import Frame, MaskedFrame
from edge_agent.formats.sealing import open_segment, verify_chain, verify_segment
from edge_agent.storage.encoder import VideoEncoder, decode_packets
from edge_agent.storage.recorder import Recorder
from edge_agent.storage.ringbuffer import RingBuffer
from tests.storage_support import (
    MASK_COLOR,
    camera,
    files_under,
    footage_clock,
    h264_start_codes,
    jpeg_markers,
    make_keys,
    masker,
    pixel_runs,
    record,
    storage,
    synthetic_frames,
    video_frames,
)

T0 = 1_700_000_000.0


def _opened(ring: RingBuffer, keys, camera_id: str = "cam1"):  # type: ignore[no-untyped-def]
    return [open_segment(r.path, keys.csu, keys.device.public_key()) for r in ring.segments(camera_id)]


def test_continuous_recording_makes_chained_segments_that_each_decode_alone(tmp_path: Path) -> None:
    keys = make_keys()
    cam = camera()
    st = storage(tmp_path)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = record(ring, cam, st, keys, synthetic_frames(cam, 75, T0))
    rows = ring.segments("cam1")
    stats = recorder.stats()
    assert stats.segments == len(rows) == 4 and stats.packets == 75 and stats.errors == 0
    assert stats.bytes == sum(r.size for r in rows)
    infos = [verify_segment(r.path, keys.device.public_key()) for r in rows]
    assert verify_chain(infos) == []
    frames = 0
    for opened, row in zip(_opened(ring, keys), rows, strict=True):
        assert opened.packets[0].keyframe
        assert opened.stream.seconds(opened.packets[0].pts) == pytest.approx(row.start_ts)
        decoded = list(decode_packets(opened.stream, opened.packets))
        assert len(decoded) == len(opened.packets) and decoded[0].shape == (240, 320, 3)
        frames += len(decoded)
    assert frames == 75
    assert [r.start_ts for r in rows] == pytest.approx([T0, T0 + 2, T0 + 4, T0 + 6])
    assert rows[-1].end_ts == pytest.approx(T0 + 7.5)


def test_motion_mode_keeps_only_pre_roll_event_and_post_roll(tmp_path: Path) -> None:
    keys = make_keys()
    cam = camera("motion", pre_roll=1.0, post_roll=1.0)
    st = storage(tmp_path, segment_seconds=10.0, gop_seconds=0.5)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = record(ring, cam, st, keys, synthetic_frames(cam, 200, T0), events=(T0 + 5, T0 + 7))
    packets = [opened.stream.seconds(p.pts) - T0 for opened in _opened(ring, keys) for p in opened.packets]
    assert recorder.stats().segments == 1
    # Pre-roll starts at the keyframe at or before event start - 1 s (GOP 0.5 s); the post-roll runs
    # 1 s after the event, on to the next keyframe.
    assert 3.5 <= min(packets) <= 4.0 and 7.9 <= max(packets) <= 8.5
    assert len(packets) == len(set(packets))
    assert recorder.stats().packets == len(packets)


def test_motion_mode_with_two_events_makes_two_segments(tmp_path: Path) -> None:
    keys = make_keys()
    cam = camera("motion", pre_roll=0.5, post_roll=0.5)
    st = storage(tmp_path, gop_seconds=0.5, segment_seconds=10.0)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = Recorder(cam, st, ring, keys.device, keys.csu.public_key())
    for _, masked in synthetic_frames(cam, 150, T0):
        t = masked.captured_at - T0
        recorder.on_frame(masked, 3 <= t < 4 or 10 <= t < 11)
    recorder.close()
    rows = ring.segments("cam1")
    spans = [(r.start_ts - T0, r.end_ts - T0) for r in rows]
    assert len(spans) == 2
    for (start, end), (event_start, event_end) in zip(spans, [(3, 4), (10, 11)], strict=True):
        assert event_start - 1.0 <= start <= event_start - 0.5  # pre-roll, from a keyframe
        assert event_end + 0.4 <= end <= event_end + 1.1  # post-roll, on to the next keyframe


def _recorded_times(ring: RingBuffer, keys) -> list[float]:  # type: ignore[no-untyped-def]
    """Capture times (from T0) of every packet kept, in order, each segment starting on a keyframe."""
    times = []
    for opened in _opened(ring, keys):
        assert opened.packets[0].keyframe
        times += [opened.stream.seconds(p.pts) - T0 for p in opened.packets]
    return times


@pytest.mark.parametrize(
    ("pre_roll", "gop", "event_start"),
    [(3.0, 2.0, 4.9), (3.0, 2.0, 5.0), (3.0, 2.0, 5.9), (3.0, 1.0, 6.45), (1.0, 0.5, 3.05)],
)
def test_pre_roll_is_never_shorter_than_configured(
    tmp_path: Path, pre_roll: float, gop: float, event_start: float
) -> None:
    """The tracker opens an event a few frames after its first moving frame (`start_frames`): the
    pre-roll counts back from that first frame, and starts on the keyframe at or before it."""
    keys = make_keys()
    cam = camera("motion", pre_roll=pre_roll, post_roll=0.5)
    st = storage(tmp_path, segment_seconds=30.0, gop_seconds=gop)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = Recorder(cam, st, ring, keys.device, keys.csu.public_key())
    opened_at = event_start + 0.2  # start_frames = 3 at 10 fps
    for _, masked in synthetic_frames(cam, 120, T0):
        t = masked.captured_at - T0
        recorder.on_frame(masked, opened_at <= t < event_start + 2, T0 + event_start)
    recorder.close()
    times = _recorded_times(ring, keys)
    assert event_start - times[0] >= pre_roll - 1e-6
    assert event_start - times[0] < pre_roll + gop  # from the keyframe at or before, not earlier
    assert all(b - a == pytest.approx(0.1, abs=0.002) for a, b in itertools.pairwise(times))


def test_an_event_close_behind_another_finds_its_whole_pre_roll(tmp_path: Path) -> None:
    """The second event starts 1.2 s after the first one's post-roll ended, with a 3 s pre-roll: the
    footage before it was partly sealed in the first segment, the rest must follow without a hole."""
    keys = make_keys()
    cam = camera("motion", pre_roll=3.0, post_roll=1.0)
    st = storage(tmp_path, segment_seconds=30.0, gop_seconds=2.0)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = Recorder(cam, st, ring, keys.device, keys.csu.public_key())
    events = [(4.0, 5.0), (7.2, 8.0)]  # post-roll of the first ends at 6.0
    for _, masked in synthetic_frames(cam, 130, T0):
        t = masked.captured_at - T0
        current = [start for start, end in events if start <= t < end]
        recorder.on_frame(masked, bool(current), T0 + current[0] if current else None)
    recorder.close()
    times = _recorded_times(ring, keys)
    second = events[1][0]
    kept = [t for t in times if second - 3.0 - 0.01 <= t <= second + 0.01]
    assert kept[0] == pytest.approx(second - 3.0, abs=0.002) and kept[-1] == pytest.approx(second, abs=0.002)
    assert all(b - a == pytest.approx(0.1, abs=0.002) for a, b in itertools.pairwise(kept))


def test_pre_roll_through_the_live_stage_starts_before_the_first_moving_frame(tmp_path: Path) -> None:
    """The real mask -> motion stage decides the event and its start; the recorder keeps the pre-roll."""
    from edge_agent.camera.stage import MotionStage

    keys = make_keys()
    cam = camera("motion", pre_roll=2.0, post_roll=0.5, size=(240, 180))
    cam = cam.model_copy(update={"motion": cam.motion.model_copy(update={"start_frames": 4})})
    st = storage(tmp_path, segment_seconds=30.0, gop_seconds=1.0)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = Recorder(cam, st, ring, keys.device, keys.csu.public_key())
    stage = MotionStage.for_camera(cam)
    rng = np.random.default_rng(5)
    base = rng.integers(80, 120, (180, 240, 3)).astype(np.uint8)
    starts = []
    for seq in range(90):
        image = base.copy()
        if 50 <= seq < 70:  # a bright square walks across the unmasked right part from frame 50
            x = 100 + 5 * (seq - 50)
            image[60:90, x : x + 30] = 230
        output = stage.step(Frame("cam1", seq, T0 + seq / 10, image))
        starts += [e.start_ts - T0 for e in output.events if e.phase == "start"]
        recorder.on_frame(output.frame, stage.event_open, stage.event_start)
    recorder.close()
    assert starts and 5.0 <= starts[0] <= 5.2
    times = _recorded_times(ring, keys)
    assert 2.0 <= starts[0] - times[0] < 3.0


def test_a_segment_cut_asks_for_one_keyframe_not_one_per_frame_of_look_ahead(tmp_path: Path) -> None:
    """The keyframe that ends a segment comes out a few frames after it is asked for; asking again at
    each of those frames made every one an IDR frame (about 1.5 ms of 11 a frame at 1080p went there)."""
    keys = make_keys()
    cam = camera()
    st = storage(tmp_path, segment_seconds=2.0, gop_seconds=30.0)  # no keyframe but the forced ones
    ring = RingBuffer(tmp_path, st, footage_clock)
    record(ring, cam, st, keys, synthetic_frames(cam, 75, T0))
    opened = _opened(ring, keys)
    assert len(opened) == 4
    assert [sum(p.keyframe for p in o.packets) for o in opened] == [1, 1, 1, 1]


def test_a_resolution_change_seals_the_segment_and_starts_a_new_stream(tmp_path: Path) -> None:
    keys = make_keys()
    small, large = camera(size=(160, 120)), camera(size=(320, 240))
    st = storage(tmp_path, segment_seconds=10.0)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = Recorder(small, st, ring, keys.device, keys.csu.public_key())
    frames = [m for _, m in synthetic_frames(small, 15, T0)]
    frames += [m for _, m in synthetic_frames(large, 15, T0 + 1.5)]
    for masked in frames:
        recorder.on_frame(masked, False)
    recorder.close()
    assert recorder.stats().errors == 0 and recorder.stats().packets == 30
    rows = ring.segments("cam1")
    assert verify_chain([verify_segment(r.path, keys.device.public_key()) for r in rows]) == []
    opened = _opened(ring, keys)
    assert [(o.stream.width, o.stream.height) for o in opened] == [(160, 120), (320, 240)]
    assert [len(o.packets) for o in opened] == [15, 15]
    for segment, size in zip(opened, [(120, 160, 3), (240, 320, 3)], strict=True):
        assert {img.shape for img in decode_packets(segment.stream, segment.packets)} == {size}


def test_off_mode_writes_nothing(tmp_path: Path) -> None:
    keys = make_keys()
    cam = camera("off")
    st = storage(tmp_path)
    ring = RingBuffer(tmp_path, st, footage_clock)
    record(ring, cam, st, keys, synthetic_frames(cam, 30, T0))
    assert ring.segments("cam1") == [] and not list(tmp_path.glob("cam1/*"))


@pytest.mark.parametrize("codec", ["h264", "mjpeg"])
def test_masked_region_is_constant_after_decryption(tmp_path: Path, codec: str) -> None:
    keys = make_keys()
    cam = camera()
    st = storage(tmp_path, codec=codec)
    ring = RingBuffer(tmp_path, st, footage_clock)
    record(ring, cam, st, keys, synthetic_frames(cam, 40, T0))
    mask = masker(cam).mask_for(cam.resolution)
    # A coding block (16x16: H.264 macroblock, MJPEG chroma MCU) straddling the border mixes in visible
    # pixels from outside the mask: look one block inside it.
    inside = cv2.erode(mask, np.ones((33, 33), np.uint8)) > 0
    outside = cv2.dilate(mask, np.ones((17, 17), np.uint8)) == 0
    decoded = [img for opened in _opened(ring, keys) for img in decode_packets(opened.stream, opened.packets)]
    assert len(decoded) == 40
    hidden = np.stack([img[inside] for img in decoded]).astype(int)
    assert np.abs(hidden - np.array(MASK_COLOR)).max() <= 16  # the fill colour, give or take coding
    assert np.ptp(hidden, axis=0).max() <= 3  # and it never changes while the street moves
    visible = np.stack([img[outside] for img in decoded]).astype(int)
    assert np.ptp(visible, axis=0).max() > 50  # the unmasked part does change: the check can fail


@pytest.mark.parametrize("codec", ["h264", "mjpeg"])
def test_encoder_takes_row_padded_images_as_cameras_hand_them_over(tmp_path: Path, codec: str) -> None:
    # picamera2 and V4L2 buffers have rows wider than the picture: the encoder reads them in place.
    cam = camera()
    images = [masked.bgr() for _, masked in synthetic_frames(cam, 6, T0)]
    width, height = cam.resolution
    padded = []
    for image in images:
        buffer = np.zeros((height, width + 32, 3), np.uint8)
        buffer[:, :width] = image
        padded.append(buffer[:, :width])
    assert not padded[0].flags.c_contiguous
    encoder = VideoEncoder(storage(tmp_path, codec=codec), (width, height), cam.fps, T0)
    packets = [p for i, img in enumerate(padded) for p in encoder.encode(img, T0 + i / cam.fps)]
    decoded = list(decode_packets(encoder.stream, packets + encoder.flush()))
    assert len(decoded) == len(images)
    errors = [np.abs(d.astype(int) - img.astype(int)).mean() for d, img in zip(decoded, images, strict=True)]
    assert max(errors) < 6  # the picture, not the padding nor a skewed copy of it


def test_no_plaintext_on_disk_after_recording_real_footage(tmp_path: Path, datasets: Path) -> None:
    keys = make_keys()
    cam = camera(size=(640, 480))
    originals: list[Frame] = []
    masked_frames: list[MaskedFrame] = []
    for codec in ("h264", "mjpeg"):
        st = storage(tmp_path, codec=codec)
        ring = RingBuffer(tmp_path, st, footage_clock)
        frames = list(
            video_frames(datasets / "video" / "vtest.avi", cam, 40, T0 if codec == "h264" else T0 + 60)
        )
        originals += [f for f, _ in frames]
        masked_frames += [m for _, m in frames]
        record(ring, cam, st, keys, iter(frames))
        ring.close()
    runs = pixel_runs(originals) + pixel_runs(
        [Frame("cam1", m.seq, m.captured_at, m.image) for m in masked_frames]
    )
    assert len(runs) > 200
    # The detectors work: they fire on the plaintext packets and on raw pixels.
    plaintext = b"".join(
        p.data
        for r in RingBuffer(tmp_path, storage(tmp_path), footage_clock).segments("cam1")
        for p in open_segment(r.path, keys.csu, keys.device.public_key()).packets
    )
    assert h264_start_codes(plaintext) > 0 and jpeg_markers(plaintext) > 0
    raw = b"".join(f.image.tobytes() for f in originals[:3])
    assert any(run in raw for run in runs)
    files = files_under(tmp_path)
    assert any(f.suffix == ".seg" for f in files) and len([f for f in files if f.suffix == ".seg"]) >= 4
    for path in files:
        data = path.read_bytes()
        assert jpeg_markers(data) == 0, f"{path} holds a JPEG image"
        assert h264_start_codes(data) == 0, f"{path} holds H.264 NAL units"
        assert not any(run in data for run in runs), f"{path} holds a run of original pixels"


def test_full_quota_never_stops_capture_nor_corrupts_the_index(tmp_path: Path) -> None:
    keys = make_keys()
    cam = camera()
    st = storage(tmp_path, codec="mjpeg", max_bytes=600_000, segment_seconds=1.0)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = record(ring, cam, st, keys, synthetic_frames(cam, 120, T0))
    stats = recorder.stats()
    assert stats.segments == 12 and stats.errors == 0
    assert ring.total_bytes() <= 600_000
    rows = ring.segments("cam1")
    assert rows[-1].end_ts == pytest.approx(T0 + 12.0) and rows[0].sequence > 1
    assert verify_chain([verify_segment(r.path, keys.device.public_key()) for r in rows]) == []


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 3 MiB tmpfs (needs root, as in CI containers); skips otherwise."""
    import os
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_never_stops_capture_nor_corrupts_the_index(tiny_disk: Path) -> None:
    keys = make_keys()
    cam = camera()
    st = storage(tiny_disk, codec="mjpeg", mjpeg_qscale=2, segment_seconds=1.0)
    clock_now = [T0]
    ring = RingBuffer(tiny_disk, st, lambda: clock_now[0], device_public_key=keys.device.public_key())
    recorder = Recorder(cam, st, ring, keys.device, keys.csu.public_key())
    frames = synthetic_frames(cam, 10**6, T0)
    for _, masked in itertools.islice(frames, 200):  # ~20 s of large MJPEG: far more than 3 MiB
        recorder.on_frame(masked, False)  # must never raise
    full = recorder.stats()
    assert full.errors > 0 and full.frames_dropped_disk > 0 and "No space left" in full.last_error
    # The index still opens, and every row it has is a whole, verified segment.
    check = RingBuffer(tiny_disk, st, footage_clock, recover=False)
    with closing(sqlite3.connect(tiny_disk / "index.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = check.segments("cam1")
    assert rows and all(verify_segment(r.path, keys.device.public_key()).complete for r in rows)
    check.close()
    # Retention frees space (the legal cap passes): recording resumes by itself.
    clock_now[0] = T0 + 16 * 86400.0
    ring.enforce_retention()
    for _, masked in itertools.islice(frames, 15):
        recorder.on_frame(masked, False)
    recorder.close()
    assert recorder.stats().segments > full.segments
    reopened = RingBuffer(tiny_disk, st, footage_clock, device_public_key=keys.device.public_key())
    rows = reopened.segments("cam1")
    infos = [verify_segment(r.path, keys.device.public_key()) for r in rows]
    assert verify_chain(infos) == [] and {p for p in tiny_disk.glob("*/*.seg")} == {r.path for r in rows}
    reopened.close()


def test_index_rows_match_files_after_interrupted_index_write(tmp_path: Path) -> None:
    keys = make_keys()
    cam = camera()
    st = storage(tmp_path, segment_seconds=1.0)
    ring = RingBuffer(tmp_path, st, footage_clock)
    recorder = record(ring, cam, st, keys, synthetic_frames(cam, 25, T0))
    ring.close()
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("DELETE FROM segments")
    db.commit()
    db.close()
    reopened = RingBuffer(tmp_path, st, footage_clock, device_public_key=keys.device.public_key())
    assert len(reopened.segments("cam1")) == recorder.stats().segments
