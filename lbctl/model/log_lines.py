"""An app's output as `lbctl logs` passes it on: lines stamped by the engine, and the inputs
that need parsing (`--since` in docker's syntax, `--tail`).

Pure: the CLI resolves `--since` against its own clock and time zone before it asks (a local
time means the caller's zone, not the daemon's), and the API parses what a script sends with
the same function.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from fractions import Fraction

from lbctl.model.errors import InvalidInput

NS = 1_000_000_000


@dataclass(frozen=True)
class LogLine:
    """One line a container wrote, without its newline."""

    time: int  # ns since the epoch: when the engine read it (Podman's API: whole seconds)
    stream: str  # "stdout" or "stderr"
    text: str


# The engine's stamp (Docker: 9 fraction digits and Z; Podman 4.3: whole seconds).
_STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
                    r"(Z|z|[+-]\d\d:\d\d)\Z", re.ASCII)
# What docker's --since takes as a time: a date, then optionally an hour, minutes, seconds
# and a fraction, then optionally a zone (none: local time).
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:T(\d\d)(?::(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?)?)?"
                   r"(Z|z|[+-]\d\d:\d\d)?\Z", re.ASCII)
_UNIX = re.compile(r"(\d+)(?:\.(\d{1,9}))?\Z", re.ASCII)
# Go's time.ParseDuration, which docker's --since uses: "1h30m", "1.5h", "300ms".
_UNIT_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
            "s": NS, "m": 60 * NS, "h": 3600 * NS}
_PART = r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_DURATION = re.compile(rf"([+-]?)((?:{_PART})+)\Z", re.ASCII)


def parse_timestamp(text: str) -> int | None:
    """An engine's RFC 3339 stamp as ns since the epoch; None when it is not one."""
    m = _STAMP.match(text)
    if m is None:
        return None
    try:
        return _ns(m.groups(), None)
    except ValueError:
        return None


def format_timestamp(ns: int) -> str:
    """RFC 3339 in UTC with 9 fraction digits, as `docker logs -t` prints."""
    sec, frac = divmod(ns, NS)
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def since_param(ns: int) -> str:
    """A time as the engine's `since` takes it: Unix seconds with 9 fraction digits."""
    sec, frac = divmod(ns, NS)
    return f"{sec}.{frac:09d}"


def parse_since(text: str, now: int, local: tzinfo | None = None) -> int:
    """docker's --since: a duration back from `now` (ns) such as 10m or 1h30m, an RFC 3339
    time, a date (with or without a time, a zone or a fraction; no zone: `local`, default
    this host's zone), or Unix seconds. Returns ns since the epoch."""
    value = text.strip()
    m = _DURATION.match(value)
    if m is not None:
        if m.group(1) == "-":
            raise InvalidInput(f"since {text!r} is in the future: give a duration back from "
                               "now, such as 10m")
        total = sum(Fraction(num) * _UNIT_NS[unit]
                    for num, unit in re.findall(_PART, m.group(2), re.ASCII))
        return now - int(total)
    m = _TIME.match(value)
    if m is not None:
        try:
            return _ns(m.groups(), local)
        except ValueError as e:
            raise InvalidInput(f"invalid since {text!r}: {e}") from None
    m = _UNIX.match(value)
    if m is not None:
        return int(m.group(1)) * NS + _fraction(m.group(2))
    raise InvalidInput(f"invalid since {text!r}: give a duration (10m, 1h30m) or a time "
                       "(2026-05-01T12:00:00Z, 2026-05-01, or Unix seconds)")


def parse_tail(text: str) -> int | None:
    """--tail: lines per container from the end of its log; "all" (None) for every one."""
    value = text.strip()
    if value == "all":
        return None
    if not re.fullmatch(r"[0-9]{1,9}", value):
        raise InvalidInput(f"tail must be a number of lines (0 or more) or all, not {text!r}")
    return int(value)


def _fraction(digits: str | None) -> int:
    return int((digits or "").ljust(9, "0")) if digits else 0


def _ns(groups: tuple[str | None, ...], local: tzinfo | None) -> int:
    year, month, day, hour, minute, second, frac, zone = groups
    assert year is not None and month is not None and day is not None
    naive = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                     int(second or 0))
    if zone is None:
        aware = naive.replace(tzinfo=local) if local is not None else naive.astimezone()
        offset = aware.utcoffset()
        shift = int(offset.total_seconds()) if offset is not None else 0
    elif zone in ("Z", "z"):
        shift = 0
    else:
        sign = -1 if zone[0] == "-" else 1
        hh, mm = int(zone[1:3]), int(zone[4:6])
        if hh > 23 or mm > 59:
            raise ValueError(f"zone {zone} out of range")
        shift = sign * (hh * 3600 + mm * 60)
    return (calendar.timegm(naive.timetuple()) - shift) * NS + _fraction(frac)


__all__ = ["NS", "LogLine", "format_timestamp", "parse_since", "parse_tail", "parse_timestamp",
           "since_param"]
