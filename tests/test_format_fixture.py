"""Files written by the code as it was before the layout change still verify: the wire did not move.

`tests/fixtures/format_v1/` holds three sealed segments, a bundle fetched over real HTTP with its MP4
export and signed evidence, and both audit logs, all written by the first landing's code. The keys are
throwaway test keys.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge_agent.collector.evidence import process_bundle, verify_export
from edge_agent.formats.audit import verify_log
from edge_agent.formats.sealing import iter_packets, verify_chain, verify_segment

FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"


def _key(name: str) -> object:
    return load_pem_private_key((FIXTURE / name).read_bytes(), None)


def test_old_segments_verify_decrypt_and_chain() -> None:
    device = _key("device_ed25519.pem")
    csu = _key("csu_x25519.pem")
    assert isinstance(device, Ed25519PrivateKey) and isinstance(csu, X25519PrivateKey)
    paths = sorted((FIXTURE / "segments").glob("*.seg"))
    infos = [verify_segment(path, device.public_key()) for path in paths]
    assert [info.sequence for info in infos] == [1, 2, 3]
    assert verify_chain(infos) == []
    packets = [p for path in paths for p in iter_packets(path, csu, device.public_key())]
    assert len(packets) == 60  # 6 s at 10 fps


def test_old_bundle_verifies_and_old_export_still_checks(tmp_path: Path) -> None:
    device = _key("device_ed25519.pem")
    csu = _key("csu_x25519.pem")
    collector = _key("collector_ed25519.pem")
    assert isinstance(device, Ed25519PrivateKey) and isinstance(csu, X25519PrivateKey)
    assert isinstance(collector, Ed25519PrivateKey)
    check = process_bundle(FIXTURE / "export" / "bundle.tar", device.public_key(), csu, tmp_path / "clip.mp4")
    assert check.manifest["camera"] == "cam1"
    assert [s.status for s in check.segments] == ["verified"] * 3
    assert (tmp_path / "clip.mp4").stat().st_size > 0
    assert verify_export(FIXTURE / "export", [collector.public_key()])[1] == []


def test_old_audit_logs_verify() -> None:
    for name in ("device-audit.jsonl", "collector-audit.jsonl"):
        report = verify_log(FIXTURE / name)
        assert report.ok, (name, report)
        assert report.entries >= 1
