"""One source for the program's sizes and layouts (bpf/lbctl_shared.h), and room enough in them.

The header is #included by the C program and parsed by lbctl.dataplane.ebpf.layout; here:
the parser reads what the header promises, the C program keeps no copy of its own, and
MAX_SLOTS / TABLE_LEN cover the worst rollout the model allows, derived from the model's own
limits.  That the maps the kernel builds from the program have the sizes Python uses (a
disagreement would corrupt keys or values silently) is checked against the kernel in
test_ebpf.py.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from lbctl.dataplane import bpf_loader
from lbctl.dataplane.ebpf import flows, layout, table
from lbctl.model import MAX_REPLICAS
from lbctl.model.errors import InvalidInput
from lbctl.model.rollout import UpdatePolicy


def test_the_parser_reads_defines_and_struct_layouts() -> None:
    defines, structs = layout.parse(
        "/* #define HIDDEN 1 */\n#define A 4 // four\n#define B 0x10U\n#define C 10000000ULL\n"
        "#define NOT_A_NUMBER (A * 2)\n"
        "struct s {\n    u32 a;\n    u64 b; /* after 4 bytes of padding */\n    u32 c[3];\n};\n"
    )
    assert defines == {"A": 4, "B": 16, "C": 10_000_000}
    s = structs["s"]
    assert s.fields == (("u32", "a", 1), ("u64", "b", 1), ("u32", "c", 3))
    assert (s.format, s.size) == ("=IxxxxQ3Ixxxx", 32)  # aligned to 8 at both ends


def test_the_program_keeps_no_copy_of_the_shared_values() -> None:
    src = bpf_loader.source_path().read_text()
    assert '#include "lbctl_shared.h"' in src
    copies = [n for n in [*layout.DEFINES, *layout.STRUCTS]
              if re.search(rf"^\s*(#define\s+{n}\b|struct\s+{n}\s*\{{)", src, re.M)]  # fmt: skip
    assert copies == []


def test_python_reads_the_header_the_program_is_built_with() -> None:
    sizes = {n: layout.DEFINES[n] for n in ("MAX_SLOTS", "TABLE_LEN", "MAX_GROUPS")}
    assert sizes == {"MAX_SLOTS": table.MAX_SLOTS, "TABLE_LEN": table.TABLE_LEN,
                     "MAX_GROUPS": table.MAX_GROUPS}  # fmt: skip
    # The metrics' reason labels (README, lbctl_bpf_reasons_total), one per R_ key, in order.
    assert table.REASONS == ("no_ready_replica", "select_error", "fallback", "migrated",
                             "no_group", "flow_moved", "probe")  # fmt: skip
    assert len(table.REASONS) <= table.N_REASONS
    assert (table.GROUP_KEY_SIZE, flows.KEY_SIZE, flows.VALUE_SIZE) == (28, 8, 16)
    assert len(table.group_key("udp6 2001:db8::1", 53)) == table.GROUP_KEY_SIZE


def test_the_version_tag_follows_the_header(tmp_path: pathlib.Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A changed map size must reach running hosts like a changed line of C: a new tag loads
    the new program beside the old one and swaps."""
    bpf = tmp_path / "bpf"
    bpf.mkdir()
    for name in (bpf_loader.SOURCE_NAME, bpf_loader.HEADER_NAME):
        (bpf / name).write_bytes((bpf_loader.bpf_dir() / name).read_bytes())
    monkeypatch.setattr(bpf_loader, "bpf_dir", lambda: bpf)
    before = bpf_loader.source_tag(bpf / bpf_loader.SOURCE_NAME)
    header = bpf / bpf_loader.HEADER_NAME
    header.write_text(header.read_text().replace("#define MAX_FLOWS 65536", "#define MAX_FLOWS 1"))
    assert bpf_loader.source_tag(bpf / bpf_loader.SOURCE_NAME) != before


def _largest_parallelism() -> int:
    """The largest update parallelism the model accepts (found, not restated)."""
    accepted = []
    for p in range(1, 4 * MAX_REPLICAS + 1):
        try:
            UpdatePolicy.from_json({"parallelism": p})
        except InvalidInput:
            continue
        accepted.append(p)
    assert accepted and max(accepted) < 4 * MAX_REPLICAS
    return max(accepted)


def test_slots_cover_the_worst_rollout_with_room_to_spare() -> None:
    """The sockets one app can have in the socket map at once, from the model's limits: its
    replicas, a rollout's surge (start-first: parallelism new replicas beside the old ones),
    and one more batch still draining when the next update starts; each replica with one
    socket per address family of the app's one protocol.  Probes need no slot of their own
    (one names its listener's), but a source port per slot, all above the ephemeral ports."""
    parallelism = _largest_parallelism()
    assert UpdatePolicy(parallelism=parallelism).surge == parallelism
    families = 2  # IPv4 and IPv6 (model.Publish.family); an app has one protocol
    replicas = MAX_REPLICAS + parallelism + parallelism  # running + surge + still draining
    worst = replicas * families
    base = layout.DEFINES["PROBE_PORT_BASE"]
    # above Linux's default ephemeral ports (32768-60999), one per slot
    assert base > 60999 and base + table.MAX_SLOTS - 1 <= 65535
    slots, table_len = table.MAX_SLOTS, table.TABLE_LEN
    print(f"worst case {worst} slots ({replicas} replicas), MAX_SLOTS {slots}")
    assert worst * 5 // 4 <= slots  # a quarter beyond the worst case, at least
    # Every ready replica at the rollout's peak keeps at least one table entry.
    ready = MAX_REPLICAS + parallelism
    assert ready <= table_len
    assert len(set(table.build_table([(s, 1) for s in range(ready)]))) == ready
