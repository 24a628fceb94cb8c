"""Admission of docker run's options: networks that exist and can carry the app's address,
CPUs the engine has, and the compose file's volumes and networks created only after every
check passed. A fake engine: this is the logic; tests/e2e runs it against the real one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from lbctl.controller.admission import Admission, Resources
from lbctl.model import AppSpec, InvalidInput


class FakeEngine:
    def __init__(self) -> None:
        self.networks = {"bridge": "bridge", "backend": "bridge", "swarm": "overlay"}
        self.volumes: set[str] = set()
        self.created: list[str] = []

    async def image_exists(self, image: str) -> bool:
        return True

    async def cpu_count(self) -> int | None:
        return 2

    async def network_driver(self, name: str) -> str | None:
        return self.networks.get(name)

    async def ensure_network(self, name: str, labels: Mapping[str, str]) -> bool:
        if name in self.networks:
            return False
        self.networks[name] = "bridge"
        self.created.append(f"network {name} {dict(labels)}")
        return True

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        if name in self.volumes:
            return False
        self.volumes.add(name)
        self.created.append(f"volume {name}")
        return True


def spec(**opts: Any) -> AppSpec:
    return AppSpec.from_json({"name": "web", "image": "i", "publish": "8080:8080", **opts})


def admission(engine: FakeEngine) -> Admission:
    return Admission(engine, lambda: None, port_check=lambda s: None)  # type: ignore[arg-type]


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


async def test_cpus_beyond_the_engine_host_are_refused() -> None:
    a = admission(FakeEngine())
    await a.check_new([spec(cpus=2)], [], [])
    with pytest.raises(InvalidInput, match=r"cpus 2\.5 is more than the 2 CPUs"):
        await a.check_new([], [spec(cpus=2.5)], [])
