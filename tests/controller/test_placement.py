"""Where an app's DNAT targets live and what the rules send to them (pure: no engine)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from lbctl.controller import backends, hostrules, template
from lbctl.controller.planner import AppPlan
from lbctl.controller.readiness.answers import Questions
from lbctl.controller.readiness.outcome import Failure
from lbctl.model import AppSpec, Container
from lbctl.model.dataplane import Backend
from lbctl.runtime.convert import to_container
from lbctl.settings import WorkerSettings

SANDBOX = WorkerSettings().sandbox_image


def spec(mode: str, *publish: str) -> AppSpec:
    return AppSpec.from_json({"name": "web", "image": "x", "publish": list(publish),
                              "mode": mode, "replicas": 2})


def container(name: str, ip: str, ip6: str | None, role: str = "replica") -> Container:
    return Container(f"id-{name}", name, "web", role, True, 1, True, None, ip, 10, 0.0,
                     bridge="lbctl0", ip6=ip6)


def test_only_ipv6_apps_without_networks_move_to_lbctls_network() -> None:
    v4 = spec("iptables", "0.0.0.0:80:8080")
    dual = spec("iptables", "0.0.0.0:80:8080", "[::]:80:8080")
    assert template.attachment(v4) == template.Attachment(("bridge",), None, ())
    assert template.attachment(dual) == template.Attachment(("lbctl",), "lbctl", (), own=True)
    req = template.replica_request(dual, 1, "h", 1, None, None)
    assert tuple(req.networks) == ("lbctl",) and req.labels["lbctl.network"] == "lbctl"
    assert tuple(template.replica_request(v4, 1, "h", 1, None, None).networks) == ("bridge",)
    ebpf = spec("ebpf", "[::]:80:8080")
    # ebpf mode: the sandbox holds the namespace; replicas join it and need no network.
    assert tuple(template.sandbox_request(ebpf, SANDBOX).networks) == ("lbctl",)
    assert not template.replica_request(ebpf, 1, "h", 1, "sandbox-id", None).networks
    net = template.network_spec(template.ula_subnet("machine"))
    assert (net.name, net.bridge, net.labels, net.owned) == (
        "lbctl", "lbctl0", {"lbctl.managed": "true"}, True)


def test_named_networks_win_over_lbctls_own_for_both_families() -> None:
    """The user's first network is the DNAT target of every publish (admission makes sure it
    has IPv6 when one is IPv6); lbctl's network is never added beside it."""
    named = AppSpec.from_json({"name": "web", "image": "x", "mode": "iptables",
                               "publish": ["0.0.0.0:80:8080", "[::]:80:8080"],
                               "network": ["dual", "backend"]})
    assert template.attachment(named) == template.Attachment(
        ("dual", "backend"), "dual", ("web",))
    sb = template.sandbox_request(named.with_replicas(1), SANDBOX)
    assert tuple(sb.networks) == ("dual", "backend") and sb.labels["lbctl.network"] == "dual"


def test_ula_subnet_is_a_stable_unique_local_64() -> None:
    a, b = template.ula_subnet("host-a"), template.ula_subnet("host-b")
    assert a == template.ula_subnet("host-a") and a != b
    net = ipaddress.IPv6Network(a)
    assert net.prefixlen == 64 and net.subnet_of(ipaddress.IPv6Network("fd00::/8"))


def test_service_carries_both_addresses_and_every_publish() -> None:
    dual = spec("iptables", "0.0.0.0:80:8080", "[::]:80:8080")
    a, b = container("web-1", "172.30.0.2", "fd00::2"), container("web-2", "172.30.0.3", None)
    svc = backends.service(dual, AppPlan(backends=(a, b)))
    assert svc.backends == (Backend("web-1", "172.30.0.2", 8080, 1, "fd00::2"),
                            Backend("web-2", "172.30.0.3", 8080, 1, None))
    assert svc.publishes == dual.publishes and svc.bridges == ("lbctl0",)
    sb = container("web-sandbox", "172.30.0.9", "fd00::9", "sandbox")
    ebpf = spec("ebpf", "0.0.0.0:80:8080", "[::]:80:8080")
    # No replica ready: no DNAT to the sandbox (refused, as in iptables mode), since the
    # kernel's own choice among the listeners would pick one that is not ready.
    assert backends.service(ebpf, AppPlan(sandbox=sb)).backends == ()
    svc = backends.service(ebpf, AppPlan(sandbox=sb, backends=(a,)))
    assert svc.backends == (Backend("web-sandbox", "172.30.0.9", 8080, 1, "fd00::9"),)
    # What the daemon keeps in services.json comes back the same, and an older file (no
    # IPv6, no extra publishes) still reads.
    saved = hostrules._service_json(svc)
    assert hostrules._service(saved) == svc
    old = {"app": "web", "publish": "127.0.0.1:80:8080/tcp", "bridges": ["docker0"],
           "backends": [["web-1", "172.17.0.2", 8080, 1]]}
    assert hostrules._service(old).backends == (Backend("web-1", "172.17.0.2", 8080, 1),)


def test_engine_json_gives_the_ipv6_address_on_the_target_network() -> None:
    d: dict[str, Any] = {
        "Id": "abc", "Name": "/web-1", "State": {"Running": True, "Pid": 7},
        "Config": {"Labels": {"lbctl.app": "web"}},
        "NetworkSettings": {"Networks": {"lbctl": {
            "NetworkID": "n1", "IPAddress": "172.30.0.2", "GlobalIPv6Address": "fd00::2"}}},
    }
    c = to_container(d, "lbctl0")
    assert (c.ip, c.ip6, c.bridge) == ("172.30.0.2", "fd00::2", "lbctl0")
    d["NetworkSettings"]["Networks"]["lbctl"]["GlobalIPv6Address"] = ""
    assert to_container(d, "docker0").ip6 is None
    # Several networks: both addresses come from the one the lbctl.network label names,
    # whatever order the engine lists them in.
    d["Config"]["Labels"]["lbctl.network"] = "dual"
    d["NetworkSettings"]["Networks"] = {
        "backend": {"NetworkID": "n2", "IPAddress": "172.31.0.2",
                    "GlobalIPv6Address": "fd01::2"},
        "dual": {"NetworkID": "n3", "IPAddress": "172.32.0.2", "GlobalIPv6Address": "fd02::2"},
    }
    c = to_container(d, "br-x")
    assert (c.ip, c.ip6) == ("172.32.0.2", "fd02::2")


async def test_no_replica_of_an_ipv6_app_is_ready_while_its_bridge_is_tentative() -> None:
    dual = spec("iptables", "0.0.0.0:80:8080", "[::]:80:8080")
    c = container("web-1", "127.0.0.1", "::1")
    asked: list[str | None] = []

    def tentative(bridge: str | None) -> bool:
        asked.append(bridge)
        return False

    questions = Questions(None, tentative)
    answers = questions(dual, lambda m: None, {c.id: "lbctl0"})
    result = await answers(c)
    assert result.failure is Failure.UNSETTLED and asked == ["lbctl0"]
    # An IPv4-only app does not ask.
    v4 = spec("iptables", "127.0.0.1:80:8080")
    asked.clear()
    await questions(v4, lambda m: None, {})(c)
    assert asked == []


def test_ebpf_members_put_every_running_replica_in_the_socket_map() -> None:
    """Ready ones in the table; leaving ones draining; every other running replica of the
    app's namespace probing (in the map, no table), so probes reach it; none from a lost
    sandbox's namespace."""
    sb = container("web-sandbox", "172.30.0.9", None, "sandbox")

    def joined(name: str, ns: str = sb.id, running: bool = True) -> Container:
        return replace(container(name, "", None), joined_to=ns, pid=100 + int(name[-1]),
                       running=running)

    ready, leaving, starting, lost, dead = (joined("web-1"), joined("web-2"), joined("web-3"),
                                            joined("web-4", "gone"), joined("web-5",
                                                                            running=False))
    p = AppPlan(sandbox=sb, backends=(ready,))
    members = backends.ebpf_members(p, [ready, leaving, starting, lost, dead],
                                    frozenset({leaving.id}))
    assert [[m.name for m in ms] for ms in members] == [["web-1"], ["web-2"], ["web-3"]]
