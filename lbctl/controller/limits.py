"""Caps on how much lbctl runs, so that one app, or one caller, cannot exhaust the host.

The daemon's own caps (`--max-apps`, `--max-containers`, `--max-pids-total`,
`--max-memory-total`) apply to every caller, root too: they bound the host's cost whoever
asks (root raises them with the flags). A member's policy adds its own: `max_apps`, and
ceilings on what members' apps hold together (`max_pids_total`, `max_memory_total`). Only
growth is refused: a change that keeps or lowers a count passes even above a cap (a cap
lowered by a restart must not block a scale-down).

An app is counted at its peak, as it runs while it changes: its replicas, a rollout's surge
(start-first: up to `parallelism` new replicas beside the old ones), a canary's new replicas
beside every old one, and an ebpf app's sandbox. Its PIDs and memory are its replicas' limits
at that peak, each replica at the larger limit of the two revisions a rollout runs: the
app's own, else the defaults a replica is created with (the daemon's default pids limit; a
member's replica: the policy's max_pids_limit and default_memory, which the worker sets).
Only a limit counts: a replica of root's without one is not counted.

Why the defaults (settings.LimitSettings), measured here: each container costs about 8-13 MB
of host memory in its engine shim before the app runs anything, so 256 containers are 2-3 GB
of overhead on a 24 GB host; a Linux bridge takes at most 1024 ports, and every lbctl
container on the default network is one of them (next to everyone else's containers). 64
apps: a worker, a chain and a probe loop each, and four replicas each on average under the
container cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lbctl.controller.store import AppRecord
from lbctl.model import AppSpec, Forbidden, Mode
from lbctl.settings import LimitSettings


@dataclass(frozen=True)
class Cap:
    value: int
    rule: str  # where the cap comes from, for the message: "--max-apps of the daemon"
    prefix: str = "limit"  # "limit" (the daemon's) or "policy" (the caller's)
    members: bool = False  # counts members' apps only (the policy's ceilings)


@dataclass(frozen=True)
class Limits:
    apps: tuple[Cap, ...] = ()
    containers: tuple[Cap, ...] = ()
    pids: tuple[Cap, ...] = ()
    memory: tuple[Cap, ...] = ()

    def plus(self, other: Limits | None) -> Limits:
        if other is None:
            return self
        return Limits(self.apps + other.apps, self.containers + other.containers,
                      self.pids + other.pids, self.memory + other.memory)


@dataclass(frozen=True)
class Defaults:
    """What a replica gets where its app sets no limit (None: none, unlimited)."""

    pids: int | None = None  # the daemon's --default-pids-limit
    member_pids: int | None = None  # a member's replica when the daemon's is 0
    member_memory: int | None = None  # a member's replica without --memory


def daemon_limits(settings: LimitSettings) -> Limits:
    """The daemon's caps; a cap of 0: none."""
    def cap(value: int, flag: str) -> tuple[Cap, ...]:
        return (Cap(value, f"{flag} of the daemon; root can raise it"),) if value else ()

    return Limits(cap(settings.max_apps, "--max-apps"),
                  cap(settings.max_containers, "--max-containers"),
                  cap(settings.max_pids_total, "--max-pids-total"),
                  cap(settings.max_memory_total, "--max-memory-total"))


@dataclass(frozen=True)
class Footprint:
    containers: int = 0
    pids: int = 0
    memory: int = 0


def peak_replicas(rec: AppRecord) -> int:
    """Replicas the app runs at most as it is: a canary's new ones beside every old one, a
    rollout's surge beside the count (controller.planner's rules)."""
    spec, ro = rec.spec, rec.rollout
    n = spec.replicas
    if ro is None or not ro.active:
        return n
    if ro.canary is not None:
        return n + min(n, max(1, math.ceil(n * ro.canary / 100)))
    return n + min(spec.update.surge, n)


def replica_limits(spec: AppSpec, member: bool, defaults: Defaults) -> tuple[int | None,
                                                                              int | None]:
    """(pids, memory bytes) one replica of `spec` is created with (None: unlimited)."""
    o = spec.options
    if o.pids_limit is not None:
        pids = o.pids_limit if o.pids_limit > 0 else None
    else:
        pids = defaults.pids or (defaults.member_pids if member else None)
    memory = o.memory_bytes()
    if memory is None and member:
        memory = defaults.member_memory
    return pids, memory


def footprint(rec: AppRecord, defaults: Defaults) -> Footprint:
    n = peak_replicas(rec)
    templates = [rec.spec]
    if rec.rollout is not None and rec.rollout.active and rec.rollout.previous is not None:
        prev = rec.revision_of(rec.rollout.previous)
        if prev is not None:
            templates.append(prev.spec)
    member = rec.owner is not None
    limits = [replica_limits(t, member, defaults) for t in templates]
    pids = max((p or 0) for p, _ in limits)
    memory = max((m or 0) for _, m in limits)
    sandbox = 1 if rec.spec.mode is Mode.EBPF and not rec.spec.host_network else 0
    return Footprint(n + sandbox, n * pids, n * memory)


def containers(specs: Iterable[AppSpec]) -> int:
    """The containers apps run when converged, with no rollout under way."""
    return sum(footprint(AppRecord(s), Defaults()).containers for s in specs)


def check(before: Iterable[AppRecord], after: Iterable[AppRecord], limits: Limits,
          defaults: Defaults = Defaults()) -> None:
    """Refuse (Forbidden) a change from `before` to `after` that grows past a cap."""
    b, a = list(before), list(after)

    def total(recs: list[AppRecord], members: bool, measure: Callable[[Footprint], int],
              ) -> int:
        return sum(measure(footprint(r, defaults)) for r in recs
                   if not members or r.owner is not None)

    measures: tuple[tuple[str, tuple[Cap, ...], Callable[[Footprint], int] | None,
                          Callable[[int], str]], ...] = (
        ("apps", limits.apps, None, str),
        ("containers", limits.containers, lambda f: f.containers, str),
        ("pids", limits.pids, lambda f: f.pids, str),
        ("memory", limits.memory, lambda f: f.memory, _bytes),
    )
    for what, caps, measure, shown in measures:
        for cap in caps:
            if measure is None:
                old = sum(1 for r in b if not cap.members or r.owner is not None)
                new = sum(1 for r in a if not cap.members or r.owner is not None)
            else:
                old, new = total(b, cap.members, measure), total(a, cap.members, measure)
            if new <= old or new <= cap.value:
                continue
            whose = "members' apps" if cap.members else "all apps"
            if what == "apps":
                msg = f"this would make {new} apps, more than {cap.value}"
            elif what == "containers":
                msg = f"this would make {new} containers, more than {cap.value}"
            else:
                msg = (f"the {what} limits of {whose} would add up to {shown(new)} at their "
                       f"peak, more than {shown(cap.value)}")
            raise Forbidden(f"{cap.prefix}: {msg} ({cap.rule})")


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"
