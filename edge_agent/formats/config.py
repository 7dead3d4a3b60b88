"""The device configuration: one YAML file, validated, with `EDGE_*` environment overrides.

Every field has a title and a description so that `check-config`, the README and `provision` can explain
it. Errors are reported with the path of the field (`cameras[1].masks[0].points: at least 3 points`).

Environment overrides (for balena fleets, where a device is configured by variables):
- `EDGE_CONFIG_YAML`: a whole YAML document, merged under the file's values;
- `EDGE_<SECTION>__<FIELD>` with `__` between levels and list indices as numbers, e.g.
  `EDGE_SITE_ID=ville-01`, `EDGE_MQTT__HOST=10.0.0.5`, `EDGE_CAMERAS__0__FPS=8`. Values are read as YAML
  scalars or flow collections, so `15`, `true` and `[1280, 720]` keep their types.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "EDGE_"
_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ConfigError(Exception):
    """A configuration that cannot be used; `errors` lists `path: message` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors

    def report(self, source: object) -> str:
        """`source: N error(s)` then one indented line per error, as the commands print it."""
        return "\n  ".join([f"{source}: {len(self.errors)} error(s)", *self.errors])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Point = tuple[float, float]


def _check_polygon(points: list[Point]) -> list[Point]:
    if len(points) < 3:
        raise ValueError("at least 3 points")
    for x, y in points:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"point ({x}, {y}) outside 0..1: coordinates are fractions of the image")
    if abs(_signed_area(points)) < 1e-6:
        raise ValueError("polygon has no area (points are collinear or repeated)")
    return points


def _signed_area(points: list[Point]) -> float:
    total = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True):
        total += x1 * y2 - x2 * y1
    return total / 2.0


class MaskMode(StrEnum):
    """How a private area is hidden. None of them keeps any trace of the pixels behind the mask."""

    FILL = "fill"
    PIXELATE = "pixelate"
    BLUR = "blur"


class PrivacyMaskConfig(_Model):
    """A private area (window, garden, entrance) hidden before any other code sees the frame."""

    name: str = Field("", title="Name", description="What the mask hides, for technicians and audits.")
    points: list[Point] = Field(
        title="Polygon",
        description="Corners as [x, y] fractions of the image width and height (0..1), 3 or more.",
    )
    mode: MaskMode = Field(
        MaskMode.FILL,
        title="Mode",
        description="fill: solid colour; pixelate/blur: a mosaic or blur made from the surroundings only.",
    )
    color: tuple[int, int, int] = Field(
        (0, 0, 0), title="Fill colour", description="B, G, R values 0..255 used by `fill`."
    )
    block: int = Field(
        16, ge=2, le=256, title="Mosaic block", description="Block size in pixels for `pixelate`."
    )

    _points = field_validator("points")(_check_polygon)

    @field_validator("color")
    @classmethod
    def _color_range(cls, color: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in color):
            raise ValueError("each colour component must be 0..255")
        return color


class ZoneConfig(_Model):
    """An area where motion counts; outside every zone motion is ignored (when zones are set)."""

    name: str = Field(title="Name", description="Zone name, reported in motion events.")
    points: list[Point] = Field(title="Polygon", description="Corners as [x, y] fractions (0..1).")

    _points = field_validator("points")(_check_polygon)


class MotionConfig(_Model):
    """Motion detection and event tracking for one camera."""

    enabled: bool = Field(True, title="Enabled", description="Detect motion on this camera.")
    zones: list[ZoneConfig] = Field(
        default_factory=list,
        title="Zones",
        description="Only motion inside these polygons counts; empty means the whole (unmasked) frame.",
    )
    detect_width: int = Field(
        320,
        ge=64,
        le=1920,
        title="Detection width",
        description="Frames are downscaled to this width (aspect kept) before detection.",
    )
    sensitivity: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        title="Sensitivity",
        description="0 = only strong, large changes; 1 = the faintest. 0.5 suits most street scenes.",
    )
    min_area: float = Field(
        0.0015,
        ge=0.0,
        le=0.5,
        title="Minimum area",
        description="Smallest moving blob that counts, as a fraction of the frame area.",
    )
    start_frames: int = Field(
        3, ge=1, le=100, title="Start frames", description="Frames of motion in a row that open an event."
    )
    end_seconds: float = Field(
        5.0, gt=0, le=600, title="Quiet period", description="Seconds without motion that end an event."
    )
    update_seconds: float = Field(
        2.0,
        gt=0,
        le=600,
        title="Update interval",
        description="Seconds between `update` messages of an open event.",
    )
    pre_roll_seconds: float = Field(
        5.0, ge=0, le=120, title="Pre-roll", description="Seconds recorded before an event starts."
    )
    post_roll_seconds: float = Field(
        5.0, ge=0, le=600, title="Post-roll", description="Seconds recorded after an event ends."
    )


class SourceKind(StrEnum):
    """The capture backend of a camera."""

    SYNTHETIC = "synthetic"
    OPENCV = "opencv"
    PICAMERA = "picamera"
    FILE = "file"  # a video file, decoded by PyAV to I420
    STREAM = "stream"  # a network stream (RTSP, HTTP...), decoded by PyAV to I420


# URL schemes of network streams (a shorthand string without one is a file path).
_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")


def is_device(uri: str) -> bool:
    """A V4L2 device: a bare index or a /dev path."""
    return uri.isdigit() or uri.startswith("/dev/")


def is_stream(uri: str) -> bool:
    """A network stream URL."""
    return uri.lower().startswith(_STREAM_SCHEMES)


def masked_url(url: str) -> str:
    """The URL with its credentials (`user:pass@`) replaced by `***@`, for messages and logs.

    Everything up to the last `@` is masked, as a password may hold `@` or `/`; a path with an `@`
    then loses its host too, which hides more but never leaks.
    """
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0:
        return url
    return f"{scheme}://***@{rest[at + 1 :]}"


class SourceConfig(_Model):
    """Where frames come from.

    Accepts a shorthand string: `synthetic`, `synthetic:SEED`, `picamera`, `/dev/video0`, `0`,
    `rtsp://...`, `http://...` (a `stream` source) or a video file path (a `file` source). A file or a
    URL named with an explicit `kind: opencv` is still read by OpenCV.
    """

    kind: SourceKind = Field(title="Backend", description="synthetic, opencv, picamera, file or stream.")
    uri: str = Field(
        "",
        title="Device, URL or file",
        description=(
            "OpenCV: a V4L2 index or path, an RTSP/HTTP URL or a video file. File: a video file."
            " Stream: an RTSP/HTTP/UDP/TCP URL."
        ),
    )
    seed: int = Field(0, title="Seed", description="Synthetic: the scene's random seed.")
    objects: int = Field(
        2, ge=0, le=20, title="Moving objects", description="Synthetic: how many objects move."
    )
    loop: bool = Field(True, title="Loop files", description="Restart a video file at its end.")
    usb_id: str = Field(
        "",
        title="USB identity",
        description="Hot-plug match: USB serial, or `vendor:product@port-path`; empty for fixed sources.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            return value
        if value == "synthetic" or value.startswith("synthetic:"):
            seed = value.partition(":")[2]
            return {"kind": "synthetic", "seed": int(seed) if seed.isdigit() else 0}
        if value == "picamera":
            return {"kind": "picamera"}
        if is_device(value):
            return {"kind": "opencv", "uri": value}
        if is_stream(value):
            return {"kind": "stream", "uri": value}
        return {"kind": "file", "uri": value}

    @model_validator(mode="after")
    def _uri_needed(self) -> SourceConfig:
        if self.kind is SourceKind.OPENCV and not self.uri:
            raise ValueError("an opencv source needs `uri` (device index or path, URL or file)")
        if self.kind is SourceKind.FILE and not self.uri:
            raise ValueError("a file source needs `uri` (the video file's path)")
        if self.kind is SourceKind.STREAM and not is_stream(self.uri):
            raise ValueError("a stream source needs `uri`, a network URL (rtsp://, http://...)")
        return self


class RecordingMode(StrEnum):
    """When a camera records into the ring buffer."""

    CONTINUOUS = "continuous"
    MOTION = "motion"
    OFF = "off"


class CameraConfig(_Model):
    """One camera of the implantation point."""

    id: str = Field(
        title="Camera id",
        description="Lower-case letters, digits, `-` and `_`; used in topics and file names.",
        pattern=_ID_PATTERN,
    )
    source: SourceConfig = Field(title="Source", description="Backend and device, URL or file.")
    resolution: tuple[int, int] = Field(
        (1280, 720), title="Resolution", description="[width, height] requested from the source."
    )
    fps: float = Field(10.0, gt=0, le=60, title="Frame rate", description="Frames per second wanted.")
    require_masks: bool = Field(
        True,
        title="Masks required",
        description="Privacy fails closed: without at least one valid mask the camera captures nothing.",
    )
    masks: list[PrivacyMaskConfig] = Field(
        default_factory=list, title="Privacy masks", description="Private areas hidden on the device."
    )
    motion: MotionConfig = Field(default_factory=MotionConfig, title="Motion")  # type: ignore[arg-type]
    recording: RecordingMode = Field(
        RecordingMode.CONTINUOUS,
        title="Recording mode",
        description="continuous, motion (around events, with pre/post-roll) or off.",
    )

    @field_validator("resolution")
    @classmethod
    def _resolution_range(cls, size: tuple[int, int]) -> tuple[int, int]:
        width, height = size
        if not (16 <= width <= 7680 and 16 <= height <= 4320):
            raise ValueError(f"{width}x{height} is outside 16x16..7680x4320")
        if width % 2 or height % 2:
            raise ValueError(f"{width}x{height}: width and height must be even (video encoders need it)")
        return size


class StorageConfig(_Model):
    """The encrypted ring buffer."""

    path: Path = Field(
        Path("/var/lib/edge-agent/segments"),
        title="Directory",
        description="Where sealed segments and their index live.",
    )
    retention_days: float = Field(
        15.0,
        gt=0,
        le=31,
        title="Retention",
        description="Legal cap in days: nothing older survives, whatever the free space (holds aside).",
    )
    max_bytes: int = Field(
        0, ge=0, title="Quota", description="Largest total size of segments in bytes; 0 = no quota."
    )
    min_free_bytes: int = Field(
        500_000_000,
        ge=0,
        title="Minimum free space",
        description="Oldest segments are deleted to keep this much free on the disk.",
    )
    segment_seconds: float = Field(
        10.0, ge=1, le=300, title="Segment length", description="Seconds of video per sealed segment."
    )
    codec: Literal["h264", "mjpeg"] = Field(
        "h264", title="Codec", description="h264 (default) or mjpeg (fallback, larger)."
    )
    encoder: str = Field(
        "auto",
        title="FFmpeg encoder",
        description=(
            "auto (or empty): the board's hardware H.264 encoder when it works (h264_v4l2m2m on a Pi 4,"
            " h264_nvmpi or h264_nvv4l2 on a Jetson), else libx264; or an FFmpeg encoder name, which"
            " falls back to libx264 (or mjpeg) when it fails to open or fails while recording."
        ),
    )
    crf: int = Field(28, ge=0, le=51, title="Quality (CRF)", description="libx264 constant quality.")
    bitrate_kbps: int = Field(
        0, ge=0, title="Bitrate", description="Target kbit/s for hardware encoders; 0 uses CRF."
    )
    gop_seconds: float = Field(
        2.0, gt=0, le=60, title="Keyframe interval", description="Seconds between keyframes."
    )
    preset: str = Field(
        "veryfast",
        title="x264 preset",
        description="libx264 speed/size trade-off (ultrafast .. veryslow); veryfast suits a Pi 4.",
        pattern=r"^(ultrafast|superfast|veryfast|faster|fast|medium|slow|slower|veryslow)$",
    )
    mjpeg_qscale: int = Field(
        5, ge=2, le=31, title="MJPEG quality", description="MJPEG quantiser: 2 = best, 31 = smallest."
    )
    cipher: Literal["AES-256-GCM", "ChaCha20-Poly1305"] = Field(
        "AES-256-GCM",
        title="Cipher",
        description="Record cipher; ChaCha20-Poly1305 is faster on CPUs without AES instructions (Pi 4).",
    )


class TlsConfig(_Model):
    """TLS material for a client connection."""

    ca_file: Path | None = Field(None, title="CA bundle", description="CA that signed the server.")
    cert_file: Path | None = Field(None, title="Client certificate", description="PEM certificate.")
    key_file: Path | None = Field(None, title="Client key", description="PEM private key.")


class MqttConfig(_Model):
    """The link to the CSU broker."""

    enabled: bool = Field(True, title="Enabled", description="Publish status and events over MQTT.")
    host: str = Field("127.0.0.1", title="Broker host", description="Host name or address.")
    port: int = Field(1883, ge=1, le=65535, title="Broker port", description="1883, or 8883 with TLS.")
    protocol: Literal["5", "3.1.1"] = Field(
        "5", title="Protocol", description="MQTT version: 5 (default) or 3.1.1."
    )
    topic_root: str = Field(
        "csu/v1", title="Topic root", description="Prefix of every topic.", pattern=r"^[^#+]+$"
    )
    username: str = Field("", title="Username", description="Broker user; empty for none.")
    password: str = Field("", title="Password", description="Broker password.", repr=False)
    tls: TlsConfig | None = Field(None, title="TLS", description="Set to connect over TLS.")
    keepalive_s: int = Field(15, ge=5, le=600, title="Keep-alive", description="Seconds.")
    status_interval_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        title="Status check interval",
        description="Seconds between checks of the status: it is published when something the CSU"
        " watches changed (a camera's state, errors, the clip URL), else only at the heartbeat.",
    )
    status_heartbeat_s: float = Field(
        300.0,
        ge=1,
        le=86400,
        title="Status heartbeat",
        description="Longest time between two status messages of an unchanged device (its figures:"
        " uptime, disk, load). Set it equal to the check interval for a status every interval;"
        " raise it on a metered link (nomad kits on 4G).",
    )
    outbox_path: Path = Field(
        Path("/var/lib/edge-agent/outbox.sqlite"),
        title="Outbox",
        description="SQLite file keeping messages until the broker acknowledges them.",
    )
    outbox_max_messages: int = Field(
        100_000, ge=10, title="Outbox cap", description="Oldest messages beyond this are dropped."
    )
    client_id: str = Field(
        "", title="Client id", description="MQTT client id; empty uses `edge-{site_id}-{device_id}`."
    )
    reconnect_min_s: int = Field(
        1, ge=1, le=60, title="Reconnect delay", description="First wait after losing the broker."
    )
    reconnect_max_s: int = Field(
        60, ge=1, le=3600, title="Longest reconnect delay", description="The backoff doubles up to this."
    )
    max_inflight: int = Field(
        100, ge=1, le=1000, title="In-flight window", description="Messages sent and not yet acknowledged."
    )
    command_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        title="Command time limit",
        description="Seconds a CSU command may run before the reply says it is still running.",
    )


class ClipServerConfig(_Model):
    """The HTTP API that serves sealed clips to the CSU collector."""

    enabled: bool = Field(True, title="Enabled", description="Serve the clip API.")
    bind: str = Field("0.0.0.0", title="Bind address", description="Address to listen on.")
    port: int = Field(8480, ge=0, le=65535, title="Port", description="TCP port; 0 picks a free one.")
    advertise_url: str = Field(
        "",
        title="Advertised URL",
        description="How the CSU reaches this API (published in status); empty derives it.",
    )
    tls_cert: Path | None = Field(None, title="TLS certificate", description="PEM; enables HTTPS.")
    tls_key: Path | None = Field(None, title="TLS key", description="PEM private key.")
    max_clip_seconds: float = Field(
        4 * 3600.0, gt=0, title="Longest clip", description="Largest range one request may ask for."
    )
    clock_skew_s: float = Field(
        60.0, gt=0, le=3600, title="Clock skew", description="Oldest accepted request signature."
    )
    rate_limit_bytes_s: int = Field(
        20_000_000,
        ge=0,
        title="Rate limit",
        description="Bytes per second per client, so a fetch cannot starve recording; 0 = unlimited.",
    )
    requests_per_minute: int = Field(
        120,
        ge=1,
        title="Request rate",
        description="Requests per minute per client address; more are refused with HTTP 429.",
    )
    max_streams_per_client: int = Field(
        2, ge=1, le=64, title="Parallel fetches", description="Clip streams one collector may hold open."
    )
    metrics_public: bool = Field(
        False,
        title="Unsigned metrics",
        description="Serve /metrics without a signed request (no footage in it; for Prometheus).",
    )
    audit_log: Path = Field(
        Path("/var/lib/edge-agent/audit.jsonl"),
        title="Audit log",
        description="Append-only, hash-chained log of every request; the journal of used request nonces"
        " (seen-nonces.log) is kept in the same folder.",
    )
    collector_urls: list[str] = Field(
        default_factory=list,
        title="Collector upload URLs",
        description="Base URLs of the CSU collectors this device may push clips to (nomad kits behind a"
        " carrier NAT, which the CSU cannot reach): a signed `upload_clip` command is obeyed only when its"
        " upload URL lies under one of them. Empty: push delivery is off.",
    )
    collector_ca_file: Path | None = Field(
        None,
        title="Collector CA",
        description="CA that signed the collectors' HTTPS certificates (the CSU's own PKI); empty: the"
        " public CAs (certifi).",
    )
    upload_kbps: int = Field(
        0,
        ge=0,
        title="Upload rate cap",
        description="Kilobits per second a pushed clip may use, so that an upload cannot fill a metered"
        " or shared 4G link; 0 = no cap.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ClipServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @field_validator("collector_urls")
    @classmethod
    def _base_urls(cls, urls: list[str]) -> list[str]:
        for index, url in enumerate(urls):
            problem = collector_url_problem(url)
            if problem:
                raise ValueError(f"[{index}] {url!r}: {problem}")
        return urls


def collector_url_problem(url: str) -> str:
    """Why `url` cannot be a collector base URL ("" when it can): http(s), a host, nothing else."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return "not a URL with a valid port"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname or not port_ok:
        return "needs a host (and a valid port, if any)"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.query or parts.fragment:
        return "must not have a query or a fragment"
    return ""


class KeysConfig(_Model):
    """Key material from provisioning."""

    device_key: Path = Field(
        Path("/var/lib/edge-agent/keys/device_ed25519.pem"),
        title="Device key",
        description="The device's Ed25519 private key (signs segments); mode 0600.",
    )
    csu_sealing_public_key: Path = Field(
        Path("/etc/edge-agent/csu_x25519.pub"),
        title="CSU sealing key",
        description="The CSU's X25519 public key: segments are sealed to it.",
    )
    collector_public_keys: list[Path] = Field(
        default_factory=list,
        title="Collector keys",
        description="Ed25519 public keys whose signed requests the clip server accepts.",
    )


class LocationConfig(_Model):
    """Where the implantation point stands, for the CSU's plan of the fleet."""

    lat: float = Field(ge=-90, le=90, title="Latitude", description="Degrees north (WGS 84).")
    lon: float = Field(ge=-180, le=180, title="Longitude", description="Degrees east (WGS 84).")
    label: str = Field(
        "", max_length=80, title="Label", description="What the plan shows beside the point (a street)."
    )


class AgentConfig(_Model):
    """The whole device configuration."""

    site_id: str = Field(
        title="Site id", description="The implantation point (or nomad kit) id.", pattern=_ID_PATTERN
    )
    device_id: str = Field(title="Device id", description="This device's id.", pattern=_ID_PATTERN)
    cameras: list[CameraConfig] = Field(
        default_factory=list, title="Cameras", description="The cameras of this point."
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, title="Storage")  # type: ignore[arg-type]
    mqtt: MqttConfig = Field(default_factory=MqttConfig, title="MQTT")  # type: ignore[arg-type]
    clip_server: ClipServerConfig = Field(
        default_factory=ClipServerConfig,  # type: ignore[arg-type]
        title="Clip server",
    )
    keys: KeysConfig = Field(default_factory=KeysConfig, title="Keys")  # type: ignore[arg-type]
    location: LocationConfig | None = Field(
        None,
        title="Location",
        description="lat, lon and label of the point; published in status for the CSU console's plan.",
    )

    @field_validator("cameras")
    @classmethod
    def _unique_camera_ids(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for camera in cameras:
            if camera.id in seen:
                raise ValueError(f"camera id {camera.id!r} is used twice")
            seen.add(camera.id)
        return cameras

    def camera(self, camera_id: str) -> CameraConfig:
        """The camera with this id; KeyError naming the known ids otherwise."""
        for camera in self.cameras:
            if camera.id == camera_id:
                return camera
        known = ", ".join(c.id for c in self.cameras) or "none"
        raise KeyError(f"no camera {camera_id!r} in the config (known: {known})")


def format_location(loc: tuple[int | str, ...]) -> str:
    """`('cameras', 1, 'masks', 0, 'points')` -> `cameras[1].masks[0].points`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _format_errors(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        message = re.sub(r"^(Value error|Assertion failed), ", "", item["msg"])
        lines.append(f"{format_location(item['loc'])}: {message}")
    return lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping.

    PyYAML keeps the last of two `masks:` silently: a technician who pastes a second block would lose the
    first one's privacy masks without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line})", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, where: str) -> Any:
    """Parse one YAML document; a syntax error or a repeated key is a ConfigError naming `where`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{where}: not valid YAML ({problem}{at})"]) from None


def _parse_env_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _list_index(name: str, key: str, items: list[Any]) -> int:
    """The list position a variable names: an existing item, or the next one (no holes, no huge lists)."""
    if not key.isdigit():
        raise ConfigError([f"{name}: {key!r} is not a list index (0, 1, ...)"])
    index = int(key)
    if index > len(items):
        raise ConfigError([f"{name}: index {index} is past the end of the list ({len(items)} item(s))"])
    return index


def _set_path(tree: dict[str, Any], keys: list[str], value: Any, name: str) -> None:
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            index = _list_index(name, key, node)
            if index == len(node):
                node.append({})
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if last:
            node[key] = value
        else:
            next_is_index = keys[i + 1].isdigit()
            if key not in node or not isinstance(node[key], list | dict):
                node[key] = [] if next_is_index else {}
            node = node[key]


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return `data` with `EDGE_CONFIG_YAML` merged under it and `EDGE_A__B=v` variables over it."""
    merged = dict(data)
    whole = environ.get(ENV_PREFIX + "CONFIG_YAML")
    if whole:
        loaded = _load_yaml(whole, ENV_PREFIX + "CONFIG_YAML")
        if not isinstance(loaded, dict):
            raise ConfigError([f"{ENV_PREFIX}CONFIG_YAML: must be a YAML mapping"])
        merged = _deep_merge(loaded, merged)
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in (ENV_PREFIX + "CONFIG_YAML", ENV_PREFIX + "CONFIG"):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            raise ConfigError([f"{name}: empty level in the variable name"])
        _set_path(merged, keys, _parse_env_value(environ[name]), name)
    return merged


def parse_config(data: Any) -> AgentConfig:
    """Validate an already-loaded document; ConfigError lists every problem with its field path."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the config must be a YAML mapping of fields"])
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error)) from None


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read the YAML file (optional when the environment carries the whole config) and validate it."""
    environ = os.environ if environ is None else environ
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError([f"{path}: cannot read ({error.strerror})"]) from None
        data = _load_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the config must be a YAML mapping of fields"])
    return parse_config(apply_env_overrides(data, environ))


def named_files(config: AgentConfig) -> list[tuple[str, Path]]:
    """Every file the config names that the agent must read at start, with its field path."""
    files: list[tuple[str, Path]] = [
        ("keys.device_key", config.keys.device_key),
        ("keys.csu_sealing_public_key", config.keys.csu_sealing_public_key),
    ]
    files += [
        (f"keys.collector_public_keys[{i}]", p) for i, p in enumerate(config.keys.collector_public_keys)
    ]
    if config.mqtt.enabled and config.mqtt.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(config.mqtt.tls, name)
            if path is not None:
                files.append((f"mqtt.tls.{name}", path))
    if config.clip_server.enabled:
        for name in ("tls_cert", "tls_key"):
            path = getattr(config.clip_server, name)
            if path is not None:
                files.append((f"clip_server.{name}", path))
    if config.clip_server.collector_ca_file is not None:  # push runs with the clip server off too
        files.append(("clip_server.collector_ca_file", config.clip_server.collector_ca_file))
    return files


def cameras_without_masks(config: AgentConfig) -> list[str]:
    """`cameras[i]: ...` for each camera that requires masks and has none: it will capture nothing."""
    return [
        f"cameras[{i}].masks: camera {camera.id!r} requires masks (require_masks: true) and has none,"
        " so it will capture nothing (privacy fails closed)"
        for i, camera in enumerate(config.cameras)
        if camera.require_masks and not camera.masks
    ]


def summarize(config: AgentConfig) -> list[str]:
    """Human lines for `check-config`: one per camera, then storage and links."""
    lines = [f"site {config.site_id}, device {config.device_id}, {len(config.cameras)} camera(s)"]
    for camera in config.cameras:
        width, height = camera.resolution
        zones = ", ".join(z.name for z in camera.motion.zones) or "whole frame"
        lines.append(
            f"  {camera.id}: {camera.source.kind} {masked_url(camera.source.uri)} {width}x{height}"
            f"@{camera.fps:g}fps, {len(camera.masks)} mask(s), motion zones: {zones},"
            f" recording {camera.recording}"
        )
    lines.append(
        f"  storage {config.storage.path}: {config.storage.retention_days:g} days,"
        f" {config.storage.codec}, {config.storage.segment_seconds:g}s segments"
    )
    if config.mqtt.enabled:
        lines.append(f"  mqtt {config.mqtt.host}:{config.mqtt.port} root {config.mqtt.topic_root}")
    if config.clip_server.enabled:
        lines.append(f"  clip server {config.clip_server.bind}:{config.clip_server.port}")
    return lines
