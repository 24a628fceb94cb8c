"""Waiting for the data plane: `run`, `scale`, `apply`, `update` and `rollout` return only once
it serves what was asked, and fail as soon as it cannot: a replica that exits before it is
ready, or a rollout that failed, ends the wait within seconds with the reason, not after the
timeout."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from lbctl.api.client import Client
from lbctl.cli.render import progress


class Failure(Exception):
    """Not the user's fault (exit 1)."""


@dataclass
class Goal:
    """What one app must reach. `revision`: the rollout to follow (None: no rollout).
    `canary`: percent of a held canary (the wait ends once the canary replicas serve)."""

    name: str
    revision: int | None = None
    canary: int | None = None


def _follow(a: dict[str, Any], goal: Goal) -> None:
    """A later change made a newer revision before ours went live: changes apply to the app
    as it is when they are committed, so that revision was made on top of ours, and it is
    the one that goes live now. (An undo or a rollback goes to an older number: not this.)"""
    ro = a.get("rollout")
    if (goal.revision is not None and goal.canary is None and ro
            and ro.get("target", 0) > goal.revision and ro["state"] != "rolled-back"):
        goal.revision = ro["target"]


def _rollout_failure(a: dict[str, Any], goal: Goal) -> str | None:
    ro = a.get("rollout")
    if not ro or goal.revision is None:
        return None
    if ro["state"] == "rolled-back" and ro.get("previous") == goal.revision:
        return f"rollout failed: {ro['message']}"
    if ro["state"] == "failed" and ro.get("target") == goal.revision:
        return f"rollout failed: {ro['message']}"
    if ro.get("target") != goal.revision and ro["state"] != "rolled-back":
        return f"rollout of revision {goal.revision} was replaced: {ro.get('message', '')}"
    return None


def _done(a: dict[str, Any], goal: Goal) -> bool:
    if goal.canary is not None:
        k = max(1, math.ceil(a["desired"] * goal.canary / 100))
        new = sum(1 for r in a["replicas"]
                  if r.get("revision") == goal.revision and r["state"] == "ready")
        return bool(new >= k)
    ro = a.get("rollout")
    if (goal.revision is not None and ro and ro.get("target") == goal.revision
            and ro["state"] != "complete"):
        return False
    return bool(a["converged"]) and a["ready"] >= a["desired"]


async def wait(c: Client, goals: list[Goal], timeout: float) -> list[dict[str, Any]]:
    """Until every goal is reached; returns the apps' last status."""
    started = time.time()
    deadline = time.monotonic() + timeout
    tty = sys.stderr.isatty()
    last = ""
    while True:
        apps = [await c.request("GET", f"/apps/{g.name}") for g in goals]
        for a, g in zip(apps, goals, strict=True):
            if a.get("error"):
                raise Failure(f"{a['name']}: {a['error']}")
            _follow(a, g)
            failed = _rollout_failure(a, g)
            if failed:
                raise Failure(f"{a['name']}: {failed}")
            crash = a.get("crash")
            if crash and crash.get("at", 0) >= started - 1 and g.revision is None:
                raise Failure(f"{a['name']}: {crash['message']} (see `docker logs "
                              f"{crash['replica']}`)")
        line = "  ".join(progress(a) for a in apps)
        if tty and line != last:
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
            last = line
        if all(_done(a, g) for a, g in zip(apps, goals, strict=True)):
            if tty:
                print(file=sys.stderr)
            return apps
        if time.monotonic() > deadline:
            if tty:
                print(file=sys.stderr)
            hint = "; ".join(a["last_event"] for a in apps if a.get("last_event"))
            raise Failure(
                f"timed out after {timeout:g}s: {line}"
                + (f" (last: {hint})" if hint else "")
                + "; see `lbctl status`"
            )
        await asyncio.sleep(0.2)


async def wait_hold(c: Client, name: str, held: bool, timeout: float) -> None:
    """Until the app's data plane holds its new connections (`held`), or no longer does."""
    deadline = time.monotonic() + timeout
    while True:
        a = await c.request("GET", f"/apps/{name}")
        hold = a.get("hold")
        if bool(hold and hold["holding"]) == held:
            return
        if held and not (hold and hold["paused"]):
            raise Failure(f"{name}: the hold ended before it held anything")
        if time.monotonic() > deadline:
            what = "hold new connections" if held else "release the hold"
            last = f" (last: {a['last_event']})" if a.get("last_event") else ""
            raise Failure(f"{name}: the data plane did not {what} within {timeout:g}s{last}; "
                          "see `lbctl status`")
        await asyncio.sleep(0.1)
