"""A deterministic synthetic street scene with known ground truth, for the demo, tests and benches.

The scene: a textured background under slowly drifting light, sensor noise, and objects the size of
people that cross the frame one after another (walk across, leave, pause, come back). Everything is a
function of the seed and the frame number, so frame N is the same on every run and `ground_truth(N)`
says exactly where each object is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.camera.frames import Frame
from edge_agent.formats.config import CameraConfig
from edge_agent.formats.times import Clock

Box = tuple[float, float, float, float]
_NOISE_BANK = 8


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
        rng = np.random.default_rng(settings.seed)
        self._background = _textured_background(rng, settings.size)
        self._noise = _noise_bank(rng, settings.size, settings.noise_sigma)
        self._objects = [_random_object(rng, i) for i in range(settings.objects)]
        self._patches = [_object_texture(rng, o.color) for o in self._objects]

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
        """Frame `seq` as a new BGR image."""
        t = self.time_of(seq)
        width, height = self.settings.size
        gain = 1.0 + self.settings.drift_amplitude * math.sin(
            2.0 * math.pi * t / self.settings.drift_period_s
        )
        image = cv2.convertScaleAbs(self._background, alpha=gain)
        for obj, patch in zip(self._objects, self._patches, strict=True):
            box = obj.box_at(t)
            if box is None:
                continue
            x0, y0 = round(box[0] * width), round(box[1] * height)
            x1, y1 = round((box[0] + box[2]) * width), round((box[1] + box[3]) * height)
            if x1 > x0 and y1 > y0:
                image[y0:y1, x0:x1] = cv2.resize(patch, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        plus, minus = self._noise[(seq * 7 + self.settings.seed) % _NOISE_BANK]
        # The same noise on the three channels: kept as one plane (a third of the memory), spread here.
        cv2.add(image, cv2.merge((plus, plus, plus)), dst=image)
        cv2.subtract(image, cv2.merge((minus, minus, minus)), dst=image)
        return image

    def read(self) -> Frame:
        """The next frame; a synthetic scene never fails."""
        seq = self._seq
        self._seq += 1
        captured_at = self._clock() if self._clock else self._start_ts + self.time_of(seq)
        return Frame(self.camera_id, seq, captured_at, self.render(seq))

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


def _noise_bank(
    rng: np.random.Generator, size: tuple[int, int], sigma: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    width, height = size
    bank = []
    for _ in range(_NOISE_BANK):
        noise = np.clip(np.round(rng.normal(0.0, sigma, (height, width))), -40, 40).astype(np.int16)
        bank.append((np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)))
    return bank


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
