"""Motion detection on a downscaled grayscale frame, and the event tracker that turns it into events.

The detector keeps a per-pixel background model (mean and mean absolute deviation) and decides that a
pixel moves when it differs from the background *and from every background pixel next to it* by more
than a per-pixel threshold. Each choice answers one way real footage fools a naive detector:

- sensor and compression noise: the frame is downscaled with averaging and lightly blurred, the
  threshold has a floor, and isolated pixels are removed by a median filter;
- swaying vegetation, rain, water: the threshold grows with each pixel's own variability (its mean
  absolute deviation), and with how often the pixel "blinks" between foreground and background
  (the flicker suppression of SuBSENSE), so busy pixels need a larger change to count;
- camera shake and texture edges: a pixel is compared with the 3x3 neighbourhood of the background
  (the min..max range), as ViBe's spatial tolerance does, so a one-pixel wobble of an edge is not motion;
- lighting: a global gain is estimated each frame on the background pixels and divided out, which
  cancels drift, clouds and most of a light switching; a change covering most of the watched area
  (street lights, IR cut filter, a PTZ move) re-learns the background at once instead of reporting motion;
- flicker and still changes in the decision: a blob raises motion only when it is at least `min_area`,
  part of it changed since the previous frame, and it overlaps a blob that was moving in the previous
  frame. A blob that stopped changing (a lamp switched on, a parked car, the ghost of something that
  left) stays in the foreground mask but raises no motion, and becomes background after
  `stationary_seconds` without change.

Measured on the SBI2015 dev sequences and synthetic stress clips by scripts/eval_motion.py; cost by
scripts/bench_motion.py.

Masked pixels (privacy masks) and pixels outside the configured zones are never foreground.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_agent.camera.frames import MaskedFrame, PixelFormat
from edge_agent.camera.privacy import rasterize
from edge_agent.formats.config import MotionConfig

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class MotionResult:
    """What the detector saw in one frame.

    `score` is the fraction of the watched area (unmasked, inside the zones) covered by moving blobs;
    `boxes` are normalized (x, y, w, h) of those blobs; `foreground` is uint8 0/255 at the detection
    resolution (`MotionDetector.detect_size`).
    """

    motion: bool
    score: float
    boxes: list[Box]
    zones: list[str]
    foreground: np.ndarray


@dataclass(frozen=True)
class Tuning:
    """The detector's constants, derived from the config's sensitivity (0 = coarse, 1 = faint)."""

    threshold_floor: float  # grey levels: the smallest difference that can count
    deviation_factor: float  # times the pixel's mean absolute deviation
    blink_gain: float  # how much a fully blinking pixel multiplies its threshold by (1 + gain)
    learning_rate: float  # background update per frame where the pixel is background
    foreground_rate: float  # where it is foreground: stopped objects and ghosts fade in slowly
    deviation_rate: float
    blink_rate: float
    global_change: float  # share of the watched area that means "the scene changed", not motion
    active_share: float  # share of a blob that must change frame to frame for it to be moving
    stationary_seconds: float  # foreground that has not changed for this long becomes background

    @classmethod
    def from_sensitivity(cls, sensitivity: float) -> Tuning:
        """Map the single user-facing knob to the thresholds; 0.5 is the default street setting."""
        return cls(
            threshold_floor=26.0 - 24.0 * sensitivity,
            deviation_factor=3.0 - 2.0 * sensitivity,
            blink_gain=2.0,
            learning_rate=0.02,
            foreground_rate=0.002,
            deviation_rate=0.02,
            blink_rate=0.05,
            global_change=0.6,
            active_share=0.05,
            stationary_seconds=8.0,
        )


def detect_size_for(frame_size: tuple[int, int], detect_width: int) -> tuple[int, int]:
    """The detection resolution: `detect_width` wide (never upscaled), aspect kept."""
    width, height = frame_size
    target = min(detect_width, width)
    return target, max(1, round(height * target / width))


class MotionDetector:
    """Per-camera background model; `detect` takes each masked frame in time order."""

    def __init__(
        self, config: MotionConfig, frame_size: tuple[int, int], privacy_mask: np.ndarray | None
    ) -> None:
        self.config = config
        self.frame_size = frame_size
        self.detect_size = detect_size_for(frame_size, config.detect_width)
        self.tuning = Tuning.from_sensitivity(config.sensitivity)
        self._watched = _watched_area(config, frame_size, self.detect_size, privacy_mask)
        self._watched_pixels = max(1, cv2.countNonZero(self._watched))
        self._zones = [
            (zone.name, cv2.bitwise_and(rasterize([zone.points], self.detect_size), self._watched))
            for zone in config.zones
        ]
        width, height = self.detect_size
        self._min_pixels = max(4, round(config.min_area * width * height))
        self._kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        self._near = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))
        shape = (height, width)
        self._mean = np.zeros(shape, np.float32)
        self._previous = np.zeros(shape, np.float32)
        self._deviation = np.full(shape, 4.0, np.float32)
        self._blink = np.zeros(shape, np.float32)  # 0..255: how often a pixel blinks
        self._still = np.zeros(shape, np.float32)  # seconds a foreground pixel has not changed
        self._raw_prev = np.zeros(shape, np.uint8)
        self._foreground_prev = np.zeros(shape, np.uint8)
        self._moving_prev = np.zeros(shape, np.uint8)
        self._frames = 0
        self._last_ts = 0.0

    def detect(self, frame: MaskedFrame) -> MotionResult:
        """Update the background with this frame and report where it moves."""
        i420 = frame.pixel_format is PixelFormat.I420
        gray = self._prepare_luma(frame.image) if i420 else self._prepare(frame.image)
        elapsed = frame.captured_at - self._last_ts
        self._last_ts = frame.captured_at
        self._frames += 1
        if self._frames == 1:
            self._relearn(gray)
            return self._nothing()
        self._follow_light(gray)
        threshold = self._threshold()
        raw = self._raw_foreground(gray, threshold)
        if cv2.countNonZero(raw) > self.tuning.global_change * self._watched_pixels:
            self._relearn(gray)
            return self._nothing()
        changed = cv2.bitwise_and(_above(cv2.absdiff(gray, self._previous), threshold), self._watched)
        foreground = cv2.morphologyEx(cv2.medianBlur(raw, 3), cv2.MORPH_CLOSE, self._kernel)
        foreground, moving, boxes = self._blobs(foreground, changed)
        self._learn(gray, raw, foreground, changed, min(max(elapsed, 0.0), 1.0))
        zones = [name for name, area in self._zones if cv2.countNonZero(cv2.bitwise_and(area, moving))]
        score = cv2.countNonZero(moving) / self._watched_pixels
        return MotionResult(bool(boxes), float(score), boxes, zones, foreground)

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        width, height = self.detect_size
        if (image.shape[1], image.shape[0]) != (width, height):
            # Nearest to twice the target then 2x2 averaging: a box filter at a fraction of INTER_AREA's cost.
            if image.shape[1] > 2 * width:
                image = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_NEAREST)
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        return cv2.GaussianBlur(gray, (3, 3), 0).astype(np.float32)

    def _prepare_luma(self, i420: np.ndarray) -> np.ndarray:
        """The same grey image from the Y plane of an I420 frame: Y = 16 + 219/255 x grey (BT.601, the
        weights of BGR2GRAY), so scaling back after the downscale gives the grey levels the thresholds
        are tuned in, at a third of the resize cost (one plane instead of three)."""
        luma = i420[: self.frame_size[1]]
        small_width, small_height = self.detect_size
        if luma.shape[1] > 2 * small_width:
            luma = cv2.resize(luma, (2 * small_width, 2 * small_height), interpolation=cv2.INTER_NEAREST)
        if (luma.shape[1], luma.shape[0]) != self.detect_size:
            luma = cv2.resize(luma, self.detect_size, interpolation=cv2.INTER_AREA)
        gray = cv2.addWeighted(luma, 255.0 / 219.0, luma, 0.0, -16.0 * 255.0 / 219.0)  # saturates
        return cv2.GaussianBlur(gray, (3, 3), 0).astype(np.float32)

    def _follow_light(self, gray: np.ndarray) -> None:
        """Scale the model by the global brightness ratio frame/background, measured on the pixels that
        were background last frame: drift, clouds and a whole-scene light change are not motion."""
        background = cv2.bitwise_and(self._watched, cv2.bitwise_not(self._foreground_prev))
        if cv2.countNonZero(background) < 0.2 * self._watched_pixels:
            return
        # Every 4th pixel each way is plenty for one global ratio, at a tenth of the cost.
        sample = np.ascontiguousarray(background[::4, ::4])
        now = cv2.mean(np.ascontiguousarray(gray[::4, ::4]), mask=sample)[0]
        before = cv2.mean(np.ascontiguousarray(self._mean[::4, ::4]), mask=sample)[0]
        if now < 8.0 or before < 8.0:
            return
        gain = now / before
        if abs(gain - 1.0) > 0.002:
            # Saturated pixels stay at 255: a clipped highlight does not brighten further.
            self._mean = np.minimum(self._mean * gain, 255.0, dtype=np.float32)
            self._previous = np.minimum(self._previous * gain, 255.0, dtype=np.float32)

    def _threshold(self) -> np.ndarray:
        """Per pixel: k x its mean absolute deviation (with a floor), raised where it blinks."""
        tuning = self.tuning
        threshold = np.maximum(self._deviation * tuning.deviation_factor, tuning.threshold_floor)
        return threshold * (1.0 + (tuning.blink_gain / 255.0) * self._blink)

    def _raw_foreground(self, gray: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        """Pixels farther than the threshold from every background value of their 3x3 neighbourhood."""
        low = cv2.erode(self._mean, self._kernel)
        high = cv2.dilate(self._mean, self._kernel)
        difference = cv2.max(cv2.subtract(low, gray), cv2.subtract(gray, high))
        return cv2.bitwise_and(_above(difference, threshold), self._watched)

    def _blobs(self, foreground: np.ndarray, changed: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Box]]:
        """Keep blobs of at least min_area. A blob is motion when it is changing (frame to frame) and was
        changing at the same place in the previous frame too; a still blob (a stopped car, a ghost of
        the background, a lamp switched on) stays foreground but is not motion."""
        # External contours rather than connected-component labelling: ten times cheaper on sparse masks.
        contours, _ = cv2.findContours(foreground, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        width, height = self.detect_size
        kept = np.zeros_like(foreground)
        moving = np.zeros_like(foreground)
        boxes: list[Box] = []
        previous = cv2.dilate(self._moving_prev, self._near)
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            if w * h < self._min_pixels:
                continue
            blob = np.zeros((h, w), np.uint8)
            cv2.drawContours(blob, [contour], 0, 255, cv2.FILLED, offset=(-x, -y))
            area = cv2.countNonZero(blob)
            if area < self._min_pixels:
                continue
            window = (slice(y, y + h), slice(x, x + w))
            kept[window] |= blob
            active = cv2.countNonZero(cv2.bitwise_and(blob, changed[window]))
            if active < max(2, self.tuning.active_share * area):
                continue
            moving[window] |= blob
            if cv2.countNonZero(cv2.bitwise_and(blob, previous[window])):
                boxes.append((x / width, y / height, w / width, h / height))
        self._moving_prev = moving
        if not boxes:
            moving = np.zeros_like(moving)
        return kept, moving, boxes

    def _learn(
        self, gray: np.ndarray, raw: np.ndarray, foreground: np.ndarray, changed: np.ndarray, elapsed: float
    ) -> None:
        tuning = self.tuning
        warmup = 1.0 / self._frames
        background = cv2.bitwise_and(self._watched, cv2.bitwise_not(foreground))
        deviation = cv2.absdiff(gray, self._mean)
        cv2.accumulateWeighted(
            deviation, self._deviation, max(tuning.deviation_rate, warmup), mask=background
        )
        cv2.accumulateWeighted(gray, self._mean, max(tuning.learning_rate, warmup), mask=background)
        cv2.accumulateWeighted(gray, self._mean, tuning.foreground_rate, mask=foreground)
        # Foreground that stopped changing becomes background after `stationary_seconds`.
        still = cv2.bitwise_and(foreground, cv2.bitwise_not(changed))
        self._still += elapsed
        self._still *= still > 0
        settled = (self._still > tuning.stationary_seconds).astype(np.uint8)
        if settled.any():
            cv2.copyTo(gray, settled, self._mean)
            self._still[settled > 0] = 0.0
        blink = cv2.bitwise_and(cv2.bitwise_xor(raw, self._raw_prev), background)
        cv2.accumulateWeighted(blink, self._blink, tuning.blink_rate)
        self._previous = gray
        self._raw_prev = raw
        self._foreground_prev = foreground

    def _relearn(self, gray: np.ndarray) -> None:
        """Start the background again from this frame: first frame, or the whole scene changed
        (lights, IR cut filter, camera moved)."""
        self._mean = gray.copy()
        self._previous = gray
        self._blink[:] = 0
        self._still[:] = 0
        self._raw_prev = np.zeros_like(self._raw_prev)
        self._foreground_prev = np.zeros_like(self._foreground_prev)
        self._moving_prev = np.zeros_like(self._moving_prev)
        self._frames = 1

    def _nothing(self) -> MotionResult:
        width, height = self.detect_size
        return MotionResult(False, 0.0, [], [], np.zeros((height, width), dtype=np.uint8))


def _above(values: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """uint8 0/255 where values > threshold."""
    return cv2.compare(values, threshold, cv2.CMP_GT)


def _watched_area(
    config: MotionConfig,
    frame_size: tuple[int, int],
    detect_size: tuple[int, int],
    privacy_mask: np.ndarray | None,
) -> np.ndarray:
    """255 where motion counts at detection size: not masked (no masked source pixel) and inside a zone."""
    width, height = detect_size
    watched: np.ndarray = np.full((height, width), 255, dtype=np.uint8)
    if privacy_mask is not None and (privacy_mask.shape[1], privacy_mask.shape[0]) != frame_size:
        raise ValueError(
            f"privacy mask is {privacy_mask.shape[1]}x{privacy_mask.shape[0]}, frames are"
            f" {frame_size[0]}x{frame_size[1]}"
        )
    if privacy_mask is not None and privacy_mask.any():
        small = cv2.resize(privacy_mask, detect_size, interpolation=cv2.INTER_AREA)
        # One pixel of margin: the edge of a fill or blur must not read as motion when light changes.
        masked = cv2.dilate((small > 0).astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
        watched = cv2.bitwise_and(watched, cv2.bitwise_not(masked))
    if config.zones:
        watched = cv2.bitwise_and(watched, rasterize([z.points for z in config.zones], detect_size))
    return watched


@dataclass(frozen=True)
class MotionEvent:
    """One message of a motion event's life: `start`, then `update`s, then `end`.

    Times are UTC epoch seconds. `score` is the peak score seen since the event started; `boxes` are
    the latest motion frame's boxes (normalized x, y, w, h); `zones` every zone hit since the start.
    The recorder reads pre/post-roll from the camera's MotionConfig.
    """

    event_id: str
    camera_id: str
    phase: str
    ts: float
    start_ts: float
    score: float
    boxes: list[Box]
    zones: list[str]


@dataclass
class _OpenEvent:
    event_id: str
    start_ts: float
    last_motion_ts: float
    last_sent_ts: float
    peak: float
    boxes: list[Box]
    zones: list[str] = field(default_factory=list)


class EventTracker:
    """Debounces per-frame motion into events: start after `start_frames` frames of motion in a row,
    an update every `update_seconds` while open, end after `end_seconds` without motion."""

    def __init__(self, camera_id: str, config: MotionConfig) -> None:
        self.camera_id = camera_id
        self.config = config
        self._run = 0
        self._run_start = 0.0
        self._open: _OpenEvent | None = None

    @property
    def is_open(self) -> bool:
        """Whether an event is in progress."""
        return self._open is not None

    def update(self, result: MotionResult, ts: float) -> list[MotionEvent]:
        """Feed one frame's result (frames in time order); returns the event messages it causes."""
        if result.motion:
            if self._run == 0:
                self._run_start = ts
            self._run += 1
        else:
            self._run = 0
        event = self._open
        if event is None:
            if self._run < self.config.start_frames:
                return []
            event = _OpenEvent(uuid.uuid4().hex, self._run_start, ts, ts, result.score, list(result.boxes))
            self._absorb(event, result, ts)
            self._open = event
            return [self._message(event, "start", ts)]
        if result.motion:
            self._absorb(event, result, ts)
        if ts - event.last_motion_ts >= self.config.end_seconds:
            self._open = None
            return [self._message(event, "end", ts)]
        if ts - event.last_sent_ts >= self.config.update_seconds:
            event.last_sent_ts = ts
            return [self._message(event, "update", ts)]
        return []

    def close(self, ts: float) -> list[MotionEvent]:
        """End the open event, if any (camera stopping)."""
        event, self._open = self._open, None
        self._run = 0
        return [] if event is None else [self._message(event, "end", ts)]

    @staticmethod
    def _absorb(event: _OpenEvent, result: MotionResult, ts: float) -> None:
        event.last_motion_ts = ts
        event.peak = max(event.peak, result.score)
        event.boxes = list(result.boxes)
        event.zones.extend(z for z in result.zones if z not in event.zones)

    def _message(self, event: _OpenEvent, phase: str, ts: float) -> MotionEvent:
        return MotionEvent(
            event_id=event.event_id,
            camera_id=self.camera_id,
            phase=phase,
            ts=ts,
            start_ts=event.start_ts,
            score=event.peak,
            boxes=list(event.boxes),
            zones=list(event.zones),
        )
