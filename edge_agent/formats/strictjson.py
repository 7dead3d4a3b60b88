"""JSON from bytes nobody vouched for yet: parsed with limits before any field is looked at.

Python's `json` accepts `NaN`, `Infinity` and `1e999` (an infinite float), keeps the last of two
duplicate keys (another parser may keep the first: the same bytes would mean two things), and only
stops deep nesting with a RecursionError. `load` refuses all of these with a ValueError that says
what was wrong, so a reader can turn it into its own error naming the file or message.

`canonical` is the other direction: the one byte form of a JSON object that is signed or hashed.
"""

from __future__ import annotations

import json
import math
from typing import Any

DEFAULT_MAX_DEPTH = 16


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed value (a scalar is 0); iterative, no recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


def canonical(data: dict[str, Any]) -> bytes:
    """The exact bytes of `data` as signed documents hold it: UTF-8, sorted keys, no spaces."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load(data: bytes | str, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse JSON with finite numbers only, unique keys and at most `max_depth` levels of nesting.

    ValueError (UnicodeDecodeError for bytes that are not UTF-8) names the problem.
    """
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if _depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value
