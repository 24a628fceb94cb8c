"""The iptables renderer and the iptables-save parser, pure: exact text, no kernel needed.

Expected rulesets are written out literally on purpose: they are what `iptables-restore`
will see, and a reviewer should be able to read them as such.
"""

# ruff: noqa: E501  (expected rulesets are written one iptables line per source line)
from __future__ import annotations

import pytest

from lbctl.dataplane.iptables.chains import MAX_CHAIN_LEN, svc_chain
from lbctl.dataplane.iptables.family import IPV4, IPV6, for_family, localnet_bridges
from lbctl.dataplane.iptables.restore import render
from lbctl.dataplane.iptables.rules import render_chains, wanted_chains
from lbctl.dataplane.iptables.save import dnat_counters, dnat_endpoints, parse_save
from lbctl.model import Publish
from lbctl.model.dataplane import Backend, Service

WEB = "LBCTL-SVC-JNPFP5XLF5BLSA43"  # svc_chain("web")
DNS = "LBCTL-SVC-3V22TVX3GCOEHGP6"  # svc_chain("dns")


def backends(n: int, port: int = 80) -> tuple[Backend, ...]:
    return tuple(Backend(f"web-{i}", f"172.17.0.{i + 2}", port) for i in range(n))


def web(n: int, host_ip: str = "127.0.0.1") -> Service:
    return Service("web", Publish(host_ip, 8080, 80), backends(n), ("docker0",))


def test_chain_names_are_short_stable_hashes() -> None:
    assert svc_chain("web") == WEB
    assert svc_chain("dns") == DNS
    longest = svc_chain("a" * 20)
    assert len(longest) <= MAX_CHAIN_LEN
    assert longest == "LBCTL-SVC-IJES3IDCGSWQVR3P"


def test_nothing_to_do_renders_nothing() -> None:
    assert render([]) == ""


def test_zero_backends_rejects_and_has_no_dnat() -> None:
    gone = Service("web", Publish("127.0.0.1", 8080, 80), (), ())
    assert render([gone]) == (
        "*nat\n"
        ":LBCTL-PREROUTING - [0:0]\n"
        ":LBCTL-OUTPUT - [0:0]\n"
        ":LBCTL-POSTROUTING - [0:0]\n"
        "COMMIT\n"
        "*filter\n"
        ":LBCTL-FORWARD - [0:0]\n"
        ":LBCTL-INPUT - [0:0]\n"
        '-A LBCTL-INPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 8080 -m comment --comment "web has no replicas" -j REJECT --reject-with tcp-reset\n'
        "COMMIT\n"
        "*raw\n"
        ":LBCTL-HOLD-PREROUTING - [0:0]\n"
        ":LBCTL-HOLD-OUTPUT - [0:0]\n"
        "COMMIT\n"
    )
    # No backends and no draining container: no bridge needs route_localnet.
    assert localnet_bridges([gone]) == frozenset()
    # A deleted app whose replicas on docker0 still drain 127.0.0.1 clients' connections:
    # route_localnet (and its guard) stay until the last drain ends.
    assert localnet_bridges([web(0)]) == frozenset({"docker0"})
    assert "route_localnet guard for docker0" in render([web(0)])


def test_one_backend_is_unconditional() -> None:
    assert render([web(1)]) == (
        "*nat\n"
        ":LBCTL-PREROUTING - [0:0]\n"
        ":LBCTL-OUTPUT - [0:0]\n"
        ":LBCTL-POSTROUTING - [0:0]\n"
        f":{WEB} - [0:0]\n"
        f'-A LBCTL-OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 8080 -m comment --comment "web" -j {WEB}\n'
        '-A LBCTL-POSTROUTING -s 127.0.0.0/8 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -m comment --comment "web/web-0 loopback client" -j MASQUERADE\n'
        f'-A {WEB} -m comment --comment "web/web-0" -p tcp -j DNAT --to-destination 172.17.0.2:80\n'
        "COMMIT\n"
        "*filter\n"
        ":LBCTL-FORWARD - [0:0]\n"
        ":LBCTL-INPUT - [0:0]\n"
        '-A LBCTL-INPUT -i docker0 -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment "route_localnet guard for docker0" -j DROP\n'
        "COMMIT\n"
        "*raw\n"
        ":LBCTL-HOLD-PREROUTING - [0:0]\n"
        ":LBCTL-HOLD-OUTPUT - [0:0]\n"
        "COMMIT\n"
    )
    assert localnet_bridges([web(1)]) == frozenset({"docker0"})


def test_backends_on_two_bridges_get_route_localnet_and_a_guard_on_each() -> None:
    # lbctl's own replica on docker0 beside a container docker-compose started on its
    # project's bridge (adopted): loopback clients are DNATed to both, so both need it.
    mixed = Service(
        "web", Publish("127.0.0.1", 8080, 80),
        (Backend("web-1", "172.17.0.2", 80), Backend("proj_web_1", "172.20.0.2", 80)),
        ("br-0123456789ab", "docker0"),
    )
    assert localnet_bridges([mixed]) == frozenset({"docker0", "br-0123456789ab"})
    text = render([mixed])
    for bridge in ("br-0123456789ab", "docker0"):
        assert (
            f"-A LBCTL-INPUT -i {bridge} -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate "
            f'RELATED,ESTABLISHED,DNAT -m comment --comment "route_localnet guard for {bridge}" '
            "-j DROP\n"
        ) in text
    # Remote-only publishing needs route_localnet on neither.
    remote = Service("web", Publish("192.0.2.2", 8080, 80), mixed.backends, mixed.bridges)
    assert localnet_bridges([remote]) == frozenset()


def test_two_backends_half_then_rest() -> None:
    text = render([web(2)])
    assert (
        f'-A {WEB} -m comment --comment "web/web-0" -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 172.17.0.2:80\n'
        f'-A {WEB} -m comment --comment "web/web-1" -p tcp -j DNAT --to-destination 172.17.0.3:80\n'
        "COMMIT\n"
    ) in text
    assert text.count("MASQUERADE") == 2


def test_five_backends_on_all_addresses() -> None:
    # 0.0.0.0 is reachable from containers too: each backend gets its hairpin MASQUERADE.
    assert render([web(5, "0.0.0.0")]) == (
        "*nat\n"
        ":LBCTL-PREROUTING - [0:0]\n"
        ":LBCTL-OUTPUT - [0:0]\n"
        ":LBCTL-POSTROUTING - [0:0]\n"
        f":{WEB} - [0:0]\n"
        f'-A LBCTL-PREROUTING -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 8080 -m comment --comment "web" -j {WEB}\n'
        f'-A LBCTL-OUTPUT -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 8080 -m comment --comment "web" -j {WEB}\n'
        '-A LBCTL-POSTROUTING -s 127.0.0.0/8 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -m comment --comment "web/web-0 loopback client" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment "web/web-0 hairpin" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 127.0.0.0/8 -d 172.17.0.3/32 -p tcp -m tcp --dport 80 -m comment --comment "web/web-1 loopback client" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 172.17.0.3/32 -d 172.17.0.3/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment "web/web-1 hairpin" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 127.0.0.0/8 -d 172.17.0.4/32 -p tcp -m tcp --dport 80 -m comment --comment "web/web-2 loopback client" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 172.17.0.4/32 -d 172.17.0.4/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment "web/web-2 hairpin" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 127.0.0.0/8 -d 172.17.0.5/32 -p tcp -m tcp --dport 80 -m comment --comment "web/web-3 loopback client" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 172.17.0.5/32 -d 172.17.0.5/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment "web/web-3 hairpin" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 127.0.0.0/8 -d 172.17.0.6/32 -p tcp -m tcp --dport 80 -m comment --comment "web/web-4 loopback client" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s 172.17.0.6/32 -d 172.17.0.6/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment "web/web-4 hairpin" -j MASQUERADE\n'
        f'-A {WEB} -m comment --comment "web/web-0" -p tcp -m statistic --mode random --probability 0.2000000000 -j DNAT --to-destination 172.17.0.2:80\n'
        f'-A {WEB} -m comment --comment "web/web-1" -p tcp -m statistic --mode random --probability 0.2500000000 -j DNAT --to-destination 172.17.0.3:80\n'
        f'-A {WEB} -m comment --comment "web/web-2" -p tcp -m statistic --mode random --probability 0.3333333333 -j DNAT --to-destination 172.17.0.4:80\n'
        f'-A {WEB} -m comment --comment "web/web-3" -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 172.17.0.5:80\n'
        f'-A {WEB} -m comment --comment "web/web-4" -p tcp -j DNAT --to-destination 172.17.0.6:80\n'
        "COMMIT\n"
        "*filter\n"
        ":LBCTL-FORWARD - [0:0]\n"
        ":LBCTL-INPUT - [0:0]\n"
        '-A LBCTL-FORWARD -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment "web/web-0" -j ACCEPT\n'
        '-A LBCTL-FORWARD -s 172.17.0.2/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir REPLY -m comment --comment "web/web-0 replies" -j ACCEPT\n'
        '-A LBCTL-FORWARD -d 172.17.0.3/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment "web/web-1" -j ACCEPT\n'
        '-A LBCTL-FORWARD -s 172.17.0.3/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir REPLY -m comment --comment "web/web-1 replies" -j ACCEPT\n'
        '-A LBCTL-FORWARD -d 172.17.0.4/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment "web/web-2" -j ACCEPT\n'
        '-A LBCTL-FORWARD -s 172.17.0.4/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir REPLY -m comment --comment "web/web-2 replies" -j ACCEPT\n'
        '-A LBCTL-FORWARD -d 172.17.0.5/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment "web/web-3" -j ACCEPT\n'
        '-A LBCTL-FORWARD -s 172.17.0.5/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir REPLY -m comment --comment "web/web-3 replies" -j ACCEPT\n'
        '-A LBCTL-FORWARD -d 172.17.0.6/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment "web/web-4" -j ACCEPT\n'
        '-A LBCTL-FORWARD -s 172.17.0.6/32 -p tcp -m tcp --sport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir REPLY -m comment --comment "web/web-4 replies" -j ACCEPT\n'
        '-A LBCTL-INPUT -i docker0 -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment "route_localnet guard for docker0" -j DROP\n'
        "COMMIT\n"
        "*raw\n"
        ":LBCTL-HOLD-PREROUTING - [0:0]\n"
        ":LBCTL-HOLD-OUTPUT - [0:0]\n"
        "COMMIT\n"
    )


def test_specific_host_ip_udp_is_remote_only() -> None:
    # A non-loopback address: PREROUTING + FORWARD, no route_localnet, and only the hairpin
    # MASQUERADE (the backend reaching its own service).
    dns = Service(
        "dns", Publish("192.0.2.2", 53, 5353, "udp"), (Backend("dns-0", "10.1.0.5", 5353),), ("br-x",)
    )
    assert localnet_bridges([dns]) == frozenset()
    assert render([dns]) == (
        "*nat\n"
        ":LBCTL-PREROUTING - [0:0]\n"
        ":LBCTL-OUTPUT - [0:0]\n"
        ":LBCTL-POSTROUTING - [0:0]\n"
        f":{DNS} - [0:0]\n"
        f'-A LBCTL-PREROUTING -d 192.0.2.2/32 -p udp -m udp --dport 53 -m comment --comment "dns" -j {DNS}\n'
        f'-A LBCTL-OUTPUT -d 192.0.2.2/32 -p udp -m udp --dport 53 -m comment --comment "dns" -j {DNS}\n'
        '-A LBCTL-POSTROUTING -s 10.1.0.5/32 -d 10.1.0.5/32 -p udp -m udp --dport 5353 -m conntrack --ctstate DNAT --ctorigdstport 53 -m comment --comment "dns/dns-0 hairpin" -j MASQUERADE\n'
        f'-A {DNS} -m comment --comment "dns/dns-0" -p udp -j DNAT --to-destination 10.1.0.5:5353\n'
        "COMMIT\n"
        "*filter\n"
        ":LBCTL-FORWARD - [0:0]\n"
        ":LBCTL-INPUT - [0:0]\n"
        '-A LBCTL-FORWARD -d 10.1.0.5/32 -p udp -m udp --dport 5353 -m conntrack --ctstate DNAT --ctorigdst 192.0.2.2/32 --ctorigdstport 53 --ctdir ORIGINAL -m comment --comment "dns/dns-0" -j ACCEPT\n'
        '-A LBCTL-FORWARD -s 10.1.0.5/32 -p udp -m udp --sport 5353 -m conntrack --ctstate DNAT --ctorigdst 192.0.2.2/32 --ctorigdstport 53 --ctdir REPLY -m comment --comment "dns/dns-0 replies" -j ACCEPT\n'
        "COMMIT\n"
        "*raw\n"
        ":LBCTL-HOLD-PREROUTING - [0:0]\n"
        ":LBCTL-HOLD-OUTPUT - [0:0]\n"
        "COMMIT\n"
    )


def test_udp_zero_backends_port_unreachable() -> None:
    dns = Service("dns", Publish("0.0.0.0", 53, 53, "udp"), (), ())
    assert (
        '-A LBCTL-INPUT -p udp -m udp --dport 53 -m comment --comment "dns has no replicas" -j REJECT --reject-with icmp-port-unreachable\n'
    ) in render([dns])


def test_removal_flushes_and_deletes_stale_chains() -> None:
    stale = ["nat:LBCTL-PREROUTING", "nat:LBCTL-OUTPUT", "nat:LBCTL-POSTROUTING", f"nat:{WEB}",
             "filter:LBCTL-FORWARD", "filter:LBCTL-INPUT"]  # fmt: skip
    assert render([], stale) == (
        "*nat\n"
        ":LBCTL-PREROUTING - [0:0]\n"
        ":LBCTL-OUTPUT - [0:0]\n"
        ":LBCTL-POSTROUTING - [0:0]\n"
        f":{WEB} - [0:0]\n"
        "-X LBCTL-PREROUTING\n"
        "-X LBCTL-OUTPUT\n"
        "-X LBCTL-POSTROUTING\n"
        f"-X {WEB}\n"
        "COMMIT\n"
        "*filter\n"
        ":LBCTL-FORWARD - [0:0]\n"
        ":LBCTL-INPUT - [0:0]\n"
        "-X LBCTL-FORWARD\n"
        "-X LBCTL-INPUT\n"
        "COMMIT\n"
    )


def test_scale_down_deletes_only_the_stale_service_chain() -> None:
    old = svc_chain("old")
    # Bare names are placed by the naming scheme; wanted chains listed as stale are ignored.
    text = render([web(1)], [old, "filter:LBCTL-INPUT", WEB])
    assert f":{old} - [0:0]\n" in text
    assert text.count(f"-X {old}\n") == 1
    assert "-X" not in text.replace(f"-X {old}\n", "")
    nat, filt = text.split("*filter\n")
    assert old in nat and old not in filt


def test_refuses_foreign_chains() -> None:
    with pytest.raises(ValueError, match="foreign"):
        render([], ["filter:DOCKER-USER"])
    with pytest.raises(ValueError, match="duplicate"):
        render([web(1), web(2)])


def test_counters_carried_over() -> None:
    text = render([web(2)], counters={("web", "web-1"): (7, 420), ("gone", "gone-0"): (1, 60)})
    assert (
        f'[7:420] -A {WEB} -m comment --comment "web/web-1" -p tcp -j DNAT --to-destination 172.17.0.3:80\n'
    ) in text
    assert f'-A {WEB} -m comment --comment "web/web-0" -p tcp -m statistic' in text
    assert "gone" not in text


def test_wanted_chains() -> None:
    assert wanted_chains([]) == set()
    assert ("nat", WEB) in wanted_chains([web(1)])
    assert ("nat", WEB) not in wanted_chains([web(0)])
    assert ("filter", "LBCTL-FORWARD") in wanted_chains([web(0)])


SAVE = """\
# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 05:05:09 2026
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:DOCKER - [0:0]
:LBCTL-OUTPUT - [0:0]
:LBCTL-SVC-JNPFP5XLF5BLSA43 - [0:0]
:LBCTL-SVC-3V22TVX3GCOEHGP6 - [0:0]
[0:0] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
[12:720] -A OUTPUT -m comment --comment lbctl -j LBCTL-OUTPUT
[12:720] -A LBCTL-OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 8080 -m comment --comment web -j LBCTL-SVC-JNPFP5XLF5BLSA43
[5:300] -A LBCTL-SVC-JNPFP5XLF5BLSA43 -p tcp -m comment --comment web/web-0 -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 172.17.0.2:80
[7:420] -A LBCTL-SVC-JNPFP5XLF5BLSA43 -p tcp -m comment --comment web/web-1 -j DNAT --to-destination 172.17.0.3:80
[2:90] -A LBCTL-SVC-3V22TVX3GCOEHGP6 -p udp -m comment --comment "dns/dns-0" -j DNAT --to-destination 10.1.0.5:5353
COMMIT
# Completed on Sun Nov 22 05:05:09 2026
*filter
:INPUT ACCEPT [0:0]
:LBCTL-INPUT - [0:0]
-A INPUT -m comment --comment "lbctl" -j LBCTL-INPUT
COMMIT
"""


def test_parse_save() -> None:
    saved = parse_save(SAVE)
    assert saved["nat"].chains == [
        "PREROUTING", "OUTPUT", "DOCKER", "LBCTL-OUTPUT", WEB, DNS,
    ]  # fmt: skip
    jump = saved["filter"].rules[0]
    assert (jump.chain, jump.target, jump.packets) == ("INPUT", "LBCTL-INPUT", 0)
    assert jump.args == ("-m", "comment", "--comment", "lbctl", "-j", "LBCTL-INPUT")
    assert dnat_counters(saved) == {
        ("web", "web-0"): (5, 300),
        ("web", "web-1"): (7, 420),
        ("dns", "dns-0"): (2, 90),
    }
    assert dnat_endpoints(saved, "udp") == {("10.1.0.5", 5353)}
    assert dnat_endpoints(saved, "tcp") == {("172.17.0.2", 80), ("172.17.0.3", 80)}


def test_unchanged_chains_are_left_out() -> None:
    chains = render_chains([web(2)])
    assert chains[("nat", WEB)] == [
        f'-A {WEB} -m comment --comment "web/web-0" -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 172.17.0.2:80',
        f'-A {WEB} -m comment --comment "web/web-1" -p tcp -j DNAT --to-destination 172.17.0.3:80',
    ]
    # Everything unchanged: nothing to write at all.
    assert render([web(2)], unchanged=set(chains)) == ""
    # Only the service chain changed (a backend replaced): only it is re-declared.
    moved = Service("web", web(2).publish, (backends(2)[0], Backend("web-1", "172.17.0.9", 80)), ("docker0",))
    text = render([moved], unchanged={("nat", WEB), ("filter", "LBCTL-INPUT")})
    assert f":{WEB} - [0:0]" not in text
    assert ":LBCTL-INPUT" not in text
    assert ":LBCTL-POSTROUTING - [0:0]" in text and ":LBCTL-FORWARD - [0:0]" in text


def dual(*pubs: str, n: int = 2) -> Service:
    """web on both families: backends with an IPv4 and an IPv6 address."""
    first, *rest = (Publish.parse(p) for p in pubs)
    bs = tuple(Backend(f"web-{i}", f"172.30.0.{i + 2}", 80, ip6=f"fd00:1::{i + 2}")
               for i in range(n))
    return Service("web", first, bs, ("lbctl0",), tuple(rest))


def test_for_family_splits_publishes_and_addresses() -> None:
    svc = dual("0.0.0.0:8080:80", "127.0.0.1:9090:80", "[::]:8080:80")
    (v4,) = for_family([svc], IPV4)
    assert v4.publishes == (Publish("0.0.0.0", 8080, 80), Publish("127.0.0.1", 9090, 80))
    assert [b.ip for b in v4.backends] == ["172.30.0.2", "172.30.0.3"]
    (v6,) = for_family([svc], IPV6)
    assert v6.publishes == (Publish("::", 8080, 80),)
    assert [(b.name, b.ip, b.ip6) for b in v6.backends] == [
        ("web-0", "fd00:1::2", None), ("web-1", "fd00:1::3", None)]
    # No IPv6 publish: nothing in ip6tables. A backend without IPv6 is no IPv6 backend.
    assert for_family([web(2)], IPV6) == []
    mixed = Service("web", Publish("::", 80, 80), (Backend("a", "172.17.0.2", 80),), ("docker0",))
    assert for_family([mixed], IPV6)[0].backends == ()


def test_ipv6_wildcard_never_nats_loopback() -> None:
    (v6,) = for_family([dual("[::]:8080:80")], IPV6)
    text = render([v6], family=IPV6)
    assert (
        '-A LBCTL-PREROUTING -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 8080 -m comment --comment "web" -j ' + WEB + "\n"
        '-A LBCTL-OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 8080 -m comment --comment "web" -j ' + WEB + "\n"
        '-A LBCTL-POSTROUTING -m addrtype --src-type LOCAL -d fd00:1::2/128 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -m comment --comment "web/web-0 local client" -j MASQUERADE\n'
        '-A LBCTL-POSTROUTING -s fd00:1::2/128 -d fd00:1::2/128 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment "web/web-0 hairpin" -j MASQUERADE\n'
    ) in text
    assert f'-A {WEB} -m comment --comment "web/web-1" -p tcp -j DNAT --to-destination [fd00:1::3]:80\n' in text
    assert "-A LBCTL-FORWARD -d fd00:1::3/128 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir ORIGINAL" in text
    # No route_localnet and no guard for it in IPv6, no 127.0.0.0/8 anywhere.
    assert "127.0.0.0" not in text and "route_localnet" not in text


def test_ipv6_loopback_publish_gets_no_nat_rule() -> None:
    (v6,) = for_family([dual("[::1]:8080:80")], IPV6)
    text = render([v6], family=IPV6)
    assert "-A LBCTL-OUTPUT" not in text and "-A LBCTL-PREROUTING" not in text
    assert "hairpin" not in text and "-A LBCTL-FORWARD" not in text
    empty = Service("web", Publish("::1", 8080, 80, "udp"), (), ())
    assert (
        '-A LBCTL-INPUT -d ::1/128 -p udp -m udp --dport 8080 -m comment --comment "web has no replicas" -j REJECT --reject-with icmp6-port-unreachable\n'
    ) in render([empty], family=IPV6)


def test_several_publishes_share_one_service_chain() -> None:
    (v4,) = for_family([dual("127.0.0.1:8080:80", "192.0.2.2:80:80")], IPV4)
    text = render([v4])
    assert text.count(f"-j {WEB}\n") == 3  # OUTPUT x2, PREROUTING for the remote one only
    assert f'-A LBCTL-PREROUTING -d 192.0.2.2/32 -p tcp -m tcp --dport 80 -m comment --comment "web" -j {WEB}' in text
    assert text.count("DNAT --to-destination") == 2  # one per backend, whatever the publishes
    assert text.count("loopback client") == 2 and text.count("hairpin") == 2
    assert "--ctorigdst 192.0.2.2/32 --ctorigdstport 80 --ctdir ORIGINAL" in text
    assert localnet_bridges([v4]) == frozenset({"lbctl0"})


def test_same_bridge_clients_masqueraded_only_where_bridging_skips_netfilter() -> None:
    (v4,) = for_family([dual("0.0.0.0:8080:80")], IPV4)
    nets = {"lbctl0": ["172.30.0.0/16"], "docker0": ["172.17.0.0/16"]}
    text = render([v4], bridge_nets=nets)
    assert text.count("--physdev-is-bridged") == 1
    assert (
        "-A LBCTL-POSTROUTING -s 172.30.0.0/16 -d 172.30.0.0/16 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -m physdev ! --physdev-is-bridged -m comment --comment \"web clients on lbctl0\" -j MASQUERADE\n"
    ) in text
    # Loopback-only publishes are out of containers' reach: no hairpin of any kind.
    (lo,) = for_family([dual("127.0.0.1:8080:80")], IPV4)
    text = render([lo], bridge_nets=nets)
    assert "physdev" not in text and "hairpin" not in text


def test_ipv6_endpoints_parse_back() -> None:
    saved = parse_save(
        "*nat\n:LBCTL-SVC-JNPFP5XLF5BLSA43 - [0:0]\n"
        '[3:180] -A LBCTL-SVC-JNPFP5XLF5BLSA43 -p udp -m comment --comment "web/web-0" -j DNAT --to-destination [fd00:1::2]:53\n'
        "COMMIT\n"
    )
    assert dnat_endpoints(saved, "udp") == {("fd00:1::2", 53)}
    assert dnat_counters(saved) == {("web", "web-0"): (3, 180)}
