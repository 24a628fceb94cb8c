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
from lbctl.model.options import OPTIONS
from tests.controller.fakes import FakeHostFiles, Harness, harness, spec

HUGE = "9" * 400
EDGE = [2 ** 63 - 1, 2 ** 63, -(2 ** 63) - 1, 2 ** 64, 10 ** 400, -1, 0, 1, 65, 4097]
TEXT = ["\0", "a\0b", HUGE, "/", "//", "/.", "..", "fe80::1%eth0", "SIGFOO", "1e400", "nan",
        "-1", "9" * 30 + "g", "lbctl", "lbctl.managed", "/:/host", "/run/lbctl:/x",
        "type=bind,source=/,target=/x", "nofile=-1", "memlock=-1", "rtprio=99",
        "/x:size=" + HUGE, "host", "container:x", "127.0.0.1:22:80", "1ms", "\n", "\u202e"]

json_values = st.recursive(
    st.none() | st.booleans() | st.sampled_from(EDGE) | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.sampled_from(TEXT),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.sampled_from(["lbctl.x", "\0"]), inner,
                      max_size=4),
    max_leaves=10,
)

# Values of a field that pass its parser and are for the policy, admission or the caps to
# decide: what reaches the rules, the engine's answers and resource creation.
PLAUSIBLE: dict[str, list[Any]] = {
    "name": ["zz", "web", "zz2"],
    "publish": ["127.0.0.1:18501:80", "0.0.0.0:18502:80", "127.0.0.1:80:80",
                ["127.0.0.1:18503:80", "127.0.0.2:18503:80"]],
    "replicas": [0, 2, 16, 17, 64],
    "mode": ["ebpf", "iptables"],
    "image": ["img:2", "nosuch:1"],
    "volume": [["data:/d"], ["vol1:/v"], ["/srv/apps:/x:ro"], ["/:/h"], ["/run/lbctl:/x"],
               ["/srv:/x"], ["/srv/apps/../../etc:/x"], ["/cache"]],
    "mount": [["type=bind,source=/srv/apps,target=/m"], ["type=volume,source=vol1,target=/m"],
              ["type=tmpfs,target=/t,tmpfs-size=8g"]],
    "tmpfs": [["/t:size=8g"], ["/t:size=1m"], ["/t"]],
    "memory": ["64m", "8g", "16g"],
    "shm-size": ["8g", "64m"],
    "pids-limit": [100, 5000, -1, 0],
    "ulimit": [["nofile=1024:2048"], ["memlock=-1"], ["rtprio=1"], ["nofile=1024:9999999"]],
    "health-interval": ["1s", "1ms", "0"],
    "cap-add": [["SYS_ADMIN"], ["NET_BIND_SERVICE"]],
    "network": [["host"], ["net1"], ["bridge"]],
    "log-driver": ["syslog", "local"],
    "group-add": [["0"], ["docker"], ["1234"]],
    "label": [{"a": "b"}, {"lbctl.app": "x"}],
    "env": [{"A": "1"}], "env_add": [{"B": "2"}], "env_rm": [["A"]],
    "unset": [["memory"], ["volume"]], "canary": [1, 50, 99],
    "update": [{"parallelism": 3}, {"order": "stop-first"}],
}
APP = {"name": "zz", "image": "img:1", "publish": "127.0.0.1:18500:80", "replicas": 1}
APP_FIELDS = ["name", "image", "publish", "replicas", "mode", "env", "command", "update",
              *(o.key for o in OPTIONS)]
UPDATE_FIELDS = ["image", "env", "env_add", "env_rm", "command", "replicas", "update",
                 "unset", "canary", *(o.key for o in OPTIONS)]


def mutated(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with up to three fields set to a plausible value or any JSON."""
    def value(field: str) -> st.SearchStrategy[Any]:
        known = PLAUSIBLE.get(field)
        return st.sampled_from(known) | json_values if known else json_values

    pairs = st.lists(st.sampled_from(fields).flatmap(
        lambda f: st.tuples(st.just(f), value(f))), max_size=3)
    return pairs.map(lambda kv: {**base, **dict(kv)})


apps = mutated(APP, APP_FIELDS)
bodies: dict[str, st.SearchStrategy[Any]] = {
    "app": apps | json_values,
    "apply": st.fixed_dictionaries(
        {"apps": st.lists(apps, min_size=1, max_size=2)},
        optional={"networks": st.dictionaries(st.text(max_size=8) | st.sampled_from(
                      ["lbctl", "net1", "bridge"]), st.just({}) | json_values, max_size=3),
                  "volumes": st.dictionaries(st.text(max_size=8) | st.just("vol1"),
                                             st.just({}) | json_values, max_size=3)})
    | json_values,
    "update": mutated({}, UPDATE_FIELDS) | json_values,
    "scale": st.fixed_dictionaries({"replicas": json_values | st.sampled_from(EDGE)})
    | json_values,
    "undo": st.fixed_dictionaries({"revision": json_values}) | json_values,
    "any": json_values,
}
names = st.sampled_from(["web", "zz", "nope"]) | st.text(max_size=8)
routes = st.one_of(
    st.tuples(st.just("POST"), st.just("/apps"), st.just("app")),
    st.tuples(st.just("PUT"), names.map(lambda n: f"/apps/{n}"), st.just("app")),
    st.tuples(st.just("POST"), st.just("/apply"), st.just("apply")),
    st.tuples(st.just("POST"), names.map(lambda n: f"/apps/{n}/update"), st.just("update")),
    st.tuples(st.just("POST"), names.map(lambda n: f"/apps/{n}/scale"), st.just("scale")),
    st.tuples(st.just("POST"), names.map(lambda n: f"/apps/{n}/rollout/undo"),
              st.just("undo")),
    st.tuples(st.sampled_from(["POST", "PUT", "DELETE", "GET", "PATCH"]),
              st.sampled_from(["/apps", "/apps/web", "/apps/web/rollout/pause", "/healthz",
                               "/apps/web/rollout/resume", "/apps/web/spec", "/x"]),
              st.just("any")),
)


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
    files = FakeHostFiles({"/srv/apps": ("dir", 0, 0, 0o755)})
    h = harness(tmp, files=files)
    policy = replace(Policy(), allowed_bind_sources=("/srv/apps",))

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
@given(route=routes, data=st.data(), uid=st.sampled_from(["0", "1000"]))
def test_any_json_to_any_route_is_2xx_or_one_line_4xx_that_changes_nothing(
    world: World, route: tuple[str, str, str], data: st.DataObject, uid: str,
) -> None:
    method, path, kind = route
    body = data.draw(bodies[kind])
    before = world.snapshot()

    async def send() -> tuple[int, str]:
        r = await world.client.request(method, path, data=json.dumps(body).encode(),
                                       headers={"X-Test-Uid": uid,
                                                "Content-Type": "application/json"},
                                       params={"timeout": "30"} if method == "DELETE" else None)
        return r.status, await r.text()

    status, text = world.loop.run_until_complete(send())
    event(f"{kind}: {status}")
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
