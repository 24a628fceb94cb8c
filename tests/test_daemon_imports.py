"""What the daemon process imports: each module it does not need is resident memory for its
whole life (lbctl.malloc, lbctl.dataplane.netlink). A fresh interpreter, so that what other
tests imported does not count."""

from __future__ import annotations

import json
import subprocess
import sys

# bcc/LLVM belong to the short-lived loader process; the rest are what pyroute2's package
# __init__ and the compose reader used to pull in (10 MB of the daemon's RSS).
NEVER = ("bcc", "yaml", "pyroute2.ndb", "pyroute2.ipdb", "pyroute2.iproute", "unittest",
         "sqlite3", "matplotlib")


def test_the_daemon_imports_none_of_what_only_other_paths_need() -> None:
    code = ("import json, sys; import lbctl.cli, lbctl.daemon, lbctl.dataplane.hairpin; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = set(json.loads(out))
    # conntrack speaks ctnetlink by itself (lbctl.dataplane.ctnetlink); pyroute2's sock_diag
    # socket comes with the first replica's socket lookup (lbctl.dataplane.sockets)
    assert "lbctl.dataplane.ctnetlink" in loaded
    assert "pyroute2.netlink.nfnetlink.nfctsocket" not in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in NEVER or m in NEVER
                  or any(m.startswith(n + ".") for n in NEVER)) == []


def test_pyroute2_stays_whole_for_other_code_in_the_process() -> None:
    code = ("import lbctl.dataplane.netlink; from pyroute2 import IPRoute, NFCTSocket; "
            "from pyroute2.netlink.diag import DiagSocket; import pyroute2; "
            "print(IPRoute.__name__, DiagSocket is lbctl.dataplane.netlink.DiagSocket, "
            "hasattr(pyroute2, 'NDB'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["IPRoute", "True", "True"]
