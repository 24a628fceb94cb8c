"""The planner is pure: one app's desired state + observed containers in, actions out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lbctl.controller.backends import ebpf_members
from lbctl.controller.planner import AppPlan, Desired, Observed, Probe, is_host_namespace, plan_app
from lbctl.model import (
    ROLE_REPLICA,
    ROLE_SANDBOX,
    AppSpec,
    Container,
    Mode,
    Publish,
    ReplicaState,
)
from lbctl.model.rollout import Order, UpdatePolicy

PUB = Publish("127.0.0.1", 8080, 8080)
NOW = 1000.0
OLD_IMAGE, NEW_IMAGE = "lbctl/demo:1", "lbctl/demo:2"


def spec(n: int, mode: Mode = Mode.IPTABLES, image: str = OLD_IMAGE,
         policy: UpdatePolicy | None = None) -> AppSpec:
    return AppSpec("web", image, PUB, n, mode, update=policy or UpdatePolicy())


def want(n: int, mode: Mode = Mode.IPTABLES, image: str = OLD_IMAGE, **kw: object) -> Desired:
    policy = kw.pop("policy", None)
    s = spec(n, mode, image, policy)  # type: ignore[arg-type]
    return Desired(s, s.spec_hash(), 1, **kw)  # type: ignore[arg-type]


def h(image: str) -> str:
    return spec(1, image=image).spec_hash()


def rep(i: int, running: bool = True, managed: bool = True, image: str = OLD_IMAGE,
        joined: str | None = None, cid: str | None = None, **kw: object) -> Container:
    return Container(
        id=cid or f"id{i}{image[-1]}", name=f"web-{i}", app="web", role=ROLE_REPLICA,
        managed=managed, index=i if managed else None, running=running, health=None,
        ip=f"10.0.0.{i}", pid=1000 + i, started_at=NOW - 100, joined_to=joined,
        bridge="docker0", spec_hash=h(image), revision=1 if image == OLD_IMAGE else 2,
        **kw,  # type: ignore[arg-type]
    )


def sandbox(running: bool = True, cid: str = "sb1") -> Container:
    return Container(
        id=cid, name="web-sandbox", app="web", role=ROLE_SANDBOX, managed=True, index=None,
        running=running, health=None, ip="10.0.0.100", pid=999, started_at=0.0,
    )


def ready(*cs: Container, since: float = 0.0) -> dict[str, Probe]:
    return {c.id: Probe(ReplicaState.READY, since) for c in cs}


def seen(cs: list[Container], probes: dict[str, Probe] | None = None, **kw: object) -> Observed:
    return Observed(cs, probes=probes or {}, now=NOW, wall=NOW,
                    ever_ready=frozenset(c.id for c in cs), **kw)  # type: ignore[arg-type]


def names(cs: tuple[Container, ...] | list[Container]) -> list[str]:
    return sorted(c.name for c in cs)


def indexes(p: AppPlan) -> list[int]:
    return [c.index for c in p.create]


# ---- scaling --------------------------------------------------------------------------------


def test_creates_missing_replicas_from_nothing() -> None:
    p = plan_app(want(3), seen([]))
    assert indexes(p) == [1, 2, 3] and {c.spec_hash for c in p.create} == {h(OLD_IMAGE)}
    assert p.backends == () and not p.converged


def test_only_ready_replicas_are_backends() -> None:
    cs = [rep(1), rep(2), rep(3)]
    probes = {**ready(cs[0]), cs[1].id: Probe(ReplicaState.UNHEALTHY, NOW)}
    p = plan_app(want(3), seen(cs, probes))
    assert names(p.backends) == ["web-1"]
    assert p.states[cs[2].id] is ReplicaState.STARTING
    assert p.create == () and not p.converged


def test_converged_when_all_ready() -> None:
    cs = [rep(1), rep(2)]
    p = plan_app(want(2), seen(cs, ready(*cs)))
    assert p.converged and not p.changes


def test_scale_down_retires_the_highest_unready_first() -> None:
    cs = [rep(1), rep(2), rep(3)]
    p = plan_app(want(1), seen(cs, ready(cs[0], cs[2])))
    # two too many: web-2 (not ready) goes first, then the highest ready one
    assert names(p.retire) == ["web-2", "web-3"]
    assert p.surplus == {cs[1].id, cs[2].id}
    assert names(p.backends) == ["web-1"]
    assert p.states[cs[2].id] is ReplicaState.DRAINING


def test_retiring_replicas_are_draining_and_not_counted() -> None:
    cs = [rep(1), rep(2)]
    p = plan_app(want(1), seen(cs, ready(*cs), retiring=frozenset({cs[1].id})))
    assert p.retire == () and p.create == ()
    assert p.states[cs[1].id] is ReplicaState.DRAINING
    assert not p.converged  # something is still draining


def test_scale_back_up_reclaims_a_draining_replica() -> None:
    cs = [rep(1), rep(2)]
    p = plan_app(want(2), seen(cs, ready(*cs), retiring=frozenset({cs[1].id}),
                               reclaimable=frozenset({cs[1].id})))
    assert names(p.reclaim) == ["web-2"] and p.create == ()


def test_a_stopping_replica_keeps_its_index_for_its_successor() -> None:
    cs = [rep(1), rep(2)]
    stopping = frozenset({cs[1].id})
    p = plan_app(want(2), seen(cs, ready(*cs), retiring=stopping, stopping=stopping))
    assert p.create == () and p.reclaim == ()  # web-2 is created once the old one is gone


def test_dead_replica_is_retired_and_replaced_by_its_index() -> None:
    cs = [rep(1), rep(2, running=False, exit_code=137), rep(3)]
    p = plan_app(want(3), seen(cs, ready(cs[0], cs[2])))
    assert names(p.retire) == ["web-2"]
    assert p.create == ()  # waits for web-2's name
    gone = [cs[0], cs[2]]
    p = plan_app(want(3), seen(gone, ready(*gone)))
    assert indexes(p) == [2]
    assert names(p.backends) == ["web-1", "web-3"]


def test_a_replica_that_died_before_it_was_ready_is_a_crash() -> None:
    c = rep(1, running=False, exit_code=127)
    p = plan_app(want(1), Observed([c], now=NOW, wall=NOW))
    assert names(p.crashed) == ["web-1"]
    p = plan_app(want(1), Observed([c], now=NOW, wall=NOW, ever_ready=frozenset({c.id})))
    assert p.crashed == ()  # it served before: a crash of a running service, not a loop


def test_unhealthy_replica_is_replaced_after_the_grace() -> None:
    cs = [rep(1), rep(2)]
    probes = {**ready(cs[0]), cs[1].id: Probe(ReplicaState.UNHEALTHY, NOW - 5)}
    p = plan_app(want(2), seen(cs, probes, unhealthy_grace=30))
    assert p.retire == () and p.create == ()  # within the grace: it may come back
    p = plan_app(want(2), seen(cs, probes, unhealthy_grace=3))
    assert names(p.retire) == ["web-2"] and indexes(p) == [3]


def test_an_unready_replica_serves_nothing_and_is_never_replaced_for_it() -> None:
    """Readiness is not liveness: a replica failing its readiness probe is out of the data
    plane for as long as it fails, and kept (it counts as a replica: no successor starts);
    an unhealthy one (no listener, failed health check) is replaced after the grace."""
    cs = [rep(1), rep(2), rep(3)]
    probes = {**ready(cs[0]), cs[1].id: Probe(ReplicaState.UNREADY, NOW - 3600),
              cs[2].id: Probe(ReplicaState.UNHEALTHY, NOW - 3600)}
    p = plan_app(want(3), seen(cs, probes, unhealthy_grace=30))
    assert names(p.backends) == ["web-1"]
    assert p.states[cs[1].id] is ReplicaState.UNREADY
    assert names(p.retire) == ["web-3"] and indexes(p) == [4]  # web-2 stays, an hour on
    assert not p.converged  # 1 of 3 ready: `scale` and `run` go on waiting


def test_an_unready_new_replica_fails_the_rollout_after_the_ready_timeout() -> None:
    policy = UpdatePolicy(ready_timeout=60)
    old = [rep(1), rep(2)]
    new = rep(3, image=NEW_IMAGE)
    probes = {**ready(*old), new.id: Probe(ReplicaState.UNREADY, NOW - 10)}
    d = want(2, image=NEW_IMAGE, policy=policy)
    p = plan_app(d, seen([*old, new], probes))
    assert p.rollout_failure is None  # it was ready; it may pass again
    probes[new.id] = Probe(ReplicaState.UNREADY, NOW - 61)
    p = plan_app(d, seen([*old, new], probes))
    assert p.rollout_failure == "web-3 was not ready again after 60s"
    assert p.rollout_culprit == new


def test_paused_replica_is_kept_but_serves_nothing() -> None:
    cs = [rep(1), rep(2, paused=True)]
    probes = {**ready(cs[0]), cs[1].id: Probe(ReplicaState.READY, NOW - 100)}
    p = plan_app(want(2), seen(cs, probes, unhealthy_grace=1))
    assert names(p.backends) == ["web-1"]
    assert p.states[cs[1].id] is ReplicaState.UNHEALTHY
    assert p.retire == () and p.create == ()


def test_doomed_replica_leaves_the_data_plane_at_once() -> None:
    cs = [rep(1), rep(2)]
    p = plan_app(want(2), seen(cs, ready(*cs), doomed=frozenset({cs[1].id})))
    assert names(p.backends) == ["web-1"] and p.retire == () and p.create == ()


def test_adopted_containers_serve_but_are_never_retired() -> None:
    foreign = rep(7, managed=False, cid="compose1")
    dead_foreign = rep(8, managed=False, running=False, cid="compose2")
    cs = [rep(1), foreign, dead_foreign]
    p = plan_app(want(1), seen(cs, ready(cs[0], foreign)))
    assert {c.id for c in p.backends} == {cs[0].id, "compose1"}
    assert p.retire == () and p.converged
    gone = plan_app(Desired(None), seen(cs, ready(*cs)))
    assert names(gone.retire) == ["web-1"]


def test_blocked_app_gets_no_new_replicas() -> None:
    p = plan_app(want(2), seen([], blocked=True))
    assert p.create == ()


# ---- deletion ------------------------------------------------------------------------------


def test_deleted_app_retires_replicas_then_its_sandbox() -> None:
    cs = [sandbox(), rep(1, joined="sb1")]
    p = plan_app(Desired(None), seen(cs))
    assert names(p.retire) == ["web-1"] and not p.done
    p = plan_app(Desired(None), seen(cs, retiring=frozenset({cs[1].id})))
    assert p.retire == ()  # the sandbox waits for the replicas (Podman insists)
    p = plan_app(Desired(None), seen([sandbox()]))
    assert names(p.retire) == ["web-sandbox"] and not p.done
    assert plan_app(Desired(None), seen([])).done


# ---- ebpf mode -----------------------------------------------------------------------------


def test_ebpf_creates_sandbox_before_replicas() -> None:
    p = plan_app(want(2, Mode.EBPF), seen([]))
    assert p.create_sandbox and p.create == ()  # replicas need its id to join it
    p = plan_app(want(2, Mode.EBPF), seen([sandbox()]))
    assert not p.create_sandbox and indexes(p) == [1, 2]
    assert p.sandbox is not None and p.sandbox.id == "sb1"


def test_ebpf_lost_sandbox_replaces_its_replicas() -> None:
    old = [rep(1, joined="sbOLD"), rep(2, joined="sbOLD")]
    dead = sandbox(running=False)
    p = plan_app(want(2, Mode.EBPF), seen([dead, *old], ready(*old)))
    assert not p.create_sandbox  # the dead one holds the name: it is removed first
    assert names(p.retire) == ["web-1", "web-2", "web-sandbox"]
    assert p.backends == ()
    p = plan_app(want(2, Mode.EBPF), seen([], ready(*old)))
    assert p.create_sandbox


def test_replicas_of_a_lost_sandbox_go_undrained_and_keep_their_names() -> None:
    """The new sandbox runs; the replicas left in the old namespace cannot be reached (its
    interface went with the old sandbox), so they are not drained, and their successors wait
    for their names rather than take new indexes."""
    old = [rep(1, joined="sbOLD"), rep(2, joined="sbOLD")]
    p = plan_app(want(2, Mode.EBPF), seen([sandbox(), *old], ready(*old)))
    assert names(p.retire) == ["web-1", "web-2"]
    assert p.orphaned == {c.id for c in old}
    assert p.create == () and not p.converged
    # Retiring and stopping: still nothing new under another name.
    gone = frozenset(c.id for c in old)
    p = plan_app(want(2, Mode.EBPF), seen([sandbox(), *old], ready(*old), retiring=gone,
                                          stopping=gone))
    assert p.create == ()
    # Removed: the successors take 1 and 2.
    p = plan_app(want(2, Mode.EBPF), seen([sandbox()]))
    assert indexes(p) == [1, 2]


def test_ebpf_only_joined_replicas_serve() -> None:
    joined = rep(1, joined="sb1")
    p = plan_app(want(1, Mode.EBPF), seen([sandbox(), joined], ready(joined)))
    assert names(p.backends) == ["web-1"] and p.converged


# ---- rollouts ------------------------------------------------------------------------------


def rolling(n: int, **kw: Any) -> Desired:
    return want(n, image=NEW_IMAGE, **kw)


def test_a_new_template_starts_one_new_replica_first() -> None:
    old = [rep(i) for i in (1, 2, 3, 4)]
    p = plan_app(rolling(4), seen(old, ready(*old)))
    assert p.retire == ()  # nothing old leaves before something new is available
    assert indexes(p) == [5] and p.create[0].spec_hash == h(NEW_IMAGE)
    assert p.rollout_step and not p.converged


def test_an_old_replica_drains_once_a_new_one_stayed_ready_for_monitor() -> None:
    old = [rep(i) for i in (1, 2, 3, 4)]
    new = rep(5, image=NEW_IMAGE)
    policy = UpdatePolicy(monitor=5.0)
    fresh = {**ready(*old), **ready(new, since=NOW - 1)}
    p = plan_app(rolling(4, policy=policy), seen([*old, new], fresh))
    assert p.retire == () and p.create == ()  # surge used, new one not stable yet
    assert names(p.backends) == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    stable = {**ready(*old), **ready(new, since=NOW - 6)}
    p = plan_app(rolling(4, policy=policy), seen([*old, new], stable))
    assert names(p.retire) == ["web-4"]
    assert indexes(p) == [6]  # the next batch starts at once (web-4's index is draining)


def test_rollout_completes_when_no_old_replica_is_left() -> None:
    new = [rep(i, image=NEW_IMAGE) for i in (1, 2, 5, 6)]
    p = plan_app(rolling(4), seen(new, ready(*new)))
    assert p.rollout_complete and p.converged


def test_parallelism_and_stop_first() -> None:
    old = [rep(i) for i in (1, 2, 3, 4)]
    p = plan_app(rolling(4, policy=UpdatePolicy(parallelism=2)), seen(old, ready(*old)))
    assert indexes(p) == [5, 6]
    stop_first = UpdatePolicy(parallelism=2, order=Order.STOP_FIRST)
    p = plan_app(rolling(4, policy=stop_first), seen(old, ready(*old)))
    # never above the count: two old ones leave the data plane, two new ones start
    assert names(p.retire) == ["web-3", "web-4"] and indexes(p) == [5, 6]


def test_delay_holds_the_next_batch() -> None:
    old = [rep(i) for i in (1, 2, 3, 4)]
    new = rep(5, image=NEW_IMAGE)
    probes = {**ready(*old), **ready(new, since=0.0)}
    policy = UpdatePolicy(delay=10.0)
    p = plan_app(rolling(4, policy=policy), seen([*old, new], probes, last_step=NOW - 2))
    assert p.retire == () and p.create == ()
    p = plan_app(rolling(4, policy=policy), seen([*old, new], probes, last_step=NOW - 11))
    assert names(p.retire) == ["web-4"] and indexes(p) == [6]


def test_a_new_replica_that_exits_fails_the_rollout() -> None:
    old = [rep(i) for i in (1, 2)]
    dead = rep(3, image=NEW_IMAGE, running=False, exit_code=1)
    p = plan_app(rolling(2), seen([*old, dead], ready(*old)))
    assert p.rollout_failure == "web-3 exited with code 1"
    assert p.create == ()  # no new batch after a failure
    assert names(p.backends) == ["web-1", "web-2"]


def test_a_new_replica_never_ready_fails_the_rollout() -> None:
    old = [rep(1)]
    slow = replace(rep(2, image=NEW_IMAGE), started_at=NOW - 61)
    p = plan_app(rolling(1), seen([*old, slow], ready(*old)))
    assert p.rollout_failure == "web-2 was not ready after 60s"


def test_rollback_is_a_rollout_to_the_old_template() -> None:
    # the failed new replica is "old" now; it serves nobody, so it leaves at once
    old = [rep(1), rep(2)]
    failed = rep(3, image=NEW_IMAGE)
    p = plan_app(want(2), seen([*old, failed], ready(*old)))
    assert names(p.retire) == ["web-3"] and p.create == ()
    assert names(p.backends) == ["web-1", "web-2"]


def test_paused_rollout_holds() -> None:
    old = [rep(i) for i in (1, 2, 3)]
    new = rep(4, image=NEW_IMAGE)
    probes = {**ready(*old), **ready(new)}
    p = plan_app(rolling(3, paused=True), seen([*old, new], probes))
    assert p.retire == () and p.create == ()


def test_canary_holds_its_share_beside_all_old_replicas() -> None:
    old = [rep(i) for i in (1, 2, 3, 4)]
    p = plan_app(rolling(4, canary=25, stable_hash=h(OLD_IMAGE)), seen(old, ready(*old)))
    assert indexes(p) == [5] and p.retire == ()
    new = rep(5, image=NEW_IMAGE)
    p = plan_app(rolling(4, canary=25, stable_hash=h(OLD_IMAGE)),
                 seen([*old, new], {**ready(*old), **ready(new)}))
    assert p.create == () and p.retire == () and not p.converged
    w = p.weights
    share = w[new.id] / sum(w.values())
    assert abs(share - 0.25) < 1e-9, w
    # an old replica that crashes during the canary is replaced with the old revision
    crashed = [old[0], old[1], old[2], rep(4, running=False), new]
    p = plan_app(rolling(4, canary=25, stable_hash=h(OLD_IMAGE)),
                 seen([c for c in crashed if c.index != 4], ready(*old[:3], new)))
    assert [c.spec_hash for c in p.create] == [h(OLD_IMAGE)]


def test_replicas_without_a_hash_label_run_the_current_spec() -> None:
    legacy = [replace(rep(i), spec_hash=None) for i in (1, 2)]
    p = plan_app(rolling(2), seen(legacy, ready(*legacy)))
    assert p.converged and p.create == ()


# ---- --network host -------------------------------------------------------------------------


def host_want(n: int) -> Desired:
    s = AppSpec.from_json({"name": "web", "image": OLD_IMAGE, "publish": "8080:8080",
                           "replicas": n, "mode": "ebpf", "network": ["host"]})
    return Desired(s, s.spec_hash(), 1)


def test_host_network_needs_no_sandbox_and_retires_a_leftover_one() -> None:
    p = plan_app(host_want(2), seen([sandbox()]))
    assert not p.create_sandbox and is_host_namespace(p.sandbox)
    assert [c.name for c in p.retire] == ["web-sandbox"]
    assert indexes(p) == [1, 2]  # created at once: the host's namespace is always there


def test_host_network_serves_replicas_in_the_host_namespace_only() -> None:
    d = host_want(2)
    host = [replace(rep(i, joined="host"), spec_hash=d.hash) for i in (1, 2)]
    p = plan_app(d, seen(host, ready(*host)))
    assert names(p.backends) == ["web-1", "web-2"] and p.converged and p.retire == ()
    # A replica in a namespace of its own (e.g. an earlier sandbox's) is unreachable: replaced.
    stray = replace(rep(3, joined="sb1"), spec_hash=d.hash)
    p = plan_app(d, seen([*host, stray], ready(*host, stray)))
    assert names(p.retire) == ["web-3"]


# ---- socket activation -----------------------------------------------------------------------


def act_want(n: int) -> Desired:
    s = AppSpec.from_json({"name": "web", "image": OLD_IMAGE, "publish": "0.0.0.0:80:8080",
                           "replicas": n, "mode": "ebpf", "activation": True})
    return Desired(s, s.spec_hash(), 1)


def test_an_activated_app_has_no_sandbox_and_retires_a_leftover_one() -> None:
    d = act_want(2)
    p = plan_app(d, seen([sandbox()]))
    assert not p.create_sandbox and p.sandbox is None
    assert [c.name for c in p.retire] == ["web-sandbox"]
    assert indexes(p) == [1, 2]  # no namespace to wait for


def test_activated_replicas_in_namespaces_of_their_own_serve_once_ready() -> None:
    d = act_want(3)
    cs = [replace(rep(i), spec_hash=d.hash) for i in (1, 2, 3)]
    p = plan_app(d, seen(cs, ready(cs[0], cs[1])))
    # Not orphans of a sandbox: each is a container of its own, as in iptables mode.
    assert p.retire == () and p.create == ()
    assert names(p.backends) == ["web-1", "web-2"] and not p.converged
    assert p.states[cs[2].id] is ReplicaState.STARTING
    p = plan_app(d, seen(cs, ready(*cs)))
    assert names(p.backends) == ["web-1", "web-2", "web-3"] and p.converged


def test_an_activated_apps_members_keep_starting_replicas_in_the_map() -> None:
    """The hand-over put a starting replica's listeners in the socket map: the sync keeps
    them there (no table names them) rather than taking them out until it is ready."""
    d = act_want(3)
    cs = [replace(rep(i), spec_hash=d.hash) for i in (1, 2, 3)]
    cs.append(replace(rep(4, managed=False), spec_hash=d.hash))  # adopted: handed nothing
    p = plan_app(d, seen(cs, ready(cs[0])))
    serving, draining, probing = ebpf_members(p, cs, frozenset({cs[1].id}), activated=True)
    assert [m.name for m in serving] == ["web-1"]
    assert [m.name for m in draining] == ["web-2"]
    assert [m.name for m in probing] == ["web-3"]  # starting: in the map, in no table
    # The sandbox path keeps an adopted replica there too (its listener is in the group).
    _, draining, probing = ebpf_members(p, cs, frozenset({cs[1].id}))
    assert [m.name for m in draining] == ["web-2"]
    assert sorted(m.name for m in probing) == ["web-3", "web-4"]
    # No HTTP probe to reach them (a TCP check, a UDP app): only ready and draining ones, so
    # a UDP flow the program remembers leaves a replica that is out; activated ones stay.
    _, draining, probing = ebpf_members(p, cs, frozenset({cs[1].id}), probed=False)
    assert [m.name for m in draining] == ["web-2"] and probing == []
    _, _, probing = ebpf_members(p, cs, frozenset({cs[1].id}), activated=True, probed=False)
    assert [m.name for m in probing] == ["web-3"]
