"""The sealed segment format: round trip, tampering, truncation, wrong keys, chain breaks."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_agent.formats.media import EncodedPacket, StreamInfo
from edge_agent.formats.sealing import (
    TRAILER_MAGIC,
    SegmentDecryptError,
    SegmentError,
    SegmentFormatError,
    SegmentInfo,
    SegmentSignatureError,
    SegmentTruncatedError,
    SegmentWriter,
    open_segment,
    verify_chain,
    verify_segment,
)
from edge_agent.storage.index import SegmentRecord
from tests.storage_support import Keys, make_keys

STREAM = StreamInfo("h264", "libx264", 64, 48, "yuv420p", Fraction(1, 1000), 10.0, 1000.0, b"\x01\x64")


def _packets(count: int, seed: int = 0) -> list[EncodedPacket]:
    rng = random.Random(seed)
    return [
        EncodedPacket(i * 100, i * 100, 100, i % 5 == 0, rng.randbytes(200 + rng.randrange(800)))
        for i in range(count)
    ]


def _seal(
    keys: Keys,
    sequence: int = 1,
    prev: str = "",
    packets: list[EncodedPacket] | None = None,
    cipher: str = "AES-256-GCM",
) -> bytes:
    out = io.BytesIO()
    writer = SegmentWriter(
        out,
        camera="cam1",
        device="dev1",
        sequence=sequence,
        prev_sha256=prev,
        stream=STREAM,
        start_ts=1000.0,
        device_key=keys.device,
        csu_public_key=keys.csu.public_key(),
        cipher=cipher,
    )
    for packet in _packets(10, sequence) if packets is None else packets:
        writer.append(packet)
    writer.finish()
    return out.getvalue()


def _chain(keys: Keys, tmp_path: Path, count: int) -> list[Path]:
    paths, prev = [], ""
    for sequence in range(1, count + 1):
        data = _seal(keys, sequence, prev)
        path = tmp_path / f"{sequence:012d}.seg"
        path.write_bytes(data)
        prev = verify_segment(data, keys.device.public_key()).sha256
        paths.append(path)
    return paths


@pytest.mark.parametrize("cipher", ["AES-256-GCM", "ChaCha20-Poly1305"])
def test_round_trip_gives_back_every_packet_and_the_stream(cipher: str) -> None:
    keys = make_keys()
    packets = _packets(12)
    data = _seal(keys, packets=packets, cipher=cipher)
    opened = open_segment(data, keys.csu, keys.device.public_key())
    assert opened.packets == packets
    assert opened.stream == STREAM
    assert opened.info.complete and opened.info.camera == "cam1" and opened.info.sequence == 1
    assert opened.info.end_ts == pytest.approx(1000.0 + 1.2)  # pts_epoch + (last pts + duration)


def test_the_writer_describes_its_segment_as_verification_reads_it_back() -> None:
    keys = make_keys()
    out = io.BytesIO()
    writer = SegmentWriter(
        out,
        camera="cam1",
        device="dev1",
        sequence=4,
        prev_sha256="ab" * 32,
        stream=STREAM,
        start_ts=1000.0,
        device_key=keys.device,
        csu_public_key=keys.csu.public_key(),
    )
    for packet in _packets(7):
        writer.append(packet)
    sealed = writer.finish()
    read_back = verify_segment(out.getvalue(), keys.device.public_key())
    assert sealed == read_back  # one type, the same values, whichever side describes the file
    assert (sealed.packets, sealed.records, sealed.state) == (7, 8, "complete")
    assert sealed.valid_length == sealed.size == len(out.getvalue())


def test_writer_streams_records_to_the_file_as_packets_arrive(tmp_path: Path) -> None:
    keys = make_keys()
    with (tmp_path / "s.seg").open("wb", buffering=0) as out:
        writer = SegmentWriter(
            out,
            camera="cam1",
            device="dev1",
            sequence=1,
            prev_sha256="",
            stream=STREAM,
            start_ts=1000.0,
            device_key=keys.device,
            csu_public_key=keys.csu.public_key(),
        )
        sizes = [out.tell()]
        for packet in _packets(5):
            writer.append(packet)
            sizes.append(out.tell())
        grew = [b - a for a, b in itertools.pairwise(sizes)]
        assert all(g > len(p.data) for g, p in zip(grew, _packets(5), strict=True))
        writer.finish()


def test_packet_bytes_never_appear_in_the_sealed_file() -> None:
    keys = make_keys()
    packets = [EncodedPacket(0, 0, 100, True, b"\x00\x00\x00\x01\x67\x64" + bytes(range(256)) * 4)]
    data = _seal(keys, packets=packets)
    assert bytes(range(256)) not in data and b"\x00\x00\x00\x01\x67" not in data


def test_another_csu_key_cannot_open_it() -> None:
    keys = make_keys()
    data = _seal(keys)
    verify_segment(data, keys.device.public_key())  # anyone can verify...
    with pytest.raises(SegmentDecryptError, match=r"cam1#1.*cannot unwrap the data key"):
        open_segment(data, X25519PrivateKey.generate(), keys.device.public_key())  # ...only the CSU opens


def test_another_device_key_does_not_verify() -> None:
    keys = make_keys()
    with pytest.raises(SegmentSignatureError, match=r"cam1#1.*device key"):
        verify_segment(_seal(keys), Ed25519PrivateKey.generate().public_key())


def _regions(data: bytes) -> dict[str, int]:
    header_end = 12 + int.from_bytes(data[8:12], "big")
    trailer = data.rindex(b"EDGETRL1")
    return {
        "magic": 3,
        "header json": header_end - 40,
        "record flags": header_end,
        "record length": header_end + 3,
        "record ciphertext": header_end + 40,
        "last record": trailer - 5,
        "trailer json": trailer + 20,
        "signature": len(data) - 10,
    }


@pytest.mark.parametrize("region", list(_regions(_seal(make_keys()))))
def test_a_flipped_byte_anywhere_is_detected_naming_the_segment(region: str, tmp_path: Path) -> None:
    keys = make_keys()
    data = bytearray(_seal(keys, sequence=7))
    data[_regions(bytes(data))[region]] ^= 0x04
    path = tmp_path / "000000000007.seg"
    path.write_bytes(bytes(data))
    with pytest.raises(SegmentError) as caught:
        open_segment(path, keys.csu, keys.device.public_key())
    if region != "magic":
        assert "cam1#7" in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_truncated_file_is_detected_and_its_prefix_is_usable(tmp_path: Path) -> None:
    keys = make_keys()
    data = _seal(keys, sequence=3)
    header_end = 12 + int.from_bytes(data[8:12], "big")
    for cut in (len(data) - 1, len(data) - 64, len(data) - 70, len(data) // 2, header_end + 10):
        path = tmp_path / "000000000003.seg"
        path.write_bytes(data[:cut])
        with pytest.raises(SegmentTruncatedError, match=rf"cam1#3 \({path}\): truncated"):
            verify_segment(path, keys.device.public_key())
        info = verify_segment(path, keys.device.public_key(), allow_partial=True)
        assert info.state == "partial" and info.valid_length <= cut
        prefix = open_segment(path, keys.csu, keys.device.public_key(), allow_partial=True)
        assert prefix.packets == _packets(10, 3)[: len(prefix.packets)]
        assert info.packets == len(prefix.packets)  # counted without decrypting


def test_a_cut_at_a_record_boundary_is_still_caught() -> None:
    keys = make_keys()
    data = _seal(keys)
    info = verify_segment(data[: data.rindex(b"EDGETRL1")], keys.device.public_key(), allow_partial=True)
    assert not info.complete  # the last-record flag is there, but not the signed trailer
    assert (info.records, info.packets) == (11, 10)  # the end record is not a packet
    # Dropping the end record and re-flagging a middle one as last cannot pass: the flag is in the nonce.
    forged = bytearray(data[: data.rindex(b"EDGETRL1")])
    header_end = 12 + int.from_bytes(forged[8:12], "big")
    forged[header_end] |= 1
    with pytest.raises(SegmentError):
        open_segment(bytes(forged), keys.csu, keys.device.public_key(), allow_partial=True)


def test_garbage_and_empty_files_are_refused_clearly(tmp_path: Path) -> None:
    keys = make_keys()
    path = tmp_path / "junk.seg"
    path.write_bytes(os.urandom(500))
    with pytest.raises(SegmentFormatError, match=rf"{path}.*not a segment file"):
        verify_segment(path, keys.device.public_key())
    with pytest.raises(SegmentFormatError, match="cannot read"):
        verify_segment(tmp_path / "missing.seg", keys.device.public_key())
    with pytest.raises(SegmentTruncatedError):
        verify_segment(b"EDGESEG1\x00\x00", keys.device.public_key(), allow_partial=True)


def test_whole_chain_has_no_break(tmp_path: Path) -> None:
    keys = make_keys()
    infos = [verify_segment(p, keys.device.public_key()) for p in _chain(keys, tmp_path, 4)]
    assert verify_chain(infos) == []
    assert verify_chain(infos[1:], previous_sha256=infos[0].sha256) == []


def test_removed_segment_is_named(tmp_path: Path) -> None:
    keys = make_keys()
    infos = [verify_segment(p, keys.device.public_key()) for p in _chain(keys, tmp_path, 5)]
    breaks = verify_chain([infos[0], infos[1], infos[3], infos[4]])
    assert [(b.kind, b.sequence) for b in breaks] == [("removed", 3)]
    assert "cam1#3 missing between cam1#2" in breaks[0].message and "000000000004.seg" in breaks[0].message


def test_swapped_segments_are_named(tmp_path: Path) -> None:
    keys = make_keys()
    infos = [verify_segment(p, keys.device.public_key()) for p in _chain(keys, tmp_path, 4)]
    breaks = verify_chain([infos[0], infos[2], infos[1], infos[3]])
    assert [(b.kind, b.sequence) for b in breaks] == [("swapped", 2)]
    assert "cam1#2" in breaks[0].message and "after cam1#3" in breaks[0].message


def test_swapped_file_names_are_caught_by_the_expected_sequence(tmp_path: Path) -> None:
    keys = make_keys()
    first, second = _chain(keys, tmp_path, 2)
    swapped = tmp_path / "swapped.seg"
    first.rename(swapped)
    second.rename(first)
    with pytest.raises(SegmentFormatError, match=r"cam1#2 .*holds sequence 2, stored as sequence 1"):
        verify_segment(first, keys.device.public_key(), expect_sequence=1)


def test_replayed_segment_is_named(tmp_path: Path) -> None:
    keys = make_keys()
    infos = [verify_segment(p, keys.device.public_key()) for p in _chain(keys, tmp_path, 3)]
    breaks = verify_chain([infos[0], infos[1], infos[2], infos[1]])
    assert [(b.kind, b.sequence) for b in breaks] == [("replayed", 2)]
    # Re-sealed with the same sequence but other content (a replay from another run) is caught too.
    other = verify_segment(_seal(keys, 2, infos[0].sha256, _packets(3, 99)), keys.device.public_key())
    assert [b.kind for b in verify_chain([*infos, other])] == ["replayed"]


def test_a_substituted_segment_breaks_the_link(tmp_path: Path) -> None:
    keys = make_keys()
    infos = [verify_segment(p, keys.device.public_key()) for p in _chain(keys, tmp_path, 3)]
    forged = verify_segment(_seal(keys, 2, "00" * 32), keys.device.public_key())
    breaks = verify_chain([infos[0], forged, infos[2]])
    assert {(b.kind, b.sequence) for b in breaks} == {("broken", 2), ("broken", 3)}


# ---- crafted header and trailer values (issue 13 item 4) --------------------------------------------


def _rewrite(data: bytes, header: bytes | None = None, trailer: bytes | None = None) -> bytes:
    """The segment with its header and/or trailer JSON bytes replaced (signature left as it was)."""
    header_len = int.from_bytes(data[8:12], "big")
    body, rest = data[12 : 12 + header_len], data[12 + header_len :]
    if trailer is not None:
        at = rest.rindex(b"EDGETRL1")
        rest = rest[:at] + b"EDGETRL1" + len(trailer).to_bytes(4, "big") + trailer + rest[-64:]
    body = body if header is None else header
    return b"EDGESEG1" + len(body).to_bytes(4, "big") + body + rest


def _header_of(data: bytes) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(data[12 : 12 + int.from_bytes(data[8:12], "big")])
    return header


def _crafted_header(data: bytes, kind: str) -> bytes:
    header = _header_of(data)
    if kind == "deep nesting":
        deep = b"[" * 100_000 + b"]" * 100_000
        return json.dumps(header, sort_keys=True).replace('"h264"', "X").encode().replace(b"X", deep)
    if kind == "sequence Infinity":
        header["sequence"] = math.inf
    elif kind == "width Infinity":
        header["stream"]["width"] = math.inf
    elif kind == "time_base [1, 0]":
        header["stream"]["time_base"] = [1, 0]
    elif kind == "start_ts 1e999":
        return json.dumps(header, sort_keys=True).replace(str(header["start_ts"]), "1e999").encode()
    elif kind == "sequence beyond 2^53":
        header["sequence"] = 2**64
    elif kind == "width 0":
        header["stream"]["width"] = 0
    elif kind == "height a string":
        header["stream"]["height"] = "480"
    elif kind == "camera 10 kB":
        header["camera"] = "c" * 10_000
    elif kind == "duplicate key":
        text = json.dumps(header, sort_keys=True)
        return ('{"sequence": 9, ' + text[1:]).encode()
    return json.dumps(header, sort_keys=True).encode()


# Each crafted value, and what the refusal must name.
CRAFTED = {
    "sequence Infinity": "Infinity is not a JSON number",
    "width Infinity": "Infinity is not a JSON number",
    "time_base [1, 0]": "header field stream.time_base.1",
    "deep nesting": "nested deeper than 8 levels",
    "start_ts 1e999": "number 1e999 is out of range",
    "sequence beyond 2^53": "header field sequence",
    "width 0": "header field stream.width",
    "height a string": "header field stream.height",
    "camera 10 kB": "header field camera",
    "duplicate key": "duplicate key 'sequence'",
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_header_value_is_a_format_error_naming_it(kind: str, tmp_path: Path) -> None:
    keys = make_keys()
    path = tmp_path / "000000000001.seg"
    path.write_bytes(_rewrite(_seal(keys), header=_crafted_header(_seal(keys), kind)))
    for check in (
        lambda: verify_segment(path, keys.device.public_key(), allow_partial=True),
        lambda: verify_segment(path, None, allow_partial=True),
        lambda: open_segment(path, keys.csu, keys.device.public_key()),
    ):
        with pytest.raises(SegmentFormatError) as caught:
            check()
        assert CRAFTED[kind] in str(caught.value) and str(path) in str(caught.value)


def test_a_sane_header_names_its_segment_when_one_field_is_refused() -> None:
    keys = make_keys()
    data = _seal(keys, sequence=7)
    header = _header_of(data)
    header["stream"]["time_base"] = [1, 0]
    with pytest.raises(SegmentFormatError, match=r"cam1#7: header field stream\.time_base\.1: .*greater"):
        verify_segment(_rewrite(data, header=json.dumps(header).encode()), None)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"end_ts": "Infinity"}, "Infinity is not a JSON number"),
        ({"records": -1}, "trailer field records"),
        ({"packets": 10**30}, "trailer field packets"),
        ({"packet_sha256": ["zz"]}, "trailer field packet_sha256.0"),
        ({"closed": "whenever"}, "trailer field closed"),
    ],
)
def test_a_crafted_trailer_value_is_a_format_error_naming_it(edit: dict[str, Any], named: str) -> None:
    keys = make_keys()
    data = _seal(keys)
    at = data.rindex(b"EDGETRL1")
    trailer = json.loads(data[at + 12 : -64])
    text = json.dumps({**trailer, **{k: 0 for k in edit}})
    for key, value in edit.items():
        text = text.replace(f'"{key}": 0', f'"{key}": {json.dumps(value) if value != "Infinity" else value}')
    with pytest.raises(SegmentFormatError, match=named):
        verify_segment(_rewrite(data, trailer=text.encode()), keys.device.public_key())


def _bundle(tmp_path: Path, rows: list[SegmentRecord], keys: Keys) -> Path:
    """A signed bundle of `rows` (cam1 of device pi-01) as the device serves it, as each file is now."""
    from edge_agent.formats.bundle import build_manifest, plan_bundle, sign_manifest, write_bundle

    segments = [r.to_bundle_segment(size=r.path.stat().st_size) for r in rows]
    manifest = build_manifest(
        site="ville-01",
        device="pi-01",
        camera="cam1",
        requisition="PV 1",
        start_ts=rows[0].start_ts,
        end_ts=rows[-1].end_ts,
        segments=segments,
        gaps=[],
        device_public_key=keys.device.public_key(),
    )
    bundle = tmp_path / "bundle.tar"
    with bundle.open("wb") as out:
        write_bundle(plan_bundle(manifest, sign_manifest(manifest, keys.device), segments), out)
    return bundle


@pytest.mark.parametrize(
    ("manifest", "named"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b'{"format": NaN}', "NaN is not a JSON number"),
        (b'{"format": "csu-clip-bundle", "format": "x"}', "duplicate key 'format'"),
        (b"[" * 200 + b"]" * 200, "nested deeper than"),
        (b'{"format": "csu-clip-bundle", "version": 9}', "not a csu-clip-bundle v1 bundle"),
    ],
)
def test_a_malformed_manifest_the_device_signed_is_refused_naming_it(
    tmp_path: Path, manifest: bytes, named: str
) -> None:
    import tarfile

    from edge_agent.formats.bundle import BundleError, BundleReader

    keys = make_keys()
    bundle = tmp_path / "bundle.tar"
    with tarfile.open(bundle, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in (("manifest.json", manifest), ("manifest.sig", keys.device.sign(manifest))):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    with pytest.raises(BundleError, match=f"manifest.json: .*{re.escape(named)}"):
        BundleReader.open(bundle, keys.device.public_key())


def test_a_bundle_cannot_be_planned_with_a_segment_without_its_file() -> None:
    from edge_agent.formats.bundle import BundleSegment, plan_bundle

    row = BundleSegment("segments/000000000001.seg", 1, 0.0, 2.0, 10, "ab" * 32, "", "complete")
    with pytest.raises(ValueError, match=r"segment segments/000000000001\.seg: no file"):
        plan_bundle({"bundle_id": "x"}, b"sig", [row])


def test_a_crafted_segment_in_a_bundle_is_refused_and_leaves_no_mp4(tmp_path: Path) -> None:
    from edge_agent.collector.evidence import ClipRejected, process_bundle
    from tests.clip_support import encode_segments

    keys = make_keys()
    ring = encode_segments(tmp_path / "ring", keys.device, keys.csu.public_key(), 1_700_000_000.0, 6.0)
    rows = ring.segments("cam1")
    crafted = rows[1].path.read_bytes()
    rows[1].path.write_bytes(_rewrite(crafted, header=_crafted_header(crafted, "time_base [1, 0]")))
    bundle = _bundle(tmp_path, rows, keys)
    clip = tmp_path / "clip.mp4"
    with pytest.raises(ClipRejected, match=r"000000000002\.seg \(#2\): tampered: .*stream\.time_base"):
        process_bundle(bundle, keys.device.public_key(), keys.csu, clip)
    assert not clip.exists()
    ring.close()


# ---- frame-level provenance (issue 15): each packet's frame hash, signed in the trailer -------------


def test_the_trailer_signs_each_packets_frame_hash_and_old_segments_have_none() -> None:
    from edge_agent.formats.media import packet_digest
    from edge_agent.formats.sealing import FRAME_HASH_VERSION, signed_packet_hashes

    keys = make_keys()
    packets = _packets(6)
    data = _seal(keys, packets=packets)
    hashes = signed_packet_hashes(data, keys.device.public_key())
    assert hashes == tuple(packet_digest(STREAM, p.data) for p in packets)
    assert verify_segment(data, keys.device.public_key()).version == FRAME_HASH_VERSION
    fixture = Path(__file__).parent / "fixtures" / "format_v1"
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    device = load_pem_private_key((fixture / "device_ed25519.pem").read_bytes(), None)
    assert isinstance(device, Ed25519PrivateKey)
    old = fixture / "segments" / "000000000001.seg"
    assert signed_packet_hashes(old, device.public_key()) is None  # version 1: no frame-level signature


def test_annex_b_and_length_prefixed_framings_give_one_frame_hash() -> None:
    from edge_agent.formats.media import annexb_units, packet_digest, sample_digest

    units = [
        b"\x09\xf0",
        b"\x67\x42\xc0\x0a" + bytes(range(40)),
        b"\x68\xce\x3c\x80",
        b"\x65\x88" + bytes(range(1, 200)),
    ]
    annexb = b"".join(
        (b"\x00\x00\x00\x01" if i % 2 == 0 else b"\x00\x00\x01") + u for i, u in enumerate(units)
    )
    assert list(annexb_units(annexb)) == units
    for size in (4, 2):
        avcc = b"".join(len(u).to_bytes(size, "big") + u for u in units)
        assert sample_digest("h264", avcc, size) == packet_digest(STREAM, annexb)
    assert sample_digest("h264", b"".join(len(u).to_bytes(4, "big") + u for u in units)) == (
        hashlib.sha256(b"".join(len(u).to_bytes(4, "big") + u for u in units)).digest()
    )
    # Another split of the same bytes is another frame; a sample whose lengths overrun is refused.
    assert sample_digest("h264", len(units[1]).to_bytes(4, "big") + units[1]) != sample_digest(
        "h264", b"\x00\x00\x00\x04" + units[1][:4] + (len(units[1]) - 4).to_bytes(4, "big") + units[1][4:]
    )
    with pytest.raises(ValueError, match="overruns the sample"):
        sample_digest("h264", b"\x00\x00\x01\x00" + units[0])
    mjpeg = StreamInfo("mjpeg", "mjpeg", 64, 48, "yuvj420p", Fraction(1, 1000), 10.0, 0.0)
    jpeg = b"\xff\xd8\x00\x00\x01\x65\xff\xd9"
    assert packet_digest(mjpeg, jpeg) == sample_digest("mjpeg", jpeg) == hashlib.sha256(jpeg).digest()


def test_a_packet_that_differs_from_its_signed_frame_hash_is_refused_at_opening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import edge_agent.formats.sealing as sealing

    keys = make_keys()
    real = sealing.packet_digest
    # A writer that signed the hash of other bytes than it sealed (a device bug or a forgery).
    monkeypatch.setattr(sealing, "packet_digest", lambda stream, data: real(stream, data + b"!"))
    data = _seal(keys, packets=[EncodedPacket(0, 0, 100, True, b"\x00\x00\x00\x01\x65\x88\x84")])
    monkeypatch.setattr(sealing, "packet_digest", real)
    verify_segment(data, keys.device.public_key())  # the signature holds: it signed what it said
    with pytest.raises(SegmentFormatError, match="record 0: the packet differs from its device-signed frame"):
        open_segment(data, keys.csu, keys.device.public_key())


def test_the_frame_hashes_of_an_exported_mp4_match_the_devices_signatures(tmp_path: Path) -> None:
    import av

    from edge_agent.collector.evidence import process_bundle
    from edge_agent.formats.media import sample_digest
    from edge_agent.formats.sealing import signed_packet_hashes
    from tests.clip_support import encode_segments

    keys = make_keys()
    ring = encode_segments(tmp_path / "ring", keys.device, keys.csu.public_key(), 1_700_000_000.0, 6.0)
    rows = ring.segments("cam1")
    signed = [h for r in rows for h in signed_packet_hashes(r.path, keys.device.public_key()) or ()]
    bundle = _bundle(tmp_path, rows, keys)
    clip = tmp_path / "clip.mp4"
    process_bundle(bundle, keys.device.public_key(), keys.csu, clip)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        assert extradata[:1] == b"\x01"  # avcC: the MP4 stores length-prefixed NAL units
        length_size = (extradata[4] & 3) + 1
        samples = [bytes(p) for p in container.demux(stream) if p.size]
    assert len(samples) == len(signed) == 60
    assert [sample_digest("h264", s, length_size) for s in samples] == list(signed)
    ring.close()


# ---- closing a segment whose writer was killed ------------------------------------------------------


def _written(keys: Keys, count: int, finish: bool = False) -> tuple[bytes, bytes]:
    """What a writer killed after `count` packets left: the file's bytes and its journal's."""
    out, journal = io.BytesIO(), io.BytesIO()
    writer = SegmentWriter(
        out,
        camera="cam1",
        device="dev1",
        sequence=3,
        prev_sha256="ab" * 32,
        stream=STREAM,
        start_ts=1000.0,
        device_key=keys.device,
        csu_public_key=keys.csu.public_key(),
        journal=journal,
    )
    for packet in _packets(count):
        writer.append(packet)
    if finish:
        writer.finish()
    return out.getvalue(), journal.getvalue()


def _close(data: bytes, journal: bytes, key: Ed25519PrivateKey | None) -> tuple[object, bytes]:
    from edge_agent.formats.sealing import close_unfinished

    handle = io.BytesIO(data)
    info = close_unfinished(handle, journal, key, 5000.0, expect_camera="cam1", expect_sequence=3)
    return info, handle.getvalue()


def test_a_killed_writers_segment_is_closed_with_a_signed_recovered_trailer() -> None:
    keys = make_keys()
    data, journal = _written(keys, 8)
    cut = data[: len(data) - 30]  # the 8th record torn
    info, closed = _close(cut, journal, keys.device)
    read = verify_segment(closed, keys.device.public_key(), expect_sequence=3)
    assert info == read and read.state == "recovered" and read.packets == 7
    assert read.end_ts == pytest.approx(1000.0 + 0.7) and read.prev_sha256 == "ab" * 32
    assert open_segment(closed, keys.csu, keys.device.public_key()).packets == _packets(8)[:7]
    # The journal bounds what is kept: a record it does not cover was not known to be whole.
    info, closed = _close(data, journal[: 5 * 40 + 17], keys.device)
    assert verify_segment(closed, keys.device.public_key()).packets == 5
    # A flipped byte in a recovered segment breaks the device's signature like any other.
    altered = bytearray(closed)
    altered[len(closed) // 2] ^= 1
    with pytest.raises(SegmentSignatureError):
        verify_segment(bytes(altered), keys.device.public_key())


def test_closing_without_a_key_without_records_or_after_the_trailer() -> None:
    keys = make_keys()
    data, journal = _written(keys, 4)
    _, closed = _close(data, journal, None)  # no key: cut back, unsigned
    assert verify_segment(closed, None, allow_partial=True).state == "partial"
    header_only, _ = _written(keys, 0)
    assert _close(header_only, b"", keys.device)[0] is None
    # Killed between finish and rename: never committed, so closed again as recovered, every packet
    # kept (the gap the crash left after it then reads `crash`); without its journal, kept as sealed.
    sealed, journal = _written(keys, 4, finish=True)
    info, closed = _close(sealed, journal, keys.device)
    assert isinstance(info, SegmentInfo) and info.state == "recovered" and info.packets == 4
    assert verify_segment(closed, keys.device.public_key()).state == "recovered"
    assert sealed.startswith(closed[: closed.index(TRAILER_MAGIC)])  # the same records, a new trailer
    info, closed = _close(sealed, b"", keys.device)
    assert isinstance(info, SegmentInfo) and info.state == "complete" and closed == sealed
    with pytest.raises(SegmentFormatError, match="found as cam1#3"):
        from edge_agent.formats.sealing import close_unfinished

        close_unfinished(
            io.BytesIO(_seal(keys, sequence=4)),
            b"",
            keys.device,
            0.0,
            expect_camera="cam1",
            expect_sequence=3,
        )


def test_a_trailer_without_the_end_record_must_say_recovered() -> None:
    keys = make_keys()
    data, journal = _written(keys, 3)
    _, closed = _close(data, journal, keys.device)
    forged = closed.replace(b'"closed":"recovered"', b'"closed":"sealed"   ')
    forged = forged.replace(b'"recovered_at":5000.0,', b"")
    at = forged.rindex(b"EDGETRL1")
    body = forged[at + 12 : -64].rstrip()
    forged = forged[:at] + b"EDGETRL1" + len(body).to_bytes(4, "big") + body + forged[-64:]
    with pytest.raises(SegmentFormatError, match="trailer without the end record, yet not `recovered`"):
        verify_segment(forged, None)
