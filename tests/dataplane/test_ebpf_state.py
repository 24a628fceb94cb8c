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
from lbctl.dataplane.ebpf import MAX_SLOTS, EbpfDataplane, pins, slots
from lbctl.dataplane.ebpf.slots import DamagedState, Held, SlotBook
from lbctl.model.dataplane import Member
from lbctl.model.errors import EbpfError
from lbctl.settings import EbpfSettings

W1, W2, W2V6, W0 = "web-1 udp4 0.0.0.0", "web-2 udp4 0.0.0.0", "web-2 udp6 ::", "web-0 udp6 ::"
GOOD: dict[str, Any] = {
    "slots": {W1: 0, W2: 5, W2V6: 6},
    "retired": {W0: 3},
    "held": {"0": [101, 7001, 2**63 + 1, 101, 3], "5": [102, 7002, 9, 102, 4]},
    "groups": {"udp4 0.0.0.0": 1, "udp6 ::": 0},
}


def test_parse_reads_what_to_json_writes() -> None:
    book = slots.parse(GOOD)
    assert book.slots == {W1: 0, W2: 5, W2V6: 6} and book.retired == {W0: 3}
    assert book.held == {0: Held(101, 7001, 2**63 + 1, 101, 3), 5: Held(102, 7002, 9, 102, 4)}
    assert book.groups == {"udp4 0.0.0.0": 1, "udp6 ::": 0}
    assert book.keys_of("web-2") == [W2, W2V6]
    assert slots.parse(json.loads(json.dumps(book.to_json()))) == book


def test_a_file_from_before_listener_groups_keeps_each_replicas_slot() -> None:
    """Such a file keys slots by replica name (one TCP listener each).  The names become
    claims that each replica's first listener takes up, so its slot, and the counter the
    upgrade carries into the new program's map under that slot, stay its own."""
    book = slots.parse({"slots": {"web-1": 0, "web-2": 5}, "retired": {"web-0": 3},
                        "held": {"0": [101, 7001, 9, 101, 3]}})  # fmt: skip
    assert book.slots == {} and book.retired == {"web-1": 0, "web-2": 5, "web-0": 3}
    zeroed: list[int] = []
    assert book.alloc("web-2 tcp4 0.0.0.0", zeroed.append) == 5
    assert book.alloc("web-2 tcp6 ::", zeroed.append) == 1  # a second listener: a new slot
    assert book.alloc("web-1 tcp6 ::", zeroed.append) == 0
    assert zeroed == [1] and book.retired == {"web-0": 3}


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
        {"held": {str(MAX_SLOTS): [1, 2, 3, 4, 5]}},  # one past the last slot
        {"held": {"-1": [1, 2, 3, 4, 5]}},
        {"held": {" 1": [1, 2, 3, 4, 5]}},
        {"held": {"\u0663": [1, 2, 3, 4, 5]}},  # a digit to int(), not to us
        {"slots": {"web-1 sctp4 0.0.0.0": 1}},
        {"slots": {"web-1 udp4 ::": 1}},  # an IPv6 address in an IPv4 group
        {"retired": {"web-1 udp6 nowhere": 1}},
        {"groups": []},
        {"groups": {"tcp4 0.0.0.0": 8}},
        {"groups": {"tcp4 0.0.0.0": "1"}},
        {"groups": {"tcp4": 1}},
        {"groups": {"tcp4 0.0.0.0": 1, "tcp6 ::": 1}},  # two groups on one table
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
    a, b, c, d = (f"{n} tcp4 0.0.0.0" for n in ("a", "b", "c", "d"))
    assert [book.alloc(n, zeroed.append) for n in (a, b, c)] == [0, 1, 2]
    assert zeroed == [0, 1, 2]
    assert book.retire(b) == 1 and book.retired == {b: 1}
    assert book.alloc(d, zeroed.append) == 3  # not b's slot: b may come back
    assert book.alloc(b, zeroed.append) == 1  # b came back: its slot, its counter
    assert zeroed == [0, 1, 2, 3]


def test_groups_get_table_indexes_until_none_is_left() -> None:
    book = SlotBook(groups={"tcp4 0.0.0.0": 0, "tcp6 ::": 2})
    assert book.alloc_group("tcp6 ::") == 2
    assert book.alloc_group("udp4 0.0.0.0") == 1
    for i in range(5):
        book.alloc_group(f"udp4 10.0.0.{i}")
    with pytest.raises(EbpfError, match="too many listener groups"):
        book.alloc_group("udp6 ::")


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


def test_the_data_plane_takes_its_section_of_the_settings(tmp_path: pathlib.Path) -> None:
    dp = EbpfDataplane(tmp_path / "state", settings=EbpfSettings(pin_root=tmp_path / "pins"))
    assert dp.pin_root == tmp_path / "pins"
    assert dp.settings.startup_rescan == EbpfSettings().startup_rescan
    # an explicit pin root (the daemon's positional argument) wins
    assert EbpfDataplane(tmp_path, tmp_path / "other").pin_root == tmp_path / "other"
    assert EbpfDataplane(tmp_path).pin_root == EbpfSettings().pin_root


async def test_the_loader_is_bounded_by_the_settings_timeout() -> None:
    """Compiling takes LLVM ~0.6 s here: a loader given far less is stopped, one line."""
    with pytest.raises(EbpfError, match=r"^eBPF loader timed out after 0.001s$"):
        await pins.run_loader(["--check"], 0.001)
