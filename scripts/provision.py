#!/usr/bin/env python3
"""Provision an edge device: its identity, its config, the CSU keys and broker settings.

A technician runs this on a laptop, once per device, with the site's config template (cameras and their
privacy masks, prepared for the point), the CSU's public keys and the broker settings. Two outputs:

- `--target DIR`: the root of the device's file system (the card's rootfs partition mounted, or a staging
  directory copied onto it) receives
    etc/edge-agent/site.yaml                        config, mode 0600 (it holds the broker password;
                                                    the unit hands it over with LoadCredential=)
    etc/edge-agent/csu_x25519.pub                   CSU sealing key (segments are sealed to it)
    etc/edge-agent/collectors/collector-N.pub       keys whose signed clip requests are accepted
    var/lib/edge-agent/keys/device_ed25519.pem|.pub the new device identity (private key 0600; systemd
                                                    gives /var/lib/edge-agent to the agent's user)
    etc/udev/rules.d/99-edge-camera-site.rules      /dev/edge-camera-<id> for each USB camera
- `--balena`: the `EDGE_*` variables for the balena dashboard or CLI, as a JSON object (public keys as
  hex). The device
  generates its own identity on first start on its data volume: a private key is never typed into
  a cloud dashboard.

Nothing is written unless everything is valid: the config must pass validation, and a camera that
requires masks must have them (privacy fails closed; `edge-agent snapshot --outline` helps to place
them). The device's public key id is printed for the CSU's device registry, and the broker account line
(username `<site>/<device>`) for the CSU broker's password file.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from edge_agent.camera.privacy import MasksRequired, masker_for_camera
from edge_agent.commands.config_cmd import pem_ca_problem
from edge_agent.device.hotplug import configured_usb_ids, normalize_usb_id
from edge_agent.formats.config import AgentConfig, ConfigError, parse_config
from edge_agent.formats.keys import (
    KeyFileError,
    PublicKey,
    generate_device_key,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_public,
    public_key_id,
)

ETC = Path("/etc/edge-agent")
KEYS = Path("/var/lib/edge-agent/keys")
SITE_RULES = Path("etc/udev/rules.d/99-edge-camera-site.rules")
BALENA_BROKER_CA = "/data/edge-agent/keys/broker-ca.crt"


class ProvisionError(Exception):
    """Provisioning refused; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Plan:
    """A validated provisioning: the config document and the keys to install."""

    document: dict[str, Any]
    config: AgentConfig
    sealing_key: PublicKey
    collector_keys: list[PublicKey]
    mqtt_password: str
    password_generated: bool


def build_plan(args: argparse.Namespace) -> Plan:
    """Merge the template with the command-line settings and validate it all; ProvisionError if not."""
    problems: list[str] = []
    document = _read_template(args.template, problems)
    sealing = _load_key(args.csu_sealing_key, load_x25519_public, problems)
    collectors = [_load_key(p, load_ed25519_public, problems) for p in args.collector_key]
    password = args.broker_password or secrets.token_urlsafe(24)
    document["site_id"] = args.site
    document["device_id"] = args.device
    mqtt = document.setdefault("mqtt", {})
    if not isinstance(mqtt, dict):
        problems.append("template: `mqtt` must be a mapping")
        mqtt = {}
    mqtt.update(
        {"host": args.broker_host, "port": args.broker_port, "username": f"{args.site}/{args.device}"}
    )
    mqtt["password"] = password
    if args.broker_ca:
        mqtt["tls"] = {"ca_file": str(ETC / "broker-ca.crt")}
        if not args.broker_ca.is_file():
            problems.append(f"--broker-ca {args.broker_ca}: no such file")
        elif problem := pem_ca_problem(args.broker_ca):
            problems.append(f"--broker-ca {args.broker_ca}: {problem}")
    elif isinstance(mqtt.get("tls"), dict) and mqtt["tls"].get("ca_file"):
        # The card would name a CA file it does not hold: the agent could never reach the broker.
        problems.append(
            f"template: mqtt.tls.ca_file names {mqtt['tls']['ca_file']}; pass --broker-ca FILE so that"
            " the card holds it (or remove mqtt.tls from the template for a plain connection)"
        )
    keys = {
        "device_key": str(KEYS / "device_ed25519.pem"),
        "csu_sealing_public_key": str(ETC / "csu_x25519.pub"),
        "collector_public_keys": [
            str(ETC / "collectors" / f"collector-{i}.pub") for i in range(len(args.collector_key))
        ],
    }
    document["keys"] = keys
    try:
        config = parse_config(document)
    except ConfigError as error:
        raise ProvisionError(problems + [f"config: {line}" for line in error.errors]) from None
    problems.extend(_privacy_problems(config))
    if problems:
        raise ProvisionError(problems)
    assert sealing is not None
    return Plan(
        document=document,
        config=config,
        sealing_key=sealing,
        collector_keys=[k for k in collectors if k is not None],
        mqtt_password=password,
        password_generated=not args.broker_password,
    )


def _read_template(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        problems.append(f"--template {path}: cannot read ({error.strerror})")
        return {}
    except yaml.YAMLError as error:
        problems.append(f"--template {path}: not valid YAML ({error})")
        return {}
    if not isinstance(loaded, dict):
        problems.append(f"--template {path}: must be a YAML mapping of fields")
        return {}
    return copy.deepcopy(loaded)


def _load_key(path: Path, load: Any, problems: list[str]) -> PublicKey | None:
    try:
        key: PublicKey = load(path)
    except KeyFileError as error:
        problems.append(str(error))
        return None
    return key


def _privacy_problems(config: AgentConfig) -> list[str]:
    problems = []
    for index, camera in enumerate(config.cameras):
        try:
            masker_for_camera(camera)
        except MasksRequired as error:
            problems.append(f"cameras[{index}]: {error}")
    try:
        configured_usb_ids(config.cameras)
    except ValueError as error:
        problems.append(f"cameras: {error}")
    return problems


def _public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_hex(key: PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def udev_site_rules(config: AgentConfig) -> str:
    """One `/dev/edge-camera-<id>` link per camera with a `usb_id`, by serial or by port."""
    lines = [
        "# Written by scripts/provision.py: stable names for this site's USB cameras.",
        f"# site {config.site_id}, device {config.device_id}",
    ]
    capture = 'SUBSYSTEM=="video4linux", ENV{ID_V4L_CAPABILITIES}=="*:capture:*"'
    for camera in config.cameras:
        usb_id = normalize_usb_id(camera.source.usb_id)
        if not usb_id:
            continue
        vendor_product, at, port = usb_id.partition("@")
        if at:
            vendor, _, product = vendor_product.partition(":")
            match = f'KERNELS=="{port}", ATTRS{{idVendor}}=="{vendor}", ATTRS{{idProduct}}=="{product}"'
        else:
            match = f'ENV{{ID_SERIAL_SHORT}}=="{usb_id}"'
        lines.append(f'{capture}, {match}, SYMLINK+="edge-camera-{camera.id}"')
    return "\n".join(lines) + "\n"


def write_target(plan: Plan, target: Path, broker_ca: Path | None) -> Path:
    """Install config and keys under `target` (a device root); the device's public key path."""
    identity = generate_device_key(target / KEYS.relative_to("/"))
    load_ed25519_private(identity.private)  # re-read: the key on the card is the key we report
    etc = target / ETC.relative_to("/")
    _write(etc / "csu_x25519.pub", _public_pem(plan.sealing_key), 0o644)
    for index, key in enumerate(plan.collector_keys):
        _write(etc / "collectors" / f"collector-{index}.pub", _public_pem(key), 0o644)
    if broker_ca is not None:
        _write(etc / "broker-ca.crt", broker_ca.read_bytes(), 0o644)
    text = yaml.safe_dump(plan.document, sort_keys=False, allow_unicode=True)
    _write(etc / "site.yaml", text.encode("utf-8"), 0o600)
    _write(target / SITE_RULES, udev_site_rules(plan.config).encode("utf-8"), 0o644)
    return identity.public


def balena_variables(plan: Plan, broker_ca: Path | None) -> dict[str, str]:
    """The variables that configure this device on balena. File locations on the data volume are
    set by Dockerfile.template; its entrypoint writes the keys given here as hex into key files (their
    names do not start with EDGE_: those are config overrides)."""
    document = {k: v for k, v in plan.document.items() if k != "keys"}
    if broker_ca is not None:
        document["mqtt"] = {**document["mqtt"], "tls": {"ca_file": BALENA_BROKER_CA}}
    variables = {
        "EDGE_CONFIG_YAML": yaml.safe_dump(document, sort_keys=False, default_flow_style=True, width=1 << 20),
        "CSU_SEALING_KEY_HEX": _public_hex(plan.sealing_key),
        "CSU_COLLECTOR_KEYS_HEX": " ".join(_public_hex(k) for k in plan.collector_keys),
    }
    if broker_ca is not None:
        variables["CSU_BROKER_CA_PEM"] = broker_ca.read_text(encoding="ascii")
    return variables


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The technician's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, required=True, help="site config with cameras and masks")
    parser.add_argument("--site", required=True, help="site (implantation point) id")
    parser.add_argument("--device", required=True, help="device id")
    parser.add_argument("--csu-sealing-key", type=Path, required=True, help="CSU X25519 public key")
    parser.add_argument(
        "--collector-key", type=Path, action="append", default=[], help="collector Ed25519 public key"
    )
    parser.add_argument("--broker-host", required=True, help="CSU broker host name or address")
    parser.add_argument("--broker-port", type=int, default=8883, help="broker port (8883: TLS)")
    parser.add_argument("--broker-ca", type=Path, help="CA certificate of the broker (enables TLS)")
    parser.add_argument("--broker-password", default="", help="device password (default: generated)")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--target", type=Path, help="root of the device file system to write into")
    out.add_argument("--balena", action="store_true", help="print balena environment variables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Validate, then write or print; exit 1 with every problem listed when refused."""
    args = parse_args(argv)
    try:
        plan = build_plan(args)
    except ProvisionError as error:
        print(f"refused: {len(error.problems)} problem(s); nothing was written", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    username = f"{args.site}/{args.device}"
    if args.balena:
        # JSON: values span lines (a PEM), and `balena env add` or a script can read it as is.
        print(json.dumps(balena_variables(plan, args.broker_ca), indent=2))
        print(
            "# the device creates its identity on first start; its public key is in the log", file=sys.stderr
        )
    else:
        try:
            public = write_target(plan, args.target, args.broker_ca)
        except KeyFileError as error:
            print(f"refused: {error}", file=sys.stderr)
            return 1
        key_id = public_key_id(load_ed25519_public(public))
        print(f"wrote {args.target}: config, keys, udev rules")
        print(f"device {username}: public key {public} (id {key_id}) -> register it at the CSU")
    if plan.password_generated:
        print(
            f"broker account: mosquitto_passwd -b /etc/mosquitto/csu/passwd {shlex.quote(username)}"
            f" {shlex.quote(plan.mqtt_password)}",
            file=sys.stderr,
        )
    for camera in plan.config.cameras:
        if not camera.masks:
            print(f"warning: camera {camera.id} has no mask (require_masks is false)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
