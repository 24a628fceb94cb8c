"""The CLI's side of the control socket."""

from __future__ import annotations

import os
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
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {"error": (await resp.text())[:200]}
                if resp.status >= 400:
                    msg = data.get("error") if isinstance(data, dict) else None
                    raise ApiError(resp.status, str(msg or f"HTTP {resp.status}"))
                return data
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, PermissionError):
                raise DaemonUnavailable(
                    f"permission denied on {self.path}: run as root or join the lbctl group"
                ) from None
            raise DaemonUnavailable(
                f"lbctl daemon is not running (no answer on {self.path}): start it with "
                "`lbctl daemon` or `systemctl start lbctl`"
            ) from None
        except aiohttp.ClientError as e:
            # A daemon over one of its connection caps answers 503 and closes at once, often
            # before our request is written (EPIPE, reset): one line, not a traceback.
            raise DaemonUnavailable(
                f"the daemon closed the connection on {self.path} ({e}): it takes a limited "
                "number of connections per caller; close some (or wait) and retry"
            ) from None
