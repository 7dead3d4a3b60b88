"""Judicial references on the wire: a requisition number and the officer who asked.

Both travel in signed clip and hold requests and end up in audit lines and file manifests on both
sides, so they follow one rule, checked by the device before it serves and by the collector before it
asks: as courts and police write them ("PV 2024/118-B", "OPJ Martin"), letters, digits, space and
`. _ : / -`, at most 128 characters, starting with a letter or digit; nothing that could climb a path
or reach a shell.
"""

from __future__ import annotations

import re

REFERENCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/-]{0,127}$")
REFERENCE_RULE = "letters, digits, space and . _ : / - (max 128), not starting with / and without '..'"


def reference_problem(name: str, raw: str) -> str:
    """Why `raw` is not a valid reference for the field `name`, or "" when it is one."""
    if ".." in raw or raw.startswith(("/", "~")) or not REFERENCE_RE.match(raw):
        return f"{name}: {raw!r} must be {REFERENCE_RULE}"
    return ""
