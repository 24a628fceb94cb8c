"""lbctl.dataplane.netlink's own link dump against the real kernel: a namespace of this
test's own with one veth pair across it, as a container's."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lbctl.dataplane import netns
from lbctl.dataplane.netlink import link_peers

pytestmark = [pytest.mark.kernel]


def test_link_peers_names_the_veth_end_inside_and_its_peer_outside() -> None:
    tag = os.getpid() % 100_000
    name, outer, inner = f"lbctl-nltest-{tag}", f"lbnl{tag}o", f"lbnl{tag}i"
    subprocess.run(["ip", "netns", "add", name], check=True)
    holder = None
    try:
        subprocess.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner,
                        "netns", name], check=True)
        holder = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
        links = json.loads(subprocess.run(["ip", "-n", name, "-j", "link", "show"],
                                          capture_output=True, text=True, check=True).stdout)
        inner_index = next(int(link["ifindex"]) for link in links if link["ifname"] == inner)
        outer_index = int(Path(f"/sys/class/net/{outer}/ifindex").read_text())

        def inside() -> list[tuple[int, int]]:
            assert holder is not None
            with netns.inside(holder.pid):
                return link_peers()

        with ThreadPoolExecutor(1) as pool:  # setns moves only the calling thread
            assert pool.submit(inside).result() == [(inner_index, outer_index)]  # not lo
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
