"""What one sync of an app's data plane changes, decided purely from what it has and what it
wants (tubular's diffBindings(have, want)); apply.py carries it out, observe.py reads `Have`.

Nothing here touches a map, a socket or a clock: `plan()` is a function of two values, so
every decision of a sync (which slot a new listener gets, which slots empty, which tables are
rewritten, which groups are registered) is tested without a kernel (tests/dataplane/
test_ebpf_plan.py).  The order in which the steps must run is apply.py's; what each step
contains is decided here, including what makes that order safe: a slot emptied in this sync
is never handed to a new listener in the same sync (the old table may still name it until
the new one is written), and a group keeps its table index until the sync after the one
that unregistered it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lbctl.dataplane import sockets
from lbctl.dataplane.ebpf import slots, table
from lbctl.dataplane.ebpf.slots import Held, SlotBook
from lbctl.model.dataplane import Member

__all__ = [
    "Borrowed",
    "Have",
    "Insert",
    "Plan",
    "TableState",
    "TableWrite",
    "Want",
    "must_scan",
    "plan",
]


@dataclass(frozen=True)
class Want:
    """What the caller asks for: ready members get traffic; draining ones keep their sockets
    in the map (queued connections, UDP flows) but are in no table; probing ones (starting,
    or out for failing readiness) are in the map, in no table, so that the daemon's probes
    reach them through their slot (PROBE_PORT_BASE in bpf/lbctl_shared.h); anyone else
    leaves.

    `holds`: a traffic hold (lbctl.model.hold): while there is one, each group's table is the
    slot of the first hold member with a socket of that group in the map, so every new
    connection waits in that listener's accept queue; the ready members stay in the map
    without a table entry.  A group none of them listens in is steered as usual."""

    port: int
    proto: str
    ready: tuple[Member, ...] = ()
    draining: tuple[Member, ...] = ()
    probing: tuple[Member, ...] = ()
    holds: tuple[Member, ...] = ()

    def members(self) -> dict[str, Member]:
        """Every member by name; a hold, then ready, win over the others when listed twice."""
        out = {m.name: m for m in self.draining}
        out.update({m.name: m for m in self.probing})
        out.update({m.name: m for m in self.ready})
        out.update({m.name: m for m in self.holds})
        return out


@dataclass(frozen=True)
class Borrowed:
    """A member's listener, duplicated into the daemon (pidfd_getfd) for insertion; the plane
    closes `fd` after the sync, whether the plan used it or not."""

    member: Member
    listener: sockets.Listener
    fd: int
    cookie: int  # SO_COOKIE: what a sockmap lookup returns for it once inserted

    @property
    def key(self) -> str:
        return slots.slot_key(self.member.name, self.listener.group)


@dataclass(frozen=True)
class TableState:
    """A group index's selection table: the half the program reads and, when known, what it
    holds (None: not known to be what any registered group reads, so rewritten when used)."""

    half: int
    entries: tuple[int, ...] | None


@dataclass(frozen=True)
class Have:
    """What the app's maps and replicas hold now (observe.py reads it)."""

    book: SlotBook
    # Slot keys of wanted members whose socket is still in the sockmap (the member's own, by
    # cookie and pid): these need no scan and no insert.
    in_map: frozenset[str]
    # Listeners found for keys not in the map, in the order found (members as wanted, each
    # member's IPv4 first): the first of a member in a group takes the group's slot.
    borrowed: tuple[Borrowed, ...]
    # Members whose listeners were looked for and found, in the app's namespace.
    found: frozenset[str]
    first_seen: Mapping[str, tuple[int, float]]  # member -> (pid, when its listeners showed)
    tables: Mapping[int, TableState]  # every group index
    registered: Mapping[str, int | None]  # group -> the index the program finds it at
    now: float = 0.0  # monotonic
    upgrade: bool = False  # a new program version was loaded beside the old one
    sweep: bool = False  # the book was lost (damaged state file): empty what it does not know
    present: tuple[bytes | int, ...] = ()  # registrations in the maps (read only to sweep)


@dataclass(frozen=True)
class Insert:
    key: str
    slot: int
    fd: int
    held: Held


@dataclass(frozen=True)
class TableWrite:
    index: int
    half: int  # the inactive half, written and then made active
    entries: tuple[int, ...]


@dataclass
class Plan:
    """One sync's changes, in the order apply() makes them, and the state once applied."""

    port: int
    carry: bool = False  # copy the replaced program's counters and flows first
    zero: list[int] = field(default_factory=list)  # fresh slots: counters start at 0
    insert: list[Insert] = field(default_factory=list)
    tables: list[TableWrite] = field(default_factory=list)
    register: list[tuple[str, int]] = field(default_factory=list)  # (group, index)
    attach: list[int] = field(default_factory=list)  # fds of inserted sockets
    unregister: list[str] = field(default_factory=list)
    retire: list[int] = field(default_factory=list)  # slots emptied
    sweep: list[int] = field(default_factory=list)  # slots emptied that the book never knew
    drop: list[bytes | int] = field(default_factory=list)  # registrations nobody owns
    # Once applied: the bookkeeping, the tables, and which groups are registered where.
    book: SlotBook = field(default_factory=SlotBook)
    first_seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    live: dict[int, TableState] = field(default_factory=dict)
    registered: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        """Does applying it change any map (a quiet sync changes none)?"""
        return bool(self.carry or self.zero or self.insert or self.tables or self.register
                    or self.attach or self.unregister or self.retire or self.sweep
                    or self.drop)  # fmt: skip


def must_scan(
    member: Member, keys: Sequence[str], in_map: frozenset[str],
    first_seen: Mapping[str, tuple[int, float]], now: float, rescan: float,
) -> bool:  # fmt: skip
    """Look for the member's listeners (sock_diag, /proc) this sync?  Yes while it has none in
    the map, lost one, or is in its first `rescan` seconds: a replica binds its sockets one
    after another as it starts (IPv4 then IPv6, TCP then UDP).  Otherwise a sync costs one map
    lookup per listener."""
    if not keys or any(k not in in_map for k in keys):
        return True
    pid, since = first_seen.get(member.name, (0, 0.0))
    return pid != member.pid or now - since < rescan


def _copy(book: SlotBook) -> SlotBook:
    return SlotBook(dict(book.slots), dict(book.retired), dict(book.held), dict(book.groups))


def plan(have: Have, want: Want) -> Plan:
    """The changes that make the maps hold `want`, from `have`.  Raises EbpfError when the
    maps have no room (slots, groups): nothing is applied then."""
    members = want.members()
    book = _copy(have.book)
    p = Plan(port=want.port, carry=have.upgrade, book=book)

    # Keys of members that left, or of another protocol (the spec changed): emptied last,
    # once no table names them; until then their slots are not free for anyone.
    leaving = [k for k in book.slots
               if slots.replica_of(k) not in members
               or (slots.group_of(k) or "")[:3] != want.proto]  # fmt: skip
    listening = {k for k in have.in_map if k in book.slots and k not in leaving}

    for b in have.borrowed:
        if b.key in listening:
            continue  # still held, or a second socket of the member in this group
        slot = book.slots.get(b.key)
        if slot is None:
            slot = book.alloc(b.key, p.zero.append)
        held = Held(b.member.pid, b.listener.inode, b.cookie, b.listener.pid, b.listener.fd)
        book.held[slot] = held
        p.insert.append(Insert(b.key, slot, b.fd, held))
        p.attach.append(b.fd)
        listening.add(b.key)

    for key in leaving:
        p.retire.append(book.retire(key))

    p.first_seen = {n: v for n, v in have.first_seen.items() if n in members}
    for name in have.found:
        pid = members[name].pid
        if p.first_seen.get(name, (0, 0.0))[0] != pid:
            p.first_seen[name] = (pid, have.now)

    _plan_tables(p, have, want, listening)

    if have.sweep:
        p.sweep = [s for s in range(table.MAX_SLOTS) if s not in book.held]
        known = {table.registration(g, want.port) for g in book.groups}
        p.drop = [r for r in have.present if r not in known]
    return p


def _plan_tables(p: Plan, have: Have, want: Want, listening: set[str]) -> None:
    """Each group with a socket in the map gets its table (its ready members' sockets by
    weight; empty when all drain), written where it differs from the live one, and then its
    registration; a group with no socket left is unregistered and its index freed."""
    book = p.book
    holds = {m.name for m in want.holds}
    weights = {m.name: max(0, m.weight) for m in want.ready if m.name not in holds}
    by_group: dict[str, list[tuple[int, int]]] = {}
    for key in sorted(listening, key=lambda k: book.slots[k]):
        ready = by_group.setdefault(slots.group_of(key) or "", [])
        name = slots.replica_of(key)
        if name in weights:
            ready.append((book.slots[key], weights[name]))
    for group in by_group:
        held = next((book.slots[k] for m in want.holds
                     if (k := slots.slot_key(m.name, group)) in listening), None)
        if held is not None:
            by_group[group] = [(held, 1)]
    p.live = dict(have.tables)
    for group, members in sorted(by_group.items()):
        idx = book.alloc_group(group)
        registered = have.registered.get(group) == idx
        state = have.tables.get(idx, TableState(0, None))
        entries = tuple(table.build_table(members))
        if entries != (state.entries if registered else None):
            p.tables.append(TableWrite(idx, 1 - state.half, entries))
            state = TableState(1 - state.half, entries)
        p.live[idx] = TableState(state.half, entries)
        if not registered:
            p.register.append((group, idx))
        p.registered[group] = idx
    for group in [g for g in book.groups if g not in by_group]:
        p.unregister.append(group)
        idx = book.groups.pop(group)
        p.live[idx] = TableState(p.live.get(idx, TableState(0, None)).half, None)
