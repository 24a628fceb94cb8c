"""The netlink lbctl speaks: pyroute2's sock_diag socket, loaded without the
rest of pyroute2, and a link dump of its own.

Why: `import pyroute2` (and so any `from pyroute2.x import y`, which runs the package's
__init__ first) imports every family pyroute2 supports: IPDB, NDB with sqlite3, an IPRoute
mock built on unittest.mock, wireless, devlink, ... 190 modules and 10 MB of the daemon's
RSS, for the two sockets it uses. Here the package is registered bare (its submodules import
as usual, its __init__ does not run) unless something imported it already; the first access
to a name the bare package lacks (`from pyroute2 import IPRoute` in other code of the same
process: tests, the bench) runs the real __init__ then, so nothing else sees a difference.

IPRoute alone would pull most of that back (3.7 MB), for one dump of links: `link_peers`
asks RTM_GETLINK itself and reads the two attributes it needs.
"""

from __future__ import annotations

import importlib.util
import socket
import struct
import sys
from typing import Any


def _bare_pyroute2() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed: the imports below fail as they would anyway
    pkg = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            # a submodule (`from pyroute2 import config` in pyroute2's own code): just it
            return importlib.import_module(f"pyroute2.{name}")
        del pkg.__dict__["__getattr__"]
        loader.exec_module(pkg)  # the real __init__, reusing the submodules loaded so far
        return getattr(pkg, name)

    pkg.__dict__["__getattr__"] = complete
    sys.modules["pyroute2"] = pkg


_bare_pyroute2()

from pyroute2.netlink.diag import DiagSocket  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["DiagSocket", "NetlinkError", "link_peers"]

_NETLINK_ROUTE = 0
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFLA_LINK, _IFLA_LINK_NETNSID = 5, 37
_NLA_TYPE_MASK = 0x3FFF
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_RTA = struct.Struct("=HH")
_BUF = 1 << 16  # the kernel fills a dump's messages up to 32 KB


def _align(n: int) -> int:
    return (n + 3) & ~3


def link_peers() -> list[tuple[int, int]]:
    """(index, IFLA_LINK) of every link of the calling thread's network namespace whose
    peer is in another namespace (IFLA_LINK_NETNSID present): a container's veth ends."""
    out: list[tuple[int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       _NETLINK_ROUTE) as s:
        s.bind((0, 0))
        seq = 1
        s.send(_HDR.pack(_HDR.size + _IFINFO.size, _RTM_GETLINK, _NLM_F_REQUEST | _NLM_F_DUMP,
                         seq, 0) + _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        while True:
            data, _, flags, _ = s.recvmsg(_BUF)
            if flags & socket.MSG_TRUNC:
                raise OSError("netlink link dump: message larger than the receive buffer")
            off = 0
            while off + _HDR.size <= len(data):
                length, kind, _, mseq, _ = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    raise OSError("netlink link dump: malformed message")
                body = off + _HDR.size
                if mseq == seq:
                    if kind == _NLMSG_DONE:
                        return out
                    if kind == _NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, body)
                        if err:
                            raise OSError(-err, "netlink link dump")
                    elif kind == _RTM_NEWLINK:
                        index = _IFINFO.unpack_from(data, body)[2]
                        link, netnsid = _link_attrs(data, body + _IFINFO.size, off + length)
                        if link and netnsid:
                            out.append((index, link))
                off += _align(length)


def _link_attrs(data: bytes, start: int, end: int) -> tuple[int, bool]:
    link, netnsid = 0, False
    pos = start
    while pos + _RTA.size <= end:
        rlen, rtype = _RTA.unpack_from(data, pos)
        if rlen < _RTA.size:
            break
        rtype &= _NLA_TYPE_MASK
        if rtype == _IFLA_LINK:
            (link,) = struct.unpack_from("=I", data, pos + _RTA.size)
        elif rtype == _IFLA_LINK_NETNSID:
            netnsid = True
        pos += _align(rlen)
    return link, netnsid
