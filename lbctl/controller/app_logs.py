"""`lbctl logs`: the output of every container of an app, as one stream in time order.

Which containers: every one labelled with the app (replicas, release containers, adopted
ones), never the sandbox, which runs no code of the app. A request reads the engine's list
once, to start from what runs now; following, it then finds new containers in the app
worker's view (which every event and every pass refresh), so a follow costs the engine no
call beyond the streams themselves: a container that starts (a scale, a rollout's new
replica, a crash-looping one's retry) joins with its whole log, and one that stops ends once
its last lines are read. When the app is removed, the follow ends after the last of its
containers stopped (adopted ones, which lbctl never stops, are let go then).

One task per container reads its stream into a bounded queue (lbctl.controller.log_merge
puts the queues in time order), so one slow or stuck stream neither blocks the others'
reading nor grows memory: a full queue pauses its reader, which leaves the rest with the
engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbctl.controller import clock
from lbctl.controller.apps import NotFound
from lbctl.controller.interfaces import EnginePort
from lbctl.controller.log_merge import SLACK, Merger
from lbctl.model import ROLE_SANDBOX, Container, InvalidInput, replica_name
from lbctl.model.errors import EngineError
from lbctl.model.log_lines import LogLine
from lbctl.settings import LogSettings

log = logging.getLogger("lbctl.controller")


@dataclass(frozen=True)
class LogQuery:
    follow: bool = False
    since: int | None = None  # ns since the epoch
    tail: int | None = None  # lines per container from the end of its log; None: all
    replica: str | None = None  # a name, or an index of the app's replicas


@dataclass(frozen=True)
class Source:
    """Whose lines: a container as `lbctl logs` names it."""

    name: str
    role: str
    adopted: bool

    def to_json(self) -> dict[str, Any]:
        return {"replica": self.name, "role": self.role, "adopted": self.adopted}


@dataclass(frozen=True)
class Entry:
    source: Source
    line: LogLine


@dataclass(frozen=True)
class Notice:
    """Something the reader is told beside the lines: a container's stream joined after the
    start (`joined`), could not be read (`error`), or the app was removed (`removed`)."""

    event: str
    source: Source | None = None
    message: str = ""


Record = Entry | Notice


def _source(c: Container) -> Source:
    return Source(c.name, c.role, not c.managed)


def _order(c: Container) -> tuple[bool, int, str]:
    return (c.index is None, c.index or 0, c.name)


class AppLogs:
    """The daemon's one log service; `open` starts a request's stream."""

    def __init__(self, engine: EnginePort, exists: Callable[[str], bool],
                 view: Callable[[str], Sequence[Container] | None],
                 settings: LogSettings = LogSettings()) -> None:  # noqa: B008
        """`exists`: whether the app is (still) wanted; `view`: the containers its worker
        last saw (None: no worker, which after a removal means everything of it is gone)."""
        self.engine = engine
        self.exists = exists
        self.view = view
        self.settings = settings

    async def open(self, app: str, query: LogQuery) -> LogStream:
        """The app's stream as `query` asks, starting from the containers there are now.
        NotFound for an unknown app or replica; EngineError when the engine cannot list."""
        if not self.exists(app):
            raise NotFound(f"no app named {app}")
        listed = [c for c in await self.engine.list_containers(app) if c.role != ROLE_SANDBOX]
        wanted = None
        if query.replica is not None:
            wanted = _replica(app, query.replica)
            chosen = [c for c in listed if c.name == wanted]
            if not chosen:
                names = ", ".join(c.name for c in sorted(listed, key=_order)) or "none"
                raise NotFound(f"{app} has no replica {wanted} (its containers: {names})")
            listed = chosen
        return LogStream(self, app, query, sorted(listed, key=_order), wanted)


def _replica(app: str, text: str) -> str:
    if text.isascii() and text.isdigit():
        return replica_name(app, int(text))
    if not text or len(text) > 128 or not all(ch.isascii() and (ch.isalnum() or ch in "_.-")
                                              for ch in text):
        raise InvalidInput(f"invalid replica {text!r}: give a name (web-2) or an index (2)")
    return text


@dataclass
class _Reader:
    key: int
    container: Container
    source: Source
    room: asyncio.Semaphore
    task: asyncio.Task[None] | None = None
    last_time: int | None = None
    ended_at: float | None = None
    # Seen in the worker's view: from then on, gone from it means gone (a container listed
    # at the start may not be in the view yet, and must not be read twice).
    in_view: bool = False


@dataclass
class LogStream:
    owner: AppLogs
    app: str
    query: LogQuery
    initial: list[Container]
    replica: str | None  # only the containers of this name (--replica)
    _readers: dict[str, _Reader] = field(default_factory=dict)  # the latest by container id
    _by_key: dict[int, _Reader] = field(default_factory=dict)  # every one with lines to give
    _notices: deque[Notice] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _keys: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.merger: Merger[int, Entry] = Merger(self.owner.settings.reorder_window)

    @property
    def sources(self) -> list[Source]:
        """The containers read from the start (`lbctl logs` aligns its prefixes on them)."""
        return [_source(c) for c in self.initial]

    async def records(self) -> AsyncGenerator[Record | None, None]:
        """Lines and notices in order; following, None now and then while nothing happens,
        so that the caller can check its reader is still there."""
        settings = self.owner.settings
        follow = self.query.follow
        for c in self.initial:
            self._start(c, self.query.since, self.query.tail)
        next_look = clock.monotonic() + settings.poll_interval
        try:
            while True:
                self._wake.clear()
                now = clock.monotonic()
                out = False
                for key, entry in self.merger.pop(now, strict=not follow):
                    self._by_key[key].room.release()
                    out = True
                    yield entry
                while self._notices:
                    out = True
                    yield self._notices.popleft()
                if not follow:
                    if self.merger.done():
                        return
                elif now + SLACK >= next_look:
                    next_look = now + settings.poll_interval
                    if await self._look(now):
                        for _, entry in self.merger.pop(now, strict=True):
                            yield entry
                        while self._notices:
                            yield self._notices.popleft()
                        yield Notice("removed")
                        return
                    if not out:
                        yield None
                    continue
                wake = [t for t in (self.merger.deadline(), next_look if follow else None)
                        if t is not None]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(wake) - now) if wake else None):
                        await self._wake.wait()
        finally:
            await self._stop_all()

    # ---- containers coming and going ------------------------------------------------------

    async def _look(self, now: float) -> bool:
        """Start reading new containers (and ones running again); True once the app is
        removed and gone, its readers stopped."""
        removed = not self.owner.exists(self.app)
        seen = self.owner.view(self.app)
        if removed and seen is None:
            await self._stop_all()
            return True
        if removed or seen is None:
            return False
        current = {c.id for c in seen}
        for key, r in list(self._by_key.items()):
            latest = self._readers.get(r.container.id) is r
            if r.ended_at is None or self.merger.has(key):
                continue
            if not latest:  # read again since: nothing more to come from this one
                del self._by_key[key]
            elif r.in_view and r.container.id not in current:  # its container is gone
                del self._by_key[key], self._readers[r.container.id]
        for r in self._readers.values():
            r.in_view = r.in_view or r.container.id in current
        for c in sorted(seen, key=_order):
            if c.role == ROLE_SANDBOX or (self.replica is not None and c.name != self.replica):
                continue
            had = self._readers.get(c.id)
            if had is None:
                self._notices.append(Notice("joined", _source(c)))
                self._start(c, self.query.since, None)  # new: its whole log
            elif (had.ended_at is not None and c.running
                  and now - had.ended_at >= self.owner.settings.reopen_after):
                # It runs on and its stream ended (the engine or the container restarted):
                # from the line after the last one read.
                since = had.last_time + 1 if had.last_time is not None else self.query.since
                self._start(c, since, None)
        return False

    def _start(self, c: Container, since: int | None, tail: int | None) -> None:
        key = next(self._keys)
        r = _Reader(key, c, _source(c), asyncio.Semaphore(self.owner.settings.read_ahead))
        old = self._readers.get(c.id)
        if old is not None:
            r.last_time, r.in_view = old.last_time, old.in_view
        self._readers[c.id] = self._by_key[key] = r
        self.merger.open(key)
        r.task = asyncio.create_task(self._read(r, since, tail),
                                     name=f"logs {self.app} {c.name}")

    async def _read(self, r: _Reader, since: int | None, tail: int | None) -> None:
        try:
            async for line in self.owner.engine.logs(r.container.id, follow=self.query.follow,
                                                     since=since, tail=tail):
                await r.room.acquire()
                self.merger.add(r.key, line.time, Entry(r.source, line), clock.monotonic())
                r.last_time = line.time
                self._wake.set()
        except EngineError as e:
            self._notices.append(Notice("error", r.source, str(e)))
        except Exception as e:  # one container's stream never takes the others down
            log.exception("log stream failed", extra={"app": self.app, "replica": r.source.name})
            self._notices.append(Notice("error", r.source, f"reading its log failed: {e}"))
        finally:
            self.merger.close(r.key)
            r.ended_at = clock.monotonic()
            self._wake.set()

    async def _stop_all(self) -> None:
        tasks = [r.task for r in self._by_key.values() if r.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["AppLogs", "Entry", "LogQuery", "LogStream", "Notice", "Record", "Source"]
