"""Racing changes through the API, over a controller on fakes: a change judged while another
commits must land on top of it (both land), never silently revert it, and two creates of one
name give one 201 and a 409. A gate in the engine's image check (tests/controller/gated.py) holds
one request in the middle of its admission, so each race runs in the order written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lbctl.api.server import Api
from lbctl.model import Mode
from tests.controller.fakes import Harness, harness
from tests.controller.gated import GatedEngine

Client = TestClient[Any, Any]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Client, Harness, GatedEngine]]:
    engine = GatedEngine()
    h = harness(tmp_path, engine=engine)
    await h.start()
    client: Client = TestClient(TestServer(Api(h.apps, h.status, Mode.IPTABLES).app))
    await client.start_server()
    try:
        yield client, h, engine
    finally:
        engine.gate.set()
        await client.close()
        await h.stop()


def app_body(name: str = "web", **kw: Any) -> dict[str, Any]:
    return {"name": name, "image": "img:1", "publish": "127.0.0.1:18080:80", "replicas": 2,
            **kw}


async def held(client: Client, engine: GatedEngine, path: str, body: Any
               ) -> asyncio.Task[Any]:
    """Send a request that stops in its admission; returns the task that finishes it."""
    return await engine.hold(lambda: client.post(path, json=body))


async def test_an_update_judged_while_another_commits_lands_on_top_of_it(
    api: tuple[Client, Harness, GatedEngine],
) -> None:
    client, h, engine = api
    assert (await client.post("/apps", json=app_body())).status == 201
    a = await held(client, engine, "/apps/web/update", {"env_add": ["A=1"]})
    r = await client.post("/apps/web/update", json={"env_add": ["B=2"]})
    assert r.status == 200, await r.text()
    engine.gate.set()
    r = await a
    assert r.status == 200, await r.text()
    assert dict(h.apps.spec("web").env) == {"A": "1", "B": "2"}
    rec = h.apps.record("web")
    assert rec is not None and rec.revision == 3


async def test_a_scale_during_an_update_is_kept(
    api: tuple[Client, Harness, GatedEngine],
) -> None:
    client, h, engine = api
    assert (await client.post("/apps", json=app_body())).status == 201
    a = await held(client, engine, "/apps/web/update", {"image": "img:2"})
    r = await client.post("/apps/web/scale", json={"replicas": 5})
    assert r.status == 200, await r.text()
    engine.gate.set()
    r = await a
    assert r.status == 200, await r.text()
    spec = h.apps.spec("web")
    assert (spec.image, spec.replicas) == ("img:2", 5)


async def test_racing_creates_give_one_201_and_409s(
    api: tuple[Client, Harness, GatedEngine],
) -> None:
    client, h, engine = api
    first = await held(client, engine, "/apps", app_body(replicas=1))
    others = [asyncio.create_task(client.post("/apps", json=app_body(replicas=3)))
              for _ in range(4)]
    await asyncio.sleep(0.05)  # the others are in admission too, behind no lock
    engine.gate.set()
    answers = [await first, *[await t for t in others]]
    statuses = sorted(r.status for r in answers)
    assert statuses == [201, 409, 409, 409, 409], statuses
    for r in answers:
        if r.status == 409:
            msg = (await r.json())["error"]
            assert "already exists" in msg and "\n" not in msg, msg
    assert len(h.apps.names()) == 1


async def test_a_delta_that_no_longer_applies_is_a_409_and_changes_nothing(
    api: tuple[Client, Harness, GatedEngine], tmp_path: Path,
) -> None:
    client, h, engine = api
    assert (await client.post("/apps", json=app_body())).status == 201
    a = await held(client, engine, "/apps/web/update", {"volume": ["data:/data"]})
    r = await client.post("/apps/web/update", json={"tmpfs": ["/data"]})
    assert r.status == 200, await r.text()
    state = (tmp_path / "state.json").read_bytes()
    engine.gate.set()
    r = await a
    msg = (await r.json())["error"]
    assert r.status == 409, msg
    assert "\n" not in msg and "no longer applies" in msg and "/data is mounted twice" in msg
    assert (tmp_path / "state.json").read_bytes() == state
    assert h.apps.spec("web").options.tmpfs == ("/data",) and not h.apps.spec("web").options.volume


async def test_every_answer_carries_the_revision_and_generation_it_made(
    api: tuple[Client, Harness, GatedEngine],
) -> None:
    client, h, _ = api

    async def made(method: str, path: str, body: Any = None) -> tuple[Any, ...]:
        r = await client.request(method, path, json=body)
        assert r.status < 300, await r.text()
        data = await r.json()
        return data["result"], data["revision"], data["generation"]

    assert await made("POST", "/apps", app_body()) == ("created", 1, 1)
    assert await made("POST", "/apps/web/update", {"image": "img:2"}) == ("rolling", 2, 2)
    assert await made("POST", "/apps/web/scale", {"replicas": 3}) == ("updated", 2, 3)
    assert await made("POST", "/apps/web/update", {"replicas": 3}) == ("unchanged", 2, 3)
    assert await made("POST", "/apps/web/rollout/pause") == ("paused", 2, 4)
    assert await made("POST", "/apps/web/rollout/undo", {}) == ("progressing", 1, 5)
    assert await made("PUT", "/apps/web", app_body(image="img:2")) == ("rolling", 3, 6)
    r = await client.post("/apply", json={"apps": [app_body(image="img:1", replicas=2),
                                                   app_body("api", publish="127.0.0.1:18081:80")]})
    data = await r.json()
    assert data["result"] == {"web": "rolling", "api": "created"}
    assert data["changes"] == {"web": {"result": "rolling", "revision": 4, "generation": 7},
                               "api": {"result": "created", "revision": 1, "generation": 1}}
    assert h.apps.generation("web") == 7


async def test_update_changes_only_the_policy_fields_it_names(
    api: tuple[Client, Harness, GatedEngine],
) -> None:
    client, h, _ = api
    await client.post("/apps", json=app_body(update={"monitor": 1, "parallelism": 2}))
    r = await client.post("/apps/web/update", json={"update": {"delay": 3}})
    assert r.status == 200 and (await r.json())["result"] == "updated"
    policy = h.apps.spec("web").update
    assert (policy.monitor, policy.parallelism, policy.delay) == (1.0, 2, 3.0)
