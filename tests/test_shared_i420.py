"""One BGR -> I420 conversion per frame serves the encoder and the detector (issue 14, measured)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.camera.frames import Frame
from edge_agent.camera.motion import EventTracker, MotionDetector
from edge_agent.camera.stage import MotionStage, StageOutput
from edge_agent.formats.config import CameraConfig, StorageConfig
from edge_agent.storage.encoder import VideoEncoder, decode_packets

FILL = (40, 200, 90)
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


def test_the_stage_shares_the_masked_i420(datasets: Path) -> None:
    image = vtest(datasets, 1)[0]
    output = MotionStage.for_camera(camera()).step(Frame("cam", 0, 0.0, image.copy()))
    i420 = output.frame.i420
    assert i420 is not None and i420.shape == (432, 384)
    assert np.array_equal(i420, cv2.cvtColor(output.frame.image, cv2.COLOR_BGR2YUV_I420))
    # Made from the masked pixels: the private window is the fill colour's luma, not the scene's.
    fill_luma = cv2.cvtColor(np.full((2, 2, 3), FILL, np.uint8), cv2.COLOR_BGR2YUV_I420)[0, 0]
    assert np.all(i420[: 288 // 2 - 2, : 384 * 4 // 10 - 2] == fill_luma)
    assert not np.all(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)[:100, :100] == fill_luma)
    odd = MotionStage.for_camera(camera()).step(Frame("cam", 0, 0.0, image[:287, :383].copy()))
    assert odd.frame.i420 is None  # I420 has no odd sizes: the encoder converts (pads) on its own


def test_without_motion_detection_the_stage_converts_nothing(datasets: Path) -> None:
    """Nothing in the stage reads the frame then: a recorder converts what it needs, and a camera that
    neither detects nor records costs no conversion (about 1 ms a 1080p frame)."""
    config = camera().model_copy(update={"motion": camera().motion.model_copy(update={"enabled": False})})
    output = MotionStage.for_camera(config).step(Frame("cam", 0, 0.0, vtest(datasets, 1)[0]))
    assert output.frame.i420 is None and output.result is None and output.events == []


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
        masked = stage.mask(Frame("cam", index, index / 10, image.copy()))
        assert a.frame.i420 is not None and masked.i420 is None
        result = detector.detect(masked)
        b = StageOutput(masked, result, tracker.update(result, index / 10))
        assert a.result is not None and b.result is not None
        assert a.result.motion == b.result.motion and a.result.zones == b.result.zones
        assert a.result.score == pytest.approx(b.result.score, abs=0.01)
        assert [e.phase for e in a.events] == [e.phase for e in b.events]
        moving += a.result.motion
    assert moving > 20  # pedestrians all along: the comparison had motion to decide


def test_the_encoder_takes_the_shared_i420_as_is() -> None:
    """Given the I420 of a white image with a black BGR image, it encodes white: no second conversion."""
    black = np.zeros((240, 320, 3), np.uint8)
    white = cv2.cvtColor(np.full((240, 320, 3), 255, np.uint8), cv2.COLOR_BGR2YUV_I420)
    encoder = VideoEncoder(StorageConfig(), (320, 240), 10.0, 0.0)
    packets = encoder.encode(black, 0.0, i420=white) + encoder.flush()
    decoded = list(decode_packets(encoder.stream, packets))
    assert len(decoded) == 1 and decoded[0].mean() > 240
    wrong_size = np.zeros((10, 10), np.uint8)  # not this image's I420: converted from the BGR instead
    encoder = VideoEncoder(StorageConfig(), (320, 240), 10.0, 0.0)
    packets = encoder.encode(black, 0.0, i420=wrong_size) + encoder.flush()
    assert next(iter(decode_packets(encoder.stream, packets))).mean() < 15
