"""iptables mode, and the host rules of ebpf mode: lbctl's `LBCTL-` chains in iptables and
ip6tables, kept in step with the services kube-proxy style (a pure render of every chain, a
diff against the last one, one atomic restore).

The package is split by concern, the pure parts apart from the I/O:
  chains    chain names, tables and the jumps that hook them into the built-in chains;
  family    what differs between iptables and ip6tables, and who can reach a publish;
  rules     render_chains(): what every chain holds for a set of services (pure);
  restore   the restore transaction, full (render) or from the last render (render_diff) (pure);
  save      parsing `iptables-save -c` back: rules, counters, DNAT endpoints (pure);
  localnet  route_localnet on backend bridges and the state file of its originals;
  errors    IptablesError;
  plane     IptablesDataplane (one family) and DualStackRules (both): the I/O.
"""

from __future__ import annotations

from lbctl.dataplane.iptables.errors import IptablesError
from lbctl.dataplane.iptables.family import IPV4, IPV6, Family
from lbctl.dataplane.iptables.localnet import SYSCTL_STATE_FILE
from lbctl.dataplane.iptables.plane import DualStackRules, IptablesDataplane

__all__ = [
    "IPV4",
    "IPV6",
    "SYSCTL_STATE_FILE",
    "DualStackRules",
    "Family",
    "IptablesDataplane",
    "IptablesError",
]
