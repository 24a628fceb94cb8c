"""Delete conntrack entries with the `conntrack` tool (conntrack-tools), without blocking the loop.

Why: NAT decisions are made on a flow's first packet and then live in the conntrack entry.
UDP has no connection end, so a UDP "flow" to a replica that went away keeps being DNATed to
the dead address until its entry times out; and packets that arrived while a service had no
backends leave entries without NAT that keep bypassing the new DNAT rules. kube-proxy clears
both kinds; lbctl does the same. TCP entries are left alone on purpose: a removed (draining)
replica still finishes its established connections, which conntrack keeps NATed.
"""

from __future__ import annotations

import asyncio
import re

CONNTRACK = "conntrack"
_DELETED_RE = re.compile(r"(\d+) flow entries have been deleted")


class ConntrackError(RuntimeError):
    """`conntrack -D` failed for another reason than "nothing matched"."""


async def delete_flows(
    proto: str,
    *,
    orig_dst: str | None = None,
    orig_port_dst: int | None = None,
    reply_src: str | None = None,
    reply_port_src: int | None = None,
    family: int = 4,
) -> int:
    """Delete the entries of `proto` matching every given filter; return how many went.

    `conntrack -D` exits 1 when no entry matched ("0 flow entries have been deleted"); that is
    success here, since the usual case is that there was nothing to clean up.
    """
    if proto not in ("tcp", "udp"):
        raise ValueError(f"unsupported protocol {proto!r}")
    # conntrack reads IPv4 entries unless told otherwise, even when only ports are given.
    args = [CONNTRACK, "-D", "-f", "ipv6" if family == 6 else "ipv4", "-p", proto]
    if orig_dst is not None:
        args += ["--orig-dst", orig_dst]
    if orig_port_dst is not None:
        args += ["--orig-port-dst", str(orig_port_dst)]
    if reply_src is not None:
        args += ["--reply-src", reply_src]
    if reply_port_src is not None:
        args += ["--reply-port-src", str(reply_port_src)]
    if len(args) == 6:
        raise ValueError("refusing to delete every conntrack entry of a protocol")
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise ConntrackError(
            "conntrack not found: install conntrack-tools (`apt-get install conntrack`)"
        ) from None
    out, err = await proc.communicate()
    text = (out + err).decode(errors="replace")
    m = _DELETED_RE.search(text)
    if m is not None and (proc.returncode == 0 or m.group(1) == "0"):
        return int(m.group(1))
    one_line = " ".join(text.split()) or f"exit code {proc.returncode}"
    raise ConntrackError(f"{' '.join(args)} failed: {one_line}")
