"""`GET /apps/NAME/logs?follow=1&tail=N&since=T&replica=R`: an app's output, streamed.

The answer is chunked, one JSON object a line (application/x-ndjson), so `lbctl logs`, curl
and scripts read it as it comes:

    {"replicas": [{"replica": "web-1", "role": "replica", "adopted": false}, ...]}   first
    {"replica": "web-1", "time": "2026-05-01T12:00:00.123456789Z", "stream": "stdout",
     "line": "GET / HTTP/1.1"}
    {"event": "joined", "replica": "web-4", "role": "replica", "adopted": false}
    {"event": "error", "replica": "web-2", "error": "..."}
    {"event": "removed", "app": "web"}                                               last

Through the daemon rather than the engine's socket, so a member of the lbctl group (who may
manage apps but not read the engine's socket, which is root's) reads the logs of the apps.
Each request runs in its own task, reads the engine with the log service's bounded queues,
and writes no faster than its client reads (aiohttp waits once 64 KiB are unsent): a slow
or stopped reader holds its own stream back, and nothing else. A caller (uid) holds at most
`max_streams_per_caller` streams at once (429 past that).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import web

from lbctl.controller.app_logs import AppLogs, Entry, LogQuery, Record
from lbctl.model import InvalidInput, validate_name
from lbctl.model.errors import EngineError
from lbctl.model.log_lines import format_timestamp, parse_since, parse_tail

PARAMS = ("follow", "tail", "since", "replica")


def parse_query(query: Mapping[str, str], now: int) -> LogQuery:
    """The request's parameters; InvalidInput (400) for anything else or a bad value."""
    unknown = sorted(set(query) - set(PARAMS))
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0]} (use {', '.join(PARAMS)})")
    follow = query.get("follow", "0").lower()
    if follow not in ("0", "1", "true", "false", ""):
        raise InvalidInput(f"follow must be 1 or 0, not {query['follow']!r}")
    since = query.get("since")
    tail = query.get("tail")
    return LogQuery(follow=follow in ("1", "true"),
                    since=parse_since(since, now) if since is not None else None,
                    tail=parse_tail(tail) if tail is not None else None,
                    replica=query.get("replica"))


def to_json(record: Record, app: str) -> dict[str, Any]:
    if isinstance(record, Entry):
        return {"replica": record.source.name, "time": format_timestamp(record.line.time),
                "stream": record.line.stream, "line": record.line.text}
    out: dict[str, Any] = {"event": record.event}
    if record.event == "removed":
        out["app"] = app
    if record.source is not None:
        out.update(record.source.to_json())
    if record.event == "error":
        out["error"] = record.message
    return out


def _line(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class LogStreams:
    """The endpoint: the log service, and how many streams each caller holds."""

    def __init__(self, logs: AppLogs, uid: Callable[[web.Request], int | None]) -> None:
        """`uid`: the caller of a request (None: unknown, which all count as one)."""
        self.logs = logs
        self.uid = uid
        self.held: dict[int | None, int] = {}

    def _refusal(self, uid: int | None) -> str | None:
        cap = self.logs.settings.max_streams_per_caller
        if cap and self.held.get(uid, 0) >= cap:
            who = "this caller" if uid is None else f"uid {uid}"
            return (f"{who} already reads {cap} log streams (the daemon's --max-log-streams): "
                    "end one first")
        return None

    @contextlib.contextmanager
    def _slot(self, uid: int | None) -> Iterator[None]:
        self.held[uid] = self.held.get(uid, 0) + 1
        try:
            yield
        finally:
            self.held[uid] -= 1
            if not self.held[uid]:
                del self.held[uid]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = validate_name(request.match_info["name"])
        query = parse_query(request.query, time.time_ns())
        uid = self.uid(request)
        refused = self._refusal(uid)
        if refused is not None:
            return web.json_response({"error": refused}, status=429)
        with self._slot(uid):
            try:
                stream = await self.logs.open(name, query)
            except EngineError as e:
                return web.json_response({"error": str(e)}, status=503)
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                               "Cache-Control": "no-store"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                await resp.write(_line({"replicas": [s.to_json() for s in stream.sources]}))
                async with contextlib.aclosing(stream.records()) as records:
                    async for record in records:
                        if record is not None:
                            await resp.write(_line(to_json(record, name)))
                        elif request.transport is None or request.transport.is_closing():
                            return resp  # the reader went away while nothing was written
                await resp.write_eof()
            except ConnectionResetError:  # the reader went away mid-write
                pass
            return resp


__all__ = ["PARAMS", "LogStreams", "parse_query", "to_json"]
