"""plan_app(desired, observed) -> AppPlan: every decision about one app, and no I/O.

The app's worker gathers what the engine and the probes see, asks this module what to do and
applies the answer in an order that never misroutes traffic:

1. create the sandbox (ebpf mode), 2. sync the data plane to `backends` (new ready replicas
   in; dead, unhealthy and retiring ones out), 3. only after that sync succeeded, start the
   retirement (drain, then stop and remove) of `retire`, 4. create replicas.

So a container is stopped only once a successful sync has taken it out of the data plane,
and a dead replica is replaced by the same index once its name is free.

Revisions: every managed replica carries the hash of the spec it was created from. Replicas
of another hash than the target's are "old"; while any exist a rollout is in progress and
`_roll` replaces them under the app's UpdatePolicy, with Kubernetes' arithmetic: never more
than desired + surge replicas, never fewer available than desired - unavailable, a new
replica available only once it stayed ready for `monitor` seconds. Everything here is level-
triggered, so a restarted daemon goes on from whatever runs.

Release: when the target revision has a release command that has not passed
(`Desired.release`) and no replica of that revision exists yet, a one-off container of it runs
the command first (`start_release`), labelled with the revision's hash; until it exits 0 no
replica of that revision is created and no old one retires for the rollout. The worker reads
how it ended from the exited container (`release_exited`) or stops one that outlived the
release timeout (`release_overdue`), and records the result: a failure fails the rollout, so
the planner never starts it again for the same rollout.

Traffic hold (ebpf mode): while the app's hold is before its deadline, a hold container (a
listener in the replicas' reuseport group that never accepts) takes every new connection
(`holds`, preferred first); a hold of another deadline (an earlier pause) keeps holding until
the current one holds (`Observed.holding`), then retires, and its queued connections migrate
to the current one. Once the hold is over every hold container retires after the sync that
returns the tables to the replicas, and its queue migrates to them. iptables mode holds with
rules (`hold_until`), no container.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lbctl.model import (
    ROLE_HOLD,
    ROLE_RELEASE,
    ROLE_REPLICA,
    ROLE_SANDBOX,
    AppSpec,
    Container,
    Mode,
    ReplicaState,
)
from lbctl.model.hold import hold_tag
from lbctl.model.options import HOST_NETWORK
from lbctl.model.rollout import UpdatePolicy
from lbctl.settings import WorkerSettings


@dataclass(frozen=True)
class Probe:
    """The last readiness verdict of a running replica and since when it holds."""

    state: ReplicaState
    since: float  # monotonic seconds


@dataclass(frozen=True)
class Desired:
    """What the app should be. `spec` is None for a deleted app whose containers still go."""

    spec: AppSpec | None
    # The hash replicas should run; None: the spec's own (no rollout state kept).
    target_hash: str | None = None
    revision: int | None = None
    # The hash of the revision a canary runs beside; old replicas that crash during a canary
    # are replaced with it, so the canary's share stays what the user asked for.
    stable_hash: str | None = None
    canary: int | None = None  # percent of new connections for the new revision, held
    paused: bool = False
    # Deleted app: its last spec, so its replicas drain as they served (port, protocol, mode).
    gone: AppSpec | None = None
    # The traffic hold's deadline (epoch seconds): it holds while `Observed.wall` is before.
    hold_until: float | None = None
    # The release command the target revision still has to pass (None: none, or it passed).
    release: tuple[str, ...] | None = None

    @property
    def hash(self) -> str | None:
        if self.target_hash is not None:
            return self.target_hash
        return self.spec.spec_hash() if self.spec else None


@dataclass(frozen=True)
class Observed:
    containers: Sequence[Container]
    probes: Mapping[str, Probe] = field(default_factory=dict)
    # Containers whose retirement (drain, stop, remove) is under way.
    retiring: frozenset[str] = frozenset()
    # Of those, the ones still draining that left only because there were too many: a
    # scale-up takes them back instead of starting new ones.
    reclaimable: frozenset[str] = frozenset()
    # Of those, the ones already stopping: their name is free in a moment, so a successor
    # waits for it rather than take a new index.
    stopping: frozenset[str] = frozenset()
    # Running containers the engine announced it is stopping, killing or pausing.
    doomed: frozenset[str] = frozenset()
    # Replicas that were ready at least once (a crash of one that never was is a crash loop).
    ever_ready: frozenset[str] = frozenset()
    now: float = 0.0  # the controller's clock (controller.clock), for probe ages
    wall: float = 0.0  # epoch seconds, for container start times
    # No replica may be created: the app failed in a way retrying cannot fix, or its mode is
    # unavailable on this host now.
    blocked: bool = False
    unhealthy_grace: float = WorkerSettings.unhealthy_grace  # the settings' default
    # Clock time of the rollout's last step (a batch started), for the policy's delay;
    # -inf: none yet.
    last_step: float = -math.inf
    # Hold containers whose listeners the data plane holds (in its socket map): the one that
    # replaces an older hold takes over once it is in.
    holding: frozenset[str] = frozenset()
    release_timeout: float = WorkerSettings.release_timeout  # seconds a release may run


@dataclass(frozen=True)
class Create:
    index: int
    spec_hash: str  # which revision to create it from


@dataclass(frozen=True)
class AppPlan:
    create_sandbox: bool = False
    sandbox: Container | None = None  # the running sandbox (ebpf mode)
    create: tuple[Create, ...] = ()
    # Leave the data plane in this pass; once the sync succeeded, drain (running ones) and
    # remove. Never an adopted container. `surplus`: the ones retired only because there are
    # too many (a scale-up may reclaim them while they drain).
    retire: tuple[Container, ...] = ()
    surplus: frozenset[str] = frozenset()
    # Of `retire`, replicas left in the namespace of a sandbox that is gone: nothing of theirs
    # can be reached, so they are stopped without a drain.
    orphaned: frozenset[str] = frozenset()
    # Draining replicas to take back into service (their retirement is cancelled).
    reclaim: tuple[Container, ...] = ()
    # Replicas the data plane must serve (ready, not retiring), sorted by name, and their
    # weights (a canary's share of new connections); absent weight: 1.
    backends: tuple[Container, ...] = ()
    weights: Mapping[str, int] = field(default_factory=dict)
    states: Mapping[str, ReplicaState] = field(default_factory=dict)
    # Managed replicas that died without ever being ready: the crash loop to report.
    crashed: tuple[Container, ...] = ()
    # A new replica failed the rollout (exited, stayed unready, turned unhealthy): why.
    rollout_failure: str | None = None
    rollout_culprit: Container | None = None  # the new replica that failed it
    rollout_complete: bool = False
    rollout_step: bool = False  # a new batch starts in this pass (for the policy's delay)
    # Every wanted replica runs the target revision, is ready, and nothing retires.
    converged: bool = False
    # The traffic hold (module doc): the active deadline, the hold containers to steer new
    # connections to (preferred first; ebpf mode), and whether one must be created.
    hold_until: float | None = None
    holds: tuple[Container, ...] = ()
    create_hold: bool = False
    # The release step (module doc): start the target revision's release container; the one
    # that runs, or that exited (its result to record), or that outlived the release timeout.
    start_release: bool = False
    releasing: Container | None = None
    release_exited: Container | None = None
    release_overdue: Container | None = None
    # A deleted app with no managed container left: its worker may finish.
    done: bool = False

    @property
    def changes(self) -> bool:
        return bool(self.create_sandbox or self.create or self.retire or self.create_hold
                    or self.start_release)


def host_namespace(app: str) -> Container:
    """A `--network host` app's stand-in for a sandbox: the namespace its replicas join is
    the host's (HOST_NETWORK, as the runtime names their network mode). Not managed, so nothing
    ever stops or re-creates it; no address, since no DNAT leads to it."""
    return Container(id=HOST_NETWORK, name=HOST_NETWORK, app=app, role=ROLE_SANDBOX, managed=False,
                     index=None, running=True, health=None, ip=None, pid=None,
                     started_at=None)


def is_host_namespace(c: Container | None) -> bool:
    return c is not None and c.id == HOST_NETWORK and not c.managed


def own_namespaces(spec: AppSpec) -> bool:
    """Each replica lives in a network namespace of its own (iptables mode: the DNAT picks
    it by address; socket activation: its listeners are the host's, handed to it), so the
    app has no sandbox, and a replica is not orphaned by one's loss."""
    return spec.mode is Mode.IPTABLES or spec.activated


def plan_app(desired: Desired, observed: Observed) -> AppPlan:
    spec = desired.spec
    containers = sorted(observed.containers, key=lambda c: c.name)
    replicas = [c for c in containers if c.role == ROLE_REPLICA]
    sandboxes = [c for c in containers if c.role == ROLE_SANDBOX and c.managed]
    # lbctl's one-off and hold containers: never replicas, never adopted.
    helpers = [c for c in containers if c.role in (ROLE_HOLD, ROLE_RELEASE) and c.managed]
    retiring = observed.retiring
    if spec is None:
        return _plan_deleted(replicas, sandboxes, helpers, retiring)

    retire: list[Container] = []
    sandbox: Container | None = None
    create_sandbox = False
    # Replicas in namespaces of their own (iptables mode, socket activation) need no sandbox.
    own = own_namespaces(spec)
    if spec.mode is Mode.EBPF and spec.host_network:
        # The host's namespace is always there: it stands in for the sandbox, and a real
        # sandbox (left by a crash mid-change) has nothing to hold.
        sandbox = host_namespace(spec.name)
        retire += [s for s in sandboxes if s.id not in retiring]
    elif not own:
        running = [s for s in sandboxes if s.running and s.id not in retiring]
        sandbox = running[0] if running else None
        retire += [s for s in sandboxes if s is not sandbox and s.id not in retiring]
        # A dead sandbox still holds the name its successor needs: it goes first.
        create_sandbox = sandbox is None and not observed.blocked and not any(
            s.id in retiring or not s.running for s in sandboxes
        )
    else:
        # From an earlier ebpf app of the same name.
        retire += [s for s in sandboxes if s.id not in retiring]

    states: dict[str, ReplicaState] = {}
    active: list[Container] = []  # managed, running, not retiring: what counts as a replica
    serving: list[Container] = []
    crashed: list[Container] = []
    orphaned: list[Container] = []
    dead_indexes: set[int] = set()
    target = desired.hash or spec.spec_hash()
    for c in replicas:
        if c.id in retiring:
            if c.running:
                states[c.id] = ReplicaState.DRAINING
            if c.managed and c.index is not None and (
                not c.running or c.id in observed.stopping
            ):
                dead_indexes.add(c.index)  # its successor waits for the name
            continue
        if not c.running:
            if c.managed:
                retire.append(c)
                if c.index is not None:
                    dead_indexes.add(c.index)
                if _crashed(c, observed, target):
                    crashed.append(c)
            continue
        joined = sandbox is not None and c.joined_to == sandbox.id
        if not own and c.managed and not joined:
            # In a namespace whose sandbox is gone: the namespace lost its interface with the
            # sandbox, so nothing there is reachable or can finish. It goes at once, without a
            # drain, and its successor takes its name once it is removed (a moment), as a
            # crashed replica's does: names stay 1..N across a sandbox repair.
            retire.append(c)
            orphaned.append(c)
            if c.index is not None:
                dead_indexes.add(c.index)
            continue
        state = _state(c, observed)
        states[c.id] = state
        if c.managed and c.index is not None:
            active.append(c)
        if state is ReplicaState.READY and (own or joined):
            serving.append(c)

    # Replaced after the grace: a replica that stays unhealthy is not coming back by itself.
    # A paused one is (someone will unpause it) and a doomed one is going anyway.
    expired = [
        c for c in active
        if states[c.id] is ReplicaState.UNHEALTHY and not c.paused
        and c.id not in observed.doomed
        and observed.now - _since(c, observed) >= observed.unhealthy_grace
    ]  # fmt: skip
    retire += expired
    active = [c for c in active if c not in expired]

    release = _plan_release(spec, desired, observed, replicas, helpers, target)
    retire += release.retire
    hold = _plan_hold(spec, desired, observed, sandbox, helpers)
    retire += hold.retire

    roll = _roll(spec, desired, observed, active, states, target, release.pending)
    retire += roll.retire
    out = {c.id for c in roll.retire}
    serving = [c for c in serving if c.id not in out and c not in expired]
    for c in roll.retire:
        if c.running:
            states[c.id] = ReplicaState.DRAINING
    for c in expired:
        states[c.id] = ReplicaState.DRAINING

    # A replica that drains only because it was surplus goes back into service rather than a
    # new one being started (scale flapping churns no container).
    reclaim: list[Container] = []
    pool = sorted(
        (c for c in replicas if c.id in observed.reclaimable and c.running),
        key=lambda c: c.index or 0,
    )
    wanted: list[str] = []
    for h in roll.create:
        back = next((c for c in pool if _hash(c, target) == h), None)
        if back is not None:
            pool.remove(back)
            reclaim.append(back)
            states[back.id] = observed.probes[back.id].state if back.id in observed.probes \
                else ReplicaState.STARTING
        else:
            wanted.append(h)
    roll.create = wanted

    creates: list[Create] = []
    if not observed.blocked and (own or sandbox is not None):
        used = {c.index for c in replicas if c.managed and c.index is not None}
        free = _free_indexes(used, len(roll.create) + len(dead_indexes))
        waiting = sorted(dead_indexes)
        for h in roll.create:
            # A crashed replica's successor takes its index once the dead one is removed
            # (this pass retires it): wait for the name rather than take a new index.
            if waiting and waiting[0] < free[0]:
                waiting.pop(0)
                continue
            creates.append(Create(free.pop(0), h))

    weights = _weights(desired, serving, target)
    ready_target = sum(
        1 for c in active
        if _hash(c, target) == target and states[c.id] is ReplicaState.READY
        and c.id not in out
    )  # fmt: skip
    old_left = any(_hash(c, target) != target for c in active if c.id not in out)
    converged = (
        not creates and not roll.create and not dead_indexes and not reclaim
        and not any(c.running for c in retire) and not any(c.id in retiring for c in replicas)
        and not old_left and ready_target == spec.replicas
        and (own or sandbox is not None) and not release.pending
    )  # fmt: skip
    return AppPlan(
        create_sandbox=create_sandbox,
        sandbox=sandbox,
        create=tuple(creates),
        retire=tuple(_unique(retire)),
        surplus=frozenset(c.id for c in roll.surplus),
        orphaned=frozenset(c.id for c in orphaned),
        reclaim=tuple(reclaim),
        backends=tuple(serving),
        weights=weights,
        states=states,
        crashed=tuple(crashed),
        rollout_failure=roll.failure[1] if roll.failure else None,
        rollout_culprit=roll.failure[0] if roll.failure else None,
        # Done once the old replicas are gone, not merely out of the data plane.
        rollout_complete=not old_left and ready_target == spec.replicas
        and not any(c.id in retiring and c.running for c in replicas)
        and not any(c.running for c in retire),
        rollout_step=roll.step,
        converged=converged,
        hold_until=hold.until,
        holds=hold.holds,
        create_hold=hold.create,
        start_release=release.start,
        releasing=release.running,
        release_exited=release.exited,
        release_overdue=release.overdue,
    )


@dataclass
class _Release:
    pending: bool = False  # the target revision's replicas wait for its release
    start: bool = False
    running: Container | None = None
    exited: Container | None = None
    overdue: Container | None = None
    retire: list[Container] = field(default_factory=list)


def _plan_release(spec: AppSpec, desired: Desired, observed: Observed,
                  replicas: list[Container], helpers: list[Container], target: str) -> _Release:
    """The release step of the target revision (module doc). Its container is the one
    labelled with the target's hash; any other release container is left over (a revision
    that was replaced while its release ran, one whose result was recorded) and goes."""
    r = _Release()
    mine = [c for c in helpers if c.role == ROLE_RELEASE]
    needed = (
        desired.release is not None and spec.replicas > 0
        and not any(c.managed and _hash(c, target) == target for c in replicas)
    )  # fmt: skip
    current = [c for c in mine if c.spec_hash == target and c.id not in observed.retiring]
    if needed:
        r.pending = True
        run = next((c for c in current if c.running), None)
        done = next((c for c in current if not c.running), None)
        if done is not None:
            r.exited = done
        elif run is not None:
            started = run.started_at if run.started_at is not None else observed.wall
            if observed.wall - started > observed.release_timeout:
                r.overdue = run
            else:
                r.running = run
        elif not any(c.spec_hash == target for c in mine):
            # Not while the rollout is held (paused, or failed with failure_action pause:
            # `rollout resume` runs it again), nor for an app that failed.
            r.start = not observed.blocked and not desired.paused
        keep = {c.id for c in (r.exited, r.running, r.overdue) if c is not None}
    else:
        keep = set()
    r.retire = [c for c in mine if c.id not in keep and c.id not in observed.retiring]
    return r


@dataclass
class _Hold:
    until: float | None = None
    holds: tuple[Container, ...] = ()
    create: bool = False
    retire: list[Container] = field(default_factory=list)


def _plan_hold(spec: AppSpec, desired: Desired, observed: Observed, sandbox: Container | None,
               helpers: list[Container]) -> _Hold:
    """The traffic hold (module doc)."""
    h = _Hold()
    mine = [c for c in helpers if c.role == ROLE_HOLD and c.id not in observed.retiring]
    if desired.hold_until is not None and observed.wall < desired.hold_until:
        h.until = desired.hold_until
    if h.until is None or spec.mode is not Mode.EBPF or sandbox is None:
        # Not held, or not by a container: what is left goes (an ebpf app whose sandbox is
        # being repaired gets a new hold in its new namespace).
        h.retire = mine
        return h
    want = hold_tag(h.until)
    live = [c for c in mine if c.running and c.joined_to == sandbox.id]
    current = next((c for c in live if c.hold == want), None)
    h.retire = [c for c in mine if c not in live]
    if current is None:
        h.holds = tuple(live)  # an earlier pause's hold goes on holding meanwhile
        h.create = not observed.blocked and not any(c.hold == want for c in mine)
    elif current.id in observed.holding:
        h.holds = (current,)
        h.retire += [c for c in live if c is not current]
    else:
        h.holds = (current, *(c for c in live if c is not current))
    return h


@dataclass
class _Roll:
    create: list[str] = field(default_factory=list)  # spec hashes, one per replica to create
    retire: list[Container] = field(default_factory=list)
    surplus: list[Container] = field(default_factory=list)  # retired for being too many
    failure: tuple[Container, str] | None = None
    step: bool = False


def _roll(
    spec: AppSpec,
    desired: Desired,
    observed: Observed,
    active: list[Container],
    states: Mapping[str, ReplicaState],
    target: str,
    release_pending: bool = False,
) -> _Roll:
    """Replica count and revision: what to create and what to retire. `release_pending`:
    the target revision's release has not passed, so none of its replicas may start."""
    n = spec.replicas
    policy = spec.update
    new = [c for c in active if _hash(c, target) == target]
    old = [c for c in active if _hash(c, target) != target]
    r = _Roll()

    def ready(c: Container) -> bool:
        return states[c.id] is ReplicaState.READY

    if not old:
        # Steady state: scale. Surplus goes unready first, then the highest index.
        if len(new) > n:
            r.retire = r.surplus = _by_retire_order(new, ready)[: len(new) - n]
        if not release_pending:
            r.create = [target] * max(0, n - len(new))
        return r

    if release_pending:
        # The old revision serves as it is until the release passed (a crashed old replica
        # is replaced by its own revision); no step of the rollout starts.
        stable = desired.stable_hash or _hash(old[0], target)
        r.create = [stable] * max(0, n - len(old) - len(new))
        return r

    # A rollout is under way: did a new replica fail it?
    r.failure = _rollout_failure(new, desired, observed, states, target, policy)
    if desired.canary is not None:
        k = min(n, max(1, math.ceil(n * desired.canary / 100)))
        if len(new) > k:
            r.retire += _by_retire_order(new, ready)[: len(new) - k]
        elif not r.failure:
            r.create += [target] * (k - len(new))
        stable = desired.stable_hash or _hash(old[0], target)
        if len(old) > n:
            r.retire += _by_retire_order(old, ready)[: len(old) - n]
        r.create += [stable] * max(0, n - len(old))
        return r

    # Unready old replicas leave at once: they serve nobody, so availability does not drop.
    unready_old = [c for c in old if not ready(c)]
    r.retire += unready_old
    old = [c for c in old if ready(c)]
    if desired.paused or r.failure:
        # Hold: no new batch; keep the replica count (a crashed replica is replaced).
        r.create = [target] * max(0, n - len(new) - len(old))
        return r

    stable_new = [
        c for c in new if ready(c) and observed.now - _since(c, observed) >= policy.monitor
    ]
    available = len(stable_new) + len(old)
    min_available = n - policy.unavailable
    retire_n = max(0, min(len(old), available - min_available))
    # Never below the count the user asked for by more than the policy allows, and never
    # more than `parallelism` old replicas leave in one step.
    retire_n = min(retire_n, policy.parallelism)
    delayed = policy.delay > 0 and observed.now - observed.last_step < policy.delay
    if delayed:
        retire_n = 0
    r.retire += _by_retire_order(old, ready)[:retire_n]
    total = len(new) + len(old) - retire_n
    grow = min(n - len(new), n + policy.surge - total)
    if grow > 0 and not delayed:
        r.create = [target] * grow
        r.step = True
    return r


def _rollout_failure(
    new: list[Container],
    desired: Desired,
    observed: Observed,
    states: Mapping[str, ReplicaState],
    target: str,
    policy: UpdatePolicy,
) -> tuple[Container, str] | None:
    for c in observed.containers:
        if (
            c.managed and c.role == ROLE_REPLICA and not c.running
            and _hash(c, target) == target and c.id not in observed.retiring
        ):  # fmt: skip
            code = f" with code {c.exit_code}" if c.exit_code is not None else ""
            return c, f"{c.name} exited{code}"
    for c in new:
        st = states[c.id]
        if st is ReplicaState.UNHEALTHY and not c.paused and c.id not in observed.doomed:
            return c, f"{c.name} is unhealthy"
        if (
            st is ReplicaState.STARTING and c.started_at is not None
            and observed.wall - c.started_at > policy.ready_timeout
        ):  # fmt: skip
            return c, f"{c.name} was not ready after {policy.ready_timeout:g}s"
        if st is ReplicaState.UNREADY and observed.now - _since(c, observed) > \
                policy.ready_timeout:
            # It was ready, then failed its readiness probe and never passed again.
            return c, f"{c.name} was not ready again after {policy.ready_timeout:g}s"
    return None


def _plan_deleted(
    replicas: list[Container], sandboxes: list[Container], helpers: list[Container],
    retiring: frozenset[str],
) -> AppPlan:
    # Its data plane entry goes in this pass (the worker removes it whatever the plan says):
    # running replicas then only wait for their established connections before they stop.
    members = [c for c in replicas if c.managed] + helpers
    retire = [c for c in members if c.id not in retiring]
    states = {c.id: ReplicaState.DRAINING for c in replicas if c.managed and c.running}
    # Podman keeps a sandbox while containers that joined it exist: they go first.
    if not members:
        retire += [s for s in sandboxes if s.id not in retiring]
    done = not members and not sandboxes
    return AppPlan(retire=tuple(retire), states=states, done=done)


# Exit codes of a replica that was stopped, not one that failed: 0 after a graceful
# shutdown, 143 = 128 + SIGTERM.
_STOPPED = (0, 143)


def _crashed(c: Container, observed: Observed, target: str) -> bool:
    """A replica of the current revision that exited without ever being ready: a crash loop
    to report. (A daemon restarted in the middle of a stop has no memory of the replica being
    ready; the exit code tells a stop from a failure.)"""
    return (c.id not in observed.ever_ready and _hash(c, target) == target
            and c.exit_code not in _STOPPED)


def _state(c: Container, observed: Observed) -> ReplicaState:
    if c.paused or c.id in observed.doomed:
        return ReplicaState.UNHEALTHY  # kept (paused: someone will unpause it), sent nothing
    p = observed.probes.get(c.id)
    return p.state if p else ReplicaState.STARTING


def _since(c: Container, observed: Observed) -> float:
    p = observed.probes.get(c.id)
    return p.since if p else observed.now


def _hash(c: Container, target: str) -> str:
    # A replica without the label predates revisions: it runs the only spec there was.
    return c.spec_hash or target


def _by_retire_order(
    cs: list[Container], ready: Callable[[Container], bool]
) -> list[Container]:
    """Who leaves first: unready before ready, then the highest index."""
    return sorted(cs, key=lambda c: (ready(c), -(c.index or 0)))


def _free_indexes(used: set[int], n: int) -> list[int]:
    out: list[int] = []
    i = 1
    while len(out) < n + 1:
        if i not in used:
            out.append(i)
        i += 1
    return out


def _weights(desired: Desired, serving: list[Container], target: str) -> dict[str, int]:
    """A canary's share of new connections as integer weights: k new replicas at w_new and
    m old ones at w_old give the new ones pct % when w_new = pct*m and w_old = (100-pct)*k."""
    if desired.canary is None:
        return {}
    new = [c for c in serving if _hash(c, target) == target]
    old = [c for c in serving if _hash(c, target) != target]
    if not new or not old:
        return {}
    pct = desired.canary
    g = math.gcd(pct * len(old), (100 - pct) * len(new)) or 1
    w_new, w_old = pct * len(old) // g, (100 - pct) * len(new) // g
    return {**{c.id: w_new for c in new}, **{c.id: w_old for c in old}}


def _unique(cs: list[Container]) -> list[Container]:
    seen: set[str] = set()
    out = []
    for c in cs:
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return out
