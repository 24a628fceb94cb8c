"""Logs: one event a line, fields as key=value; syslog priorities under journald."""

from __future__ import annotations

import logging

from lbctl.logs import EventFormatter


def _record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("lbctl.controller", level, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_terminal_line_has_fields() -> None:
    line = EventFormatter(journald=False).format(
        _record("replica started", app="web", replica="web-2"))
    assert line.endswith('info    msg="replica started" app=web replica=web-2')


def test_journald_line_has_priority_and_no_timestamp() -> None:
    line = EventFormatter(journald=True).format(
        _record("drain timeout", logging.WARNING, app="web"))
    assert line == '<4>warning msg="drain timeout" app=web'


def test_values_with_spaces_and_newlines_stay_on_one_line() -> None:
    line = EventFormatter(journald=True).format(_record("a\nb", detail='x "y"'))
    assert "\n" not in line and 'detail="x \\"y\\""' in line
