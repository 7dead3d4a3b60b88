"""The sealed segment format: round trip, tampering, truncation, wrong keys, chain breaks."""

from __future__ import annotations

import io
import itertools
import os
from fractions import Fraction
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_agent.formats.media import EncodedPacket, StreamInfo
from edge_agent.formats.sealing import (
    SegmentDecryptError,
    SegmentError,
    SegmentFormatError,
    SegmentSignatureError,
    SegmentTruncatedError,
    SegmentWriter,
    open_segment,
    verify_chain,
    verify_segment,
)
from tests.storage_support import Keys, make_keys

STREAM = StreamInfo("h264", "libx264", 64, 48, "yuv420p", Fraction(1, 1000), 10.0, 1000.0, b"\x01\x64")


def _packets(count: int, seed: int = 0) -> list[EncodedPacket]:
    rng = __import__("random").Random(seed)
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
    assert sealed.header == read_back.header and sealed.valid_length == sealed.size == len(out.getvalue())


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
