"""The ebpf slot bookkeeping and its state file, without a kernel.

A damaged <state_dir>/ebpf/<app>.json must never crash a sync: every shape the file can take
that lbctl never writes is set aside and the app starts with no slots.  The kernel side of
that (the app steers again after the next sync) is in test_ebpf.py.
"""

from __future__ import annotations

import errno
import json
import logging
import pathlib
from typing import Any

import pytest

from lbctl.dataplane import bpfsys
from lbctl.dataplane.ebpf import MAX_SLOTS, EbpfDataplane, EbpfError, Member, slots
from lbctl.dataplane.ebpf.slots import DamagedState, Held, SlotBook

GOOD: dict[str, Any] = {
    "slots": {"web-1": 0, "web-2": 5},
    "retired": {"web-0": 3},
    "held": {"0": [101, 7001, 2**63 + 1, 101, 3], "5": [102, 7002, 9, 102, 4]},
}


def test_parse_reads_what_to_json_writes() -> None:
    book = slots.parse(GOOD)
    assert book.slots == {"web-1": 0, "web-2": 5} and book.retired == {"web-0": 3}
    assert book.held == {0: Held(101, 7001, 2**63 + 1, 101, 3), 5: Held(102, 7002, 9, 102, 4)}
    assert slots.parse(json.loads(json.dumps(book.to_json()))) == book


@pytest.mark.parametrize("data", [{}, {"slots": {}}, {"held": {}, "future": [1, 2]}])
def test_parse_missing_or_unknown_keys_are_fine(data: object) -> None:
    book = slots.parse(data)
    assert (book.slots, book.retired) == ({}, {}) and book.held == {}


@pytest.mark.parametrize(
    "data",
    [
        [],
        None,
        "slots",
        1.5,
        {"slots": 5},
        {"slots": []},
        {"retired": None},
        {"held": []},
        {"held": {"x": "y"}},
        {"slots": {"a": "1"}},
        {"slots": {"a": True}},  # JSON true is not slot 1
        {"slots": {"a": 1.0}},
        {"slots": {"a": -1}},
        {"slots": {"a": MAX_SLOTS}},
        {"slots": {"a": 1, "b": 1}},  # two names on one slot
        {"retired": {"a": 10**30}},
        {"held": {"1": [1, 2, 3, 4]}},
        {"held": {"1": [1, 2, 3, 4, "5"]}},
        {"held": {"1": [1, 2, 3, 4, -5]}},
        {"held": {"1": [1, 2, 3, 4, 2**64]}},
        {"held": {"1": {"pid": 1}}},
        {"held": {"999": [1, 2, 3, 4, 5]}},
        {"held": {"-1": [1, 2, 3, 4, 5]}},
        {"held": {" 1": [1, 2, 3, 4, 5]}},
        {"held": {"\u0663": [1, 2, 3, 4, 5]}},  # a digit to int(), not to us
    ],
)
def test_parse_rejects_every_other_shape(data: object) -> None:
    with pytest.raises(DamagedState) as e:
        slots.parse(data)
    assert "\n" not in str(e.value)


def test_missing_file_is_an_empty_book_not_damage(tmp_path: pathlib.Path) -> None:
    path = slots.state_file(tmp_path, "web")
    assert slots.load(path) == (SlotBook(), False)
    assert not path.exists() and not slots.set_aside_path(path).exists()


def test_save_then_load(tmp_path: pathlib.Path) -> None:
    path = slots.state_file(tmp_path, "web")
    slots.save(path, slots.parse(GOOD))
    assert slots.load(path) == (slots.parse(GOOD), False)


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b'{"slots": 5}',
        b'{"held": {"x": "y"}}',
        b'{"slots": {"web-1": 0}',  # torn JSON
        b"",
        b"\xff\xfe\x00garbage",  # not text
        b"[" * 100_000 + b"]" * 100_000,  # deeper than json.loads recurses
    ],
)
def test_damaged_file_is_set_aside_with_one_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = slots.state_file(tmp_path, "web")
    other = slots.state_file(tmp_path, "api")
    slots.save(other, slots.parse(GOOD))
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="lbctl.dataplane.ebpf"):
        assert slots.load(path) == (SlotBook(), True)
    [record] = caplog.records
    msg = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in msg
    assert str(path) in msg and "damaged" in msg and "restart from 0" in msg
    assert not path.exists()
    assert slots.set_aside_path(path).read_bytes() == content  # kept for a post-mortem
    assert slots.set_aside_path(path).name == "web.json.damaged"
    # set aside once: the next load is a plain empty book, without a second warning
    caplog.clear()
    assert slots.load(path) == (SlotBook(), False)
    assert not caplog.records
    # another app's state is not touched
    assert slots.load(other) == (slots.parse(GOOD), False)


def test_unreadable_file_is_set_aside_too(tmp_path: pathlib.Path) -> None:
    path = slots.state_file(tmp_path, "web")
    path.mkdir(parents=True)  # reading it fails with EISDIR
    assert slots.load(path) == (SlotBook(), True)
    assert slots.set_aside_path(path).is_dir() and not path.exists()


def test_alloc_keeps_names_on_their_slots() -> None:
    zeroed: list[int] = []
    book = SlotBook()
    assert [book.alloc(n, zeroed.append) for n in ("a", "b", "c")] == [0, 1, 2]
    assert zeroed == [0, 1, 2]
    assert book.retire("b") == 1 and book.retired == {"b": 1}
    assert book.alloc("d", zeroed.append) == 3  # not b's slot: b may come back
    assert book.alloc("b", zeroed.append) == 1  # b came back: its slot, its counter
    assert zeroed == [0, 1, 2, 3]


def test_alloc_reuses_a_retired_slot_only_when_none_is_left() -> None:
    book = SlotBook(slots={f"r{i}": i for i in range(MAX_SLOTS - 1)},
                    retired={"gone": MAX_SLOTS - 1})  # fmt: skip
    assert book.alloc("new", lambda s: None) == MAX_SLOTS - 1
    assert book.retired == {}  # the claim of "gone" ends with its slot
    with pytest.raises(EbpfError, match="no free eBPF slot"):
        book.alloc("one-more", lambda s: None)


async def test_os_error_in_a_sync_is_an_ebpf_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler treats EbpfError as one app's data-plane failure and goes on with the
    others; a bare OSError would end the whole pass."""
    dp = EbpfDataplane(tmp_path / "state", tmp_path / "pins")

    async def no_program(app: str, st: object) -> None:
        return None

    def failing(*args: object) -> None:
        raise bpfsys.BpfSysError(errno.E2BIG, "map update: Argument list too long")

    monkeypatch.setattr(dp, "_ensure_program", no_program)
    monkeypatch.setattr(dp, "_sync_blocking", failing)
    with pytest.raises(EbpfError) as e:
        await dp.sync("web", 8080, 1, [Member("web-1", 1)])
    assert "\n" not in e.value.summary
    assert "map update: Argument list too long" in e.value.summary
    assert isinstance(e.value.__cause__, OSError)
