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

from lbctl.dataplane import nlmsg


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
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_IFLA_LINK, _IFLA_LINK_NETNSID = 5, 37
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_BUF = 1 << 16  # the kernel fills a dump's messages up to 32 KB


def link_peers() -> list[tuple[int, int]]:
    """(index, IFLA_LINK) of every link of the calling thread's network namespace whose
    peer is in another namespace (IFLA_LINK_NETNSID present): a container's veth ends."""
    out: list[tuple[int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       _NETLINK_ROUTE) as s:
        s.bind((0, 0))
        seq = 1
        s.send(nlmsg.HDR.pack(nlmsg.HDR.size + _IFINFO.size, _RTM_GETLINK,
                              nlmsg.F_REQUEST | nlmsg.F_DUMP, seq, 0)
               + _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        for kind, mseq, data, body, end in nlmsg.received(s, _BUF, "link dump"):
            if mseq != seq:
                continue
            if kind == nlmsg.DONE:
                return out
            if kind == nlmsg.ERROR:
                err = nlmsg.error(data, body)
                if err:
                    raise OSError(err, "netlink link dump")
            elif kind == _RTM_NEWLINK:
                index = _IFINFO.unpack_from(data, body)[2]
                found = nlmsg.attrs(data, body + _IFINFO.size, end)
                at = found.get(_IFLA_LINK)
                link = struct.unpack_from("=I", data, at[0])[0] if at else 0
                if link and _IFLA_LINK_NETNSID in found:
                    out.append((index, link))
    return out  # not reached: received() ends only with the dump
