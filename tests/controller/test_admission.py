"""Admission: publishes (clashes across every address an app publishes, IPv6 where the host
has none, host ports taken per family: real sockets on loopback) and docker run's options
(networks that exist and can carry the app's address in each family it publishes, CPUs the
engine has, the compose file's volumes and networks created only after every check passed).
A fake engine: this is the logic; tests/e2e runs it against the real one."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import pytest

from lbctl.controller.admission import Admission, Resources, check_port_free
from lbctl.model import AppSpec, InvalidInput
from lbctl.model.runtime import NetworkFacts, NetworkSpec


class FakeEngine:
    def __init__(self) -> None:
        self.networks = {"bridge": NetworkFacts("bridge", False),
                         "backend": NetworkFacts("bridge", False),
                         "dual": NetworkFacts("bridge", True),
                         "swarm": NetworkFacts("overlay", True)}
        self.volumes: set[str] = set()
        self.created: list[str] = []

    async def image_exists(self, image: str) -> bool:
        return True

    async def cpu_count(self) -> int | None:
        return 2

    async def network(self, name: str) -> NetworkFacts | None:
        return self.networks.get(name)

    async def ensure_network(self, spec: NetworkSpec) -> bool:
        if spec.name in self.networks:
            return False
        self.networks[spec.name] = NetworkFacts("bridge", spec.ipv6_subnet is not None,
                                                spec.labels.get("lbctl.managed") == "true")
        self.created.append(f"network {spec.name} {dict(spec.labels)}")
        return True

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        if name in self.volumes:
            return False
        self.volumes.add(name)
        self.created.append(f"volume {name}")
        return True


def spec(*publish: str, name: str = "web", **opts: Any) -> AppSpec:
    return AppSpec.from_json({"name": name, "image": "i",
                              "publish": list(publish) or "8080:8080", **opts})


def admission(engine: FakeEngine | None = None, ipv6: str | None = None) -> Admission:
    e: Any = engine or FakeEngine()
    return Admission(e, lambda: None, lambda: ipv6, port_check=lambda s: None)


# ---- publishes ---------------------------------------------------------------------------------

def test_a_clash_on_any_publish_is_refused() -> None:
    web = spec("127.0.0.1:8080:80", "[::]:8080:80")
    Admission.check_clashes([spec("0.0.0.0:8081:80", "[::]:8081:80", name="api")], [web])
    with pytest.raises(InvalidInput, match=r"port \[::1\]:8080/tcp is already published by"):
        Admission.check_clashes([spec("0.0.0.0:9000:80", "[::1]:8080:80", name="api")], [web])
    with pytest.raises(InvalidInput, match=r"0\.0\.0\.0:8080/tcp is already published by app"):
        Admission.check_clashes([spec("0.0.0.0:8080:80", name="api")], [web])


async def test_ipv6_refused_where_the_host_has_none_and_loopback_always() -> None:
    with pytest.raises(InvalidInput, match="cannot publish IPv6 on this host: no IPv6 here"):
        await admission(ipv6="no IPv6 here").check_new([spec("[::]:80:8080")], [], [])
    await admission(ipv6="no IPv6 here").check_new([spec("0.0.0.0:80:8080")], [], [])
    with pytest.raises(InvalidInput, match=r"does not NAT IPv6 loopback"):
        await admission().check_new([spec("[::1]:80:8080")], [], [])


def test_port_taken_per_family() -> None:
    with socket.socket(socket.AF_INET6) as held:
        held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        held.bind(("::1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(InvalidInput, match=rf"port \[::1\]:{port}/tcp is already in use"):
            check_port_free(spec(f"[::1]:{port}:80"))
        with pytest.raises(InvalidInput, match="already in use"):
            check_port_free(spec(f"127.0.0.1:{port + 1}:80", f"[::]:{port}:80"))
        # The IPv4 side of the same port number is free: an IPv6 listener does not take it.
        check_port_free(spec(f"127.0.0.1:{port}:80"))
    with pytest.raises(InvalidInput, match=r"2001:db8::7 in publish .* is not an address of"):
        check_port_free(spec("[2001:db8::7]:8080:80"))


def test_time_wait_is_free_and_a_listener_is_not() -> None:
    """A port that served short connections a moment ago (a redeploy) is free; a listener on
    it, started with SO_REUSEADDR as servers are, is not."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            conn.close()  # the server closes first: TIME_WAIT on its port
            assert client.recv(1) == b""
        with pytest.raises(InvalidInput, match=rf"127.0.0.1:{port}/tcp is already in use"):
            check_port_free(spec(f"127.0.0.1:{port}:80"))
        with pytest.raises(InvalidInput, match="already in use"):
            check_port_free(spec(f"0.0.0.0:{port}:80"))
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # TIME_WAIT is there: a bind without the option fails
    check_port_free(spec(f"127.0.0.1:{port}:80"))


# ---- docker run's options ----------------------------------------------------------------------

async def test_networks_must_exist_and_the_first_be_a_bridge() -> None:
    e = FakeEngine()
    a = admission(e)
    await a.check_new([spec(network=["backend", "swarm"])], [], [])  # later ones: any driver
    with pytest.raises(InvalidInput, match="network nope does not exist"):
        await a.check_new([spec(network=["nope"])], [], [])
    with pytest.raises(InvalidInput, match="swarm uses the overlay driver"):
        await a.check_new([spec(network=["swarm", "backend"])], [], [])
    # declared by the file: created as a bridge network once every check passed
    declared = Resources(networks={"proj_default": {"com.docker.compose.project": "proj"}},
                         volumes={"proj_data": {}})
    await a.check_new([spec(network=["proj_default"])], [], [], declared=declared)
    assert e.created == []  # checking creates nothing
    await a.create(declared)
    assert e.created == ["volume proj_data",
                         "network proj_default {'com.docker.compose.project': 'proj'}"]
    await a.create(declared)  # existing ones are left as they are
    assert len(e.created) == 2


async def test_an_ipv6_app_needs_ipv6_on_the_network_it_is_reached_on() -> None:
    e = FakeEngine()
    a = admission(e)
    dual = ("0.0.0.0:8080:8080", "[::]:8080:8080")
    # No network named: lbctl's own IPv6 network, nothing to check on the engine.
    await a.check_new([spec(*dual)], [], [])
    # The first named network is the DNAT target of both families; later ones do not matter.
    await a.check_new([spec(*dual, network=["dual", "backend"])], [], [])
    for first in ("backend", "bridge"):
        with pytest.raises(InvalidInput, match=rf"publishes IPv6 but its network {first} has no "
                                               "IPv6"):
            await a.check_new([spec(*dual, network=[first, "dual"])], [], [])
    # A declared network that does not exist yet is created without IPv6.
    declared = Resources(networks={"proj_default": {}})
    with pytest.raises(InvalidInput, match="proj_default has no IPv6"):
        await a.check_new([spec(*dual, network=["proj_default"])], [], [], declared=declared)
    # An IPv4-only app may use any bridge network.
    await a.check_new([spec("0.0.0.0:8080:8080", network=["backend"])], [], [])
    assert e.created == []


async def test_a_foreign_network_named_lbctl_is_refused_up_front() -> None:
    """lbctl's own IPv6 network exists already (from an earlier app): fine. Someone else's
    network of that name: refused at once, where the worker would only fail after the run's
    timeout; an app that names its own network, or publishes no IPv6, does not care."""
    e = FakeEngine()
    dual = ("0.0.0.0:8080:8080", "[::]:8080:8080")
    e.networks["lbctl"] = NetworkFacts("bridge", True, managed=True)
    await admission(e).check_new([spec(*dual)], [], [])
    e.networks["lbctl"] = NetworkFacts("bridge", True, managed=False)
    with pytest.raises(InvalidInput, match="a network of that name exists and is not lbctl's"):
        await admission(e).check_new([spec(*dual)], [], [])
    await admission(e).check_new([spec(*dual, network=["dual"])], [], [])
    await admission(e).check_new([spec("0.0.0.0:8080:8080")], [], [])


async def test_cpus_beyond_the_engine_host_are_refused() -> None:
    a = admission(FakeEngine())
    await a.check_new([spec(cpus=2)], [], [])
    with pytest.raises(InvalidInput, match=r"cpus 2\.5 is more than the 2 CPUs"):
        await a.check_new([], [spec(cpus=2.5)], [])
