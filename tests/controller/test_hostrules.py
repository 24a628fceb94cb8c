"""HostRules asks the rules port for a full pass (compare with the kernel, repair) exactly
when its memory may be wrong: at start, after a failure, on resync(), and periodically; every
other sync is the port's fast path."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Callable

import pytest

from lbctl.controller import hostrules
from lbctl.controller.hostrules import HostRules
from lbctl.model import Publish
from lbctl.model.dataplane import Backend, Service
from lbctl.settings import HostRulesSettings
from tests.controller.fakes import FakeRules

# No pause between syncs: each test step's sync runs at once.
SETTINGS = HostRulesSettings(min_interval=0)


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(20_000):  # 200 s of the loop's virtual time: past 3 resync intervals
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 200 s")


def svc(n: int) -> Service:
    backends = tuple(Backend(f"web-{i}", f"172.17.0.{i + 2}", 80) for i in range(n))
    return Service("web", Publish("127.0.0.1", 8080, 80), backends, ("docker0",))


async def test_full_only_at_start_after_failure_on_resync_and_periodically(
    tmp_path: pathlib.Path,
) -> None:
    rules = FakeRules()
    hr = HostRules(rules, tmp_path, SETTINGS)
    task = asyncio.create_task(hr.run())
    try:
        await hr.set("web", svc(1))
        await hr.set("web", svc(2))
        assert rules.fulls == [True, False]

        rules.fail_next = 1
        with pytest.raises(hostrules.SyncFailed):
            await hr.set("web", svc(3))
        await until(lambda: rules.syncs == 3)  # HostRules retries by itself, after a backoff
        assert rules.fulls[2:] == [False, True]

        hr.resync()
        await until(lambda: len(rules.fulls) == 5)
        assert rules.fulls[4] is True
        await hr.set("web", svc(1))
        assert rules.fulls[5] is False
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # Nothing to do for resync_interval: the pass that runs then is full.
    rules = FakeRules()
    hr = HostRules(rules, tmp_path, SETTINGS)
    task = asyncio.create_task(hr.run())
    loop = asyncio.get_running_loop()
    try:
        await hr.set("web", svc(2))
        t0 = loop.time()
        await until(lambda: len(rules.fulls) >= 4)
        # three periodic passes, one per resync_interval (on the loop's virtual clock)
        assert loop.time() - t0 >= 3 * SETTINGS.resync_interval
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rules.fulls[0] is True  # a new daemon starts full
    assert all(rules.fulls[1:])  # then only periodic passes, each full


def app_svc(app: str, n: int) -> Service:
    backends = tuple(Backend(f"{app}-{i}", f"172.17.1.{i + 2}", 80) for i in range(n))
    return Service(app, Publish("127.0.0.1", 9000 + n, 80), backends, ("docker0",))


async def test_an_app_the_rules_port_refuses_fails_alone(tmp_path: pathlib.Path) -> None:
    """The rules port leaves a refused app out (quarantine): its worker's set() raises with
    its error, every other worker's returns, status reads the error, the state file keeps
    the app's previous rules, and the app is in again once its rules are accepted."""
    rules = FakeRules()
    hr = HostRules(rules, tmp_path, SETTINGS)
    task = asyncio.create_task(hr.run())
    try:
        await hr.set("bad", app_svc("bad", 1))
        rules.refuse = {"bad": "iptables-restore refused its rules: Bad IP address"}
        with pytest.raises(hostrules.RulesRefused, match="Bad IP address"):
            await hr.set("bad", app_svc("bad", 2))
        await hr.set("good", app_svc("good", 1))  # returns: good is not held back
        assert hr.error("bad") == "iptables-restore refused its rules: Bad IP address"
        assert hr.error("good") is None
        assert {s.app: len(s.backends) for s in rules.applied} == {"bad": 1, "good": 1}
        saved = json.loads((tmp_path / hostrules.STATE_FILE).read_text())["services"]
        assert {d["app"]: len(d["backends"]) for d in saved} == {"bad": 1, "good": 1}
        # Asking again for the same rules: refused again, without waiting for anything new.
        with pytest.raises(hostrules.RulesRefused):
            await hr.set("bad", app_svc("bad", 2))
        rules.refuse = {}
        await hr.set("bad", app_svc("bad", 3))
        assert hr.error("bad") is None
        assert {s.app: len(s.backends) for s in rules.applied} == {"bad": 3, "good": 1}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
