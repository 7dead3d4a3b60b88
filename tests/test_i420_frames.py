"""Frames travel in I420 downstream of the mask: one conversion (or none, for an I420 source) serves the
encoder and the detector (issue 14: memory and time, measured)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.camera.frames import Frame, PixelFormat, i420_planes
from edge_agent.camera.motion import EventTracker, MotionDetector
from edge_agent.camera.stage import MotionStage, StageOutput
from edge_agent.formats.config import CameraConfig, StorageConfig
from edge_agent.storage.encoder import VideoEncoder, decode_packets

FILL = (40, 200, 90)
FILL_YUV = tuple(
    int(x)
    for x in cv2.cvtColor(np.full((2, 2, 3), FILL, np.uint8), cv2.COLOR_BGR2YUV_I420)[[0, 2, 2], [0, 0, 1]]
)
WINDOW = [[0.0, 0.0], [0.4, 0.0], [0.4, 0.5], [0.0, 0.5]]


def camera() -> CameraConfig:
    return CameraConfig.model_validate(
        {
            "id": "cam",
            "source": "synthetic",
            "resolution": [384, 288],
            "fps": 10,
            "masks": [{"points": WINDOW, "color": list(FILL)}],
            "motion": {"zones": [{"name": "all", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}]},
        }
    )


def vtest(datasets: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(datasets / "video" / "vtest.avi"))
    images = []
    while len(images) < count:
        ok, image = capture.read()
        assert ok
        images.append(np.ascontiguousarray(cv2.resize(image, (384, 288))))
    capture.release()
    return images


def test_the_stage_hands_on_the_masked_frame_in_i420(datasets: Path) -> None:
    image = vtest(datasets, 1)[0]
    output = MotionStage.for_camera(camera()).step(Frame("cam", 0, 0.0, image.copy()))
    assert output.frame.pixel_format is PixelFormat.I420 and output.frame.size == (384, 288)
    i420 = output.frame.image
    assert i420.shape == (432, 384) and i420.flags.c_contiguous
    masked = image.copy()
    MotionStage.for_camera(camera()).masker.apply_to_image(masked)
    assert np.array_equal(i420, cv2.cvtColor(masked, cv2.COLOR_BGR2YUV_I420))
    # Made from the masked pixels: the private window is the fill colour's luma, not the scene's.
    assert np.all(i420[: 288 // 2 - 2, : 384 * 4 // 10 - 2] == FILL_YUV[0])
    assert not np.all(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)[:100, :100] == FILL_YUV[0])
    assert np.array_equal(output.frame.bgr(), cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420))
    odd = MotionStage.for_camera(camera()).step(Frame("cam", 0, 0.0, image[:287, :383].copy()))
    assert odd.frame.pixel_format is PixelFormat.BGR  # I420 has no odd sizes: the encoder converts those


def test_an_i420_source_is_masked_as_it_is_without_a_conversion(datasets: Path) -> None:
    """A decoder's or the Pi's I420 frame is masked in its own buffer, plane by plane; a chroma sample
    half over the window takes the fill colour too."""
    source = cv2.cvtColor(vtest(datasets, 1)[0], cv2.COLOR_BGR2YUV_I420)
    frame = Frame("cam", 0, 0.0, source.copy(), PixelFormat.I420)
    output = MotionStage.for_camera(camera()).step(frame)
    assert output.frame.image is frame.image and output.result is not None
    y, u, v = i420_planes(output.frame.image)
    window = MotionStage.for_camera(camera()).masker.mask_for((384, 288)) > 0
    assert np.all(y[window] == FILL_YUV[0]) and np.array_equal(y[~window], i420_planes(source)[0][~window])
    covered = window.reshape(144, 2, 192, 2).any(axis=(1, 3))
    assert np.all(u[covered] == FILL_YUV[1]) and np.all(v[covered] == FILL_YUV[2])
    assert np.array_equal(u[~covered], i420_planes(source)[1][~covered])
    assert covered.sum() > (window.reshape(144, 2, 192, 2).all(axis=(1, 3))).sum()  # edge blocks count


def test_detection_on_the_luma_plane_decides_as_on_the_bgr_image(datasets: Path) -> None:
    """The grey image from the Y plane is the BGR one within a grey level: the same decisions and
    events, the same score within a percent (a detector fed the BGR frames directly, as before)."""
    images = vtest(datasets, 60)
    shared = MotionStage.for_camera(camera())
    config = camera()
    stage = MotionStage.for_camera(config)
    detector = MotionDetector(config.motion, (384, 288), stage.masker.mask_for((384, 288)))
    tracker = EventTracker("cam", config.motion)
    moving = 0
    for index, image in enumerate(images):
        a = shared.step(Frame("cam", index, index / 10, image.copy()))
        masked = stage.masker.apply(Frame("cam", index, index / 10, image.copy()))
        assert a.frame.pixel_format is PixelFormat.I420 and masked.pixel_format is PixelFormat.BGR
        result = detector.detect(masked)
        b = StageOutput(masked, result, tracker.update(result, index / 10))
        assert a.result is not None and b.result is not None
        assert a.result.motion == b.result.motion and a.result.zones == b.result.zones
        assert a.result.score == pytest.approx(b.result.score, abs=0.01)
        assert [e.phase for e in a.events] == [e.phase for e in b.events]
        moving += a.result.motion
    assert moving > 20  # pedestrians all along: the comparison had motion to decide


def test_the_encoder_takes_i420_as_is_and_converts_bgr() -> None:
    white = cv2.cvtColor(np.full((240, 320, 3), 255, np.uint8), cv2.COLOR_BGR2YUV_I420)
    encoder = VideoEncoder(StorageConfig(), (320, 240), 10.0, 0.0)
    packets = encoder.encode(white, 0.0, pixel_format=PixelFormat.I420) + encoder.flush()
    decoded = list(decode_packets(encoder.stream, packets))
    assert len(decoded) == 1 and decoded[0].mean() > 240
    for codec in ("h264", "mjpeg"):
        blue = np.zeros((240, 320, 3), np.uint8)
        blue[..., 0] = 255
        encoder = VideoEncoder(StorageConfig(codec=codec), (320, 240), 10.0, 0.0)
        packets = encoder.encode(blue, 0.0) + encoder.flush()
        decoded_bgr = next(iter(decode_packets(encoder.stream, packets)))
        assert decoded_bgr[..., 0].mean() > 230 and decoded_bgr[..., 2].mean() < 25, codec


def test_packets_keep_irregular_capture_times() -> None:
    """x264 counts time in frames of the configured rate (force-cfr), but a camera's frames come when
    they come: every packet still carries its own capture time, in milliseconds from the first."""
    times = [0.0, 0.1, 0.25, 0.31, 0.7, 0.71, 1.5, 1.6]
    encoder = VideoEncoder(StorageConfig(), (320, 240), 10.0, 0.0)
    rng = np.random.default_rng(7)
    packets = []
    for t in times:
        image = rng.integers(0, 256, (360, 320), dtype=np.uint8)
        packets += encoder.encode(image, t, pixel_format=PixelFormat.I420)
    packets += encoder.flush()
    assert [p.pts for p in packets] == [round(t * 1000) for t in times]
    assert all(p.dts == p.pts for p in packets)  # no B-frames: decode order is capture order
