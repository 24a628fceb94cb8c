"""Socket activation: replicas in network namespaces of their own serve listeners that lbctl
makes in the host's namespace and hands to them by systemd's protocol (LISTEN_FDS, fd 3 on).

Why: on the default path every packet of a connection crosses a veth pair, a bridge and a
second pass through the host's stack (conntrack, DNAT) into the sandbox's namespace; a
listener of the host's namespace keeps every packet there, like `--network host`, while the
process that accepts (and everything else it opens) stays isolated (bench/RESULTS.md, issue
22: 1.01-1.04x the CPU per new connection of plain host SO_REUSEPORT, the default path
1.13-1.27x).

The pieces:
  listeners  the listeners of one replica: one per publish (SO_REUSEPORT, bound to exactly
             HOST_IP:HOST_PORT, IPv6 ones v6-only), as the eBPF data plane names their groups;
  server     one Unix socket per replica (<state_dir>/activation/<app>/<replica>/), which the
             replica gets bind-mounted read-only, with the static shim (images/activate) as
             its entrypoint in front of the image's own: when the shim connects, the daemon
             makes that replica's listeners, puts them in the app's socket map (EbpfDataplane.
             insert), sends them over SCM_RIGHTS and closes its copies, so the replica is
             their only owner (it dies: they are gone, out of the group and the map at once);
  shim       where the shim binary is (the package's, or this checkout's build).

What a replica holds is found again by inode in the host's namespace
(sockets.find_listeners with the listeners' namespace), which is how a restarted daemon, or a
sync after a hand-over it could not insert, takes it up.
"""

from __future__ import annotations

from lbctl.dataplane.activation.listeners import make_listeners
from lbctl.dataplane.activation.server import ActivationServer
from lbctl.dataplane.activation.shim import shim_path

__all__ = ["ActivationServer", "make_listeners", "shim_path"]
