"""plan(desired, observed) -> actions: every decision of the controller, and no I/O.

The reconciler gathers what the engine and the probes see, asks this module what to do, and
applies the answer in a fixed order that never misroutes traffic:

1. create sandboxes (ebpf mode), 2. sync the data plane to `backends` (new ready replicas
   in, dead, unhealthy and draining ones out), 3. remove containers, 4. create replicas.

So a container is only stopped once a successful sync has taken it out of the data plane
(draining replicas leave it in the pass that starts their drain and are removed in a later
pass), and dead replicas are replaced by the same index once their name is free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lbctl.model import ROLE_SANDBOX, AppSpec, Container, Mode, ReplicaState


@dataclass(frozen=True)
class Observed:
    containers: Sequence[Container]
    # Probe verdict for running replicas: STARTING, READY or UNHEALTHY (absent: STARTING).
    probes: Mapping[str, ReplicaState] = field(default_factory=dict)
    # Replicas whose drain has begun: container id -> drain finished (no connection left, or
    # the drain timeout passed).
    draining: Mapping[str, bool] = field(default_factory=dict)
    # Apps whose replicas must not be (re)created: the app failed in a way that retrying
    # cannot fix (for example it does not set SO_REUSEPORT in ebpf mode).
    failed_apps: frozenset[str] = frozenset()
    # Apps that own eBPF objects in the kernel (pinned programs and maps).
    dataplane_apps: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Plan:
    create_sandboxes: tuple[str, ...] = ()
    create_replicas: tuple[tuple[str, int], ...] = ()
    start_drain: tuple[str, ...] = ()
    cancel_drain: tuple[str, ...] = ()
    remove: tuple[Container, ...] = ()
    # app -> replicas the data plane must serve (ready, not draining), sorted by name
    backends: Mapping[str, tuple[Container, ...]] = field(default_factory=dict)
    # app -> replicas still draining (ebpf: kept out of the selection table)
    draining: Mapping[str, tuple[Container, ...]] = field(default_factory=dict)
    # app -> the running sandbox (ebpf mode)
    sandboxes: Mapping[str, Container] = field(default_factory=dict)
    # container id -> state to report
    states: Mapping[str, ReplicaState] = field(default_factory=dict)
    # deleted apps whose containers are all gone but which still own eBPF objects
    gone_apps: tuple[str, ...] = ()
    # app -> every managed replica is at its desired count, ready, and nothing drains
    converged: Mapping[str, bool] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.create_sandboxes
            or self.create_replicas
            or self.start_drain
            or self.cancel_drain
            or self.remove
        )


def plan(desired: Mapping[str, AppSpec], observed: Observed) -> Plan:
    by_app: dict[str, list[Container]] = {}
    for c in observed.containers:
        by_app.setdefault(c.app, []).append(c)

    create_sandboxes: list[str] = []
    create_replicas: list[tuple[str, int]] = []
    start_drain: list[str] = []
    cancel_drain: list[str] = []
    remove: list[Container] = []
    backends: dict[str, tuple[Container, ...]] = {}
    draining: dict[str, tuple[Container, ...]] = {}
    sandboxes: dict[str, Container] = {}
    states: dict[str, ReplicaState] = {}
    converged: dict[str, bool] = {}

    for app in sorted(set(desired) | set(by_app)):
        spec = desired.get(app)
        containers = sorted(by_app.get(app, []), key=lambda c: c.name)
        replicas = [c for c in containers if c.role != ROLE_SANDBOX]
        own_sandboxes = [c for c in containers if c.role == ROLE_SANDBOX and c.managed]

        if spec is None:
            # Deleted app: its data plane entry is already gone (it is not in `desired`), so
            # replicas only wait for their established connections before they stop.
            live = False
            for c in replicas:
                if not c.managed:
                    continue
                if not c.running:
                    remove.append(c)
                    continue
                live = True
                _drain(c, observed, start_drain, remove, states)
            for s in own_sandboxes:
                if not live:
                    remove.append(s)
            continue

        sandbox: Container | None = None
        if spec.mode is Mode.EBPF:
            running = [s for s in own_sandboxes if s.running]
            sandbox = running[0] if running else None
            for s in own_sandboxes:
                if s is not sandbox:
                    remove.append(s)
            if sandbox is None:
                create_sandboxes.append(app)
            else:
                sandboxes[app] = sandbox
        else:
            remove.extend(own_sandboxes)  # left over from an earlier ebpf-mode app

        kept: dict[int, Container] = {}
        serving: list[Container] = []
        drains: list[Container] = []
        for c in replicas:
            joined = sandbox is not None and c.network_mode == f"container:{sandbox.id}"
            if spec.mode is Mode.EBPF and c.managed and c.running and not joined:
                # In a namespace whose sandbox is gone: unreachable, so replace it now.
                remove.append(c)
                continue
            if not c.running:
                if c.managed:
                    remove.append(c)
                continue
            wanted = c.managed and c.index is not None and 1 <= c.index <= spec.replicas
            if c.managed and (not wanted or c.index in kept):
                _drain(c, observed, start_drain, remove, states)
                drains.append(c)
                continue
            if c.id in observed.draining:
                cancel_drain.append(c.id)  # scaled back up before it finished draining
            if c.managed and c.index is not None:
                kept[c.index] = c
            state = observed.probes.get(c.id, ReplicaState.STARTING)
            if c.paused:  # kept (someone will unpause it) but sent nothing meanwhile
                state = ReplicaState.UNHEALTHY
            states[c.id] = state
            if state is ReplicaState.READY and (spec.mode is Mode.IPTABLES or joined):
                serving.append(c)

        missing = [i for i in range(1, spec.replicas + 1) if i not in kept]
        can_create = app not in observed.failed_apps and (
            spec.mode is Mode.IPTABLES or sandbox is not None
        )
        if can_create:
            create_replicas.extend((app, i) for i in missing)
        backends[app] = tuple(serving)
        draining[app] = tuple(drains)
        ready_managed = sum(1 for c in serving if c.managed)
        converged[app] = not missing and not drains and ready_managed == spec.replicas

    gone = tuple(
        sorted(
            a
            for a in observed.dataplane_apps - set(desired)
            if not _has_managed(by_app.get(a, []))
        )
    )
    return Plan(
        create_sandboxes=tuple(create_sandboxes),
        create_replicas=tuple(create_replicas),
        start_drain=tuple(start_drain),
        cancel_drain=tuple(cancel_drain),
        remove=tuple(remove),
        backends=backends,
        draining=draining,
        sandboxes=sandboxes,
        states=states,
        gone_apps=gone,
        converged=converged,
    )


def _drain(
    c: Container,
    observed: Observed,
    start_drain: list[str],
    remove: list[Container],
    states: dict[str, ReplicaState],
) -> None:
    states[c.id] = ReplicaState.DRAINING
    if c.id not in observed.draining:
        start_drain.append(c.id)
    elif observed.draining[c.id]:
        remove.append(c)


def _has_managed(containers: Sequence[Container]) -> bool:
    return any(c.managed for c in containers)
