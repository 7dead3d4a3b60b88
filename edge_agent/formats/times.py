"""Time on the wire: one clock type, one way to write a UTC time, two ways to read one.

Every payload, audit line, manifest and request carries UTC ISO 8601 with milliseconds and a `Z`.
Readers differ in strictness on purpose: a time typed by a person (a clip range, a hold) must name its
zone, because a missing zone is a two-hour error in France; a time from another program's payload may
be naive and is taken as UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]
"""Seconds as a float: `time.time` for wall-clock stamps, `time.monotonic` for intervals; a stub in tests."""

_EPOCH_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")
EARLIEST = 946_684_800.0  # 2000-01-01T00:00:00Z: no camera of ours recorded before
LATEST = 7_258_118_400.0  # 2200-01-01T00:00:00Z: past the life of any device or procedure


class TimeFormatError(ValueError):
    """A time that cannot be read; the message names the field when one was given."""


def iso_ms(ts: float) -> str:
    """UTC epoch seconds -> `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """ISO 8601 (with `Z` or an offset) -> UTC epoch seconds; a naive time is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TimeFormatError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_time(name: str, raw: str) -> float:
    """UTC epoch seconds from ISO 8601 with a zone (`Z` or an offset) or from epoch seconds.

    `name` is the field or parameter the value came from, so that the error says which one is wrong.
    Times before 2000 or from 2200 on are refused: they are typing errors, and years 1 or 9999 with an
    offset overflow the datetime arithmetic.
    """
    text = raw.strip()
    if _EPOCH_RE.fullmatch(text):
        return _plausible(name, raw, float(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeFormatError(f"{name}: {raw!r} is not ISO 8601 (2024-05-01T12:00:00Z) or epoch") from None
    if moment.tzinfo is None:
        raise TimeFormatError(f"{name}: {raw!r} has no time zone (add Z for UTC)")
    if not 2000 <= moment.year < 2200:
        raise TimeFormatError(f"{name}: {raw!r} is outside 2000..2199")
    return _plausible(name, raw, moment.astimezone(UTC).timestamp())


def _plausible(name: str, raw: str, ts: float) -> float:
    if not EARLIEST <= ts < LATEST:
        raise TimeFormatError(f"{name}: {raw!r} is outside 2000..2199")
    return ts
