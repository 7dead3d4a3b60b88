"""Push delivery and metered-link benchmark: what a nomad camera on 4G costs.

`mqtt_idle`: the MQTT bytes per day of one idle camera (status, availability, keep-alive). A real
`MqttLink` talks to a real mosquitto through a loopback proxy that parses the MQTT packets and counts
their bytes (TCP payload: IP and TCP headers come on top) by kind. Each message's size is measured; how
many a day follows from the cadence, itself checked by counting the statuses of a time-compressed run
(status checked every second, heartbeat every 5 s): the old cadence (a status every interval) against
on-change plus a heartbeat.

`push`: a 5-minute 720p clip (the sealed segments of `bench_clips`) pushed by a device process (the
`Uploader`, as the agent runs it) to a collector process (upload endpoint, then verify, decrypt, remux and
sign the evidence, as `fetch-clip --via push` does), each on its own core: throughput without a cap and
with a 2 Mbit/s cap, the bytes sent again after 3 forced cuts (a loopback proxy that drops every
connection at a quarter, half and three quarters of the bundle), and each side's peak RSS for a 1- and
a 5-minute clip (flat in the clip length: one 1 MiB chunk in memory on the device, 64 kB pieces on the
collector).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(SCRIPTS))

from tests.relay_support import LoopbackRelay  # noqa: E402 (the project root is on the path just above)

ALL_CORES = True
"""The device and the collector are separate processes, one core each (separate machines in the field)."""

DAY_S = 86400.0
UPLOAD_ID = "b" * 32
TOKEN = "bench-token-" + "t" * 24
_PACKET_NAMES = {
    1: "connect",
    2: "connack",
    3: "publish",
    4: "puback",
    8: "subscribe",
    9: "suback",
    12: "pingreq",
    13: "pingresp",
    14: "disconnect",
}


@dataclass
class _Direction:
    """Incremental MQTT packet splitter for one direction of a connection."""

    buffer: bytearray = field(default_factory=bytearray)
    counts: Counter[str] = field(default_factory=Counter)
    sizes: Counter[str] = field(default_factory=Counter)

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            packet = self._next_packet()
            if packet is None:
                return
            kind, size = packet
            self.counts[kind] += 1
            self.sizes[kind] += size

    def _next_packet(self) -> tuple[str, int] | None:
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        remaining, multiplier, index = 0, 1, 1
        while True:
            if index >= len(buffer):
                return None
            byte = buffer[index]
            remaining += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
        total = index + remaining
        if len(buffer) < total:
            return None
        packet_type = buffer[0] >> 4
        kind = _PACKET_NAMES.get(packet_type, f"type{packet_type}")
        if packet_type == 3:
            topic_length = int.from_bytes(buffer[index : index + 2], "big")
            topic = bytes(buffer[index + 2 : index + 2 + topic_length]).decode("utf-8", "replace")
            kind = f"publish:{topic.rsplit('/', 1)[-1]}"
        del buffer[:total]
        return kind, total


class MqttMeter(LoopbackRelay):
    """A loopback TCP proxy to a broker that counts MQTT packets and bytes in each direction."""

    def __init__(self, broker_port: int) -> None:
        self.up = _Direction()  # device -> broker
        self.down = _Direction()  # broker -> device
        self._lock = threading.Lock()
        super().__init__(broker_port)

    def relay(self, client: socket.socket) -> None:
        """Relay the connection, counting what passes each way."""
        self.pump(client, to_server=self._counter(self.up), to_client=self._counter(self.down))

    def _counter(self, direction: _Direction) -> Callable[[bytes], bytes]:
        def count(data: bytes) -> bytes:
            with self._lock:
                direction.feed(data)
            return data

        return count

    def snapshot(self) -> dict[str, dict[str, int]]:
        """{kind: {count, bytes}} over both directions."""
        with self._lock:
            kinds = set(self.up.counts) | set(self.down.counts)
            return {
                kind: {
                    "count": self.up.counts[kind] + self.down.counts[kind],
                    "bytes": self.up.sizes[kind] + self.down.sizes[kind],
                }
                for kind in sorted(kinds)
            }


def _idle_config(workdir: Path, broker_port: int, mqtt: dict[str, Any]) -> Any:
    from edge_agent.formats.config import parse_config

    return parse_config(
        {
            "site_id": "ville-01",
            "device_id": "nomad-03",
            "cameras": [
                {"id": "cam1", "source": "synthetic", "masks": [{"points": [[0, 0], [0.2, 0], [0.2, 0.2]]}]}
            ],
            "storage": {"path": str(workdir / "segments")},
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker_port,
                "outbox_path": str(workdir / "outbox.sqlite"),
                **mqtt,
            },
            "clip_server": {"enabled": False},
        }
    )


def _idle_report(config: Any) -> Any:
    """One running camera with nothing happening: the counters an idle camera shows."""
    from edge_agent.camera.pipeline import CameraState, CameraStats
    from edge_agent.link.status import CameraReport, DeviceReport
    from edge_agent.storage.recorder import RecorderStats

    camera = config.cameras[0]
    worker = CameraStats("cam1", CameraState.RUNNING, 10.0, 123_456, 0, (1280, 720), 1, 0, False, 0, "")
    recorder = RecorderStats("cam1", True, 1234, 2_500_000_000, 123_456, 0, 0, "")
    return DeviceReport([CameraReport(camera, worker, recorder)], oldest_ts=time.time() - 14 * 86400)


def _run_link(workdir: Path, broker_port: int, mqtt: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Run one MqttLink through a meter for `seconds`; the packets counted by kind."""
    from edge_agent.link.mqtt import MqttLink

    meter = MqttMeter(broker_port)
    config = _idle_config(workdir, meter.port, mqtt)
    report = _idle_report(config)
    link = MqttLink(config, lambda: report)
    link.start()
    time.sleep(seconds)
    counted = meter.snapshot()
    link.stop()
    meter.close()
    return counted


def _per_day(
    counted: dict[str, dict[str, int]], status_period_s: float, keepalive_s: float
) -> dict[str, Any]:
    """Bytes per day at a production cadence, from the measured size of each message."""

    def each(kind: str) -> float:
        entry = counted.get(kind) or {"count": 0, "bytes": 0}
        return entry["bytes"] / entry["count"] if entry["count"] else 0.0

    # A QoS 1 status costs its PUBLISH and the broker's PUBACK.
    status_bytes = each("publish:status") + each("puback")
    ping_bytes = each("pingreq") + each("pingresp")
    status_day = status_bytes * DAY_S / status_period_s
    ping_day = ping_bytes * DAY_S / keepalive_s
    return {
        "status_message_bytes": round(status_bytes),
        "status_per_day": round(DAY_S / status_period_s),
        "keepalive_round_bytes": round(ping_bytes),
        "status_bytes_per_day": round(status_day),
        "keepalive_bytes_per_day": round(ping_day),
        "total_bytes_per_day": round(status_day + ping_day),
        "per_connection_bytes": round(
            sum(
                each(kind)
                for kind in ("connect", "connack", "subscribe", "suback", "publish:availability", "puback")
            )
        ),
    }


def mqtt_idle(quick: bool) -> dict[str, Any]:
    """Bytes per day of one idle camera: the old cadence against on-change plus heartbeat."""
    from edge_agent.formats.config import MqttConfig
    from edge_agent.link.localbroker import LocalBroker

    defaults = MqttConfig()
    seconds = 12.0 if quick else 30.0
    heartbeat_default = float(getattr(defaults, "status_heartbeat_s", defaults.status_interval_s))
    result: dict[str, Any] = {
        "note": "TCP payload bytes of MQTT packets (IP/TCP headers not counted); per-message sizes"
        " measured, per-day counts from the cadence; compressed run: status checked every 1 s",
        "keepalive_s": defaults.keepalive_s,
        "status_interval_s": defaults.status_interval_s,
        "status_heartbeat_s": heartbeat_default,
    }
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp, LocalBroker() as broker:
        workdir = Path(tmp)
        modes = {"every_interval": 1.0, "on_change_heartbeat": 5.0}
        for mode, heartbeat in modes.items():
            mqtt: dict[str, Any] = {"status_interval_s": 1, "keepalive_s": 5}
            if hasattr(defaults, "status_heartbeat_s"):
                mqtt["status_heartbeat_s"] = heartbeat
            counted = _run_link(workdir / mode, broker.port, mqtt, seconds)
            period = defaults.status_interval_s if mode == "every_interval" else heartbeat_default
            result[mode] = {
                "compressed_run": {"seconds": seconds, "heartbeat_s": heartbeat, "packets": counted},
                "statuses_in_run": (counted.get("publish:status") or {}).get("count", 0),
                **_per_day(counted, period, defaults.keepalive_s),
            }
    return result


# --- push delivery ---------------------------------------------------------------------------------


def device_main(config_path: str) -> None:
    """The device: obey the signed command read from stdin, print the upload's figures and peak RSS."""
    from bench_clips import T0, peak_rss_mb, pin_to_core

    from edge_agent.api.delivery import request_verifier
    from edge_agent.api.uploader import Uploader
    from edge_agent.formats.audit import AuditLog
    from edge_agent.formats.config import load_config
    from edge_agent.formats.keys import load_ed25519_private, load_ed25519_public
    from edge_agent.storage.ringbuffer import RingBuffer

    pin_to_core(0)
    config = load_config(Path(config_path), environ={})
    ring = RingBuffer(config.storage.path, config.storage, clock=lambda: T0)
    verifier = request_verifier(
        config.clip_server, [load_ed25519_public(p) for p in config.keys.collector_public_keys]
    )
    uploader = Uploader(
        config,
        ring,
        AuditLog(config.clip_server.audit_log),
        load_ed25519_private(config.keys.device_key),
        verifier,
        lambda _result, _request_id: None,
    )
    command = json.loads(sys.stdin.readline())
    started = time.perf_counter()
    reply = uploader.handle_command(command)
    if not reply["ok"]:
        raise SystemExit(f"device refused the command: {reply}")
    uploader.wait(3600)
    seconds = time.perf_counter() - started
    counters = uploader.last_counters
    assert counters is not None
    result = {"size": reply["size"], "seconds": seconds, "maxrss_mb": peak_rss_mb()}
    print(json.dumps(result | vars(counters)), flush=True)
    ring.close()


def collector_main(spool: str, keys_dir: str, device_pub: str, minutes: str, export: str, nonce: str) -> None:
    """The collector: receive the upload, then verify and export it; print timings and peak RSS. `nonce`
    is the signed command's, which the pushed bundle must name."""
    from bench_clips import T0, peak_rss_mb, pin_to_core

    from edge_agent.collector.fetch import ClipRequest, CollectorKeys, export_bundle
    from edge_agent.collector.upload_endpoint import UploadEndpoint, UploadEndpointThread
    from edge_agent.formats.audit import AuditLog
    from edge_agent.formats.keys import load_ed25519_private, load_ed25519_public, load_x25519_private

    pin_to_core(1)
    endpoint = UploadEndpoint(Path(spool))
    thread = UploadEndpointThread(endpoint)
    thread.start()
    endpoint.register(UPLOAD_ID, TOKEN, time.time() + 3600, 1 << 34)
    print(json.dumps({"port": endpoint.port}), flush=True)
    while not endpoint.is_complete(UPLOAD_ID):
        endpoint.wait_changed(0.5)
    thread.stop()
    out = Path(export)
    out.mkdir(parents=True, exist_ok=True)
    os.replace(endpoint.part_path(UPLOAD_ID), out / "bundle.tar")
    keys_path = Path(keys_dir)
    keys = CollectorKeys(
        load_ed25519_private(keys_path / "csu_ed25519.pem"),
        load_x25519_private(keys_path / "csu_x25519.pem"),
        load_ed25519_public(Path(device_pub)),
    )
    request = ClipRequest("bench", "pi-bench", "cam1", T0, T0 + float(minutes) * 60, "BENCH-1", nonce=nonce)
    outcome = export_bundle(request, keys, out, AuditLog(out / "collector-audit.jsonl"), "bench", via="push")
    result = {
        "result": outcome.evidence["verification"]["result"],
        "frames": outcome.evidence["clip"]["frames"],
        "verify_export_s": outcome.verify_export_s,
        "maxrss_mb": peak_rss_mb(),
    }
    print(json.dumps(result), flush=True)


class CuttingProxy(LoopbackRelay):
    """A loopback proxy toward the collector that drops every open connection when the bytes the device
    sent through it reach each of `cuts_at` (a link that drops, three times)."""

    def __init__(self, target_port: int, cuts_at: list[int]) -> None:
        self.cuts_at = sorted(cuts_at)
        self.forwarded = 0
        self.cuts = 0
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        super().__init__(target_port)

    def relay(self, client: socket.socket) -> None:
        """Relay the connection, counting the device's bytes toward the next cut."""
        with self._lock:
            self._clients.append(client)
        self.pump(client, to_server=self._count_up)

    def _count_up(self, data: bytes) -> bytes:
        with self._lock:
            self.forwarded += len(data)
            cut = bool(self.cuts_at) and self.forwarded >= self.cuts_at[0]
            if cut:
                self.cuts_at.pop(0)
                self.cuts += 1
                clients, self._clients = self._clients, []
        if not cut:
            return data
        # This connection ends here, with nothing more forwarded (the pump closes both of its sockets on
        # the error); the others are shut down: each of their pumps then closes its upstream side too.
        for sock in clients:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        raise ConnectionAbortedError("the link drops here")


def _push_once(
    workdir: Path, prepared: dict[str, Any], minutes: float, kbps: int, cuts: int, name: str
) -> dict[str, Any]:
    """One push of `minutes` of footage: the device's and the collector's figures."""
    import yaml
    from bench_clips import T0

    from edge_agent.formats.keys import load_ed25519_private
    from edge_agent.formats.signing import RequestSigner, new_nonce, signed_command
    from edge_agent.formats.times import iso_ms

    spool, export = workdir / f"spool-{name}", workdir / f"export-{name}"
    keys_dir = prepared["csu"].signing.private.parent
    nonce = new_nonce()
    collector = subprocess.Popen(
        [sys.executable, __file__, "--collector", str(spool), str(keys_dir), str(prepared["device_pub"]),
         str(minutes), str(export), nonce],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert collector.stdout is not None
    port = json.loads(collector.stdout.readline())["port"]
    proxy = CuttingProxy(port, []) if cuts else None
    base = f"http://127.0.0.1:{proxy.port if proxy else port}"
    config = prepared["config"]
    clip = config.clip_server.model_copy(update={"collector_urls": [base], "upload_kbps": kbps})
    document = json.loads(config.model_copy(update={"clip_server": clip}).model_dump_json())
    config_path = workdir / f"device-{name}.yaml"
    config_path.write_text(yaml.safe_dump(document))
    fields = {
        "camera": "cam1",
        "start": iso_ms(T0),
        "end": iso_ms(T0 + minutes * 60),
        "requisition": "BENCH-1",
        "upload_url": f"{base}/v1/uploads/{UPLOAD_ID}",
        "token": TOKEN,
        "expires": iso_ms(time.time() + 3600),
    }
    signer = RequestSigner(load_ed25519_private(prepared["csu"].signing.private))
    command = signed_command("upload_clip", fields, signer, nonce=nonce)
    if proxy is not None:
        size_hint = prepared["bytes"] * minutes / prepared["minutes"]
        proxy.cuts_at = [int(size_hint * f) for f in (0.25, 0.5, 0.75)][:cuts]
    device = subprocess.run(
        [sys.executable, __file__, "--device", str(config_path)],
        input=json.dumps(command) + "\n",
        capture_output=True,
        text=True,
    )
    if device.returncode:
        raise RuntimeError(f"device failed: {device.stderr[-2000:]}")
    device_result = json.loads(device.stdout.strip().splitlines()[-1])
    collector_out, _ = collector.communicate(timeout=600)
    collector_result = json.loads(collector_out.strip().splitlines()[-1])
    if proxy is not None:
        proxy.close()
    shutil.rmtree(export, ignore_errors=True)
    size = device_result["size"]
    result = {
        "clip_minutes": minutes,
        "bundle_mb": round(size / 1e6, 1),
        "upload_kbps_cap": kbps,
        "upload_seconds": round(device_result["seconds"], 2),
        "throughput_mbit_s": round(size * 8 / 1e6 / device_result["seconds"], 2),
        "verify_export_s": round(collector_result["verify_export_s"], 2),
        "result": collector_result["result"],
        "frames": collector_result["frames"],
        "device_peak_rss_mb": round(device_result["maxrss_mb"], 1),
        "collector_peak_rss_mb": round(collector_result["maxrss_mb"], 1),
    }
    if kbps:
        result["cap_ratio"] = round(size * 8 / 1000 / device_result["seconds"] / kbps, 3)
    if cuts:
        result |= {
            "forced_cuts": proxy.cuts if proxy else 0,
            "retries": device_result["retries"],
            "bytes_sent": device_result["sent"],
            "bytes_sent_beyond_bundle": device_result["sent"] - size,
            "acknowledged_bytes_resent": device_result["resent"],
        }
    return result


def push(quick: bool) -> dict[str, Any]:
    """Push a 5-minute 720p clip (1 minute when quick): no cap, 2 Mbit/s cap, 3 cuts; RSS at two lengths."""
    from bench_clips import prepare

    long_minutes = 1.0 if quick else 5.0
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        prepared = prepare(workdir, long_minutes)
        prepared["minutes"] = long_minutes
        prepare_s = time.perf_counter() - started
        short = _push_once(workdir, prepared, long_minutes / 5, 0, 0, "short")
        uncapped = _push_once(workdir, prepared, long_minutes, 0, 0, "uncapped")
        capped = _push_once(workdir, prepared, long_minutes, 2000, 0, "capped")
        cut = _push_once(workdir, prepared, long_minutes, 0, 3, "cuts")
    return {
        "segment": "720p H.264 ~2 Mbit/s, 10 s per sealed segment (bench_clips)",
        "prepare_seconds": round(prepare_s, 1),
        "uncapped": uncapped,
        "capped_2mbit": capped,
        "three_cuts": cut,
        "short_uncapped": short,
        "device_rss_growth_mb": round(uncapped["device_peak_rss_mb"] - short["device_peak_rss_mb"], 1),
        "collector_rss_growth_mb": round(
            uncapped["collector_peak_rss_mb"] - short["collector_peak_rss_mb"], 1
        ),
        "note": "device and collector in separate processes, one core each; HTTP on loopback",
    }


def run(quick: bool) -> dict[str, Any]:
    """Every section of the push benchmark."""
    return {"mqtt_idle": mqtt_idle(quick), "push": push(quick)}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--device":
        device_main(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--collector":
        collector_main(*sys.argv[2:8])
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
