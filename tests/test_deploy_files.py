"""Deployment files parse and say what the fleet needs: balena.yml, compose, Dockerfile, the systemd unit
(checked by systemd itself), udev rules, the example site config."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edge_agent.formats.config import load_config

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware_cfg"
UNIT = FIRMWARE / "systemd" / "edge-agent.service"
AGENT_BINARY = "/opt/edge-agent/venv/bin/edge-agent"


def test_balena_yml_names_the_fleet_and_device_types() -> None:
    balena = yaml.safe_load((ROOT / "balena.yml").read_text())
    assert balena["name"] == "edge-agent"
    assert balena["type"] == "sw.application"
    assert balena["version"]
    types = balena["data"]["supportedDeviceTypes"]
    assert {"raspberrypi4-64", "raspberrypi5"} <= set(types)
    assert any(t.startswith("jetson-") for t in types)
    assert balena["data"]["defaultDeviceType"] in types
    for variable in balena["data"]["applicationEnvironmentVariables"]:
        (name,) = variable
        assert name.startswith("EDGE_"), name


# What balena's supervisor documents for docker-compose.yml ("docker-compose.yml fields" and its label
# list, in the balena docs): compose 2.x service fields, short-syntax named volumes only (no bind mounts),
# and its own io.balena.* labels. Anything else is refused at deploy or silently ignored.
BALENA_SERVICE_FIELDS = {
    "build", "cap_add", "cap_drop", "cgroup_parent", "command", "cpu_shares", "cpu_quota", "cpuset",
    "devices", "depends_on", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "environment",
    "expose", "extra_hosts", "group_add", "healthcheck", "hostname", "image", "ipc", "labels",
    "mac_address", "mem_limit", "mem_reservation", "network_mode", "networks", "oom_kill_disable",
    "oom_score_adj", "pid", "pids_limit", "ports", "privileged", "read_only", "restart", "security_opt",
    "shm_size", "stop_grace_period", "stop_signal", "sysctls", "tmpfs", "ulimits", "user", "userns_mode",
    "volumes", "working_dir",
}  # fmt: skip
BALENA_LABELS = {
    "io.balena.features.balena-socket", "io.balena.features.dbus", "io.balena.features.sysfs",
    "io.balena.features.procfs", "io.balena.features.kernel-modules", "io.balena.features.firmware",
    "io.balena.features.journal-logs", "io.balena.features.supervisor-api",
    "io.balena.features.balena-api", "io.balena.features.gpu", "io.balena.update.strategy",
    "io.balena.update.handover-timeout",
}  # fmt: skip


def test_compose_uses_only_what_balena_supports() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert str(compose["version"]).startswith("2")
    for name, service in compose["services"].items():
        assert set(service) <= BALENA_SERVICE_FIELDS, (name, set(service) - BALENA_SERVICE_FIELDS)
        assert set(service.get("labels", {})) <= BALENA_LABELS, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.startswith(("/", ".", "~")), f"{name}: bind mount {volume} (balena has none)"
            assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_compose_runs_the_agent_with_its_volume_and_live_cameras() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["edge-agent"]
    assert service["build"] == "."
    assert service["restart"] == "always"
    assert service["network_mode"] == "host"
    assert service["volumes"] == ["edge-data:/data"]
    assert service["privileged"] is True  # balena's way to a live /dev for hot-plugged cameras
    assert service["labels"]["io.balena.features.sysfs"] == "1"
    text = (ROOT / "Dockerfile.template").read_text()
    assert re.search(r"^\s+UDEV=on\b", text, re.M)  # udevd in the container: camera identities


def test_pi_images_carry_picamera2() -> None:
    text = (ROOT / "Dockerfile.template").read_text()
    pi_branch = re.search(r"raspberrypi\*\)(.*?);;", text, re.S)
    assert pi_branch and "python3-picamera2" in pi_branch.group(1)
    assert "--system-site-packages" in text  # the venv sees Debian's picamera2


def test_dockerfile_template_serves_every_device_type_through_edge_variables() -> None:
    text = (ROOT / "Dockerfile.template").read_text()
    assert re.search(r"^FROM balenalib/%%BALENA_MACHINE_NAME%%-", text, re.M)
    overrides = re.findall(r"\b(EDGE_[A-Z_]+)=", text)
    assert overrides and all("__" in name for name in overrides)
    assert all(name.split("__")[0] in _CONFIG_SECTIONS for name in overrides), overrides
    entrypoint = FIRMWARE / "balena" / "entrypoint.sh"
    assert "COPY firmware_cfg/balena/entrypoint.sh" in text
    assert subprocess.run(["sh", "-n", str(entrypoint)], check=False).returncode == 0


_CONFIG_SECTIONS = {"EDGE_STORAGE", "EDGE_MQTT", "EDGE_CLIP_SERVER", "EDGE_KEYS", "EDGE_CAMERAS"}


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart binary moved into tmp_path.

    `systemd-analyze verify` fails when an Exec*= binary does not exist, and the agent is installed at
    /opt/edge-agent/venv only on a device. Only that path is rewritten (to an executable stub here);
    every other line is verified as shipped."""
    text = UNIT.read_text()
    assert AGENT_BINARY in text
    stub = tmp_path / "bin" / "edge-agent"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text.replace(AGENT_BINARY, str(stub)))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(verifiable_unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(verifiable_unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    # Unknown or misspelt directives are only warnings (exit 0): any message about our unit fails.
    messages = [line for line in done.stderr.splitlines() if "edge-agent" in line]
    assert done.returncode == 0 and not messages, done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_a_broken_unit_is_caught(verifiable_unit: Path, tmp_path: Path) -> None:
    """The verify test can fail: a misspelt directive and a missing binary are both reported."""
    broken = tmp_path / "broken.service"
    text = verifiable_unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    broken.write_text(text.replace(str(tmp_path / "bin" / "edge-agent"), "/nonexistent/edge-agent"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, check=False
    )
    assert "ProtectSystm" in done.stderr
    assert done.returncode != 0


def test_unit_is_notify_watchdog_restarting_unprivileged_and_sandboxed() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    expected = {
        "Type": "notify",
        "Restart": "always",
        "User": "edge-agent",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DevicePolicy": "closed",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert settings["WatchdogSec"] and settings["WatchdogSec"][0] not in ("0", "infinity")
    assert "char-video4linux rw" in settings["DeviceAllow"]
    assert "AF_NETLINK" in settings["RestrictAddressFamilies"][0]  # the udev monitor


def test_unit_leaves_descriptors_for_recording_beside_the_clip_servers_connections() -> None:
    from edge_agent.api.connections import FD_RESERVE, ServerLimits, connection_cap

    (limit,) = [
        line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith("LimitNOFILE=")
    ]
    # The whole connection cap fits, with the reserve for recording on top (and some to spare).
    wanted = ServerLimits().max_connections
    assert connection_cap(wanted, int(limit)) == wanted
    assert int(limit) >= 2 * (wanted + FD_RESERVE)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_low(verifiable_unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(verifiable_unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for .*?: (\d+\.\d+)", done.stdout + done.stderr)
    if found is None:
        pytest.skip("this systemd-analyze has no offline security report")
    assert float(found.group(1)) <= 3.0, done.stdout[-3000:]


_UDEV_TOKEN = re.compile(r'^[A-Z_]+(\{[^}]+\})?(==|!=|\+=|-=|:=|=)"[^"]*"$')


@pytest.mark.parametrize("path", sorted(FIRMWARE.glob("udev/*.rules")), ids=lambda p: p.name)
def test_udev_rules_are_well_formed(path: Path) -> None:
    rules = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert rules
    for line in rules:
        for token in line.split(", "):
            assert _UDEV_TOKEN.match(token.strip()), f"{path.name}: bad token {token!r} in {line!r}"
    text = "\n".join(rules)
    assert 'ENV{ID_V4L_CAPABILITIES}!="*:capture:*"' in text  # capture nodes only
    assert "SYMLINK+=" in text and "edge-camera-" in text


def test_site_example_is_valid_and_commented() -> None:
    path = FIRMWARE / "site.example.yaml"
    config = load_config(path, environ={})
    assert config.cameras and all(c.masks for c in config.cameras if c.require_masks)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    commented = [line for line in lines if "#" in line]
    assert len(commented) / len(lines) > 0.6


def test_pi_boot_config_enables_the_camera() -> None:
    lines = {
        line.strip()
        for line in (FIRMWARE / "boot" / "config.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert "camera_auto_detect=1" in lines
    assert "dtoverlay=vc4-kms-v3d" in lines
    assert "dtparam=watchdog=on" in lines
