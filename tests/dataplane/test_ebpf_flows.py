"""Which UDP flows the daemon forgets (lbctl.dataplane.ebpf.flows.quiet), pure: the flow map
never evicts by itself, so that no flood pushes out a flow that talks; the daemon forgets the
quiet ones, sooner once the map is crowded. (test_ebpf_flood.py floods the real program.)"""

from __future__ import annotations

from lbctl.dataplane.ebpf.flows import quiet

S = 1_000_000_000  # ns


def test_quiet_flows_go_sooner_once_the_map_is_crowded() -> None:
    now = 1000 * S
    seen = {b"talks": now - 1 * S, b"quiet30": now - 30 * S, b"quiet200": now - 200 * S}
    # Room to spare: only what was quiet past max_idle.
    assert quiet(seen, now, max_idle=120, crowded=0.5, crowded_idle=10, capacity=100) == [
        b"quiet200"]
    # Crowded (3 of 4 taken, past half): quiet past crowded_idle goes too; talking never.
    assert sorted(quiet(seen, now, max_idle=120, crowded=0.5, crowded_idle=10,
                        capacity=4)) == [b"quiet200", b"quiet30"]
    assert quiet({}, now, max_idle=120, crowded=0.5, crowded_idle=10) == []
