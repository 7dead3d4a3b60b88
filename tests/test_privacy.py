"""Privacy masks: masked pixels carry no trace of what was behind them, in every mode and size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.camera.frames import Frame, PixelFormat, i420_planes
from edge_agent.camera.privacy import MasksRequired, PrivacyMasker, draw_outlines, masker_for_camera
from edge_agent.formats.config import CameraConfig, MaskMode, PrivacyMaskConfig, ZoneConfig

WINDOW = [(0.1, 0.1), (0.4, 0.12), (0.35, 0.5), (0.12, 0.45)]
GARDEN = [(0.6, 0.6), (0.95, 0.55), (0.9, 0.95)]
SIZES = [(320, 240), (640, 360), (1280, 720), (1920, 1080)]


def random_image(size: tuple[int, int], seed: int) -> np.ndarray:
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", list(MaskMode))
@pytest.mark.parametrize("size", SIZES)
def test_masked_pixels_do_not_depend_on_what_was_behind(mode: MaskMode, size: tuple[int, int]) -> None:
    masker = PrivacyMasker([PrivacyMaskConfig(points=WINDOW, mode=mode), PrivacyMaskConfig(points=GARDEN)])
    hidden = masker.mask_for(size) > 0
    first = random_image(size, 1)
    second = first.copy()
    # Same surroundings, entirely different private content.
    second[hidden] = random_image(size, 2)[hidden]
    original = first.copy()
    masker.apply(Frame("cam", 0, 0.0, first))
    masker.apply(Frame("cam", 0, 0.0, second))
    assert hidden.any()
    assert np.array_equal(first[hidden], second[hidden])
    assert np.array_equal(first[~hidden], original[~hidden]), "pixels outside the masks changed"
    assert (first[hidden] != original[hidden]).any(axis=-1).mean() > 0.9


@pytest.mark.parametrize("mode", list(MaskMode))
@pytest.mark.parametrize("size", [(320, 240), (1920, 1080)])
def test_i420_planes_keep_no_trace_of_what_was_behind(mode: MaskMode, size: tuple[int, int]) -> None:
    """Plane by plane: a chroma sample over any private pixel is painted, and nothing else changes."""
    masker = PrivacyMasker([PrivacyMaskConfig(points=WINDOW, mode=mode), PrivacyMaskConfig(points=GARDEN)])
    width, height = size
    hidden = masker.mask_for(size) > 0
    covered = hidden.reshape(height // 2, 2, width // 2, 2).any(axis=(1, 3))
    first = cv2.cvtColor(random_image(size, 1), cv2.COLOR_BGR2YUV_I420)
    second = first.copy()
    for index, (plane, private) in enumerate(
        zip(i420_planes(second), (hidden, covered, covered), strict=True)
    ):
        plane[private] = np.random.default_rng(10 + index).integers(
            0, 256, int(private.sum()), dtype=np.uint8
        )
    original = first.copy()
    masker.apply(Frame("cam", 0, 0.0, first, PixelFormat.I420))
    masker.apply(Frame("cam", 0, 0.0, second, PixelFormat.I420))
    assert np.array_equal(first, second)
    for plane, before, private in zip(
        i420_planes(first), i420_planes(original), (hidden, covered, covered), strict=True
    ):
        assert np.array_equal(plane[~private], before[~private]), "pixels outside the masks changed"
        assert (plane[private] != before[private]).mean() > 0.9


def test_planes_with_a_row_stride_of_their_own_are_masked_alike() -> None:
    """A camera's buffer pads its rows: views over it are masked as a contiguous image would be."""
    masker = PrivacyMasker(
        [PrivacyMaskConfig(points=WINDOW), PrivacyMaskConfig(points=GARDEN, mode=MaskMode.BLUR)]
    )
    i420 = cv2.cvtColor(random_image((320, 240), 5), cv2.COLOR_BGR2YUV_I420)
    y, u, v = (plane.copy() for plane in i420_planes(i420))
    padded_y = np.zeros((240, 384), np.uint8)
    padded_u, padded_v = np.zeros((120, 192), np.uint8), np.zeros((120, 192), np.uint8)
    for padded, plane in ((padded_y, y), (padded_u, u), (padded_v, v)):
        padded[:, : plane.shape[1]] = plane
    masker.apply_to_planes(padded_y[:, :320], padded_u[:, :160], padded_v[:, :160])
    masker.apply_to_planes(*i420_planes(i420))
    for padded, plane in zip((padded_y, padded_u, padded_v), i420_planes(i420), strict=True):
        assert np.array_equal(padded[:, : plane.shape[1]], plane) and not padded[:, plane.shape[1] :].any()
    with pytest.raises(ValueError, match="not 4:2:0 planes"):
        masker.apply_to_planes(y, u[:, :10], v)


def test_fill_paints_the_configured_colour() -> None:
    masker = PrivacyMasker([PrivacyMaskConfig(points=WINDOW, color=(10, 20, 30))])
    image = random_image((640, 360), 3)
    masker.apply_to_image(image)
    assert np.all(image[masker.mask_for((640, 360)) > 0] == (10, 20, 30))


def test_masking_is_in_place_and_cached_per_resolution() -> None:
    masker = PrivacyMasker([PrivacyMaskConfig(points=WINDOW)])
    image = random_image((640, 360), 4)
    masked = masker.apply(Frame("cam", 7, 12.5, image))
    assert masked.image is image
    assert (masked.camera_id, masked.seq, masked.captured_at) == ("cam", 7, 12.5)
    assert masker.mask_for((640, 360)) is masker.mask_for((640, 360))
    assert masker.mask_for((1280, 720)).shape == (720, 1280)


def test_masks_scale_with_resolution() -> None:
    masker = PrivacyMasker([PrivacyMaskConfig(points=WINDOW)])
    small = masker.mask_for((320, 180)).mean() / 255
    large = masker.mask_for((1920, 1080)).mean() / 255
    assert small == pytest.approx(large, abs=0.01)


def test_camera_without_masks_fails_closed() -> None:
    camera = CameraConfig(id="cam", source="synthetic", require_masks=True, masks=[])
    with pytest.raises(MasksRequired, match="requires privacy masks"):
        masker_for_camera(camera)
    open_camera = CameraConfig(id="cam", source="synthetic", require_masks=False, masks=[])
    assert masker_for_camera(open_camera).mask_count == 0


def test_outline_draws_on_a_copy() -> None:
    image = np.full((360, 640, 3), 128, dtype=np.uint8)
    zone = ZoneConfig(name="street", points=[(0.0, 0.5), (1.0, 0.5), (1.0, 1.0)])
    drawn = draw_outlines(image, [PrivacyMaskConfig(points=WINDOW, name="window")], [zone])
    assert np.all(image == 128)
    assert (drawn[:, :, 2] > 200).any() and (drawn[:, :, 1] > 150).any()
