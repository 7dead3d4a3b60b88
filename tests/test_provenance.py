"""Exports as evidence a court can check without us (issue 15): the C2PA manifest of a real export, and
every frame traced to the device's signature, by `csu-collector verify` and by the standalone script.

One real fetch (real H.264 sealed by the device code, served over loopback HTTP, verified, remuxed and
C2PA-signed with a collector certificate from `pki init`) is shared by the tests; each one copies the
export and changes it the way a forger would: a byte inside a frame, a frame removed, duplicated or
swapped and the manifest re-signed by the collector itself, the manifest stripped, the clip re-encoded.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import c2pa
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.download import DeviceEndpoint
from edge_agent.collector.evidence import verify_export
from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
from edge_agent.collector.pki import init_pki, load_credential
from edge_agent.collector.provenance import (
    EVIDENCE_LABELS,
    clock,
    read_manifest,
    sign_clip,
    verify_clip,
)
from edge_agent.formats.audit import AuditLog
from edge_agent.formats.signing import RequestSigner
from tests.clip_support import device_config, encode_segments, running_server

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "verify_evidence.py"
FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"
T0 = 1_700_000_000.0
START = T0 + 2.55  # between keyframes: the clip has pre-roll frames before 00:00:00


def _pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A real export of 10 s of footage, C2PA-signed, and a CSU key directory to check it with."""
    root = tmp_path_factory.mktemp("provenance")
    keys = {
        "device": Ed25519PrivateKey.generate(),
        "collector": Ed25519PrivateKey.generate(),
        "csu": X25519PrivateKey.generate(),
    }
    ring = encode_segments(root / "ring", keys["device"], keys["csu"].public_key(), T0, 16.0)
    csu_dir = root / "csu-keys"
    init_pki(csu_dir, "Ville de Test", datetime.datetime.now(datetime.UTC))
    (csu_dir / "csu_ed25519.pub").write_bytes(_pem(keys["collector"]))
    (csu_dir / "devices" / "ville-01").mkdir(parents=True)
    (csu_dir / "devices" / "ville-01" / "pi-01.pub").write_bytes(_pem(keys["device"]))
    credential = load_credential(csu_dir)
    config = device_config(root, max_clip_seconds=60)
    request = ClipRequest("ville-01", "pi-01", "cam1", START, START + 10, "PV 2024/118", "lt-martin")
    collector_keys = CollectorKeys(keys["collector"], keys["csu"], keys["device"].public_key(), credential)
    with running_server(config, ring, keys["device"], keys["collector"]) as server:
        endpoint = DeviceEndpoint(server.local_url, RequestSigner(keys["collector"]))
        outcome = fetch_clip(
            endpoint, request, collector_keys, root / "export", AuditLog(root / "audit.jsonl")
        )
    ring.close()
    return {"root": root, "keys": keys, "csu_dir": csu_dir, "credential": credential, "outcome": outcome}


def _copy(site, tmp_path: Path) -> Path:
    export = tmp_path / "export"
    shutil.copytree(site["outcome"].export_dir, export)
    return export


def _script(clip: Path, ca: Path, *extra: str) -> tuple[int, list[str]]:
    """The standalone verifier, run as a court expert would (its own process, nothing of edge_agent)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(clip), "--ca", str(ca), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout.splitlines()


def _both(site, clip: Path, known: bool = True, bundle: Path | None = None) -> list[str]:
    """The words of `verify_clip`, after checking the script says exactly the same."""
    credential = site["credential"]
    bundle = bundle if bundle is not None else clip.with_name("bundle.tar")
    keys = [site["keys"]["device"].public_key()] if known else None
    report = verify_clip(clip, credential.ca_pem(), bundle if bundle.exists() else None, keys)
    extra = ["--device-keys", str(site["csu_dir"] / "devices")] if known else []
    if bundle.exists():
        extra += ["--bundle", str(bundle)]
    code, lines = _script(clip, site["csu_dir"] / "csu_ca.pem", *extra)
    assert lines == report.lines()
    assert code == (0 if report.ok else 1)
    return report.lines()


def test_a_real_export_is_valid_and_trusted_under_the_csu_ca(site, capsys) -> None:
    export = site["outcome"].export_dir
    clip = export / "clip.mp4"
    ca_pem = site["credential"].ca_pem()
    # c2pa-python's own Reader, the CSU CA as the only trust anchor.
    settings = {"trust": {"trust_anchors": ca_pem}, "verify": {"verify_trust": True}}
    with c2pa.Reader(str(clip), context=c2pa.Context.from_dict(settings)) as reader:
        assert reader.get_validation_state() == "Trusted"
        assert reader.get_validation_results()["activeManifest"]["failure"] == []
        manifest = reader.get_active_manifest()
    labels = {a["label"]: a["data"] for a in manifest["assertions"]}
    assert any(label.startswith("c2pa.hash.bmff") for label in labels)
    actions = labels["c2pa.actions.v2"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.created", "c2pa.edited", "c2pa.repackaged"]
    assert actions[0]["description"] == "captured by device pi-01 camera cam1"
    assertion = next(data for label, data in labels.items() if label in EVIDENCE_LABELS)
    assert (assertion["device"], assertion["camera"], assertion["officer"]) == ("pi-01", "cam1", "lt-martin")
    assert assertion["requisition"] == "PV 2024/118"
    assert [s["format_version"] for s in assertion["segments"]] == [2] * 6
    assert manifest["signature_info"]["common_name"] == "Ville de Test CSU collector"
    # The same words from the collector and from the script, and nothing wrong.
    lines = _both(site, clip)
    key_id = assertion["device_key"]["id"]
    assert lines == [
        "C2PA manifest: signed by Ville de Test CSU collector (issuer Ville de Test), valid, trusted:"
        " issued under the CSU CA",
        "camera cam1 of device pi-01 (site ville-01),"
        " from 2023-11-14T22:13:22.550Z to 2023-11-14T22:13:32.550Z",
        "clip time 00:00:00 is the first frame shown at or after the start",
        "requisition PV 2024/118, officer lt-martin",
        f"device key {key_id}: one the CSU knows",
        f"frames 00:00:00-00:00:09 signed by device pi-01 (key {key_id})",
        "chain: segments cam1#2 to cam1#7 linked by their hashes",
        "result: VERIFIED",
    ]
    # The signed MP4 still plays: 100 frames shown, the evidence's hash is the signed file's.
    with av.open(str(clip)) as container:
        assert len(list(container.decode(video=0))) == 100
    assert verify_export(export, [site["keys"]["collector"].public_key()])[1] == []
    assert collector_main(["verify", str(export), "--keys", str(site["csu_dir"])]) == 0
    assert capsys.readouterr().out.splitlines()[: len(lines)] == lines


def _sample(clip: Path, number: int) -> tuple[int, int, float]:
    """(byte offset, size, time on the clip) of the `number`th sample of the MP4."""
    with av.open(str(clip)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        packet = packets[number]
        return int(packet.pos), int(packet.size), float(packet.pts * packet.time_base)


def test_one_changed_byte_inside_a_frame_fails_and_names_its_time(site, tmp_path: Path) -> None:
    clip = _copy(site, tmp_path) / "clip.mp4"
    offset, size, time_s = _sample(clip, 40)
    data = bytearray(clip.read_bytes())
    data[offset + size // 2] ^= 0x01
    clip.write_bytes(bytes(data))
    lines = _both(site, clip)
    assert any(line.startswith("problem: C2PA: assertion.bmffHash.mismatch") for line in lines)
    assert (
        f"problem: frame {clock(time_s, True)}: altered: does not match the device's signature"
        in "\n".join(lines)
    )
    # Sample 40 is the frame captured at T0+6.0: after the 6 pre-roll frames from the keyframe at T0+2.0,
    # the first frame shown (T0+2.6) is at 00:00:00.
    assert time_s == pytest.approx(3.4, abs=0.001)
    assert lines[-1].startswith("result: NOT VERIFIED")


def _remux(src: Path, dst: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    """Rewrite the MP4's samples through `edit` without re-encoding (what a forger's remuxer does)."""
    with av.open(str(src)) as source:
        stream = source.streams.video[0]
        samples = [(bytes(p), p.is_keyframe) for p in source.demux(stream) if p.size]
        keyframes = {data for data, key in samples if key}
        with av.open(str(dst), "w", format="mp4") as out:
            target = out.add_stream_from_template(stream)
            target.time_base = stream.time_base
            tick = round(1 / (10 * stream.time_base))  # 10 fps
            for number, data in enumerate(edit([data for data, _ in samples])):
                packet = av.Packet(data)
                packet.pts = packet.dts = number * tick
                packet.duration = tick
                packet.time_base = stream.time_base
                packet.is_keyframe = data in keyframes
                packet.stream = target
                out.mux(packet)


def _resigned(site, tmp_path: Path, edit: Callable[[list[bytes]], list[bytes]]) -> Path:
    """The export's clip edited, then signed again by the collector itself with the original assertion:
    C2PA alone cannot tell; the device's frame signatures must. The remux drops the edit list: sample n
    is at n/10 s (the 6 pre-roll frames included)."""
    export = _copy(site, tmp_path)
    clip = export / "clip.mp4"
    assertion = read_manifest(clip, site["credential"].ca_pem()).assertion
    assert assertion is not None
    _remux(clip, tmp_path / "edited.mp4", edit)
    (tmp_path / "edited.mp4").replace(clip)
    sign_clip(clip, assertion, site["credential"])
    return clip


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            lambda s: s[:30] + s[31:],
            "problem: frame before 00:00:03.000: removed (the device's cam1#3 packet 10 is not in the MP4)",
        ),
        (
            lambda s: [*s[:31], s[30], *s[31:]],
            "problem: frame 00:00:03.100: duplicate of the frame before it",
        ),
        (
            lambda s: [*s[:30], s[31], s[30], *s[32:]],
            "problem: frames 00:00:03.000 and 00:00:03.100: swapped (out of order)",
        ),
    ],
    ids=["removed", "duplicated", "reordered"],
)
def test_a_removed_duplicated_or_reordered_frame_fails_even_re_signed(
    site, tmp_path: Path, edit, named
) -> None:
    clip = _resigned(site, tmp_path, edit)
    lines = _both(site, clip)
    assert lines[0].endswith("valid, trusted: issued under the CSU CA")  # the forger holds the certificate
    assert any(line.startswith(named) for line in lines), "\n".join(lines)
    assert lines[-1].startswith("result: NOT VERIFIED")


def _reencode(src: Path, dst: Path) -> None:
    """Decode every frame shown and encode it again (H.264, near lossless): other bits, same pictures."""
    with av.open(str(src)) as source, av.open(str(dst), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"bf": "0", "preset": "ultrafast", "qp": "4"}
        for number, frame in enumerate(source.decode(video=0)):
            frame.pts, frame.time_base = number, Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_a_stripped_manifest_or_a_re_encoded_clip_fails(site, tmp_path: Path) -> None:
    export = _copy(site, tmp_path)
    clip = export / "clip.mp4"
    assertion = read_manifest(clip, site["credential"].ca_pem()).assertion
    assert assertion is not None
    _remux(clip, tmp_path / "stripped.mp4", lambda samples: samples)
    (tmp_path / "stripped.mp4").replace(clip)
    no_manifest = [
        "problem: no C2PA manifest (stripped, or the file was never signed)",
        "result: NOT VERIFIED (1 problem(s))",
    ]
    assert _both(site, clip) == no_manifest
    ca = str(site["csu_dir"] / "csu_ca.pem")
    assert collector_main(["verify", str(export), "--keys", str(site["csu_dir"]), "--ca", ca]) == 1
    _reencode(site["outcome"].export_dir / "clip.mp4", clip)
    assert _both(site, clip) == no_manifest
    # Signed again by the collector with the original assertion: every frame differs from the device's.
    sign_clip(clip, assertion, site["credential"])
    lines = _both(site, clip)
    assert (
        "problem: frame 00:00:00.000: altered: does not match the device's signature (cam1#2 packet 0)"
        in lines
    ), "\n".join(lines)
    assert "problem: and 91 more frame problem(s)" in lines


def test_a_device_key_the_csu_does_not_know_is_reported(site, tmp_path: Path, capsys) -> None:
    export = _copy(site, tmp_path)
    clip = export / "clip.mp4"
    other = Ed25519PrivateKey.generate()
    report = verify_clip(clip, site["credential"].ca_pem(), export / "bundle.tar", [other.public_key()])
    key_id = read_manifest(clip, site["credential"].ca_pem()).assertion["device_key"]["id"]  # type: ignore[index]
    assert f"device key {key_id} of pi-01 is not one the CSU knows" in report.problems
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "pi-07.pub").write_bytes(_pem(other))
    code, lines = _script(clip, site["csu_dir"] / "csu_ca.pem", "--device-keys", str(tmp_path / "devices"))
    assert (code, lines) == (1, report.lines())
    argv = ["verify", str(export), "--keys", str(site["csu_dir"]), "--device-keys", str(tmp_path / "devices")]
    assert collector_main(argv) == 1
    assert f"problem: device key {key_id} of pi-01 is not one the CSU knows" in capsys.readouterr().out
