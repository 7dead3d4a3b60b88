"""Where the collector's shared files are, for every `csu-collector` command and the console alike.

- The CSU key directory: `--keys`, else `$CSU_KEYS_DIR`, else `./keys` (`generate_csu_keys` writes it).
- The devices' public keys from provisioning: `devices/{site}/{device}.pub` in the key directory.
- The collector's audit log: `--audit`, else `$CSU_AUDIT_LOG`, else `csu-audit.jsonl` in the key
  directory. One trail per CSU identity: the keys are what every command that acts on a device or on
  evidence already needs (the store may be PostgreSQL, with no folder to sit beside, and `fetch-clip`
  may run without one), so a command run from another working folder still appends to the same log.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

KEYS_ENV = "CSU_KEYS_DIR"
AUDIT_ENV = "CSU_AUDIT_LOG"
AUDIT_NAME = "csu-audit.jsonl"
DEVICE_KEYS_NAME = "devices"


def default_keys_dir() -> Path:
    """The CSU key directory when `--keys` is not given."""
    return Path(os.environ.get(KEYS_ENV) or "keys")


def device_keys_dir(keys: Path) -> Path:
    """Where the devices' public keys are, in the CSU key directory `keys`."""
    return keys / DEVICE_KEYS_NAME


def audit_log_path(keys: Path, given: Path | None = None) -> Path:
    """The collector's audit log: `given` (`--audit`), else `$CSU_AUDIT_LOG`, else in the key directory."""
    if given is not None:
        return given
    configured = os.environ.get(AUDIT_ENV)
    return Path(configured) if configured else keys / AUDIT_NAME


def add_keys(parser: argparse.ArgumentParser) -> None:
    """The `--keys` option, with the default above."""
    parser.add_argument(
        "--keys",
        type=Path,
        default=default_keys_dir(),
        help=f"CSU key directory (default: ${KEYS_ENV} or ./keys)",
    )


def add_keys_and_audit(parser: argparse.ArgumentParser) -> None:
    """The `--keys` and `--audit` options, with the defaults above."""
    add_keys(parser)
    parser.add_argument(
        "--audit",
        type=Path,
        help=f"the collector's audit log (default: ${AUDIT_ENV}, or {AUDIT_NAME} in --keys)",
    )
