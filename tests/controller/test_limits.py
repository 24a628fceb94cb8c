"""The caps on apps and containers, in the apps service on fakes: growth past a cap is refused
(Forbidden: HTTP 403), shrinking never is, the daemon's caps bind every caller and a caller's
own add to them, and the check is atomic with the commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lbctl.controller import limits
from lbctl.controller.limits import Cap, Limits, daemon_limits
from lbctl.model import Forbidden, Mode
from lbctl.settings import LimitSettings
from tests.controller.fakes import harness, spec


async def test_daemon_caps_refuse_growth_only_and_bind_every_caller(tmp_path: Path) -> None:
    h = harness(tmp_path, limits=daemon_limits(LimitSettings(max_apps=2, max_containers=5)))
    await h.apps.apply([spec("a", 2), spec("b", 2, mode=Mode.EBPF, port=18001)])  # 2 + 2 + 1
    with pytest.raises(Forbidden) as e:
        await h.apps.apply([spec("c", 0, port=18002)])
    assert str(e.value) == ("limit: this would make 3 apps, more than 2 (--max-apps of the "
                            "daemon; root can raise it)")
    with pytest.raises(Forbidden, match=r"6 containers, more than 5 .--max-containers"):
        await h.apps.scale("a", 3)
    assert h.apps.spec("a").replicas == 2
    await h.apps.scale("a", 1)  # less is always fine
    await h.apps.scale("a", 2)
    # Above a cap (lowered by a restart with smaller flags), what does not grow passes.
    h.apps.limits = daemon_limits(LimitSettings(max_apps=1, max_containers=1))
    await h.apps.scale("a", 2)
    await h.apps.apply([spec("a", 1)])
    with pytest.raises(Forbidden, match="--max-containers"):
        await h.apps.scale("a", 2)


async def test_a_callers_caps_add_to_the_daemons(tmp_path: Path) -> None:
    h = harness(tmp_path, limits=daemon_limits(LimitSettings(max_apps=10, max_containers=0)))
    mine = Limits(apps=(Cap(1, "max_apps in /etc/lbctl/policy.toml", "policy"),))
    await h.apps.create(spec("a", 1), limits=mine)
    with pytest.raises(Forbidden) as e:
        await h.apps.create(spec("b", 1, port=18001), limits=mine)
    assert str(e.value) == ("policy: this would make 2 apps, more than 1 (max_apps in "
                            "/etc/lbctl/policy.toml)")
    await h.apps.create(spec("b", 60, port=18001))  # root: the daemon's caps only


async def test_racing_creates_cannot_both_take_the_last_place(tmp_path: Path) -> None:
    h = harness(tmp_path, limits=daemon_limits(LimitSettings(max_apps=1, max_containers=0)))
    results = await asyncio.gather(*(h.apps.create(spec(f"app{i}", 1, port=18000 + i))
                                     for i in range(5)), return_exceptions=True)
    assert sum(r is None for r in results) == 1, results
    assert all(isinstance(r, Forbidden) for r in results if r is not None)
    assert len(h.apps.state.apps) == 1


def test_containers_count_replicas_and_sandboxes() -> None:
    specs = [spec("a", 3), spec("b", 2, mode=Mode.EBPF), spec("c", 0, mode=Mode.EBPF)]
    assert limits.containers(specs) == 3 + 3 + 1
    assert daemon_limits(LimitSettings(max_apps=0, max_containers=0)) == Limits()
