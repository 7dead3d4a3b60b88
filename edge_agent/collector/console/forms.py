"""Form fields of the console, validated before anything reaches a device or the store.

Each check returns the clean value or records a message naming its field; a form is refused with all
its messages at once, so the user fixes everything in one go. Times are typed in UTC (the pages say
so): an HTML `datetime-local` value has no zone, and the CSU's reference clock is UTC like every time
on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge_agent.formats.references import reference_problem
from edge_agent.formats.times import TimeFormatError, parse_time

_LOCAL_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
COMMENT_MAX = 500
# A clock a few seconds ahead of the CSU's is not a request for the future.
FUTURE_SLACK_S = 5.0


@dataclass
class Form:
    """Raw values in, clean values out, one message per bad field."""

    raw: Mapping[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no field was refused."""
        return not self.errors

    def text(self, name: str, required: bool = True, max_length: int = 200) -> str:
        """A stripped text value."""
        value = str(self.raw.get(name, "")).strip()
        if required and not value:
            self.errors[name] = f"{name}: required"
        elif len(value) > max_length:
            self.errors[name] = f"{name}: at most {max_length} characters"
        return value

    def ident(self, name: str) -> str:
        """A site, device or camera id as the devices write them."""
        value = self.text(name)
        if value and name not in self.errors and not _ID_RE.match(value):
            self.errors[name] = f"{name}: {value!r} is not an id (lower-case letters, digits, - and _)"
        return value

    def reference(self, name: str) -> str:
        """A requisition (or officer) reference, by the rule the devices apply."""
        value = self.text(name, max_length=128)
        if value and name not in self.errors:
            problem = reference_problem(name, value)
            if problem:
                self.errors[name] = problem
        return value

    def time(self, name: str, required: bool = True) -> float | None:
        """A UTC time: `YYYY-MM-DDTHH:MM[:SS]` (as typed), ISO 8601 with a zone, or epoch seconds."""
        value = self.text(name, required=required, max_length=40)
        if not value or name in self.errors:
            return None
        try:
            return parse_time(name, value + "Z" if _LOCAL_RE.match(value) else value)
        except TimeFormatError as error:
            self.errors[name] = str(error)
            return None

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        """One of a fixed set."""
        value = self.text(name)
        if value and value not in choices:
            self.errors[name] = f"{name}: must be one of {', '.join(choices)}"
        return value

    def clip_range(self, max_seconds: float, now: float) -> tuple[float, float]:
        """`start` and `end`: in the past, in order, no longer than the device serves."""
        start, end = self.time("start"), self.time("end")
        if start is None or end is None:
            return 0.0, 0.0
        if end > now + FUTURE_SLACK_S:
            self.errors["end"] = "end: in the future (nothing recorded yet)"
        elif end <= start:
            self.errors["end"] = "end: must be after start"
        elif end - start > max_seconds:
            self.errors["end"] = (
                f"end: the range is {end - start:g} s, longer than the device's maximum of {max_seconds:g} s"
            )
        return start, end
