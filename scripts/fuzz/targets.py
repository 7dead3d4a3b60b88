"""Fuzz targets for every reader of untrusted bytes, run by atheris (libFuzzer for Python).

Each target takes bytes and may only refuse them with its reader's own error (a segment error, a
rejected clip, a signature refusal, a payload error) or accept them: any other exception, a hang or a
crash is a finding. Seeds are real files written by the project (tests/fixtures/format_v1) and real
messages, so mutations start from valid input and reach the checks behind the parsers.

Run one target: `python scripts/fuzz/targets.py NAME [libFuzzer flags] CORPUS_DIR`; all of them with
`scripts/fuzz/run.py` (`make fuzz`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "format_v1"
NOW = 1_700_000_000


@dataclass(frozen=True)
class Target:
    """One reader under fuzzing: what it runs on an input, what it may raise, what it starts from."""

    run: Callable[[bytes], object]
    refusals: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]


def _private(name: str) -> Ed25519PrivateKey:
    key = load_pem_private_key((FIXTURE / name).read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def segment_target() -> Target:
    """The segment reader: header, records, trailer, signature, then decryption."""
    from edge_agent.formats.sealing import SegmentError, iter_packets

    device = _private("device_ed25519.pem").public_key()
    csu = load_pem_private_key((FIXTURE / "csu_x25519.pem").read_bytes(), None)

    def run(data: bytes) -> object:
        # iter_packets verifies the structure and signature before it decrypts a record.
        return list(iter_packets(data, csu, device))  # type: ignore[arg-type]

    def seeds() -> list[bytes]:
        old = [p.read_bytes() for p in sorted(FIXTURE.glob("segments/*.seg"))]
        assert isinstance(csu, X25519PrivateKey)
        return old + _current_segments(_private("device_ed25519.pem"), csu.public_key())

    return Target(run, (SegmentError,), seeds)


def _current_segments(device: Ed25519PrivateKey, csu_public: X25519PublicKey) -> list[bytes]:
    """Segments of the current version, sealed with the fixture keys: one sealed by its writer, one
    closed by crash recovery (a `recovered` trailer after a packet record)."""
    import io
    from fractions import Fraction

    from edge_agent.formats.media import EncodedPacket, StreamInfo
    from edge_agent.formats.sealing import SegmentWriter, close_unfinished

    stream = StreamInfo("h264", "libx264", 160, 120, "yuv420p", Fraction(1, 1000), 10.0, float(NOW))
    segments = []
    for finish in (True, False):
        out, journal = io.BytesIO(), io.BytesIO()
        writer = SegmentWriter(
            out, camera="cam1", device="pi-01", sequence=4, prev_sha256="ab" * 32, stream=stream,
            start_ts=float(NOW), device_key=device, csu_public_key=csu_public, journal=journal,
        )  # fmt: skip
        for index in range(3):
            writer.append(
                EncodedPacket(index * 100, index * 100, 100, index == 0, b"\0\0\0\x01\x65" + bytes(40))
            )
        if finish:
            writer.finish()
        else:
            close_unfinished(
                out, journal.getvalue(), device, float(NOW), expect_camera="cam1", expect_sequence=4
            )
        segments.append(out.getvalue())
    return segments


def bundle_target() -> Target:
    """The collector's bundle check: tar members, signed manifest, every segment in it."""
    from edge_agent.collector.evidence import ClipRejected, process_bundle

    device = _private("device_ed25519.pem").public_key()
    work = Path(tempfile.mkdtemp(prefix="fuzz-bundle-"))

    def run(data: bytes) -> object:
        path = work / "bundle.tar"
        path.write_bytes(data)
        return process_bundle(path, device, None, None, allow_partial=True)

    return Target(run, (ClipRejected,), lambda: [(FIXTURE / "export" / "bundle.tar").read_bytes()])


def evidence_target() -> Target:
    """`csu-collector verify` on an export whose evidence.json is the input."""
    from edge_agent.collector.evidence import verify_export

    collector = _private("collector_ed25519.pem").public_key()
    export = Path(tempfile.mkdtemp(prefix="fuzz-evidence-"))
    for name in ("bundle.tar", "clip.mp4", "evidence.sig"):
        shutil.copy(FIXTURE / "export" / name, export / name)

    def run(data: bytes) -> object:
        (export / "evidence.json").write_bytes(data)
        return verify_export(export, [collector])

    return Target(run, (), lambda: [(FIXTURE / "export" / "evidence.json").read_bytes()])


_REQUEST_FIELDS = 8  # method, path, query, key id, timestamp, nonce, signature, body


def signed_request_target() -> Target:
    """The device's check of a signed request: the input is its fields, one per line."""
    from edge_agent.formats.signing import SIGNED_HEADERS, RequestSigner, RequestVerifier, SignatureError

    collector = _private("collector_ed25519.pem")
    verifier = RequestVerifier([collector.public_key()], skew_s=60, clock=lambda: float(NOW))

    def run(data: bytes) -> object:
        fields = data.split(b"\n", _REQUEST_FIELDS - 1)
        fields += [b""] * (_REQUEST_FIELDS - len(fields))
        text = [f.decode("utf-8", errors="replace") for f in fields[:-1]]
        method, path, query = text[0], text[1], text[2]
        pairs = [tuple(part.split("=", 1)) for part in query.split("&") if "=" in part]
        headers = dict(zip(SIGNED_HEADERS, text[3:7], strict=True))
        return verifier.verify(method, path, pairs, headers, fields[-1])  # type: ignore[arg-type]

    def seeds() -> list[bytes]:
        query = [("camera", "cam1"), ("start", "2023-11-14T22:13:24Z"), ("end", "2023-11-14T22:13:40Z")]
        signer = RequestSigner(collector, clock=lambda: float(NOW))
        headers = signer.headers("GET", "/v1/clips", query)
        lines = ["GET", "/v1/clips", "&".join(f"{k}={v}" for k, v in query), *headers.values(), ""]
        body = b'{"camera": "cam1", "start": 1700000000, "end": 1700000010}'
        post = signer.headers("POST", "/v1/holds", (), body)
        return [
            "\n".join(lines).encode(),
            "\n".join(["POST", "/v1/holds", "", *post.values()]).encode() + b"\n" + body,
        ]

    return Target(run, (SignatureError,), seeds)


_PARSERS = ("status", "motion", "availability", "command", "topic")


def mqtt_target() -> Target:
    """The collector's and the device's MQTT parsers: the first byte picks one, the rest is the payload."""
    from edge_agent.formats.mqtt_wire import (
        PayloadError,
        TopicInfo,
        parse_availability,
        parse_command,
        parse_motion,
        parse_status,
        parse_topic,
    )

    where = TopicInfo("status", "ville-01", "pi-01")

    def run(data: bytes) -> object:
        if not data:
            return None
        payload = data[1:]
        parser = _PARSERS[data[0] % len(_PARSERS)]
        if parser == "status":
            return parse_status(payload, where)
        if parser == "motion":
            return parse_motion(payload)
        if parser == "availability":
            return parse_availability(payload)
        if parser == "command":
            return parse_command("hold", payload)
        return parse_topic("csu/v1", payload.decode("utf-8", errors="replace"))

    def seeds() -> list[bytes]:
        status = {
            "schema": 1, "site": "ville-01", "device": "pi-01", "ts": "2023-11-14T22:13:20.000Z",
            "version": "0.1.0", "uptime_s": 12.5,
            "cameras": [{"id": "cam1", "state": "running", "fps": 9.9, "resolution": [1280, 720]}],
        }  # fmt: skip
        motion = {
            "schema": 1, "camera": "cam1", "event_id": "7d3c", "phase": "start",
            "ts": "2023-11-14T22:13:20.000Z", "start_ts": "2023-11-14T22:13:20.000Z", "score": 0.12,
            "boxes": [[0.1, 0.2, 0.3, 0.4]], "zones": ["street"],
        }  # fmt: skip
        hold = {"camera": "cam1", "start": "2023-11-14T22:13:20Z", "end": "2023-11-14T22:14:20Z"}
        return [
            bytes([0]) + json.dumps(status).encode(),
            bytes([1]) + json.dumps(motion).encode(),
            bytes([2]) + b'"online"',
            bytes([3]) + json.dumps(hold).encode(),
            bytes([4]) + b"csu/v1/ville-01/pi-01/cam1/motion",
        ]

    return Target(run, (PayloadError,), seeds)


TARGETS: dict[str, Callable[[], Target]] = {
    "segment": segment_target,
    "bundle": bundle_target,
    "evidence": evidence_target,
    "signed_request": signed_request_target,
    "mqtt": mqtt_target,
}


def check_one(target: Target, data: bytes) -> None:
    """Run one input; an exception other than the target's own refusals propagates (a finding)."""
    with contextlib.suppress(target.refusals):
        target.run(data)


def main(argv: list[str]) -> None:
    """`targets.py NAME [libFuzzer flags and corpus dirs]`: fuzz one target under atheris."""
    import atheris

    name, flags = argv[1], argv[1:]
    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["edge_agent"]):
        target = TARGETS[name]()
    atheris.Setup([argv[0], *flags[1:]], lambda data: check_one(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
