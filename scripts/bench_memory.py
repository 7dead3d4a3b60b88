"""Memory of the device agent: peak and resident set size with 1, 2 and 4 cameras at 1080p 10 fps, and
with the shipped example's two cameras (1080p 10 fps + 720p 8 fps), each fed from a video file (the
`file` source: PyAV decoding to I420), recording continuously with the default storage settings.

The files are made here from `../shared/datasets/video/vtest.avi` (real pedestrians, scaled to 1080p
and 720p, H.264) in a temporary folder, and looped by the source. Each case runs the real agent
(`edge-agent run`, MQTT off, clip server on loopback) in its own process for `seconds`, sampling
/proc/PID/status: `peak_rss_mb` is VmHWM, `rss_mb` and `anon_mb` (RssAnon: what is the agent's own,
not shared library pages) the last sample, `cpu_percent` of one core over the run. `none` is the agent
with no camera (imports, clip server, ring buffer). The agent gets every core, as on a device.

Where it goes (measured on this machine when this was written, 2 cores, RSS):
- about 109 MB before any camera: Python and its libraries (OpenCV, FFmpeg, numpy, cryptography,
  aiohttp, pydantic), about 56 MB of it shared library pages;
- per 1080p camera, about 80 MB: libx264 about 45 (its frames with their half-pel planes: 10 MB for
  each reference, 6 for each other; look-ahead 1, one thread), the H.264 file decoder about 25, frames
  in flight about 3 MB each (I420 from the source on: half of BGR, and no second copy for the encoder);
- the synthetic scene renders I420 too (8 MB of scene at 1080p; its BGR noise bank was 174 MB once).
What a board with a hardware encoder (a Pi 4's h264_v4l2m2m) or a camera that delivers YUV itself (the
Pi camera) holds instead of the x264 and decoder shares cannot be measured here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import yaml

from edge_agent.formats.keys import generate_csu_keys, generate_device_key

ALL_CORES = True
PROJECT = Path(__file__).resolve().parent.parent
VIDEO = PROJECT.parent / "shared" / "datasets" / "video" / "vtest.avi"
MASK = {"name": "window", "points": [[0.05, 0.05], [0.3, 0.05], [0.3, 0.35], [0.05, 0.35]]}


def make_video(path: Path, size: tuple[int, int], frames: int) -> Path:
    """The dataset video scaled to `size`, H.264 at 10 fps, `frames` long (looped by the source)."""
    capture = cv2.VideoCapture(str(VIDEO))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for _ in range(frames):
            ok, image = capture.read()
            if not ok:
                break
            scaled: np.ndarray = cv2.resize(image, size)
            frame = av.VideoFrame.from_ndarray(scaled, format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    capture.release()
    return path


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0]) // 1024
    return fields


def run_agent(
    root: Path, cameras: list[tuple[Path | str, tuple[int, int], float]], seconds: float
) -> dict[str, Any]:
    """Start the agent with these cameras, sample its memory for `seconds`, stop it."""
    keys = generate_device_key(root / "keys", overwrite=True)
    csu = generate_csu_keys(root / "csu", overwrite=True)
    config = {
        "site_id": "bench",
        "device_id": "pi",
        "cameras": [
            {"id": f"cam{i}", "source": str(src), "resolution": list(size), "fps": fps, "masks": [MASK]}
            for i, (src, size, fps) in enumerate(cameras)
        ],
        "storage": {"path": str(root / f"segments-{len(cameras)}"), "min_free_bytes": 0},
        "mqtt": {"enabled": False},
        "clip_server": {"bind": "127.0.0.1", "port": 0, "audit_log": str(root / "audit.jsonl")},
        "keys": {"device_key": str(keys.private), "csu_sealing_public_key": str(csu.sealing.public)},
    }
    (root / "site.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "edge_agent.commands.cli", "run", "--config", str(root / "site.yaml")]
    agent = subprocess.Popen([*command, "--no-hotplug"], cwd=PROJECT, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    last: dict[str, int] = {}
    try:
        while time.monotonic() - started < seconds and agent.poll() is None:
            time.sleep(0.5)
            last = _status(agent.pid)
        ticks = sum(int(v) for v in Path(f"/proc/{agent.pid}/stat").read_text().split()[13:15])
        cpu = ticks / os.sysconf("SC_CLK_TCK") / (time.monotonic() - started) * 100
    finally:
        agent.terminate()
        agent.wait(30)
    if not last:
        raise RuntimeError(f"the agent stopped at once (exit {agent.returncode})")
    return {
        "peak_rss_mb": last["VmHWM"],
        "rss_mb": last["VmRSS"],
        "anon_mb": last["RssAnon"],
        "cpu_percent": round(cpu),
    }


def run(quick: bool) -> dict[str, Any]:
    """The memory figures (see the module docstring)."""
    seconds = 15.0 if quick else 40.0
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        root = Path(folder)
        full = make_video(root / "vtest-1080p.mp4", (1920, 1080), 100 if quick else 300)
        hd = make_video(root / "vtest-720p.mp4", (1280, 720), 100 if quick else 300)
        cases: dict[str, list[tuple[Path | str, tuple[int, int], float]]] = {
            "none": [],
            "1x1080p10": [(full, (1920, 1080), 10.0)],
            "2x1080p10": [(full, (1920, 1080), 10.0)] * 2,
            "4x1080p10": [(full, (1920, 1080), 10.0)] * 4,
            "example_1080p10_720p8": [(full, (1920, 1080), 10.0), (hd, (1280, 720), 8.0)],
            "example_synthetic_sources": [("synthetic", (1920, 1080), 10.0), ("synthetic", (1280, 720), 8.0)],
        }
        results: dict[str, Any] = {"seconds_each": seconds, "cores": len(os.sched_getaffinity(0))}
        for name, cameras in cases.items():
            results[name] = run_agent(root, cameras, seconds)
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
