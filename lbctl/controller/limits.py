"""Caps on how much lbctl runs, so that one app, or one caller, cannot exhaust the host.

The daemon's own caps (`--max-apps`, `--max-containers`) apply to every caller, root too:
they bound the host's cost whoever asks (root raises them with the flags). A member's policy
may add lower ones (`max_apps`). Only growth is refused: a change that keeps or lowers the
count passes even above a cap (a cap lowered by a restart must not block a scale-down).

Why the defaults (settings.LimitSettings), measured here: each container costs about 8-13 MB
of host memory in its engine shim before the app runs anything, so 256 containers are 2-3 GB
of overhead on a 24 GB host; a Linux bridge takes at most 1024 ports, and every lbctl
container on the default network is one of them (next to everyone else's containers). 64
apps: a worker, a chain and a probe loop each, and four replicas each on average under the
container cap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lbctl.model import AppSpec, Forbidden, Mode
from lbctl.settings import LimitSettings


@dataclass(frozen=True)
class Cap:
    value: int
    rule: str  # where the cap comes from, for the message: "--max-apps of the daemon"
    prefix: str = "limit"  # "limit" (the daemon's) or "policy" (the caller's)


@dataclass(frozen=True)
class Limits:
    apps: tuple[Cap, ...] = ()
    containers: tuple[Cap, ...] = ()

    def plus(self, other: Limits | None) -> Limits:
        if other is None:
            return self
        return Limits(self.apps + other.apps, self.containers + other.containers)


def daemon_limits(settings: LimitSettings) -> Limits:
    """The daemon's caps; a cap of 0: none."""
    max_apps, max_containers = settings.max_apps, settings.max_containers
    return Limits(
        (Cap(max_apps, "--max-apps of the daemon; root can raise it"),) if max_apps else (),
        (Cap(max_containers, "--max-containers of the daemon; root can raise it"),)
        if max_containers else (),
    )


def containers(specs: Iterable[AppSpec]) -> int:
    """The containers the apps run when converged: every replica, and an ebpf app's sandbox.
    A rollout's surge (at most its parallelism) is transient and not counted."""
    return sum(s.replicas + (1 if s.mode is Mode.EBPF else 0) for s in specs)


def check(before: Iterable[AppSpec], after: Iterable[AppSpec], limits: Limits) -> None:
    """Refuse (Forbidden) a change from `before` to `after` that grows past a cap."""
    b, a = list(before), list(after)
    for what, old, new, caps in (("apps", len(b), len(a), limits.apps),
                                 ("containers", containers(b), containers(a),
                                  limits.containers)):
        if new <= old:
            continue
        for cap in caps:
            if new > cap.value:
                raise Forbidden(f"{cap.prefix}: this would make {new} {what}, more than "
                                f"{cap.value} ({cap.rule})")
