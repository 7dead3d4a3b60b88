"""Clips made from the dataset footage, and the checks of a PyAV source's frames against OpenCV's decode
(tests of the file and stream sources)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

from edge_agent.camera.frames import Frame, PixelFormat
from edge_agent.camera.sources import FrameSource

# A PyAV source's I420 turned to BGR by OpenCV vs OpenCV's own (swscale) BGR of the same input: about
# 46 dB; two neighbouring frames of the footage differ by 22 to 27 dB.
MIN_PSNR = 40.0


def encode_clip(
    datasets: Path, path: Path, size: tuple[int, int], codec: str, frames: int, container: str | None = None
) -> Path:
    """The first `frames` frames of vtest.avi, scaled to `size`, encoded at 10 fps with `codec` (libx264:
    with B-frames, its default) in `container` (by `path`'s suffix when None)."""
    with (
        av.open(str(datasets / "video" / "vtest.avi")) as source,
        av.open(str(path), "w", format=container) as out,
    ):
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index, decoded in enumerate(source.decode(video=0)):
            if index == frames:
                break
            scaled = decoded.reformat(width=size[0], height=size[1], format="yuv420p")
            scaled.pts = None
            out.mux(stream.encode(scaled))
        out.mux(stream.encode(None))
    return path


def read_all(source: FrameSource, limit: int = 1000) -> list[Frame]:
    """The source's frames until it returns None (or `limit` of them)."""
    frames = []
    while len(frames) < limit and (frame := source.read()) is not None:
        frames.append(frame)
    return frames


def opencv_frames(path: Path) -> list[np.ndarray]:
    """Every frame of `path` as OpenCV decodes it (BGR)."""
    capture = cv2.VideoCapture(str(path))
    images = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        images.append(image)
    capture.release()
    return images


def assert_i420_like_opencv(frames: list[Frame], path: Path, size: tuple[int, int], count: int) -> None:
    """Every frame is I420 of `size` that owns its contiguous pixels, matches OpenCV's decode of `path`,
    and is numbered in order; and the comparison can fail (a frame against its neighbour)."""
    reference = opencv_frames(path)
    assert len(frames) == len(reference) == count  # frames held back for B-frames came out at the end
    width, height = size
    for frame, expected in zip(frames, reference, strict=True):
        assert frame.pixel_format is PixelFormat.I420 and frame.size == size
        assert frame.image.shape == (height * 3 // 2, width) and frame.image.dtype == np.uint8
        assert frame.image.flags.c_contiguous
        # The pixels belong to the frame: no buffer of PyAV's is behind them.
        assert frame.image.base is None or frame.image.base.flags.owndata
        assert cv2.PSNR(cv2.cvtColor(frame.image, cv2.COLOR_YUV2BGR_I420), expected) > MIN_PSNR
    assert cv2.PSNR(frames[5].bgr(), reference[6]) < MIN_PSNR
    assert [f.seq for f in frames] == list(range(count))
