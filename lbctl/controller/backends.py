"""A plan, as each data plane needs it: the host rules' `Service` of an app and the members
of its eBPF selection table. Pure: the worker applies what these return."""

from __future__ import annotations

from collections.abc import Iterable

from lbctl.controller.planner import AppPlan
from lbctl.model import ROLE_HOLD, ROLE_REPLICA, AppSpec, Container, Mode
from lbctl.model.dataplane import Backend, Member, Service


def service(spec: AppSpec, p: AppPlan) -> Service:
    """iptables mode: a DNAT to every ready replica, weighted, and the traffic hold's
    deadline while it holds. ebpf mode: a DNAT to the sandbox (the program picks the replica
    inside, or the hold) once a replica is ready or a hold holds, no backend (a refusal, as
    in iptables mode) before: with an empty table the kernel's own choice among the group's
    listeners would hand clients to a replica that listens but is not ready (one that
    answers 503 while it warms up). The caller checks the sandbox runs."""
    port = spec.publish.container_port
    if spec.mode is Mode.EBPF:
        sb = p.sandbox
        assert sb is not None and sb.ip is not None
        target = (dnat_target(sb, port),) if p.backends or p.holds else ()
        return Service(spec.name, spec.publish, target, (sb.bridge,) if sb.bridge else (),
                       spec.extra_publishes)
    members = [c for c in p.backends if c.ip]
    backends = tuple(dnat_target(c, port, p.weights.get(c.id, 1)) for c in members)
    # Adopted containers (docker-compose) sit on their project's own bridge.
    bridges = tuple(sorted({c.bridge for c in members if c.bridge}))
    return Service(spec.name, spec.publish, backends, bridges, spec.extra_publishes,
                   p.hold_until)


def dnat_target(c: Container, port: int, weight: int = 1) -> Backend:
    """Where the DNAT sends connections for container `c` (a replica, or ebpf mode's
    sandbox): its addresses on the network template.attachment targets, IPv6 too
    where that network has it."""
    return Backend(c.name, c.ip or "", port, weight, c.ip6)


def ebpf_members(
    p: AppPlan, containers: Iterable[Container], leaving: frozenset[str],
    activated: bool = False, probed: bool = True,
) -> tuple[list[Member], list[Member], list[Member]]:
    """(ready, draining, probing) members: ready replicas by weight in the selection table;
    draining ones stay in the socket map only, so their queued connections can still migrate;
    where `probed` (an HTTP readiness probe, which reaches a replica through its slot) the
    app's other running replicas (starting, unready, unhealthy) are in the socket map only
    too, so that each is probed (and an unready one seen to pass again), while no table
    sends them a client. Not otherwise: a UDP flow the program remembers goes to its
    replica's socket while it is in the map, and one frozen or failing must lose its flows.
    `activated`: of an activated app's, the ones lbctl created, probed or not (it put their
    listeners in the map when it handed them over; an adopted one was handed nothing)."""
    ready = [Member(c.name, c.pid, p.weights.get(c.id, 1)) for c in p.backends if c.pid]
    # Only replicas in the app's namespace: one left in a lost sandbox's namespace has no
    # listener in the app's groups, and asking for it would fail the sync.
    ns = p.sandbox.id if p.sandbox is not None else None
    served = {c.id for c in p.backends}
    draining, probing = [], []
    for c in containers:
        if not (c.running and c.pid and c.role in (ROLE_REPLICA, ROLE_HOLD)
                and c.joined_to == ns):
            continue
        if c.id in leaving:
            draining.append(Member(c.name, c.pid))  # a replica, or a hold handing back
        elif c.role == ROLE_REPLICA and c.id not in served and (
                c.managed if activated else probed):
            probing.append(Member(c.name, c.pid))
    return ready, draining, probing


def hold_members(p: AppPlan) -> list[Member]:
    """The hold containers new connections go to while the app is paused, preferred first
    (the program steers each group to the first whose listener it holds)."""
    return [Member(c.name, c.pid) for c in p.holds if c.pid]
