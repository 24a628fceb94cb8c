"""The apps service: the one owner of desired state. The API hands it typed changes
(lbctl.model.changes); the workers ask it what their app should be and tell it how a rollout
went.

Every change is judged completely first (input, the caller's policy, then what needs I/O: the
image, the host port, the networks) and then committed under one short lock that holds no I/O
but the atomic state write, against the app as it is then: an app that changed while the
change was judged (its generation moved) gets the change applied again to what it is now, so
racing deltas all land and nothing judged earlier undoes what was committed meanwhile; where
the change no longer applies it is refused (Conflict), and where admission read something that
changed it is judged again. A multi-app apply is all or nothing, and nothing waits on an
engine call while holding the lock. The caps on apps and containers are checked under that
lock (two racing creates cannot both take the last place), and so is the taking of a new
app's host port: an app exists exactly while its port is held.

What a request needs created on the engine (a compose file's networks and volumes, a
member's new named volumes) is created only once every check has passed, the caps included
(checked on a trial of the commit first), and removed again if the commit then fails: a
refused request leaves nothing behind. Each record says whose the app is (`owner`: the
member whose change last set its template, None for root), which is how a member's app is
judged again at every replica create and counted against the members' ceilings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from lbctl.controller import limits as limits_mod
from lbctl.controller.admission import Admission, Resources, judged
from lbctl.controller.interfaces import HostPortHolder, Placeholder
from lbctl.controller.limits import Cap, Defaults, Limits
from lbctl.controller.planner import Desired
from lbctl.controller.policy import Policy
from lbctl.controller.sources import NOBODY, SourceGuard, Who
from lbctl.controller.store import AppRecord, State, StateStore
from lbctl.model import AppSpec, Forbidden, InvalidInput, Mode, Publish
from lbctl.model.changes import (
    Create,
    HoldChange,
    HoldTraffic,
    Outcome,
    Pause,
    Replace,
    RolloutChange,
    Scale,
    SpecChange,
    Undo,
)
from lbctl.model.errors import Conflict, NotFound
from lbctl.model.hold import Hold
from lbctl.model.options import NAMESPACE_FIELDS
from lbctl.model.rollout import FailureAction, Revision, Rollout, RolloutState

log = logging.getLogger("lbctl.controller")

__all__ = ["ROOT", "AppsService", "Conflict", "NotFound", "Rights"]

# Rounds of admission a change gets while the apps it was judged on keep changing in what
# admission reads; then it is refused (Conflict), never committed unjudged.
ADMISSION_ROUNDS = 3


@dataclass(frozen=True)
class Rights:
    """What the caller may ask for: the members' policy (None: root, whom only the daemon's
    caps limit), the caller's own caps, on top of the daemon's, and who they are (the
    member an app they change becomes the owner of)."""

    policy: Policy | None = None
    limits: Limits | None = None
    who: Who = field(default_factory=lambda: Who(NOBODY, frozenset()))

    @classmethod
    def member(cls, policy: Policy, who: Who | None = None) -> Rights:
        pids, memory = policy.ceilings()
        return cls(policy, Limits(
            apps=(Cap(policy.max_apps, policy.rule("max_apps"), "policy"),),
            pids=(Cap(pids, policy.rule("max_pids_total"), "policy", members=True),)
            if pids else (),
            memory=(Cap(memory, policy.rule("max_memory_total"), "policy", members=True),)
            if memory else (),
        ), who or Who(NOBODY, frozenset()))

    @property
    def owner(self) -> int | None:
        """Whose an app this caller sets the template of becomes (None: root's)."""
        return None if self.policy is None else self.who.uid


ROOT = Rights()


@dataclass(frozen=True)
class _Staged:
    """One change's result, and the app it was applied to (None: the change creates it)."""

    current: AppSpec | None
    target: AppSpec


class AppsService:
    def __init__(
        self,
        store: StateStore,
        admission: Admission,
        on_change: Callable[[str], None] = lambda app: None,
        clock: Callable[[], float] = time.time,
        host_ports: HostPortHolder | None = None,
        limits: Limits | None = None,
        guard: SourceGuard | None = None,
        defaults: Defaults = Defaults(),  # noqa: B008 (frozen)
    ) -> None:
        """`guard`: judges what members' replicas mount (None: nothing is, as in logic tests
        of other things); `defaults`: the limits replicas get where their app sets none
        (what the caps count)."""
        self.store = store
        self.admission = admission
        self.guard = guard
        self.defaults = defaults
        self.on_change = on_change
        self.clock = clock
        # None: nothing is held (logic tests, which must not take the host's real ports).
        self.host_ports = host_ports
        self.limits = limits or Limits()
        self.state = State()
        self._commit = asyncio.Lock()
        # Bumped on every change of an app; a plan made before the latest change cannot say
        # the app has converged (a `scale` right after a pass would else return at once).
        self.generations: dict[str, int] = {}
        self._gone: dict[str, asyncio.Event] = {}

    def load(self) -> None:
        self.state = self.store.load_state()
        if self.host_ports is not None:
            # Every app's port again, and a removed app's until its last replica is gone
            # (our rules still send its traffic there while it drains).
            held = {n: _host_ports(r.spec) for n, r in self.state.apps.items()}
            held.update({n: _host_ports(s) for n, s in self.state.deleted.items()})
            self.host_ports.ensure_all(held)

    def port_conflict(self, name: str) -> str | None:
        """What else holds the app's host port, when something does (see HostPorts)."""
        return self.host_ports.conflict(name) if self.host_ports is not None else None

    def retake_ports(self) -> None:
        if self.host_ports is not None:
            self.host_ports.retry()

    # ---- what workers read ---------------------------------------------------------------

    def names(self) -> set[str]:
        return set(self.state.apps) | set(self.state.deleted)

    def record(self, name: str) -> AppRecord | None:
        return self.state.apps.get(name)

    def spec(self, name: str) -> AppSpec:
        rec = self.state.apps.get(name)
        if rec is None:
            raise NotFound(f"no app named {name}")
        return rec.spec

    def generation(self, name: str) -> int:
        return self.generations.get(name, 0)

    def desired(self, name: str) -> Desired:
        rec = self.state.apps.get(name)
        if rec is None:
            return Desired(None, gone=self.state.deleted.get(name))
        ro = rec.rollout
        canary = ro.canary if ro is not None and ro.active else None
        stable = None
        if canary is not None and ro is not None and ro.previous is not None:
            prev = rec.revision_of(ro.previous)
            stable = prev.spec.spec_hash() if prev else None
        paused = ro is not None and ro.state in (RolloutState.PAUSED, RolloutState.FAILED)
        # The release command of a revision whose release has not passed yet (the planner
        # runs it only before the revision's first replica).
        release = (rec.spec.release_argv() or None) if rec.revision not in rec.released \
            else None
        return Desired(rec.spec, rec.spec.spec_hash(), rec.revision, stable, canary, paused,
                       hold_until=rec.hold.until if rec.hold is not None else None,
                       release=release)

    def revision_spec(self, name: str, spec_hash: str) -> AppSpec | None:
        """The spec of the app's revision with this hash (a canary's stable replicas)."""
        rec = self.state.apps.get(name)
        if rec is None:
            return None
        for r in reversed(rec.history):
            if r.spec.spec_hash() == spec_hash:
                return replace(r.spec, replicas=rec.spec.replicas)
        return None

    # ---- changes from the API ------------------------------------------------------------

    async def change(self, changes: Sequence[SpecChange], by: Rights = ROOT,
                     resources: Resources | None = None) -> dict[str, Outcome]:
        """Apply every change to its app, all or nothing. `resources`: volumes and networks
        to create when missing (a compose file's), once the request passed every check;
        `by`: the caller's rules."""
        names = [c.name for c in changes]
        if len(set(names)) != len(names):
            raise InvalidInput("an app appears twice")
        # A new app that leaves socket activation to its image gets the image's answer now
        # (an engine question, so before staging): the spec keeps it, so a later image cannot
        # change the app's data plane.
        changes = [await self._resolved(c) for c in changes]
        resources = resources or Resources()
        if by.policy is not None:
            by.policy.check_resources(resources.networks)
            resources = resources.owned_by(by.who.uid)
        made = Resources()
        committed = False
        first = {n: self.generation(n) for n in names}
        try:
            for _ in range(ADMISSION_ROUNDS):
                base = {n: self.generation(n) for n in names}
                staged = self._stage_all(changes, by, self._moved(first))
                await self._admit(changes, staged, resources)
                # What the request declares wins over the same name made for a member: a
                # compose file's labels stay (docker-compose takes the volume as its own).
                wanted = (await self._judge_sources(changes, staged, by)).plus(resources)
                # Everything is checked, the caps on a trial of the commit too: what the
                # apps need may be created now (and is removed if the commit fails).
                self._prepare(changes, staged, by)
                if by.policy is not None and wanted:
                    await self.admission.check_bounds(
                        wanted, by.who.uid, by.policy.max_networks, by.policy.max_volumes,
                        by.policy.rule)
                made = made.plus(await self.admission.create(wanted))
                async with self._commit:
                    if self._moved(base):
                        # Committed meanwhile: the changes apply to the apps as they are now.
                        again = self._stage_all(changes, by, self._moved(first))
                        if not _still_judged(changes, staged, again):
                            continue  # admission read something that changed: judge again
                        staged = again
                    out = self._commit_changes(changes, staged, by)
                    committed = True
                    return out
            raise Conflict(f"{', '.join(names)} kept changing while this change was judged: "
                           "try again")
        finally:
            if made and not committed:
                await asyncio.shield(self.admission.undo(made))

    async def _judge_sources(self, changes: Sequence[SpecChange], staged: Sequence[_Staged],
                             by: Rights) -> Resources:
        """A member's bind sources and named volumes, on the host and the engine
        (controller.sources); the named volumes to create for them."""
        if by.policy is None or self.guard is None:
            return Resources()
        missing: dict[str, dict[str, str]] = {}
        for c, st in zip(changes, staged, strict=True):
            if isinstance(c, Scale):
                continue  # the template is as it was; each create judges it again
            for name in await self.guard.check(st.target, by.who, by.policy):
                missing[name] = {}
        return Resources({}, missing).owned_by(by.who.uid)

    async def rollout(self, change: RolloutChange, by: Rights = ROOT) -> Outcome:
        """Pause, resume or undo a rollout; decided on the app as it is under the lock."""
        name = change.name
        judged: int | None = None
        made = Resources()
        if isinstance(change, Undo) and by.policy is not None:
            # What the revision gone back to mounts needs the engine's answers: judged
            # before the lock, and the undo refused if the app moved to another meanwhile.
            rec = self._record(name)
            back = self._undo_revision(rec, name, change.to)
            spec = _with_template(rec.spec, back.spec)
            by.policy.check_app(spec.to_json(), rec.spec.replicas)
            if self.guard is not None:
                missing = await self.guard.check(spec, by.who, by.policy)
                made = await self.admission.create(
                    Resources({}, {v: {} for v in missing}).owned_by(by.who.uid))
            judged = back.number
        committed = False
        try:
            out = await self._rollout_locked(change, by, judged)
            committed = True
            return out
        finally:
            if made and not committed:
                await asyncio.shield(self.admission.undo(made))

    async def _rollout_locked(self, change: RolloutChange, by: Rights,
                              judged: int | None) -> Outcome:
        name = change.name
        async with self._commit:
            rec = self._record(name)
            now = self.clock()
            if isinstance(change, Undo):
                back = self._undo_revision(rec, name, change.to)
                if by.policy is not None and back.number != judged:
                    raise Conflict(f"app {name} changed while the undo was judged: try again")
                spec = _with_template(rec.spec, back.spec)
                if by.policy is not None:
                    # Judged like an update: the revision gone back to may be one root made.
                    by.policy.check_app(spec.to_json(), rec.spec.replicas)
                ro = Rollout(RolloutState.PROGRESSING, back.number, rec.revision, None,
                             f"undo: back to revision {back.number}", now, now)
                new = replace(rec, spec=spec, revision=back.number, rollout=ro,
                              owner=by.owner)
            else:
                if rec.rollout is None:
                    raise InvalidInput(f"app {name} has no rollout")
                ro = replace(_paused(name, rec.rollout) if isinstance(change, Pause)
                             else _resumed(name, rec.rollout), updated=now)
                new = replace(rec, rollout=ro)
            state = State(dict(self.state.apps), dict(self.state.deleted))
            state.apps[name] = new
            self._save(state, [name])
        log.info("rollout %s", ro.state, extra={"app": name, "revision": ro.target})
        return self._outcome(name, str(ro.state), ro)

    async def hold(self, change: HoldChange) -> Outcome:
        """Pause (hold new connections until the deadline, a paused app's being moved) or
        resume. Anyone who may manage the app may: a hold gives no container anything."""
        name = change.name
        async with self._commit:
            rec = self._record(name)
            now = self.clock()
            if isinstance(change, HoldTraffic):
                if rec.spec.publish.proto != "tcp":
                    raise InvalidInput(f"app {name} publishes UDP: a hold holds new TCP "
                                       "connections, and held datagrams would be lost")
                if rec.spec.activated:
                    # Its listeners are lbctl's, in the host's namespace: a hold container
                    # would need one of its own there, which the hand-over does not make yet.
                    raise InvalidInput(f"app {name} uses socket activation, which pause does "
                                       "not hold yet: run it without --activation to pause it")
                since = rec.hold.since if rec.hold is not None and rec.hold.active(now) else now
                new = replace(rec, hold=Hold(since, now + change.seconds))
                result = "paused"
            elif rec.hold is None:
                return self._outcome(name, "unchanged")
            else:
                new = replace(rec, hold=None)
                result = "resumed"
            state = State(dict(self.state.apps), dict(self.state.deleted))
            state.apps[name] = new
            self._save(state, [name])
        log.info("app %s", result, extra={"app": name, **(
            {"until": new.hold.until} if new.hold is not None else {})})
        return self._outcome(name, result)

    async def hold_ended(self, name: str, until: float) -> None:
        """The worker saw the hold reach its deadline: it is over (unless a newer pause
        moved the deadline meanwhile)."""
        async with self._commit:
            rec = self.state.apps.get(name)
            if rec is None or rec.hold is None or rec.hold.until != until:
                return
            state = State(dict(self.state.apps), dict(self.state.deleted))
            state.apps[name] = replace(rec, hold=None)
            self._save(state, [name], bump=False)
        log.info("hold ended at its --max", extra={"app": name})

    async def release_passed(self, name: str, revision: int) -> None:
        """The release command of `revision` exited 0: its replicas may start, and it does
        not run again for that revision."""
        async with self._commit:
            rec = self.state.apps.get(name)
            if rec is None or revision in rec.released:
                return
            state = State(dict(self.state.apps), dict(self.state.deleted))
            state.apps[name] = replace(rec, released=rec.with_released(revision))
            self._save(state, [name], bump=False)

    async def delete(self, name: str) -> None:
        """Forget the app's spec; its worker drains and removes what remains. Returns at once:
        `wait_gone` waits for the end."""
        async with self._commit:
            rec = self._record(name)
            state = State(dict(self.state.apps), dict(self.state.deleted))
            del state.apps[name]
            state.deleted[name] = rec.spec
            self._gone.setdefault(name, asyncio.Event()).clear()
            self._save(state, [name])
        log.info("app deleted; draining what remains", extra={"app": name})

    async def wait_gone(self, name: str, timeout: float) -> None:
        ev = self._gone.setdefault(name, asyncio.Event())
        if name not in self.state.deleted and name not in self.state.apps:
            return
        async with asyncio.timeout(timeout):
            await ev.wait()

    # The same changes for in-process callers (tests, tools), judged by the daemon's caps and
    # `limits` alone.

    async def create(self, spec: AppSpec, limits: Limits | None = None) -> None:
        await self.change([Create(spec)], Rights(limits=limits))

    async def apply(self, specs: Sequence[AppSpec], resources: Resources | None = None,
                    limits: Limits | None = None) -> dict[str, str]:
        """Create or change every app in `specs`, all or nothing: name -> what happened."""
        done = await self.change([Replace(s) for s in specs], Rights(limits=limits), resources)
        return {name: out.result for name, out in done.items()}

    async def scale(self, name: str, replicas: int, limits: Limits | None = None) -> AppSpec:
        done = await self.change([Scale(name, replicas)], Rights(limits=limits))
        return done[name].spec

    def _undo_revision(self, rec: AppRecord, name: str, to: int | None) -> Revision:
        if to is None:
            older = [r for r in rec.history if r.number < rec.revision]
            if rec.rollout is not None and rec.rollout.previous is not None:
                to = rec.rollout.previous
            elif older:
                to = older[-1].number
        back = rec.revision_of(to) if to is not None else None
        if back is None:
            raise InvalidInput(f"app {name} has no earlier revision to go back to"
                               if to is None else f"app {name} has no revision {to}")
        if back.number == rec.revision:
            raise InvalidInput(f"app {name} already runs revision {back.number}")
        return back

    def _moved(self, since: dict[str, int]) -> set[str]:
        """The apps changed since their generations were `since`."""
        return {n for n, g in since.items() if self.generation(n) != g}

    def _stage_all(self, changes: Sequence[SpecChange], by: Rights,
                   moved: set[str]) -> list[_Staged]:
        """Each change applied to its app as it is now, checked and judged (no I/O). For an
        app in `moved` (changed since the change was first judged, when it was valid), a
        result that is no longer valid is the race's doing, not the input's: Conflict."""
        out = []
        for c in changes:
            rec = self.state.apps.get(c.name)
            current = rec.spec if rec is not None else None
            try:
                target = c.target(current)
                self._check_change(target)
            except Forbidden:
                raise
            except InvalidInput as e:
                if c.name not in moved:
                    raise
                raise Conflict(f"app {c.name} changed while this change was judged, and the "
                               f"change no longer applies to it: {e}") from None
            if by.policy is not None:
                if isinstance(c, Scale) and current is not None:
                    # A count alone: members may shrink an app beyond the policy (root's).
                    by.policy.check_replicas(c.replicas, current.replicas)
                else:
                    # The whole app as it would be, not only the fields sent: an app beyond
                    # the policy (root's port 80) is root's to change.
                    by.policy.check_app(target.to_json(),
                                        current.replicas if current is not None else 0)
            out.append(_Staged(current, target))
        return out

    async def _admit(self, changes: Sequence[SpecChange], staged: Sequence[_Staged],
                     resources: Resources) -> None:
        judge = [s for c, s in zip(changes, staged, strict=True) if c.admitted]
        if not judge:
            return
        await self.admission.check_new(
            [s.target for s in judge if s.current is None],
            [s.target for s in judge if s.current is not None],
            others=self._published_except([c.name for c in changes]),
            declared=resources,
        )

    def _prepare(self, changes: Sequence[SpecChange], staged: Sequence[_Staged],
                 by: Rights) -> tuple[State, dict[str, str]]:
        """The state the changes make and what each does, after the checks that read other
        apps (another request may have committed while admission waited on the engine) and
        the caps. No I/O and no write: run as a trial before anything is created, and again
        under the commit lock."""
        specs = [s.target for s in staged]
        names = [s.name for s in specs]
        for s in specs:
            self._check_change(s)
        self.admission.check_clashes(specs, self._published_except(names))
        results: dict[str, str] = {}
        state = State(dict(self.state.apps), dict(self.state.deleted))
        for c, s in zip(changes, specs, strict=True):
            old = state.apps.get(s.name)
            # A count changes nobody's template: the app stays whose it was.
            owner = old.owner if isinstance(c, Scale) and old is not None else by.owner
            results[s.name] = self._stage(state, s, c.canary, owner)
        self._check_limits(state, by.limits)
        return state, results

    def _commit_changes(self, changes: Sequence[SpecChange], staged: Sequence[_Staged],
                        by: Rights) -> dict[str, Outcome]:
        """Under the commit lock: the checks again (_prepare), then the state write."""
        specs = [s.target for s in staged]
        state, results = self._prepare(changes, staged, by)
        taken = self._take_ports([s for s in specs if results[s.name] == "created"])
        try:
            self._save(state, [n for n, what in results.items() if what != "unchanged"])
        except BaseException:
            _close(taken)
            raise
        self._hold_ports(state, taken)
        # One line per accepted change, in the order they were committed: with racing
        # clients it is the record of which request won.
        for c in changes:
            rec = self.state.apps[c.name]
            if isinstance(c, Scale):
                log.info("scale accepted", extra={"app": c.name, "replicas": c.replicas})
            elif results[c.name] != "unchanged":
                log.info("app %s", results[c.name], extra={
                    "app": c.name, "replicas": rec.spec.replicas, "revision": rec.revision})
        return {n: self._outcome(n, what) for n, what in results.items()}

    def _outcome(self, name: str, result: str, rollout: Rollout | None = None) -> Outcome:
        rec = self._record(name)
        return Outcome(name, result, rec.revision, self.generation(name), rec.spec, rollout,
                       rec.hold)

    # ---- what workers report ---------------------------------------------------------------

    async def rollout_complete(self, name: str, revision: int) -> None:
        async with self._commit:
            rec = self.state.apps.get(name)
            ro = rec.rollout if rec else None
            if rec is None or ro is None or rec.revision != revision:
                return
            if ro.state is not RolloutState.PROGRESSING or ro.canary is not None:
                return
            done = replace(ro, state=RolloutState.COMPLETE, updated=self.clock(),
                           message=f"revision {revision} is live")
            state = State(dict(self.state.apps), dict(self.state.deleted))
            state.apps[name] = replace(rec, rollout=done)
            self._save(state, [name], bump=False)
        log.info("rollout complete", extra={"app": name, "revision": revision})

    async def rollout_failed(self, name: str, revision: int, reason: str,
                             release: bool = False) -> None:
        """A new replica failed the rollout, or the revision's release command did
        (`release`: `reason` names the revision already): go back (rollback) or hold
        (pause)."""
        async with self._commit:
            rec = self.state.apps.get(name)
            ro = rec.rollout if rec else None
            if rec is None or ro is None or rec.revision != revision or not ro.active:
                return
            now = self.clock()
            state = State(dict(self.state.apps), dict(self.state.deleted))
            back = rec.revision_of(ro.previous) if ro.previous is not None else None
            what = reason if release else f"revision {revision} failed ({reason})"
            if rec.spec.update.failure_action is FailureAction.ROLLBACK and back is not None:
                msg = f"{what}; rolled back to {back.number}"
                new = replace(
                    rec, spec=_with_template(rec.spec, back.spec), revision=back.number,
                    rollout=Rollout(RolloutState.ROLLED_BACK, back.number, revision, None, msg,
                                    ro.started, now),
                )
            else:
                msg = f"{what}; rollout paused"
                new = replace(rec, rollout=replace(ro, state=RolloutState.FAILED, message=msg,
                                                   updated=now))
            state.apps[name] = new
            self._save(state, [name])
        log.error("rollout failed: %s", msg, extra={"app": name})

    def finish_delete(self, name: str) -> None:
        """The app's worker removed the last of it: its host port is free again."""
        if self.host_ports is not None and name not in self.state.apps:
            self.host_ports.release(name)
        if name in self.state.deleted:
            state = State(dict(self.state.apps), dict(self.state.deleted))
            del state.deleted[name]
            try:
                self.store.save_state(state)
            except OSError as e:
                log.warning("cannot write state: %s", e)
            self.state = state
        self._gone.setdefault(name, asyncio.Event()).set()

    # ---- helpers -------------------------------------------------------------------------

    def _record(self, name: str) -> AppRecord:
        rec = self.state.apps.get(name)
        if rec is None:
            raise NotFound(f"no app named {name}")
        return rec

    def _check_change(self, spec: AppSpec) -> None:
        if spec.name in self.state.deleted:
            raise InvalidInput(f"app {spec.name} is still being removed: try again in a moment")
        old = self.state.apps.get(spec.name)
        if old is None:
            return
        if old.spec.publishes != spec.publishes or old.spec.mode != spec.mode:
            shown = ", ".join(str(p) for p in old.spec.publishes)
            raise InvalidInput(
                f"app {spec.name} exists with publish {shown} in {old.spec.mode} "
                "mode: changing either changes the data plane, so `lbctl rm` it and run it again"
            )
        if old.spec.activated != spec.activated:
            # Not rolled: the two paths cannot serve one port side by side (lbctl's DNAT takes
            # every packet of the port before a host listener could, and the sandbox path's
            # placeholder holds the port the handed listeners must bind).
            now = "with" if old.spec.activated else "without"
            raise InvalidInput(
                f"app {spec.name} runs {now} socket activation: changing it changes the data "
                "plane (listeners handed from the host's namespace, or a sandbox behind a "
                "DNAT), so `lbctl rm` it and run it again"
            )
        if spec.mode is Mode.EBPF and not spec.activated:
            a, b = old.spec.options.to_json(), spec.options.to_json()
            changed = sorted(k for k in NAMESPACE_FIELDS if a.get(k) != b.get(k))
            if changed:
                raise InvalidInput(
                    f"app {spec.name} runs in ebpf mode, where {' and '.join(changed)} belong "
                    "to the sandbox whose network namespace every replica shares: changing "
                    "them needs a new sandbox, so `lbctl rm` it and run it again"
                )

    async def _resolved(self, c: SpecChange) -> SpecChange:
        """`c` with its new app's socket activation decided, or refused where this host cannot
        do what it asks (Admission.resolve); a change of an existing app that does not say
        keeps the app's (model.changes)."""
        if isinstance(c, Create | Replace) and c.name not in self.state.apps:
            return replace(c, spec=await self.admission.resolve(c.spec))
        return c

    def _check_limits(self, state: State, extra: Limits | None) -> None:
        limits_mod.check(self.state.apps.values(), state.apps.values(),
                         self.limits.plus(extra), self.defaults)

    def _take_ports(self, specs: Sequence[AppSpec]) -> dict[str, list[Placeholder]]:
        """Placeholders for new apps, all or none (InvalidInput names the port in use)."""
        taken: dict[str, list[Placeholder]] = {}
        if self.host_ports is None:
            return taken
        try:
            for s in specs:
                if s.host_listeners:
                    self.host_ports.check_spec(s)
                taken[s.name] = self.host_ports.reserve(_host_ports(s))
        except BaseException:
            _close(taken)
            raise
        return taken

    def _hold_ports(self, state: State, taken: dict[str, list[Placeholder]]) -> None:
        if self.host_ports is not None:
            for name, socks in taken.items():
                self.host_ports.hold(name, _host_ports(state.apps[name].spec), socks)

    def _published_except(self, names: Sequence[str]) -> list[AppSpec]:
        skip = set(names)
        live = [r.spec for n, r in self.state.apps.items() if n not in skip]
        return live + [s for n, s in self.state.deleted.items() if n not in skip]

    def _stage(self, state: State, spec: AppSpec, canary: int | None,
               owner: int | None) -> str:
        now = self.clock()
        old = state.apps.get(spec.name)
        if old is None:
            rev = Revision(1, spec, now, "created")
            state.apps[spec.name] = AppRecord(spec, 1, (rev,), None, owner)
            return "created"
        if old.spec == spec and canary is None:
            return "unchanged"  # and whose it was: nothing of it was set by this change
        if old.spec.spec_hash() == spec.spec_hash():
            state.apps[spec.name] = replace(old, spec=spec, owner=owner)
            return "updated"
        number = max((r.number for r in old.history), default=old.revision) + 1
        rev = Revision(number, spec, now, _change_note(old.spec, spec))
        ro = Rollout(RolloutState.PROGRESSING, number, old.revision, canary,
                     f"rolling to revision {number}", now, now)
        state.apps[spec.name] = replace(old, spec=spec, revision=number,
                                        history=old.with_history(rev), rollout=ro, owner=owner)
        return "rolling"

    def _save(self, state: State, changed: Sequence[str], bump: bool = True) -> None:
        self.store.save_state(state)  # durable before it is acted on
        self.state = state
        for name in changed:
            if bump:
                self.generations[name] = self.generations.get(name, 0) + 1
            self.on_change(name)


def _still_judged(changes: Sequence[SpecChange], before: Sequence[_Staged],
                  now: Sequence[_Staged]) -> bool:
    """Whether admission's judgement of `before` holds for `now` (the same changes applied to
    the apps as they became): the same answers to what it read, and no app judged as a
    change that now has to be created (a creation is judged for more: its host port)."""
    for c, a, b in zip(changes, before, now, strict=True):
        if not c.admitted:
            continue
        if judged(a.target) != judged(b.target) or (a.current is not None and b.current is None):
            return False
    return True


def _paused(name: str, ro: Rollout) -> Rollout:
    if not ro.active:
        raise InvalidInput(f"app {name} has no rollout in progress ({ro.state})")
    return replace(ro, state=RolloutState.PAUSED, message="paused by the user")


def _resumed(name: str, ro: Rollout) -> Rollout:
    if ro.state not in (RolloutState.PAUSED, RolloutState.FAILED, RolloutState.PROGRESSING):
        raise InvalidInput(f"app {name} has no paused rollout to resume")
    return replace(ro, state=RolloutState.PROGRESSING, canary=None, message="resumed")


def _host_ports(spec: AppSpec) -> tuple[Publish, ...]:
    """Every host address the app answers on: each is held while the app exists. Not for
    an app whose listeners are the host's (`--network host`: the replicas bind the port;
    socket activation: lbctl binds it for them), which a placeholder would make fail, or
    join their SO_REUSEPORT group; it is checked free at admission, and its listeners hold
    it while a replica runs."""
    return () if spec.host_listeners else spec.publishes


def _close(taken: dict[str, list[Placeholder]]) -> None:
    for socks in taken.values():
        for sock in socks:
            sock.close()


def _with_template(current: AppSpec, template: AppSpec) -> AppSpec:
    """`template`'s replica template with `current`'s count, placement and policy."""
    return replace(template, replicas=current.replicas, publish=current.publish,
                   extra_publishes=current.extra_publishes, mode=current.mode,
                   update=current.update, activation=current.activation)


def _change_note(old: AppSpec, new: AppSpec) -> str:
    a, b = old.template_json(), new.template_json()
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    parts = []
    for k in changed:
        parts.append(f"image {b[k]}" if k == "image" else k)
    return "changed " + ", ".join(parts) if parts else "changed"
