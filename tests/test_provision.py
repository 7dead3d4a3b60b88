"""scripts/provision.py: a provisioned card holds a config check-config accepts; bad input writes nothing."""

from __future__ import annotations

import datetime
import importlib.util
import json
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from edge_agent.collector.pki import init_pki
from edge_agent.formats.config import apply_env_overrides, load_config, parse_config
from edge_agent.formats.keys import generate_csu_keys, generate_device_key, load_ed25519_private

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "firmware_cfg" / "site.example.yaml"


def _load_provision() -> ModuleType:
    spec = importlib.util.spec_from_file_location("provision", ROOT / "scripts" / "provision.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["provision"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


provision = _load_provision()


@pytest.fixture
def csu(tmp_path: Path) -> Any:
    """The CSU's public keys and its broker's CA certificate, as the CSU hands them to technicians."""
    keys = generate_csu_keys(tmp_path / "csu")
    ca = init_pki(tmp_path / "pki", "Ville", datetime.datetime.now(datetime.UTC))
    (tmp_path / "csu" / "broker-ca.crt").write_bytes(ca.ca_cert.read_bytes())
    return keys


def args_for(csu: Any, template: Path, *extra: str, with_ca: bool = True) -> list[str]:
    ca = ["--broker-ca", str(Path(csu.sealing.public).parent / "broker-ca.crt")] if with_ca else []
    return [*ca,
        "--template", str(template),
        "--site", "ville-01-pt-042",
        "--device", "pi-a",
        "--csu-sealing-key", str(csu.sealing.public),
        "--collector-key", str(csu.signing.public),
        "--broker-host", "mqtt.csu.example.fr",
        *extra,
    ]  # fmt: skip


def test_a_template_naming_a_broker_ca_needs_the_ca_file(
    tmp_path: Path, csu: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "rootfs"
    assert provision.main(args_for(csu, EXAMPLE, "--target", str(root), with_ca=False)) != 0
    assert "mqtt.tls.ca_file names /etc/edge-agent/broker-ca.crt; pass --broker-ca FILE" in "".join(
        capsys.readouterr()
    )
    assert not root.exists()


def test_target_holds_a_config_check_config_accepts(
    tmp_path: Path, csu: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "rootfs"
    assert provision.main(args_for(csu, EXAMPLE, "--target", str(root))) == 0
    out, err = capsys.readouterr()
    assert "register it at the CSU" in out
    assert "mosquitto_passwd -b /etc/mosquitto/csu/passwd ville-01-pt-042/pi-a" in err

    site = root / "etc/edge-agent/site.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent.commands.cli", "check-config", str(site), "--root", str(root)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok")

    config = load_config(site, environ={})
    assert (config.site_id, config.device_id) == ("ville-01-pt-042", "pi-a")
    assert config.mqtt.username == "ville-01-pt-042/pi-a"
    assert len(config.mqtt.password) >= 24
    assert str(config.keys.device_key) == "/var/lib/edge-agent/keys/device_ed25519.pem"
    assert stat.S_IMODE(site.stat().st_mode) == 0o600  # it holds the broker password

    private = root / "var/lib/edge-agent/keys/device_ed25519.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    load_ed25519_private(private)
    sealing = root / "etc/edge-agent/csu_x25519.pub"
    assert sealing.read_bytes() == csu.sealing.public.read_bytes()
    assert (root / "etc/edge-agent/collectors/collector-0.pub").read_bytes() == (
        csu.signing.public.read_bytes()
    )
    rules = (root / "etc/udev/rules.d/99-edge-camera-site.rules").read_text()
    assert (
        'KERNELS=="1-1.2", ATTRS{idVendor}=="046d", ATTRS{idProduct}=="0825",'
        ' SYMLINK+="edge-camera-nomad-1"' in rules
    )


def test_camera_without_required_masks_is_refused(
    tmp_path: Path, csu: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["cameras"][1]["masks"] = []
    template = tmp_path / "site.yaml"
    template.write_text(yaml.safe_dump(document))
    root = tmp_path / "rootfs"
    assert provision.main(args_for(csu, template, "--target", str(root))) == 1
    err = capsys.readouterr().err
    assert "nothing was written" in err
    assert "cameras[1]: camera 'nomad-1' requires privacy masks and has none" in err
    assert not root.exists()


def test_invalid_config_and_wrong_key_are_refused_together(
    tmp_path: Path, csu: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["cameras"][0]["fps"] = 0
    document["cameras"][0]["masks"][0]["points"] = [[0.1, 0.1], [0.2, 0.2]]
    template = tmp_path / "site.yaml"
    template.write_text(yaml.safe_dump(document))
    argv = args_for(csu, template, "--balena")
    argv[argv.index("--csu-sealing-key") + 1] = str(csu.signing.public)  # Ed25519, not X25519
    assert provision.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no variables printed
    assert "expected an X25519 public key" in err
    assert "config: cameras[0].fps:" in err
    assert "config: cameras[0].masks[0].points: at least 3 points" in err


def test_existing_identity_is_never_overwritten(
    tmp_path: Path, csu: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "rootfs"
    keys = root / "var/lib/edge-agent/keys"
    before = generate_device_key(keys).private.read_bytes()
    assert provision.main(args_for(csu, EXAMPLE, "--target", str(root))) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (keys / "device_ed25519.pem").read_bytes() == before


def test_a_broker_ca_that_is_no_pem_ca_is_refused_before_the_card_is_written(
    tmp_path: Path, csu: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    root = tmp_path / "rootfs"
    assert provision.main(args_for(csu, EXAMPLE, "--broker-ca", str(garbage), "--target", str(root))) != 0
    assert f"--broker-ca {garbage}: not a PEM certificate" in capsys.readouterr().err
    assert not root.exists()


def test_balena_variables_configure_the_device(
    tmp_path: Path, csu: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "csu" / "broker-ca.crt"
    assert provision.main(args_for(csu, EXAMPLE, "--balena", "--broker-ca", str(ca))) == 0
    variables = json.loads(capsys.readouterr().out)
    assert set(variables) == {
        "EDGE_CONFIG_YAML",
        "CSU_SEALING_KEY_HEX",
        "CSU_COLLECTOR_KEYS_HEX",
        "CSU_BROKER_CA_PEM",
    }
    assert len(variables["CSU_SEALING_KEY_HEX"]) == 64
    assert variables["CSU_BROKER_CA_PEM"] == ca.read_text()
    # As the device sees them: no file, the YAML variable, and the layout Dockerfile.template sets.
    environ = {
        "EDGE_CONFIG_YAML": variables["EDGE_CONFIG_YAML"],
        "EDGE_STORAGE__PATH": "/data/edge-agent/segments",
    }
    config = parse_config(apply_env_overrides({}, environ))
    assert config.device_id == "pi-a"
    assert config.mqtt.username == "ville-01-pt-042/pi-a"
    assert str(config.mqtt.tls.ca_file) == "/data/edge-agent/keys/broker-ca.crt"  # type: ignore[union-attr]
    assert [c.id for c in config.cameras] == ["place-mairie", "nomad-1"]
