"""Per-frame cost of the capture path: privacy mask, then mask + motion detection (issue 2's aim:
mask + motion >= 300 fps at 1080p on one core).

Frames come from the synthetic scene (textured, noisy, with walkers) so the detector does real work.
Each figure is the median over several repetitions of a timed loop.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from edge_agent.camera.frames import Frame
from edge_agent.camera.motion import MotionDetector
from edge_agent.camera.privacy import PrivacyMasker
from edge_agent.camera.sources.synthetic import SceneSettings, SyntheticSource
from edge_agent.formats.config import MaskMode, MotionConfig, PrivacyMaskConfig, ZoneConfig

WINDOW = [(0.05, 0.05), (0.3, 0.05), (0.3, 0.35), (0.05, 0.35)]
GARDEN = [(0.7, 0.6), (0.95, 0.6), (0.95, 0.95), (0.7, 0.95)]
STREET = ZoneConfig(name="street", points=[(0.0, 0.3), (1.0, 0.3), (1.0, 1.0), (0.0, 1.0)])
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def _frames(size: tuple[int, int], count: int) -> list[Frame]:
    scene = SyntheticSource("bench", SceneSettings(size=size, objects=2))
    return [scene.read() for _ in range(count)]


def _median_fps(work: Any, frames: list[Frame], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for frame in frames:
            work(frame)
        rates.append(len(frames) / (time.perf_counter() - started))
    return round(statistics.median(rates), 1)


def run(quick: bool) -> dict[str, Any]:
    """Frames per second on one core for masking (each mode) and mask + motion, per resolution."""
    count, repeats = (20, 3) if quick else (60, 7)
    results: dict[str, Any] = {}
    for label, size in SIZES.items():
        frames = _frames(size, count)
        row: dict[str, float] = {}
        for mode in MaskMode:
            masks = [PrivacyMaskConfig(points=WINDOW, mode=mode), PrivacyMaskConfig(points=GARDEN)]
            row[f"mask_{mode}_fps"] = _median_fps(PrivacyMasker(masks).apply, frames, repeats)
        masker = PrivacyMasker([PrivacyMaskConfig(points=WINDOW), PrivacyMaskConfig(points=GARDEN)])
        detector = MotionDetector(MotionConfig(zones=[STREET]), size, masker.mask_for(size))

        row["mask_fill_and_motion_fps"] = _median_fps(
            lambda frame, masker=masker, detector=detector: detector.detect(masker.apply(frame)),
            frames,
            repeats,
        )
        results[label] = row
    return results
