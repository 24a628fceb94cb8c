"""What a member's replicas mount, judged on the host's files (a FakeHostFiles standing in
for the engine's mount namespace: tests/e2e/test_member_sources.py does it on the real one)
and the engine's volumes, at the change and again before every replica create; what a
request creates (networks, volumes) only once it passed every check, and removed when its
commit then fails; whose each app is."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from lbctl.controller.admission import Resources
from lbctl.controller.apps import Rights
from lbctl.controller.limits import daemon_limits
from lbctl.controller.policy import Policy
from lbctl.controller.sources import NOBODY, Who, judge_walk
from lbctl.controller.store import StateStore
from lbctl.model import LABEL_OWNER, Forbidden
from lbctl.model.changes import Create, Replace, Scale, Update
from lbctl.model.runtime import PathEntry, VolumeFacts
from lbctl.settings import LimitSettings
from tests.controller.fakes import FakeEngine, FakeHostFiles, Harness, harness, spec

ALICE = Who(1000, frozenset({1000, 100}))
BOB = Who(1001, frozenset({1001}))
SRV = "/srv/apps"
POLICY = replace(Policy(), allowed_bind_sources=(SRV,))


def alice(policy: Policy = POLICY) -> Rights:
    return Rights.member(policy, ALICE)


def walk(*entries: tuple[str, str, int, int, int]) -> list[PathEntry]:
    return [PathEntry("/", "dir", 0, 0, 0o755),
            *(PathEntry(p, k, u, g, m) for p, k, u, g, m in entries)]


# ---- one path, judged for one member ----------------------------------------------------


@pytest.mark.parametrize(("entries", "words"), [
    ([("/srv", "symlink", 0, 0, 0o777)], "/srv is a symlink"),
    ([("/srv", "dir", 0, 0, 0o755), ("/srv/apps", "missing", 0, 0, 0)], "does not exist"),
    ([("/srv", "dir", 0, 0, 0o755), ("/srv/apps", "other", 0, 0, 0o600)], "a device, socket"),
    ([("/srv", "dir", 1000, 1000, 0o755), ("/srv/apps", "dir", 0, 0, 0o755)],
     "/srv is the caller's own"),
    ([("/srv", "dir", 0, 0, 0o1777), ("/srv/apps", "dir", 0, 0, 0o755)],
     "/srv is writable by everyone (sticky)"),
    ([("/srv", "dir", 0, 100, 0o775), ("/srv/apps", "dir", 0, 0, 0o755)],
     "writable by group users, which the caller is in"),
    ([("/srv", "dir", 0, 0, 0o755), ("/srv/apps", "dir", 0, 0, 0o755),
      ("/srv/apps/conf", "dir", 1000, 0, 0o700)], "/srv/apps/conf is the caller's own"),
    ([("/srv", "dir", 0, 0, 0o755), ("/srv/apps", "file", 0, 0, 0o644)], "is a file, not"),
])
def test_a_path_the_member_could_change_or_that_is_not_plain_is_refused(
    entries: list[tuple[str, str, int, int, int]], words: str,
) -> None:
    why = judge_walk("/srv/apps/conf", walk(*entries), ALICE)
    assert why is not None and words in why, why


def test_a_path_only_root_can_change_is_the_members() -> None:
    ok = walk(("/srv", "dir", 0, 0, 0o755), ("/srv/apps", "dir", 0, 50, 0o775),
              ("/srv/apps/conf", "file", 0, 0, 0o644))
    assert judge_walk("/srv/apps/conf", ok, ALICE) is None  # group 50 is not alice's
    assert judge_walk("/srv/apps/conf", ok, Who(1000, None)) is not None  # groups unknown
    acl = [*ok[:2], PathEntry("/srv/apps", "dir", 0, 50, 0o775, acl=True), ok[3]]
    assert "ACL" in (judge_walk("/srv/apps/conf", acl, ALICE) or "")


def test_who_is_read_from_the_user_database() -> None:
    import os

    root = Who.of(0)
    assert root.uid == 0 and root.gids is not None and 0 in root.gids
    assert Who.of(None) == Who(NOBODY, frozenset())
    assert Who.of(2 ** 31 - 7).gids is None  # no such user: groups unknown
    assert Who.of(os.getuid(), 4242).gids is not None and 4242 in (Who.of(0, 4242).gids or ())


# ---- at the change and at every create ---------------------------------------------------


def member_harness(tmp_path: Path, **kw: object) -> tuple[Harness, FakeHostFiles]:
    files = FakeHostFiles({SRV: ("dir", 0, 0, 0o755), f"{SRV}/conf": ("dir", 0, 0, 0o755)})
    return harness(tmp_path, files=files, **kw), files  # type: ignore[arg-type]


async def test_a_bind_source_swapped_after_run_stops_the_next_create_not_the_app(
    tmp_path: Path,
) -> None:
    h, files = member_harness(tmp_path)
    await h.start()
    try:
        web = spec("web", 2, volume=[f"{SRV}/conf:/conf:ro"])
        await h.apps.change([Create(web)], alice())
        assert h.apps.record("web") is not None and h.apps.record("web").owner == 1000  # type: ignore[union-attr]
        await h.until(lambda: h.rules.backends("web") == ["web-1", "web-2"])
        # The directory becomes a symlink to / (whoever could do it); a replica dies.
        files.entries[f"{SRV}/conf"] = ("symlink", 0, 0, 0o777)
        h.engine.kill("web-2")
        await h.until(lambda: h.rules.backends("web") == ["web-1"], 1.0, "dead one out")
        report = (await h.status.report("web"))[0]
        await h.until(lambda: h.controller.view("web").refused is not None,  # type: ignore[union-attr]
                      what="the refusal")
        report = (await h.status.report("web"))[0]
        assert report["error"] == (f"replica create refused: policy: bind mount of {SRV}/conf: "
                                   f"{SRV}/conf is a symlink (a member's bind source has none, "
                                   "anywhere)"), report
        await asyncio.sleep(5)  # retried with backoff, never created
        assert [c.name for c in h.engine.running("web")] == ["web-1"]
        assert h.engine.created == ["web-1", "web-2"]
        # Put right: the next retry creates it, and the error goes.
        files.entries[f"{SRV}/conf"] = ("dir", 0, 0, 0o755)
        await h.until(lambda: len(h.engine.running("web")) == 2, 60.0, "replaced")
        await h.until(lambda: h.controller.view("web").refused is None, 5.0)  # type: ignore[union-attr]
    finally:
        await h.stop()


async def test_roots_apps_are_not_judged_at_create(tmp_path: Path) -> None:
    h, files = member_harness(tmp_path)
    await h.start()
    try:
        await h.apps.create(spec("web", 1, volume=["/:/host:ro"]))
        await h.until(lambda: h.rules.backends("web") == ["web-1"])
        assert files.walked == []
    finally:
        await h.stop()


async def test_a_members_change_of_a_bad_source_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    h, files = member_harness(tmp_path)
    files.entries[f"{SRV}/mine"] = ("dir", 1000, 1000, 0o755)
    state = tmp_path / "state.json"
    with pytest.raises(Forbidden) as e:
        await h.apps.change([Create(spec("web", 1, volume=[f"{SRV}/mine:/m"]))], alice())
    assert str(e.value) == (f"policy: bind mount of {SRV}/mine: {SRV}/mine is the caller's "
                            "own, so it could be swapped after it was judged "
                            "(allowed_bind_sources: the built-in default, as there is no "
                            "/etc/lbctl/policy.toml)")
    assert not state.exists() and h.engine.volumes == {} and h.engine.networks == {}
    files.fail = "Permission denied"
    with pytest.raises(Forbidden, match="cannot be judged: Permission denied"):
        await h.apps.change([Create(spec("web", 1, volume=[f"{SRV}/conf:/c"]))], alice())


# ---- named volumes ------------------------------------------------------------------------


async def test_a_member_mounts_only_volumes_lbctl_made_for_them(tmp_path: Path) -> None:
    h, _ = member_harness(tmp_path)
    engine = h.engine
    engine.volumes["rootdata"] = VolumeFacts("local", {}, {})
    engine.volumes["bobs"] = VolumeFacts("local", {}, {LABEL_OWNER: "1001"})
    engine.volumes["etc"] = VolumeFacts("local", {"type": "none", "o": "bind",
                                                  "device": "/etc"}, {LABEL_OWNER: "1000"})
    for name, words in (("rootdata", "volume rootdata is not the caller's"),
                        ("bobs", "volume bobs is not the caller's"),
                        ("etc", "volume etc has a driver or driver options")):
        with pytest.raises(Forbidden, match=words):
            await h.apps.change([Create(spec("web", 1, volume=[f"{name}:/d"]))], alice())
        with pytest.raises(Forbidden, match=words):
            await h.apps.change([Create(spec("web", 1, mount=[
                f"type=volume,source={name},target=/d"]))], alice())
    assert set(engine.volumes) == {"rootdata", "bobs", "etc"}
    # A new name: created for alice at the commit; hers from then on; not bob's.
    await h.apps.change([Create(spec("web", 1, volume=["data:/d"]))], alice())
    assert engine.volumes["data"].labels == {LABEL_OWNER: "1000"}
    await h.apps.change([Create(spec("api", 1, port=18001, volume=["data:/d"]))], alice())
    with pytest.raises(Forbidden, match="volume data is not the caller's"):
        await h.apps.change([Create(spec("bobs-app", 1, port=18002, volume=["data:/d"]))],
                            Rights.member(POLICY, BOB))
    await h.apps.create(spec("roots", 1, port=18003, volume=["rootdata:/d", "data:/e"]))


# ---- what a request creates ---------------------------------------------------------------


async def test_a_refused_apply_creates_no_network_and_no_volume(tmp_path: Path) -> None:
    """The audit's case: a 403 for the caps left 64 networks and a volume behind."""
    h, _ = member_harness(tmp_path)
    nets = {f"net{i}": {"com.example": "x"} for i in range(64)}
    big = Replace(spec("web", 17))  # more than max_replicas
    with pytest.raises(Forbidden, match="17 replicas"):
        await h.apps.change([big], alice(), Resources(nets, {"vol": {}}))
    capped = replace(POLICY, max_apps=0)
    with pytest.raises(Forbidden, match="this would make 1 apps, more than 0"):
        await h.apps.change([Replace(spec("web", 1))], alice(capped), Resources(nets, {}))
    h2 = harness(tmp_path / "root", limits=daemon_limits(LimitSettings(max_containers=2)))
    with pytest.raises(Forbidden, match="--max-containers"):
        await h2.apps.change([Replace(spec("web", 3))], resources=Resources(nets, {"v": {}}))
    assert h.engine.networks == {} and h.engine.volumes == {}
    assert h2.engine.networks == {} and h2.engine.volumes == {}


async def test_what_a_failed_commit_created_is_removed(tmp_path: Path) -> None:
    """The trial passed, the volume was made, and meanwhile another request took the last
    place: the commit is refused, and the volume goes."""
    engine = SlowVolumes()
    h = harness(tmp_path, engine=engine, limits=daemon_limits(LimitSettings(max_apps=1)))
    first = asyncio.create_task(h.apps.change([Replace(spec("a", 1))],
                                              resources=Resources({"n1": {}}, {"v1": {}})))
    await asyncio.wait_for(engine.making.wait(), 5)
    await h.apps.create(spec("b", 1, port=18001))  # takes the last place
    engine.go.set()
    with pytest.raises(Forbidden, match="2 apps, more than 1"):
        await first
    assert engine.volumes == {} and engine.networks == {}
    assert set(h.apps.names()) == {"b"}


class SlowVolumes(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.making, self.go = asyncio.Event(), asyncio.Event()

    async def ensure_volume(self, name: str, labels: dict[str, str]) -> bool:  # type: ignore[override]
        made = await super().ensure_volume(name, labels)
        self.making.set()
        await self.go.wait()
        return made


async def test_a_members_networks_and_volumes_are_bounded(tmp_path: Path) -> None:
    h, _ = member_harness(tmp_path)
    p = replace(POLICY, max_networks=2, max_volumes=1)
    await h.apps.change([Replace(spec("a", 1))], alice(p), Resources({"n1": {}}, {"v1": {}}))
    assert h.engine.networks["n1"].labels == {LABEL_OWNER: "1000"}
    with pytest.raises(Forbidden) as e:
        await h.apps.change([Replace(spec("b", 1, port=18001))], alice(p),
                            Resources({"n2": {}, "n3": {}}, {}))
    assert str(e.value).startswith("policy: this would make 3 networks lbctl created for uid "
                                   "1000, more than 2 (max_networks")
    with pytest.raises(Forbidden, match="2 volumes lbctl created for uid 1000, more than 1"):
        await h.apps.change([Replace(spec("b", 1, port=18001, volume=["v2:/v"]))], alice(p))
    # What exists is no growth; root is not bounded.
    await h.apps.change([Replace(spec("b", 1, port=18001, volume=["v1:/v"]))], alice(p),
                        Resources({"n1": {}}, {"v1": {}}))
    await h.apps.change([Replace(spec("c", 1, port=18002))], resources=Resources(
        {f"r{i}": {} for i in range(5)}, {}))
    assert set(h.engine.networks) == {"n1", *(f"r{i}" for i in range(5))}


# ---- whose an app is -----------------------------------------------------------------------


async def test_each_app_is_whose_change_set_its_template_last(tmp_path: Path) -> None:
    h, _ = member_harness(tmp_path)

    def owner(name: str) -> int | None:
        rec = h.apps.record(name)
        assert rec is not None
        return rec.owner

    await h.apps.change([Create(spec("web", 1))], alice())
    assert owner("web") == 1000
    await h.apps.change([Update("web", image="img:2")])  # root
    assert owner("web") is None
    await h.apps.change([Scale("web", 3)], alice())  # a count: still root's
    assert owner("web") is None
    await h.apps.change([Update("web", env_add={"A": "1"})], Rights.member(POLICY, BOB))
    assert owner("web") == 1001
    await h.apps.change([Replace(h.apps.spec("web"))], alice())  # the same: unchanged
    assert owner("web") == 1001
    # Kept in the state file, read back by a restarted daemon.
    state = StateStore(tmp_path).load_state()
    assert state.apps["web"].owner == 1001
    raw = (tmp_path / "state.json").read_text()
    assert '"owner": 1001' in raw


async def test_a_members_compose_volume_keeps_composes_labels(tmp_path: Path) -> None:
    """A volume the file declares and its app mounts: made once, with docker-compose's
    labels (so that docker-compose takes it as its own) and the member's."""
    h, _ = member_harness(tmp_path)
    compose = {"com.docker.compose.project": "shop", "com.docker.compose.volume": "data"}
    await h.apps.change([Replace(spec("web", 1, volume=["shop_data:/d"]))], alice(),
                        Resources({}, {"shop_data": compose}))
    assert h.engine.volumes["shop_data"].labels == {**compose, LABEL_OWNER: "1000"}
