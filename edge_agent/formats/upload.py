"""The push upload protocol (DESIGN.md section 4, "Push delivery"): a device PUTs a bundle to a collector.

The collector names, in its signed `upload_clip` command, an upload URL and a one-time token; the device
then sends the bundle in chunks:

- `PUT {upload_url}` with `Authorization: Bearer {token}` and `Content-Range: bytes {first}-{last}/{total}`:
  the body is bytes first..last (inclusive) of the bundle, and `first` must be the count the collector
  already holds (uploads only ever append);
- `PUT {upload_url}` with an empty body and `Content-Range: bytes */{total}` asks for that count (after a
  cut link, before resuming).

Both are answered with an acknowledgement, JSON `{"held": n, "size": total, "complete": bool}`: the bytes
the collector now holds on disk (status 200, or 409 when `first` was not that count). Refusals are JSON
`{"error": reason, "message": text}`: 400 bad range, 401 token, 404 no such upload, 410 expired or already
delivered, 413 larger than the collector allows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

UPLOAD_PATH_PREFIX = "/v1/uploads/"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22,128}$")
UPLOAD_ID_RE = re.compile(r"^[a-f0-9]{32}$")
_RANGE_RE = re.compile(r"^bytes (?:(\d{1,15})-(\d{1,15})|\*)/(\d{1,15})$")


@dataclass(frozen=True)
class ContentRange:
    """A parsed `Content-Range`: bytes [first, end) of `total`, or a query (`first` None) for the count."""

    first: int | None
    end: int | None
    total: int

    @property
    def is_query(self) -> bool:
        """`bytes */total`: no bytes, only the question of how many are held."""
        return self.first is None


def content_range(first: int, end: int, total: int) -> str:
    """The header for bytes [first, end) of `total` (`bytes */total` when the range is empty)."""
    return f"bytes {first}-{end - 1}/{total}" if end > first else f"bytes */{total}"


def parse_content_range(value: str) -> ContentRange:
    """A `Content-Range` header; ValueError naming what is wrong."""
    match = _RANGE_RE.match(value.strip())
    if match is None:
        raise ValueError(
            f"Content-Range {value[:80]!r}: expected 'bytes FIRST-LAST/TOTAL' or 'bytes */TOTAL'"
        )
    first, last, total = match.groups()
    if first is None:
        return ContentRange(None, None, int(total))
    start, end = int(first), int(last) + 1
    if start >= end or end > int(total):
        raise ValueError(f"Content-Range {value!r}: the range is empty or runs past the total")
    return ContentRange(start, end, int(total))


@dataclass(frozen=True)
class UploadAck:
    """The collector's acknowledgement: the bytes it holds, of how many, and whether that is all."""

    held: int
    size: int
    complete: bool

    def to_json(self) -> dict[str, int | bool]:
        """The JSON document of the reply."""
        return {"held": self.held, "size": self.size, "complete": self.complete}

    @classmethod
    def parse(cls, body: bytes) -> UploadAck:
        """Read a reply; ValueError naming what is wrong (a proxy's error page, a bad count)."""
        try:
            data = json.loads(body)
        except ValueError:
            raise ValueError(f"upload reply is not JSON: {body[:80]!r}") from None
        if not isinstance(data, dict):
            raise ValueError("upload reply: not a JSON object")
        held, size, complete = data.get("held"), data.get("size"), data.get("complete")
        if not (isinstance(held, int) and isinstance(size, int) and isinstance(complete, bool)):
            raise ValueError(f"upload reply: held, size and complete missing or mistyped: {data!r:.200}")
        if not 0 <= held <= size:
            raise ValueError(f"upload reply: held {held} outside 0..{size}")
        return cls(held, size, complete)
