"""The planner is pure: observed containers + desired apps in, actions out."""

from __future__ import annotations

from lbctl.controller.planner import Observed, plan
from lbctl.model import (
    ROLE_REPLICA,
    ROLE_SANDBOX,
    AppSpec,
    Container,
    Mode,
    Publish,
    ReplicaState,
)

PUB = Publish("127.0.0.1", 8080, 8080)


def app(n: int, mode: Mode = Mode.IPTABLES, name: str = "web") -> dict[str, AppSpec]:
    return {name: AppSpec(name, "lbctl/demo", PUB, n, mode)}


def rep(i: int, running: bool = True, managed: bool = True, app: str = "web",
        net: str = "bridge", cid: str | None = None) -> Container:
    return Container(
        id=cid or f"id{app}{i}", name=f"{app}-{i}", app=app, role=ROLE_REPLICA,
        managed=managed, index=i if managed else None, running=running, health=None,
        ip=f"10.0.0.{i}", pid=1000 + i, started_at=0.0, network_mode=net, bridge="docker0",
    )


def sandbox(running: bool = True, cid: str = "sb1") -> Container:
    return Container(
        id=cid, name="web-sandbox", app="web", role=ROLE_SANDBOX, managed=True, index=None,
        running=running, health=None, ip="10.0.0.100", pid=999, started_at=0.0,
    )


def ready(*cs: Container) -> dict[str, ReplicaState]:
    return {c.id: ReplicaState.READY for c in cs}


def test_creates_missing_replicas_from_nothing() -> None:
    p = plan(app(3), Observed(containers=[]))
    assert p.create_replicas == (("web", 1), ("web", 2), ("web", 3))
    assert p.backends["web"] == ()
    assert not p.converged["web"]


def test_only_ready_replicas_are_backends() -> None:
    cs = [rep(1), rep(2), rep(3)]
    p = plan(app(3), Observed(cs, probes={"idweb1": ReplicaState.READY,
                                          "idweb2": ReplicaState.UNHEALTHY}))
    assert [c.name for c in p.backends["web"]] == ["web-1"]
    assert p.states["idweb3"] is ReplicaState.STARTING
    assert p.create_replicas == ()
    assert not p.converged["web"]


def test_converged_when_all_ready() -> None:
    cs = [rep(1), rep(2)]
    p = plan(app(2), Observed(cs, probes=ready(*cs)))
    assert p.converged["web"] and p.empty


def test_scale_down_drains_before_removal() -> None:
    cs = [rep(1), rep(2), rep(3)]
    first = plan(app(1), Observed(cs, probes=ready(*cs)))
    # the surplus leave the data plane at once, but are not removed yet
    assert first.start_drain == ("idweb2", "idweb3")
    assert [c.name for c in first.backends["web"]] == ["web-1"]
    assert first.remove == ()
    # still draining: kept
    second = plan(app(1), Observed(cs, probes=ready(*cs),
                                   draining={"idweb2": False, "idweb3": False}))
    assert second.remove == () and second.start_drain == ()
    assert second.states["idweb2"] is ReplicaState.DRAINING
    # drained: removed, after the sync of this pass
    third = plan(app(1), Observed(cs, probes=ready(*cs),
                                  draining={"idweb2": True, "idweb3": False}))
    assert [c.name for c in third.remove] == ["web-2"]


def test_scale_back_up_cancels_drain() -> None:
    cs = [rep(1), rep(2)]
    p = plan(app(2), Observed(cs, probes=ready(*cs), draining={"idweb2": False}))
    assert p.cancel_drain == ("idweb2",)
    assert len(p.backends["web"]) == 2


def test_dead_replica_is_removed_and_replaced() -> None:
    cs = [rep(1), rep(2, running=False), rep(3)]
    p = plan(app(3), Observed(cs, probes=ready(cs[0], cs[2])))
    assert [c.name for c in p.remove] == ["web-2"]
    assert p.create_replicas == (("web", 2),)
    assert [c.name for c in p.backends["web"]] == ["web-1", "web-3"]


def test_adopted_containers_serve_but_are_never_removed() -> None:
    foreign = rep(7, managed=False, cid="compose1")
    dead_foreign = rep(8, managed=False, running=False, cid="compose2")
    cs = [rep(1), foreign, dead_foreign]
    p = plan(app(1), Observed(cs, probes=ready(cs[0], foreign)))
    assert {c.id for c in p.backends["web"]} == {"idweb1", "compose1"}
    assert p.remove == () and p.start_drain == ()
    # and when the app is deleted, they are left alone
    gone = plan({}, Observed(cs, probes=ready(*cs)))
    assert foreign not in gone.remove and dead_foreign not in gone.remove
    assert gone.start_drain == ("idweb1",)


def test_deleted_app_drains_then_removes_sandbox_last() -> None:
    cs = [sandbox(), rep(1, net="container:sb1")]
    p = plan({}, Observed(cs, draining={"idweb1": False}))
    assert p.remove == ()
    p = plan({}, Observed(cs, draining={"idweb1": True}))
    assert [c.name for c in p.remove] == ["web-1"]
    p = plan({}, Observed([sandbox()]))
    assert [c.name for c in p.remove] == ["web-sandbox"]


def test_ebpf_creates_sandbox_before_replicas() -> None:
    p = plan(app(2, Mode.EBPF), Observed([]))
    assert p.create_sandboxes == ("web",)
    assert p.create_replicas == ()  # they need the sandbox's id to join its namespace
    p = plan(app(2, Mode.EBPF), Observed([sandbox()]))
    assert p.create_replicas == (("web", 1), ("web", 2))
    assert p.sandboxes["web"].id == "sb1"


def test_ebpf_lost_sandbox_replaces_its_replicas() -> None:
    old = [rep(1, net="container:sbOLD"), rep(2, net="container:sbOLD")]
    p = plan(app(2, Mode.EBPF), Observed([sandbox(running=False), *old], probes=ready(*old)))
    assert p.create_sandboxes == ("web",)
    assert {c.name for c in p.remove} == {"web-sandbox", "web-1", "web-2"}
    assert p.backends["web"] == ()


def test_ebpf_only_joined_replicas_serve() -> None:
    joined = rep(1, net="container:sb1")
    p = plan(app(1, Mode.EBPF), Observed([sandbox(), joined], probes=ready(joined)))
    assert [c.name for c in p.backends["web"]] == ["web-1"]
    assert p.converged["web"]


def test_failed_app_gets_no_new_replicas() -> None:
    p = plan(app(2), Observed([], failed_apps=frozenset({"web"})))
    assert p.create_replicas == ()


def test_gone_app_with_ebpf_objects_is_cleaned() -> None:
    p = plan({}, Observed([], dataplane_apps=frozenset({"old", "web"})))
    assert p.gone_apps == ("old", "web")
    p = plan(app(1), Observed([sandbox()], dataplane_apps=frozenset({"web"})))
    assert p.gone_apps == ()


def test_other_apps_are_independent() -> None:
    desired = {**app(1), **app(2, name="api")}
    cs = [rep(1), rep(1, app="api"), rep(2, app="api")]
    p = plan(desired, Observed(cs, probes=ready(*cs)))
    assert p.converged == {"web": True, "api": True}


def test_paused_replica_is_kept_but_serves_nothing() -> None:
    from dataclasses import replace

    cs = [rep(1), replace(rep(2), paused=True)]
    p = plan(app(2), Observed(cs, probes=ready(*cs)))
    assert [c.name for c in p.backends["web"]] == ["web-1"]
    assert p.states["idweb2"] is ReplicaState.UNHEALTHY
    assert p.remove == () and p.create_replicas == ()
