"""The release step on the controller's virtual clock: before the first replica of each new
revision, once; a failure fails the rollout and the old revision keeps serving; a timeout; a
changed command alone runs nothing. tests/e2e/test_release.py runs it on the real engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lbctl.model import ROLE_RELEASE
from lbctl.model.changes import Update
from lbctl.model.runtime import CreateRequest
from lbctl.model.spec import Mode
from lbctl.settings import Settings
from tests.controller.fakes import FAST, FakeEngine, harness, loop_wall, spec


def releases(engine: FakeEngine) -> list[str]:
    return [n for n in engine.created if "-release-" in n]


def exits(codes: dict[str, int]) -> FakeEngine:
    """An engine whose release containers exit at once, with codes[name] (default 0)."""
    engine = FakeEngine(loop_wall)

    def code(req: CreateRequest) -> int | None:
        return codes.get(req.name, 0) if "-release-" in req.name else None

    engine.exit_on_start = code
    return engine


async def test_the_release_runs_once_per_revision_before_its_first_replica(
    tmp_path: Path,
) -> None:
    engine = exits({})
    h = harness(tmp_path, engine, wall=loop_wall)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2, mode=Mode.EBPF, release="migrate --all")])
        await h.until(lambda: len(h.rules.backends("web")) == 1)  # the sandbox
        await h.until(lambda: len(engine.running("web")) == 2, what="2 replicas")
        assert engine.created[:2] == ["web-sandbox", "web-release-1"] or \
            engine.created[:2] == ["web-release-1", "web-sandbox"]
        assert engine.created.index("web-release-1") < engine.created.index("web-1")
        req = engine.requests["web-release-1"]
        assert req.command == ("migrate", "--all") and req.join is None  # its own namespace
        assert req.labels["lbctl.role"] == ROLE_RELEASE and req.env["LBCTL_REVISION"] == "1"
        await h.until(lambda: "web-release-1" in engine.removed, what="its container removed")
        rec = h.apps.record("web")
        assert rec is not None and rec.released == (1,)
        # A scale-up runs nothing; a change of the command alone rolls nothing and runs
        # nothing; a new revision runs it again first.
        await h.apps.scale("web", 3)
        await h.until(lambda: len(engine.running("web")) == 3)
        await h.apps.change([Update.parse("web", {"release": "migrate --fast"})])
        await h.until(lambda: h.controller.worker("web") is not None
                      and h.controller.worker("web").view.plan.converged)  # type: ignore[union-attr]
        assert releases(engine) == ["web-release-1"] and h.apps.record("web").revision == 1  # type: ignore[union-attr]
        await h.apps.change([Update.parse("web", {"image": "img:2"})])
        await h.until(lambda: {c.revision for c in engine.running("web")} == {2}, 60.0,
                      "revision 2 everywhere")
        assert releases(engine) == ["web-release-1", "web-release-2"]
        assert engine.requests["web-release-2"].command == ("migrate", "--fast")
        order = [(r.labels.get("lbctl.role"), r.labels.get("lbctl.revision")) for r in engine.log]
        assert order.index((ROLE_RELEASE, "2")) < order.index(("replica", "2"))
        assert h.metrics.release_runs.labels(app="web", result="succeeded")._value.get() == 2
    finally:
        await h.stop()


async def test_a_failed_release_rolls_back_and_the_old_revision_keeps_serving(
    tmp_path: Path,
) -> None:
    engine = exits({"web-release-2": 1})
    h = harness(tmp_path, engine, wall=loop_wall)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2, release="migrate")])
        await h.until(lambda: h.rules.backends("web") == ["web-1", "web-2"])
        before = {c.id for c in engine.running("web")}
        await h.apps.change([Update.parse("web", {"image": "img:2"})])
        await h.until(lambda: (r := h.apps.record("web")) is not None and r.rollout is not None
                      and r.rollout.state == "rolled-back", 5.0, "rolled back")
        rec = h.apps.record("web")
        assert rec is not None and rec.rollout is not None and rec.revision == 1
        assert rec.rollout.message == ("release of revision 2 exited with code 1: exec: no "
                                       "such file; rolled back to 1")
        assert {c.id for c in engine.running("web")} == before  # untouched
        assert h.rules.backends("web") == ["web-1", "web-2"]
        assert not [n for n in engine.created if n.startswith("web-") and
                    engine.requests[n].labels.get("lbctl.revision") == "2"
                    and "-release-" not in n]  # no replica of revision 2 ever started
        await h.until(lambda: "web-release-2" in engine.removed, what="its container removed")
        assert h.metrics.release_runs.labels(app="web", result="failed")._value.get() == 1
        [app] = await h.status.report("web")
        assert app["release"]["state"] == "failed" and app["release"]["exit_code"] == 1
    finally:
        await h.stop()


async def test_a_first_run_whose_release_fails_starts_nothing(tmp_path: Path) -> None:
    engine = exits({"web-release-1": 3})
    h = harness(tmp_path, engine, wall=loop_wall)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2, release=["/bin/migrate"])])
        w = h.controller.worker("web")
        assert w is not None
        await h.until(lambda: w.view.error is not None, what="the app's error")
        assert w.view.error == "release of revision 1 exited with code 3: exec: no such file"
        await h.until(lambda: "web-release-1" in engine.removed)
        assert engine.running("web") == [] and releases(engine) == ["web-release-1"]
    finally:
        await h.stop()


async def test_a_release_that_outlives_its_timeout_fails_the_rollout(tmp_path: Path) -> None:
    engine = FakeEngine(loop_wall)  # release containers run until stopped
    settings: Settings = replace(FAST, worker=replace(FAST.worker, release_timeout=20.0))
    h = harness(tmp_path, engine, settings=settings, wall=loop_wall)
    await h.start()
    try:
        await h.apps.apply([spec("web", 1)])
        await h.until(lambda: len(engine.running("web")) == 1)
        await h.apps.change([Update.parse("web", {"image": "img:2", "release": "sleep 1000"})])
        await h.until(lambda: "web-release-2" in engine.created, what="the release")
        started = loop_wall()
        await h.until(lambda: "web-release-2" in engine.removed, 30.0, "the release stopped")
        assert 20.0 <= loop_wall() - started < 21.0
        rec = h.apps.record("web")
        assert rec is not None and rec.revision == 1 and rec.rollout is not None
        assert rec.rollout.message == ("release of revision 2 did not finish within 20s; "
                                       "rolled back to 1")
        assert h.metrics.release_runs.labels(app="web", result="timed_out")._value.get() == 1
    finally:
        await h.stop()


async def test_a_paused_rollout_runs_its_release_again_on_resume(tmp_path: Path) -> None:
    codes = {"web-release-2": 1}
    engine = exits(codes)
    h = harness(tmp_path, engine, wall=loop_wall)
    await h.start()
    try:
        await h.apps.apply([spec("web", 1, update={"failure_action": "pause"})])
        await h.until(lambda: len(engine.running("web")) == 1)
        await h.apps.change([Update.parse("web", {"image": "img:2", "release": "m"})])
        await h.until(lambda: (r := h.apps.record("web")) is not None and r.rollout is not None
                      and r.rollout.state == "failed", what="the rollout held")
        await h.until(lambda: "web-release-2" in engine.removed)
        assert releases(engine) == ["web-release-2"]
        codes["web-release-2"] = 0  # fixed meanwhile (the database, say)
        from lbctl.model.changes import Resume
        await h.apps.rollout(Resume("web"))
        await h.until(lambda: {c.revision for c in engine.running("web")} == {2}, 60.0,
                      "revision 2")
        assert releases(engine) == ["web-release-2", "web-release-2"]
    finally:
        await h.stop()


async def test_a_controller_restarted_mid_release_picks_it_up(tmp_path: Path) -> None:
    engine = FakeEngine(loop_wall)  # the release runs until the test ends it
    h = harness(tmp_path, engine, wall=loop_wall)
    await h.start()
    await h.apps.apply([spec("web", 2, release="migrate")])
    await h.until(lambda: "web-release-1" in engine.created, what="the release")
    [app] = await h.status.report("web")
    assert app["release"]["state"] == "running" and app["replicas"] == []
    await h.stop()
    engine.kill("web-release-1", code=0)  # it ends while no controller runs
    again = harness(tmp_path, engine, wall=loop_wall)
    await again.start()
    try:
        await again.until(lambda: len(engine.running("web")) == 2, what="the replicas")
        rec = again.apps.record("web")
        assert rec is not None and rec.released == (1,)
        assert releases(engine) == ["web-release-1"]  # read, not run again
        await again.until(lambda: "web-release-1" in engine.removed)
    finally:
        await again.stop()
