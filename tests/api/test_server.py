"""The control API with aiohttp's test server, over a controller on fakes: what each route
accepts and refuses, and how a body is read (tests/api/test_hostile.py throws hostile input
at a real daemon)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lbctl.api.server import Api
from lbctl.model import Mode
from tests.controller.fakes import Harness, harness


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Harness]]:
    h = harness(tmp_path)
    await h.start()
    server = TestServer(Api(h.apps, h.status, Mode.IPTABLES).app)
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield client, h
    finally:
        await client.close()
        await h.stop()


def app_body(name: str = "web", **kw: Any) -> dict[str, Any]:
    return {"name": name, "image": "img:1", "publish": "127.0.0.1:18080:80", "replicas": 2,
            **kw}


async def test_body_sent_in_two_segments_is_read_whole(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, h = api
    body = json.dumps(app_body(env={f"K{i}": "v" * 40 for i in range(400)})).encode()
    assert len(body) > 20_000
    head = (f"POST /apps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head + body[:9000])
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler runs with only the first segment in
    writer.write(body[9000:])
    await writer.drain()
    reply = (await reader.read()).decode()
    writer.close()
    assert reply.startswith("HTTP/1.1 201"), reply[:300]
    assert len(h.apps.spec("web").env) == 400


async def test_errors_are_json_with_the_right_status(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, _ = api
    r = await client.post("/apps", data=b"{not json")
    assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
    r = await client.get("/apps/nosuch")
    assert r.status == 404 and "no app named nosuch" in (await r.json())["error"]
    r = await client.post("/apps", data=b"x" * (70 * 1024))
    assert r.status in (400, 413) and "larger than" in (await r.json())["error"]
    r = await client.post("/apps/web/rollout/explode", json={})
    assert r.status in (400, 404)


async def test_put_creates_then_rolls_and_refuses_a_new_publish(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, h = api
    r = await client.put("/apps/web", json=app_body())
    assert r.status == 201 and (await r.json())["result"] == "created"
    r = await client.put("/apps/web", json=app_body())
    assert (await r.json())["result"] == "unchanged"
    r = await client.put("/apps/web", json=app_body(replicas=3))
    assert (await r.json())["result"] == "updated"
    r = await client.put("/apps/web", json=app_body(image="img:2", replicas=3))
    assert (await r.json())["result"] == "rolling"
    r = await client.put("/apps/web", json=app_body(publish="127.0.0.1:18081:80"))
    assert r.status == 400 and "lbctl rm" in (await r.json())["error"]
    r = await client.put("/apps/web", json=app_body(image="img:nosuch"))
    assert r.status == 400 and "not on this engine" in (await r.json())["error"]
    rec = h.apps.record("web")
    assert rec is not None and rec.revision == 2 and rec.spec.replicas == 3


async def test_apply_is_all_or_nothing(api: tuple[TestClient[Any, Any], Harness]) -> None:
    client, h = api
    r = await client.post("/apply", json={"apps": [app_body("a"), app_body(
        "b", publish="127.0.0.1:18081:80")]})
    assert r.status == 200, await r.text()
    r = await client.post("/apply", json={"apps": [app_body("a", replicas=5), app_body(
        "c", publish="127.0.0.1:18081:80")]})  # c would take b's port
    assert r.status == 400 and "already published by app b" in (await r.json())["error"]
    assert h.apps.spec("a").replicas == 2


async def test_update_merges_env_and_a_canary_needs_a_new_template(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, h = api
    await client.post("/apps", json=app_body(env={"A": "1", "B": "2"}))
    r = await client.post("/apps/web/update", json={"env_add": ["C=3"], "env_rm": ["A"]})
    assert r.status == 200 and (await r.json())["result"] == "rolling"
    assert dict(h.apps.spec("web").env) == {"B": "2", "C": "3"}
    r = await client.post("/apps/web/update", json={"replicas": 3, "canary": 25})
    assert r.status == 400 and "canary" in (await r.json())["error"]
    r = await client.post("/apps/web/update", json={"image": "img:2", "canary": 25})
    assert r.status == 200
    ro = (await (await client.get("/apps/web/rollout")).json())["rollout"]
    assert ro["canary"] == 25 and ro["state"] == "progressing"
    r = await client.post("/apps/web/update", json={"canary": 100, "image": "img:1"})
    assert r.status == 400


async def test_rollout_history_pause_resume_undo(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, h = api
    await client.post("/apps", json=app_body())
    r = await client.post("/apps/web/rollout/undo", json={})
    assert r.status == 400 and "no earlier revision" in (await r.json())["error"]
    await client.post("/apps/web/update", json={"image": "img:2"})
    r = await client.post("/apps/web/rollout/pause")
    assert r.status == 200 and (await r.json())["rollout"]["state"] == "paused"
    r = await client.post("/apps/web/rollout/resume")
    assert (await r.json())["rollout"]["state"] == "progressing"
    r = await client.post("/apps/web/rollout/undo", json={})
    assert (await r.json())["rollout"]["target"] == 1
    assert h.apps.spec("web").image == "img:1"
    hist = await (await client.get("/apps/web/rollout")).json()
    assert [x["revision"] for x in hist["history"]] == [1, 2]
    assert [x["current"] for x in hist["history"]] == [True, False]


async def test_pause_and_resume_answer_with_the_hold(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, h = api
    assert (await client.post("/apps", json=app_body())).status == 201
    r = await client.post("/apps/web/pause", json={"max": 12})
    body = await r.json()
    assert r.status == 200 and body["result"] == "paused"
    assert body["hold"]["until"] - body["hold"]["since"] == pytest.approx(12)
    r = await client.post("/apps/web/pause")  # no body: the default --max
    assert r.status == 200 and (await r.json())["hold"]["until"] > body["hold"]["until"]
    for path, payload, status in (("/apps/web/pause", {"max": 0}, 400),
                                  ("/apps/web/pause", {"for": 3}, 400),
                                  ("/apps/nosuch/pause", {}, 404),
                                  ("/apps/web/resume", {"max": 1}, 400)):
        r = await client.post(path, json=payload)
        assert r.status == status, (path, payload, await r.text())
    r = await client.post("/apps/web/resume")
    assert r.status == 200 and (await r.json())["result"] == "resumed"
    assert "hold" not in await (await client.post("/apps/web/resume")).json()
    udp = app_body("dns", publish="127.0.0.1:18053:53/udp")
    assert (await client.post("/apps", json=udp)).status == 201
    r = await client.post("/apps/dns/pause")
    assert r.status == 400 and "UDP" in (await r.json())["error"]
    rec = h.apps.record("dns")
    assert rec is not None and rec.hold is None
