"""The engine's log stream (`GET /containers/ID/logs?timestamps=1`) as lines.

Docker and Podman send a container without a TTY as a multiplexed stream: frames of an
8-byte header (stream type: 1 stdout, 2 stderr; then the payload's length, big-endian) and a
payload, one log message each, "STAMP text\\n". A container with a TTY has one raw stream of
"STAMP text\\n" lines. A message longer than the engine's own limit (Docker: 16 KiB) arrives
as several frames, each stamped: each becomes a line of its own here.

Fed whatever the connection delivered, in any pieces; memory stays bounded whatever the
engine sends: a line (or frame) past `max_line` bytes is cut there and the rest is skipped.
"""

from __future__ import annotations

import struct

from lbctl.model.log_lines import LogLine, parse_timestamp

_HEADER = struct.Struct(">BxxxL")
_STREAMS = {0: "stdout", 1: "stdout", 2: "stderr"}


class LogDecoder:
    def __init__(self, tty: bool, max_line: int = 16 * 1024) -> None:
        self.tty = tty
        self.max_line = max_line
        self._buf = bytearray()  # a header or the payload so far (multiplexed); a line (raw)
        self._stream = "stdout"
        self._want = 0  # payload bytes still to come in the current frame
        self._skip = 0  # bytes of a too long frame or line to drop
        self._in_frame = False
        self._last = 0  # the last stamp: a line without one (never seen) gets it
        self.garbage: bytes | None = None  # what came instead of a frame; the rest is dropped

    def feed(self, data: bytes) -> list[LogLine]:
        return self._raw(data) if self.tty else self._frames(data)

    def end(self) -> list[LogLine]:
        """What is left when the stream ends: a last line without its newline."""
        rest, self._buf = bytes(self._buf), bytearray()
        if self.garbage is not None:
            return []
        if self.tty and rest:
            return [self._line(rest, "stdout")]
        if self._in_frame and rest:  # a frame cut short by the engine
            return [self._line(rest, self._stream)]
        return []

    def _frames(self, data: bytes) -> list[LogLine]:
        out: list[LogLine] = []
        if self.garbage is not None:  # kept (bounded) to say what the engine sent instead
            self.garbage += data[:max(0, self.max_line - len(self.garbage))]
            return out
        view = memoryview(data)
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                if not self._skip:
                    self._finish_frame(out)
                continue
            if not self._in_frame:
                need = _HEADER.size - len(self._buf)
                self._buf += view[:need]
                view = view[need:]
                if len(self._buf) < _HEADER.size:
                    break
                kind, length = _HEADER.unpack(self._buf)
                if kind not in _STREAMS or self._buf[1:4] != b"\0\0\0":
                    # Not a frame: the engine wrote something else into the stream (Podman
                    # answers 200, then an error as JSON, for a container removed meanwhile).
                    self.garbage = bytes(self._buf) + bytes(view[:self.max_line])
                    self._buf.clear()
                    return out
                self._buf.clear()
                self._stream = _STREAMS.get(kind, "stdout")
                self._want = length
                self._in_frame = True
                if length == 0:
                    self._in_frame = False
                continue
            take = min(self._want, len(view))
            room = self.max_line - len(self._buf)
            self._buf += view[:min(take, room)]
            if take > room:  # beyond max_line: dropped
                self._skip = self._want - room
                self._want = 0
                view = view[room:]
                continue
            self._want -= take
            view = view[take:]
            if not self._want:
                self._finish_frame(out)
        return out

    def _finish_frame(self, out: list[LogLine]) -> None:
        payload, self._buf = bytes(self._buf), bytearray()
        self._in_frame = False
        # One message a frame; a frame holding several lines (an engine that batches) gives
        # each its own, with its own stamp where it has one.
        for piece in payload.split(b"\n"):
            if piece:
                out.append(self._line(piece, self._stream))

    def _raw(self, data: bytes) -> list[LogLine]:
        out: list[LogLine] = []
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl
            chunk = data[start:end]
            if self._skip:
                chunk = b""
            room = self.max_line - len(self._buf)
            self._buf += chunk[:room]
            if len(chunk) > room:
                self._skip = 1  # drop until the newline
            if nl < 0:
                break
            line, self._buf, self._skip = bytes(self._buf), bytearray(), 0
            if line:
                out.append(self._line(line, "stdout"))
            start = nl + 1
        return out

    def _line(self, raw: bytes, stream: str) -> LogLine:
        stamp, sep, text = raw.partition(b" ")
        at = parse_timestamp(stamp.decode("ascii", "replace")) if sep else None
        if at is None:  # not stamped: the whole of it is text
            at, text = self._last, raw
        self._last = at
        return LogLine(at, stream, text.decode("utf-8", "replace").removesuffix("\r"))


__all__ = ["LogDecoder"]
