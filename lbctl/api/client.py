"""The CLI's side of the control socket."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

DEFAULT_SOCKET = "/run/lbctl/lbctl.sock"


def socket_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("LBCTL_SOCKET") or DEFAULT_SOCKET)


class DaemonUnavailable(RuntimeError):
    pass


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.path)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, url: str, body: Any = None) -> Any:
        assert self._session is not None
        try:
            async with self._session.request(method, "http://lbctl" + url, json=body) as resp:
                return await _answer(resp)
        except aiohttp.ClientConnectorError as e:
            raise self._unavailable(e) from None
        except aiohttp.ClientError as e:
            raise self._closed(e) from None

    async def stream(self, url: str) -> AsyncIterator[Any]:
        """A GET answered with lines of JSON as they come (the logs endpoint), each decoded.
        Ends when the daemon ends the answer; DaemonUnavailable when it drops it."""
        assert self._session is not None
        try:
            async with self._session.get("http://lbctl" + url) as resp:
                if resp.status >= 400:
                    await _answer(resp)
                pending = b""
                async for chunk in resp.content.iter_any():
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
        except aiohttp.ClientConnectorError as e:
            raise self._unavailable(e) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                ConnectionResetError):
            raise DaemonUnavailable(
                "the daemon ended the stream (it stopped or restarted): run the command again"
            ) from None
        except aiohttp.ClientError as e:
            raise self._closed(e) from None

    def _closed(self, e: aiohttp.ClientError) -> DaemonUnavailable:
        # A daemon over one of its connection caps answers 503 and closes at once, often
        # before our request is written (EPIPE, reset): one line, not a traceback.
        return DaemonUnavailable(
            f"the daemon closed the connection on {self.path} ({e}): it takes a limited "
            "number of connections per caller; close some (or wait) and retry")

    def _unavailable(self, e: aiohttp.ClientConnectorError) -> DaemonUnavailable:
        if isinstance(e.os_error, PermissionError):
            return DaemonUnavailable(
                f"permission denied on {self.path}: run as root or join the lbctl group")
        return DaemonUnavailable(
            f"lbctl daemon is not running (no answer on {self.path}): start it with "
            "`lbctl daemon` or `systemctl start lbctl`")


async def _answer(resp: aiohttp.ClientResponse) -> Any:
    """The body as JSON; ApiError with the daemon's one line for a 4xx or 5xx."""
    try:
        data = await resp.json(content_type=None)
    except ValueError:
        data = {"error": (await resp.text())[:200]}
    if resp.status >= 400:
        msg = data.get("error") if isinstance(data, dict) else None
        raise ApiError(resp.status, str(msg or f"HTTP {resp.status}"))
    return data
