"""The caps on apps and containers, in the apps service on fakes: growth past a cap is refused
(Forbidden: HTTP 403), shrinking never is, the daemon's caps bind every caller and a caller's
own add to them, and the check is atomic with the commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

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


# ---- counted at each app's peak ---------------------------------------------------------

def _o(options: dict[str, Any]) -> dict[str, Any]:
    """docker run options by their JSON names, for spec(**...)."""
    return options


def test_a_rollouts_surge_and_a_canarys_replicas_are_counted() -> None:
    from lbctl.controller.limits import Defaults, footprint
    from lbctl.controller.store import AppRecord
    from lbctl.model.rollout import Revision, Rollout, RolloutState

    old, new = spec("web", 10), spec("web", 10, image="img:2")
    history = (Revision(1, old, 0.0), Revision(2, new, 0.0))
    steady = AppRecord(new, 2, history)
    rolling = AppRecord(new, 2, history, Rollout(RolloutState.PROGRESSING, 2, 1))
    canary = AppRecord(new, 2, history, Rollout(RolloutState.PAUSED, 2, 1, canary=99))
    done = AppRecord(new, 2, history, Rollout(RolloutState.COMPLETE, 2, 1))
    d = Defaults(pids=100)
    assert [footprint(r, d).containers for r in (steady, rolling, canary, done)] == [
        10, 11, 20, 10]
    assert footprint(canary, d).pids == 20 * 100
    stop_first = AppRecord(spec("web", 10, update={"order": "stop-first", "parallelism": 3}),
                           2, history, Rollout(RolloutState.PROGRESSING, 2, 1))
    assert footprint(stop_first, d).containers == 10
    # A rollout runs both revisions: each replica counts at the larger of their limits.
    small = spec("web", 4, **_o({"pids-limit": 50, "memory": "64m"}))
    big = spec("web", 4, **_o({"pids-limit": 500, "memory": "1g"}))
    down = AppRecord(small, 2, (Revision(1, big, 0.0), Revision(2, small, 0.0)),
                     Rollout(RolloutState.PROGRESSING, 2, 1))
    assert (footprint(down, d).pids, footprint(down, d).memory) == (5 * 500, 5 << 30)


async def test_a_canary_past_the_container_cap_is_refused(tmp_path: Path) -> None:
    """The audit's case: 24 containers ran under a cap of 20 (a canary's new replicas
    were not counted)."""
    from lbctl.model.changes import Update

    h = harness(tmp_path, limits=daemon_limits(LimitSettings(max_apps=0, max_containers=20)))
    await h.apps.create(spec("web", 16))
    with pytest.raises(Forbidden) as e:
        await h.apps.change([Update("web", image="img:2", canary=50)])
    assert str(e.value) == ("limit: this would make 24 containers, more than 20 "
                            "(--max-containers of the daemon; root can raise it)")
    assert h.apps.spec("web").image == "img:1"
    await h.apps.change([Update("web", image="img:2", canary=25)])  # 16 + 4
    h = harness(tmp_path / "2", limits=daemon_limits(LimitSettings(max_apps=0,
                                                                    max_containers=16)))
    await h.apps.create(spec("web", 16))
    with pytest.raises(Forbidden, match="17 containers, more than 16"):
        await h.apps.change([Update("web", env_add={"A": "1"})])  # the surge of one
    await h.apps.change([Update("web", env_add={"A": "1"}, policy={"order": "stop-first"})])


async def test_pids_and_memory_ceilings(tmp_path: Path) -> None:
    """The daemon's ceilings count every app (the default pids limit included); the
    policy's count members' apps only, each replica of theirs at its limits or the
    member defaults, and bind members alone."""
    from lbctl.controller.apps import Rights
    from lbctl.controller.limits import Defaults
    from lbctl.controller.policy import Policy
    from lbctl.controller.sources import Who
    from lbctl.model.changes import Create, Update
    from lbctl.model.host import HostFacts

    d = Defaults(pids=2048, member_pids=4096, member_memory=512 << 20)
    h = harness(tmp_path, limits=daemon_limits(LimitSettings(max_pids_total=16000)),
                defaults=d)
    await h.apps.create(spec("a", 4))  # 4 x 2048, the daemon's default
    with pytest.raises(Forbidden) as e:
        await h.apps.create(spec("b", 4, port=18001))
    assert str(e.value) == ("limit: the pids limits of all apps would add up to 16384 at "
                            "their peak, more than 16000 (--max-pids-total of the daemon; "
                            "root can raise it)")
    await h.apps.create(spec("b", 4, port=18001, **_o({"pids-limit": 100})))

    policy = Policy(host=HostFacts(pid_max=32768, mem_total=4 << 30))  # 16384 pids, 2 GiB
    alice = Rights.member(policy, Who(1000, frozenset()))
    h2 = harness(tmp_path / "m", defaults=d)
    await h2.apps.create(spec("roots", 60))  # root's: not the members'
    await h2.apps.change([Create(spec("m1", 2, port=18001))], alice)  # 4096 pids, 1 GiB
    with pytest.raises(Forbidden) as e:
        await h2.apps.change([Create(spec("m2", 7, port=18002))], alice)
    assert str(e.value) == ("policy: the pids limits of members' apps would add up to 18432 "
                            "at their peak, more than 16384 (max_pids_total: the built-in "
                            "default, as there is no /etc/lbctl/policy.toml)")
    await h2.apps.change([Create(spec("m2", 2, port=18002, **_o({"pids-limit": 512})))], alice)
    # 1g each, during the rollout 3 of them (the surge), beside m1's 1 GiB.
    with pytest.raises(Forbidden, match=r"^policy: the memory limits of members' apps would "
                                        r"add up to 4 GiB at their peak, more than 2 GiB"):
        await h2.apps.change([Update("m2", options={"memory": "1g"})], alice)
    # Root may take a member's app past the members' ceilings: then it is root's.
    await h2.apps.change([Update("m2", options={"memory": "1g"})])
    rec = h2.apps.record("m2")
    assert rec is not None and rec.owner is None
