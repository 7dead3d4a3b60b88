"""The per-camera worker: masked frames only, bounded queue with counted drops, reconnect, fail closed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from edge_agent.camera.frames import Frame, MaskedFrame
from edge_agent.camera.motion import MotionEvent
from edge_agent.camera.pipeline import Backoff, CameraState, CameraWorker
from edge_agent.camera.sources import FrameSource, SourceError
from edge_agent.camera.sources.synthetic import SceneSettings, SyntheticSource
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock
from tests.frame_support import painted

WINDOW = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]
FAST = Backoff(initial_s=0.01, factor=2.0, maximum_s=0.05)


def camera(**changes: object) -> CameraConfig:
    fields: dict[str, object] = {
        "id": "cam",
        "source": {"kind": "synthetic", "objects": 2},
        "resolution": (320, 240),
        "fps": 50,
        "masks": [{"points": WINDOW, "color": [0, 255, 0]}],
    }
    fields.update(changes)
    return CameraConfig.model_validate(fields)


class CollectingSink:
    """Keeps what it is given; optionally slow, optionally failing."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.frames: list[MaskedFrame] = []
        self.closed = False
        self._delay_s = delay_s
        self._fail = fail

    def on_frame(self, frame: MaskedFrame, event_open: bool, event_start: float | None = None) -> None:
        if self._fail:
            raise RuntimeError("disk on fire")
        time.sleep(self._delay_s)
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def synthetic_factory(config: CameraConfig, clock: Clock) -> FrameSource:
    return SyntheticSource.from_camera(config, clock)


def test_sinks_receive_only_masked_frames() -> None:
    sink = CollectingSink()
    worker = CameraWorker(camera(), frame_sinks=[sink], source_factory=synthetic_factory)
    worker.start()
    wait_for(lambda: len(sink.frames) >= 20)
    worker.stop()
    assert sink.closed
    for frame in sink.frames:
        assert isinstance(frame, MaskedFrame)
        assert painted(frame, np.s_[:119], np.s_[:159], (0, 255, 0))
    stats = worker.stats()
    assert stats.state is CameraState.STOPPED
    assert stats.frames >= 20 and stats.resolution == (320, 240) and stats.masks == 1


def test_camera_without_masks_never_opens_its_source() -> None:
    opened: list[str] = []

    def factory(config: CameraConfig, clock: Clock) -> FrameSource:
        opened.append(config.id)
        return synthetic_factory(config, clock)

    worker = CameraWorker(camera(masks=[]), source_factory=factory)
    worker.start()
    time.sleep(0.2)
    worker.stop()
    assert opened == []
    stats = worker.stats()
    assert stats.state is CameraState.AWAITING_MASKS
    assert "requires privacy masks" in stats.last_error


class EndingSource:
    """A real synthetic scene that stops after a few frames, like a cable pulled out."""

    paced = False

    def __init__(self, frames: int) -> None:
        self._scene = SyntheticSource("cam", SceneSettings(size=(320, 240)))
        self._left = frames

    def read(self) -> Frame | None:
        if self._left == 0:
            return None
        self._left -= 1
        return self._scene.read()

    def close(self) -> None:
        return None


def test_source_failures_reconnect_with_backoff() -> None:
    attempts: list[float] = []

    def flaky(config: CameraConfig, clock: Clock) -> FrameSource:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise SourceError("camera 'cam': cannot open 'rtsp://x' (unplugged?)")
        return EndingSource(frames=5)

    sink = CollectingSink()
    worker = CameraWorker(camera(), frame_sinks=[sink], source_factory=flaky, backoff=FAST)
    worker.start()
    wait_for(lambda: len(sink.frames) >= 15)
    worker.stop()
    stats = worker.stats()
    assert stats.reconnects >= 4
    assert "unplugged" in stats.last_error
    assert attempts[1] - attempts[0] >= 0.01


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, maximum_s=4.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_slow_sink_drops_frames_but_capture_goes_on() -> None:
    slow = CollectingSink(delay_s=0.1)
    worker = CameraWorker(camera(fps=60), frame_sinks=[slow], source_factory=synthetic_factory, queue_size=4)
    worker.start()
    wait_for(lambda: worker.stats().frames >= 60)
    worker.stop()
    stats = worker.stats()
    assert stats.drops > 0
    assert stats.frames >= len(slow.frames) + stats.drops - 4
    seqs = [f.seq for f in slow.frames]
    assert seqs == sorted(seqs)


def test_failing_sink_is_counted_and_does_not_stop_the_camera() -> None:
    good, bad = CollectingSink(), CollectingSink(fail=True)
    worker = CameraWorker(camera(), frame_sinks=[bad, good], source_factory=synthetic_factory)
    worker.start()
    wait_for(lambda: len(good.frames) >= 10)
    worker.stop()
    stats = worker.stats()
    assert stats.sink_errors >= 10
    assert "disk on fire" in stats.last_error


def test_motion_events_reach_event_sinks() -> None:
    events: list[MotionEvent] = []
    lock = threading.Lock()

    def collect(event: MotionEvent) -> None:
        with lock:
            events.append(event)

    config = camera(masks=[{"points": [[0.0, 0.0], [0.2, 0.0], [0.2, 0.1]]}], motion={"end_seconds": 0.5})
    worker = CameraWorker(config, event_sinks=[collect], source_factory=synthetic_factory)
    worker.start()
    wait_for(lambda: any(e.phase == "start" for e in events), timeout=20)
    worker.stop()
    phases = [e.phase for e in events]
    assert phases[0] == "start" and phases[-1] == "end"
    assert all(e.camera_id == "cam" for e in events)


@pytest.mark.parametrize("failures", [1, 3])
def test_reconnect_counts(failures: int) -> None:
    opened = 0

    def factory(config: CameraConfig, clock: Clock) -> FrameSource:
        nonlocal opened
        opened += 1
        if opened <= failures:
            raise SourceError("not yet")
        return synthetic_factory(config, clock)

    worker = CameraWorker(camera(), source_factory=factory, backoff=FAST)
    worker.start()
    wait_for(lambda: worker.stats().state is CameraState.RUNNING)
    worker.stop()
    assert worker.stats().reconnects == failures


def _masked(size: tuple[int, int], seq: int) -> MaskedFrame:
    width, height = size
    return MaskedFrame("cam", seq, seq / 10, np.zeros((height, width, 3), np.uint8))


def test_the_frame_queue_is_bounded_in_bytes_not_only_in_frames() -> None:
    """Sixteen 1080p frames are 100 MB that the allocator keeps once a burst filled them: the queue
    holds what fits in its byte budget (at least two frames), dropping the oldest and saying so."""
    from edge_agent.camera.pipeline import QUEUE_BYTES, FrameQueue

    big = FrameQueue(16)
    dropped = [big.put(_masked((1920, 1080), seq)) for seq in range(5)]
    assert dropped == [0, 0, 1, 1, 1]  # 2 x 6.2 MB fit in 16 MiB, a third does not
    queued = [big.get(timeout=0.1), big.get(timeout=0.1), big.get(timeout=0.05)]
    assert [None if f is None else f.seq for f in queued] == [3, 4, None]
    small = FrameQueue(16)
    assert sum(small.put(_masked((320, 240), seq)) for seq in range(20)) == 4  # the frame count binds
    assert QUEUE_BYTES // (1280 * 720 * 3) == 6  # 720p: six frames
    assert not small.empty() and small.get(0.1) is not None
    empty = FrameQueue(4)
    assert empty.get(timeout=0.05) is None and empty.empty()
