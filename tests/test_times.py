"""Times on the wire: written one way, read strictly from people and leniently from programs."""

from __future__ import annotations

import re

import pytest

from edge_agent.formats.times import TimeFormatError, iso_ms, parse_iso, parse_time


def test_times_are_utc_iso_with_milliseconds() -> None:
    assert iso_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1714564800.9999) == "2024-05-01T12:00:00.999Z"
    assert parse_iso("2024-05-01T14:00:00.500+02:00") == 1714564800.5
    assert parse_iso("2024-05-01T12:00:00") == 1714564800.0
    with pytest.raises(TimeFormatError, match="not an ISO 8601 time"):
        parse_iso("yesterday")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T12:00:00Z", 1714564800.0),
        ("2024-05-01T14:00:00.250+02:00", 1714564800.25),
        ("1714564800", 1714564800.0),
        (" 1714564800.5 ", 1714564800.5),
    ],
)
def test_a_typed_time_with_a_zone_or_epoch_is_read(raw: str, expected: float) -> None:
    assert parse_time("start", raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2024-05-01T12:00:00", "start: '2024-05-01T12:00:00' has no time zone"),
        ("noon", "start: 'noon' is not ISO 8601"),
        ("", "start: '' is not ISO 8601"),
        ("0001-01-01T00:00:00+01:00", "start: '0001-01-01T00:00:00+01:00' is outside 2000..2199"),
        ("9999-12-31T23:59:59-01:00", "start: '9999-12-31T23:59:59-01:00' is outside 2000..2199"),
        ("99999999999", "start: '99999999999' is outside 2000..2199"),
        ("12", "start: '12' is outside 2000..2199"),
    ],
)
def test_a_typed_time_without_zone_or_unreadable_names_the_field(raw: str, message: str) -> None:
    with pytest.raises(TimeFormatError, match=re.escape(message)):
        parse_time("start", raw)
