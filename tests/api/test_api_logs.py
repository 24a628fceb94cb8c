"""GET /apps/NAME/logs with aiohttp's test server over the controller on fakes: the lines of
JSON it streams, one-line 4xx for bad input, the per-caller cap, and a reader that goes away
(tests/e2e/test_app_logs.py reads a real engine's logs through a real daemon)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lbctl.api.server import Api
from lbctl.controller.app_logs import AppLogs
from lbctl.model import Container, Mode
from lbctl.model.errors import EngineError
from lbctl.settings import LogSettings
from tests.controller.fakes import Harness, harness, spec

T = 1_796_458_144_000_000_000
Client = TestClient[Any, Any]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Client, Harness, Api]]:
    h = harness(tmp_path)
    await h.start()

    def containers(app: str) -> list[Container] | None:
        view = h.controller.view(app)
        return view.containers if view is not None else None

    logs = AppLogs(h.engine, lambda app: h.apps.record(app) is not None, containers,
                   replace(LogSettings(), max_streams_per_caller=2))
    server = Api(h.apps, h.status, Mode.IPTABLES, logs=logs)
    client: Client = TestClient(TestServer(server.app))
    await client.start_server()
    await h.apps.apply([spec("web", 2)])
    await h.until(lambda: len(h.engine.running("web")) == 2)
    try:
        yield client, h, server
    finally:
        await client.close()
        await h.stop()


async def test_the_stream_is_lines_of_json_in_stamp_order(
        api: tuple[Client, Harness, Api]) -> None:
    client, h, _ = api
    h.engine.write("web-2", "second", T + 2, "stderr")
    h.engine.write("web-1", "first caf\u00e9", T + 1)
    resp = await client.get("/apps/web/logs")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    records = [json.loads(line) for line in (await resp.read()).decode().splitlines()]
    assert records == [
        {"replicas": [{"replica": "web-1", "role": "replica", "adopted": False},
                      {"replica": "web-2", "role": "replica", "adopted": False}]},
        {"replica": "web-1", "time": "2026-12-05T08:09:04.000000001Z", "stream": "stdout",
         "line": "first caf\u00e9"},
        {"replica": "web-2", "time": "2026-12-05T08:09:04.000000002Z", "stream": "stderr",
         "line": "second"},
    ]
    resp = await client.get("/apps/web/logs", params={"replica": "2", "tail": "1",
                                                      "since": "1796458144.000000002"})
    lines = (await resp.read()).decode().splitlines()
    assert [json.loads(x).get("line") for x in lines[1:]] == ["second"]


@pytest.mark.parametrize(("query", "status", "error"), [
    ({"tail": "-1"}, 400, "tail must be a number of lines (0 or more) or all, not '-1'"),
    ({"since": "yesterday"}, 400, "invalid since 'yesterday': give a duration"),
    ({"follow": "maybe"}, 400, "follow must be 1 or 0, not 'maybe'"),
    ({"lines": "3"}, 400, "unknown parameter lines (use follow, tail, since, replica)"),
    ({"replica": "9"}, 404, "web has no replica web-9 (its containers: web-1, web-2)"),
    ({"replica": "../x"}, 400, "invalid replica '../x'"),
])
async def test_bad_input_is_one_line(api: tuple[Client, Harness, Api], query: dict[str, str],
                                     status: int, error: str) -> None:
    client, _, _ = api
    resp = await client.get("/apps/web/logs", params=query)
    assert resp.status == status
    body = await resp.json()
    assert body["error"].startswith(error) and "\n" not in body["error"]


async def test_unknown_app_and_an_engine_that_cannot_list(
        api: tuple[Client, Harness, Api], monkeypatch: pytest.MonkeyPatch) -> None:
    client, h, _ = api
    resp = await client.get("/apps/nope/logs")
    assert (resp.status, await resp.json()) == (404, {"error": "no app named nope"})

    async def broken(app: str | None = None) -> list[Container]:
        raise EngineError("listing containers: the container engine did not answer in 15s")

    monkeypatch.setattr(h.engine, "list_containers", broken)
    resp = await client.get("/apps/web/logs")
    assert resp.status == 503
    assert "did not answer" in (await resp.json())["error"]


async def test_a_caller_holds_at_most_the_cap_and_a_gone_reader_frees_its_place(
        api: tuple[Client, Harness, Api]) -> None:
    client, h, server = api
    assert server.logs is not None
    first = await client.get("/apps/web/logs", params={"follow": "1"})
    second = await client.get("/apps/web/logs", params={"follow": "1"})
    assert (first.status, second.status) == (200, 200)
    third = await client.get("/apps/web/logs", params={"follow": "1"})
    assert third.status == 429
    assert "already reads 2 log streams" in (await third.json())["error"]
    assert server.logs.held == {None: 2}
    # A follow goes on while its reader reads: a line written now reaches it.
    h.engine.write("web-1", "live", T)
    assert json.loads(await first.content.readline())["replicas"]
    assert json.loads(await first.content.readline())["line"] == "live"
    first.close()  # the reader goes away while nothing is written: its place is freed
    await h.until(lambda: server.logs is not None and server.logs.held == {None: 1}, 5.0,
                  "the gone reader's stream to end")
    again = await client.get("/apps/web/logs", params={"follow": "1"})
    assert again.status == 200
    again.close()
    second.close()
    await h.until(lambda: server.logs is not None and not server.logs.held, 5.0)


async def test_a_follow_ends_with_the_app(api: tuple[Client, Harness, Api]) -> None:
    client, h, _ = api
    resp = await client.get("/apps/web/logs", params={"follow": "true"})
    assert resp.status == 200
    await h.apps.delete("web")
    body = await asyncio.wait_for(resp.read(), 30)
    assert json.loads(body.decode().splitlines()[-1]) == {"event": "removed", "app": "web"}
