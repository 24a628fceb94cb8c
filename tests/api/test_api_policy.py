"""Who may ask for what, through the API over a controller on fakes: every route that makes
something desired judges the caller's request (403, one line naming the rule, nothing
changed), root is judged by nothing but the daemon's caps, and what never gives a container
more than it had (scale down, pause, remove) is every member's. The caller is injected here;
tests/api/test_identity.py shows that the daemon gets it from the kernel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lbctl.api.identity import Caller
from lbctl.api.server import Api
from lbctl.controller.policy import Policy
from lbctl.model import Mode
from tests.controller.fakes import Harness, harness

MEMBER = {"X-Test-Uid": "1000"}
ROOT = {"X-Test-Uid": "0"}

Client = TestClient[Any, Any]


def as_header(request: web.Request) -> Caller:
    """The test's stand-in for SO_PEERCRED: a header (the daemon never reads one)."""
    uid = int(request.headers["X-Test-Uid"])
    return Caller(uid, uid, 4242)


async def _api(tmp_path: Path, policy: Policy) -> tuple[Client, Harness]:
    h = harness(tmp_path)
    await h.start()
    client: Client = TestClient(TestServer(
        Api(h.apps, h.status, Mode.IPTABLES, policy, identify=as_header).app))
    await client.start_server()
    return client, h


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Client, Harness]]:
    client, h = await _api(tmp_path, Policy())
    try:
        yield client, h
    finally:
        await client.close()
        await h.stop()


def app_body(name: str = "web", /, **kw: Any) -> dict[str, Any]:
    return {"name": name, "image": "img:1", "publish": "127.0.0.1:18080:80", "replicas": 2,
            **kw}


def snapshot(h: Harness, tmp_path: Path) -> tuple[object, ...]:
    state = tmp_path / "state.json"
    return (state.read_bytes() if state.exists() else None, list(h.engine.created),
            {n: h.apps.spec(n).to_json() for n in sorted(h.apps.names())})


async def refused(client: Client, method: str, path: str, body: Any, *words: str) -> str:
    r = await client.request(method, path, json=body, headers=MEMBER)
    data = await r.json()
    assert r.status == 403, (r.status, data)
    msg = data["error"]
    assert "\n" not in msg and msg.startswith(("policy: ", "limit: ")), msg
    for w in words:
        assert w in msg, (w, msg)
    return str(msg)


async def test_a_member_is_refused_root_is_not_and_nothing_changes(
    api: tuple[Client, Harness], tmp_path: Path,
) -> None:
    client, h = api
    r = await client.post("/apps", json=app_body("keep", publish="127.0.0.1:18090:80"),
                          headers=MEMBER)
    assert r.status == 201, await r.text()
    await h.until(lambda: len(h.engine.created) == 2, what="keep's replicas")
    before = snapshot(h, tmp_path)
    root_mount = app_body(volume=["/:/host"])
    port22 = app_body(publish="127.0.0.1:22:80")
    await refused(client, "POST", "/apps", root_mount, "bind mount of / is not allowed",
                  "allowed_bind_sources: the built-in default")
    await refused(client, "POST", "/apps", port22, "host port 22 is below 1024")
    await refused(client, "PUT", "/apps/web", port22, "host port 22")
    await refused(client, "POST", "/apps", app_body(mount=["type=bind,source=/etc,target=/e"]),
                  "bind mount of /etc")
    await refused(client, "POST", "/apps", app_body(publish="0.0.0.0:18080:80"),
                  "host IP 0.0.0.0 (every address)")
    await refused(client, "POST", "/apps", app_body(**{"cap-add": ["SYS_ADMIN"]}),
                  "cap-add SYS_ADMIN")
    await refused(client, "POST", "/apps", app_body(**{"pids-limit": 100000}),
                  "pids-limit 100000")
    await refused(client, "POST", "/apps", app_body(replicas=17), "17 replicas")
    await refused(client, "POST", "/apps", app_body(**{"group-add": ["0"]}), "group-add 0")
    # A multi-app apply is judged whole: the allowed app is not created either.
    await refused(client, "POST", "/apply", {"apps": [app_body("ok", publish=(
        "127.0.0.1:18081:80")), root_mount]}, "bind mount of /")
    await refused(client, "POST", "/apps/keep/update", {"volume": ["/:/host:ro"]},
                  "bind mount of /")
    await refused(client, "POST", "/apps/keep/scale", {"replicas": 20}, "20 replicas")
    await refused(client, "POST", "/apps/keep/update", {"group-add": ["docker"]},
                  "group-add docker is root's alone")
    assert snapshot(h, tmp_path) == before

    r = await client.post("/apps", json=root_mount, headers=ROOT)
    assert r.status == 201, await r.text()
    r = await client.post("/apps", json={**port22, "name": "ssh"}, headers=ROOT)
    assert r.status == 201, await r.text()
    assert h.apps.spec("ssh").publish.host_port == 22
    r = await client.post("/apps", json=app_body("wheel", publish="127.0.0.1:18091:80",
                                                 **{"group-add": ["0", "docker"]}),
                          headers=ROOT)
    assert r.status == 201, await r.text()


async def test_bad_input_is_a_400_before_any_judging(api: tuple[Client, Harness]) -> None:
    client, _ = api
    r = await client.post("/apps", json=app_body(publish="nope", volume=["/:/h"]),
                          headers=MEMBER)
    assert r.status == 400 and "publish" in (await r.json())["error"]


async def test_members_may_shrink_and_remove_roots_app_but_not_widen_it(
    api: tuple[Client, Harness],
) -> None:
    """Root's app on port 80 with 20 replicas is beyond the policy: a member may scale it
    down (not back up past the cap), pause its rollout and remove it, not change it."""
    client, h = api
    r = await client.post("/apps", json=app_body(publish="127.0.0.1:80:80", replicas=20),
                          headers=ROOT)
    assert r.status == 201
    await refused(client, "POST", "/apps/web/update", {"image": "img:2"}, "host port 80")
    r = await client.post("/apps/web/scale", json={"replicas": 18}, headers=MEMBER)
    assert r.status == 200 and h.apps.spec("web").replicas == 18
    await refused(client, "POST", "/apps/web/scale", {"replicas": 19},
                  "19 replicas are more than 16")
    r = await client.post("/apps/web/update", json={"image": "img:2"}, headers=ROOT)
    assert r.status == 200
    r = await client.post("/apps/web/rollout/pause", headers=MEMBER)
    assert r.status == 200, await r.text()
    r = await client.delete("/apps/web", headers=MEMBER)
    assert r.status == 200, await r.text()
    assert "web" not in h.apps.names()


async def test_a_member_cannot_roll_back_to_what_only_root_could_ask_for(
    api: tuple[Client, Harness],
) -> None:
    client, h = api
    assert (await client.post("/apps", json=app_body(), headers=MEMBER)).status == 201
    r = await client.post("/apps/web/update", json={"volume": ["/:/host:ro"]}, headers=ROOT)
    assert r.status == 200  # revision 2: root's bind mount
    r = await client.post("/apps/web/update", json={"image": "img:2"}, headers=ROOT)
    assert r.status == 200  # revision 3: still with it
    r = await client.post("/apps/web/update", json={"unset": ["volume"]}, headers=MEMBER)
    await refused(client, "POST", "/apps/web/rollout/undo", {"revision": 2},
                  "bind mount of /")
    assert r.status == 200  # revision 4: without it, the member's to make
    r = await client.post("/apps/web/rollout/undo", json={"revision": 1}, headers=MEMBER)
    assert r.status == 200, await r.text()
    assert h.apps.spec("web").options.volume == ()


async def test_the_policys_own_caps_and_networks(tmp_path: Path) -> None:
    client, h = await _api(tmp_path, replace(Policy(), max_apps=1,
                                             allowed_networks=("team-*",)))
    try:
        # A compose file's network to create is judged like one to join.
        await refused(client, "POST", "/apply", {"apps": [app_body("a")], "networks": {
            "other": {}}}, "network other is not allowed", "allowed_networks")
        assert h.apps.names() == set()
        assert (await client.post("/apps", json=app_body("a"), headers=MEMBER)).status == 201
        msg = await refused(client, "POST", "/apps", app_body(
            "b", publish="127.0.0.1:18081:80"), "this would make 2 apps, more than 1")
        assert msg.startswith("policy: ") and "max_apps" in msg
        r = await client.post("/apps", json=app_body("b", publish="127.0.0.1:18081:80"),
                              headers=ROOT)
        assert r.status == 201
    finally:
        await client.close()
        await h.stop()


async def test_the_cli_prints_a_refusal_as_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`lbctl run` against a daemon whose caller has no credentials (here: an aiohttp
    server on a Unix socket that identifies everyone as uid 1000)."""
    import asyncio

    from lbctl.cli import main

    h = harness(tmp_path)
    await h.start()
    runner = web.AppRunner(Api(h.apps, h.status, Mode.IPTABLES,
                               identify=lambda r: Caller(1000, 1000, 1)).app)
    await runner.setup()
    sock = tmp_path / "api.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        def run() -> int:
            try:
                main(["--socket", str(sock), "run", "web", "--image", "img:1", "-p",
                      "127.0.0.1:18080:80", "-v", "/:/host", "--no-wait"])
            except SystemExit as e:
                return int(e.code or 0)
            return 0

        code = await asyncio.to_thread(run)
    finally:
        await runner.cleanup()
        await h.stop()
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("lbctl: policy: bind mount of / is not "
                                                   "allowed"), err
    assert h.apps.names() == set()
