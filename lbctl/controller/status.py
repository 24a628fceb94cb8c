"""`lbctl status`: each app as its worker last saw it, with the kernel's connection counters.

Status never asks the engine: a wedged engine must not take `status` down with it, and what
the worker saw is what the data plane was synced to. Counters come from the kernel (rule
counters, eBPF maps) through controller.counters, shared with the scrapes and at most
`counters_max_age` old, so they count what the data plane did and never hold a sync back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lbctl.controller.activation import ListenerStates, not_taken
from lbctl.controller.apps import AppsService, NotFound
from lbctl.controller.counters import KernelCounters
from lbctl.controller.supervisor import Controller
from lbctl.controller.view import AppView
from lbctl.model import ROLE_REPLICA, Mode, ReplicaState, sandbox_name
from lbctl.model.hold import Hold
from lbctl.model.spec import shared_port_check


class Status:
    """What `GET /apps` and `/healthz` show: the apps service's records, the workers' views
    (through the controller) and the kernel's counters."""

    def __init__(self, apps: AppsService, counters: KernelCounters, controller: Controller,
                 wall: Callable[[], float] = time.time,
                 listeners: ListenerStates | None = None) -> None:
        """`listeners`: what activated apps' replicas were last found to hold
        (controller.activation)."""
        self.apps = apps
        self.counters = counters
        self.controller = controller
        self.wall = wall
        self.listeners = listeners or ListenerStates()

    def synced(self) -> bool:
        return self.controller.synced()

    async def report(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every app, or the one named (NotFound when there is none)."""
        if name is not None and self.apps.record(name) is None:
            raise NotFound(f"no app named {name}")
        counts = await self.counters.read(max_age=0)  # counts what was sent before it
        names = [name] if name is not None else sorted(self.apps.state.apps)
        rules = self.controller.hostrules
        return [_app(self.apps, n, self.controller.view(n), counts.get(n, {}), self.wall(),
                     self.listeners, rules.error(n))
                for n in names]


def _hold(hold: Hold | None, view: AppView | None, now: float) -> dict[str, Any] | None:
    """The traffic hold: asked for (`paused`, since, until) and in the data plane (`holding`,
    `held`: connections waiting in it now, ebpf mode); None when neither."""
    paused = hold is not None and hold.active(now)
    holding = bool(view is not None and view.holding)
    if not paused and not holding:
        return None
    return {
        "paused": paused,
        "since": hold.since if hold is not None else None,
        "until": hold.until if hold is not None else None,
        "holding": holding,
        "held": view.held if view is not None and view.holding else None,
    }


def _app(apps: AppsService, name: str, view: AppView | None, counts: dict[str, int],
         now: float, listeners: ListenerStates, rules_error: str | None) -> dict[str, Any]:
    """`rules_error`: why the host rules left the app's rules out (controller.hostrules)."""
    rec = apps.record(name)
    assert rec is not None
    spec = rec.spec
    replicas: list[dict[str, Any]] = []
    if view is not None:
        p = view.plan
        total = sum(counts.values())
        for c in sorted(
            (c for c in view.containers if c.role == ROLE_REPLICA and c.running),
            key=lambda c: (c.index is None, c.index or 0, c.name),
        ):
            state = p.states.get(c.id, ReplicaState.STARTING)
            if state is ReplicaState.READY and c.id not in view.in_dataplane:
                state = ReplicaState.STARTING
            held = listeners.get(name, c.id) if spec.activated else None
            if state is ReplicaState.READY and held == "not taken":
                # Found so after it was ready (it bound its own port later than the hand-over):
                # never served again, whether or not the worker's next pass has run yet.
                state = ReplicaState.UNHEALTHY
            n = counts.get(c.name, 0)
            note = None
            if spec.activated and not c.managed:
                note = "adopted: lbctl hands an activated app's listeners to its own replicas"
            elif held == "not taken":
                note = not_taken(c.name, spec.publish.container_port, spec.publish.proto)
            elif spec.mode is Mode.EBPF and not spec.activated and not c.managed and (
                p.sandbox is None or c.joined_to != p.sandbox.id
            ):
                # Adopted, but listening in a namespace of its own: no connection reaches it.
                where = ("host" if spec.host_network
                         else f"container:{sandbox_name(name)}")
                note = f"not in the app's namespace: give it network_mode: {where}"
            probed = view.probes.get(c.id)
            replicas.append({
                "name": c.name,
                "container_id": c.id,
                "state": str(state),
                "connections_total": n,
                "adopted": not c.managed,
                "uptime_seconds": round(now - c.started_at, 1) if c.started_at else None,
                "revision": c.revision,
                "weight": p.weights.get(c.id, 1) if state is ReplicaState.READY else 0,
                "share": round(n / total, 4) if total else None,
                # Activated apps: the listener lbctl handed it (controller.activation).
                **({"listener": str(held or "none")} if spec.activated else {}),
                # The readiness probe's last verdict and last failure (None: not probed yet).
                "probe": probed.to_json() if probed is not None else None,
                **({"note": note} if note else {}),
            })  # fmt: skip
    ready = sum(1 for r in replicas if r["state"] == "ready")
    # A pass error is transient (the worker retries): it is the last event, not the error.
    # Rules the kernel refused are the app's to fix (the next full sync tries them again);
    # so is a replica create the policy refused (controller.sources).
    error = ((view.error or view.refused) if view else None) or rules_error
    converged = bool(
        view is not None and view.plan.converged and view.synced
        and view.planned_generation == apps.generation(name)
    )  # fmt: skip
    ro = rec.rollout
    return {
        "name": name,
        "mode": str(spec.mode),
        # How connections reach the replicas: model.DataPath.
        "path": str(spec.path),
        "publish": str(spec.publish),  # the first, as a string (the contract's field)
        "publishes": [str(p) for p in spec.publishes],
        # "host": `--network host` (no sandbox, no DNAT); else the networks it joins.
        "network": "host" if spec.host_network else list(spec.options.networks()),
        "image": spec.image,
        "desired": spec.replicas,
        "ready": ready,
        "converged": converged,
        "error": error,
        "last_event": (view.pass_error or view.last_event) if view else None,
        "revision": rec.revision,
        "rollout": ro.to_json() if ro else None,
        "crash": view.crash.to_json() if view and view.crash else None,
        "hold": _hold(rec.hold, view, now),
        "release": view.release.to_json() if view and view.release else None,
        # Something else bound the host port while the daemon was down: our rule still sends
        # the traffic to the app, but that process may believe it serves the port.
        "port_conflict": apps.port_conflict(name),
        "readiness": spec.readiness.to_json(),
        # What the app asks for that may not do what it means (one line each, with the fix).
        "warnings": [w for w in (shared_port_check(spec),) if w],
        "replicas": replicas,
    }
