"""The eBPF sync's decisions (plan.plan) and the order they are applied in (apply.apply),
without a kernel: `Have` is built by hand, and apply() runs against a recorder at the bpf(2)
boundary.  The same syncs against the real kernel are in test_ebpf.py and
test_ebpf_listeners.py."""

from __future__ import annotations

import pathlib
import struct
from collections.abc import Iterator, Sequence

import pytest

from lbctl.dataplane import bpfsys, sockets
from lbctl.dataplane.ebpf import apply, plan, probe, table
from lbctl.dataplane.ebpf.pins import Maps
from lbctl.dataplane.ebpf.plan import Borrowed, Have, TableState, Want
from lbctl.dataplane.ebpf.slots import Held, SlotBook, slot_key
from lbctl.model.dataplane import Member
from lbctl.model.errors import EbpfError

PORT = 8080
T4, T6, U4 = "tcp4 0.0.0.0", "tcp6 ::", "udp4 0.0.0.0"
FAMILY = {T4: 2, T6: 10, U4: 2}


def member(name: str, weight: int = 1) -> Member:
    return Member(name, 100 + int(name.rsplit("-", 1)[1]), weight)


def borrowed(m: Member, group: str = T4, fd: int | None = None) -> Borrowed:
    proto, _, addr = group.partition(" ")
    listener = sockets.Listener(m.pid, 3, 9000 + m.pid, FAMILY[group], 0, proto[:3], addr)
    return Borrowed(m, listener, fd if fd is not None else 500 + m.pid, 7000 + m.pid)


def held(m: Member) -> Held:
    return Held(m.pid, 9000 + m.pid, 7000 + m.pid, m.pid, 3)


def empty_tables() -> dict[int, TableState]:
    return {i: TableState(0, ()) for i in range(table.MAX_GROUPS)}


def have(
    book: SlotBook | None = None, *, in_map: Sequence[str] = (),
    borrowed: Sequence[Borrowed] = (), tables: dict[int, TableState] | None = None,
    registered: dict[str, int | None] | None = None, **kw: object,
) -> Have:  # fmt: skip
    return Have(
        book=book or SlotBook(), in_map=frozenset(in_map), borrowed=tuple(borrowed),
        found=frozenset(b.member.name for b in borrowed), first_seen={},
        tables=tables if tables is not None else empty_tables(),
        registered=registered or {}, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def settled(ms: Sequence[Member], group: str = T4) -> tuple[SlotBook, dict[int, TableState]]:
    """The book and tables after a sync that put every member of `ms` in slot i, ready."""
    book = SlotBook(slots={slot_key(m.name, group): i for i, m in enumerate(ms)},
                    held={i: held(m) for i, m in enumerate(ms)}, groups={group: 0})  # fmt: skip
    tables = empty_tables()
    tables[0] = TableState(1, tuple(table.build_table([(i, 1) for i in range(len(ms))])))
    return book, tables


def test_first_sync_places_every_listener_then_registers_its_group() -> None:
    a, b = member("web-1"), member("web-2")
    p = plan.plan(have(borrowed=[borrowed(a), borrowed(b)]), Want(PORT, "tcp", (a, b)))
    assert [(i.key, i.slot) for i in p.insert] == [(f"web-1 {T4}", 0), (f"web-2 {T4}", 1)]
    assert p.zero == [0, 1]  # fresh slots start at 0
    assert p.tables == [plan.TableWrite(0, 1, (0, 1))]  # the inactive half, then the flip
    assert p.register == [(T4, 0)] and p.attach == [601, 602]
    assert p.retire == [] and p.unregister == [] and not p.carry
    assert p.book.held[0] == Held(a.pid, 9000 + a.pid, 7000 + a.pid, a.pid, 3)
    assert p.live[0] == TableState(1, (0, 1)) and p.registered == {T4: 0}
    assert p.first_seen == {"web-1": (a.pid, 0.0), "web-2": (b.pid, 0.0)}


def test_a_sync_with_nothing_changed_changes_nothing() -> None:
    ms = [member("web-1"), member("web-2")]
    book, tables = settled(ms)
    h = have(book, in_map=list(book.slots), tables=tables, registered={T4: 0})
    p = plan.plan(h, Want(PORT, "tcp", tuple(ms)))
    assert not p.changes
    assert p.book == book and p.live == tables and p.registered == {T4: 0}


def test_a_leaving_member_leaves_the_table_and_then_its_slot() -> None:
    ms = [member("web-1"), member("web-2"), member("web-3")]
    book, tables = settled(ms)
    h = have(book, in_map=list(book.slots), tables=tables, registered={T4: 0})
    p = plan.plan(h, Want(PORT, "tcp", (ms[0], ms[2])))
    assert p.tables == [plan.TableWrite(0, 0, (0, 2))]
    assert p.retire == [1]  # emptied by apply() after the table above
    assert p.book.retired == {f"web-2 {T4}": 1} and 1 not in p.book.held
    assert not p.insert and not p.unregister


def test_a_draining_member_keeps_its_socket_but_leaves_the_table() -> None:
    ms = [member("web-1"), member("web-2")]
    book, tables = settled(ms)
    h = have(book, in_map=list(book.slots), tables=tables, registered={T4: 0})
    p = plan.plan(h, Want(PORT, "tcp", (ms[0],), draining=(ms[1],)))
    assert p.tables == [plan.TableWrite(0, 0, (0,))] and p.retire == []
    # every member draining: an empty table (the kernel's own choice), the group stays
    p = plan.plan(h, Want(PORT, "tcp", (), draining=tuple(ms)))
    assert p.tables == [plan.TableWrite(0, 0, ())] and not p.unregister and not p.retire


def test_a_probing_member_is_in_the_socket_map_and_in_no_table() -> None:
    """A starting replica: its listener gets a slot (readiness probes are steered to it by
    the slot's source port) and the program is attached to its group, but no table names it;
    ready, it joins the table in the same slot; unready again, it leaves the table and keeps
    the slot, so that probes still reach it."""
    a, b = member("web-1"), member("web-2")
    p = plan.plan(have(borrowed=[borrowed(a), borrowed(b)]), Want(PORT, "tcp", (a,), probing=(b,)))
    assert [(i.key, i.slot) for i in p.insert] == [(f"web-1 {T4}", 0), (f"web-2 {T4}", 1)]
    assert p.tables == [plan.TableWrite(0, 1, (0,))] and p.attach == [601, 602]
    book, tables = p.book, p.live
    h = have(book, in_map=list(book.slots), tables=tables, registered={T4: 0})
    p = plan.plan(h, Want(PORT, "tcp", (a, b)))
    assert p.tables == [plan.TableWrite(0, 0, (0, 1))] and not p.insert and not p.retire
    h = have(p.book, in_map=list(p.book.slots), tables=p.live, registered={T4: 0})
    p = plan.plan(h, Want(PORT, "tcp", (a,), probing=(b,)))
    assert p.tables == [plan.TableWrite(0, 1, (0,))] and not p.retire and not p.insert
    assert p.book.slots[f"web-2 {T4}"] == 1


def test_ready_wins_over_draining_and_weights_shape_the_table() -> None:
    a, b = member("web-1", weight=3), member("web-2")
    p = plan.plan(have(borrowed=[borrowed(a), borrowed(b)]),
                  Want(PORT, "tcp", (a, b), draining=(b,)))  # fmt: skip
    [write] = p.tables
    assert sorted(write.entries) == [0, 0, 0, 1]


def test_a_slot_emptied_in_this_sync_is_not_handed_out_in_the_same_sync() -> None:
    """The live table names the leaving member's slot until apply() rewrites it; a newcomer
    put there first would get the leaving one's traffic meanwhile."""
    old, new = member("web-1"), member("web-2")
    book, tables = settled([old])
    h = have(book, in_map=list(book.slots), borrowed=[borrowed(new)], tables=tables,
             registered={T4: 0})  # fmt: skip
    p = plan.plan(h, Want(PORT, "tcp", (new,)))
    assert p.retire == [0] and [i.slot for i in p.insert] == [1]
    # ... even when that leaves no slot at all: the sync refuses rather than misroutes
    full = SlotBook(slots={f"r-{i} {T4}": i for i in range(table.MAX_SLOTS)})
    with pytest.raises(EbpfError, match="no free eBPF slot"):
        plan.plan(have(full, borrowed=[borrowed(new)]), Want(PORT, "tcp", (new,)))


def test_a_returning_member_gets_its_slot_back_and_a_new_one_a_fresh_slot() -> None:
    a, b = member("web-1"), member("web-2")
    book = SlotBook(retired={f"web-1 {T4}": 5, f"web-9 {T4}": 0})
    p = plan.plan(have(book, borrowed=[borrowed(b), borrowed(a)]), Want(PORT, "tcp", (a, b)))
    assert {i.key: i.slot for i in p.insert} == {f"web-2 {T4}": 1, f"web-1 {T4}": 5}
    assert p.zero == [1]  # web-1's counter carries on


def test_a_listener_that_changed_goes_into_the_same_slot() -> None:
    """The member restarted its socket (or a new program version has an empty map): same
    key, same slot, no fresh counter."""
    ms = [member("web-1"), member("web-2")]
    book, tables = settled(ms)
    h = have(book, in_map=[f"web-1 {T4}"], borrowed=[borrowed(ms[1], fd=77)], tables=tables,
             registered={T4: 0})  # fmt: skip
    p = plan.plan(h, Want(PORT, "tcp", tuple(ms)))
    assert [(i.slot, i.fd) for i in p.insert] == [(1, 77)] and p.zero == []
    assert p.attach == [77] and not p.tables and not p.register


def test_one_slot_per_member_and_group() -> None:
    """A prefork server's second socket in a group is left to the kernel's own choice."""
    a = member("web-1")
    p = plan.plan(have(borrowed=[borrowed(a, fd=1), borrowed(a, fd=2), borrowed(a, T6, fd=3)]),
                  Want(PORT, "tcp", (a,)))  # fmt: skip
    assert [(i.key, i.fd) for i in p.insert] == [(f"web-1 {T4}", 1), (f"web-1 {T6}", 3)]
    assert p.register == [(T4, 0), (T6, 1)]
    assert p.tables == [plan.TableWrite(0, 1, (0,)), plan.TableWrite(1, 1, (1,))]


def test_a_protocol_change_retires_the_old_protocols_slots() -> None:
    a = member("web-1")
    book, tables = settled([a])
    h = have(book, in_map=list(book.slots), borrowed=[borrowed(a, U4)], tables=tables,
             registered={T4: 0})  # fmt: skip
    p = plan.plan(h, Want(PORT, "udp", (a,)))
    assert p.retire == [0] and [i.key for i in p.insert] == [f"web-1 {U4}"]
    assert p.insert[0].slot == 1  # not the slot the TCP socket leaves
    assert p.unregister == [T4] and p.register == [(U4, 1)]  # T4's index not reused yet
    assert p.book.groups == {U4: 1} and p.live[0].entries is None and p.registered == {U4: 1}


def test_a_group_registered_by_an_earlier_daemon_is_read_not_written() -> None:
    """A restarted daemon: the book from the state file, the tables and registrations as
    observe() read them from the pinned maps; the sockets still in place."""
    ms = [member("web-1"), member("web-2")]
    book, tables = settled(ms)
    h = have(book, in_map=list(book.slots), tables=tables, registered={T4: 0})
    assert not plan.plan(h, Want(PORT, "tcp", tuple(ms))).changes
    # registered elsewhere (another index): re-registered, and the table is not trusted
    h = have(book, in_map=list(book.slots), tables=tables, registered={T4: 3})
    p = plan.plan(h, Want(PORT, "tcp", tuple(ms)))
    assert p.register == [(T4, 0)] and p.tables == [plan.TableWrite(0, 0, (0, 1))]


def test_an_upgrade_carries_counters_and_flows_first() -> None:
    a = member("web-1")
    book, _ = settled([a])
    p = plan.plan(have(book, borrowed=[borrowed(a)], upgrade=True), Want(PORT, "tcp", (a,)))
    assert p.carry and [i.slot for i in p.insert] == [0] and p.register == [(T4, 0)]


def test_a_lost_book_sweeps_what_it_does_not_know() -> None:
    a = member("web-1")
    other = table.registration("tcp4 127.0.0.1", PORT)
    mine = table.registration(T4, PORT)
    p = plan.plan(have(borrowed=[borrowed(a)], sweep=True, present=(other, mine)),
                  Want(PORT, "tcp", (a,)))  # fmt: skip
    assert p.sweep == list(range(1, table.MAX_SLOTS)) and p.drop == [other]


def test_first_seen_follows_the_members() -> None:
    a, b = member("web-1"), member("web-2")
    h = Have(book=SlotBook(), in_map=frozenset(), borrowed=(), found=frozenset({"web-1"}),
             first_seen={"web-1": (a.pid, 1.0), "web-2": (999, 2.0), "gone": (5, 3.0)},
             tables=empty_tables(), registered={}, now=10.0)  # fmt: skip
    p = plan.plan(h, Want(PORT, "tcp", (a, b)))
    # web-1 kept its first sighting; web-2's old pid is kept until it is found again
    assert p.first_seen == {"web-1": (a.pid, 1.0), "web-2": (999, 2.0)}
    h = Have(book=SlotBook(), in_map=frozenset(), borrowed=(), found=frozenset({"web-2"}),
             first_seen=p.first_seen, tables=empty_tables(), registered={}, now=11.0)
    assert plan.plan(h, Want(PORT, "tcp", (a, b))).first_seen["web-2"] == (b.pid, 11.0)


@pytest.mark.parametrize(
    ("keys", "in_map", "first_seen", "now", "scan"),
    [
        ([], [], {}, 10.0, True),  # nothing in the map yet
        (["k1", "k2"], ["k1"], {"web-1": (101, 0.0)}, 10.0, True),  # lost one
        (["k1"], ["k1"], {"web-1": (101, 8.0)}, 10.0, True),  # still starting
        (["k1"], ["k1"], {"web-1": (55, 0.0)}, 10.0, True),  # another process now
        (["k1"], ["k1"], {"web-1": (101, 0.0)}, 10.0, False),  # settled: lookups only
    ],
)
def test_must_scan(keys: list[str], in_map: list[str], first_seen: dict[str, tuple[int, float]],
                   now: float, scan: bool) -> None:  # fmt: skip
    m = member("web-1")
    assert plan.must_scan(m, keys, frozenset(in_map), first_seen, now, 3.0) is scan


# ------------------------------------------------------------------------ apply's order


class Recorder:
    """The bpf(2) and setsockopt calls apply() makes, as (what, map, key) in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fds: dict[str, int]) -> None:
        self.ops: list[tuple[str, str, int]] = []
        names = {fd: name for name, fd in fds.items()}

        def key(raw: bytes) -> int:
            return int(struct.unpack("=I", raw)[0]) if len(raw) == 4 else -1

        def update(fd: int, k: bytes, v: bytes, flags: int = 0) -> None:
            self.ops.append(("update", names[fd], key(k)))

        def delete(fd: int, k: bytes) -> bool:
            self.ops.append(("delete", names[fd], key(k)))
            return True

        def set_u64(fd: int, k: int, total: int) -> None:
            self.ops.append(("set", names[fd], k))

        def attach(fd: int, prog: int) -> None:
            self.ops.append(("attach", "prog", fd))

        monkeypatch.setattr(bpfsys, "map_update", update)
        monkeypatch.setattr(bpfsys, "map_delete", delete)
        monkeypatch.setattr(bpfsys, "percpu_set_u64", set_u64)
        monkeypatch.setattr(sockets, "attach_program", attach)

    def first(self, what: str, name: str) -> int:
        return next(i for i, op in enumerate(self.ops) if op[:2] == (what, name))

    def last(self, what: str, name: str) -> int:
        return max(i for i, op in enumerate(self.ops) if op[:2] == (what, name))


@pytest.fixture
def maps() -> Iterator[Maps]:
    names = ("sockets", "wildcard", "groups", "selection", "config", "flows", "steered",
             "reasons", "cursor", "overflow")  # fmt: skip
    yield Maps(pathlib.Path("/nonexistent"), "tag", 99, {n: 10 + i for i, n in enumerate(names)})


def test_apply_puts_sockets_and_tables_in_place_before_the_program_sees_them(
    monkeypatch: pytest.MonkeyPatch, maps: Maps
) -> None:
    rec = Recorder(monkeypatch, maps.fds)
    a, b = member("web-1"), member("web-2")
    apply.apply(plan.plan(have(borrowed=[borrowed(a), borrowed(b)]),
                          Want(PORT, "tcp", (a, b))), maps, None)  # fmt: skip
    zeroed = rec.last("set", "steered")
    inserted = rec.last("update", "sockets")
    table_written = rec.last("update", "config")  # the flip is the table's last write
    registered = rec.first("update", "wildcard")
    attached = rec.first("attach", "prog")
    assert zeroed < rec.first("update", "sockets")
    assert inserted < rec.first("update", "selection") and inserted < table_written
    assert table_written < registered < attached
    assert rec.ops[table_written] == ("update", "config", 0)  # CFG_ACTIVE of group 0


def test_apply_takes_a_leaving_member_out_of_the_table_before_emptying_its_slot(
    monkeypatch: pytest.MonkeyPatch, maps: Maps
) -> None:
    ms = [member("web-1"), member("web-2"), member("web-3")]
    book, tables = settled(ms)
    h = have(book, in_map=list(book.slots), tables=tables, registered={T4: 0})
    rec = Recorder(monkeypatch, maps.fds)
    apply.apply(plan.plan(h, Want(PORT, "tcp", (ms[0],), draining=(ms[2],))), maps, None)
    assert rec.last("update", "config") < rec.first("delete", "sockets")
    assert [op for op in rec.ops if op[1] == "sockets"] == [("delete", "sockets", 1)]


def test_apply_unregisters_a_group_before_emptying_its_last_slots(
    monkeypatch: pytest.MonkeyPatch, maps: Maps
) -> None:
    a = member("web-1")
    book, tables = settled([a])
    h = have(book, in_map=list(book.slots), borrowed=[borrowed(a, U4)], tables=tables,
             registered={T4: 0})  # fmt: skip
    rec = Recorder(monkeypatch, maps.fds)
    apply.apply(plan.plan(h, Want(PORT, "udp", (a,))), maps, None)
    # U4 registered (key 2, index 1 + 1), then T4 unregistered (key 0 -> 0), then slot 0 emptied
    wildcard = [(i, op) for i, op in enumerate(rec.ops) if op[1] == "wildcard"]
    assert [op for _, op in wildcard] == [("update", "wildcard", 2), ("update", "wildcard", 0)]
    assert wildcard[-1][0] < rec.first("delete", "sockets")


@pytest.mark.parametrize(("listeners", "family", "expect"), [
    ([(3, T4), (5, T6)], 4, (2, "127.0.0.1", 3)),  # each family its own socket's slot
    ([(3, T4), (5, T6)], 6, (10, "::1", 5)),
    ([(5, T6)], 4, (2, "127.0.0.1", 5)),  # a dual-stack [::] socket takes the IPv4 probe
    ([(7, "tcp4 172.17.0.5")], 4, (2, "172.17.0.5", 7)),  # bound to an address: that one
    ([(3, T4)], 6, None),  # no IPv6 socket: nothing to ask (not ready for IPv6 clients)
    ([(4, U4)], 4, None),  # UDP: no HTTP
    ([], 4, None),  # not in the socket map yet
])
def test_a_probe_names_the_slot_of_the_listener_of_its_family(
    listeners: list[tuple[int, str]], family: int, expect: tuple[int, str, int] | None
) -> None:
    t = probe.target(listeners, family)
    assert (None if t is None else (t.family, t.address, t.slot)) == expect
    if t is not None:
        assert t.source_port == probe.PROBE_PORT_BASE + t.slot


def test_a_hold_takes_every_group_it_listens_in_and_gives_it_back() -> None:
    """lbctl pause (plan.Want.holds): the group's table is the hold's slot alone, the ready
    members stay in the map; a group the hold does not listen in is steered as before; once
    the hold is gone from `holds` (draining) the table is the ready members' again, with the
    hold still in the map until its socket closes (its queue then migrates to them)."""
    a, b, hold = member("web-1"), member("web-2"), Member("web-hold-9", 300)
    book, tables = settled([a, b])
    book.groups[T6] = 1
    book.slots[slot_key(a.name, T6)] = 2
    book.held[2] = held(a)
    tables[1] = TableState(1, (2,))
    registered: dict[str, int | None] = {T4: 0, T6: 1}
    h = have(book, in_map=list(book.slots), tables=tables, registered=registered,
             borrowed=[borrowed(hold)])
    p = plan.plan(h, Want(PORT, "tcp", (a, b), holds=(hold,)))
    [ins] = p.insert
    assert ins.key == f"web-hold-9 {T4}"
    assert p.tables == [plan.TableWrite(0, 0, (ins.slot,))]  # tcp6: no hold socket there
    assert not p.retire
    # Resumed: the hold drains (in the map, in no table) and the replicas are back.
    h = have(p.book, in_map=list(p.book.slots), tables=p.live, registered=registered)
    p = plan.plan(h, Want(PORT, "tcp", (a, b), draining=(hold,)))
    assert p.tables == [plan.TableWrite(0, 1, (0, 1))] and not p.retire
    # Its socket closed: its slot goes.
    h = have(p.book, in_map=[k for k in p.book.slots if "hold" not in k], tables=p.live,
             registered=registered)
    p = plan.plan(h, Want(PORT, "tcp", (a, b)))
    assert p.retire == [ins.slot] and not p.tables


def test_of_two_holds_the_first_with_a_socket_in_the_group_takes_it() -> None:
    a = member("web-1")
    old, new = Member("web-hold-1", 301), Member("web-hold-2", 302)
    book, tables = settled([a, old])
    h = have(book, in_map=list(book.slots), tables=tables, registered={T4: 0})
    p = plan.plan(h, Want(PORT, "tcp", (a,), holds=(new, old)))  # `new` not found yet
    assert p.tables == [plan.TableWrite(0, 0, (1,))]  # the old hold's slot
    h = have(p.book, in_map=list(p.book.slots), tables=p.live, registered={T4: 0},
             borrowed=[borrowed(new)])
    p = plan.plan(h, Want(PORT, "tcp", (a,), holds=(new, old)))
    assert p.tables == [plan.TableWrite(0, 1, (p.insert[0].slot,))]
