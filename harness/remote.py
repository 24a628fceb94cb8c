"""A "remote host": a network namespace of this process's own, joined to the host by a veth
pair, standing in for another machine on a directly connected network. Its packets reach the
host as a real client's do (nat PREROUTING, FORWARD to containers), not as 127.0.0.1's
(nat OUTPUT, loopback). The e2e client tests (tests.clients) and the benchmarks (wrk run in
the namespace) share it.

- remote_host(tag): 10.253.<tag>.0/30 and fd53:<tag>::/64 on the link, a default route
  through the host; removed on exit, the processes inside it killed.
- forward_accept(link): the two FORWARD ACCEPTs that let such a client reach container IPs
  directly (Docker's FORWARD drops new connections to unpublished container ports), under a
  comment of ours in DOCKER-USER; removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


def _sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


@dataclass(frozen=True)
class RemoteHost:
    """A namespace standing in for another machine on a link to this host."""

    ns: str
    host_link: str  # the host's end of the veth pair
    host_ip: str  # the host's IPv4 address on that link (what the remote host connects to)
    ip: str  # the remote host's IPv4 address
    host_ip6: str  # the same for IPv6 (ULA, no duplicate address detection)
    ip6: str

    def run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True,
                              text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def remote_host(tag: int) -> Iterator[RemoteHost]:
    """A RemoteHost on 10.253.<tag>.0/30 and fd53:<tag>::/64 (tag < 256 keeps concurrent
    runs of different processes apart: the e2e tests use 20..219, the bench 250); removed on
    exit."""
    r = RemoteHost(
        ns=f"lbctl-remote{tag}", host_link=f"lbrem{tag}",
        host_ip=f"10.253.{tag}.1", ip=f"10.253.{tag}.2",
        host_ip6=f"fd53:{tag:x}::1", ip6=f"fd53:{tag:x}::2",
    )
    _remove_remote(r)
    try:
        _sh("ip", "netns", "add", r.ns)
        _sh("ip", "link", "add", r.host_link, "type", "veth", "peer", "name", "eth0",
            "netns", r.ns)
        _sh("ip", "addr", "add", f"{r.host_ip}/30", "dev", r.host_link)
        _sh("ip", "-6", "addr", "add", f"{r.host_ip6}/64", "dev", r.host_link, "nodad")
        _sh("ip", "link", "set", r.host_link, "up")
        n = ["ip", "-n", r.ns]
        _sh(*n, "link", "set", "lo", "up")
        _sh(*n, "addr", "add", f"{r.ip}/30", "dev", "eth0")
        _sh(*n, "-6", "addr", "add", f"{r.ip6}/64", "dev", "eth0", "nodad")
        _sh(*n, "link", "set", "eth0", "up")
        _sh(*n, "route", "add", "default", "via", r.host_ip)
        _sh(*n, "-6", "route", "add", "default", "via", r.host_ip6)
        yield r
    finally:
        _remove_remote(r)


def _remove_remote(r: RemoteHost) -> None:
    for pid in _sh("ip", "netns", "pids", r.ns, check=False).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    _sh("ip", "netns", "del", r.ns, check=False)
    _sh("ip", "link", "del", r.host_link, check=False)  # gone with the namespace, normally


# DOCKER-USER is Docker's chain for exactly this (it runs before Docker's own FORWARD rules
# and Docker never rewrites it); FORWARD itself when Docker is not running.
_CHAINS = ("DOCKER-USER", "FORWARD")


def _forward_chain() -> str:
    for chain in _CHAINS:
        if subprocess.run(["iptables", "-w", "-S", chain], capture_output=True,
                          check=False).returncode == 0:
            return chain
    raise RuntimeError("no FORWARD chain: is iptables usable here?")


@contextlib.contextmanager
def forward_accept(link: str) -> Iterator[None]:
    """ACCEPT forwarded packets from and to `link` (a remote host's veth end), so that the
    remote host can reach container IPs that no rule publishes (a container's or a sandbox's
    own address, as a router in front of the host would route them). Only that link's
    traffic: the rest of the host's forwarding policy is untouched. The rules carry the
    comment `lbctl-bench <link>` and are deleted on exit, even when they were added twice."""
    chain = _forward_chain()
    comment = f"lbctl-bench {link}"
    rules = [["-i", link], ["-o", link]]
    for match in rules:
        _sh("iptables", "-w", "-I", chain, "1", *match, "-m", "comment", "--comment", comment,
            "-j", "ACCEPT")
    try:
        yield
    finally:
        for match in rules:
            spec = [chain, *match, "-m", "comment", "--comment", comment, "-j", "ACCEPT"]
            while subprocess.run(["iptables", "-w", "-D", *spec], capture_output=True,
                                 check=False).returncode == 0:
                pass
