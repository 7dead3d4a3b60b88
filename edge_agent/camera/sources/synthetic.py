"""A deterministic synthetic street scene with known ground truth, for the demo, tests and benches.

The scene: a textured background under slowly drifting light, sensor noise, and objects the size of
people that cross the frame one after another (walk across, leave, pause, come back). Everything is a
function of the seed and the frame number, so frame N is the same on every run and `ground_truth(N)`
says exactly where each object is.

Frames are rendered in I420, what the mask, the detector and the encoder take, so no BGR frame and no
conversion is made per frame. The scene holds a 1080p camera in about 8.5 MB: the background in I420
(3 MB) and a strip of luma noise (two planes of 2.7 MB, see `_noise_strip`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.camera.frames import Frame, PixelFormat, i420_planes
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock

Box = tuple[float, float, float, float]
# Frame N takes noise pattern (7 N + seed) mod 8: eight patterns, each a window of one noise strip.
_NOISE_PATTERNS = 8
# Consecutive patterns start 1/24 of the frame's height apart in the strip: each pixel gets another
# sample, and so does each neighbourhood the motion detector averages (a downscale to 320 pixels wide
# and a 3x3 blur: 18 rows at 1080p, against 45), so frames' noise stays independent where it is read.
_PATTERN_STEP_DIVISOR = 24
# Noise is drawn this many rows at a time: a few hundred kB of float64 at once, not a frame's 16 MB.
_DRAW_ROWS = 64
# Luma spans 219 levels (16..235) for 255 grey levels: what BT.601 limited range makes of a grey step.
_LUMA_PER_GREY = 219.0 / 255.0


@dataclass(frozen=True)
class SceneObject:
    """One walker: size and lane as fractions of the frame, speed in frame-widths per second."""

    width: float
    height: float
    lane_y: float
    speed: float
    pause_s: float
    phase_s: float
    color: tuple[int, int, int]
    leftward: bool

    def box_at(self, t: float) -> Box | None:
        """Normalized (x, y, w, h) at time t, clipped to the frame, or None while off screen."""
        crossing_s = (1.0 + self.width) / self.speed
        local = (t + self.phase_s) % (crossing_s + self.pause_s)
        if local >= crossing_s:
            return None
        travelled = local * self.speed - self.width
        x = 1.0 - self.width - travelled if self.leftward else travelled
        y = self.lane_y + 0.01 * math.sin(2.0 * math.pi * t / 1.3)
        x0, x1 = max(0.0, x), min(1.0, x + self.width)
        y0, y1 = max(0.0, y), min(1.0, y + self.height)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            return None
        return (x0, y0, x1 - x0, y1 - y0)


@dataclass(frozen=True)
class SceneSettings:
    """What the scene looks like; the defaults suit a street camera at 10 fps."""

    size: tuple[int, int] = (1280, 720)
    fps: float = 10.0
    seed: int = 0
    objects: int = 2
    drift_amplitude: float = 0.08
    drift_period_s: float = 120.0
    noise_sigma: float = 2.5


class SyntheticSource:
    """Renders the scene frame by frame; `ground_truth(seq)` gives the objects' boxes."""

    paced = False

    def __init__(
        self,
        camera_id: str,
        settings: SceneSettings,
        clock: Clock | None = None,
        start_ts: float = 0.0,
    ) -> None:
        self.camera_id = camera_id
        self.settings = settings
        self._clock = clock
        self._start_ts = start_ts
        self._seq = 0
        width, height = settings.size
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"synthetic scene {width}x{height}: I420 needs an even width and height")
        # The draws keep this order (background, noise, walkers, textures): a seed gives the same walkers.
        rng = np.random.default_rng(settings.seed)
        self._background = cv2.cvtColor(_textured_background(rng, settings.size), cv2.COLOR_BGR2YUV_I420)
        self._noise_plus, self._noise_minus = _noise_strip(rng, settings.size, settings.noise_sigma)
        self._noise_step = _pattern_step(height)
        self._objects = [_random_object(rng, i) for i in range(settings.objects)]
        self._patches = [
            i420_planes(cv2.cvtColor(_object_texture(rng, o.color), cv2.COLOR_BGR2YUV_I420))
            for o in self._objects
        ]

    @classmethod
    def from_camera(cls, camera: CameraConfig, clock: Clock) -> SyntheticSource:
        """The scene a camera config asks for (its resolution, fps, seed and object count)."""
        settings = SceneSettings(
            size=camera.resolution, fps=camera.fps, seed=camera.source.seed, objects=camera.source.objects
        )
        return cls(camera.id, settings, clock)

    def time_of(self, seq: int) -> float:
        """Scene time in seconds of frame `seq`."""
        return seq / self.settings.fps

    def ground_truth(self, seq: int) -> list[Box]:
        """Normalized boxes of the objects visible in frame `seq`."""
        t = self.time_of(seq)
        return [box for box in (o.box_at(t) for o in self._objects) if box is not None]

    def render(self, seq: int) -> np.ndarray:
        """Frame `seq` as a new I420 image ((H*3/2)xW; `cv2.COLOR_YUV2BGR_I420` shows it)."""
        t = self.time_of(seq)
        width, height = self.settings.size
        gain = 1.0 + self.settings.drift_amplitude * math.sin(
            2.0 * math.pi * t / self.settings.drift_period_s
        )
        image = np.empty_like(self._background)
        luma, u, v = i420_planes(image)
        # The light scales grey levels, so luma scales above its black level of 16. Chroma keeps the
        # background's: a drift of a few percent barely changes colour, and the detector reads luma only.
        cv2.convertScaleAbs(self._background[:height], dst=luma, alpha=gain, beta=16.0 * (1.0 - gain))
        image[height:] = self._background[height:]
        for obj, planes in zip(self._objects, self._patches, strict=True):
            box = obj.box_at(t)
            if box is not None:
                _paint(planes, (luma, u, v), _pixel_box(box, width, height))
        # The noise of a sensor's three channels alike, as luma only (grey noise leaves chroma as is).
        top = ((seq * 7 + self.settings.seed) % _NOISE_PATTERNS) * self._noise_step
        cv2.add(luma, self._noise_plus[top : top + height], dst=luma)
        cv2.subtract(luma, self._noise_minus[top : top + height], dst=luma)
        return image

    def read(self) -> Frame:
        """The next frame; a synthetic scene never fails."""
        seq = self._seq
        self._seq += 1
        captured_at = self._clock() if self._clock else self._start_ts + self.time_of(seq)
        return Frame(self.camera_id, seq, captured_at, self.render(seq), PixelFormat.I420)

    def close(self) -> None:
        """Nothing to release."""


def _textured_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    grid = (max(2, height // 40), max(2, width // 40))
    # Mostly grey with a faint tint, like asphalt, walls and pavements.
    luminance = rng.integers(60, 190, (*grid, 1)).astype(np.int16)
    tint = rng.integers(-15, 16, (*grid, 3)).astype(np.int16)
    coarse = np.clip(luminance + tint, 0, 255).astype(np.uint8)
    image = cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC)
    fine = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    return np.clip(image.astype(np.int16) + fine, 0, 255).astype(np.uint8)


def _pattern_step(height: int) -> int:
    """Rows between the starts of consecutive noise patterns in the strip."""
    return max(1, height // _PATTERN_STEP_DIVISOR)


def _noise_strip(
    rng: np.random.Generator, size: tuple[int, int], sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """The luma noise, as its positive and negative parts (saturating adds are the cheapest way to apply
    signed noise to uint8), in a strip of `_NOISE_PATTERNS - 1` pattern steps taller than the frame.

    `sigma` is in grey levels, the units the detector's thresholds are tuned in. The generator draws
    eight frames of noise, row blocks at a time; the strip keeps the first rows of them and the rest is
    dropped, so the generator stands where the walkers drawn next have always been drawn from."""
    width, height = size
    rows = height + (_NOISE_PATTERNS - 1) * _pattern_step(height)
    strip = np.empty((rows, width), np.int8)
    drawn = _NOISE_PATTERNS * height
    for start in range(0, drawn, _DRAW_ROWS):
        block = rng.normal(0.0, sigma * _LUMA_PER_GREY, (min(_DRAW_ROWS, drawn - start), width))
        if start < rows:
            kept = block[: rows - start]
            strip[start : start + len(kept)] = np.clip(np.round(kept), -40, 40)
    return np.maximum(strip, 0).view(np.uint8), np.maximum(-strip, 0).view(np.uint8)


def _pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A normalized box in pixels: (x0, y0, x1, y1), x1 and y1 excluded."""
    x0, y0 = round(box[0] * width), round(box[1] * height)
    return x0, y0, round((box[0] + box[2]) * width), round((box[1] + box[3]) * height)


def _paint(
    patch: tuple[np.ndarray, np.ndarray, np.ndarray],
    planes: tuple[np.ndarray, np.ndarray, np.ndarray],
    box: tuple[int, int, int, int],
) -> None:
    """Paint an I420 texture's planes over a pixel box of the frame's planes, stretched to fit.

    Luma takes the box exactly (the detector's view, edges at odd pixels included); a chroma sample
    covers 2x2 pixels, so every sample over a pixel of the box is painted, as the masker does."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return
    chroma_box = (x0 // 2, y0 // 2, (x1 + 1) // 2, (y1 + 1) // 2)
    for source, target, (left, top, right, bottom) in zip(
        patch, planes, (box, chroma_box, chroma_box), strict=True
    ):
        stretched = cv2.resize(source, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST)
        target[top:bottom, left:right] = stretched


def _random_object(rng: np.random.Generator, index: int) -> SceneObject:
    return SceneObject(
        width=float(rng.uniform(0.05, 0.09)),
        height=float(rng.uniform(0.18, 0.3)),
        lane_y=float(rng.uniform(0.35, 0.6)),
        speed=float(rng.uniform(0.08, 0.15)),
        pause_s=float(rng.uniform(4.0, 10.0)),
        phase_s=float(index * 3.0),
        color=(int(rng.integers(0, 80)), int(rng.integers(0, 80)), int(rng.integers(150, 256))),
        leftward=bool(index % 2),
    )


def _object_texture(rng: np.random.Generator, color: tuple[int, int, int]) -> np.ndarray:
    patch = np.empty((32, 16, 3), dtype=np.uint8)
    patch[:] = color
    stripes = rng.integers(-40, 41, (32, 1, 1))
    return np.clip(patch.astype(np.int16) + stripes, 0, 255).astype(np.uint8)
