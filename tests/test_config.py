"""Config validation: every bad input is reported with the path of its field."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.collector.pki import init_pki
from edge_agent.commands.cli import main as cli_main
from edge_agent.formats.config import ConfigError, SourceKind, apply_env_overrides, load_config, parse_config

SQUARE = [[0.1, 0.1], [0.3, 0.1], [0.3, 0.3], [0.1, 0.3]]

GOOD: dict[str, Any] = {
    "site_id": "ville-01",
    "device_id": "pt-042",
    "cameras": [
        {"id": "ptz", "source": "synthetic:3", "masks": [{"name": "window", "points": SQUARE}]},
        {
            "id": "pano",
            "source": "rtsp://10.0.0.9/stream1",
            "resolution": [1920, 1080],
            "masks": [{"points": SQUARE, "mode": "pixelate"}],
            "motion": {"zones": [{"name": "street", "points": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}]},
        },
    ],
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """GOOD with one field (dotted path, numbers for list indices) replaced or removed."""
    data = copy.deepcopy(GOOD)
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    node: Any = data
    for key in keys[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    if value is _REMOVE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_REMOVE = object()


def test_good_config_parses_with_shorthand_sources() -> None:
    config = parse_config(GOOD)
    assert config.cameras[0].source.kind is SourceKind.SYNTHETIC
    assert config.cameras[0].source.seed == 3
    assert config.cameras[1].source.kind is SourceKind.STREAM
    assert config.cameras[1].source.uri == "rtsp://10.0.0.9/stream1"
    assert config.camera("pano").motion.zones[0].name == "street"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("site_id", _REMOVE, "site_id: Field required"),
        ("device_id", "Bad Id", "device_id: String should match pattern"),
        ("cameras.1.masks.0.points", [[0, 0], [1, 1]], "cameras[1].masks[0].points: at least 3 points"),
        (
            "cameras.0.masks.0.points",
            [[0, 0], [1.5, 0], [1, 1]],
            "cameras[0].masks[0].points: point (1.5, 0.0)",
        ),
        (
            "cameras.0.masks.0.points",
            [[0, 0], [0.5, 0.5], [1, 1]],
            "cameras[0].masks[0].points: polygon has no area",
        ),
        ("cameras.0.resolution", [641, 480], "cameras[0].resolution: 641x480: width and height must be even"),
        ("cameras.0.fps", 0, "cameras[0].fps: Input should be greater than 0"),
        ("cameras.1.id", "ptz", "cameras: camera id 'ptz' is used twice"),
        ("cameras.1.source", {"kind": "opencv"}, "cameras[1].source: an opencv source needs `uri`"),
        (
            "cameras.0.masks.0.mode",
            "smudge",
            "cameras[0].masks[0].mode: Input should be 'fill', 'pixelate' or 'blur'",
        ),
        (
            "cameras.0.masks.0.color",
            [0, 0, 300],
            "cameras[0].masks[0].color: each colour component must be 0..255",
        ),
        ("cameras.0.frame_rate", 10, "cameras[0].frame_rate: Extra inputs are not permitted"),
        ("mqtt.port", 70000, "mqtt.port: Input should be less than or equal to 65535"),
        ("clip_server.tls_cert", "/etc/cert.pem", "clip_server: tls_cert and tls_key go together"),
        ("storage.retention_days", 60, "storage.retention_days: Input should be less than or equal to 31"),
        ("cameras.1.motion.zones.0.points", [[0, 0]], "cameras[1].motion.zones[0].points: at least 3 points"),
        ("location", {"lat": 91, "lon": 1.4}, "location.lat: Input should be less than or equal to 90"),
        ("location", {"lat": 43.6}, "location.lon: Field required"),
        (
            "location",
            {"lat": 43.6, "lon": 1.4, "label": "x" * 81},
            "location.label: String should have at most 80",
        ),
        ("mqtt.status_heartbeat_s", 0, "mqtt.status_heartbeat_s: Input should be greater than or equal to 1"),
        (
            "clip_server.upload_kbps",
            -1,
            "clip_server.upload_kbps: Input should be greater than or equal to 0",
        ),
    ],
)
def test_bad_config_names_the_field(path: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_change(path, value))
    assert any(line.startswith(expected) for line in caught.value.errors), caught.value.errors


def test_every_error_is_reported_at_once() -> None:
    data = with_change("cameras.0.fps", -1)
    data["cameras"][1]["masks"][0]["points"] = [[0, 0]]
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert len(caught.value.errors) == 2


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("site_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, environ={})
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(listing, environ={})


def test_env_overrides_keep_types_and_nest(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    config = load_config(
        path,
        environ={
            "EDGE_DEVICE_ID": "pt-999",
            "EDGE_MQTT__HOST": "broker.csu",
            "EDGE_MQTT__PORT": "8883",
            "EDGE_CAMERAS__0__FPS": "8",
            "EDGE_CAMERAS__1__RESOLUTION": "[1280, 720]",
            "HOME": "/root",
        },
    )
    assert config.device_id == "pt-999"
    assert (config.mqtt.host, config.mqtt.port) == ("broker.csu", 8883)
    assert config.cameras[0].fps == 8
    assert config.cameras[1].resolution == (1280, 720)


def test_whole_config_from_environment() -> None:
    config = load_config(None, environ={"EDGE_CONFIG_YAML": yaml.safe_dump(GOOD), "EDGE_SITE_ID": "nomad-7"})
    assert config.site_id == "nomad-7"
    assert len(config.cameras) == 2


def test_bad_env_override_names_the_field() -> None:
    data = apply_env_overrides(copy.deepcopy(GOOD), {"EDGE_MQTT__PORT": "not-a-port"})
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.errors[0].startswith("mqtt.port:")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"EDGE_CAMERAS__X__FPS": "8"}, "EDGE_CAMERAS__X__FPS: 'x' is not a list index"),
        ({"EDGE_CAMERAS__2000000__FPS": "8"}, "EDGE_CAMERAS__2000000__FPS: index 2000000 is past the end"),
        ({"EDGE_CAMERAS__5__FPS": "8"}, "EDGE_CAMERAS__5__FPS: index 5 is past the end of the list (2 item"),
        ({"EDGE_CONFIG_YAML": "site_id: [unclosed"}, "EDGE_CONFIG_YAML: not valid YAML"),
        (
            {"EDGE_CONFIG_YAML": "a: 1\na: 2\n"},
            "EDGE_CONFIG_YAML: not valid YAML (key 'a' given twice (lines 1 and 2)",
        ),
    ],
)
def test_bad_environment_variable_is_named_not_a_traceback(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        apply_env_overrides(copy.deepcopy(GOOD), environ)
    assert caught.value.errors[0].startswith(message)


def test_the_next_list_index_adds_an_item() -> None:
    data = apply_env_overrides(copy.deepcopy(GOOD), {"EDGE_CAMERAS__2__ID": "extra"})
    assert [c["id"] for c in data["cameras"]] == ["ptz", "pano", "extra"]


def test_a_key_given_twice_in_the_file_is_refused_with_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    body = yaml.safe_dump(GOOD).replace("cameras:", "masks: []\ncameras:", 1)
    path.write_text(body.replace("site_id:", "device_id: other\nsite_id:", 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "key 'device_id' given twice (lines" in caught.value.errors[0]
    assert caught.value.errors[0].startswith(f"{path}: not valid YAML")


def _device_root(tmp_path: Path) -> Path:
    """A device file system holding the key files the default config names."""
    root = tmp_path / "rootfs"
    for path in ("var/lib/edge-agent/keys/device_ed25519.pem", "etc/edge-agent/csu_x25519.pub"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("key\n")
    return root


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    root = _device_root(tmp_path)
    assert cli_main(["check-config", str(good), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok\n")
    assert "ptz: synthetic" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("cameras.1.masks.0.points", [[0, 0], [1, 1]])))
    assert cli_main(["check-config", str(bad), "--root", str(root)]) == 1
    assert "cameras[1].masks[0].points: at least 3 points" in capsys.readouterr().out


def test_check_config_fails_on_a_camera_that_requires_masks_and_has_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(with_change("cameras.1.masks", [])))
    assert cli_main(["check-config", str(path), "--root", str(_device_root(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "cameras[1].masks: camera 'pano' requires masks (require_masks: true) and has none" in out
    assert not out.startswith("ok")


def test_check_config_names_every_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = copy.deepcopy(GOOD) | {
        "mqtt": {"host": "broker.csu", "tls": {"ca_file": "/etc/edge-agent/csu-ca.pem"}},
        "keys": {"collector_public_keys": [str(tmp_path / "collector.pub")]},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli_main(["check-config", str(path), "--root", str(_device_root(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "mqtt.tls.ca_file: /etc/edge-agent/csu-ca.pem: no such file" in out
    assert f"keys.collector_public_keys[0]: {tmp_path / 'collector.pub'}: no such file" in out
    assert "keys.device_key" not in out  # present under the root


def test_check_config_reads_the_broker_ca_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker CA file that is there but holds no CA certificate fails at the first connection, on a
    device already in the street: check-config names it instead of saying ok."""
    data = copy.deepcopy(GOOD) | {
        "mqtt": {"host": "broker.csu", "tls": {"ca_file": "/etc/edge-agent/csu-ca.pem"}}
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    root = _device_root(tmp_path)
    (root / "etc/edge-agent/csu-ca.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    )
    assert cli_main(["check-config", str(path), "--root", str(root)]) == 1
    assert "mqtt.tls.ca_file: /etc/edge-agent/csu-ca.pem: not a PEM certificate" in capsys.readouterr().out
    ca = init_pki(tmp_path / "pki", "Ville", datetime.datetime.now(datetime.UTC))
    (root / "etc/edge-agent/csu-ca.pem").write_bytes(ca.ca_cert.read_bytes())
    assert cli_main(["check-config", str(path), "--root", str(root)]) == 0
