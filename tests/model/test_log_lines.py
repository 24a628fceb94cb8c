"""`lbctl logs`'s inputs and the engine's stamps: --since in docker's syntax, --tail, RFC 3339."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from lbctl.model import InvalidInput
from lbctl.model.log_lines import (
    NS,
    format_timestamp,
    parse_since,
    parse_tail,
    parse_timestamp,
    since_param,
)

NOW = 1_796_458_144 * NS + 123_456_789  # 2026-12-05T08:09:04.123456789Z
PARIS = timezone(timedelta(hours=1))


def test_engine_stamps_docker_and_podman() -> None:
    assert parse_timestamp("2026-12-05T08:09:04.123456789Z") == NOW
    assert parse_timestamp("2026-12-05T08:09:04Z") == 1_796_458_144 * NS  # Podman 4.3's
    assert parse_timestamp("2026-12-05T09:09:04.5+01:00") == 1_796_458_144 * NS + NS // 2
    for bad in ("", "2026-12-05", "2026-13-05T08:09:04Z", "hello", "2026-12-05T08:09:04"):
        assert parse_timestamp(bad) is None, bad


def test_format_round_trips_with_nine_digits() -> None:
    assert format_timestamp(NOW) == "2026-12-05T08:09:04.123456789Z"
    assert format_timestamp(1_796_458_144 * NS) == "2026-12-05T08:09:04.000000000Z"
    assert parse_timestamp(format_timestamp(NOW)) == NOW
    assert since_param(NOW) == "1796458144.123456789"
    assert since_param(5) == "0.000000005"


@pytest.mark.parametrize(("text", "back"), [
    ("10m", 600 * NS), ("1h30m", 5400 * NS), ("1.5h", 5400 * NS), ("300ms", 300_000_000),
    (".5s", NS // 2), ("2h45m30.5s", (2 * 3600 + 45 * 60 + 30) * NS + NS // 2), ("5us", 5_000),
    ("5\u00b5s", 5_000), ("7ns", 7), ("+10s", 10 * NS), (" 10m ", 600 * NS),
])
def test_since_durations_count_back_from_now(text: str, back: int) -> None:
    assert parse_since(text, NOW) == NOW - back


@pytest.mark.parametrize(("text", "at"), [
    ("2026-12-05T08:09:04Z", 1_796_458_144 * NS),
    ("2026-12-05T08:09:04.123456789Z", NOW),
    ("2026-12-05T08:09:04.5z", 1_796_458_144 * NS + NS // 2),
    ("2026-12-05T09:09:04+01:00", 1_796_458_144 * NS),
    ("2026-12-05T03:09:04-05:00", 1_796_458_144 * NS),
    ("2026-12-05Z", 1_796_428_800 * NS),  # docker's date with a zone
    ("2026-12-05T08Z", 1_796_457_600 * NS),
    ("2026-12-05T08:09Z", 1_796_458_140 * NS),
    ("10", 10 * NS),  # a number without a unit: Unix seconds, as in docker
    ("1796458144", 1_796_458_144 * NS),  # Unix seconds, as docker passes them on
    ("1796458144.123456789", NOW),
    ("1796458144.5", 1_796_458_144 * NS + NS // 2),
    ("0", 0),
])
def test_since_times(text: str, at: int) -> None:
    assert parse_since(text, NOW) == at


def test_since_without_a_zone_is_the_callers_local_time() -> None:
    assert parse_since("2026-12-05T09:09:04", NOW, PARIS) == 1_796_458_144 * NS
    assert parse_since("2026-12-05", NOW, PARIS) == 1_796_428_800 * NS - 3600 * NS
    assert parse_since("2026-12-05T09:09:04.25", NOW, PARIS) == 1_796_458_144 * NS + NS // 4


@pytest.mark.parametrize("text", [
    "", "-", "10x", "m", "1h-5m", "2026-12-05T08:09:04.Z", "2026-12-5", "2026-02-30",
    "2026-12-05T25:00Z", "2026-12-05T08:09:04+25:00", "yesterday", "1e3", "10 m",
    "2026-12-05T08:09:04.1234567891Z", "\u0661\u0660m",
])
def test_bad_since_is_one_line(text: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_since(text, NOW)
    assert "\n" not in str(e.value) and "since" in str(e.value)


def test_a_negative_duration_is_refused() -> None:
    with pytest.raises(InvalidInput, match="future"):
        parse_since("-10m", NOW)


def test_tail() -> None:
    assert parse_tail("10") == 10
    assert parse_tail("0") == 0
    assert parse_tail("all") is None
    for bad in ("-1", "", "1.5", "ten", "1e3", "9999999999", "\u0661"):
        with pytest.raises(InvalidInput, match="tail"):
            parse_tail(bad)
