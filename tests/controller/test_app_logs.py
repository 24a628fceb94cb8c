"""The log service on the fake engine, driven by the controller as the daemon wires it: every
container but the sandbox, in stamp order, --tail/--since/--replica, and a follow that picks
up new replicas across a scale and a rollout, ends each old one after its last line, and
ends when the app is removed. (tests/e2e/test_app_logs.py runs the same on the real engine.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lbctl.controller.app_logs import AppLogs, Entry, LogQuery, LogStream, Notice, Record
from lbctl.controller.apps import NotFound
from lbctl.model import LABEL_APP, AppSpec, Container, InvalidInput
from lbctl.model.log_lines import LogLine
from lbctl.model.spec import Mode
from lbctl.settings import LogSettings
from tests.controller.fakes import FakeContainer, Harness, harness, spec

T = 1_796_458_144_000_000_000


def service(h: Harness, **settings: Any) -> AppLogs:
    """Wired as lbctl.daemon.build wires it."""
    def view(app: str) -> list[Container] | None:
        v = h.controller.view(app)
        return v.containers if v is not None else None

    return AppLogs(h.engine, lambda app: h.apps.record(app) is not None, view,
                   replace(LogSettings(), **settings))


async def ebpf_app(h: Harness, name: str = "web", n: int = 3) -> AppSpec:
    s = spec(name, n, mode=Mode.EBPF)
    await h.apps.apply([s])
    await h.until(lambda: len(h.engine.running(name)) == n, what=f"{n} replicas")
    return s


async def collect(stream: LogStream, until: int | None = None) -> list[Record]:
    """Every record (without the idle ticks); with `until`, only that many."""
    out: list[Record] = []
    async with contextlib.aclosing(stream.records()) as records:
        async for r in records:
            if r is not None:
                out.append(r)
            if until is not None and len(out) >= until:
                break
    return out


def lines(records: list[Record]) -> list[str]:
    return [f"{r.source.name}|{r.line.text}" for r in records if isinstance(r, Entry)]


async def test_every_replica_in_stamp_order_and_never_the_sandbox(tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        await ebpf_app(h)
        assert any(f.c.role == "sandbox" for f in h.engine.containers.values())
        for i, name in enumerate(["web-2", "web-1", "web-3", "web-1", "web-2", "web-3"]):
            h.engine.write(name, f"line {i}", T + i, "stderr" if i % 2 else "stdout")
        sandbox = next(f.c for f in h.engine.containers.values() if f.c.role == "sandbox")
        h.engine.output[sandbox.id] = [LogLine(T + 3, "stdout", "never shown")]
        stream = await service(h).open("web", LogQuery())
        assert [s.name for s in stream.sources] == ["web-1", "web-2", "web-3"]
        got = await collect(stream)
        assert lines(got) == ["web-2|line 0", "web-1|line 1", "web-3|line 2", "web-1|line 3",
                              "web-2|line 4", "web-3|line 5"]
        assert [r.line.stream for r in got if isinstance(r, Entry)][:2] == ["stdout", "stderr"]
        assert all(not r.source.adopted and r.source.role == "replica"
                   for r in got if isinstance(r, Entry))
    finally:
        await h.stop()


async def test_tail_since_and_one_replica(tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        await ebpf_app(h, n=2)
        for i in range(10):
            h.engine.write(f"web-{1 + i % 2}", f"l{i}", T + i)
        logs = service(h)
        assert lines(await collect(await logs.open("web", LogQuery(tail=2)))) == [
            "web-1|l6", "web-2|l7", "web-1|l8", "web-2|l9"]
        assert lines(await collect(await logs.open("web", LogQuery(since=T + 7)))) == [
            "web-2|l7", "web-1|l8", "web-2|l9"]
        assert lines(await collect(await logs.open("web", LogQuery(tail=0)))) == []
        for asked in ("2", "web-2"):
            assert lines(await collect(await logs.open("web", LogQuery(replica=asked)))) == [
                f"web-2|l{i}" for i in (1, 3, 5, 7, 9)]
        with pytest.raises(NotFound, match=r"web has no replica web-7 \(its containers: "
                                           r"web-1, web-2\)"):
            await logs.open("web", LogQuery(replica="7"))
        with pytest.raises(NotFound, match="no app named nope"):
            await logs.open("nope", LogQuery())
        with pytest.raises(InvalidInput, match="invalid replica"):
            await logs.open("web", LogQuery(replica="a b"))
    finally:
        await h.stop()


async def test_adopted_and_release_containers_are_included_and_marked(tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        await h.apps.apply([spec("web", 1)])
        await h.until(lambda: len(h.engine.running("web")) == 1)
        for cid, name, role in (("x1", "proj_web_1", "replica"), ("x2", "web-release-2",
                                                                  "release")):
            c = Container(id=cid, name=name, app="web", role=role, managed=role == "release",
                          index=None, running=True, health=None, ip="10.9.0.9", pid=None,
                          started_at=time.time())
            h.engine.containers[cid] = FakeContainer(c, "img:1", {LABEL_APP: "web"})
        h.engine.write("proj_web_1", "compose's", T + 1)
        h.engine.write("web-release-2", "migrated", T + 2)
        h.engine.write("web-1", "ours", T + 3)
        got = await collect(await service(h).open("web", LogQuery()))
        assert lines(got) == ["proj_web_1|compose's", "web-release-2|migrated", "web-1|ours"]
        sources = {r.source.name: r.source for r in got if isinstance(r, Entry)}
        assert sources["proj_web_1"].adopted and not sources["web-1"].adopted
        assert sources["web-release-2"].role == "release"
    finally:
        await h.stop()


async def test_one_unreadable_container_is_a_notice_and_the_rest_goes_on(
        tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        await ebpf_app(h, n=2)
        bad = next(c.id for c in h.engine.running("web") if c.name == "web-1")
        h.engine.log_error = lambda cid: "reading the log: no such file" if cid == bad else None
        h.engine.write("web-2", "fine", T)
        got = await collect(await service(h).open("web", LogQuery()))
        assert lines(got) == ["web-2|fine"]
        assert [(n.event, n.source.name if n.source else None, n.message) for n in got
                if isinstance(n, Notice)] == [("error", "web-1",
                                               "reading the log: no such file")]
    finally:
        await h.stop()


async def follow(stream: LogStream, into: list[Record]) -> None:
    async with contextlib.aclosing(stream.records()) as records:
        async for r in records:
            if r is not None:
                into.append(r)


async def test_follow_across_a_scale_a_rollout_and_the_removal(tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        s = await ebpf_app(h, n=2)
        h.engine.write("web-1", "before", T)
        got: list[Record] = []
        task = asyncio.create_task(follow(await service(h).open(
            "web", LogQuery(follow=True, tail=10)), got))
        await h.until(lambda: lines(got) == ["web-1|before"])
        h.engine.write("web-2", "live", T + 1)
        await h.until(lambda: "web-2|live" in lines(got))

        await h.apps.scale("web", 3)  # a new replica joins, with its whole log
        await h.until(lambda: len(h.engine.running("web")) == 3)
        h.engine.write("web-3", "hello from 3", T + 2)
        await h.until(lambda: "web-3|hello from 3" in lines(got))
        joined = [n.source.name for n in got if isinstance(n, Notice) and n.event == "joined"
                  and n.source is not None]
        assert joined == ["web-3"]

        olds = {c.id: c.name for c in h.engine.running("web")}
        await h.apps.apply([replace(s, image="img:2", replicas=3)])  # a rollout
        await h.until(lambda: not set(olds) & {c.id for c in h.engine.running("web")},
                      30.0, "every old replica replaced")
        for c in h.engine.running("web"):
            h.engine.write(c.name, f"new {c.name}", T + 10 + (c.index or 0))
        await h.until(lambda: sum(1 for ln in lines(got) if "|new " in ln) == 3)
        # The old ones' streams ended (their containers stopped), the new ones were read.
        assert sum(1 for n in got if isinstance(n, Notice) and n.event == "joined") == 4
        assert {cid for cid, *_ in h.engine.log_reads} >= set(olds)

        await h.apps.delete("web")
        await asyncio.wait_for(task, 30)
        assert isinstance(got[-1], Notice) and got[-1].event == "removed"
        texts = lines(got)
        assert texts.index("web-1|before") < texts.index("web-2|live") < texts.index(
            "web-3|hello from 3")
    finally:
        await h.stop()


async def test_a_slow_reader_holds_back_reading_not_memory(tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        await ebpf_app(h, n=2)
        for i in range(1000):
            h.engine.write("web-1", f"a{i}", T + 2 * i)
            h.engine.write("web-2", f"b{i}", T + 2 * i + 1)
        stream = await service(h, read_ahead=16).open("web", LogQuery())
        records = stream.records()
        first = await records.__anext__()
        assert isinstance(first, Entry) and first.line.text == "a0"
        await asyncio.sleep(1.0)  # the reader takes nothing for a while
        assert stream.merger.waiting() <= 2 * 16
        rest = [first] + [r async for r in records if r is not None]
        assert len(rest) == 2000
        assert lines(rest)[:4] == ["web-1|a0", "web-2|b0", "web-1|a1", "web-2|b1"]
    finally:
        await h.stop()


async def test_closing_a_follow_stops_every_reader(tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        await ebpf_app(h, n=3)
        stream = await service(h).open("web", LogQuery(follow=True))
        records: AsyncGenerator[Record | None, None] = stream.records()
        assert await records.__anext__() is None  # quiet: an idle tick
        await records.aclose()
        assert all(r.task is not None and r.task.done() for r in stream._by_key.values())
        assert len(stream._by_key) == 3
    finally:
        await h.stop()
