"""`lbctl status`: each app as its worker last saw it, with the kernel's connection counters.

Status never asks the engine: a wedged engine must not take `status` down with it, and what
the worker saw is what the data plane was synced to. Counters are read from the kernel (rule
counters, eBPF maps) at each call, so they count what the data plane did.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lbctl.controller.apps import NotFound
from lbctl.controller.supervisor import Controller
from lbctl.model import ROLE_REPLICA, Mode, ReplicaState, sandbox_name

log = logging.getLogger("lbctl.controller")


async def counters(ctl: Controller) -> dict[str, dict[str, int]]:
    """app -> replica -> new connections the data plane sent it; also feeds the metrics."""
    s = ctl.s
    out: dict[str, dict[str, int]] = {}
    try:
        for (app, replica), n in (await s.hostrules.rules.counters()).items():
            out.setdefault(app, {})[replica] = n
    except Exception as e:
        log.warning("reading iptables counters: %s", e)
    if s.ebpf is not None:
        pinned = set(s.ebpf.pinned_apps())
        for app in sorted(s.apps.names() & pinned):
            rec = s.apps.record(app)
            if rec is None or rec.spec.mode is not Mode.EBPF:
                continue
            try:
                out[app] = await s.ebpf.counters(app)
                for reason, n in (await s.ebpf.reasons(app)).items():
                    s.metrics.bpf_reasons.values[(app, reason)] = n
            except Exception as e:
                log.warning("reading eBPF counters of %s: %s", app, e)
    for app, per in out.items():
        if app in s.apps.state.apps:
            for replica, n in per.items():
                s.metrics.connections.values[(app, replica)] = n
    return out


async def status(ctl: Controller, name: str | None = None) -> list[dict[str, Any]]:
    apps = ctl.s.apps
    if name is not None and apps.record(name) is None:
        raise NotFound(f"no app named {name}")
    counts = await counters(ctl)
    names = [name] if name is not None else sorted(apps.state.apps)
    return [_app(ctl, n, counts.get(n, {})) for n in names]


def _app(ctl: Controller, name: str, counts: dict[str, int]) -> dict[str, Any]:
    apps = ctl.s.apps
    rec = apps.record(name)
    assert rec is not None
    spec = rec.spec
    w = ctl.worker(name)
    now = time.time()
    replicas: list[dict[str, Any]] = []
    view = w.view if w else None
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
            n = counts.get(c.name, 0)
            note = None
            if spec.mode is Mode.EBPF and not c.managed and (
                p.sandbox is None or c.joined_to != p.sandbox.id
            ):
                # Adopted, but listening in a namespace of its own: no connection reaches it.
                where = ("host" if spec.host_network
                         else f"container:{sandbox_name(name)}")
                note = f"not in the app's namespace: give it network_mode: {where}"
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
                **({"note": note} if note else {}),
            })  # fmt: skip
    ready = sum(1 for r in replicas if r["state"] == "ready")
    # A pass error is transient (the worker retries): it is the last event, not the error.
    error = view.error if view else None
    converged = bool(
        view is not None and view.plan.converged and view.synced
        and view.planned_generation == apps.generation(name)
    )  # fmt: skip
    ro = rec.rollout
    return {
        "name": name,
        "mode": str(spec.mode),
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
        # Something else bound the host port while the daemon was down: our rule still sends
        # the traffic to the app, but that process may believe it serves the port.
        "port_conflict": apps.port_conflict(name),
        "replicas": replicas,
    }
