"""hairpin_mode on the bridge port of a container lbctl sends DNATed connections to.

With br_netfilter (Docker turns it on), a connection a container makes to a published host
address and that the DNAT sends back to that same container is *bridged* back out of the
port it came in by, and a bridge drops such a frame unless the port is in hairpin mode
(measured here, ebpf mode, a replica calling its own app: 0 of 10 answered with
hairpin_mode=0, 30 of 30 with it; tests/e2e/test_clients.py, tests/dataplane/test_hairpin.py).
Docker sets
it only with `userland-proxy: false`; Podman's CNI config sets it on its own ports; kubelet
sets it on every pod's port. lbctl sets it on the ports of the DNAT targets it creates (its
replicas in iptables mode, its sandboxes in ebpf mode), where its own published address is
what makes the hairpin happen. The port goes away with the container, so nothing is put back.
The MASQUERADE that makes the reply come back is in lbctl.dataplane.iptables.rules.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

from lbctl.dataplane import netns

log = logging.getLogger(__name__)

SYS_NET = Path("/sys/class/net")


def _peers(pid: int) -> list[tuple[int, int]]:
    """(interface index inside pid's namespace, index of its veth peer outside) of every
    interface there with a peer in another namespace."""
    from lbctl.dataplane.netlink import link_peers

    with netns.inside(pid):
        return link_peers()


def enable(pid: int, sys_net: Path = SYS_NET) -> list[str]:
    """Put the host-side bridge ports of pid's namespace in hairpin mode; return the ports
    that were changed. Blocking (netlink inside the namespace): run it in a thread."""
    changed = []
    for inner, outer in _peers(pid):
        try:
            name = socket.if_indextoname(outer)
        except OSError:
            continue  # the peer is not in our namespace (or just went away)
        port = sys_net / name
        try:
            # The same index can exist in several namespaces: only the interface whose own
            # peer is the container's end is its port.
            if int((port / "iflink").read_text()) != inner:
                continue
            mode = port / "brport" / "hairpin_mode"
            if not mode.exists():
                continue  # not on a bridge
            if mode.read_text().strip() != "1":
                mode.write_text("1\n")
                changed.append(name)
        except (OSError, ValueError):
            continue
    return changed


async def enable_async(pid: int) -> list[str]:
    return await asyncio.to_thread(enable, pid)
