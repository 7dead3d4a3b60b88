"""Synthetic stress clips for the motion detector: what fools detectors outdoors, with known ground truth.

Each clip is deterministic (seeded) and yields `(image, truth)` pairs: a BGR frame and a uint8 mask,
255 where a real object (a walker) is. Clips without a walker must raise no motion at all. Used by the
motion tests and by scripts/eval_motion.py's `--stress` table; in the package so that both can import it.

Unlike the demo's scene (edge_agent.camera.sources.synthetic) these clips carry hard edges (for shake), fresh
Gaussian noise and JPEG compression on every frame, and one adversity each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

Clip = Iterator[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ClipSpec:
    """Size, rate and length of a clip; `walker_from` is the frame a walker enters on (None: never)."""

    size: tuple[int, int] = (640, 360)
    fps: float = 10.0
    frames: int = 600
    seed: int = 1
    noise_sigma: float = 3.0
    jpeg_quality: int = 70
    walker_from: int | None = None


def background(spec: ClipSpec) -> np.ndarray:
    """A street-like textured scene: blocks of grey and tint, fine grain, a few hard edges."""
    rng = np.random.default_rng(spec.seed)
    width, height = spec.size
    coarse = rng.integers(50, 200, (max(2, height // 30), max(2, width // 30), 3)).astype(np.uint8)
    image = cv2.resize(coarse, spec.size, interpolation=cv2.INTER_CUBIC)
    fine = rng.integers(-10, 11, (height, width, 1), dtype=np.int16)
    image = np.clip(image.astype(np.int16) + fine, 0, 255).astype(np.uint8)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, width // 3)), int(rng.integers(10, height // 3))
        shade = int(rng.integers(20, 235))
        cv2.rectangle(image, (x, y), (x + w, y + h), (shade, shade, shade), -1)
    return image


def _finish(image: np.ndarray, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise then compression, as a camera stream delivers frames."""
    noise = rng.normal(0.0, spec.noise_sigma, image.shape[:2])[..., None]
    noisy = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise RuntimeError("OpenCV could not JPEG-encode and decode a clip frame")
    return decoded


def _walker(image: np.ndarray, index: int, spec: ClipSpec) -> np.ndarray:
    """Draw a person-sized dark figure walking in from the left; return its truth mask."""
    width, height = spec.size
    truth = np.zeros((height, width), np.uint8)
    if spec.walker_from is None or index < spec.walker_from:
        return truth
    step = index - spec.walker_from
    w, h = max(4, width // 28), max(8, height // 5)
    x = -w + round((step + 1) * width / 120)
    y = height // 2
    body = np.zeros_like(truth)
    cv2.ellipse(body, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 255, -1)
    cv2.circle(body, (x + w // 2, y - w // 3), max(2, w // 3), 255, -1)
    image[body > 0] = (40, 50, 70)
    return body


def _frames(render: Callable[[int, np.random.Generator], np.ndarray], spec: ClipSpec) -> Clip:
    rng = np.random.default_rng(spec.seed + 1000)
    for index in range(spec.frames):
        image = render(index, rng)
        truth = _walker(image, index, spec)
        yield _finish(image, spec, rng), truth


def noise_only(spec: ClipSpec) -> Clip:
    """A still scene: sensor noise and compression only."""
    base = background(spec)
    return _frames(lambda i, rng: base.copy(), spec)


def lighting(spec: ClipSpec) -> Clip:
    """Slow drift (clouds) plus sudden steps: +45 % at a third of the clip, -35 % at two thirds."""
    base = background(spec).astype(np.float32)

    def render(index: int, rng: np.random.Generator) -> np.ndarray:
        gain = 1.0 + 0.1 * math.sin(2 * math.pi * index / (spec.fps * 40))
        if index >= spec.frames // 3:
            gain *= 1.45
        if index >= 2 * spec.frames // 3:
            gain *= 0.65
        return np.clip(base * gain, 0, 255).astype(np.uint8)

    return _frames(render, spec)


def local_light(spec: ClipSpec) -> Clip:
    """A street light switching on: a soft pool of light appears on part of the scene and stays."""
    base = background(spec).astype(np.float32)
    width, height = spec.size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pool = np.exp(-(((xx - 0.7 * width) / (0.25 * width)) ** 2 + ((yy - 0.6 * height) / (0.3 * height)) ** 2))
    lit = np.clip(base * (1.0 + 0.6 * pool[..., None]) + 25 * pool[..., None], 0, 255).astype(np.uint8)
    dark = base.astype(np.uint8)
    return _frames(lambda i, rng: (lit if i >= spec.frames // 2 else dark).copy(), spec)


def shake(spec: ClipSpec) -> Clip:
    """Camera shake: the whole scene jitters by up to 1.5 % of the width (wind on a pole)."""
    base = background(spec)
    width, height = spec.size
    amplitude = 0.015 * width

    def render(index: int, rng: np.random.Generator) -> np.ndarray:
        dx, dy = rng.uniform(-amplitude, amplitude), rng.uniform(-amplitude / 2, amplitude / 2)
        matrix = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
        return cv2.warpAffine(base, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)

    return _frames(render, spec)


def swaying_trees(spec: ClipSpec) -> Clip:
    """Foliage on a third of the picture swaying in gusts (leaves shift by a few pixels each frame)."""
    rng0 = np.random.default_rng(spec.seed + 7)
    base = background(spec)
    width, height = spec.size
    cells = rng0.integers(0, 2, (height // 3, width // 3)).astype(np.float32)
    leaves = cv2.resize(cells, (width, height), interpolation=cv2.INTER_LINEAR)
    foliage = np.dstack([40 + 80 * leaves, 70 + 120 * leaves, 30 + 60 * leaves]).astype(np.uint8)
    crown = np.zeros((height, width), np.uint8)
    cv2.ellipse(crown, (width // 4, height // 3), (width // 5, height // 3), 0, 0, 360, 255, -1)
    cv2.ellipse(crown, (4 * width // 5, height // 4), (width // 6, height // 4), 0, 0, 360, 255, -1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    amplitude = 0.012 * width

    def render(index: int, rng: np.random.Generator) -> np.ndarray:
        t = index / spec.fps
        gust = 0.5 + 0.5 * math.sin(2 * math.pi * t / 7.0) ** 2
        shift = amplitude * gust * np.sin(2 * math.pi * (0.9 * t) + yy / 37.0 + xx / 53.0)
        map_x = xx + shift
        map_y = yy + 0.5 * shift
        moved_foliage = cv2.remap(foliage, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        moved_crown = cv2.remap(crown, map_x, map_y, cv2.INTER_NEAREST)
        image = base.copy()
        image[moved_crown > 0] = moved_foliage[moved_crown > 0]
        return image

    return _frames(render, spec)


def rain(spec: ClipSpec) -> Clip:
    """Rain: many short bright diagonal streaks, different on every frame."""
    base = background(spec)
    width, height = spec.size

    def render(index: int, rng: np.random.Generator) -> np.ndarray:
        image = base.copy()
        drops = rng.integers(0, [width, height], (150, 2))
        length = max(3, height // 40)
        for x, y in drops:
            cv2.line(image, (int(x), int(y)), (int(x) + length // 3, int(y) + length), (200, 200, 200), 1)
        return image

    return _frames(render, spec)


CLIPS: dict[str, Callable[[ClipSpec], Clip]] = {
    "noise": noise_only,
    "lighting": lighting,
    "street_light": local_light,
    "shake": shake,
    "trees": swaying_trees,
    "rain": rain,
}
