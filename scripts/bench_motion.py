"""Cost of the motion detector per frame (issue 7's aim: <= 2 ms per 1080p frame on one core).

`MotionDetector.detect` on masked frames of the synthetic scene (textured, noisy, walkers moving), the
downscale to the detection width included, at the default settings. Figures are the median over several
repetitions of a timed loop, in milliseconds per frame; scripts/bench.py pins the process to one core.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from edge_agent.camera.frames import MaskedFrame
from edge_agent.camera.motion import MotionDetector
from edge_agent.camera.sources.synthetic import SceneSettings, SyntheticSource
from edge_agent.formats.config import MotionConfig

SIZES = {"320x240": (320, 240), "640x360": (640, 360), "1920x1080": (1920, 1080)}


def _frames(size: tuple[int, int], count: int) -> list[MaskedFrame]:
    scene = SyntheticSource("bench", SceneSettings(size=size, objects=3))
    frames = []
    for _ in range(count):
        frame = scene.read()
        frames.append(
            MaskedFrame(frame.camera_id, frame.seq, frame.captured_at, frame.image, frame.pixel_format)
        )
    return frames


def _median_ms(size: tuple[int, int], frames: list[MaskedFrame], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        detector = MotionDetector(MotionConfig(), size, None)
        for frame in frames[:5]:  # past the first-frame initialisation
            detector.detect(frame)
        started = time.perf_counter()
        for frame in frames[5:]:
            detector.detect(frame)
        timings.append((time.perf_counter() - started) * 1000.0 / (len(frames) - 5))
    return round(statistics.median(timings), 3)


def run(quick: bool) -> dict[str, Any]:
    """Milliseconds per frame of `detect`, per source resolution, at the default detection width."""
    count, repeats = (30, 3) if quick else (105, 7)
    results: dict[str, Any] = {"detect_width": MotionConfig().detect_width}
    for label, size in SIZES.items():
        results[f"ms_per_frame_{label}"] = _median_ms(size, _frames(size, count), repeats)
    return results
