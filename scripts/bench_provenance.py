"""Provenance benchmark (issue 15): what the C2PA manifest costs an export, and the standalone verifier's
speed.

The footage is `bench_clips`' (720p H.264 at about 2 Mbit/s, 10 fps, 10 s sealed segments, version 2:
each segment signs its packets' frame hashes). A clip server in a thread serves it, the collector
fetches the whole range once; then, on that bundle:

- `export_s`: verify, decrypt and remux to MP4 (`process_bundle`, what every export does);
- `c2pa_sign_s`: build the `fr.csu.evidence.v1` assertion and embed the signed C2PA manifest
  (`provenance.sign_export`: the library hashes the file, writes the signed copy, and validates it);
- `manifest_bytes` and `size_overhead_pct`: the signed MP4 against the unsigned one;
- `verifier_mb_s`: `scripts/verify_evidence.py` in its own process, interpreter start included (C2PA
  validation, the device's signature of every sealed segment, every sample's frame hash), over the MP4
  plus the sealed original;
  `collector_verify_mb_s`: the same checks by `provenance.verify_clip` in process.

Medians of 3 repetitions (1 when quick) on the same bundle; the machine is shared, so runs vary.
"""

from __future__ import annotations

import datetime
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def _bench_clips() -> Any:
    """`bench_clips` (its footage preparation), loaded by path like bench.py loads areas."""
    spec = importlib.util.spec_from_file_location("bench_clips", SCRIPTS / "bench_clips.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fetch(workdir: Path, prepared: dict[str, Any], minutes: float, t0: float) -> Path:
    """Download the bundle of the whole range (the export directory it lands in)."""
    from edge_agent.api.clip_server import ClipServer, ClipServerThread
    from edge_agent.collector.download import DeviceEndpoint
    from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
    from edge_agent.formats.audit import AuditLog
    from edge_agent.formats.keys import load_ed25519_private, load_ed25519_public, load_x25519_private
    from edge_agent.formats.signing import RequestSigner
    from edge_agent.storage.ringbuffer import RingBuffer

    config = prepared["config"]
    csu = prepared["csu"]
    signing = load_ed25519_private(csu.signing.private)
    ring = RingBuffer(config.storage.path, config.storage, clock=lambda: t0)
    server = ClipServer(
        config,
        ring,
        AuditLog(config.clip_server.audit_log),
        load_ed25519_private(config.keys.device_key),
        [signing.public_key()],
    )
    thread = ClipServerThread(server)
    thread.start()
    keys = CollectorKeys(
        signing, load_x25519_private(csu.sealing.private), load_ed25519_public(prepared["device_pub"])
    )
    request = ClipRequest("bench", "pi-bench", "cam1", t0, t0 + minutes * 60, "BENCH-1", "bench")
    try:
        with DeviceEndpoint(server.local_url, RequestSigner(signing)) as endpoint:
            outcome = fetch_clip(
                endpoint, request, keys, workdir / "export", AuditLog(workdir / "audit.jsonl")
            )
    finally:
        thread.stop()
        ring.close()
    return outcome.export_dir


def run(quick: bool) -> dict[str, Any]:
    """An hour of 720p (5 minutes when quick): export with and without the manifest, then verify."""
    from edge_agent.collector.evidence import process_bundle
    from edge_agent.collector.pki import init_pki, load_credential
    from edge_agent.collector.provenance import sign_export, verify_clip
    from edge_agent.formats.keys import load_ed25519_public, load_x25519_private

    clips = _bench_clips()
    minutes = 5.0 if quick else 60.0
    with tempfile.TemporaryDirectory(prefix="bench-provenance-") as tmp:
        workdir = Path(tmp)
        prepared = clips.prepare(workdir, minutes)
        export = _fetch(workdir, prepared, minutes, clips.T0)
        device = load_ed25519_public(prepared["device_pub"])
        csu = load_x25519_private(prepared["csu"].sealing.private)
        pki = init_pki(workdir / "pki", "Bench", datetime.datetime.now(datetime.UTC))
        credential = load_credential(pki.directory)
        bundle, clip = export / "bundle.tar", export / "clip.mp4"

        exports, signs, scripts, collectors = [], [], [], []
        for _ in range(1 if quick else 3):
            started = time.perf_counter()
            check = process_bundle(bundle, device, csu, clip)
            exports.append(time.perf_counter() - started)
            plain_size = clip.stat().st_size
            started = time.perf_counter()
            manifest_bytes = sign_export(
                clip,
                check.manifest,
                device,
                check.sealed,
                check.samples,
                check.gaps(),
                check.chain,
                credential,
            )
            signs.append(time.perf_counter() - started)
            signed_size = clip.stat().st_size
            checked_mb = (signed_size + bundle.stat().st_size) / 1e6
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, str(SCRIPTS / "verify_evidence.py"), str(clip), "--ca", str(pki.ca_cert)],
                capture_output=True,
                text=True,
                check=False,
            )
            scripts.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"verify_evidence.py failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
            started = time.perf_counter()
            report = verify_clip(clip, credential.ca_pem(), bundle)
            collectors.append(time.perf_counter() - started)
        rss = clips.peak_rss_mb()
    export_s, sign_s = statistics.median(exports), statistics.median(signs)
    script_s, collector_s = statistics.median(scripts), statistics.median(collectors)
    return {
        "clip": f"{minutes:g} min of 720p H.264 ~2 Mbit/s at 10 fps, 10 s segments (v2 frame hashes)",
        "clip_minutes": minutes,
        "frames": len(check.samples),
        "bundle_mb": round(checked_mb - signed_size / 1e6, 1),
        "mp4_mb": round(plain_size / 1e6, 1),
        "export_s": round(export_s, 2),
        "c2pa_sign_s": round(sign_s, 2),
        "c2pa_sign_s_runs": [round(t, 2) for t in signs],
        "c2pa_sign_pct_of_export": round(100 * sign_s / export_s, 1),
        "manifest_bytes": manifest_bytes,
        "size_overhead_bytes": signed_size - plain_size,
        "size_overhead_pct": round(100 * (signed_size - plain_size) / plain_size, 3),
        "collector_peak_rss_mb": round(rss, 1),
        "verifier_s": round(script_s, 2),
        "verifier_s_runs": [round(t, 2) for t in scripts],
        "verifier_mb_s": round(checked_mb / script_s, 1),
        "verifier_result": done.stdout.strip().splitlines()[-1],
        "collector_verify_s": round(collector_s, 2),
        "collector_verify_mb_s": round(checked_mb / collector_s, 1),
        "collector_verify_ok": report.ok,
        "checked_mb": round(checked_mb, 1),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
