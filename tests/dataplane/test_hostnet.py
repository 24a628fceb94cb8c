"""What lbctl reads of the host's network stack, from /proc texts given here (pure)."""

# ruff: noqa: E501  (/proc lines are kept as the kernel writes them)

from __future__ import annotations

from pathlib import Path

from lbctl.dataplane.hostnet import ipv6_settled, ipv6_unavailable_reason, parse_routes

ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
lbctl0\t0050A8C0\t00000000\t0001\t0\t0\t0\t00F0FFFF\t0\t0\t0
"""
ROUTE6 = """\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
fdd1df731e2d00000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001   lbctl0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001   lbctl0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
fdd1df731e2d00000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001   lbctl0
"""


def test_connected_networks_of_each_interface() -> None:
    assert parse_routes(ROUTE, 4) == {
        "docker0": ["172.17.0.0/16"], "eth0": ["192.0.2.0/24"], "lbctl0": ["192.168.80.0/20"],
    }
    # Link-local, multicast, host and default routes are not a bridge's network.
    assert parse_routes(ROUTE6, 6) == {"eth0": ["fd00::/64"], "lbctl0": ["fdd1:df73:1e2d::/64"]}


def test_ipv6_settled_reads_tentative_addresses(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    inet6 = tmp_path / "net/if_inet6"
    inet6.write_text("fdd1df731e2d00000000000000000001 07 40 00 c0   lbctl0\n"
                     "fe800000000000000000000000000001 07 40 20 80   lbctl0\n")
    assert not ipv6_settled("lbctl0", tmp_path)
    assert ipv6_settled("docker0", tmp_path) and ipv6_settled(None, tmp_path)
    inet6.write_text("fdd1df731e2d00000000000000000001 07 40 00 80   lbctl0\n")
    assert ipv6_settled("lbctl0", tmp_path)


def test_ipv6_unavailable_reasons(tmp_path: Path) -> None:
    assert "no IPv6" in (ipv6_unavailable_reason(tmp_path) or "")
    (tmp_path / "net").mkdir()
    (tmp_path / "net/if_inet6").write_text("")
    conf = tmp_path / "sys/net/ipv6/conf/all"
    conf.mkdir(parents=True)
    (conf / "disable_ipv6").write_text("1\n")
    assert "disable_ipv6=1" in (ipv6_unavailable_reason(tmp_path) or "")
    (conf / "disable_ipv6").write_text("0\n")
    assert ipv6_unavailable_reason(tmp_path) is None  # ip6tables-restore is installed here
