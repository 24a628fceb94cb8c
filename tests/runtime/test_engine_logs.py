"""Engine.logs against the real engines (Docker, and Podman's compatible API): stamped lines
with their stream, tail and since, a follow that ends after a stopped container's last lines,
and a container gone. Also Podman's stop timeout: a replica created without one gets the
daemon's grace (its graceful exit shows as its last lines), not Podman's 0."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import AsyncIterator

import pytest

from harness import PREFIX
from harness.engine import ENGINES
from harness.host import host_lock
from lbctl.model.log_lines import NS, LogLine
from lbctl.model.names import replica_labels
from lbctl.model.runtime import CreateRequest
from lbctl.runtime.engine import Engine
from lbctl.settings import EngineSettings

pytestmark = pytest.mark.engine


@pytest.fixture
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    with host_lock():
        e = Engine(EngineSettings(docker_host=ENGINES[request.param][1]))
        try:
            yield e
        finally:
            for c in await e.list_containers(f"{PREFIX}-elogs"):
                await e.stop_and_remove(c.id, grace=0)
            await e.close()


async def read(engine: Engine, cid: str, follow: bool = False, since: int | None = None,
               tail: int | None = None) -> list[LogLine]:
    return [ln async for ln in engine.logs(cid, follow=follow, since=since, tail=tail)]


def ask(ip: str, path: str) -> None:
    conn = http.client.HTTPConnection(ip, 8080, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()


@pytest.mark.parametrize("engine", ["docker", "podman"], indirect=True)
async def test_lines_tail_since_follow_and_a_gone_container(engine: Engine, demo_image: str
                                                            ) -> None:
    app = f"{PREFIX}-elogs"
    podman = engine.url.endswith("podman.sock")
    # This checkout's demo (LOG_REQUESTS) is built on Docker; Podman has lbctl/demo.
    image = "lbctl/demo:latest" if podman else demo_image
    start = time.time_ns()
    cid = await engine.create_and_start(CreateRequest(
        name=f"{app}-1", image=image, labels=replica_labels(app, "replica", 1),
        env={"LBCTL_REPLICA": "r1", "LOG_REQUESTS": "1"}))
    [c] = await engine.list_containers(app)
    if podman:
        assert c.stop_timeout is None  # Podman said 0: the daemon's grace applies instead
    for _ in range(100):
        if await read(engine, cid):
            break
        await asyncio.sleep(0.1)
    if not podman:
        assert c.ip is not None
        for path in ("/a", "/b"):
            ask(c.ip, path)
    lines = await read(engine, cid)
    expected = ["httpd: r1 listening on", *([] if podman else ["r1 GET /a", "r1 GET /b"])]
    for ln, want in zip(lines, expected, strict=True):
        assert ln.text.startswith(want), lines
        assert start - 5 * NS <= ln.time <= time.time_ns() + NS  # Podman: whole seconds
    assert [ln.stream for ln in lines] == ["stderr"] + ["stdout"] * (len(lines) - 1)
    assert await read(engine, cid, tail=1) == lines[-1:]
    assert await read(engine, cid, tail=0) == []
    assert await read(engine, cid, since=time.time_ns() + 10 * NS) == []
    assert await read(engine, cid, since=lines[0].time) == lines

    got: list[LogLine] = []

    async def follow() -> None:
        async for ln in engine.logs(cid, follow=True, tail=0):
            got.append(ln)

    task = asyncio.create_task(follow())
    await asyncio.sleep(1.0)
    assert not task.done() and got == []  # a quiet running container: the stream waits
    await engine.stop_and_remove(cid, grace=5)
    await asyncio.wait_for(task, 15)  # ends with the container, after its last lines
    assert [ln.text for ln in got] == ["httpd: r1: draining, 0 request(s) in flight",
                                       "httpd: r1: bye"]
    assert await read(engine, cid) == [] and await read(engine, cid, follow=True) == []
