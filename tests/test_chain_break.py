"""A break in the device's hash chain is reported as such (issue 14 item 2): a segment removed, swapped,
reordered or replayed on the device, or left out of a bundle by a device that says nothing of it, is a
`chain-break` gap naming the segments missing; the clip is `incomplete`, the evidence says so in words for
a report, and `fetch-clip` and `verify` exit 4 unless `--allow-gaps`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.download import DeviceEndpoint
from edge_agent.collector.evidence import process_bundle
from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.bundle import Gap, build_manifest, plan_bundle, sign_manifest, write_bundle
from edge_agent.formats.config import StorageConfig
from edge_agent.formats.keys import (
    generate_csu_keys,
    generate_device_key,
    load_ed25519_private,
    load_x25519_private,
)
from edge_agent.formats.signing import RequestSigner
from edge_agent.storage.recovery import REJECTED_DIR
from edge_agent.storage.ringbuffer import RingBuffer
from tests.clip_support import device_config, encode_segments, running_server

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z; segment n covers T0 + 2(n-1) .. T0 + 2n
RANGE = (T0 + 2, T0 + 16)  # segments 2..8


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """30 s of real footage in 2 s segments (sequences 1..15), with key files as provisioned."""
    root = tmp_path_factory.mktemp("chain")
    device_files = generate_device_key(root / "device-keys")
    csu_files = generate_csu_keys(root / "csu-keys")
    keys = {
        "device": load_ed25519_private(device_files.private),
        "collector": load_ed25519_private(csu_files.signing.private),
        "csu": load_x25519_private(csu_files.sealing.private),
    }
    ring = encode_segments(root / "ring", keys["device"], keys["csu"].public_key(), T0, 30.0)
    ring.close()
    return root, keys, device_files.public, csu_files.signing.private.parent


def _open_ring(root: Path, site) -> RingBuffer:
    """The ring under `root` as the agent opens it at start (recovery), a minute after the footage."""
    storage = StorageConfig(path=root, min_free_bytes=0)
    return RingBuffer(root, storage, lambda: T0 + 60, device_public_key=site[1]["device"].public_key())


def _device_ring(tmp_path: Path, site, change: Callable[[Path], None]) -> RingBuffer:
    """A copy of the device's ring, changed on disk, then opened as the agent does at start."""
    shutil.copytree(site[0] / "ring", tmp_path / "ring")
    change(tmp_path / "ring" / "cam1")
    return _open_ring(tmp_path / "ring", site)


def _file(directory: Path, sequence: int) -> Path:
    (path,) = directory.glob(f"{sequence:012d}.*")
    return path


def _swap(first: int, second: int) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        a, b = _file(directory, first), _file(directory, second)
        assert a.stat().st_size != b.stat().st_size  # else recovery would not look (the collector would)
        parked = a.with_name("parked")
        a.rename(parked)
        b.rename(a)
        parked.rename(b)

    return change


def _rotate(directory: Path) -> None:
    """Segments 5, 6, 7 stored in another order (7's bytes under 5's name, 5's under 6's, 6's under 7's)."""
    five, six, seven = (_file(directory, n) for n in (5, 6, 7))
    data = {path: path.read_bytes() for path in (five, six, seven)}
    five.write_bytes(data[seven])
    six.write_bytes(data[five])
    seven.write_bytes(data[six])


def _replay(directory: Path) -> None:
    """An older segment (3) copied over a newer one (6): the footage of 22:13:24 shown again at 22:13:30."""
    shutil.copyfile(_file(directory, 3), _file(directory, 6))


def _remove(directory: Path) -> None:
    _file(directory, 5).unlink()


def _fetch(tmp_path: Path, site, ring: RingBuffer):
    _, keys, *_ = site
    config = device_config(tmp_path, max_clip_seconds=60)
    collector_keys = CollectorKeys(keys["collector"], keys["csu"], keys["device"].public_key())
    request = ClipRequest("ville-01", "pi-01", "cam1", *RANGE, "PV 2024/118")
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        endpoint = DeviceEndpoint(server.local_url, RequestSigner(keys["collector"]))
        return fetch_clip(
            endpoint, request, collector_keys, tmp_path / "export", AuditLog(tmp_path / "csu-audit.jsonl")
        )


@pytest.mark.parametrize(
    ("change", "missing", "set_aside"),
    [
        (_remove, [(5, 5)], 0),
        (_swap(4, 6), [(4, 4), (6, 6)], 2),
        (_rotate, [(5, 7)], 3),
        (_replay, [(6, 6)], 1),
    ],
    ids=["removed", "swapped", "reordered", "replayed"],
)
def test_a_segment_gone_from_the_chain_on_the_device_is_a_named_chain_break(
    tmp_path: Path, site, change, missing: list[tuple[int, int]], set_aside: int
) -> None:
    ring = _device_ring(tmp_path, site, change)
    try:
        assert len(list((tmp_path / "ring" / REJECTED_DIR).glob("*"))) == set_aside
        outcome = _fetch(tmp_path, site, ring)
    finally:
        ring.close()
    evidence = outcome.evidence
    breaks = [g for g in evidence["gaps"] if g["reason"] == "chain-break"]
    assert [tuple(g["sequences"]) for g in breaks] == missing
    assert [g["reason"] for g in evidence["gaps"]] == ["chain-break"] * len(missing)  # nothing else
    for gap, (first, last) in zip(breaks, missing, strict=True):
        assert (gap["start_ts"], gap["end_ts"]) == (T0 + 2 * (first - 1), T0 + 2 * last)
    assert evidence["verification"]["result"] == "incomplete"
    first, last = missing[0]
    named = f"segment {first} missing" if first == last else f"segments {first} to {last} missing"
    assert evidence["completeness"].startswith(f"incomplete: {named} from 2023-11-14T22:13:")
    assert evidence["verification"]["problems"] == evidence["completeness"].split("; ")
    kept = {s["sequence"] for s in evidence["segments"]}
    assert kept == set(range(2, 9)) - {n for a, b in missing for n in range(a, b + 1)}
    assert all(s["status"] == "verified" for s in evidence["segments"])
    audit = json.loads((tmp_path / "csu-audit.jsonl").read_text().splitlines()[-1])
    assert (audit["outcome"], audit["result"]) == ("exported", "incomplete")


@pytest.mark.parametrize("device_says", ["nothing", "missing"])
def test_a_break_the_device_does_not_report_is_found_by_the_collector(
    tmp_path: Path, site, device_says
) -> None:
    # A device (or its software) that leaves segment 5 out of the bundle and says nothing of it, or
    # calls it `missing` as devices did before `chain-break`: the bundle's own sequence numbers tell.
    root, keys, *_ = site
    ring = _open_ring(root / "ring", site)
    try:
        rows = [r for r in ring.segments("cam1", *RANGE) if r.sequence != 5]
    finally:
        ring.close()
    segments = [r.to_bundle_segment() for r in rows]
    gaps = [] if device_says == "nothing" else [Gap(T0 + 8, T0 + 10, "missing")]
    manifest = build_manifest(
        site="ville-01",
        device="pi-01",
        camera="cam1",
        requisition="PV 2024/118",
        start_ts=RANGE[0],
        end_ts=RANGE[1],
        segments=segments,
        gaps=gaps,
        device_public_key=keys["device"].public_key(),
    )
    bundle = tmp_path / "bundle.tar"
    with bundle.open("wb") as out:
        write_bundle(plan_bundle(manifest, sign_manifest(manifest, keys["device"]), segments), out)
    check = process_bundle(bundle, keys["device"].public_key(), keys["csu"], tmp_path / "clip.mp4")
    assert check.result == "incomplete"
    (gap,) = check.chain_breaks
    assert (gap["start_ts"], gap["end_ts"]) == (T0 + 8, T0 + 10)
    assert gap.get("sequences", [5, 5]) == [5, 5]
    assert check.completeness().startswith("incomplete: ")


def _cli_fetch(tmp_path: Path, site, ring: RingBuffer, *extra: str) -> int:
    _, keys, device_pub, csu_dir = site
    config = device_config(tmp_path, max_clip_seconds=60)
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        return collector_main(
            [
                "fetch-clip",
                "--site", "ville-01", "--device", "pi-01", "--camera", "cam1",
                "--start", str(RANGE[0]), "--end", str(RANGE[1]), "--requisition", "PV 2024/118",
                "--url", server.local_url, "--keys", str(csu_dir), "--device-key", str(device_pub),
                "--audit", str(tmp_path / "csu-audit.jsonl"), "-o", str(tmp_path / "export"), "--no-progress",
                *extra,
            ]
        )  # fmt: skip


def test_fetch_clip_and_verify_exit_4_on_a_chain_break_unless_gaps_are_allowed(
    tmp_path: Path, site, capsys
) -> None:
    csu_dir = site[3]
    ring = _device_ring(tmp_path, site, _remove)
    try:
        assert _cli_fetch(tmp_path, site, ring) == 4
        out, err = capsys.readouterr()
        assert out.startswith("incomplete: ")
        assert (
            "  incomplete: segment 5 missing from 2023-11-14T22:13:28.000Z to 2023-11-14T22:13:30.000Z" in out
        )
        assert "--allow-gaps" in err
        export = tmp_path / "export"
        assert (export / "clip.mp4").exists()  # what there is, exported and said to be incomplete
        assert collector_main(["verify", str(export), "--keys", str(csu_dir)]) == 4
        assert "incomplete: segment 5 missing" in capsys.readouterr().out
        assert collector_main(["verify", str(export), "--keys", str(csu_dir), "--allow-gaps"]) == 0
        shutil.rmtree(export)
        assert _cli_fetch(tmp_path, site, ring, "--allow-gaps") == 0
    finally:
        ring.close()


def test_gaps_that_are_not_breaks_keep_exit_0(tmp_path: Path, site, capsys) -> None:
    # Retention and not-yet-recorded are what the device's rules and the clock explain: no chain breaks.
    root, keys, _, _ = site
    ring = _open_ring(root / "ring", site)
    config = device_config(tmp_path, max_clip_seconds=60)
    try:
        with running_server(config, ring, keys["device"], keys["collector"]) as server:
            endpoint = DeviceEndpoint(server.local_url, RequestSigner(keys["collector"]))
            request = ClipRequest("ville-01", "pi-01", "cam1", T0 - 10, T0 + 4, "PV 2024/118")
            keys_ = CollectorKeys(keys["collector"], keys["csu"], keys["device"].public_key())
            outcome = fetch_clip(
                endpoint, request, keys_, tmp_path / "export", AuditLog(tmp_path / "a.jsonl")
            )
    finally:
        ring.close()
    assert [g["reason"] for g in outcome.evidence["gaps"]] == ["retention"]
    assert (outcome.evidence["verification"]["result"], outcome.evidence["completeness"]) == (
        "verified",
        "complete",
    )
