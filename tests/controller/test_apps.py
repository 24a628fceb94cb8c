"""The apps service applying typed changes, on fakes: a change is judged outside the commit
lock and committed against the app as it is then. Racing deltas all land (in commit order, as
if sent one after another), a scale during an update keeps both, racing creates make one app,
a delta that no longer applies is refused with Conflict and nothing of it is committed, and
admission judges again what it read when that changed meanwhile. The gate in the engine's
image check (tests/controller/gated.py) fixes the order of every race."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lbctl.controller.apps import ROOT, Rights
from lbctl.controller.policy import Policy
from lbctl.model import Forbidden, InvalidInput
from lbctl.model.changes import Create, Outcome, Pause, Scale, Undo, Update
from lbctl.model.errors import Conflict, NotFound
from tests.controller.fakes import Harness, harness, spec
from tests.controller.gated import GatedEngine


def _gated(tmp_path: Path) -> tuple[Harness, GatedEngine]:
    engine = GatedEngine()
    return harness(tmp_path, engine=engine), engine


def env_add(**kv: str) -> Update:
    return Update("web", env_add=kv)


async def test_a_delta_judged_while_another_commits_lands_on_top_of_it(tmp_path: Path) -> None:
    h, engine = _gated(tmp_path)
    await h.apps.create(spec("web"))
    a = await engine.hold(lambda: h.apps.change([env_add(A="1")]))
    b = await h.apps.change([env_add(B="2")])
    assert (b["web"].result, b["web"].revision) == ("rolling", 2)
    engine.gate.set()
    done = await a
    assert isinstance(done, dict)
    out: Outcome = done["web"]
    assert (out.result, out.revision) == ("rolling", 3)
    assert dict(h.apps.spec("web").env) == {"A": "1", "B": "2"}
    # Judged once: what admission read (the image) did not change, so it was not asked again.
    assert engine.image_checks == ["img:1", "img:1", "img:1"]


async def test_many_concurrent_updates_all_land_one_revision_each(tmp_path: Path) -> None:
    h, _ = _gated(tmp_path)
    await h.apps.create(spec("web"))
    results = await asyncio.gather(*(h.apps.change([env_add(**{f"K{i}": str(i)})])
                                     for i in range(10)))
    assert dict(h.apps.spec("web").env) == {f"K{i}": str(i) for i in range(10)}
    rec = h.apps.record("web")
    assert rec is not None and rec.revision == 11
    assert sorted(r["web"].revision for r in results) == list(range(2, 12))


async def test_a_scale_during_an_update_keeps_both(tmp_path: Path) -> None:
    h, engine = _gated(tmp_path)
    await h.apps.create(spec("web", 2))
    a = await engine.hold(lambda: h.apps.change([Update("web", image="img:2")]))
    await h.apps.scale("web", 5)
    engine.gate.set()
    await a
    s = h.apps.spec("web")
    assert (s.image, s.replicas) == ("img:2", 5)
    # ... and an update during a scale: the count stays the scale's, the env the update's.
    await asyncio.gather(h.apps.scale("web", 1), h.apps.change([env_add(X="1")]))
    s = h.apps.spec("web")
    assert (s.replicas, dict(s.env)) == (1, {"X": "1"})


async def test_racing_creates_make_one_app_and_conflicts(tmp_path: Path) -> None:
    h, engine = _gated(tmp_path)
    first = await engine.hold(lambda: h.apps.change([Create(spec("web", 1))]))
    others = [asyncio.create_task(h.apps.change([Create(spec("web", 3, env={"N": str(i)}))]))
              for i in range(4)]
    await asyncio.sleep(0.05)  # all in admission, none holding the lock
    engine.gate.set()
    results = await asyncio.gather(first, *others, return_exceptions=True)
    wins = [r for r in results if isinstance(r, dict)]
    lost = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1 and len(lost) == 4, results
    assert all("app web already exists" in str(e) for e in lost)
    assert h.apps.spec("web") == wins[0]["web"].spec
    rec = h.apps.record("web")
    assert rec is not None and rec.revision == 1 and len(rec.history) == 1


async def test_a_delta_that_no_longer_applies_is_a_conflict_and_changes_nothing(
    tmp_path: Path,
) -> None:
    h, engine = _gated(tmp_path)
    await h.apps.create(spec("web"))
    # Valid alone, valid on the app it was judged on; not beside the tmpfs committed meanwhile.
    volume = Update("web", options={"volume": ["data:/data"]})
    a = await engine.hold(lambda: h.apps.change([volume]))
    await h.apps.change([Update("web", options={"tmpfs": ["/data"]})])
    before = (tmp_path / "state.json").read_bytes(), h.apps.generation("web")
    engine.gate.set()
    with pytest.raises(Conflict, match=r"no longer applies to it: /data is mounted twice"):
        await a
    assert ((tmp_path / "state.json").read_bytes(), h.apps.generation("web")) == before

    # A canary whose new template was committed meanwhile has nothing left to send traffic to.
    c = await engine.hold(lambda: h.apps.change([Update("web", image="img:2", canary=25)]))
    await h.apps.change([Update("web", image="img:2")])
    before = (tmp_path / "state.json").read_bytes(), h.apps.generation("web")
    engine.gate.set()
    with pytest.raises(Conflict, match="nothing new to send traffic to"):
        await c
    assert ((tmp_path / "state.json").read_bytes(), h.apps.generation("web")) == before


async def test_the_same_input_without_a_race_is_bad_input_not_a_conflict(
    tmp_path: Path,
) -> None:
    h, _ = _gated(tmp_path)
    await h.apps.create(spec("web", tmpfs=["/data"]))
    with pytest.raises(InvalidInput, match="mounted twice"):
        await h.apps.change([Update("web", options={"volume": ["data:/data"]})])
    with pytest.raises(NotFound):
        await h.apps.change([Update("nosuch", image="img:2")])


async def test_admission_judges_again_what_it_read_when_that_changed(tmp_path: Path) -> None:
    h, engine = _gated(tmp_path)
    engine.images.add("img:3")
    await h.apps.create(spec("web"))
    a = await engine.hold(lambda: h.apps.change([env_add(A="1")]))
    await h.apps.change([Update("web", image="img:3")])
    engine.gate.set()
    await a
    s = h.apps.spec("web")
    assert (s.image, dict(s.env)) == ("img:3", {"A": "1"})
    # The env change was judged on img:1, then again on img:3, the image it commits with.
    assert engine.image_checks[-2:] == ["img:3", "img:3"]

    # And what admission says the second time counts: the image went away meanwhile.
    a = await engine.hold(lambda: h.apps.change([env_add(B="1")]))
    await h.apps.change([Update("web", image="img:2")])
    engine.images.discard("img:2")
    before = (tmp_path / "state.json").read_bytes()
    engine.gate.set()
    with pytest.raises(InvalidInput, match="image img:2 is not on this engine"):
        await a
    assert (tmp_path / "state.json").read_bytes() == before


async def test_a_change_judged_on_an_app_that_keeps_changing_is_refused(
    tmp_path: Path,
) -> None:
    h, engine = _gated(tmp_path)
    images = ["img:1", "img:2"]
    engine.images.update(images)
    await h.apps.create(spec("web"))
    flips = 0

    async def flip() -> None:
        nonlocal flips
        flips += 1
        await h.apps.change([Update("web", image=images[flips % 2])])

    engine.meanwhile = flip
    before_env = dict(h.apps.spec("web").env)
    with pytest.raises(Conflict, match="kept changing while this change was judged"):
        await h.apps.change([env_add(A="1")])
    engine.meanwhile = None
    assert dict(h.apps.spec("web").env) == before_env and flips == 3


async def test_a_member_is_judged_on_the_app_as_committed(tmp_path: Path) -> None:
    h, engine = _gated(tmp_path)
    member = Rights.member(Policy())
    await h.apps.create(spec("web"))
    # Root puts a bind mount of / on the app while the member's env change is judged: the
    # member's change would commit it again under the member's name, so it is refused.
    a = await engine.hold(lambda: h.apps.change([env_add(A="1")], member))
    await h.apps.change([Update("web", options={"volume": ["/:/host:ro"]})], ROOT)
    engine.gate.set()
    with pytest.raises(Forbidden, match="bind mount of /"):
        await a
    assert "A" not in h.apps.spec("web").env
    # A scale alone is judged as a count: members may shrink root's app.
    await h.apps.change([Scale("web", 1)], member)
    assert h.apps.spec("web").replicas == 1


async def test_rollout_changes_answer_with_what_they_made(tmp_path: Path) -> None:
    h, _ = _gated(tmp_path)
    await h.apps.create(spec("web"))
    await h.apps.change([Update("web", image="img:2")])
    out = await h.apps.rollout(Pause("web"))
    assert (out.result, out.revision, out.rollout and out.rollout.state) == ("paused", 2,
                                                                            "paused")
    out = await h.apps.rollout(Undo("web"))
    assert (out.result, out.revision, out.spec.image) == ("progressing", 1, "img:1")
    with pytest.raises(InvalidInput, match="already runs revision 1"):
        await h.apps.rollout(Undo("web", 1))
    with pytest.raises(NotFound):
        await h.apps.rollout(Pause("nosuch"))
