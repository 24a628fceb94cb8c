"""Logs: one event a line, fields as key=value; syslog priorities under journald."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbctl.logs import EventFormatter, JournalHandler, field_name, stderr_is_journal


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


# ---- journald's native protocol ---------------------------------------------------------------

def _parse_entry(data: bytes) -> dict[str, str]:
    """The receiving side of the native protocol (what journald does with a datagram)."""
    import struct

    fields: dict[str, str] = {}
    while data:
        head, _, rest = data.partition(b"\n")
        if b"=" in head:
            key, _, value = head.partition(b"=")
            fields[key.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            fields[head.decode()] = rest[8:8 + size].decode()
            assert rest[8 + size:9 + size] == b"\n"
            data = rest[9 + size:]
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, JournalHandler, list[str]]]:
    """A datagram socket standing in for journald's, a handler sending to it, and the lines
    the handler's fallback (stderr) got."""
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    fallen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fallen.append(self.format(record))

    fallback = Collect()
    fallback.setFormatter(EventFormatter(journald=True))
    handler = JournalHandler(fallback, path)
    try:
        yield server, handler, fallen
    finally:
        handler.close()
        server.close()


def test_journal_entry_carries_each_event_field(
    journal: tuple[socket.socket, JournalHandler, list[str]],
) -> None:
    server, handler, fallen = journal
    handler.handle(_record("replica started", logging.WARNING, app="web", replica="web-2",
                           **{"drain-timeout": 5}))
    fields = _parse_entry(server.recv(65536))
    assert fields["MESSAGE"] == ('warning msg="replica started" app=web drain-timeout=5 '
                                 "replica=web-2")
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "lbctl"
    assert (fields["APP"], fields["REPLICA"], fields["DRAIN_TIMEOUT"]) == ("web", "web-2", "5")
    assert not fallen


def test_journal_values_with_newlines_are_binary_safe(
    journal: tuple[socket.socket, JournalHandler, list[str]],
) -> None:
    server, handler, _ = journal
    handler.handle(_record("x", detail="line 1\nline 2", priority="clash"))
    fields = _parse_entry(server.recv(65536))
    assert fields["DETAIL"] == "line 1\nline 2"
    assert fields["LBCTL_PRIORITY"] == "clash"  # never overrides the entry's own PRIORITY
    assert fields["PRIORITY"] == "6"
    assert "\n" not in fields["MESSAGE"]


def test_entry_larger_than_a_datagram_goes_in_a_sealed_memfd(
    journal: tuple[socket.socket, JournalHandler, list[str]],
) -> None:
    server, handler, fallen = journal
    big = "x" * (4 << 20)  # beyond any datagram size the kernel allows here
    handler.handle(_record("big", app="web", blob=big))
    msg, fds, _, _ = socket.recv_fds(server, 16, 1)
    assert msg == b"" and len(fds) == 1
    with os.fdopen(fds[0], "rb") as f:
        f.seek(0)  # journald maps the memfd; its offset is where the sender's write ended
        fields = _parse_entry(f.read())
    assert fields["BLOB"] == big and fields["APP"] == "web"
    assert not fallen


def test_journal_gone_falls_back_to_stderr_line(tmp_path: Path) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    fallback = Collect()
    fallback.setFormatter(EventFormatter(journald=True))
    handler = JournalHandler(fallback, str(tmp_path / "no-journal.sock"))
    handler.handle(_record("drain timeout", logging.WARNING, app="web"))
    handler.close()
    assert lines == ['<4>warning msg="drain timeout" app=web']


def test_field_names_are_ones_journald_keeps() -> None:
    assert field_name("app") == "APP"
    assert field_name("default_mode") == "DEFAULT_MODE"
    assert field_name("_pid") == "PID"
    assert field_name("2x") == "X"
    assert field_name("priority") == "LBCTL_PRIORITY"
    assert len(field_name("a" * 100)) == 64


def test_stderr_is_journal_only_for_the_stream_named(monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not stderr_is_journal()  # inherited, but stderr was redirected elsewhere
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not stderr_is_journal()
