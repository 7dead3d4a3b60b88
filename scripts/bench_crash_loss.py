"""Footage lost per SIGKILL: a recording writer killed at random points, then recovered as at start.

A child process records a synthetic camera in real time (frames paced at the camera's rate, as a
camera delivers them) through the real Recorder and ring buffer, and is SIGKILLed at a random point of
a segment; the next start's recovery closes the segment in flight (`storage/recovery`). Lost = from the
end of what the recovered ring holds to the end of the last frame the recorder had taken: the frames
still inside the encoder (x264 look-ahead and frame threads) or not yet sealed. Median and maximum over
the kills (10, 3 with `--quick`), for the default x264 preset (veryfast) and for ultrafast, at 10 fps,
640x360, 10 s segments. Before recovery kept the segment in flight, a kill lost the whole of it (half a
segment on average).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from tests.storage_support import WriterSettings, measure_crash_loss

FPS = 10.0


def run(quick: bool) -> dict[str, Any]:
    """The `crash_loss` entry of bench.json."""
    kills = 3 if quick else 10
    result: dict[str, Any] = {"kills": kills, "fps": FPS, "size": [640, 360], "segment_seconds": 10.0}
    for preset in ("veryfast", "ultrafast"):
        settings = WriterSettings(size=(640, 360), fps=FPS, segment_seconds=10.0, preset=preset, paced=True)
        with tempfile.TemporaryDirectory(prefix="bench-crash-") as work:
            losses = measure_crash_loss(Path(work), kills, settings)
        result[preset] = {
            "median_lost_s": round(statistics.median(losses), 3),
            "max_lost_s": round(max(losses), 3),
            "losses_s": [round(loss, 3) for loss in losses],
        }
    return result
