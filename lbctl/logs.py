"""Logs: one event a line, with app and replica fields.

On a terminal a readable line. Under systemd (stderr is the journal stream JOURNAL_STREAM
names) each event goes to journald over its native protocol, as one entry whose fields are the
event's (`APP=web`, `REPLICA=web-2`, `PRIORITY=4`), so `journalctl -u lbctl APP=web` and
`journalctl -o json` see them, and MESSAGE is the same one line. Should the journal socket
refuse an entry, it goes to stderr with the syslog priority prefix `<N>` instead (what a line
on the journal stream was before), so nothing is lost.

The native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) is a datagram of
`KEY=value` lines, like sd_notify's; a C binding (python3-systemd) would tie lbctl to
Debian's build of it for one sendto.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "lbctl"


def event_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields an event was logged with (`extra={...}`), by name."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class EventFormatter(logging.Formatter):
    """`msg="..." key=value ...` (logfmt): a timestamp and level on a terminal; the `<N>`
    priority prefix journald reads when the line goes to the journal stream; neither when
    `bare` (the journal entry's MESSAGE: journald keeps the time and priority itself)."""

    def __init__(self, journald: bool, bare: bool = False) -> None:
        super().__init__()
        self.journald = journald
        self.bare = bare

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        parts = [f"{k}={_quote(v)}" for k, v in sorted(event_fields(record).items())]
        line = " ".join([f"msg={_quote(msg)}", *parts])
        if record.exc_info:
            line += " error=" + _quote(self.formatException(record.exc_info).replace("\n", " | "))
        if self.bare:
            return f"{record.levelname.lower()} {line}"
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{record.levelname.lower()} {line}"
        ts = self.formatTime(record, "%H:%M:%S")
        return f"{ts} {record.levelname.lower():<7} {line}"


def _quote(v: object) -> str:
    s = str(v)
    if s and not any(c in s for c in ' "=\t\n'):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def field_name(key: str) -> str:
    """A journal field name for an event field: upper case letters, digits and `_`, starting
    with a letter (journald drops any other name), at most 64 characters."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_0123456789")
    return ("LBCTL_" + name if not name or name in _OWN else name)[:64]


# Fields the entry sets itself: an event field of the same name is prefixed instead.
_OWN = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE", "CODE_LINE",
        "CODE_FUNC", "ERROR"}


def journal_entry(record: logging.LogRecord, message: str) -> bytes:
    """One journal entry in the native protocol: `KEY=value\\n`, or for a value with a
    newline `KEY\\n`, its length as 64-bit little endian, the value and `\\n`."""
    fields: list[tuple[str, object]] = [
        ("MESSAGE", message),
        ("PRIORITY", _PRIORITY.get(record.levelno, 6)),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("LOGGER", record.name),
        ("CODE_FILE", record.pathname),
        ("CODE_LINE", record.lineno),
        ("CODE_FUNC", record.funcName),
    ]
    fields += [(field_name(k), v) for k, v in sorted(event_fields(record).items())]
    out = bytearray()
    for key, value in fields:
        data = str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd gave us: JOURNAL_STREAM holds its
    `DEVICE:INODE`, and a child whose stderr went elsewhere inherits the variable but not the
    stream (systemd.exec(5))."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalHandler(logging.Handler):
    """Each record as one native journal entry; `fallback` gets the ones journald does not
    take (socket gone, journald restarting with its queue full)."""

    def __init__(self, fallback: logging.Handler, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.path = path
        self.fallback = fallback
        self.setFormatter(EventFormatter(journald=True, bare=True))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # A full journald queue must not stall the event loop: such an entry goes to stderr.
        self.sock.setblocking(False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = journal_entry(record, self.format(record))
            try:
                self.sock.sendto(entry, self.path)
            except OSError as e:
                if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_large(entry)
        except OSError:
            self.fallback.handle(record)
        except Exception:
            self.handleError(record)

    def _send_large(self, entry: bytes) -> None:
        """An entry larger than a datagram: in a sealed memfd, passed with an empty datagram."""
        fd = os.memfd_create("lbctl-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, entry)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            # socket.send_fds would drop the address (Python 3.11), hence sendmsg.
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [fd]))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        super().close()


def setup(level: str = "info") -> None:
    stream = logging.StreamHandler(sys.stderr)
    journal = stderr_is_journal()
    stream.setFormatter(EventFormatter(journald=journal))
    handler: logging.Handler = JournalHandler(stream) if journal else stream
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
