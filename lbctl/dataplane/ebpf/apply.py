"""Carry out a plan (plan.py) on an app's maps, in the one order that never misroutes:

  1. carry the replaced program's counters and UDP flows into the new maps (an upgrade), so
     the new program, attached below, starts where the old one stopped;
  2. zero the counters of fresh slots, then put the new sockets in their slots: a socket in
     the sockmap that no table names yet gets nothing from the program;
  3. write each changed table (its inactive half, then the flip): every slot it names holds
     its socket already;
  4. register the groups that are new to the program: their tables are written;
  5. attach the program to the new sockets' groups: a freshly loaded program (first load or
     upgrade) never runs on an empty or unregistered table;
  6. unregister the groups with no socket left: the kernel's own choice serves them, not a
     table of slots about to empty;
  7. empty the slots of members that left: no live table names them any more (a slot emptied
     while still in a table would fail selection and cost a retry, and a slot refilled while
     in an old table would hand its traffic to someone else, which plan() rules out);
  8. with a lost book, empty the slots and drop the registrations it does not know.

A failed step raises; what was applied stays (every step is idempotent and the next sync's
observe() sees it), and the plane forgets what it knew of the tables so that sync reads them.
"""

from __future__ import annotations

import struct

from lbctl.dataplane import bpfsys, sockets
from lbctl.dataplane.ebpf import pins, table
from lbctl.dataplane.ebpf.errors import EbpfError
from lbctl.dataplane.ebpf.pins import Maps
from lbctl.dataplane.ebpf.plan import Plan
from lbctl.dataplane.ebpf.slots import replica_of

__all__ = ["apply"]


def apply(p: Plan, maps: Maps, old: Maps | None) -> None:
    fds = maps.fds
    if p.carry and old is not None:
        pins.carry_counters(old, maps)
    for slot in p.zero:
        bpfsys.percpu_set_u64(fds["steered"], slot, 0)
    for ins in p.insert:
        try:
            bpfsys.map_update(fds["sockets"], table.u32(ins.slot), struct.pack("=Q", ins.fd))
        except OSError as e:
            raise EbpfError(
                f"cannot insert {replica_of(ins.key)}'s listener into the sockmap: {e}"
            ) from e
    for w in p.tables:
        table.write_table(fds, w.half, list(w.entries), w.index)
    for group, idx in p.register:
        table.register_group(fds, group, p.port, idx)
    for fd in p.attach:
        sockets.attach_program(fd, maps.prog)
    for group in p.unregister:
        table.unregister_group(fds, group, p.port)
    for slot in [*p.retire, *p.sweep]:
        bpfsys.map_delete(fds["sockets"], table.u32(slot))
    for reg in p.drop:
        table.drop_registration(fds, reg)
