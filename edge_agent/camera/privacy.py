"""Privacy masks: the one choke point every frame passes before any other code sees it.

Masks are polygons in normalized coordinates, rasterized once per resolution and cached. They are applied
in place, so no unmasked copy of the frame survives the call.

No mode keeps a trace of what was behind the mask: `fill` paints a solid colour; `blur` and `pixelate`
paint a smooth (or mosaic) surface interpolated from the pixels *around* the private area only, with every
masked pixel excluded from the sampling. A classic blur or mosaic of the private pixels themselves leaks
their average colours and shapes (and can be partly inverted), which the law's masking does not allow.

I420 frames are masked plane by plane. A chroma sample covers 2x2 pixels, so it is painted when any of
its four pixels is private, and sampled for a surface only when none is: a private pixel's colour never
survives at a mask's edge, where converting a masked BGR image would have averaged it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_agent.camera.frames import Frame, MaskedFrame, PixelFormat, i420_planes
from edge_agent.formats.config import CameraConfig, MaskMode, PrivacyMaskConfig, ZoneConfig

Size = tuple[int, int]


class MasksRequired(Exception):
    """A camera that must be masked has no valid mask: it must capture nothing (privacy fails closed)."""


def polygon_pixels(points: list[tuple[float, float]], size: Size) -> np.ndarray:
    """Normalized polygon -> int32 pixel corners for OpenCV, clamped to the image."""
    width, height = size
    scale = np.array([width - 1, height - 1], dtype=np.float64)
    return np.round(np.asarray(points, dtype=np.float64) * scale).astype(np.int32)


def rasterize(polygons: list[list[tuple[float, float]]], size: Size) -> np.ndarray:
    """uint8 HxW image, 255 inside any of the polygons."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    if polygons:
        cv2.fillPoly(mask, [polygon_pixels(p, size) for p in polygons], 255)
    return mask


@dataclass(frozen=True)
class _SurfacePatch:
    """A blur or pixelate mask on one image or plane: its box, and its pixels at full and working size."""

    config: PrivacyMaskConfig
    fallback: tuple[float, ...]  # the mask's colour in this image's channels, where nothing can be sampled
    y0: int
    y1: int
    x0: int
    x1: int
    inside: np.ndarray  # uint8 region-sized, 255 on the pixels to paint
    known: np.ndarray  # uint8 region-sized, 255 where a pixel may be sampled (outside every mask)
    work_size: Size  # the surface is computed this small, then scaled up: it is smooth anyway
    work_known: np.ndarray  # float32 at work_size: share of sampleable pixels in each cell


@dataclass(frozen=True)
class _Compiled:
    """Everything `apply` needs at one resolution, computed once."""

    union: np.ndarray
    fills: list[tuple[tuple[int, int, int], list[np.ndarray]]]
    surfaces: list[_SurfacePatch] = field(default_factory=list)


@dataclass(frozen=True)
class _PlaneFill:
    """A fill mask on one I420 plane: what to paint and where, inside the mask's box."""

    y0: int
    y1: int
    x0: int
    x1: int
    paint: np.ndarray  # uint8, box-sized, the plane's value of the mask's colour
    inside: np.ndarray  # uint8, box-sized, 255 on the samples to paint


@dataclass(frozen=True)
class _PlaneMasks:
    """What masking one I420 plane takes."""

    fills: list[_PlaneFill]
    surfaces: list[_SurfacePatch]


class PrivacyMasker:
    """Applies a camera's privacy masks in place; cached per frame resolution."""

    def __init__(self, masks: list[PrivacyMaskConfig]) -> None:
        self._masks = list(masks)
        self._cache: dict[Size, _Compiled] = {}
        self._planes_cache: dict[Size, tuple[_PlaneMasks, _PlaneMasks, _PlaneMasks]] = {}

    @property
    def mask_count(self) -> int:
        """How many polygons this masker hides."""
        return len(self._masks)

    def mask_for(self, size: Size) -> np.ndarray:
        """uint8 HxW, 255 where any mask hides the image (shared: do not modify)."""
        return self._compiled(size).union

    def apply(self, frame: Frame) -> MaskedFrame:
        """Mask `frame.image` in place and hand it on as a MaskedFrame (the raw Frame must not be reused)."""
        if frame.pixel_format is PixelFormat.I420:
            self.apply_to_planes(*i420_planes(frame.image))
        else:
            self.apply_to_image(frame.image)
        return MaskedFrame(frame.camera_id, frame.seq, frame.captured_at, frame.image, frame.pixel_format)

    def apply_to_image(self, image: np.ndarray) -> None:
        """Mask a BGR image in place."""
        compiled = self._compiled((image.shape[1], image.shape[0]))
        for color, polygons in compiled.fills:
            cv2.fillPoly(image, polygons, color)
        for patch in compiled.surfaces:
            _paint_surface(image, patch)

    def apply_to_planes(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Mask the three planes of a 4:2:0 image in place: Y is HxW, U and V (H/2)x(W/2). They may be
        views with a row stride of their own (a camera's padded buffer), which is why they come apart."""
        size = (y.shape[1], y.shape[0])
        if u.shape != v.shape or u.shape != (size[1] // 2, size[0] // 2) or size[0] % 2 or size[1] % 2:
            raise ValueError(f"not 4:2:0 planes: Y {y.shape}, U {u.shape}, V {v.shape}")
        planes = self._planes_cache.get(size)
        if planes is None:
            planes = self._planes_cache[size] = self._compile_planes(size)
        for plane, masks in zip((y, u, v), planes, strict=True):
            for fill in masks.fills:
                # A masked copy from a ready plane of the colour: a tenth of numpy's boolean assignment.
                cv2.copyTo(fill.paint, fill.inside, plane[fill.y0 : fill.y1, fill.x0 : fill.x1])
            for patch in masks.surfaces:
                _paint_surface(plane, patch)

    def _compiled(self, size: Size) -> _Compiled:
        compiled = self._cache.get(size)
        if compiled is None:
            compiled = self._compile(size)
            self._cache[size] = compiled
        return compiled

    def _compile(self, size: Size) -> _Compiled:
        union = rasterize([m.points for m in self._masks], size)
        fills: dict[tuple[int, int, int], list[np.ndarray]] = {}
        surfaces = []
        for mask in self._masks:
            if mask.mode is MaskMode.FILL:
                fills.setdefault(mask.color, []).append(polygon_pixels(mask.points, size))
            else:
                own = rasterize([mask.points], size)
                surfaces.append(_surface_patch(mask, own, union, tuple(float(c) for c in mask.color), 1))
        return _Compiled(union=union, fills=list(fills.items()), surfaces=surfaces)

    def _compile_planes(self, size: Size) -> tuple[_PlaneMasks, _PlaneMasks, _PlaneMasks]:
        union = rasterize([m.points for m in self._masks], size)
        unions = (union, _chroma_cover(union), _chroma_cover(union))
        planes = tuple(_PlaneMasks([], []) for _ in range(3))
        for mask in self._masks:
            own = rasterize([mask.points], size)
            owns = (own, _chroma_cover(own), _chroma_cover(own))
            values = _yuv(mask.color)
            for index, plane in enumerate(planes):
                if mask.mode is MaskMode.FILL:
                    plane.fills.append(_plane_fill(values[index], owns[index]))
                else:
                    scale = 1 if index == 0 else 2
                    patch = _surface_patch(mask, owns[index], unions[index], (float(values[index]),), scale)
                    plane.surfaces.append(patch)
        return planes[0], planes[1], planes[2]


def _chroma_cover(mask: np.ndarray) -> np.ndarray:
    """A full-size uint8 mask at chroma size: 255 where any of the 2x2 pixels a sample covers is set."""
    height, width = mask.shape
    return mask.reshape(height // 2, 2, width // 2, 2).max(axis=(1, 3))


def _yuv(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """A BGR colour's Y, U and V values, by the same conversion the frames go through."""
    i420 = cv2.cvtColor(np.full((2, 2, 3), color, np.uint8), cv2.COLOR_BGR2YUV_I420)
    return int(i420[0, 0]), int(i420[2, 0]), int(i420[2, 1])


def _plane_fill(value: int, inside: np.ndarray) -> _PlaneFill:
    x, y, w, h = cv2.boundingRect(inside)
    box = inside[y : y + h, x : x + w].copy()
    return _PlaneFill(y, y + h, x, x + w, np.full(box.shape, value, np.uint8), box)


_WORK_SIDE = 96


def _surface_patch(
    mask: PrivacyMaskConfig, own: np.ndarray, union: np.ndarray, fallback: tuple[float, ...], scale: int
) -> _SurfacePatch:
    """The patch of one mask on an image or plane where `own` (this mask) and `union` (every mask) are
    rasterized; `scale` is how many image pixels one of the plane's pixels spans (2 for chroma)."""
    x, y, w, h = cv2.boundingRect(own)
    # Sample a margin around the mask, as wide as half the mask (at least 8 px), for the surroundings.
    margin = max(8, max(w, h) // 2)
    height, width = own.shape
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
    known = np.where(union[y0:y1, x0:x1] == 0, 255, 0).astype(np.uint8)
    # A mosaic's blocks are counted in image pixels, so that chroma blocks line up with luma ones.
    cells = _WORK_SIDE if mask.mode is MaskMode.BLUR else max(1, max(w, h) * scale // mask.block)
    shrink = min(1.0, cells / max(x1 - x0, y1 - y0))
    work_size = (max(1, round((x1 - x0) * shrink)), max(1, round((y1 - y0) * shrink)))
    work_known = cv2.resize(known.astype(np.float32) / 255.0, work_size, interpolation=cv2.INTER_AREA)
    inside = own[y0:y1, x0:x1].copy()
    return _SurfacePatch(mask, fallback, y0, y1, x0, x1, inside, known, work_size, work_known)


def _paint_surface(image: np.ndarray, patch: _SurfacePatch) -> None:
    region = image[patch.y0 : patch.y1, patch.x0 : patch.x1]
    surface = _surface_from_surroundings(region, patch)
    cv2.copyTo(surface, patch.inside, region)


def _surface_from_surroundings(region: np.ndarray, patch: _SurfacePatch) -> np.ndarray:
    """A region-sized surface made from unmasked pixels only (pull-push over an image pyramid).

    Masked pixels are zeroed before any averaging and carry zero weight, so nothing behind a mask
    reaches the result.
    """
    sampled = cv2.bitwise_and(region, region, mask=patch.known)
    values: np.ndarray = cv2.resize(sampled, patch.work_size, interpolation=cv2.INTER_AREA).astype(np.float32)
    if values.ndim == 2:
        values = values[..., None]  # one plane: a channel axis, so that the arithmetic below is the same
    known: np.ndarray = patch.work_known
    levels = [(values, known)]
    while min(values.shape[:2]) > 2:
        half = (max(1, values.shape[1] // 2), max(1, values.shape[0] // 2))
        values = cv2.resize(values, half, interpolation=cv2.INTER_AREA).reshape(half[1], half[0], -1)
        known = cv2.resize(known, half, interpolation=cv2.INTER_AREA)
        levels.append((values, known))
    coarse_values, coarse_known = levels[-1]
    fallback = np.array(patch.fallback, dtype=np.float32)
    estimate = np.where(
        coarse_known[..., None] > 1e-3,
        coarse_values / np.maximum(coarse_known, 1e-3)[..., None],
        fallback,
    ).astype(np.float32)
    for level_values, level_known in reversed(levels[:-1]):
        shape = (level_values.shape[1], level_values.shape[0])
        upsampled = cv2.resize(estimate, shape, interpolation=cv2.INTER_LINEAR).reshape(*shape[::-1], -1)
        local = level_values / np.maximum(level_known, 1e-3)[..., None]
        weight = level_known[..., None]
        estimate = weight * local + (1.0 - weight) * upsampled
    small = np.clip(estimate + 0.5, 0, 255).astype(np.uint8)
    full = (region.shape[1], region.shape[0])
    smoothing = cv2.INTER_NEAREST if patch.config.mode is MaskMode.PIXELATE else cv2.INTER_LINEAR
    return cv2.resize(small, full, interpolation=smoothing).reshape(region.shape)


def masker_for_camera(camera: CameraConfig) -> PrivacyMasker:
    """The camera's masker; MasksRequired when it must be masked and has no mask (fail closed)."""
    if camera.require_masks and not camera.masks:
        raise MasksRequired(
            f"camera {camera.id!r} requires privacy masks and has none: it captures nothing until "
            "`masks` are configured"
        )
    return PrivacyMasker(camera.masks)


def draw_outlines(image: np.ndarray, masks: list[PrivacyMaskConfig], zones: list[ZoneConfig]) -> np.ndarray:
    """A copy of an (already masked) image with mask polygons in red and motion zones in green."""
    size = (image.shape[1], image.shape[0])
    canvas = image.copy()
    thickness = max(2, size[0] // 320)
    for mask in masks:
        corners = polygon_pixels(mask.points, size)
        cv2.polylines(canvas, [corners], True, (0, 0, 255), thickness)
        _label(canvas, mask.name or "mask", corners, (0, 0, 255))
    for zone in zones:
        corners = polygon_pixels(zone.points, size)
        cv2.polylines(canvas, [corners], True, (0, 200, 0), thickness)
        _label(canvas, zone.name, corners, (0, 200, 0))
    return canvas


def _label(canvas: np.ndarray, text: str, corners: np.ndarray, color: tuple[int, int, int]) -> None:
    x, y = (int(v) for v in corners.min(axis=0))
    scale = max(0.4, canvas.shape[1] / 1600)
    cv2.putText(canvas, text, (x + 4, y + int(18 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1)
