"""Motion detector and event tracker: the synthetic scene, stress clips, masks, zones, event lifecycle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.camera.frames import MaskedFrame
from edge_agent.camera.motion import EventTracker, MotionDetector, MotionEvent, MotionResult
from edge_agent.camera.motion_clips import CLIPS, ClipSpec
from edge_agent.camera.privacy import PrivacyMasker
from edge_agent.camera.sources.synthetic import SceneSettings, SyntheticSource
from edge_agent.formats.config import MotionConfig, PrivacyMaskConfig, ZoneConfig

Box = tuple[float, float, float, float]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _run_clip(name: str, spec: ClipSpec, config: MotionConfig) -> tuple[list[MotionEvent], list[bool]]:
    detector = MotionDetector(config, spec.size, None)
    tracker = EventTracker("cam", config)
    events: list[MotionEvent] = []
    flags = []
    for index, (image, _) in enumerate(CLIPS[name](spec)):
        ts = 1_700_000_000.0 + index / spec.fps
        result = detector.detect(MaskedFrame("cam", index, ts, image))
        flags.append(result.motion)
        events += tracker.update(result, ts)
    return events, flags


def test_synthetic_scene_recall_of_moving_objects() -> None:
    size = (640, 360)
    scene = SyntheticSource("cam", SceneSettings(size=size, objects=3, seed=4))
    masker = PrivacyMasker([PrivacyMaskConfig(points=[(0.0, 0.0), (0.2, 0.0), (0.2, 0.2), (0.0, 0.2)])])
    config = MotionConfig()
    detector = MotionDetector(config, size, masker.mask_for(size))
    found = total = 0
    for _ in range(400):
        frame = scene.read()
        result = detector.detect(masker.apply(frame))
        assert all(w * h < 0.25 for _, _, w, h in result.boxes), "boxes must be tight"
        if frame.seq < 10:  # the background's first second
            continue
        for truth in scene.ground_truth(frame.seq):
            if truth[2] * truth[3] < 4 * config.min_area:  # a sliver at the edge of the picture
                continue
            total += 1
            found += any(_overlaps(truth, box) for box in result.boxes)
    assert total > 200
    assert found / total >= 0.95, f"recall {found}/{total}"


def test_no_event_from_lighting_drift_and_noise_over_60_seconds() -> None:
    size = (640, 360)
    settings = SceneSettings(size=size, objects=0, drift_amplitude=0.25, drift_period_s=30.0, noise_sigma=4.0)
    scene = SyntheticSource("cam", settings, start_ts=1_700_000_000.0)
    config = MotionConfig()
    detector = MotionDetector(config, size, None)
    tracker = EventTracker("cam", config)
    events: list[MotionEvent] = []
    for _ in range(600):  # 60 s at 10 fps
        frame = scene.read()
        events += tracker.update(
            detector.detect(
                MaskedFrame("cam", frame.seq, frame.captured_at, frame.image, frame.pixel_format)
            ),
            frame.captured_at,
        )
    assert events == []


@pytest.mark.parametrize("name", ["noise", "lighting", "street_light", "rain", "trees", "shake"])
def test_stress_clip_without_objects_raises_no_event(name: str) -> None:
    # 60 s at 10 fps for the light and noise clips (issue 2's wording), 30 s for the costlier renders.
    frames = 600 if name in ("noise", "lighting") else 300
    events, flags = _run_clip(name, ClipSpec(size=(320, 240), frames=frames), MotionConfig())
    assert events == [], f"{name}: {len(events)} event messages"
    assert sum(flags) <= 0.05 * len(flags)


def test_walker_entering_swaying_trees_is_caught_within_3_frames() -> None:
    spec = ClipSpec(size=(320, 240), frames=160, walker_from=100)
    detector = MotionDetector(MotionConfig(), spec.size, None)
    entry = first = None
    for index, (image, truth) in enumerate(CLIPS["trees"](spec)):
        result = detector.detect(MaskedFrame("cam", index, index / spec.fps, image))
        if entry is None and truth.any():
            entry = index
        if entry is not None and first is None and result.motion:
            first = index
    assert entry is not None and first is not None
    assert first - entry <= 3


def _moving_square(size: tuple[int, int], count: int, square: tuple[int, int, int]) -> list[np.ndarray]:
    """Frames of a plain grey scene with a bright square moving right; square = (x0, y, side)."""
    width, height = size
    rng = np.random.default_rng(3)
    base = rng.integers(90, 110, (height, width, 3)).astype(np.uint8)
    frames = []
    x0, y, side = square
    for i in range(count):
        image = base.copy()
        x = x0 + 3 * i
        image[y : y + side, x : x + side] = 240
        frames.append(image)
    return frames


def _detect_all(detector: MotionDetector, images: list[np.ndarray]) -> list[MotionResult]:
    return [detector.detect(MaskedFrame("cam", i, i * 0.1, image)) for i, image in enumerate(images)]


def test_masked_pixels_never_count_as_motion() -> None:
    size = (320, 240)
    privacy = np.zeros((240, 320), np.uint8)
    privacy[:, :160] = 255
    # Frames built by hand so the moving square really is behind the mask: only the detector can hide it.
    images = _moving_square(size, 30, (10, 100, 30))
    results = _detect_all(MotionDetector(MotionConfig(), size, privacy), images)
    assert not any(r.motion for r in results)
    assert all(not r.foreground[:, :80].any() for r in results)  # detection width 320 -> same size
    unmasked = _detect_all(MotionDetector(MotionConfig(), size, None), images)
    assert sum(r.motion for r in unmasked) > 20


def test_zones_restrict_motion_and_are_reported() -> None:
    size = (320, 240)
    left = ZoneConfig(name="left", points=[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)])
    right = ZoneConfig(name="right", points=[(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)])
    images = _moving_square(size, 25, (10, 100, 30))  # stays in the left half
    only_right = _detect_all(MotionDetector(MotionConfig(zones=[right]), size, None), images)
    assert not any(r.motion for r in only_right)
    both = _detect_all(MotionDetector(MotionConfig(zones=[left, right]), size, None), images)
    hits = [r.zones for r in both if r.motion]
    assert hits and all(z == ["left"] for z in hits)


def test_privacy_mask_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="privacy mask is 100x100, frames are 320x240"):
        MotionDetector(MotionConfig(), (320, 240), np.zeros((100, 100), np.uint8))


def test_motion_boxes_follow_the_object() -> None:
    results = _detect_all(
        MotionDetector(MotionConfig(), (320, 240), None), _moving_square((320, 240), 20, (10, 100, 30))
    )
    last = results[-1]
    assert last.motion and len(last.boxes) == 1
    x, y, w, h = last.boxes[0]
    square_x = (10 + 3 * 19) / 320
    assert abs(x - square_x) < 0.05 and abs(y - 100 / 240) < 0.03
    assert w < 0.2 and h < 0.2
    assert 0 < last.score < 0.05


def _result(motion: bool, score: float = 0.1, zones: list[str] | None = None) -> MotionResult:
    boxes = [(0.1, 0.2, 0.1, 0.3)] if motion else []
    return MotionResult(motion, score if motion else 0.0, boxes, zones or [], np.zeros((2, 2), np.uint8))


def test_event_lifecycle_start_updates_end() -> None:
    config = MotionConfig(start_frames=3, update_seconds=2.0, end_seconds=5.0)
    tracker = EventTracker("cam", config)
    t0 = 1_700_000_000.0
    messages: list[MotionEvent] = []
    # Two frames of motion: too short to open an event.
    for i in range(2):
        messages += tracker.update(_result(True), t0 + i * 0.1)
    messages += tracker.update(_result(False), t0 + 0.2)
    assert messages == [] and not tracker.is_open
    # 10 s of motion at 10 fps, peak score 0.4 in the middle, a zone hit once.
    for i in range(100):
        score = 0.4 if i == 50 else 0.1
        messages += tracker.update(_result(True, score, ["door"] if i == 20 else []), t0 + 1 + i * 0.1)
    assert tracker.is_open
    # Quiet until it ends.
    for i in range(1, 80):
        messages += tracker.update(_result(False), t0 + 10.9 + i * 0.1)
    phases = [m.phase for m in messages]
    assert phases[0] == "start" and phases[-1] == "end"
    assert set(phases[1:-1]) == {"update"}
    assert 5 <= phases.count("update") <= 8
    start, end = messages[0], messages[-1]
    assert start.start_ts == pytest.approx(t0 + 1.0)  # the first frame of the motion run
    assert start.ts == pytest.approx(t0 + 1.2)  # the third frame opens the event
    assert end.ts == pytest.approx(t0 + 10.9 + 5.0, abs=0.11)
    assert {m.event_id for m in messages} == {start.event_id}
    assert end.score == pytest.approx(0.4) and end.zones == ["door"]
    assert all(m.camera_id == "cam" for m in messages)
    updates = [m.ts for m in messages if m.phase == "update"]
    assert all(b - a >= 2.0 - 1e-6 for a, b in itertools.pairwise(updates))
    assert not tracker.is_open


def test_event_ids_are_unique_and_close_ends_an_open_event() -> None:
    tracker = EventTracker("cam", MotionConfig(start_frames=1, end_seconds=1.0))
    first = tracker.update(_result(True), 10.0)
    tracker.update(_result(False), 11.5)  # ends the first event
    second = tracker.update(_result(True), 12.0)
    assert first[0].event_id != second[0].event_id
    closing = tracker.close(12.5)
    assert [m.phase for m in closing] == ["end"] and closing[0].event_id == second[0].event_id
    assert closing[0].ts == 12.5 and not tracker.is_open
    assert tracker.close(13.0) == []
