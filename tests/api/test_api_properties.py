"""A property of the control API, over a controller on fakes (thousands of requests a
minute; tests/api/test_hostile.py checks the same on a real daemon, engine and kernel):

    any JSON body, to any route, from root or from a member, gets a 2xx or a 4xx whose body
    is {"error": one line}; never a 5xx; and a 4xx changes nothing: every app's desired
    state (spec, owner, revision, generation), the apps being removed and the engine's
    networks and volumes are what they were. (The workers go on converging what earlier
    2xx requests asked for meanwhile, which moves containers and a rollout's progress in
    the state file: the real daemon's test, tests/api/test_hostile.py, waits for that and
    compares the file's bytes and the containers.)

Bodies are arbitrary JSON, and valid bodies of each route with fields replaced by arbitrary
JSON (so that every branch of the parsers and the policy is reached, not only the first
type check), with values chosen where bugs were found: 400-digit numbers, NUL, int64's
edge, scoped addresses, unknown signals, `/` as a target."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lbctl.api.identity import Caller
from lbctl.api.server import Api
from lbctl.controller.policy import Policy
from lbctl.model import Mode
from tests.api.bodies import Target, requests
from tests.controller.fakes import FakeHostFiles, Harness, harness, spec

TARGET = Target(app="web", new="zz", image="img:1", other_image="img:2",
                ports=(18501, 18502, 18503), volume="vol1", network="net1", bind="/srv/apps")

@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    client: TestClient[Any, Any]
    h: Harness
    state: Path

    def snapshot(self) -> tuple[object, ...]:
        e, apps = self.h.engine, self.h.apps
        desired = {n: (r.spec.to_json(), r.owner, r.revision, [h.number for h in r.history])
                   for n, r in apps.state.apps.items()}
        return (desired, sorted(apps.state.deleted), dict(apps.generations),
                {n: v.labels for n, v in e.volumes.items()},
                {n: dict(v.labels) for n, v in e.networks.items()})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("props")
    loop = asyncio.new_event_loop()
    files = FakeHostFiles({TARGET.bind: ("dir", 0, 0, 0o755)})
    h = harness(tmp, files=files)
    policy = replace(Policy(), allowed_bind_sources=(TARGET.bind,))

    def as_header(request: web.Request) -> Caller:
        uid = int(request.headers.get("X-Test-Uid", "1000"))
        return Caller(uid, uid, 4242)

    async def start() -> TestClient[Any, Any]:
        await h.start()
        await h.apps.create(spec("web", 1))
        client: TestClient[Any, Any] = TestClient(TestServer(
            Api(h.apps, h.status, Mode.IPTABLES, policy, identify=as_header).app))
        await client.start_server()
        return client

    client = loop.run_until_complete(start())
    try:
        yield World(loop, client, h, tmp / "state.json")
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(h.stop())
        loop.close()


@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(request=requests(TARGET), uid=st.sampled_from(["0", "1000"]))
def test_any_json_to_any_route_is_2xx_or_one_line_4xx_that_changes_nothing(
    world: World, request: tuple[str, str, Any], uid: str,
) -> None:
    method, path, body = request
    kind = path.split("/")[-1] if path.count("/") > 1 else path
    before = world.snapshot()

    async def send() -> tuple[int, str]:
        r = await world.client.request(method, path, data=json.dumps(body).encode(),
                                       headers={"X-Test-Uid": uid,
                                                "Content-Type": "application/json"})
        return r.status, await r.text()

    status, text = world.loop.run_until_complete(send())
    event(f"{method} {kind.partition('?')[0]}: {status}")
    what = f"{method} {path} as uid {uid}: {json.dumps(body)[:300]}"
    assert status < 500, (what, status, text[:300])
    if 200 <= status < 300:
        return
    assert 400 <= status < 500, (what, status)
    err = json.loads(text)
    assert isinstance(err, dict) and set(err) == {"error"}, (what, text[:300])
    assert isinstance(err["error"], str) and err["error"], (what, err)
    assert "\n" not in err["error"] and len(err["error"]) <= 400, (what, err)
    assert world.snapshot() == before, f"a {status} changed something: {what}"
