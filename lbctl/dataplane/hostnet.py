"""What this host's network stack offers lbctl beyond IPv4: read from /proc, changes nothing.

IPv6 publishes need an IPv6 stack (`/proc/net/if_inet6` exists only then, and
`disable_ipv6` turns it off without removing the file) and ip6tables; admission refuses an
IPv6 publish with the reason this gives, and `lbctl doctor` shows it.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

PROC = Path("/proc")


def ipv6_unavailable_reason(proc: Path = PROC) -> str | None:
    """Why IPv6 cannot be published here, or None when it can."""
    if not (proc / "net/if_inet6").exists():
        return "the kernel has no IPv6 (booted with ipv6.disable=1, or built without it)"
    try:
        disabled = (proc / "sys/net/ipv6/conf/all/disable_ipv6").read_text().strip()
    except OSError:
        disabled = "0"
    if disabled != "0":
        return "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6=1)"
    if shutil.which("ip6tables-restore") is None:
        return "ip6tables-restore not found (apt-get install iptables)"
    return None


def bridge_nf_call(family: int, proc: Path = PROC) -> bool | None:
    """Whether bridged packets traverse ip(6)tables (br_netfilter with
    bridge-nf-call-ip(6)tables=1); None when br_netfilter is not there at all. It decides
    which of lbctl's hairpin rules do the work (see dataplane.iptables.rules)."""
    name = "bridge-nf-call-iptables" if family == 4 else "bridge-nf-call-ip6tables"
    try:
        return (proc / "sys/net/bridge" / name).read_text().strip() == "1"
    except OSError:
        return None


def connected_networks(family: int, proc: Path = PROC) -> dict[str, list[str]]:
    """interface -> the networks routed straight onto it (no gateway), from the kernel's
    main routing table: a bridge's subnets, for the same-bridge hairpin rules."""
    name = "net/route" if family == 4 else "net/ipv6_route"
    try:
        text = (proc / name).read_text()
    except OSError:
        return {}
    return parse_routes(text, family)


def parse_routes(text: str, family: int) -> dict[str, list[str]]:
    """/proc/net/route (IPv4: little-endian hex columns) or /proc/net/ipv6_route text ->
    interface -> its connected networks, link-local, multicast and host routes left out."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        f = line.split()
        try:
            if family == 4:
                if len(f) < 8 or f[0] == "Iface" or int(f[2], 16) != 0:
                    continue
                dest = ipaddress.IPv4Address(int(f[1], 16).to_bytes(4, "little"))
                mask = bin(int(f[7], 16)).count("1")
                if mask in (0, 32):
                    continue
                net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                    f"{dest}/{mask}", strict=False)
                iface = f[0]
            else:
                if len(f) < 10 or int(f[4], 16) != 0:
                    continue
                plen = int(f[1], 16)
                if plen in (0, 128):
                    continue
                net = ipaddress.IPv6Network(
                    f"{ipaddress.IPv6Address(bytes.fromhex(f[0]))}/{plen}", strict=False)
                if net.is_link_local or net.is_multicast:
                    continue
                iface = f[9]
        except ValueError:
            continue
        nets = out.setdefault(iface, [])
        if str(net) not in nets:
            nets.append(str(net))
    return out


IFA_F_TENTATIVE = 0x40


def ipv6_settled(iface: str | None, proc: Path = PROC) -> bool:
    """No IPv6 address of `iface` is still tentative (in duplicate address detection).

    A fresh bridge's gateway address stays tentative until about 1-2 s after its first
    container came up (carrier, the link-watch delay, then DAD; measured here: 1.3-2.2 s).
    Meanwhile that address answers no neighbour solicitation, so replies of IPv6 clients
    routed through it are lost: an IPv6 publish is not served before this holds.
    """
    if not iface:
        return True
    try:
        lines = (proc / "net/if_inet6").read_text().splitlines()
    except OSError:
        return True
    for line in lines:
        f = line.split()
        if len(f) >= 6 and f[5] == iface and int(f[4], 16) & IFA_F_TENTATIVE:
            return False
    return True
