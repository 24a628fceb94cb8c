"""`lbctl logs` without a daemon of lbctl's: the prefixes (aligned, colored, adopted marked),
the request it makes of --since/--tail/--replica, bad input (one line, exit 2, before any
request), and what it does with each kind of record a canned stream sends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lbctl.api.client import DaemonUnavailable
from lbctl.cli.logs import Printer, logs, query
from lbctl.model import InvalidInput
from lbctl.model.log_lines import NS

LINE = {"replica": "web-1", "time": "2026-12-05T08:09:04.000000001Z", "stream": "stdout",
        "line": "hello"}


def test_prefixes_are_aligned_on_the_longest_name_and_adopted_ones_marked() -> None:
    p = Printer(StringIO(), color=False, timestamps=False)
    p.add([{"replica": "web-1", "adopted": False}, {"replica": "proj_web_1", "adopted": True}])
    assert p.format(LINE) == "web-1       | hello"
    assert p.format({**LINE, "replica": "proj_web_1"}) == "proj_web_1* | hello"
    # A longer name joining (web-10 after a scale) widens what follows.
    p.add([{"replica": "web-release-10", "adopted": False}])
    assert p.format(LINE) == "web-1          | hello"


def test_timestamps_and_colors_per_replica() -> None:
    p = Printer(StringIO(), color=True, timestamps=True)
    p.add([{"replica": "web-1"}, {"replica": "web-2"}])
    one, two = p.format(LINE), p.format({**LINE, "replica": "web-2"})
    assert one == "\033[36mweb-1 |\033[0m 2026-12-05T08:09:04.000000001Z hello"
    assert two.startswith("\033[33mweb-2 |\033[0m ")
    # A line of a name never announced still prints, with a color of its own.
    assert p.format({**LINE, "replica": "web-3"}).startswith("\033[32mweb-3 |")


def test_the_request_of_each_flag() -> None:
    assert query(False, None, "all", None) == {}
    assert query(True, None, "10", "2") == {"follow": "1", "tail": "10", "replica": "2"}
    since = query(False, "10m", "0", None)
    assert since["tail"] == "0"
    asked = int(since["since"].replace(".", ""))  # Unix seconds with 9 digits
    assert abs(time.time_ns() - 600 * NS - asked) < 5 * NS
    assert query(False, "2026-12-05T08:09:04Z", "all", None)["since"] == "1796458144.000000000"
    for tail in ("-1", "x", "1.5"):
        with pytest.raises(InvalidInput, match="tail"):
            query(False, None, tail, None)
    with pytest.raises(InvalidInput, match="since"):
        query(False, "last tuesday", "all", None)


@pytest.mark.parametrize("args", [
    ["logs", "web", "--tail", "-1"], ["logs", "web", "--tail=-1"], ["logs", "web", "--since",
    "soon"], ["logs", "Web!"], ["logs"], ["logs", "web", "--since", "-5m"],
])
def test_bad_input_is_one_line_exit_2_before_any_request(args: list[str], tmp_path: Path
                                                         ) -> None:
    r = subprocess.run([sys.executable, "-m", "lbctl", *args], capture_output=True, text=True,
                       check=False, env={"LBCTL_SOCKET": str(tmp_path / "none.sock"),
                                         "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "daemon" not in r.stderr  # refused before asking it


Serve = Callable[[list[dict[str, Any]], int], Any]


@pytest.fixture
async def canned(tmp_path: Path) -> AsyncIterator[tuple[Path, list[str], Serve]]:
    """A daemon stand-in on a Unix socket that answers /apps/web/logs with given records."""
    sock = tmp_path / "lbctl.sock"
    asked: list[str] = []
    answer: dict[str, Any] = {"records": [], "status": 200, "cut": False}

    async def handle(request: web.Request) -> web.StreamResponse:
        asked.append(request.path_qs)
        if answer["status"] != 200:
            return web.json_response(answer["records"][0], status=answer["status"])
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for r in answer["records"]:
            await resp.write((json.dumps(r) + "\n").encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/apps/web/logs", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(sock)).start()

    def serve(records: list[dict[str, Any]], status: int = 200) -> None:
        answer.update(records=records, status=status)

    try:
        yield sock, asked, serve
    finally:
        await runner.cleanup()


async def test_lines_go_to_stdout_and_a_removal_ends_a_follow_with_a_line(
        canned: tuple[Path, list[str], Serve], capsys: pytest.CaptureFixture[str]) -> None:
    sock, asked, serve = canned
    serve([{"replicas": [{"replica": "web-1", "adopted": False}]}, LINE,
           {"event": "joined", "replica": "web-12", "role": "replica", "adopted": False},
           {**LINE, "replica": "web-12", "line": "new one"},
           {"event": "removed", "app": "web"}], 200)
    assert await logs(sock, "web", {"follow": "1", "tail": "5"}, False, False) == 0
    out, err = capsys.readouterr()
    assert out == "web-1 | hello\nweb-12 | new one\n"  # widened when web-12 joined
    assert err == "web: removed\n"
    assert asked == ["/apps/web/logs?follow=1&tail=5"]


async def test_an_unreadable_replica_is_a_line_on_stderr_and_exit_1(
        canned: tuple[Path, list[str], Serve], capsys: pytest.CaptureFixture[str]) -> None:
    sock, _, serve = canned
    serve([{"replicas": []}, {"event": "error", "replica": "web-2", "error": "gone"}, LINE],
          200)
    assert await logs(sock, "web", {}, False, False) == 1
    out, err = capsys.readouterr()
    assert out == "web-1 | hello\n" and err == "lbctl: web-2: gone\n"


async def test_a_follow_the_daemon_ends_is_a_failure(
        canned: tuple[Path, list[str], Serve]) -> None:
    sock, _, serve = canned
    serve([{"replicas": []}, LINE], 200)
    with pytest.raises(DaemonUnavailable, match="ended the log stream"):
        await logs(sock, "web", {"follow": "1"}, False, False)
