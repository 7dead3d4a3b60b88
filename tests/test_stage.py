"""The mask -> motion stage: the live worker and motion-replay decide the same, masks first, fail closed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_agent.camera.frames import Frame
from edge_agent.camera.motion import MotionEvent
from edge_agent.camera.pipeline import Backoff, CameraWorker
from edge_agent.camera.privacy import MasksRequired, masker_for_camera
from edge_agent.camera.sources import FrameSource, SourceError
from edge_agent.camera.stage import MotionStage
from edge_agent.commands.motion_replay import Replayer, ReplaySettings
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock
from tests.frame_support import painted

SIZE = (240, 180)
FPS = 10.0
FRAMES = 70
LEFT_HALF = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
EVERYWHERE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]

GREEN = (0, 255, 0)


def camera(**changes: object) -> CameraConfig:
    fields: dict[str, object] = {
        "id": "cam",
        "source": "synthetic",
        "resolution": SIZE,
        "fps": FPS,
        "masks": [{"points": LEFT_HALF, "color": [0, 255, 0]}],
        "motion": {
            "zones": [{"name": "road", "points": EVERYWHERE}],
            "start_frames": 2,
            "end_seconds": 1.0,
            "update_seconds": 1.0,
        },
    }
    fields.update(changes)
    return CameraConfig.model_validate(fields)


def scene(size: tuple[int, int] = SIZE, frames: int = FRAMES) -> list[np.ndarray]:
    """A textured street: a bright square crosses from behind the mask to the right edge, then it is quiet."""
    width, height = size
    rng = np.random.default_rng(11)
    base = rng.integers(80, 120, (height, width, 3)).astype(np.uint8)
    images = []
    for i in range(frames):
        image = base.copy()
        x = 5 * i
        if x < width:
            image[height // 3 : height // 3 + 30, x : x + 30] = 230
        images.append(image)
    return images


class ListSource:
    """Hands out fixed images at simulated times i / FPS, then ends (a file played once)."""

    paced = True

    def __init__(self, images: list[np.ndarray]) -> None:
        self._images = images
        self._next = 0

    def read(self) -> Frame | None:
        if self._next == len(self._images):
            return None
        index = self._next
        self._next += 1
        return Frame("cam", index, index / FPS, self._images[index].copy())

    def close(self) -> None:
        return None


def live_events(config: CameraConfig, images: list[np.ndarray]) -> list[MotionEvent]:
    """The events a CameraWorker publishes for these frames (no frame dropped)."""
    events: list[MotionEvent] = []
    lock = threading.Lock()
    opened = 0
    played = threading.Event()

    def factory(camera: CameraConfig, clock: Clock) -> FrameSource:
        nonlocal opened
        opened += 1
        if opened > 1:
            played.set()
            raise SourceError("the file was played once")
        return ListSource(images)

    def collect(event: MotionEvent) -> None:
        with lock:
            events.append(event)

    worker = CameraWorker(
        config,
        event_sinks=[collect],
        source_factory=factory,
        queue_size=len(images) + 1,
        backoff=Backoff(initial_s=0.01, factor=1.0, maximum_s=0.01),
    )
    worker.start()
    assert played.wait(20)
    worker.stop()  # drains the queue, then ends the open event
    stats = worker.stats()
    assert stats.frames == len(images) and stats.drops == 0
    return events


def replay_events(config: CameraConfig, images: list[np.ndarray]) -> list[MotionEvent]:
    """The events motion-replay writes for the same frames."""
    replayer = Replayer(ReplaySettings(config.id, masker_for_camera(config), config.motion, FPS, config))
    events: list[MotionEvent] = []
    for index, image in enumerate(images):
        events.extend(replayer.step(index, image.copy()).events)
    return events + replayer.close()


def _comparable(events: list[MotionEvent]) -> list[tuple[object, ...]]:
    # Event ids are random per run; everything else must match exactly.
    return [(e.camera_id, e.phase, e.ts, e.start_ts, e.score, e.boxes, e.zones) for e in events]


def test_live_worker_and_replay_publish_the_same_events() -> None:
    config = camera()
    images = scene()
    live = live_events(config, images)
    replay = replay_events(config, images)
    phases = [e.phase for e in replay]
    assert phases[0] == "start" and "update" in phases and phases[-1] == "end"
    assert replay[0].zones == ["road"]
    # The square is wholly behind the mask until frame 18: no event may start while it is hidden.
    assert replay[0].start_ts >= 18 / FPS
    assert _comparable(live) == _comparable(replay)


def test_the_stage_masks_before_it_detects() -> None:
    stage = MotionStage.for_camera(camera())
    outputs = [stage.step(Frame("cam", i, i / FPS, image)) for i, image in enumerate(scene(frames=10))]
    for output in outputs:
        assert painted(output.frame, np.s_[:], np.s_[: SIZE[0] // 2 - 1], GREEN)
        assert output.result is not None
        assert not output.result.foreground[:, : output.result.foreground.shape[1] // 2].any()
    assert all(not output.result.motion for output in outputs if output.result is not None)


def test_disabled_motion_masks_but_detects_nothing() -> None:
    stage = MotionStage.for_camera(camera(motion={"enabled": False, "start_frames": 1}))
    for i, image in enumerate(scene()):
        output = stage.step(Frame("cam", i, i / FPS, image))
        assert output.result is None and output.events == []
        assert painted(output.frame, np.s_[:], np.s_[: SIZE[0] // 2 - 1], GREEN)
    assert not stage.event_open and stage.close() == []


def test_replay_detects_even_where_the_camera_has_motion_disabled() -> None:
    config = camera(motion={"enabled": False, "start_frames": 2})
    assert live_events(config, scene()) == []
    replayed = replay_events(config, scene())
    assert replayed and replayed[0].phase == "start"


def test_a_new_resolution_gets_a_new_background_model() -> None:
    stage = MotionStage.for_camera(camera())
    for i, image in enumerate(scene(frames=5)):
        small = stage.step(Frame("cam", i, i / FPS, image)).result
        assert small is not None and small.foreground.shape == (180, 240)  # 240 wide: never upscaled
    output = stage.step(Frame("cam", 5, 0.5, scene(size=(480, 360), frames=1)[0]))
    assert output.result is not None
    assert output.result.foreground.shape == (240, 320)  # detect_width 320
    assert not output.result.motion  # a fresh model: the first frame only learns
    assert painted(output.frame, np.s_[:], np.s_[:239], GREEN)


def test_close_ends_an_open_event_at_the_last_frame() -> None:
    stage = MotionStage.for_camera(camera())
    images = scene(frames=30)
    opened_at = None
    for i, image in enumerate(images):
        output = stage.step(Frame("cam", i, i / FPS, image))
        if opened_at is None and output.events:
            opened_at = output.events[0].ts
    assert opened_at is not None and stage.event_open
    (end,) = stage.close()
    assert end.phase == "end" and end.ts == pytest.approx(29 / FPS)
    assert not stage.event_open and stage.close() == []


def test_a_camera_that_requires_masks_has_no_stage() -> None:
    with pytest.raises(MasksRequired, match="'cam' requires privacy masks"):
        MotionStage.for_camera(camera(masks=[]))
