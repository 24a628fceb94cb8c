"""The merge of containers' log streams: stamp order when the streams end (strict), and when
following, a line waits at most the window for earlier-stamped ones of quiet streams."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from lbctl.controller.log_merge import Merger

W = 0.1


@given(st.lists(st.lists(st.integers(0, 50), max_size=15), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_strict_gives_stamp_order_whatever_the_arrival_order(
        streams: list[list[int]], rnd: random.Random) -> None:
    """Each stream in its own order; lines arrive interleaved at random, streams close at
    random times after their last line: the result is every line, in stamp order (ties in
    arrival order), each stream's own order kept."""
    m: Merger[int, tuple[int, int]] = Merger(W)
    todo = {k: sorted(times) for k, times in enumerate(streams)}
    for k in todo:
        m.open(k)
    out: list[tuple[int, tuple[int, int]]] = []
    arrival: list[tuple[int, int]] = []
    pos = dict.fromkeys(todo, 0)
    while any(pos[k] <= len(t) for k, t in todo.items()):
        k = rnd.choice([k for k, t in todo.items() if pos[k] <= len(t)])
        if pos[k] == len(todo[k]):
            m.close(k)
        else:
            item = (todo[k][pos[k]], pos[k])
            m.add(k, item[0], item, arrival=0.0)
            arrival.append((k, pos[k]))
        pos[k] += 1
        out += m.pop(now=1e9, strict=True)  # no window: strict ignores time
    assert m.done()
    assert sorted(len(t) for t in todo.values()) == sorted(
        sum(1 for key, _ in out if key == k) for k in todo)
    times = [item[0] for _, item in out]
    assert times == sorted(times)
    for k in todo:
        assert [item[1] for key, item in out if key == k] == list(range(len(todo[k])))


def test_strict_waits_for_every_open_stream() -> None:
    m: Merger[str, str] = Merger(W)
    m.open("a")
    m.open("b")
    m.add("a", 20, "a20", 0.0)
    assert m.pop(100.0, strict=True) == []  # b may still have something earlier
    m.add("b", 10, "b10", 0.0)
    assert m.pop(100.0, strict=True) == [("b", "b10")]
    m.close("b")
    assert m.pop(100.0, strict=True) == [("a", "a20")]
    assert not m.done()  # a is still open
    m.close("a")
    assert m.done()


def test_following_a_line_waits_the_window_for_a_quiet_stream() -> None:
    m: Merger[str, str] = Merger(W)
    m.open("a")
    m.open("quiet")
    m.add("a", 20, "a20", arrival=1.0)
    assert m.pop(1.05, strict=False) == []
    assert m.deadline() == 1.0 + W
    # An earlier-stamped line of the other stream, arriving within the window, goes first.
    m.add("quiet", 15, "q15", arrival=1.08)
    assert m.pop(1.08, strict=False) == [("quiet", "q15")]
    assert m.pop(1.09, strict=False) == []
    assert m.pop(1.1, strict=False) == [("a", "a20")]
    # A line stamped before one already out, arriving more than the window after it, goes
    # out after it (its own window later): the one case of disorder.
    m.add("a", 30, "a30", arrival=2.0)
    assert m.pop(2.2, strict=False) == [("a", "a30")]
    m.add("quiet", 25, "q25", arrival=2.3)
    assert m.pop(2.35, strict=False) == []
    assert m.pop(2.4, strict=False) == [("quiet", "q25")]


def test_ties_go_in_arrival_order() -> None:
    """Podman stamps whole seconds: within one, arrival decides."""
    m: Merger[str, str] = Merger(W)
    for k in "ab":
        m.open(k)
    m.add("b", 5, "b-first", 0.0)
    m.add("a", 5, "a-second", 0.01)
    m.add("b", 5, "b-third", 0.02)
    m.close("a")
    m.close("b")
    assert [i for _, i in m.pop(0.0, strict=True)] == ["b-first", "a-second", "b-third"]


def test_has_and_done() -> None:
    m: Merger[str, str] = Merger(W)
    m.open("a")
    assert m.has("a") and not m.done()
    m.add("a", 1, "x", 0.0)
    m.close("a")
    assert m.has("a") and m.waiting() == 1
    assert m.pop(0.0, strict=False) == [("a", "x")]
    assert not m.has("a") and m.done() and m.deadline() is None
