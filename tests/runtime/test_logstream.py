"""The engine's log stream as lines: multiplexed frames and raw TTY output, in any pieces,
with bounded memory."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from lbctl.model.log_lines import NS, LogLine
from lbctl.runtime.logstream import LogDecoder

T0 = "2026-12-05T08:09:02.919978806Z"
T0_NS = 1_796_458_142 * NS + 919_978_806
T1 = "2026-12-05T08:09:03Z"  # Podman's whole seconds
T1_NS = 1_796_458_143 * NS


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


STREAM = (frame(2, f"{T0} httpd: web-1 listening\n".encode())
          + frame(1, f"{T1} web-1 GET / HTTP/1.1\n".encode())
          + frame(1, f"{T1} \n".encode())  # an empty line
          + frame(2, f"{T1} caf\u00e9 \u2713\r\n".encode()))
LINES = [LogLine(T0_NS, "stderr", "httpd: web-1 listening"),
         LogLine(T1_NS, "stdout", "web-1 GET / HTTP/1.1"),
         LogLine(T1_NS, "stdout", ""),
         LogLine(T1_NS, "stderr", "caf\u00e9 \u2713")]


def feed_in(decoder: LogDecoder, data: bytes, cuts: list[int]) -> list[LogLine]:
    out: list[LogLine] = []
    prev = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        out += decoder.feed(data[prev:cut])
        prev = cut
    return out + decoder.end()


def test_multiplexed_frames_keep_stream_stamp_and_text() -> None:
    assert feed_in(LogDecoder(tty=False), STREAM, []) == LINES


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_lines(cuts: list[int]) -> None:
    assert feed_in(LogDecoder(tty=False), STREAM, cuts) == LINES
    raw = (f"{T0} one\n{T1} two\r\n{T1} \n".encode())
    assert feed_in(LogDecoder(tty=True), raw, cuts) == [
        LogLine(T0_NS, "stdout", "one"), LogLine(T1_NS, "stdout", "two"),
        LogLine(T1_NS, "stdout", "")]


def test_a_long_frame_is_cut_and_the_next_one_read() -> None:
    big = frame(1, f"{T0} ".encode() + b"x" * 100_000 + b"\n")
    d = LogDecoder(tty=False, max_line=1024)
    out = feed_in(d, big + frame(2, f"{T1} after\n".encode()), [7, 500, 50_000, 99_000])
    assert [(ln.stream, len(ln.text)) for ln in out] == [("stdout", 1024 - len(T0) - 1),
                                                         ("stderr", 5)]
    assert out[0].time == T0_NS and out[1].text == "after"
    assert len(d._buf) == 0  # nothing held after a cut


def test_a_long_raw_line_is_cut_until_its_newline() -> None:
    d = LogDecoder(tty=True, max_line=64)
    out = feed_in(d, f"{T0} ".encode() + b"y" * 1000 + f"\n{T1} next\n".encode(), [10, 300])
    assert [ln.text for ln in out] == ["y" * (64 - len(T0) - 1), "next"]


def test_a_frame_with_several_lines_and_an_unstamped_one() -> None:
    d = LogDecoder(tty=False)
    out = d.feed(frame(1, f"{T0} a\n{T1} b\nno stamp here\n".encode()))
    assert out == [LogLine(T0_NS, "stdout", "a"), LogLine(T1_NS, "stdout", "b"),
                   LogLine(T1_NS, "stdout", "no stamp here")]


def test_a_stream_cut_mid_frame_or_mid_line_keeps_what_came() -> None:
    d = LogDecoder(tty=False)
    whole = frame(1, f"{T0} partial line\n".encode())
    assert d.feed(whole[:-5]) == []
    assert d.end() == [LogLine(T0_NS, "stdout", "partial ")]
    raw = LogDecoder(tty=True)
    assert raw.feed(f"{T0} no newline".encode()) == []
    assert raw.end() == [LogLine(T0_NS, "stdout", "no newline")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    out = LogDecoder(tty=False).feed(frame(1, f"{T0} ".encode() + b"\xff\xfeok\n"))
    assert out == [LogLine(T0_NS, "stdout", "\ufffd\ufffdok")]


def test_what_is_not_a_frame_is_kept_aside_and_ends_the_lines() -> None:
    """Podman answers 200 and then an error as JSON for a container removed meanwhile."""
    d = LogDecoder(tty=False)
    err = b'{"cause":"no such container","message":"no container with ID","response":500}\n'
    good = frame(2, f"{T0} before\n".encode())
    assert d.feed(good + err[:10]) == [LogLine(T0_NS, "stderr", "before")]
    assert d.feed(err[10:] + good) == []
    assert d.end() == []
    assert d.garbage is not None and d.garbage.startswith(b'{"cause":"no such')
    assert LogDecoder(tty=False).feed(frame(2, b"x")).__len__() == 1  # a real frame is fine
