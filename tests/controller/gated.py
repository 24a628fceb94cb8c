"""The fake engine with a gate in its image check, the one await every judged change passes
through (admission asks whether the image exists): a test holds one change in the middle of
its admission, commits others, then lets it go on. Races then happen in the order the test
wrote, every run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.controller.fakes import FakeEngine


class GatedEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.hold_next = False
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.image_checks: list[str] = []
        # Awaited inside an image check (not inside one it started itself): a change that
        # commits while another is in admission, every time.
        self.meanwhile: Callable[[], Awaitable[object]] | None = None
        self._inside = False

    async def image_exists(self, image: str) -> bool:
        self.image_checks.append(image)
        if self.hold_next:
            self.hold_next = False
            self.waiting.set()
            await self.gate.wait()
        if self.meanwhile is not None and not self._inside:
            self._inside = True
            try:
                await self.meanwhile()
            finally:
                self._inside = False
        return await super().image_exists(image)

    async def hold(self, start: Callable[[], Awaitable[object]]) -> asyncio.Task[object]:
        """Start a change that stops in its admission; returns the task that finishes it once
        `gate` is set."""
        self.hold_next, self.gate = True, asyncio.Event()
        self.waiting.clear()

        async def run() -> object:
            return await start()

        task = asyncio.create_task(run())
        await asyncio.wait_for(self.waiting.wait(), 5)
        return task
