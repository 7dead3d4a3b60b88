"""Frame sources: the synthetic scene, OpenCV files, picamera2 through a stand-in module."""

from __future__ import annotations

import itertools
import sys
import tracemalloc
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

from edge_agent.camera.frames import PixelFormat, i420_planes
from edge_agent.camera.sources import SourceError, open_source
from edge_agent.camera.sources.opencv import OpenCVSource
from edge_agent.camera.sources.picamera import contiguous_i420, yuv420_planes
from edge_agent.camera.sources.synthetic import SceneSettings, SyntheticSource
from edge_agent.formats.config import CameraConfig

WINDOW = [[0.1, 0.1], [0.4, 0.1], [0.4, 0.4], [0.1, 0.4]]


def test_synthetic_scene_is_deterministic() -> None:
    first = SyntheticSource("a", SceneSettings(size=(320, 240), seed=5))
    second = SyntheticSource("a", SceneSettings(size=(320, 240), seed=5))
    other = SyntheticSource("a", SceneSettings(size=(320, 240), seed=6))
    for seq in range(5):
        a, b, c = first.read(), second.read(), other.read()
        assert a.pixel_format is PixelFormat.I420 and a.image.shape == (360, 320) and a.size == (320, 240)
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.image, second.render(seq)), "a frame is a function of its number"
        assert not np.array_equal(a.image, c.image)
    assert first.ground_truth(42) == second.ground_truth(42)


def test_synthetic_ground_truth_matches_pixels() -> None:
    width, height = 640, 360
    scene = SyntheticSource(
        "a", SceneSettings(size=(width, height), objects=2, noise_sigma=0.0, drift_amplitude=0.0)
    )
    empty = scene._background
    empty_bgr = cv2.cvtColor(empty, cv2.COLOR_YUV2BGR_I420).astype(np.int16)
    seen_objects = 0
    for seq in range(0, 300, 7):
        image = scene.render(seq)
        painted = image[:height] != empty[:height]
        bgr = cv2.cvtColor(image, cv2.COLOR_YUV2BGR_I420).astype(np.int16)
        changed = np.abs(bgr - empty_bgr).max(axis=2) > 20
        boxes = scene.ground_truth(seq)
        inside = np.zeros_like(changed)
        covered = np.zeros_like(changed)  # the 2x2 pixels of every chroma sample over a pixel inside
        for x, y, w, h in boxes:
            x0, y0 = round(x * width), round(y * height)
            x1, y1 = round((x + w) * width), round((y + h) * height)
            inside[y0:y1, x0:x1] = True
            covered[y0 - y0 % 2 : y1 + y1 % 2, x0 - x0 % 2 : x1 + x1 % 2] = True
        seen_objects += len(boxes)
        assert not (painted & ~inside).any(), f"frame {seq}: luma changed outside the ground truth"
        assert not (changed & ~covered).any(), f"frame {seq}: colour changed off the ground truth's samples"
        if boxes:
            assert changed[inside].mean() > 0.5, f"frame {seq}: object not drawn where announced"
    assert seen_objects > 10


def test_synthetic_seed_keeps_its_walkers() -> None:
    # The motion tests and benches are tuned on these walkers: a change to how frames are drawn must
    # leave them where they were (the generator's draws keep their order and count).
    scene = SyntheticSource("a", SceneSettings(size=(640, 360), objects=3, seed=4))
    (box,) = scene.ground_truth(100)
    assert box == pytest.approx((0.157883, 0.444501, 0.084985, 0.226582), abs=1e-6)


def test_synthetic_noise_is_grey_and_fresh_each_frame() -> None:
    sigma = 4.0
    scene = SyntheticSource(
        "a", SceneSettings(size=(640, 360), objects=0, drift_amplitude=0.0, noise_sigma=sigma)
    )
    empty = scene._background.astype(np.int16)
    noises = []
    for seq in range(8):
        image = scene.render(seq).astype(np.int16)
        assert np.array_equal(image[360:], empty[360:]), "grey noise leaves chroma as it is"
        # In grey levels, the units of `noise_sigma` and of the motion detector's thresholds.
        noises.append(((image[:360] - empty[:360]) * 255.0 / 219.0).ravel())
        assert abs(noises[-1].mean()) < 0.1
        assert noises[-1].std() == pytest.approx(sigma, rel=0.1)
    for earlier, later in itertools.pairwise(noises):
        assert abs(np.corrcoef(earlier, later)[0, 1]) < 0.05, "each frame has its own noise"


def test_synthetic_light_drift_scales_grey_levels() -> None:
    settings = SceneSettings(
        size=(320, 240), fps=1.0, objects=0, noise_sigma=0.0, drift_amplitude=0.2, drift_period_s=4.0
    )
    scene = SyntheticSource("a", settings)
    empty = scene._background[:240].astype(float) - 16.0
    brightest = scene.render(1)[:240].astype(float) - 16.0  # a quarter period: 1.2 x the light
    darkest = scene.render(3)[:240].astype(float) - 16.0
    assert brightest.mean() / empty.mean() == pytest.approx(1.2, abs=0.01)
    assert darkest.mean() / empty.mean() == pytest.approx(0.8, abs=0.01)


def test_synthetic_1080p_scene_holds_under_10_mib() -> None:
    tracemalloc.start()
    try:
        scene = SyntheticSource("a", SceneSettings(size=(1920, 1080), objects=2))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scene.render(0).nbytes == 1920 * 1080 * 3 // 2
    assert held < 10 * 2**20  # 8.5 MB: the I420 background (3.1) and the noise strip (2 x 2.7)


@pytest.mark.parametrize("size", [(321, 240), (320, 241), (0, 240)])
def test_synthetic_scene_refuses_sizes_without_i420(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="even width and height"):
        SyntheticSource("a", SceneSettings(size=size))


def test_synthetic_objects_come_and_go() -> None:
    scene = SyntheticSource("a", SceneSettings(objects=1))
    visible = [bool(scene.ground_truth(seq)) for seq in range(0, 10 * 60)]
    assert any(visible) and not all(visible)


def test_synthetic_time_is_simulated_or_clocked() -> None:
    simulated = SyntheticSource("a", SceneSettings(size=(64, 48), fps=4.0), start_ts=1000.0)
    assert [simulated.read().captured_at for _ in range(3)] == [1000.0, 1000.25, 1000.5]
    clocked = SyntheticSource("a", SceneSettings(size=(64, 48)), clock=lambda: 42.0)
    assert clocked.read().captured_at == 42.0


def test_video_file_source_reads_and_loops(datasets: Path) -> None:
    video = datasets / "video" / "vtest.avi"
    source = OpenCVSource("file", str(video), clock=lambda: 0.0, loop=True)
    assert not source.paced
    assert source.native_fps == pytest.approx(10.0, abs=0.5)
    first = source.read()
    assert first is not None and first.size == (768, 576)
    source._capture.set(cv2.CAP_PROP_POS_FRAMES, source._capture.get(cv2.CAP_PROP_FRAME_COUNT))
    looped = source.read()
    assert looped is not None and np.array_equal(looped.image, first.image)
    source.close()


def test_video_file_without_loop_ends(datasets: Path) -> None:
    source = OpenCVSource("file", str(datasets / "video" / "vtest.avi"), clock=lambda: 0.0, loop=False)
    source._capture.set(cv2.CAP_PROP_POS_FRAMES, source._capture.get(cv2.CAP_PROP_FRAME_COUNT))
    assert source.read() is None


def test_missing_file_and_bad_stream_are_clear(tmp_path: Path) -> None:
    missing = CameraConfig(id="cam", source=str(tmp_path / "nope.mp4"), masks=[{"points": WINDOW}])
    with pytest.raises(SourceError, match="does not exist"):
        open_source(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match="cannot open"):
        open_source(
            missing.model_copy(update={"source": missing.source.model_copy(update={"uri": str(garbage)})})
        )


def test_picamera_without_picamera2_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    camera = CameraConfig(id="pi", source="picamera", masks=[{"points": WINDOW}])
    with pytest.raises(SourceError, match=r"edge_agent\[pi\]"):
        open_source(camera)


# The stand-ins below follow picamera2 as published (raspberrypi/picamera2), checked against:
# - request.py: MappedArray and Helpers.make_array (what capture_array returns, a copy made by
#   make_buffer) shape a "YUV420" buffer as (height * 3 // 2, stride), padding left in;
# - previews/drm_preview.py: the planes of such a buffer start at 0, height * stride and
#   height * stride + (height // 2) * (stride // 2), with strides stride, stride // 2, stride // 2;
# - picamera2.py: configure() fills the main stream's size, stride and framesize from libcamera, and
#   camera_configuration() returns that configuration; create_video_configuration takes colour_space;
# - the bcm2835 ISP driver aligns a YUV420 stride to 64 bytes (so 1000 pixels are 1024 bytes a row).
_STRIDE_ALIGN = 64
_PADDING = 0xEE  # what the fake sensor leaves in the padding bytes, never a picture value here


def _plane_offsets(size: tuple[int, int], stride: int) -> tuple[int, int, int]:
    """Where the U and V planes start and the buffer ends, as the DRM preview computes them."""
    height = size[1]
    chroma = (height // 2) * (stride // 2)
    return height * stride, height * stride + chroma, height * stride + 2 * chroma


def _padded_yuv420(y: np.ndarray, u: np.ndarray, v: np.ndarray, stride: int) -> np.ndarray:
    """A flat buffer as the ISP fills it: each plane's rows padded to its stride, planes back to back."""
    rows = [
        np.pad(p, ((0, 0), (0, s - p.shape[1])), constant_values=_PADDING)
        for p, s in ((y, stride), (u, stride // 2), (v, stride // 2))
    ]
    return np.concatenate([r.reshape(-1) for r in rows])


def _crop_planes(flat: np.ndarray, size: tuple[int, int], stride: int) -> list[np.ndarray]:
    """The picture's Y, U and V planes out of a flat padded buffer (copies)."""
    width, height = size
    u_at, v_at, end = _plane_offsets(size, stride)
    y = flat[:u_at].reshape(height, stride)[:, :width]
    u = flat[u_at:v_at].reshape(height // 2, stride // 2)[:, : width // 2]
    v = flat[v_at:end].reshape(height // 2, stride // 2)[:, : width // 2]
    return [y.copy(), u.copy(), v.copy()]


class _FakeRequest:
    def __init__(self, buffer: np.ndarray, config: dict[str, Any]) -> None:
        self.buffer = buffer  # flat, like the mmap of the dmabuf
        self.config = config


class _FakeMapped:
    """picamera2.MappedArray: the request's own memory, shaped (H*3/2, stride) for YUV420."""

    def __init__(self, request: _FakeRequest, stream: str) -> None:
        assert stream == "main"
        main = request.config[stream]
        assert main["format"] == "YUV420"
        height = main["size"][1]
        self.array = request.buffer.reshape(height * 3 // 2, main["stride"])
        assert np.shares_memory(self.array, request.buffer)

    def __enter__(self) -> _FakeMapped:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _FakeColorSpace:
    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def Smpte170m(cls) -> _FakeColorSpace:  # libcamera's name
        return cls("smpte170m")


class _FakePicamera2:
    """Stands in for picamera2.Picamera2: a sensor buffer, the pre_callback, then the encoder's view."""

    instances: ClassVar[list[_FakePicamera2]] = []

    def __init__(self) -> None:
        self.pre_callback: Any = None
        self.sensor: list[np.ndarray] = []  # each buffer as the ISP filled it
        self.encoder_saw: list[np.ndarray] = []  # and after the pre_callback
        self.started = False
        self.config: dict[str, Any] = {}
        _FakePicamera2.instances.append(self)

    def create_video_configuration(
        self, main: dict[str, Any], controls: dict[str, Any], colour_space: Any = None
    ) -> dict[str, Any]:
        return {"main": dict(main), "controls": controls, "colour_space": colour_space}

    def configure(self, config: dict[str, Any]) -> None:
        main = config["main"]
        assert main["format"] == "YUV420"
        width, height = main["size"]
        stride = -(-width // _STRIDE_ALIGN) * _STRIDE_ALIGN
        main.update(stride=stride, framesize=_plane_offsets((width, height), stride)[2])
        self.config = config

    def camera_configuration(self) -> dict[str, Any]:
        return self.config

    def start(self) -> None:
        self.started = True

    def capture_array(self, stream: str) -> np.ndarray:
        main = self.config[stream]
        (width, height), stride = main["size"], main["stride"]
        rng = np.random.default_rng(len(self.sensor))
        luma = rng.integers(0, 200, (height, width), dtype=np.uint8)
        u, v = rng.integers(0, 200, (2, height // 2, width // 2), dtype=np.uint8)
        buffer = _padded_yuv420(luma, u, v, stride)
        assert buffer.size == main["framesize"]
        self.sensor.append(buffer.copy())
        request = _FakeRequest(buffer, self.config)
        self.pre_callback(request)
        self.encoder_saw.append(buffer.copy())
        return buffer.reshape(height * 3 // 2, stride).copy()

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        return None


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_FakePicamera2]]:
    module = types.ModuleType("picamera2")
    module.Picamera2 = _FakePicamera2  # type: ignore[attr-defined]
    module.MappedArray = _FakeMapped  # type: ignore[attr-defined]
    libcamera = types.ModuleType("libcamera")
    libcamera.ColorSpace = _FakeColorSpace  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    monkeypatch.setitem(sys.modules, "libcamera", libcamera)
    _FakePicamera2.instances.clear()
    yield _FakePicamera2


def _yuv_of(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    i420 = cv2.cvtColor(np.full((2, 2, 3), bgr, np.uint8), cv2.COLOR_BGR2YUV_I420)
    return int(i420[0, 0]), int(i420[2, 0]), int(i420[2, 1])


@pytest.mark.parametrize(("size", "stride"), [((640, 480), 640), ((1000, 480), 1024)])
def test_picamera_masks_yuv420_before_the_encoder_sees_a_frame(
    fake_picamera2: type[_FakePicamera2], size: tuple[int, int], stride: int
) -> None:
    camera = CameraConfig(
        id="pi", source="picamera", resolution=size, masks=[{"points": WINDOW, "color": [0, 0, 255]}]
    )
    source = open_source(camera)
    frame = source.read()
    fake = fake_picamera2.instances[0]
    assert fake.config["colour_space"].name == "smpte170m"  # BT.601 limited, what frames are
    assert fake.config["main"]["stride"] == stride
    assert frame is not None and frame.size == size and frame.pixel_format is PixelFormat.I420
    width, height = size
    assert frame.image.shape == (height * 3 // 2, width) and frame.image.flags.c_contiguous

    # WINDOW covers x and y 0.1..0.4: pixels x0..x1 x 48..192, inclusive (100..400 when 1000 wide), and
    # the chroma samples of those pixels (a sample is painted when any of its 2x2 pixels is).
    x0, x1, y0, y1 = round(0.1 * (width - 1)), round(0.4 * (width - 1)), 48, 192
    boxes = [(slice(y0, y1 + 1), slice(x0, x1 + 1))] + [
        (slice(y0 // 2, y1 // 2 + 1), slice(x0 // 2, x1 // 2 + 1))
    ] * 2
    before = _crop_planes(fake.sensor[0], size, stride)
    seen = _crop_planes(fake.encoder_saw[0], size, stride)
    for plane, original, value, box in zip(seen, before, _yuv_of((0, 0, 255)), boxes, strict=True):
        assert np.all(plane[box] == value), "the encoder saw unmasked pixels"
        outside = np.ones(plane.shape, bool)
        outside[box] = False
        assert np.array_equal(plane[outside], original[outside]), "the mask spilled out of its polygon"
    # The padding is the camera's, not the picture's: the mask leaves it alone.
    assert np.all(fake.encoder_saw[0][_padding_indexes(size, stride)] == _PADDING)

    # read() gives the masked picture as contiguous I420, without the padding.
    for plane, expected in zip(i420_planes(frame.image), seen, strict=True):
        assert np.array_equal(plane, expected)
    source.close()
    assert not fake.started


def _padding_indexes(size: tuple[int, int], stride: int) -> np.ndarray:
    """Flat indexes of the padding bytes of the three planes (none when the stride is the width)."""
    width, height = size
    u_at, v_at, end = _plane_offsets(size, stride)
    index = np.arange(end)
    y = index[:u_at].reshape(height, stride)[:, width:]
    u = index[u_at:v_at].reshape(height // 2, stride // 2)[:, width // 2 :]
    v = index[v_at:end].reshape(height // 2, stride // 2)[:, width // 2 :]
    return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])


def test_picamera_without_masks_never_starts(fake_picamera2: type[_FakePicamera2]) -> None:
    from edge_agent.camera.privacy import MasksRequired

    with pytest.raises(MasksRequired):
        open_source(CameraConfig(id="pi", source="picamera"))
    assert not fake_picamera2.instances


def _known_planes(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planes whose every value says where it is: Y counts up from 0, U from 100, V from 150 (mod 100)."""
    width, height = size
    y = (np.arange(width * height) % 100).reshape(height, width).astype(np.uint8)
    chroma = (height // 2, width // 2)
    u = (100 + np.arange(chroma[0] * chroma[1]) % 50).reshape(chroma).astype(np.uint8)
    v = (150 + np.arange(chroma[0] * chroma[1]) % 50).reshape(chroma).astype(np.uint8)
    return y, u, v


# 6x6 with stride 8: H/2 = 3 is odd, so the U plane ends in the middle of a (H*3/2, stride) row.
@pytest.mark.parametrize(("size", "stride"), [((1000, 480), 1024), ((6, 6), 8), ((6, 4), 6)])
def test_yuv420_planes_find_padded_planes_and_write_through(size: tuple[int, int], stride: int) -> None:
    planes = _known_planes(size)
    flat = _padded_yuv420(*planes, stride)
    buffer = flat.reshape(size[1] * 3 // 2, stride)
    views = yuv420_planes(buffer, size)
    for view, plane in zip(views, planes, strict=True):
        assert np.array_equal(view, plane) and np.shares_memory(view, buffer)
    views[1][-1, -1] = 7  # the U plane's last sample: its end, less that row's padding, less one
    v_at = _plane_offsets(size, stride)[1]
    assert flat[v_at - (stride - size[0]) // 2 - 1] == 7


@pytest.mark.parametrize(("size", "stride"), [((1000, 480), 1024), ((6, 6), 8)])
def test_contiguous_i420_drops_the_padding(size: tuple[int, int], stride: int) -> None:
    planes = _known_planes(size)
    buffer = _padded_yuv420(*planes, stride).reshape(size[1] * 3 // 2, stride)
    image = contiguous_i420(buffer, size)
    assert image.shape == (size[1] * 3 // 2, size[0]) and image.flags.c_contiguous
    assert not np.shares_memory(image, buffer) and not (image == _PADDING).any()
    for plane, expected in zip(i420_planes(image), planes, strict=True):
        assert np.array_equal(plane, expected)
    # The same picture as OpenCV reads an I420 image: the planes did not shift into one another.
    unpadded = np.concatenate([p.reshape(-1) for p in planes]).reshape(image.shape)
    assert np.array_equal(
        cv2.cvtColor(image, cv2.COLOR_YUV2BGR_I420), cv2.cvtColor(unpadded, cv2.COLOR_YUV2BGR_I420)
    )


def test_contiguous_i420_keeps_an_unpadded_buffer() -> None:
    buffer = _padded_yuv420(*_known_planes((640, 480)), 640).reshape(720, 640)
    assert contiguous_i420(buffer, (640, 480)) is buffer


@pytest.mark.parametrize(
    ("buffer", "size"),
    [
        (np.zeros((720, 1024), np.uint8), (1000, 482)),  # rows are not H*3/2
        (np.zeros((720, 992), np.uint8), (1000, 480)),  # stride shorter than the width
        (np.zeros((720, 1024), np.uint8), (999, 480)),  # odd width: no 4:2:0
        (np.zeros((9, 7), np.uint8), (6, 6)),  # odd stride: the chroma rows would not be whole
        (np.zeros((720, 2048), np.uint8)[:, ::2], (1000, 480)),  # not contiguous: offsets mean nothing
        (np.zeros((720, 1024), np.uint16), (1000, 480)),  # not bytes
    ],
)
def test_yuv420_planes_refuse_what_is_not_a_yuv420_buffer(buffer: np.ndarray, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        yuv420_planes(buffer, size)
