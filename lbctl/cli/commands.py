"""Each command's conversation with the daemon."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from lbctl.api.client import ApiError, Client
from lbctl.cli.render import render_history, render_rollout, render_table
from lbctl.cli.wait import Failure, Goal, wait, wait_hold
from lbctl.model import AppSpec, InvalidInput
from lbctl.model.spec import shared_port_check


async def run(sock: Path, spec: dict[str, Any], no_wait: bool, timeout: float) -> int:
    """Create the app, or roll it to the new spec when it exists."""
    name = spec["name"]
    async with Client(sock) as c:
        resp = await c.request("PUT", f"/apps/{name}", spec)
        _warn(resp)
        result = resp.get("result")
        if no_wait:
            print(f"{name}: {result}")
            return 0
        goal = _goal(name, resp)
        try:
            await wait(c, [goal], timeout)
        except Failure:
            if result == "created":  # a new app is all or nothing: a failed one leaves nothing
                await c.request("DELETE", f"/apps/{name}")
            raise
        if result == "created":
            pub = spec["publish"]
            shown = ", ".join(pub) if isinstance(pub, list) else pub
            print(f"{name}: {spec['replicas']} replicas ready on {shown}")
        elif result == "rolling":
            print(f"{name}: revision {goal.revision} is live")
        else:
            print(f"{name}: {result}")
    return 0


async def apply(sock: Path, body: dict[str, Any], no_wait: bool, timeout: float) -> int:
    async with Client(sock) as c:
        resp = await c.request("POST", "/apply", body)
        outcome: dict[str, str] = resp["result"]
        for name, what in outcome.items():
            print(f"{name}: {what}")
        for name in outcome:
            for warning in (await c.request("GET", f"/apps/{name}")).get("warnings") or ():
                print(f"lbctl: {name}: warning: {warning}", file=sys.stderr)
        if no_wait:
            return 0
        goals = [_goal(name, made) for name, made in resp["changes"].items()]
        await wait(c, goals, timeout)
    return 0


async def update(sock: Path, name: str, body: dict[str, Any], no_wait: bool,
                 timeout: float) -> int:
    async with Client(sock) as c:
        resp = await c.request("POST", f"/apps/{name}/update", body)
        _warn(resp)
        result = resp["result"]
        if no_wait:
            print(f"{name}: {result}")
            return 0
        goal = _goal(name, resp)
        goal.canary = body.get("canary")
        await wait(c, [goal], timeout)
        if goal.canary is not None:
            print(f"{name}: revision {goal.revision} serves {goal.canary}% of new connections; "
                  f"`lbctl rollout resume {name}` rolls it out, `lbctl rollout undo {name}` "
                  "takes it back")
        elif result == "rolling":
            print(f"{name}: revision {goal.revision} is live")
        else:
            print(f"{name}: {result}")
    return 0


def _warn(made: dict[str, Any]) -> None:
    """What the app as the daemon took it may not do as meant: one line each, on stderr."""
    app = made.get("app")
    if isinstance(app, dict):
        warning = shared_port_check(AppSpec.from_json(app))
        if warning:
            print(f"lbctl: {app.get('name')}: warning: {warning}", file=sys.stderr)


def _goal(name: str, made: dict[str, Any]) -> Goal:
    """What to wait for after a change: the revision it made, when it made one (the answer
    says which)."""
    return Goal(name, revision=made["revision"] if made.get("result") == "rolling" else None)


async def scale(sock: Path, targets: dict[str, int], no_wait: bool, timeout: float) -> int:
    async with Client(sock) as c:
        listing = await c.request("GET", "/apps")
        known = {a["name"] for a in listing["apps"]}
        unknown = sorted(set(targets) - known)
        if unknown:  # checked for all before any change: nothing changes on bad input
            raise InvalidInput(f"no app named {', '.join(unknown)} (see `lbctl status`)")
        for name, n in targets.items():
            await c.request("POST", f"/apps/{name}/scale", {"replicas": n})
        if not no_wait:
            await wait(c, [Goal(n) for n in targets], timeout)
    return 0


async def status(sock: Path, name: str | None, output: str, watch: bool) -> int:
    async with Client(sock) as c:
        while True:
            if name:
                apps = [await c.request("GET", f"/apps/{name}")]
            else:
                apps = (await c.request("GET", "/apps"))["apps"]
            if output == "json":
                print(json.dumps({"apps": apps}, indent=2))
            else:
                if watch:
                    print("\033[H\033[J", end="")
                print(render_table(apps))
            if not watch:
                return 0
            sys.stdout.flush()
            await asyncio.sleep(1.0)


async def rollout(sock: Path, action: str, name: str, to: int | None, output: str,
                  no_wait: bool, timeout: float) -> int:
    async with Client(sock) as c:
        if action in ("pause", "resume", "undo"):
            body = {"revision": to} if to is not None else None
            resp = await c.request("POST", f"/apps/{name}/rollout/{action}", body)
            ro = resp["rollout"]
            print(f"{name}: rollout to revision {ro['target']} {ro['state']}")
            if action == "pause" or no_wait:
                return 0
            await wait(c, [Goal(name, revision=ro["target"])], timeout)
            print(f"{name}: revision {ro['target']} is live")
            return 0
        data = await c.request("GET", f"/apps/{name}/rollout")
        if output == "json":
            print(json.dumps(data, indent=2))
            return 0
        if action == "history":
            print(render_history(data))
            return 0
        print(render_rollout(data))
        ro = data.get("rollout")
        if no_wait or not ro or ro["state"] not in ("progressing",):
            return 0 if not ro or ro["state"] in ("complete", "progressing", "paused") else 1
        await wait(c, [Goal(name, revision=ro["target"])], timeout)
        print(f"{name}: revision {ro['target']} is live")
    return 0


async def hold(sock: Path, action: str, name: str, body: dict[str, Any] | None, no_wait: bool,
               timeout: float) -> int:
    """`pause`: returns once the data plane holds the app's new connections; `resume`: once
    it no longer does (what it held is then on its way to the replicas)."""
    async with Client(sock) as c:
        resp = await c.request("POST", f"/apps/{name}/{action}", body)
        if resp["result"] == "unchanged":
            print(f"{name}: not paused")
            return 0
        if not no_wait:
            await wait_hold(c, name, action == "pause", timeout)
    if action == "pause":
        until = resp["hold"]["until"]
        print(f"{name}: paused until {time.strftime('%H:%M:%S', time.localtime(until))}: new "
              f"connections wait (`lbctl resume {name}` serves them)")
    else:
        print(f"{name}: resumed")
    return 0


async def export(sock: Path, name: str, fmt: str) -> int:
    from lbctl.export import export as render

    async with Client(sock) as c:
        data = await c.request("GET", f"/apps/{name}/spec")
    print(render(AppSpec.from_json(data), fmt), end="")
    return 0


async def rm(sock: Path, name: str, timeout: float) -> int:
    async with Client(sock) as c:
        try:
            await c.request("DELETE", f"/apps/{name}?timeout={timeout:g}")
        except ApiError as e:
            if e.status == 504:
                raise Failure(f"{name}: still removing after {timeout:g}s; it goes on in the "
                              "background (see `lbctl status`)") from None
            raise
    print(f"{name}: removed")
    return 0
