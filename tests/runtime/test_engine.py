"""The engine facade: event parsing (pure) and the real engine's list/create/remove."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from harness import PREFIX
from harness.engine import docker
from lbctl.model import LABEL_APP
from lbctl.model.errors import ImageNotFound
from lbctl.model.names import replica_labels
from lbctl.model.runtime import CreateRequest
from lbctl.runtime.convert import health_marker as _health_marker
from lbctl.runtime.convert import parse_time as _parse_time
from lbctl.runtime.engine import Engine
from lbctl.runtime.events import parse_event as _parse_event
from lbctl.runtime.podman import podman_ulimits


def test_events_are_normalized() -> None:
    ev = _parse_event({"Type": "container", "Action": "health_status: unhealthy",
                       "Actor": {"ID": "abc", "Attributes": {LABEL_APP: "web"}}})
    assert ev is not None and (ev.action, ev.container_id, ev.app) == (
        "health_status", "abc", "web")
    kill = _parse_event({"status": "kill", "id": "abc",
                         "Actor": {"Attributes": {"signal": "9"}}})
    assert kill is not None and kill.fatal and kill.signal == 9
    hup = _parse_event({"Action": "kill", "Actor": {"ID": "a", "Attributes": {"signal": "1"}}})
    assert hup is not None and not hup.fatal  # a reload signal does not doom a replica
    assert _parse_event({"Action": "exec_start: sh -c x", "Actor": {"ID": "a"}}) is None
    # A network's creation is news for the host rules (Docker reorders FORWARD then); its
    # other events are not, and none of them is a container's.
    net = _parse_event({"Type": "network", "Action": "create",
                        "Actor": {"ID": "n1", "Attributes": {"name": "x", "type": "bridge"}}})
    assert net is not None and (net.kind, net.action, net.app) == ("network", "create", None)
    assert _parse_event({"Type": "network", "Action": "destroy", "Actor": {"ID": "n1"}}) is None
    assert _parse_event({"Type": "network", "Action": "connect", "Actor": {"ID": "n1"}}) is None


def test_podman_events_are_normalized() -> None:
    # As Podman 4.3's compat stream sends them: `status` = `Action`, no signal on kill,
    # "remove" for Docker's "destroy", extra init/cleanup.
    def podman(action: str) -> dict[str, object]:
        return {"status": action, "id": "abc", "Type": "container", "Action": action,
                "Actor": {"ID": "abc", "Attributes": {"containerExitCode": "0", "name": "web-1",
                                                      LABEL_APP: "web"}}}

    rm = _parse_event(podman("remove"))
    assert rm is not None and (rm.action, rm.app) == ("destroy", "web")
    kill = _parse_event(podman("kill"))
    assert kill is not None and not kill.fatal  # no signal: the die that follows is fatal
    die = _parse_event(podman("die"))
    assert die is not None and die.fatal
    assert _parse_event(podman("init")) is None and _parse_event(podman("cleanup")) is None


def test_podman_ulimits_stay_under_the_hard_limit() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = {u["Name"]: u for u in podman_ulimits()}
    assert set(limits) == {"nofile", "nproc"}  # either alone fails on the other
    assert limits["nofile"]["Soft"] == limits["nofile"]["Hard"] <= max(1024, hard)
    assert limits["nproc"]["Soft"] <= limits["nproc"]["Hard"]


def test_uptime_does_not_count_as_a_change() -> None:
    assert _health_marker("Up 5 seconds (healthy)") == _health_marker("Up 6 seconds (healthy)")
    assert _health_marker("Up 5 seconds") != _health_marker("Up 5 seconds (unhealthy)")


def test_docker_timestamps() -> None:
    t = _parse_time("2026-11-22T05:01:06.123456789Z")
    assert t is not None and abs(t - 1795323666.123456) < 1e-3
    assert _parse_time("0001-01-01T00:00:00Z") is not None
    assert _parse_time("garbage") is None


@pytest.mark.engine
async def test_list_create_events_remove_on_the_real_engine() -> None:
    engine = Engine()
    app = f"{PREFIX}-engine"
    name = f"{app}-1"
    events: list[str] = []
    networks: list[str] = []
    others: list[object] = []

    async def watch() -> None:
        async for ev in engine.events():
            if ev is not None and ev.kind == "network":
                networks.append(ev.container_id)
            elif ev is not None and ev.app == app:
                events.append(ev.action)
            elif ev is not None and ev.app is None:
                others.append(ev)  # another container's event: the engine should drop it

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.3)
        with pytest.raises(ImageNotFound):
            await engine.create_and_start(CreateRequest(
                name=f"{app}-x", image="lbctl/no-such-image:1", labels={}, env={}))
        cid = await engine.create_and_start(CreateRequest(
            name=name, image="lbctl/demo:latest", labels=replica_labels(app, "replica", 1),
            env={"LBCTL_REPLICA": name}))
        [c] = await engine.list_containers(app)
        assert (c.id, c.name, c.app, c.index, c.managed, c.running) == (
            cid, name, app, 1, True, True)
        assert c.ip and c.pid and c.bridge == "docker0" and c.started_at
        await engine.stop_and_remove(cid, grace=2)
        assert await engine.list_containers(app) == []
        for _ in range(50):
            if "destroy" in events:
                break
            await asyncio.sleep(0.05)
        assert {"create", "start", "destroy"} <= set(events), events
        # Docker reorders FORWARD when it creates a network: the stream says so.
        net_id = (await asyncio.to_thread(docker, "network", "create", "--label",
                                          "lbctl.test=1", f"{app}-net")).strip()
        await asyncio.to_thread(docker, "network", "rm", net_id, check=False)
        for _ in range(50):
            if net_id in networks:
                break
            await asyncio.sleep(0.05)
        assert networks == [net_id] and others == [], (networks, others)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        for c in await engine.list_containers(app):
            await engine.stop_and_remove(c.id, grace=0)
        await engine.close()
