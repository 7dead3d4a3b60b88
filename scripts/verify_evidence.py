#!/usr/bin/env python3
"""Check a clip exported by a CSU collector, without the CSU's software: every frame to the camera.

    python verify_evidence.py clip.mp4 --ca csu_ca.pem [--bundle bundle.tar] [--device-keys DIR]

Needs only c2pa-python, cryptography and PyAV (`pip install c2pa-python cryptography av`). It checks:

1. The MP4's C2PA manifest (Content Credentials): valid (no byte of the file changed since it was
   signed) and signed by a certificate issued under the CSU's CA (`--ca`, the only trust anchor).
2. The manifest's `fr.csu.evidence` assertion: which device and camera, the request (requisition,
   officer), each sealed segment with the device's signature and the SHA-256 of its frame hashes,
   and which of its frames each MP4 sample is.
3. The sealed original (`bundle.tar`, encrypted: no key is needed to check it, none is asked): the
   device's signature of each segment, whose trailer lists the hash of each of its frames.
4. Each frame (MP4 sample) of the clip: its hash is the one the device signed, in the same order.

It prints what it found in words, one statement a line, then every problem, then the result; exit
status 0 when verified, 1 when not, 2 for a usage error. `csu-collector verify` prints the same words.
The frame hash rule and the segment layout are documented in the edge-agent sources
(`edge_agent/formats/sealing.py`); they are re-implemented here on purpose, to be read in an hour.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import sys
import tarfile
from pathlib import Path

import av
import c2pa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

LABELS = ("fr.csu.evidence.v1", "fr.csu.evidence")  # C2PA readers list version 1 without ".v1"
SEGMENT_DOMAIN = b"edge-agent segment v1\n"  # what the device signs: this, then a SHA-256
FRAME_HASH_VERSION = 2  # segments before this version sign no frame hashes
GAP_WORDS = {
    "retention": "deleted by retention before the request",
    "missing": "footage missing on the device (segment numbers skip or a file is gone)",
    "not-recorded": "the camera did not record",
    "not-yet-recorded": "not yet recorded when requested",
    "tampered": "a segment failed verification at the CSU and was left out",
    "chain-break": "footage missing: the device's hash chain is broken here",
    "crash": "the device stopped abruptly (power cut or crash); what it had written was kept",
}


def key_id(key: Ed25519PublicKey) -> str:
    """The key id the CSU prints: 16 hex digits of the SHA-256 of the raw 32-byte key."""
    return hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def clock(seconds: float, millis: bool = False) -> str:
    """HH:MM:SS (or HH:MM:SS.mmm) on the clip's timeline."""
    total_ms = round(abs(seconds) * 1000) if millis else int(abs(seconds)) * 1000
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{'-' if seconds < 0 else ''}{hours:02d}:{minutes:02d}:{rest // 1000:02d}"
    return f"{text}.{rest % 1000:03d}" if millis else text


# --- 1. the C2PA manifest ---------------------------------------------------------------------------


def read_c2pa(clip: Path, ca_pem: str) -> tuple[str, list[str], str, dict | None]:
    """(state, failures, signer, our assertion); state is Trusted, Valid, Invalid or absent."""
    settings = {
        "trust": {"trust_anchors": ca_pem},  # the CSU CA replaces every built-in anchor
        "verify": {"verify_trust": True, "remote_manifest_fetch": False, "ocsp_fetch": False},
    }
    try:
        with c2pa.Reader(str(clip), context=c2pa.Context.from_dict(settings)) as reader:
            state = reader.get_validation_state() or "Invalid"
            results = reader.get_validation_results() or {}
            manifest = reader.get_active_manifest() or {}
    except c2pa.C2paError as error:
        return "absent", [str(error)], "", None
    failures = [f"{f.get('code')}: {f.get('explanation', '')}" for f in results["activeManifest"]["failure"]]
    info = manifest.get("signature_info") or {}
    signer = f"{info.get('common_name', '?')} (issuer {info.get('issuer', '?')})"
    ours = [a["data"] for a in manifest.get("assertions", []) if a.get("label") in LABELS]
    return state, failures, signer, ours[0] if ours else None


# --- 3. the sealed original ---------------------------------------------------------------------------


def read_segment(data: bytes, device: Ed25519PublicKey, signed: bool) -> dict:
    """Header and trailer of a sealed segment file, after checking the device's signature.

    Layout: "EDGESEG1" | 4-byte length | header JSON | encrypted records | "EDGETRL1" | 4-byte length |
    trailer JSON | 64-byte Ed25519 signature of SEGMENT_DOMAIN + SHA-256(every byte before it).
    A segment cut short before its trailer (`signed` False) has no signature: only its header is read.
    """
    if data[:8] != b"EDGESEG1":
        raise ValueError("not a segment file")
    size = int.from_bytes(data[8:12], "big")
    found = {"header": json.loads(data[12 : 12 + size])}
    if not signed:
        found["sha256"] = hashlib.sha256(data).hexdigest()
        return found
    body, signature = data[:-64], data[-64:]
    digest = hashlib.sha256(body)
    found["signed_sha256"] = digest.hexdigest()
    device.verify(signature, SEGMENT_DOMAIN + digest.digest())
    digest.update(signature)
    found["sha256"] = digest.hexdigest()
    # The trailer is the last "EDGETRL1" whose length reaches exactly the signature.
    at = body.rfind(b"EDGETRL1")
    while at >= 0 and at + 12 + int.from_bytes(body[at + 8 : at + 12], "big") != len(body):
        at = body.rfind(b"EDGETRL1", 0, at)
    if at < 0:
        raise ValueError("no trailer")
    found["trailer"] = json.loads(body[at + 12 :])
    return found


def read_bundle(path: Path, device: Ed25519PublicKey, unsigned: set[int]) -> tuple[dict, dict]:
    """The device-signed bundle manifest, and each segment by sequence (None: fails verification)."""
    with tarfile.open(path) as archive:
        manifest_bytes = archive.extractfile("manifest.json").read()
        device.verify(archive.extractfile("manifest.sig").read(), manifest_bytes)
        manifest = json.loads(manifest_bytes)
        sequences = {row["file"]: row["sequence"] for row in manifest["segments"]}
        segments = {}
        for member in archive.getmembers():
            if member.name in sequences:
                sequence = sequences[member.name]
                data = archive.extractfile(member).read()
                try:
                    found = read_segment(data, device, sequence not in unsigned)
                except (ValueError, InvalidSignature):
                    found = None
                # A segment stored under another's name (swapped, replayed) fails too.
                segments[sequence] = found if found and found["header"]["sequence"] == sequence else None
    return manifest, segments


def check_device(evidence: dict, device: Ed25519PublicKey, bundle: tuple | None) -> list[str]:
    """Problems with the device's signatures: in the manifest, and against the sealed original."""
    problems = []
    camera = evidence["camera"]
    for segment in evidence["segments"]:
        name, signature = f"{camera}#{segment['sequence']}", segment["device_signature"]
        if signature is not None:
            try:
                digest = bytes.fromhex(signature["signed_sha256"])
                device.verify(base64.b64decode(signature["ed25519"]), SEGMENT_DOMAIN + digest)
            except (InvalidSignature, ValueError):
                problems.append(f"segment {name}: the device signature does not verify")
        if bundle is None:
            continue
        sealed = bundle[1].get(segment["sequence"], "absent")
        hashes = segment["frame_hashes_sha256"]
        if sealed == "absent":
            problems.append(f"segment {name}: not in the sealed original")
        elif sealed is None:
            problems.append(f"segment {name}: fails verification in the sealed original")
        elif (sealed["sha256"], sealed["header"]["prev_sha256"]) != (
            segment["sha256"],
            segment["prev_sha256"],
        ):
            problems.append(f"segment {name}: differs from the sealed original")
        elif signature is not None and sealed["signed_sha256"] != signature["signed_sha256"]:
            problems.append(f"segment {name}: the device signature is not the sealed original's")
        elif (None if signed_hashes(sealed) is None else sha256(signed_hashes(sealed))) != hashes:
            problems.append(f"segment {name}: frame hashes differ from those the device signed")
    if bundle is None:
        return problems
    manifest = bundle[0]
    for name in ("site", "device", "camera", "requisition", "officer", "bundle_id"):
        if manifest.get(name, "") != evidence.get(name, ""):
            problems.append(f"{name} {evidence.get(name)!r}: the device's bundle says {manifest.get(name)!r}")
    for name in ("start_ts", "end_ts"):
        if manifest["requested"][name] != evidence["requested"][name]:
            problems.append(f"requested {name}: not the range of the device's bundle")
    return problems


def sha256(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def signed_hashes(sealed: dict) -> bytes | None:
    """The frame hashes a segment's trailer signs (version 2 on), concatenated; None before."""
    hashes = sealed.get("trailer", {}).get("packet_sha256")
    return None if hashes is None else b"".join(bytes.fromhex(h) for h in hashes)


# --- 4. the frames ------------------------------------------------------------------------------------


def frame_hash(codec: str, sample: bytes, length_size: int) -> bytes | None:
    """The device's frame hash of an MP4 sample: for H.264/H.265, SHA-256 over each NAL unit (empty
    ones skipped), each preceded by its length as 4 bytes big-endian; else SHA-256 of the sample.
    None when the sample's NAL lengths do not add up."""
    if codec not in ("h264", "hevc"):
        return hashlib.sha256(sample).digest()
    digest, offset = hashlib.sha256(), 0
    while offset < len(sample):
        if offset + length_size > len(sample):
            return None
        size = int.from_bytes(sample[offset : offset + length_size], "big")
        unit = sample[offset + length_size : offset + length_size + size]
        if len(unit) < size:
            return None
        if size:
            digest.update(size.to_bytes(4, "big") + unit)
        offset += length_size + size
    return digest.digest()


def read_samples(clip: Path) -> list[tuple[float, bytes | None]]:
    """(time on the clip, frame hash) of every video sample, in the file's order (no decoding)."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        codec, extra = stream.codec_context.name, bytes(stream.codec_context.extradata or b"")
        at = {"h264": 4, "hevc": 21}.get(codec)  # where avcC / hvcC keep lengthSizeMinusOne
        length_size = (extra[at] & 3) + 1 if at and len(extra) > at and extra[0] == 1 else 4
        return [
            (float(p.pts * p.time_base), frame_hash(codec, bytes(p), length_size))
            for p in container.demux(stream)
            if p.size and p.pts is not None
        ]


def expected_frames(evidence: dict, sealed: dict | None) -> list[tuple[int, int, bytes | None, str]]:
    """(segment, packet, device-signed hash or None, why None) of each sample, from the manifest's
    runs of samples; the hashes come from the sealed original (the manifest holds only their SHA-256)."""
    segments = {s["sequence"]: s for s in evidence["segments"]}
    frames = []
    for run in evidence["samples"]:
        segment, hashes, why = segments[run["sequence"]], None, ""
        found = sealed.get(run["sequence"]) if sealed else None
        if segment["format_version"] < FRAME_HASH_VERSION:
            why = f"no frame-level signature (segments before version {FRAME_HASH_VERSION})"
        elif segment["frame_hashes_sha256"] is None:
            why = "no frame-level signature (segment cut short before the device signed it)"
        elif (
            found and signed_hashes(found) and sha256(signed_hashes(found)) == segment["frame_hashes_sha256"]
        ):
            hashes = signed_hashes(found)
        else:
            why = "not checked against the device's signature (see the problems)"
        for index in range(run["first_packet"], run["first_packet"] + run["count"]):
            digest = None if hashes is None else hashes[32 * index : 32 * index + 32]
            frames.append((run["sequence"], index, digest, why))
    return frames


def frame_problems(samples: list, expected: list, camera: str) -> list[str]:
    """Walk the clip's samples and the device's frames side by side; name each mismatch by its time."""
    problems, i, j = [], 0, 0
    signed = {e[2] for e in expected if e[2] is not None}

    def same(sample, want) -> bool:
        return want[2] is None or sample[1] == want[2]

    while i < len(samples) and j < len(expected):
        sample, want, at = samples[i], expected[j], clock(samples[i][0], True)
        packet = f"{camera}#{want[0]} packet {want[1]}"
        after = expected[j + 1] if j + 1 < len(expected) else None
        if same(sample, want):
            i, j = i + 1, j + 1
        elif after and i + 1 < len(samples) and same(sample, after) and same(samples[i + 1], want):
            problems.append(f"frames {at} and {clock(samples[i + 1][0], True)}: swapped (out of order)")
            i, j = i + 2, j + 2
        elif after and same(sample, after):
            problems.append(f"frame before {at}: removed (the device's {packet} is not in the MP4)")
            j += 1
        elif i > 0 and sample[1] == samples[i - 1][1]:
            problems.append(f"frame {at}: duplicate of the frame before it")
            i += 1
        elif sample[1] in signed:
            problems.append(f"frame {at}: out of order (it is not the device's {packet})")
            i, j = i + 1, j + 1
        else:
            problems.append(f"frame {at}: altered: does not match the device's signature ({packet})")
            i, j = i + 1, j + 1
    if i < len(samples):
        problems.append(f"frames from {clock(samples[i][0], True)}: {len(samples) - i} not in the manifest")
    if j < len(expected):
        problems.append(
            f"{len(expected) - j} of the device's frames listed in the manifest are not in the MP4"
        )
    if len(problems) > 10:  # a shifted timeline makes every later frame differ: name the first ones
        problems = [*problems[:10], f"and {len(problems) - 10} more frame problem(s)"]
    return problems


def frame_runs(samples: list, expected: list, signed_by: str) -> list[str]:
    """'frames A-B signed by ...' (or why not) for each stretch of samples saying the same."""
    runs = []
    for (time_s, _), want in zip(samples, expected, strict=False):
        time_s = max(time_s, 0.0)  # pre-roll frames (decoded, not shown) count from 00:00:00
        if runs and runs[-1][0] == want[3]:
            runs[-1][2] = time_s
        else:
            runs.append([want[3], time_s, time_s])
    return [f"frames {clock(a)}-{clock(b)}" + (f": {why}" if why else f" {signed_by}") for why, a, b in runs]


def chain(evidence: dict) -> tuple[list[str], list[str]]:
    """(statements, problems): each segment names the hash of the one before it."""
    camera, segments = evidence["camera"], evidence["segments"]
    problems = [f"chain: {b}" for b in evidence.get("chain_breaks", [])]
    statements = []
    for before, after in itertools.pairwise(segments):
        if after["sequence"] != before["sequence"] + 1:
            first, last = before["sequence"] + 1, after["sequence"] - 1
            absent = f"#{first}" if first == last else f"#{first}..#{last}"
            statements.append(
                f"chain: {camera}{absent} absent"
                f" between {camera}#{before['sequence']} and {camera}#{after['sequence']}"
            )
        elif after["prev_sha256"] != before["sha256"]:
            problems.append(
                f"chain: {camera}#{after['sequence']} does not chain to {camera}#{before['sequence']}"
            )
    if segments and not problems:
        first, last = segments[0]["sequence"], segments[-1]["sequence"]
        statements.insert(0, f"chain: segments {camera}#{first} to {camera}#{last} linked by their hashes")
    return statements, problems


# --- all together -------------------------------------------------------------------------------------


def verify(clip: Path, ca_pem: str, bundle_path: Path | None, known: list | None) -> tuple[list, list]:
    """(statements, problems) about an exported clip."""
    statements, problems = [], []
    state, failures, signer, evidence = read_c2pa(clip, ca_pem)
    if state == "absent":
        return statements, ["no C2PA manifest (stripped, or the file was never signed)"]
    verdict = {
        "Trusted": "valid, trusted: issued under the CSU CA",
        "Valid": "valid, but NOT issued under the CSU CA",
    }
    statements.append(f"C2PA manifest: signed by {signer}, {verdict.get(state, 'INVALID')}")
    problems += [f"C2PA: {failure}" for failure in failures]
    if state != "Trusted" and not failures:
        problems.append("C2PA: the signer is not trusted under the CSU CA")
    if evidence is None or evidence.get("format") != "fr.csu.evidence":
        return statements, [*problems, "no fr.csu.evidence.v1 assertion: nothing ties the frames to a device"]
    try:
        more_statements, more_problems = check_evidence(clip, evidence, bundle_path, known)
    except (KeyError, TypeError, ValueError) as error:
        malformed = f"the fr.csu.evidence.v1 assertion is malformed ({type(error).__name__}: {error})"
        return statements, [*problems, malformed]
    return statements + more_statements, problems + more_problems


def check_evidence(
    clip: Path, evidence: dict, bundle_path: Path | None, known: list | None
) -> tuple[list, list]:
    """(statements, problems) from our assertion: the device, its signatures, each frame, gaps, chain."""
    statements, problems = [], []
    device, camera, asked = evidence["device"], evidence["camera"], evidence["requested"]
    statements += [
        f"camera {camera} of device {device} (site {evidence['site']}),"
        f" from {asked['start']} to {asked['end']}",
        "clip time 00:00:00 is the first frame shown at or after the start",
    ]
    statements.append(f"requisition {evidence['requisition']}, officer {evidence['officer'] or 'not named'}")
    kid = evidence["device_key"]["id"]
    device_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(evidence["device_key"]["ed25519"]))
    if key_id(device_key) != kid:
        problems.append(f"device key {kid}: the manifest's key id does not match its key")
    if known is None:
        statements.append(f"device key {kid}: not compared with the CSU's device keys (none given)")
    elif kid not in {key_id(k) for k in known}:
        problems.append(f"device key {kid} of {device} is not one the CSU knows")
    else:
        statements.append(f"device key {kid}: one the CSU knows")
    bundle = None
    if bundle_path is None:
        problems.append("no bundle.tar (the sealed original): the device's signatures cannot be checked")
    else:
        unsigned = {s["sequence"] for s in evidence["segments"] if s["device_signature"] is None}
        try:
            bundle = read_bundle(bundle_path, device_key, unsigned)
        except (OSError, KeyError, ValueError, tarfile.TarError, InvalidSignature):
            problems.append(f"bundle.tar: unreadable, or its manifest is not signed by device {device}")
    problems += check_device(evidence, device_key, bundle)
    samples, expected = read_samples(clip), expected_frames(evidence, None if bundle is None else bundle[1])
    statements += frame_runs(samples, expected, f"signed by device {device} (key {kid})")
    start = float(asked["start_ts"])
    for gap in evidence["gaps"]:
        words = GAP_WORDS.get(gap["reason"], gap["reason"])
        statements.append(
            f"gap {clock(max(gap['start_ts'] - start, 0))}-{clock(max(gap['end_ts'] - start, 0))}: {words}"
        )
    chain_statements, chain_problems = chain(evidence)
    return statements + chain_statements, problems + chain_problems + frame_problems(
        samples, expected, camera
    )


def load_keys(paths: list[Path]) -> list[Ed25519PublicKey]:
    """Ed25519 public keys from PEM files (or 64 hex digits), or every *.pub file under directories."""
    files = [f for p in paths for f in (sorted(p.rglob("*.pub")) if p.is_dir() else [p])]
    keys = []
    for file in files:
        data = file.read_bytes().strip()
        key = (
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(data.decode()))
            if len(data) == 64
            else load_pem_public_key(data)
        )
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{file}: not an Ed25519 public key")
        keys.append(key)
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path, help="the exported MP4")
    parser.add_argument("--ca", type=Path, required=True, help="the CSU's CA certificate (PEM)")
    parser.add_argument(
        "--bundle", type=Path, help="the sealed original (default: bundle.tar beside the clip)"
    )
    parser.add_argument(
        "--device-keys", type=Path, nargs="+", help="the CSU's device public keys (files, dirs)"
    )
    args = parser.parse_args(argv)
    bundle = args.bundle or args.clip.with_name("bundle.tar")
    try:
        ca_pem = args.ca.read_text()
        known = load_keys(args.device_keys) if args.device_keys else None
        if not args.clip.is_file():
            raise OSError(f"{args.clip}: no such file")
    except (OSError, ValueError) as error:
        print(f"verify_evidence: {error}", file=sys.stderr)
        return 2
    statements, problems = verify(args.clip, ca_pem, bundle if bundle.exists() else None, known)
    result = f"result: NOT VERIFIED ({len(problems)} problem(s))" if problems else "result: VERIFIED"
    print("\n".join([*statements, *(f"problem: {p}" for p in problems), result]))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
