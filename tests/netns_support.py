"""A network namespace of the test's own: a host with a real, non-loopback address and nothing else.

Tests that need an address other than loopback (what a device advertises to the CSU) run their
processes inside it with `ip netns exec`, so that no traffic reaches this machine's own interfaces.
Needs root and iproute2 (`ip`); `namespace()` skips the test otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@contextmanager
def namespace(address: str, prefix_len: int = 24) -> Iterator[list[str]]:
    """A fresh namespace with loopback up and `address` on it; yields the `ip netns exec` prefix."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    name = f"edge-test-{uuid.uuid4().hex[:8]}"
    created = _ip("netns", "add", name)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {created.stderr.strip()}")
    try:
        for step in (
            ("-n", name, "link", "set", "lo", "up"),
            # On the namespace's own loopback device: no kernel module needed (dummy and veth may be
            # missing), and the address is still outside 127.0.0.0/8, as a device's LAN address is.
            ("-n", name, "addr", "add", f"{address}/{prefix_len}", "dev", "lo"),
        ):
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield ["ip", "netns", "exec", name]
    finally:
        _ip("netns", "delete", name)
