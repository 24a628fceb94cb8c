"""The planner's release step and traffic hold (pure: desired + observed in, actions out)."""

from __future__ import annotations

from dataclasses import replace

from lbctl.controller.planner import Desired, Observed, plan_app
from lbctl.model import ROLE_HOLD, ROLE_RELEASE, Container, Mode
from lbctl.model.hold import hold_tag
from lbctl.model.rollout import UpdatePolicy
from tests.controller.test_planner import (
    NEW_IMAGE,
    NOW,
    OLD_IMAGE,
    h,
    names,
    ready,
    rep,
    sandbox,
    seen,
    spec,
)

MIGRATE = ("migrate",)


def release_c(image: str = OLD_IMAGE, running: bool = True, code: int | None = None,
              started: float = NOW - 10, cid: str = "rel") -> Container:
    revision = {OLD_IMAGE: 1, NEW_IMAGE: 2}.get(image, 3)
    return Container(
        id=cid, name=f"web-release-{revision}", app="web", role=ROLE_RELEASE, managed=True,
        index=None, running=running, health=None, ip="10.0.0.50",
        pid=2000 if running else None, started_at=started if running else None,
        spec_hash=h(image), revision=revision, exit_code=None if running else code,
    )


def first_run(n: int = 2, **kw: object) -> Desired:
    s = spec(n)
    return Desired(s, s.spec_hash(), 1, **kw)  # type: ignore[arg-type]


def rollout(n: int = 2, **kw: object) -> Desired:
    """A rollout from OLD_IMAGE (revision 1) to NEW_IMAGE (revision 2)."""
    s = spec(n, image=NEW_IMAGE)
    return Desired(s, s.spec_hash(), 2, **kw)  # type: ignore[arg-type]


# ---- the release step -------------------------------------------------------------------------


def test_a_first_run_starts_its_release_and_no_replica() -> None:
    p = plan_app(first_run(release=MIGRATE), seen([]))
    assert p.start_release and not p.create and not p.converged


def test_replicas_wait_while_the_release_runs() -> None:
    p = plan_app(first_run(release=MIGRATE), seen([release_c()]))
    assert not p.start_release and not p.create and p.releasing is not None
    assert not p.retire


def test_an_exited_release_is_read_once_and_not_started_again() -> None:
    done = release_c(running=False, code=0)
    p = plan_app(first_run(release=MIGRATE), seen([done]))
    assert p.release_exited == done and not p.start_release and not p.create
    # Retiring (being removed after its result was recorded): nothing is started meanwhile.
    p = plan_app(first_run(release=MIGRATE), seen([done], retiring=frozenset({done.id})))
    assert p.release_exited is None and not p.start_release and not p.create


def test_a_release_past_its_timeout_is_overdue() -> None:
    late = release_c(started=NOW - 601)
    p = plan_app(first_run(release=MIGRATE), seen([late], release_timeout=600.0))
    assert p.release_overdue == late and p.releasing is None and not p.create


def test_once_it_passed_the_replicas_start_and_its_container_goes() -> None:
    done = release_c(running=False, code=0)
    p = plan_app(first_run(release=None), seen([done]))
    assert [c.index for c in p.create] == [1, 2] and names(p.retire) == ["web-release-1"]


def test_a_revision_with_replicas_runs_no_release() -> None:
    # The command was added later (no new revision), or a scale-up of a released revision.
    p = plan_app(first_run(3, release=MIGRATE), seen([rep(1), rep(2)], ready(rep(1), rep(2))))
    assert not p.start_release and [c.index for c in p.create] == [3]


def test_no_release_for_no_replica() -> None:
    p = plan_app(first_run(0, release=MIGRATE), seen([]))
    assert not p.start_release and p.converged


def test_a_rollout_waits_for_its_release_and_the_old_revision_serves() -> None:
    old = [rep(1), rep(2)]
    p = plan_app(rollout(release=MIGRATE), seen(old, ready(*old)))
    assert p.start_release and not p.create and not p.retire
    assert names(p.backends) == ["web-1", "web-2"] and not p.rollout_complete
    # A crashed old replica is replaced by its own revision meanwhile.
    crashed = [rep(1), rep(2, running=False, exit_code=137)]
    p = plan_app(rollout(release=MIGRATE), seen(crashed, ready(crashed[0])))
    assert [(c.index, c.spec_hash) for c in p.create] == [] and names(p.retire) == ["web-2"]
    p = plan_app(rollout(release=MIGRATE), seen([rep(1)], ready(rep(1))))
    assert [c.spec_hash for c in p.create] == [h(OLD_IMAGE)]


def test_a_stop_first_rollout_stops_no_old_replica_before_its_release() -> None:
    old = [rep(1), rep(2)]
    d = rollout(release=MIGRATE)
    assert d.spec is not None
    d = replace(d, spec=replace(d.spec, update=UpdatePolicy(order="stop-first")))  # type: ignore[arg-type]
    p = plan_app(d, seen(old, ready(*old), release_timeout=600.0))
    assert p.start_release and not p.retire and not p.create


def test_a_held_rollout_starts_no_release() -> None:
    old = [rep(1), rep(2)]
    p = plan_app(rollout(release=MIGRATE, paused=True), seen(old, ready(*old)))
    assert not p.start_release and not p.create
    p = plan_app(rollout(release=MIGRATE), seen(old, ready(*old), blocked=True))
    assert not p.start_release


def test_the_release_of_a_replaced_revision_goes() -> None:
    old = [rep(1), rep(2)]
    stale = release_c(image="lbctl/demo:3")  # a revision 3 that an undo took back
    p = plan_app(rollout(release=MIGRATE), seen([*old, stale], ready(*old)))
    assert p.retire == (stale,) and p.start_release
    # Its own, once its result is recorded (it passed: the replicas start).
    p = plan_app(rollout(release=None), seen([*old, release_c(image=NEW_IMAGE)], ready(*old)))
    assert names(p.retire) == ["web-release-2"] and p.create


def test_a_release_run_again_waits_for_the_last_one_to_go() -> None:
    # `rollout resume` after a failed release: its container is still being removed.
    gone = release_c(image=NEW_IMAGE, running=False, code=1)
    old = [rep(1), rep(2)]
    p = plan_app(rollout(release=MIGRATE),
                 seen([*old, gone], ready(*old), retiring=frozenset({gone.id})))
    assert not p.start_release and p.release_exited is None


# ---- the traffic hold -------------------------------------------------------------------------

UNTIL = NOW + 30


def hold_c(until: float = UNTIL, cid: str = "hold1", running: bool = True,
           joined: str = "sb1") -> Container:
    return Container(
        id=cid, name=f"web-hold-{hold_tag(until)}", app="web", role=ROLE_HOLD, managed=True,
        index=None, running=running, health=None, ip=None, pid=3000 if running else None,
        started_at=NOW, joined_to=joined, hold=hold_tag(until),
    )


def ebpf(**kw: object) -> Desired:
    s = spec(2, Mode.EBPF)
    return Desired(s, s.spec_hash(), 1, **kw)  # type: ignore[arg-type]


def ebpf_seen(extra: list[Container], **kw: object) -> Observed:
    cs = [sandbox(), rep(1, joined="sb1"), rep(2, joined="sb1")]
    return seen([*cs, *extra], ready(*cs[1:]), **kw)


def test_iptables_holds_with_its_rules_until_the_deadline() -> None:
    s = spec(2)
    d = Desired(s, s.spec_hash(), 1, hold_until=UNTIL)
    cs = [rep(1), rep(2)]
    p = plan_app(d, seen(cs, ready(*cs)))
    assert p.hold_until == UNTIL and not p.create_hold and not p.holds
    assert names(p.backends) == ["web-1", "web-2"] and p.converged
    late = Observed(cs, probes=ready(*cs), now=NOW, wall=UNTIL)
    assert plan_app(d, late).hold_until is None


def test_ebpf_creates_a_hold_then_steers_to_it() -> None:
    p = plan_app(ebpf(hold_until=UNTIL), ebpf_seen([]))
    assert p.create_hold and p.hold_until == UNTIL and not p.holds
    held = hold_c()
    p = plan_app(ebpf(hold_until=UNTIL), ebpf_seen([held]))
    assert not p.create_hold and p.holds == (held,) and not p.retire


def test_a_new_deadline_replaces_the_hold_once_the_new_one_holds() -> None:
    first, later = hold_c(UNTIL, "hold1"), hold_c(UNTIL + 60, "hold2")
    d = ebpf(hold_until=UNTIL + 60)
    p = plan_app(d, ebpf_seen([first]))
    assert p.create_hold and p.holds == (first,) and not p.retire  # the first goes on holding
    p = plan_app(d, ebpf_seen([first, later]))
    assert p.holds == (later, first) and not p.retire
    p = plan_app(d, ebpf_seen([first, later], holding=frozenset({"hold2"})))
    assert p.holds == (later,) and p.retire == (first,)


def test_at_the_deadline_every_hold_goes_after_the_tables_return() -> None:
    held = hold_c()
    for d, wall in ((ebpf(hold_until=UNTIL), UNTIL), (ebpf(), NOW)):
        p = plan_app(d, replace(ebpf_seen([held]), wall=wall))
        assert p.hold_until is None and not p.holds and p.retire == (held,)
        assert names(p.backends) == ["web-1", "web-2"]


def test_a_hold_in_a_lost_namespace_is_replaced() -> None:
    gone = hold_c(joined="old-sandbox")
    p = plan_app(ebpf(hold_until=UNTIL), ebpf_seen([gone]))
    assert p.retire == (gone,) and not p.holds and not p.create_hold  # its name is taken
    dead = hold_c(running=False)
    p = plan_app(ebpf(hold_until=UNTIL), ebpf_seen([dead]))
    assert p.retire == (dead,) and not p.create_hold


def test_a_deleted_app_removes_its_hold_and_release_before_the_sandbox() -> None:
    held, rel = hold_c(), release_c()
    p = plan_app(Desired(None), Observed([sandbox(), held, rel]))
    assert names(p.retire) == sorted([held.name, rel.name]) and not p.done
    p = plan_app(Desired(None), Observed([sandbox()]))
    assert names(p.retire) == ["web-sandbox"]
