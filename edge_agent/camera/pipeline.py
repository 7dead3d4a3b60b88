"""One camera's worker: source -> privacy mask -> motion -> sinks (recorder, previews).

Two threads per camera share the camera's mask -> motion stage (`camera.stage`, the same one
`motion-replay` runs). The capture thread reads the source, masks each frame (the only path out of a
source) and puts it on a queue bounded in bytes (`FrameQueue`); when it is full the oldest frame is
dropped and counted, so a slow consumer never blocks capture, and a 1080p camera never piles up a
hundred megabytes of frames that the allocator then keeps. The processing thread runs motion detection
and the event tracker, hands events to the event sinks and every frame to the frame sinks. A source
that fails or ends is reopened with exponential backoff; a camera that requires masks and has none never
opens its source.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from edge_agent.camera.frames import MaskedFrame
from edge_agent.camera.motion import MotionEvent
from edge_agent.camera.privacy import MasksRequired
from edge_agent.camera.sources import FrameSource, SourceError, open_source
from edge_agent.camera.stage import MotionStage
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock

log = logging.getLogger(__name__)

SourceFactory = Callable[[CameraConfig, Clock], FrameSource]
# What a camera's queue may hold: two 1080p BGR frames, six at 720p (a burst of 0.2 to 0.6 s at 10 fps;
# the processing thread needs about 15 ms a frame at 1080p on one core here, 45 on a Pi 5).
QUEUE_BYTES = 16 * 1024 * 1024
QUEUE_MIN_FRAMES = 2
EventSink = Callable[[MotionEvent], object]


class FrameSink(Protocol):
    """A consumer of masked frames (the recorder, a preview)."""

    def on_frame(self, frame: MaskedFrame, event_open: bool, event_start: float | None = None) -> None:
        """Called for every frame the processing thread takes, with whether a motion event is open and,
        when one is, the time of its first moving frame."""
        ...

    def close(self) -> None:
        """Flush and release; called once when the worker stops."""
        ...


class CameraState(StrEnum):
    """What a camera is doing, as reported in status."""

    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    AWAITING_MASKS = "awaiting_masks"
    STOPPED = "stopped"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: initial, doubled each failure, capped."""

    initial_s: float = 0.5
    factor: float = 2.0
    maximum_s: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (1 = first)."""
        return min(self.maximum_s, self.initial_s * self.factor ** max(0, failures - 1))


@dataclass(frozen=True)
class CameraStats:
    """A snapshot of a worker's counters for status, metrics and the demo line."""

    camera_id: str
    state: CameraState
    fps: float
    frames: int
    drops: int
    resolution: tuple[int, int] | None
    masks: int
    reconnects: int
    event_open: bool
    sink_errors: int
    last_error: str


class RateMeter:
    """Frames per second over the last few seconds of capture timestamps."""

    def __init__(self, window: int = 50) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def tick(self, t: float) -> None:
        """Record one frame at monotonic time t."""
        self._times.append(t)

    def rate(self) -> float:
        """Frames per second, 0 until two frames were seen."""
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])


class FrameQueue:
    """Masked frames from the capture thread to the processing thread, at most `max_frames` of them and
    no more bytes than `max_bytes` (but at least `QUEUE_MIN_FRAMES`, whatever their size); `put` drops
    the oldest frames to make room and says how many."""

    def __init__(self, max_frames: int, max_bytes: int = QUEUE_BYTES) -> None:
        self._max_frames = max(1, max_frames)
        self._max_bytes = max_bytes
        self._frames: deque[MaskedFrame] = deque()
        self._bytes = 0
        self._ready = threading.Condition()

    def put(self, frame: MaskedFrame) -> int:
        """Queue a frame (never blocks); the number of older frames dropped for it."""
        size = frame.image.nbytes
        dropped = 0
        with self._ready:
            while self._frames and (
                len(self._frames) >= self._max_frames
                or (len(self._frames) >= QUEUE_MIN_FRAMES and self._bytes + size > self._max_bytes)
            ):
                self._bytes -= self._frames.popleft().image.nbytes
                dropped += 1
            self._frames.append(frame)
            self._bytes += size
            self._ready.notify()
        return dropped

    def get(self, timeout: float) -> MaskedFrame | None:
        """The oldest frame, waiting up to `timeout` seconds for one; None when none came."""
        with self._ready:
            if not self._frames and not self._ready.wait_for(lambda: bool(self._frames), timeout):
                return None
            frame = self._frames.popleft()
            self._bytes -= frame.image.nbytes
            return frame

    def empty(self) -> bool:
        """Whether no frame waits."""
        with self._ready:
            return not self._frames


class CameraWorker:
    """Runs one camera until `stop()`; thread-safe `stats()` and `latest_frame()`."""

    def __init__(
        self,
        camera: CameraConfig,
        frame_sinks: Sequence[FrameSink] = (),
        event_sinks: Sequence[EventSink] = (),
        source_factory: SourceFactory = open_source,
        clock: Clock = time.time,
        queue_size: int = 16,
        backoff: Backoff | None = None,
    ) -> None:
        self.camera = camera
        self._frame_sinks = list(frame_sinks)
        self._event_sinks = list(event_sinks)
        self._source_factory = source_factory
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._queue = FrameQueue(queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = CameraState.STARTING
        self._frames = 0
        self._drops = 0
        self._reconnects = 0
        self._sink_errors = 0
        self._last_error = ""
        self._resolution: tuple[int, int] | None = None
        self._event_open = False
        self._latest: MaskedFrame | None = None
        self._meter = RateMeter()
        self._stage: MotionStage | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the capture and processing threads (or report `awaiting_masks` and start nothing)."""
        try:
            self._stage = MotionStage.for_camera(self.camera)
        except MasksRequired as error:
            log.warning("%s", error)
            self._set_state(CameraState.AWAITING_MASKS, str(error))
            return
        self._threads = [
            threading.Thread(target=self._capture_loop, name=f"capture-{self.camera.id}", daemon=True),
            threading.Thread(target=self._process_loop, name=f"process-{self.camera.id}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads, close the open event and the sinks."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        if self._state is not CameraState.AWAITING_MASKS:
            self._set_state(CameraState.STOPPED)

    def stats(self) -> CameraStats:
        """Current counters."""
        with self._lock:
            return CameraStats(
                camera_id=self.camera.id,
                state=self._state,
                fps=round(self._meter.rate(), 2),
                frames=self._frames,
                drops=self._drops,
                resolution=self._resolution,
                masks=len(self.camera.masks),
                reconnects=self._reconnects,
                event_open=self._event_open,
                sink_errors=self._sink_errors,
                last_error=self._last_error,
            )

    def latest_frame(self) -> MaskedFrame | None:
        """The most recent masked frame (read-only), for snapshots."""
        with self._lock:
            return self._latest

    def _set_state(self, state: CameraState, error: str = "") -> None:
        with self._lock:
            self._state = state
            if error:
                self._last_error = error

    def _capture_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            source = self._open_source()
            if source is not None:
                delivered = self._pump(source)
                source.close()
                if delivered:
                    failures = 0
            if self._stop.is_set():
                break
            failures += 1
            with self._lock:
                self._reconnects += 1
            delay = self._backoff.delay(failures)
            self._set_state(CameraState.RECONNECTING)
            log.warning("camera %s: source lost, reconnecting in %.1f s", self.camera.id, delay)
            self._stop.wait(delay)

    def _open_source(self) -> FrameSource | None:
        try:
            return self._source_factory(self.camera, self._clock)
        except SourceError as error:
            self._set_state(CameraState.RECONNECTING, str(error))
            log.warning("%s", error)
            return None

    def _pump(self, source: FrameSource) -> bool:
        """Read, mask and queue frames until the source fails or stop; True if any frame came."""
        assert self._stage is not None
        interval = 1.0 / self.camera.fps
        next_due = time.monotonic()
        delivered = False
        while not self._stop.is_set():
            if not source.paced:
                self._stop.wait(max(0.0, next_due - time.monotonic()))
                next_due = max(next_due + interval, time.monotonic() - interval)
            raw = source.read()
            if raw is None:
                return delivered
            masked = self._stage.mask(raw)
            delivered = True
            self._enqueue(masked)
        return delivered

    def _enqueue(self, frame: MaskedFrame) -> None:
        with self._lock:
            self._frames += 1
            self._resolution = frame.size
            self._state = CameraState.RUNNING
            self._meter.tick(time.monotonic())
            self._latest = frame
        dropped = self._queue.put(frame)
        if dropped:
            with self._lock:
                self._drops += dropped

    def _process_loop(self) -> None:
        stage = self._stage
        assert stage is not None
        while not (self._stop.is_set() and self._queue.empty()):
            frame = self._queue.get(timeout=0.2)
            if frame is None:
                continue
            output = stage.observe(frame)
            self._emit(output.events)
            with self._lock:
                self._event_open = stage.event_open
            for sink in self._frame_sinks:
                self._call_sink(sink.on_frame, output.frame, stage.event_open, stage.event_start)
        self._emit(stage.close())
        for sink in self._frame_sinks:
            self._call_sink(sink.close)

    def _emit(self, events: list[MotionEvent]) -> None:
        for event in events:
            log.info(
                "camera %s: motion %s %s score %.3f zones %s",
                event.camera_id,
                event.phase,
                event.event_id,
                event.score,
                ",".join(event.zones) or "-",
            )
            for sink in self._event_sinks:
                self._call_sink(sink, event)

    def _call_sink(self, function: Callable[..., object], *args: object) -> None:
        """Run a sink; a failing sink is counted and logged, and never stops the camera."""
        try:
            function(*args)
        except Exception as error:
            with self._lock:
                self._sink_errors += 1
                self._last_error = f"{type(error).__name__}: {error}"
            log.exception("camera %s: sink %r failed", self.camera.id, function)
