"""The whole camera path against the raw encoder, on the same real 1080p frames, same run, one core.

Frames: `../shared/datasets/video/vtest.avi` (pedestrians on a square, 768x576 at 10 fps), scaled to
1920x1080 (an upscaled picture is smoother than a native 1080p sensor's, so x264 works a little less
than it would on a real 1080p camera; both sides of the ratio see the same frames).

- `raw_encoder_ms`: `VideoEncoder.encode` alone (BGR -> I420, then libx264 with the storage defaults).
- `camera_path_ms`: what a camera's worker does with each frame: privacy mask (two fill masks), motion
  detection and event tracking (`camera.stage`), then the recorder: encode, seal (AES-GCM, SHA-256,
  journal), ring buffer (fsync, rename, index row at each segment).
- `path_vs_raw`: raw / path in frames per second (1.0: the path costs nothing beyond the encoder).
Times are process CPU time per frame (what the core spends, whatever else the shared machine runs),
medians of interleaved repetitions; wall-clock medians are reported beside them.

`x264_pi5`: whether the default libx264 settings hold 10 fps at 1080p on one Pi 5 core, from the path's
CPU time here times `PI5_FACTOR` (see below).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_agent.camera.frames import Frame
from edge_agent.camera.stage import MotionStage
from edge_agent.formats.config import CameraConfig, StorageConfig
from edge_agent.storage.encoder import X264_LOOKAHEAD, X264_THREADS, VideoEncoder
from edge_agent.storage.recorder import Recorder
from edge_agent.storage.ringbuffer import RingBuffer

VIDEO = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "video" / "vtest.avi"
SIZE = (1920, 1080)
FPS = 10.0
T0 = 1_700_000_000.0
# How much slower one Pi 5 core (Cortex-A76 at 2.4 GHz, NEON) runs this path than one core of the bench
# machine (an AMD EPYC at 2.6 GHz base, AVX2). Not measured on a Pi: a conservative figure from
# published single-core results (Geekbench 6: about 800 for a Pi 5 against 1,400 to 1,900 for EPYC
# server cores) and x264's hand-written NEON being less complete than its AVX2; 3x where 2x is likelier.
PI5_FACTOR = 3.0


def real_frames(count: int) -> list[np.ndarray]:
    """The first `count` frames of the dataset video, as 1080p BGR images."""
    if not VIDEO.is_file():
        raise FileNotFoundError(f"{VIDEO}: the shared datasets are beside the project (see its README)")
    capture = cv2.VideoCapture(str(VIDEO))
    images: list[np.ndarray] = []
    try:
        while len(images) < count:
            ok, image = capture.read()
            if not ok:
                break
            images.append(np.ascontiguousarray(cv2.resize(image, SIZE, interpolation=cv2.INTER_LINEAR)))
    finally:
        capture.release()
    return images


def camera() -> CameraConfig:
    """A 1080p 10 fps camera with two private windows and a street zone, recording continuously."""
    return CameraConfig.model_validate(
        {
            "id": "bench",
            "source": "synthetic",
            "resolution": list(SIZE),
            "fps": FPS,
            "masks": [
                {"name": "window", "points": [[0.05, 0.05], [0.3, 0.05], [0.3, 0.35], [0.05, 0.35]]},
                {"name": "garden", "points": [[0.7, 0.6], [0.95, 0.6], [0.95, 0.95], [0.7, 0.95]]},
            ],
            "motion": {"zones": [{"name": "square", "points": [[0, 0.3], [1, 0.3], [1, 1], [0, 1]]}]},
        }
    )


def raw_encoder(images: list[np.ndarray], storage: StorageConfig) -> tuple[float, float]:
    """(cpu, wall) seconds per frame of the encoder alone."""
    encoder = VideoEncoder(storage, SIZE, FPS, T0)
    cpu, wall = time.process_time(), time.perf_counter()
    for index, image in enumerate(images):
        encoder.encode(image, T0 + index / FPS)
    encoder.flush()
    return (time.process_time() - cpu) / len(images), (time.perf_counter() - wall) / len(images)


def camera_path(images: list[np.ndarray], storage: StorageConfig) -> tuple[float, float]:
    """(cpu, wall) seconds per frame of mask -> motion -> encode -> seal -> ring buffer."""
    cam = camera()
    stage = MotionStage.for_camera(cam)
    with tempfile.TemporaryDirectory(prefix="bench-path-") as root:
        ring = RingBuffer(Path(root), storage.model_copy(update={"path": Path(root)}), lambda: T0)
        recorder = Recorder(
            cam, storage, ring, Ed25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
        )
        # A source hands over a new buffer per frame, which the mask then paints: copy outside the timing.
        copies = [image.copy() for image in images]
        cpu, wall = time.process_time(), time.perf_counter()
        for index, image in enumerate(copies):
            output = stage.observe(stage.mask(Frame(cam.id, index, T0 + index / FPS, image)))
            recorder.on_frame(output.frame, stage.event_open, stage.event_start)
        recorder.close()
        elapsed = (time.process_time() - cpu) / len(images), (time.perf_counter() - wall) / len(images)
        assert recorder.stats().errors == 0 and recorder.stats().packets == len(images)
        ring.close()
    return elapsed


def run(quick: bool) -> dict[str, Any]:
    """The path/raw figures (see the module docstring)."""
    count, repeats = (30, 3) if quick else (80, 7)
    images = real_frames(count)
    storage = StorageConfig.model_validate({"min_free_bytes": 0, "segment_seconds": 2.0})
    raw: list[tuple[float, float]] = []
    path: list[tuple[float, float]] = []
    camera_path(images[:10], storage)  # warm caches and imports
    for _ in range(repeats):
        raw.append(raw_encoder(images, storage))
        path.append(camera_path(images, storage))
    raw_cpu, raw_wall = (statistics.median(r[i] for r in raw) for i in (0, 1))
    path_cpu, path_wall = (statistics.median(p[i] for p in path) for i in (0, 1))
    pi5_ms = path_cpu * PI5_FACTOR * 1000
    return {
        "frames": f"{count} frames of vtest.avi scaled to {SIZE[0]}x{SIZE[1]}",
        "x264": f"preset {storage.preset}, crf {storage.crf}, threads {X264_THREADS},"
        f" rc-lookahead {X264_LOOKAHEAD}",
        "raw_encoder_ms": round(raw_cpu * 1000, 2),
        "camera_path_ms": round(path_cpu * 1000, 2),
        "path_vs_raw": round(raw_cpu / path_cpu, 3),
        "raw_encoder_wall_ms": round(raw_wall * 1000, 2),
        "camera_path_wall_ms": round(path_wall * 1000, 2),
        "path_vs_raw_wall": round(raw_wall / path_wall, 3),
        "x264_pi5": {
            "factor": PI5_FACTOR,
            "path_ms_per_frame": round(pi5_ms, 1),
            "max_fps_one_core": round(1000 / pi5_ms, 1),
            "holds_10_fps": pi5_ms < 100.0,
        },
    }


if __name__ == "__main__":
    import json
    import os

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    print(json.dumps(run(quick=False), indent=2))
