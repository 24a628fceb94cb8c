"""A fault-injecting proxy in front of the real engine's socket, for the tests' own daemon.

Every request goes through to the real Docker (or Podman) API unchanged, event streams
included, except those a test asks to fail (an HTTP error the engine could give, such as a
remove that fails with "device or resource busy") or to hang (a wedged engine: the socket
accepts, nothing answers). The engine, its containers and the kernel stay real; only the
fault is injected, at the one place a real engine fault would show.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

_HOP = {"content-length", "transfer-encoding", "connection", "host", "keep-alive"}


@dataclass
class Rule:
    method: str
    path: re.Pattern[str]
    status: int
    message: str
    hits: int = 0


class EngineProxy:
    def __init__(self, listen: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.listen = listen
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.wedged = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.listen}"

    def fail(self, method: str, path_regex: str, status: int, message: str) -> Rule:
        rule = Rule(method, re.compile(path_regex), status, message)
        self.rules.append(rule)
        return rule

    def __enter__(self) -> EngineProxy:
        self._thread = threading.Thread(target=self._run, daemon=True, name="engine proxy")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("engine proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.wedged.clear()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.upstream),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handler(session))
        # The daemon's event stream (and a wedged request) never ends by itself: cleanup()
        # would wait its default 60 s for them (the join below, 10 s, after every test).
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        if self.listen.exists():
            self.listen.unlink()
        await web.UnixSite(runner, str(self.listen)).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await session.close()

    def _handler(self, session: aiohttp.ClientSession) -> Callable[
            [web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            # Accepted, never answered. The flag is a threading.Event set from the test's
            # thread, so it is polled (an asyncio.Event cannot be set across threads).
            while self.wedged.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            for rule in self.rules:
                if request.method == rule.method and rule.path.search(request.path):
                    rule.hits += 1
                    return web.json_response({"message": rule.message}, status=rule.status)
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            async with session.request(request.method, f"http://engine{request.path_qs}",
                                       headers=headers, data=body or None) as up:
                resp = web.StreamResponse(status=up.status, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in _HOP})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp

        return handle
