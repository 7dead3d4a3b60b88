"""`edge-agent doctor --config F`: check a device before (or instead of) starting it, one line per check.

Each check says ok, warn or fail and why, in words a field technician can act on. A failure either blocks
recording (no camera, masks missing or wrong, storage unusable, keys missing or unsafe) or it does not
(broker unreachable: events wait in the outbox; clip port taken; clock wrong). The exit code tells them
apart: 0 nothing fails, 1 recording is blocked, 2 something else fails.

Run it with the service stopped: a running agent holds the camera and the clip server port.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.formats.clip_url import advertised_clip_url
from edge_agent.formats.config import (
    AgentConfig,
    CameraConfig,
    ConfigError,
    MqttConfig,
    RecordingMode,
    StorageConfig,
    load_config,
    masked_url,
)
from edge_agent.formats.times import Clock

if TYPE_CHECKING:
    from edge_agent.storage.ringbuffer import RingBuffer

Size = tuple[int, int]

EXIT_OK = 0
EXIT_BLOCKED = 1
EXIT_FAILED = 2

# A clock before this is certainly wrong (a Pi without RTC boots at its last saved time, or 1970).
_EARLIEST_PLAUSIBLE = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
_TIME_ERROR = 5  # adjtimex() state: the kernel clock is not synchronized


class Status(StrEnum):
    """How a check went."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    blocks_recording: bool = False

    def line(self) -> str:
        """`fail  storage writable: ... (blocks recording)`."""
        suffix = " (blocks recording)" if self.status is Status.FAIL and self.blocks_recording else ""
        return f"{self.status.value:<5} {self.name}: {self.detail}{suffix}"


def exit_code(results: list[CheckResult]) -> int:
    """1 when recording is blocked, 2 when something else fails, 0 otherwise."""
    failures = [r for r in results if r.status is Status.FAIL]
    if any(r.blocks_recording for r in failures):
        return EXIT_BLOCKED
    return EXIT_FAILED if failures else EXIT_OK


# --- cameras and masks -------------------------------------------------------------------------


def probe_camera(camera: CameraConfig, timeout_s: float) -> tuple[CheckResult, Size | None]:
    """Open the camera's source and read one frame within the timeout; its resolution, if any."""
    from edge_agent.camera.sources import SourceError, open_source

    name = f"camera {camera.id} reachable"
    where = masked_url(camera.source.uri) or camera.source.kind.value
    outcome: dict[str, object] = {}

    def read_one() -> None:
        try:
            source = open_source(camera)
        except SourceError as error:
            outcome["error"] = str(error)
            return
        except Exception as error:
            outcome["error"] = f"{type(error).__name__}: {error}"
            return
        try:
            frame = source.read()
            # Only the size is kept: this raw frame is dropped here, never shown or stored.
            outcome["size"] = None if frame is None else frame.size
        finally:
            source.close()

    # A dead RTSP camera can block OpenCV far longer than a technician waits: read in a thread.
    worker = threading.Thread(target=read_one, name=f"doctor-{camera.id}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        detail = f"no frame from {where} within {timeout_s:g} s"
        return CheckResult(name, Status.FAIL, detail, blocks_recording=True), None
    if "error" in outcome:
        return CheckResult(name, Status.FAIL, str(outcome["error"]), blocks_recording=True), None
    size = outcome.get("size")
    if not isinstance(size, tuple):
        detail = f"{where} opened but gave no frame (unplugged, busy or at its end)"
        return CheckResult(name, Status.FAIL, detail, blocks_recording=True), None
    width, height = size
    return CheckResult(name, Status.OK, f"{width}x{height} from {where}"), (width, height)


def check_masks(camera: CameraConfig, real_size: Size | None) -> CheckResult:
    """Masks present when required, each covering pixels at the real resolution, same framing."""
    from edge_agent.camera.privacy import MasksRequired, masker_for_camera, rasterize

    name = f"camera {camera.id} masks"
    try:
        masker = masker_for_camera(camera)
    except MasksRequired as error:
        return CheckResult(name, Status.FAIL, str(error), blocks_recording=True)
    if not camera.masks:
        return CheckResult(name, Status.WARN, "no masks, and require_masks is false: records unmasked")
    size = real_size or camera.resolution
    width, height = size
    note = "" if real_size else " (configured size: the camera could not be read)"
    if real_size and not _same_aspect(real_size, camera.resolution):
        cw, ch = camera.resolution
        detail = (
            f"the camera gives {width}x{height} but the masks were placed for a {cw}x{ch} framing:"
            " a different aspect ratio moves them off the private areas; fix `resolution` or redraw"
            " the masks (check with `edge-agent snapshot --outline`)"
        )
        return CheckResult(name, Status.FAIL, detail, blocks_recording=True)
    empty = [
        m.name or f"masks[{i}]" for i, m in enumerate(camera.masks) if not rasterize([m.points], size).any()
    ]
    if empty:
        detail = f"{', '.join(empty)} covers no pixel at {width}x{height}: enlarge it{note}"
        return CheckResult(name, Status.FAIL, detail, blocks_recording=True)
    share = float(np.count_nonzero(masker.mask_for(size))) / (width * height)
    detail = f"{len(camera.masks)} mask(s) hide {share:.1%} of {width}x{height}{note}"
    if share > 0.9:
        return CheckResult(name, Status.WARN, detail + ": almost nothing left to see")
    return CheckResult(name, Status.OK, detail)


def _same_aspect(a: Size, b: Size) -> bool:
    return abs(a[0] / a[1] - b[0] / b[1]) <= 0.02 * (b[0] / b[1])


# --- storage -----------------------------------------------------------------------------------

# H.264 bits per pixel per frame at CRF 28, measured by scripts/bench_storage.py on the synthetic
# scene (sensor noise on every frame, so a high figure: 1.35 Mbit/s at 720p 10 fps); +6 CRF halves it.
_H264_BPP_AT_CRF28 = 0.15
# Conservative MJPEG bytes per pixel per frame (quality ~80).
_MJPEG_BYTES_PER_PIXEL = 0.15


def estimate_bytes_per_hour(camera: CameraConfig, storage: StorageConfig) -> float:
    """A deliberately high estimate of one camera's recording rate, for disk sizing."""
    if camera.recording is RecordingMode.OFF:
        return 0.0
    width, height = camera.resolution
    pixels_per_s = width * height * camera.fps
    if storage.codec == "mjpeg":
        return pixels_per_s * _MJPEG_BYTES_PER_PIXEL * 3600
    if storage.bitrate_kbps:
        return storage.bitrate_kbps * 1000 / 8 * 3600
    bpp = _H264_BPP_AT_CRF28 * 2 ** ((28 - storage.crf) / 6)
    return pixels_per_s * bpp / 8 * 3600


def check_storage(config: AgentConfig) -> list[CheckResult]:
    """Storage directory writable, and room for the retention at the estimated rate."""
    storage = config.storage
    writable = _check_writable(storage.path)
    if writable.status is Status.FAIL:
        return [writable]
    hourly = sum(estimate_bytes_per_hour(c, storage) for c in config.cameras)
    need = hourly * 24 * storage.retention_days
    usage = shutil.disk_usage(_existing_ancestor(storage.path))
    usable = usage.free - storage.min_free_bytes
    if storage.max_bytes:
        usable = min(usable, storage.max_bytes)
    name = "storage room for retention"
    if hourly == 0:
        return [writable, CheckResult(name, Status.OK, "no camera records")]
    if usable < hourly:
        detail = (
            f"{_gb(usage.free)} free, {_gb(storage.min_free_bytes)} kept free: not even one hour"
            f" of recording fits (about {_gb(hourly)}/hour)"
        )
        return [writable, CheckResult(name, Status.FAIL, detail, blocks_recording=True)]
    days = usable / (hourly * 24)
    detail = (
        f"{storage.retention_days:g} days need about {_gb(need)} (estimate {_gb(hourly)}/hour for"
        f" {len(config.cameras)} camera(s)); {_gb(usable)} usable"
    )
    if days < storage.retention_days:
        detail += f": only about {days:.1f} days fit, older footage will be deleted early"
        return [writable, CheckResult(name, Status.WARN, detail)]
    return [writable, CheckResult(name, Status.OK, detail)]


# Less recorded footage than this says too little about a camera's real bit rate.
_MIN_MEASURED_S = 600.0
_DAY_S = 86400.0


def check_measured_days(config: AgentConfig) -> CheckResult:
    """How many days the disk really holds: the bytes per day the cameras recorded over their last day
    of footage (from the ring buffer's index, read only) against the room footage may take (quota,
    free space above the floor, what is stored already)."""
    from edge_agent.storage.index import INDEX_NAME
    from edge_agent.storage.ringbuffer import RingBuffer

    storage = config.storage
    name = "storage days held (measured)"
    if not (storage.path / INDEX_NAME).exists():
        return CheckResult(name, Status.OK, "nothing recorded yet: only the estimate above")
    ring = RingBuffer(storage.path, storage, recover=False)
    try:
        per_day, measured_s = _measured_bytes_per_day(ring)
        stored = ring.total_bytes()
    finally:
        ring.close()
    if measured_s < _MIN_MEASURED_S:
        detail = f"less than {_MIN_MEASURED_S / 60:.0f} min of footage recorded: only the estimate above"
        return CheckResult(name, Status.OK, detail)
    room = stored + shutil.disk_usage(storage.path).free - storage.min_free_bytes
    limit = "free space"
    if storage.max_bytes and storage.max_bytes < room:
        room, limit = storage.max_bytes, "quota"
    days = max(0, room) / per_day
    detail = (
        f"the cameras recorded {_size(per_day)}/day (measured over {measured_s / 3600:.1f} h of footage);"
        f" the {limit} leaves {_size(room)} for footage: about {days:.1f} days"
    )
    if days < storage.retention_days:
        detail += (
            f", less than the {storage.retention_days:g}-day retention: the {limit} rule will delete"
            " footage younger than the retention"
        )
        return CheckResult(name, Status.WARN, detail)
    return CheckResult(name, Status.OK, f"{detail} (retention {storage.retention_days:g} days)")


def _measured_bytes_per_day(ring: RingBuffer) -> tuple[float, float]:
    """Bytes per day over every camera, each measured over its last day of footage (or less, when it
    has less), and the longest stretch measured in seconds. Gaps inside that day count as time: a
    motion-mode camera's real rate includes its quiet hours."""
    per_day = 0.0
    measured = 0.0
    for camera, entry in ring.stats(past_cap=True).items():
        oldest, newest = entry.get("oldest_ts"), entry.get("newest_ts")
        if oldest is None or newest is None:
            continue
        window = min(_DAY_S, float(newest) - float(oldest))
        if window <= 0:
            continue
        rows = ring.segments(camera, float(newest) - window, float(newest))
        recent = sum(r.size for r in rows if r.start_ts >= float(newest) - window)
        per_day += recent / window * _DAY_S
        measured = max(measured, window)
    return per_day, measured


def _check_writable(path: Path) -> CheckResult:
    """Write and fsync a probe file; a directory still to be created is judged by its parent (the
    doctor creates nothing: a directory made by hand, as another user, would then stop the agent)."""
    name = "storage writable"
    if not path.exists():
        parent = _existing_ancestor(path)
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return CheckResult(name, Status.OK, f"{path} will be created in {parent}")
        detail = f"{path} does not exist and {parent} is not writable"
        return CheckResult(name, Status.FAIL, detail, blocks_recording=True)
    try:
        probe = path / f".doctor-{uuid.uuid4().hex}"
        with open(probe, "wb") as handle:
            handle.write(b"edge-agent doctor")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as error:
        return CheckResult(name, Status.FAIL, f"{path}: {error.strerror}", blocks_recording=True)
    return CheckResult(name, Status.OK, str(path))


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def _size(size: float) -> str:
    """GB, or MB below one GB (a measured rate is often that small)."""
    return _gb(size) if abs(size) >= 1e9 else f"{size / 1e6:.1f} MB"


# --- encoder -----------------------------------------------------------------------------------


def check_encoder(config: AgentConfig) -> CheckResult:
    """Open the encoders the recorder would try, in its order, and encode a few frames with each until
    one works, at the largest recording camera's resolution: what the agent will really record with."""
    from edge_agent.storage.encoder import board_model, encoder_candidates, probe_encoder

    name = "encoder"
    recording = [c for c in config.cameras if c.recording is not RecordingMode.OFF]
    if not recording:
        return CheckResult(name, Status.OK, "no camera records")
    camera = max(recording, key=lambda c: c.resolution[0] * c.resolution[1])
    width, height = camera.resolution
    storage = config.storage
    failed: list[str] = []
    for candidate in encoder_candidates(storage):
        reason = probe_encoder(storage, candidate, camera.resolution, camera.fps)
        if not reason:
            break
        failed.append(reason)
    else:
        detail = f"no encoder works at {width}x{height}: {'; '.join(failed)}"
        return CheckResult(name, Status.FAIL, detail, blocks_recording=True)
    detail = f"{candidate} encodes {width}x{height} (a test encode of a few frames)"
    if failed:
        detail += f"; {'; '.join(failed)}: the agent falls back to {candidate}"
        return CheckResult(name, Status.WARN, detail)
    if storage.encoder in ("", "auto") and storage.codec == "h264" and candidate == "libx264":
        detail += f"; no hardware H.264 encoder to try on {board_model() or 'this machine'}"
    return CheckResult(name, Status.OK, detail)


# --- clock -------------------------------------------------------------------------------------


def clock_state() -> tuple[bool | None, str]:
    """Whether the system clock is synchronized (None: unknown), and how that was learnt."""
    timedatectl = shutil.which("timedatectl")
    if timedatectl:
        try:
            done = subprocess.run(
                [timedatectl, "show", "-p", "NTPSynchronized", "--value"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip() in ("yes", "no"):
            return done.stdout.strip() == "yes", "timedatectl"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # struct timex with modes = 0 only reads; the buffer is larger than the struct on any ABI.
        timex = ctypes.create_string_buffer(512)
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return None, "no timedatectl, no adjtimex"
    if state < 0:
        return None, f"adjtimex: {os.strerror(ctypes.get_errno())}"
    return state != _TIME_ERROR, "kernel clock state (adjtimex)"


def check_clock(
    now: Clock = time.time,
    state: Callable[[], tuple[bool | None, str]] = clock_state,
) -> CheckResult:
    """The clock is plausible and synchronized: segment times and event times are evidence."""
    name = "clock synchronized"
    current = now()
    stamp = datetime.fromtimestamp(current, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if current < _EARLIEST_PLAUSIBLE:
        detail = f"the clock says {stamp}, which cannot be right: set the time or fix NTP"
        return CheckResult(name, Status.FAIL, detail)
    synced, how = state()
    if synced is None:
        return CheckResult(name, Status.WARN, f"{stamp}; synchronization unknown ({how})")
    if not synced:
        detail = (
            f"{stamp}, not synchronized ({how}): recorded times may drift; check that NTP"
            " (systemd-timesyncd or chrony) reaches a server"
        )
        return CheckResult(name, Status.WARN, detail)
    return CheckResult(name, Status.OK, f"{stamp}, synchronized ({how})")


# --- broker ------------------------------------------------------------------------------------


def check_broker(config: AgentConfig, timeout_s: float) -> CheckResult:
    """A real MQTT connection with the configured credentials and TLS (the agent's own client set-up)."""
    from edge_agent.link.mqtt import local_address, make_client

    mqtt_cfg: MqttConfig = config.mqtt
    name = "broker reachable"
    if not mqtt_cfg.enabled:
        return CheckResult(name, Status.WARN, "mqtt disabled: the CSU will not see this device")
    where = f"{mqtt_cfg.host}:{mqtt_cfg.port}"
    who = f" as {mqtt_cfg.username!r}" if mqtt_cfg.username else " anonymously"
    tls = mqtt_cfg.tls
    if tls is not None:
        for label, path in (("CA", tls.ca_file), ("certificate", tls.cert_file), ("key", tls.key_file)):
            if path is not None and not path.is_file():
                return CheckResult(name, Status.FAIL, f"TLS {label} file {path} is missing")
    answered = threading.Event()
    reply: list[str] = []

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object = None) -> None:
        reply.append("" if not getattr(reason, "is_failure", False) else str(reason))
        answered.set()

    try:
        # A client id of its own: reusing the agent's would disconnect a running agent.
        client = make_client(config, client_id=f"{config.site_id}-{config.device_id}-doctor-{os.getpid()}")
        client.on_connect = on_connect
        client.connect(mqtt_cfg.host, mqtt_cfg.port, keepalive=max(5, int(timeout_s) + 5))
    except socket.gaierror:
        detail = f"cannot resolve {mqtt_cfg.host!r} (DNS); events wait in the outbox meanwhile"
        return CheckResult(name, Status.FAIL, detail)
    except (OSError, ssl.SSLError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        detail = f"cannot connect to {where}: {reason}; events wait in the outbox meanwhile"
        return CheckResult(name, Status.FAIL, detail)
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            detail = f"{where} accepted TCP but sent no MQTT answer within {timeout_s:g} s"
            return CheckResult(name, Status.FAIL, detail)
        if reply[0]:
            return CheckResult(name, Status.FAIL, f"{where} refused the connection{who}: {reply[0]}")
        detail = f"connected to {where}{who}"
        if not config.clip_server.enabled:
            return CheckResult(name, Status.OK, detail)
        # The agent advertises its clip API under the address of this very connection (wildcard bind).
        clip_url = advertised_clip_url(config.clip_server, local_address(client))
        if not clip_url:
            detail += "; no clip URL the CSU can reach: set clip_server.advertise_url or a bind address"
            return CheckResult(name, Status.WARN, detail)
        return CheckResult(name, Status.OK, f"{detail}; the CSU is told clip URL {clip_url}")
    finally:
        client.disconnect()
        client.loop_stop()


# --- keys --------------------------------------------------------------------------------------


def check_keys(config: AgentConfig) -> list[CheckResult]:
    """The device's signing key (private, 0600), the CSU sealing key, the collectors' keys."""
    from edge_agent.formats.keys import (
        KeyFileError,
        load_ed25519_private,
        load_ed25519_public,
        load_x25519_public,
    )

    keys = config.keys
    results = []
    try:
        load_ed25519_private(keys.device_key)
    except KeyFileError as error:
        detail = str(error)
        if not keys.device_key.exists():
            detail = f"{keys.device_key} missing: provision the device (scripts/provision.py)"
        results.append(CheckResult("device key", Status.FAIL, detail, blocks_recording=True))
    else:
        mode = stat.S_IMODE(keys.device_key.stat().st_mode)
        results.append(CheckResult("device key", Status.OK, f"{keys.device_key}, mode {mode:04o}"))
    results.append(
        _check_public_key(
            "CSU sealing key", keys.csu_sealing_public_key, load_x25519_public, KeyFileError, True
        )
    )
    if not keys.collector_public_keys:
        status = Status.WARN if config.clip_server.enabled else Status.OK
        detail = "none: no collector can fetch clips from this device"
        results.append(CheckResult("collector keys", status, detail))
    for path in keys.collector_public_keys:
        results.append(_check_public_key("collector key", path, load_ed25519_public, KeyFileError, False))
    return results


def _check_public_key(
    name: str,
    path: Path,
    load: Callable[[Path], object],
    error_type: type[Exception],
    blocking: bool,
) -> CheckResult:
    try:
        load(path)
    except error_type as error:
        return CheckResult(name, Status.FAIL, str(error), blocks_recording=blocking)
    if stat.S_IMODE(path.stat().st_mode) & 0o022:
        detail = f"{path} is writable by others: anyone could swap the key; chmod 644"
        return CheckResult(name, Status.FAIL, detail, blocks_recording=blocking)
    return CheckResult(name, Status.OK, str(path))


# --- clip server -------------------------------------------------------------------------------


def check_clip_port(config: AgentConfig) -> CheckResult:
    """The clip server's address can be bound."""
    server = config.clip_server
    name = "clip server port free"
    if not server.enabled:
        return CheckResult(name, Status.OK, "clip server disabled")
    where = f"{server.bind}:{server.port}"
    family = socket.AF_INET6 if ":" in server.bind else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((server.bind, server.port))
    except OSError as error:
        hint = ""
        if error.errno == errno.EADDRINUSE:
            hint = ": another program listens there (a running edge-agent? stop it first)"
        return CheckResult(name, Status.FAIL, f"{where}: {error.strerror}{hint}")
    for label, path in (("certificate", server.tls_cert), ("key", server.tls_key)):
        if path is not None and not path.is_file():
            return CheckResult(name, Status.FAIL, f"{where} free, but TLS {label} {path} is missing")
    scheme = "https" if server.tls_cert else "http"
    return CheckResult(name, Status.OK, f"{scheme} on {where}")


# --- the whole report --------------------------------------------------------------------------


def run_checks(config: AgentConfig, timeout_s: float = 10.0) -> list[CheckResult]:
    """Every check, in the order a technician fixes things."""
    results: list[CheckResult] = []
    for camera in config.cameras:
        reachable, size = probe_camera(camera, timeout_s)
        results.append(reachable)
        results.append(check_masks(camera, size))
    if not config.cameras:
        results.append(CheckResult("cameras", Status.WARN, "none configured: nothing is recorded"))
    results.extend(check_storage(config))
    results.append(check_measured_days(config))
    results.append(check_encoder(config))
    results.append(check_clock())
    results.append(check_broker(config, timeout_s))
    results.extend(check_keys(config))
    results.append(check_clip_port(config))
    return results


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `doctor` command."""
    parser = subparsers.add_parser(
        "doctor", help="check cameras, masks, storage, clock, broker, keys and ports; explain each"
    )
    parser.add_argument("--config", type=Path, required=True, help="the YAML config file")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for a camera or the broker"
    )
    parser.set_defaults(handler=doctor)


def doctor(args: argparse.Namespace) -> int:
    """Print one line per check and a verdict; exit 0 (fine), 1 (recording blocked) or 2."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"fail  config: {args.config}: {len(error.errors)} error(s) (blocks recording)")
        for line in error.errors:
            print(f"        {line}")
        return EXIT_BLOCKED
    print(f"ok    config: site {config.site_id}, device {config.device_id}")
    results = run_checks(config, args.timeout)
    for result in results:
        print(result.line())
    code = exit_code(results)
    if code == EXIT_BLOCKED:
        blocked = ", ".join(r.name for r in results if r.status is Status.FAIL and r.blocks_recording)
        print(f"recording is blocked by: {blocked}")
    elif code == EXIT_FAILED:
        print("recording can start, but fix the failures above")
    else:
        print("ready to record")
    return code
