"""What the apps service holds, on fakes: an app's host port is held from the commit that
creates it to the end of its removal (and again after a restart, or reported as a conflict
in status), and a refused or failed change holds nothing. (tests/dataplane/test_hostports.py
holds real ports; tests/e2e/test_policy.py runs it all in the real daemon.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from lbctl.dataplane.hostports import HostPorts
from lbctl.model import InvalidInput, Publish
from tests.controller.fakes import harness, spec


class FakeSocket:
    def __init__(self, binder: FakeBinder, publish: Publish) -> None:
        self.binder, self.publish, self.open = binder, publish, True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.binder.bound.remove(self.publish)


class FakeBinder:
    """The kernel's bind table, for one test: a port is bound at most once."""

    def __init__(self) -> None:
        self.bound: list[Publish] = []
        self.others: set[int] = set()  # ports some other process has

    def __call__(self, publish: Publish) -> FakeSocket:
        if publish in self.bound or publish.host_port in self.others:
            raise OSError(98, "Address already in use")
        self.bound.append(publish)
        return FakeSocket(self, publish)

    def ports(self) -> list[int]:
        return sorted(p.host_port for p in self.bound)


async def test_an_app_holds_its_port_until_its_removal_is_done(tmp_path: Path) -> None:
    b = FakeBinder()
    h = harness(tmp_path, host_ports=HostPorts(b))
    await h.start()
    try:
        await h.apps.apply([spec("web", 2, port=18000), spec("api", 1, port=18001)])
        assert b.ports() == [18000, 18001]
        h.engine.remove_delay = lambda c: 0.3  # the removal takes a while
        await h.apps.delete("web")
        assert b.ports() == [18000, 18001], "released before the replicas were gone"
        await h.apps.wait_gone("web", 5)
        assert b.ports() == [18001]
    finally:
        await h.stop()


async def test_a_refused_change_holds_nothing(tmp_path: Path) -> None:
    """All or nothing: a two-app apply whose second port is taken commits neither, and the
    first app's placeholder is closed again."""
    b = FakeBinder()
    b.others.add(18002)
    h = harness(tmp_path, host_ports=HostPorts(b))
    await h.start()
    try:
        with pytest.raises(InvalidInput, match="18002/tcp is already in use"):
            await h.apps.apply([spec("a", 1, port=18001), spec("b", 1, port=18002)])
        assert b.bound == [] and h.apps.state.apps == {}
    finally:
        await h.stop()


async def test_a_failed_state_write_releases_the_new_port(tmp_path: Path) -> None:
    b = FakeBinder()
    h = harness(tmp_path, host_ports=HostPorts(b))

    def broken(state: object) -> None:
        raise OSError(28, "No space left on device")

    h.apps.store.save_state = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await h.apps.apply([spec("web", 1, port=18000)])
    assert b.bound == [] and "web" not in h.apps.state.apps


async def test_a_restart_takes_the_ports_back_or_reports_who_has_them(tmp_path: Path) -> None:
    b = FakeBinder()
    h = harness(tmp_path, host_ports=HostPorts(b))
    await h.apps.apply([spec("web", 1, port=18000), spec("api", 1, port=18001)])
    assert b.ports() == [18000, 18001]
    held = h.apps.host_ports
    assert isinstance(held, HostPorts)
    held.close()  # the daemon stops
    b.others.add(18001)  # something takes api's port meanwhile
    h2 = harness(tmp_path, host_ports=HostPorts(b))  # and starts again (load() re-holds)
    await h2.start()
    try:
        assert b.ports() == [18000]
        web, api = await h2.status.report("web"), await h2.status.report("api")
        assert web[0]["port_conflict"] is None
        assert api[0]["port_conflict"] == (
            "port 127.0.0.1:18001/tcp is also bound by another socket, which gets none of its "
            "traffic (lbctl's rule sends it to this app)")
        b.others.discard(18001)
        h2.controller._discover_now.set()  # the periodic discovery retries; now, not in 5 s
        await h2.until(lambda: h2.apps.port_conflict("api") is None, 2.0, "the port back")
        assert b.ports() == [18000, 18001]
    finally:
        await h2.stop()
