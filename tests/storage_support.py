"""Helpers for the storage tests: keys, masked frames, a recording run, plaintext detectors.

Also a child writer for the SIGKILL tests: `python -m tests.storage_support ROOT KEYDIR [options]` records
a synthetic camera forever, printing each frame taken and each segment made durable; `run_and_kill` and
`measure_crash_loss` drive it (the latter also for `scripts/bench_crash_loss.py`).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_agent.camera.frames import Frame, MaskedFrame
from edge_agent.camera.privacy import PrivacyMasker
from edge_agent.camera.sources.synthetic import SceneSettings, SyntheticSource
from edge_agent.formats.config import CameraConfig, StorageConfig
from edge_agent.formats.keys import (
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
    load_x25519_private,
)
from edge_agent.storage.recorder import Recorder
from edge_agent.storage.ringbuffer import RingBuffer

PROJECT_ROOT = Path(__file__).resolve().parent.parent

FOOTAGE_T0 = 1_700_000_000.0


def footage_clock() -> float:
    """The ring buffer's clock for footage simulated from FOOTAGE_T0 (2023) on, minutes or hours of it:
    a day later, so that none of it is past retention, which reads hide."""
    return FOOTAGE_T0 + 86400.0


# The left third of the picture is private (a fill mask); colour chosen to stand out after decoding.
MASK_POINTS = [(0.0, 0.0), (0.34, 0.0), (0.34, 1.0), (0.0, 1.0)]
MASK_COLOR = (40, 200, 90)


@dataclass(frozen=True)
class Keys:
    """A device identity and a CSU sealing pair, in memory."""

    device: Ed25519PrivateKey
    csu: X25519PrivateKey


def make_keys() -> Keys:
    """Fresh keys for one test."""
    return Keys(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())


def camera(
    recording: str = "continuous",
    size: tuple[int, int] = (320, 240),
    fps: float = 10.0,
    pre_roll: float = 1.0,
    post_roll: float = 1.0,
    camera_id: str = "cam1",
) -> CameraConfig:
    """A camera with one fill mask over the left third."""
    return CameraConfig.model_validate(
        {
            "id": camera_id,
            "source": "synthetic:3",
            "resolution": list(size),
            "fps": fps,
            "masks": [{"name": "left", "points": MASK_POINTS, "color": list(MASK_COLOR)}],
            "motion": {"pre_roll_seconds": pre_roll, "post_roll_seconds": post_roll},
            "recording": recording,
        }
    )


def storage(root: Path, **fields: object) -> StorageConfig:
    """Storage settings for tests: short segments, no free-space floor unless asked."""
    values: dict[str, object] = {
        "path": root,
        "min_free_bytes": 0,
        "segment_seconds": 2.0,
        "gop_seconds": 1.0,
        "preset": "ultrafast",
    }
    values.update(fields)
    return StorageConfig.model_validate(values)


def masker(cam: CameraConfig) -> PrivacyMasker:
    """The real privacy mask of the camera."""
    return PrivacyMasker(list(cam.masks))


def synthetic_frames(
    cam: CameraConfig, count: int, start_ts: float = 1_700_000_000.0
) -> Iterator[tuple[Frame, MaskedFrame]]:
    """(original copy, masked) frames of the synthetic street scene, at the camera's fps."""
    source = SyntheticSource(
        cam.id, SceneSettings(size=cam.resolution, fps=cam.fps, seed=3), start_ts=start_ts
    )
    mask = masker(cam)
    for _ in range(count):
        frame = source.read()
        original = Frame(
            frame.camera_id, frame.seq, frame.captured_at, frame.image.copy(), frame.pixel_format
        )
        yield original, mask.apply(frame)


def video_frames(
    path: Path, cam: CameraConfig, count: int, start_ts: float = 1_700_000_000.0
) -> Iterator[tuple[Frame, MaskedFrame]]:
    """(original copy, masked) frames of a real video file, resized to the camera's resolution."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    mask = masker(cam)
    try:
        for seq in range(count):
            ok, image = capture.read()
            if not ok:
                return
            image = np.ascontiguousarray(cv2.resize(image, cam.resolution))
            frame = Frame(cam.id, seq, start_ts + seq / cam.fps, image)
            original = Frame(cam.id, seq, frame.captured_at, image.copy())
            yield original, mask.apply(frame)
    finally:
        capture.release()


def record(
    ring: RingBuffer,
    cam: CameraConfig,
    st: StorageConfig,
    keys: Keys,
    frames: Iterator[tuple[Frame, MaskedFrame]],
    events: tuple[float, float] | None = None,
) -> Recorder:
    """Feed frames to a Recorder (event open between the two times, if given) and close it."""
    recorder = Recorder(cam, st, ring, keys.device, keys.csu.public_key(), device_id="dev1")
    for _, masked in frames:
        event_open = events is not None and events[0] <= masked.captured_at < events[1]
        recorder.on_frame(masked, event_open)
    recorder.close()
    return recorder


# ---- plaintext detectors (each proven able to fire by the tests, on plaintext) ---------------------

# A JPEG image: start of image, then a marker segment whose length leads to another marker.
_JPEG_SOI = re.compile(rb"\xff\xd8\xff([\xc0-\xfe])(..)", re.DOTALL)
# An Annex B start code with a parameter-set or IDR NAL header (forbidden bit 0, nal_ref_idc > 0).
_H264_NAL = re.compile(rb"\x00\x00\x00\x01([\x25\x45\x65\x27\x47\x67\x28\x48\x68])")


def jpeg_markers(data: bytes) -> int:
    """How many plausible JPEG images start in `data`."""
    found = 0
    for match in _JPEG_SOI.finditer(data):
        length = int.from_bytes(match.group(2), "big")
        following = match.start() + 4 + length
        if length >= 2 and data[following : following + 1] == b"\xff":
            found += 1
    return found


def h264_start_codes(data: bytes) -> int:
    """How many H.264 start codes followed by an SPS, PPS or IDR NAL header are in `data`."""
    return len(_H264_NAL.findall(data))


def pixel_runs(originals: list[Frame], rows: int = 6, run_pixels: int = 16) -> list[bytes]:
    """Runs of original BGR pixels (48 bytes each) taken from textured places of the frames."""
    runs = []
    for frame in originals:
        height, width = frame.image.shape[:2]
        for i in range(rows):
            y = (i + 1) * height // (rows + 1)
            x = width // 2 + (i * 7) % (width // 4)
            run = frame.image[y, x : x + run_pixels].tobytes()
            if len(set(run)) > 8:  # skip flat runs: they say nothing about footage
                runs.append(run)
    return runs


def files_under(root: Path) -> list[Path]:
    """Every regular file under `root`."""
    return sorted(p for p in root.rglob("*") if p.is_file())


# ---- the child writer of the SIGKILL test -----------------------------------------------------------


@dataclass(frozen=True)
class WriterSettings:
    """What the child writer records: frame size, rate, segment length, x264 preset; `paced` feeds
    frames in real time (as a camera does) instead of as fast as the encoder takes them."""

    size: tuple[int, int] = (160, 120)
    fps: float = 10.0
    segment_seconds: float = 1.0
    preset: str = "ultrafast"
    paced: bool = False

    def argv(self) -> list[str]:
        """The child's command-line options for these settings."""
        width, height = self.size
        options = [f"--size={width}x{height}", f"--fps={self.fps}", f"--preset={self.preset}"]
        return [*options, f"--segment-seconds={self.segment_seconds}", *(["--paced"] if self.paced else [])]


def writer_main(root: Path, key_dir: Path, settings: WriterSettings) -> None:
    """Record a synthetic camera with simulated time until killed, recovering at start like the agent.

    Prints `ready`, then `frame <capture time>` once the recorder has taken each frame and
    `committed <sequence> <sha256>` after each segment is durable.
    """
    device = load_ed25519_private(key_dir / "device_ed25519.pem")
    csu_public = load_x25519_private(key_dir / "csu_x25519.pem").public_key()
    cam = camera(size=settings.size, fps=settings.fps)
    st = storage(
        root,
        segment_seconds=settings.segment_seconds,
        gop_seconds=min(1.0, settings.segment_seconds / 2),
        preset=settings.preset,
    )
    ring = RingBuffer(root, st, footage_clock, device_key=device)
    last = ring.stats().get(cam.id, {}).get("newest_ts") or FOOTAGE_T0
    recorder = Recorder(cam, st, ring, device, csu_public, device_id="dev1")
    print("ready", flush=True)
    committed = recorder.stats().segments
    started = time.monotonic()
    for index, (_, masked) in enumerate(synthetic_frames(cam, 10**9, start_ts=float(last) + 1.0)):
        if settings.paced:
            time.sleep(max(0.0, started + index / settings.fps - time.monotonic()))
        recorder.on_frame(masked, False)
        print(f"frame {masked.captured_at!r}", flush=True)
        stats = recorder.stats()
        if stats.segments != committed:
            committed = stats.segments
            newest = ring.segments(cam.id)[-1]
            print(f"committed {newest.sequence} {newest.sha256}", flush=True)


@dataclass
class KilledRun:
    """What a child writer reported before its SIGKILL."""

    committed: list[tuple[int, str]]
    last_frame_ts: float | None


def run_and_kill(
    root: Path, key_dir: Path, delay: float, settings: WriterSettings, mid_segment: bool = False
) -> KilledRun:
    """Start the child writer, SIGKILL it `delay` s after it is ready; what it had reported.

    `mid_segment` instead kills it once three frames were taken after a segment was committed: the
    segment in flight then holds written records (with `settings.paced`, a frame interval of margin),
    where a random kill may also land between a commit and the next segment's first record.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage_support", str(root), str(key_dir), *settings.argv()],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines: list[str] = []
    ready = threading.Event()
    inside = threading.Event()

    def read(stream: IO[str]) -> None:
        since_commit: int | None = None
        for line in stream:
            if line.strip() == "ready":
                ready.set()
                continue
            lines.append(line)
            if line.startswith("committed"):
                since_commit = 0
            elif since_commit is not None:
                since_commit += 1
                if since_commit >= 3:
                    inside.set()
        ready.set()
        inside.set()

    reader = threading.Thread(target=read, args=(child.stdout,), daemon=True)
    reader.start()
    ready.wait(60)
    if mid_segment:
        inside.wait(60)
    else:
        time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    reader.join(10)
    run = KilledRun([], None)
    for line in lines:
        kind, *fields = line.split()
        if kind == "committed":
            run.committed.append((int(fields[0]), fields[1]))
        elif kind == "frame":
            run.last_frame_ts = float(fields[0])
    return run


def measure_crash_loss(work: Path, kills: int, settings: WriterSettings, seed: int = 1) -> list[float]:
    """Seconds of footage lost by each of `kills` SIGKILLs of a recording writer, recovery included.

    Lost = from the end of what the recovered ring holds to the end of the last frame the recorder had
    taken (the frames it was handed but had not written yet: inside the encoder, or not yet sealed).
    Kills fall at random points of the segments.
    """
    keys = make_writer_keys(work / "keys")
    root = work / "ring"
    rng = random.Random(seed)
    losses = []
    for _ in range(kills):
        run = run_and_kill(root, work / "keys", rng.uniform(1.0, 1.0 + settings.segment_seconds), settings)
        ring = RingBuffer(root, storage(root), footage_clock, device_key=keys.device)
        newest = max((r.end_ts for r in ring.segments("cam1")), default=None)
        ring.close()
        if run.last_frame_ts is not None and newest is not None:
            losses.append(max(0.0, run.last_frame_ts + 1 / settings.fps - newest))
    return losses


def make_writer_keys(key_dir: Path) -> Keys:
    """Key files for the child writer; returns them loaded."""
    generate_device_key(key_dir)
    generate_csu_keys(key_dir)
    return Keys(
        load_ed25519_private(key_dir / "device_ed25519.pem"), load_x25519_private(key_dir / "csu_x25519.pem")
    )


def _writer_settings(argv: list[str]) -> WriterSettings:
    parser = argparse.ArgumentParser(description="the child writer of the SIGKILL tests")
    parser.add_argument("--size", default="160x120")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--segment-seconds", type=float, default=1.0)
    parser.add_argument("--preset", default="ultrafast")
    parser.add_argument("--paced", action="store_true")
    args = parser.parse_args(argv)
    width, height = (int(n) for n in args.size.split("x"))
    return WriterSettings((width, height), args.fps, args.segment_seconds, args.preset, args.paced)


if __name__ == "__main__":
    writer_main(Path(sys.argv[1]), Path(sys.argv[2]), _writer_settings(sys.argv[3:]))
