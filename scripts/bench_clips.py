"""Clip fetch benchmark: loopback throughput and peak memory of device and collector.

A ring buffer is filled with sealed segments of realistic size (720p H.264 at about 2 Mbit/s, 10 s per
segment: one real GOP sequence encoded once, re-sealed per segment with its own keys, times and chain).
Then a device process serves it (ClipServer in its thread, as in the agent) and a collector process
runs `fetch_clip` for the whole range: download over loopback, verify every signature and the chain,
decrypt, remux to MP4, write the signed evidence. Each side runs in its own process on its own core
(they are different machines in the field) and reports its own peak RSS (ru_maxrss); a short and a
long clip show whether memory grows with the clip length. Throughput counts bundle bytes over the
collector's whole wall time, verification and decryption included. Medians of the repetitions.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T0 = 1_900_000_000.0  # far enough in the future that no retention pass touches the bench footage
SEGMENT_S = 10.0
FPS = 10


def _encode_gop_sequence(seconds: float, size: tuple[int, int] = (1280, 720)) -> list[Any]:
    """`seconds` of 720p H.264 (keyframe every 2 s, in-band parameter sets, ~2 Mbit/s)."""
    import av
    import numpy as np

    from edge_agent.formats.media import EncodedPacket

    width, height = size
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 1000)
    encoder.framerate = Fraction(FPS)
    encoder.options = {
        "g": str(2 * FPS),
        "bf": "0",
        "preset": "ultrafast",
        "b": "2000k",
        "maxrate": "2000k",
        "bufsize": "4000k",
    }
    encoder.open()
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    packets = []
    for index in range(int(seconds * FPS)):
        image = np.roll(base, index * 4, axis=1)
        image[::7] = rng.integers(0, 255, image[::7].shape, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = index * (1000 // FPS)
        packets += list(encoder.encode(frame))
    packets += list(encoder.encode(None))
    return [
        EncodedPacket(int(p.pts), int(p.dts), 1000 // FPS, bool(p.is_keyframe), bytes(p)) for p in packets
    ]


def prepare(workdir: Path, minutes: float) -> dict[str, Any]:
    """Keys, config and a ring buffer holding `minutes` of sealed footage of camera cam1."""
    from edge_agent.formats.config import parse_config
    from edge_agent.formats.keys import (
        generate_csu_keys,
        generate_device_key,
        load_ed25519_private,
        load_x25519_public,
    )
    from edge_agent.formats.media import EncodedPacket, StreamInfo
    from edge_agent.formats.sealing import SegmentWriter
    from edge_agent.storage.ringbuffer import RingBuffer

    device_paths = generate_device_key(workdir / "device")
    csu_paths = generate_csu_keys(workdir / "csu")
    device_key = load_ed25519_private(device_paths.private)
    csu_public = load_x25519_public(csu_paths.sealing.public)
    config = parse_config(
        {
            "site_id": "bench",
            "device_id": "pi-bench",
            "cameras": [{"id": "cam1", "source": "synthetic", "require_masks": False}],
            "storage": {"path": str(workdir / "ring"), "min_free_bytes": 0, "segment_seconds": SEGMENT_S},
            "clip_server": {
                "bind": "127.0.0.1",
                "port": 0,
                "audit_log": str(workdir / "audit.jsonl"),
                "rate_limit_bytes_s": 0,
                "max_clip_seconds": 2 * 3600,
            },
            "keys": {
                "device_key": str(device_paths.private),
                "collector_public_keys": [str(csu_paths.signing.public)],
            },
        }
    )
    gop = _encode_gop_sequence(SEGMENT_S)
    stream = StreamInfo("h264", "libx264", 1280, 720, "yuv420p", Fraction(1, 1000), FPS, T0, b"")
    ring = RingBuffer(config.storage.path, config.storage, clock=lambda: T0)
    segments = int(minutes * 60 / SEGMENT_S)
    for index in range(segments):
        offset = int(index * SEGMENT_S * 1000)
        pending = ring.begin("cam1")
        writer = SegmentWriter(
            pending.file,
            camera="cam1",
            device="pi-bench",
            sequence=pending.sequence,
            prev_sha256=pending.prev_sha256,
            stream=stream,
            start_ts=stream.seconds(offset),
            device_key=device_key,
            csu_public_key=csu_public,
        )
        for packet in gop:
            writer.append(
                EncodedPacket(
                    packet.pts + offset,
                    (packet.dts or 0) + offset,
                    packet.duration,
                    packet.keyframe,
                    packet.data,
                )
            )
        ring.commit(pending, writer.finish())
    ring.close()
    return {
        "config": config,
        "csu": csu_paths,
        "device_pub": device_paths.public,
        "bytes": sum(p.stat().st_size for p in (workdir / "ring").rglob("*.seg")),
    }


def pin_to_core(core_index: int) -> None:
    """Run this process on one core (of the ones there are), so that each side of a bench has its own."""
    cores = os.cpu_count() or 1
    if hasattr(os, "sched_setaffinity") and cores > 1:
        os.sched_setaffinity(0, {core_index % cores})


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: ru_maxrss would include the parent's, kept across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_main(config_path: str) -> None:
    """Serve the ring buffer until stdin closes; print the port, then peak RSS."""
    from edge_agent.api.clip_server import ClipServer, ClipServerThread
    from edge_agent.formats.audit import AuditLog
    from edge_agent.formats.config import load_config
    from edge_agent.formats.keys import load_ed25519_private, load_ed25519_public
    from edge_agent.storage.ringbuffer import RingBuffer

    pin_to_core(0)
    config = load_config(Path(config_path), environ={})
    ring = RingBuffer(config.storage.path, config.storage, clock=lambda: T0)
    server = ClipServer(
        config,
        ring,
        AuditLog(config.clip_server.audit_log),
        load_ed25519_private(config.keys.device_key),
        [load_ed25519_public(p) for p in config.keys.collector_public_keys],
    )
    thread = ClipServerThread(server)
    thread.start()
    print(json.dumps({"port": server.port}), flush=True)
    sys.stdin.read()
    thread.stop()
    print(json.dumps({"maxrss_mb": peak_rss_mb()}), flush=True)


def collector_main(url: str, keys_dir: str, device_pub: str, minutes: str, out: str) -> None:
    """Fetch the whole range; print bytes, seconds and peak RSS."""
    from edge_agent.collector.download import DeviceEndpoint
    from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
    from edge_agent.formats.audit import AuditLog
    from edge_agent.formats.keys import load_ed25519_private, load_ed25519_public, load_x25519_private
    from edge_agent.formats.signing import RequestSigner

    pin_to_core(1)
    keys_path = Path(keys_dir)
    signing = load_ed25519_private(keys_path / "csu_ed25519.pem")
    keys = CollectorKeys(
        signing, load_x25519_private(keys_path / "csu_x25519.pem"), load_ed25519_public(Path(device_pub))
    )
    request = ClipRequest("bench", "pi-bench", "cam1", T0, T0 + float(minutes) * 60, "BENCH-1")
    started = time.perf_counter()
    outcome = fetch_clip(
        DeviceEndpoint(url, RequestSigner(signing)),
        request,
        keys,
        Path(out),
        AuditLog(Path(out) / "collector-audit.jsonl"),
    )
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "bytes": outcome.evidence["bundle"]["size"],
                "seconds": seconds,
                "result": outcome.evidence["verification"]["result"],
                "frames": outcome.evidence["clip"]["frames"],
                "download_s": outcome.download_s,
                "verify_export_s": outcome.verify_export_s,
                "maxrss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


def _measure(workdir: Path, prepared: dict[str, Any], minutes: float, repeat: int) -> dict[str, Any]:
    import yaml

    config_path = workdir / "device.yaml"
    config_path.write_text(yaml.safe_dump(json.loads(prepared["config"].model_dump_json())))
    device = subprocess.Popen(
        [sys.executable, __file__, "--device", str(config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert device.stdout is not None and device.stdin is not None
    port = json.loads(device.stdout.readline())["port"]
    runs = []
    for index in range(repeat):
        out = workdir / f"export-{minutes:g}-{index}"
        result = subprocess.run(
            [
                sys.executable,
                __file__,
                "--collector",
                f"http://127.0.0.1:{port}",
                str(prepared["csu"].signing.private.parent),
                str(prepared["device_pub"]),
                str(minutes),
                str(out),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(f"collector failed: {result.stderr[-2000:]}")
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        for path in sorted(out.glob("*")):
            path.unlink()
    device.stdin.close()
    device_rss = json.loads(device.stdout.read().strip().splitlines()[-1])["maxrss_mb"]
    device.wait()
    rates = [r["bytes"] / r["seconds"] / 1e6 for r in runs]
    download = [r["bytes"] / r["download_s"] / 1e6 for r in runs]
    processing = [r["bytes"] / r["verify_export_s"] / 1e6 for r in runs]
    return {
        "clip_minutes": minutes,
        "bundle_mb": round(runs[0]["bytes"] / 1e6, 1),
        "frames": runs[0]["frames"],
        "result": runs[0]["result"],
        "fetch_mb_s_median": round(statistics.median(rates), 1),
        "fetch_mb_s_runs": [round(r, 1) for r in rates],
        "download_only_mb_s_median": round(statistics.median(download), 1),
        "verify_decrypt_remux_mb_s_median": round(statistics.median(processing), 1),
        "collector_peak_rss_mb_median": round(statistics.median(r["maxrss_mb"] for r in runs), 1),
        "device_peak_rss_mb": round(device_rss, 1),
    }


def run(quick: bool) -> dict[str, Any]:
    """Fetch a short and a long clip (1 hour, or 10 min when quick) and report rates and memory."""
    lengths = (2.0, 10.0) if quick else (5.0, 60.0)
    repeat = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-clips-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        prepared = prepare(workdir, max(lengths))
        prepare_s = time.perf_counter() - started
        results = [_measure(workdir, prepared, minutes, repeat) for minutes in lengths]
    short, long = results
    return {
        "segment": "720p H.264 ~2 Mbit/s, 10 s per sealed segment",
        "prepare_seconds": round(prepare_s, 1),
        "short": short,
        "long": long,
        "fetch_mb_s_median": long["fetch_mb_s_median"],
        "collector_rss_growth_mb": round(
            long["collector_peak_rss_mb_median"] - short["collector_peak_rss_mb_median"], 1
        ),
        "device_rss_growth_mb": round(long["device_peak_rss_mb"] - short["device_peak_rss_mb"], 1),
        "note": "device and collector in separate processes, one core each; loopback HTTP",
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--device":
        device_main(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--collector":
        collector_main(*sys.argv[2:7])
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
