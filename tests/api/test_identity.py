"""Who the API thinks is asking: the kernel's peer credentials of the Unix socket, read
through aiohttp's transport, for this process (root) and for a process of another uid; and
no credentials at all (a TCP transport) meaning an unprivileged caller, never root."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lbctl.api.identity import UNKNOWN, Caller, peer
from lbctl.api.server import Api
from lbctl.model import Mode
from tests.controller.fakes import Harness, harness

NOBODY = 65534


async def _post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """One POST over an abstract Unix socket, from this process."""
    reader, writer = await asyncio.open_unix_connection(path)
    data = json.dumps(body).encode()
    writer.write(f"POST /apps HTTP/1.0\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    reply = await reader.read()
    writer.close()
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


# The same request from a process of uid 65534 (it prints its pid, the status, the body).
_AS_NOBODY = """
import json, os, socket, sys
body = sys.argv[2].encode()
s = socket.socket(socket.AF_UNIX)
s.connect("\\0" + sys.argv[1])  # an abstract name
s.sendall(b"POST /apps HTTP/1.0\\r\\nContent-Type: application/json\\r\\nContent-Length: "
          + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
reply = b""
while chunk := s.recv(65536):
    reply += chunk
head, _, payload = reply.partition(b"\\r\\n\\r\\n")
print(json.dumps([os.getpid(), int(head.split()[1]), json.loads(payload)]))
"""


@pytest.fixture
async def unix_api(tmp_path: Path) -> AsyncIterator[tuple[str, Harness]]:
    """The API over fakes on an abstract Unix socket (no file permissions in the way of the
    other uid: what they would say is tests/e2e/test_policy.py's business)."""
    h = harness(tmp_path)
    await h.start()
    runner = web.AppRunner(Api(h.apps, h.status, Mode.IPTABLES).app)
    await runner.setup()
    path = f"\0lbctl-test-identity-{os.getpid()}"
    await web.UnixSite(runner, path).start()
    try:
        yield path, h
    finally:
        await runner.cleanup()
        await h.stop()


def body(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "image": "img:1", "publish": f"127.0.0.1:{port}:80"}


async def test_the_kernel_names_the_caller(
    unix_api: tuple[str, Harness], caplog: pytest.LogCaptureFixture,
) -> None:
    """Port 22 is below the policy's 1024: refused to uid 65534, allowed to root (this
    process); the log line of each request carries the uid and pid the kernel gave."""
    path, h = unix_api
    caplog.set_level(logging.INFO, logger="lbctl.api")
    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        sys.executable, "-c", _AS_NOBODY, path[1:], json.dumps(body("theirs", 22)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    pid, status, data = json.loads(out)
    assert status == 403, data
    assert data["error"].startswith("policy: host port 22 is below 1024 (allowed_ports")
    assert "theirs" not in h.apps.names()
    seen = [(r.__dict__.get("uid"), r.__dict__.get("pid")) for r in caplog.records
            if r.getMessage() == "request"]
    assert seen == [(NOBODY, pid)], seen

    status, data = await _post(path, body("mine", 22))
    assert status == 201, data
    assert "mine" in h.apps.names()
    assert [r.__dict__.get("uid") for r in caplog.records if r.getMessage() == "request"] == [
        NOBODY, 0]


async def test_without_peer_credentials_the_caller_is_unknown_and_not_root(
    tmp_path: Path,
) -> None:
    """A TCP transport (aiohttp's test server) has no peer: the policy applies to it."""
    seen: list[Caller] = []

    async def who(request: web.Request) -> web.Response:
        seen.append(peer(request))
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/", who)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert (await client.get("/")).status == 200
    finally:
        await client.close()
    assert seen == [UNKNOWN] and not seen[0].root and str(seen[0]) == "unknown"
    assert Caller(0, 0, 1).root and not Caller(1000, 1000, 1).root
