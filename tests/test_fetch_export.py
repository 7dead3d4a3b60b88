"""Fetch, verify, decrypt and export real sealed H.264 footage; re-verify exports; tampering."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.download import DeviceEndpoint
from edge_agent.collector.evidence import ClipRejected, process_bundle, verify_export
from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
from edge_agent.formats.audit import AuditLog, verify_log
from edge_agent.formats.bundle import build_manifest, plan_bundle, sign_manifest, write_bundle
from edge_agent.formats.signing import RequestSigner
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import CuttingProxy, device_config, encode_segments, running_server

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A real ring buffer with 30 s of sealed footage at 10 fps in 2 s segments, and the keys around it."""
    root = tmp_path_factory.mktemp("site")
    keys = {
        "device": Ed25519PrivateKey.generate(),
        "collector": Ed25519PrivateKey.generate(),
        "csu": X25519PrivateKey.generate(),
    }
    ring = encode_segments(root / "ring", keys["device"], keys["csu"].public_key(), T0, 30.0)
    yield root, keys, ring
    ring.close()


def _request(start: float, end: float) -> ClipRequest:
    return ClipRequest("ville-01", "pi-01", "cam1", start, end, "PV 2024/118")


def _fetch(tmp_path: Path, site, request: ClipRequest, via=None, allow_partial=False, ring=None):
    _, keys, site_ring = site
    config = device_config(tmp_path, max_clip_seconds=60)
    ring = ring or site_ring
    audit = AuditLog(tmp_path / "collector-audit.jsonl")
    collector_keys = CollectorKeys(keys["collector"], keys["csu"], keys["device"].public_key())
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        url = via(server) if via else server.local_url
        endpoint = DeviceEndpoint(url, RequestSigner(keys["collector"]))
        return fetch_clip(
            endpoint, request, collector_keys, tmp_path / "export", audit, allow_partial=allow_partial
        )


def test_twenty_seconds_export_to_a_playable_mp4(tmp_path: Path, site) -> None:
    start = T0 + 3.55  # between keyframes: the clip must still start exactly there
    outcome = _fetch(tmp_path, site, _request(start, start + 20))
    clip = outcome.export_dir / "clip.mp4"
    with av.open(str(clip)) as container:
        decoded = list(container.decode(video=0))
        duration = container.duration / 1e6
    frames = [f.to_ndarray(format="bgr24") for f in decoded]
    assert len(frames) == 200
    assert duration == pytest.approx(20.0, abs=0.11)
    # Frames captured at T0+3.6 .. T0+23.5 (200 of them: the pre-roll from the keyframe at T0+3.0
    # is hidden by the edit list), shown from 0; brightness steps one index a frame (none skipped).
    assert [round(f.time, 3) for f in (decoded[0], decoded[-1])] == [0.0, 19.9]
    steps = np.diff([(f[60:, 80:].mean() - 30) / 3 for f in frames])
    assert np.allclose(np.mod(steps, 200 / 3), 1.0, atol=0.4)  # brightness wraps every 200/3
    masked = np.stack([f[:55, :75] for f in frames])
    assert masked.max() <= 16  # black through H.264, in every frame
    evidence = outcome.evidence
    assert evidence["verification"] == {"result": "verified", "problems": []}
    assert evidence["clip"]["frames"] == 200
    assert evidence["gaps"] == []
    assert verify_export(outcome.export_dir, [site[1]["collector"].public_key()])[1] == []
    lines = (tmp_path / "collector-audit.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["outcome"] == "exported"


def test_bundle_altered_in_transit_is_rejected_naming_the_segment(tmp_path: Path, site) -> None:
    rows = site[2].segments("cam1")
    # One byte flipped inside segment #6 as it crosses the network (after HTTP head + members).
    offset_in_bundle = 3 * 512 + sum(-(-r.size // 512) * 512 + 512 for r in rows[:5]) + 512 + 5000
    via = lambda server: CuttingProxy(server.port, after=1 << 40, cuts=1, flip_at=offset_in_bundle + 350).url  # noqa: E731
    with pytest.raises(ClipRejected) as rejected:
        _fetch(tmp_path, site, _request(T0, T0 + 20), via=via)
    assert "segments/000000000006.seg (#6): tampered" in str(rejected.value)
    assert not (tmp_path / "export" / "clip.mp4").exists()
    entry = json.loads((tmp_path / "collector-audit.jsonl").read_text().splitlines()[-1])
    assert (entry["outcome"], entry["reason"]) == ("rejected", "verification")
    assert verify_log(tmp_path / "collector-audit.jsonl").ok


def test_tampered_segment_on_device_becomes_a_named_gap_with_partial(tmp_path: Path, site) -> None:
    root, keys, site_ring = site
    # A copy of the device's ring where one stored segment had a byte flipped in place (same size,
    # so the device's start-up recovery does not look at it: only the collector can notice).
    shutil.copytree(root / "ring", tmp_path / "ring")
    ring = RingBuffer(
        tmp_path / "ring", site_ring.storage, lambda: T0 + 60, device_public_key=keys["device"].public_key()
    )
    tampered = ring.segments("cam1")[4]
    data = bytearray(tampered.path.read_bytes())
    data[3000] ^= 1
    tampered.path.write_bytes(bytes(data))
    try:
        outcome = _fetch(tmp_path, site, _request(T0 + 2, T0 + 16), allow_partial=True, ring=ring)
    finally:
        ring.close()
    evidence = outcome.evidence
    assert evidence["verification"]["result"] == "partial"
    assert evidence["gaps"] == [
        {"start_ts": tampered.start_ts, "end_ts": tampered.end_ts, "reason": "tampered"}
    ]
    assert "segments/000000000005.seg (#5): tampered" in evidence["verification"]["problems"][0]
    assert evidence["clip"]["frames"] == 140 - 20


def test_reverify_detects_edits_to_clip_evidence_and_bundle(tmp_path: Path, site) -> None:
    collector_public = site[1]["collector"].public_key()
    outcome = _fetch(tmp_path, site, _request(T0, T0 + 6))
    export = outcome.export_dir
    assert verify_export(export, [collector_public])[1] == []
    original = {name: (export / name).read_bytes() for name in ("clip.mp4", "evidence.json", "bundle.tar")}

    def tamper(name: str, at: int) -> list[str]:
        data = bytearray(original[name])
        data[at] ^= 1
        (export / name).write_bytes(bytes(data))
        problems = verify_export(export, [collector_public])[1]
        (export / name).write_bytes(original[name])
        return problems

    assert any("clip.mp4: sha256 differs" in p for p in tamper("clip.mp4", 2000))
    assert any("collector signature does not verify" in p for p in tamper("evidence.json", 40))
    with tarfile.open(export / "bundle.tar") as archive:
        first_segment = archive.getmember("segments/000000000001.seg").offset_data
    bundle_problems = tamper("bundle.tar", first_segment + 800)
    assert any("bundle.tar: sha256 differs" in p for p in bundle_problems)
    assert any("000000000001.seg" in p for p in bundle_problems)
    other = Ed25519PrivateKey.generate().public_key()
    assert "not one given" in verify_export(export, [other])[1][0]


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda e: e.pop("device_key"), "device_key: Field required"),
        (lambda e: e.__setitem__("segments", "all fine"), "segments: Input should be a valid list"),
        (lambda e: e["clip"].__setitem__("file", "../../etc/passwd"), "clip.file: String should match"),
        (lambda e: e["device_key"].__setitem__("ed25519_hex", 7), "device_key.ed25519_hex: Input should be"),
        (lambda e: [e], "evidence.json is not a JSON object"),
    ],
)
def test_an_edited_evidence_file_is_named_not_a_traceback(tmp_path: Path, site, edit, named: str) -> None:
    outcome = _fetch(tmp_path, site, _request(T0 + 2, T0 + 6))
    path = outcome.export_dir / "evidence.json"
    evidence = json.loads(path.read_text())
    replaced = edit(evidence)
    path.write_text(json.dumps(replaced if isinstance(replaced, list) else evidence))
    evidence_back, problems = verify_export(outcome.export_dir, [site[1]["collector"].public_key()])
    assert evidence_back is None
    assert len(problems) == 1 and named in problems[0], problems
    public_pem = tmp_path / "collector.pub"
    public_pem.write_bytes(
        site[1]["collector"].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    assert collector_main(["verify", str(outcome.export_dir), "--collector-key", str(public_pem)]) == 1


def test_segment_removed_from_the_device_is_a_chain_break(tmp_path: Path, site) -> None:
    root, keys, site_ring = site
    # Someone with the SD card deletes one segment file; the device's start-up recovery then drops
    # its index row. The clip must say that footage is missing, where, and not hide it in the MP4.
    shutil.copytree(root / "ring", tmp_path / "ring")
    removed = site_ring.segments("cam1")[4]
    (tmp_path / "ring" / removed.path.relative_to(root / "ring")).unlink()
    ring = RingBuffer(
        tmp_path / "ring", site_ring.storage, lambda: T0 + 60, device_public_key=keys["device"].public_key()
    )
    assert any("gone from disk" in line for line in ring.recovery)
    try:
        outcome = _fetch(tmp_path, site, _request(T0 + 2, T0 + 16), ring=ring)
    finally:
        ring.close()
    evidence = outcome.evidence
    assert evidence["gaps"] == [
        {"start_ts": removed.start_ts, "end_ts": removed.end_ts, "reason": "chain-break", "sequences": [5, 5]}
    ]
    assert evidence["verification"]["result"] == "incomplete"
    assert evidence["completeness"] == (
        "incomplete: segment 5 missing from 2023-11-14T22:13:28.000Z to 2023-11-14T22:13:30.000Z"
        " (the device's hash chain is broken there)"
    )
    assert [s["sequence"] for s in evidence["segments"]] == [2, 3, 4, 6, 7, 8]
    assert evidence["clip"]["frames"] == 140 - 20
    assert len(evidence["covered"]) == 2


def test_segments_removed_at_both_edges_of_the_range_are_chain_breaks_not_unrecorded(
    tmp_path: Path, site
) -> None:
    root, keys, site_ring = site
    shutil.copytree(root / "ring", tmp_path / "ring")
    rows = site_ring.segments("cam1")
    first, last = rows[1], rows[7]  # sequences 2 and 8: the first and last of [T0+2, T0+16)
    for removed in (first, last):
        (tmp_path / "ring" / removed.path.relative_to(root / "ring")).unlink()
    ring = RingBuffer(
        tmp_path / "ring", site_ring.storage, lambda: T0 + 60, device_public_key=keys["device"].public_key()
    )
    try:
        outcome = _fetch(tmp_path, site, _request(T0 + 2, T0 + 16), ring=ring)
    finally:
        ring.close()
    assert outcome.evidence["gaps"] == [
        {"start_ts": T0 + 2, "end_ts": first.end_ts, "reason": "chain-break", "sequences": [2, 2]},
        {"start_ts": last.start_ts, "end_ts": T0 + 16, "reason": "chain-break", "sequences": [8, 8]},
    ]
    assert outcome.evidence["verification"]["result"] == "incomplete"


def test_bundle_with_an_unlisted_member_leaves_no_mp4(tmp_path: Path, site) -> None:
    _, keys, _ = site
    outcome = _fetch(tmp_path, site, _request(T0, T0 + 6))
    bundle = outcome.export_dir / "bundle.tar"
    with tarfile.open(bundle, "a") as archive:
        archive.add(outcome.export_dir / "evidence.json", arcname="segments/000000000099.seg")
    clip = tmp_path / "again.mp4"
    with pytest.raises(ClipRejected) as rejected:
        process_bundle(bundle, keys["device"].public_key(), keys["csu"], clip)
    assert "000000000099.seg: not listed in the manifest" in str(rejected.value)
    assert not clip.exists()  # the segments remuxed before the intruder are not left behind


@pytest.mark.parametrize(
    ("gaps", "named"),
    [
        ({"start_ts": 0}, "gaps: not a list"),
        (["nan"], "gaps[0]: start_ts and end_ts must be finite numbers"),
        ([{"start_ts": T0, "end_ts": "soon", "reason": "off"}], "gaps[0]: start_ts and end_ts"),
        # Refused before the rows are read: a signed manifest is parsed as strict JSON.
        ([{"start_ts": T0, "end_ts": float("inf"), "reason": "off"}], "unreadable (Infinity is not a JSON"),
        ([{"start_ts": T0, "end_ts": T0 + 1, "reason": 7}], "gaps[0]: reason must be text"),
    ],
)
def test_a_signed_manifest_with_unusable_gap_rows_is_rejected_naming_the_row(
    tmp_path: Path, site, gaps, named: str
) -> None:
    """Gap rows are read before any footage: bad ones (a device bug) are named, never a traceback."""
    _, keys, _ = site
    manifest = build_manifest(
        site="ville-01",
        device="pi-01",
        camera="cam1",
        requisition="PV 2024/118",
        start_ts=T0,
        end_ts=T0 + 6,
        segments=[],
        gaps=[],
        device_public_key=keys["device"].public_key(),
    )
    manifest["gaps"] = gaps
    bundle = tmp_path / "bundle.tar"
    with bundle.open("wb") as out:
        write_bundle(plan_bundle(manifest, sign_manifest(manifest, keys["device"]), []), out)
    clip = tmp_path / "clip.mp4"
    with pytest.raises(ClipRejected) as rejected:
        process_bundle(bundle, keys["device"].public_key(), keys["csu"], clip)
    assert f"manifest.json: {named}" in str(rejected.value)
    assert not clip.exists()
