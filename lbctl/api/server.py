"""The control API: HTTP+JSON on a Unix socket (no TCP port exists, by design).

Every handler validates its input completely before it touches the controller, so bad input
gets a 4xx with {"error": "..."} and changes nothing. Changes to one app are serialized by a
per-app lock, so racing `lbctl scale` calls end in the state of the last accepted request.
"""

from __future__ import annotations

import grp
import json
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from lbctl.controller.reconciler import Controller, NotFound
from lbctl.model import AppSpec, InvalidInput, validate_name, validate_replicas

log = logging.getLogger("lbctl.api")

MAX_BODY = 64 * 1024
SOCKET_GROUP = "lbctl"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InvalidInput(f"request body larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"request body larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("request body is not valid JSON") from None
    except RecursionError:  # "[[[[...": 64 KiB of nesting is far past the parser's limit
        raise InvalidInput("request body is nested too deeply") from None


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except InvalidInput as e:
        return _error(400, str(e))
    except NotFound as e:
        return _error(404, str(e.args[0]) if e.args else "not found")
    except web.HTTPException as e:
        return _error(e.status, e.reason or "error")
    except TimeoutError:
        return _error(504, "timed out waiting for the data plane; see `lbctl status`")
    except Exception as e:  # the daemon stays up whatever a request does
        log.exception("API handler failed")
        return _error(500, f"internal error: {e}")


class Api:
    def __init__(self, controller: Controller) -> None:
        self.c = controller
        app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
        app.router.add_get("/apps", self.list_apps)
        app.router.add_post("/apps", self.create_app)
        app.router.add_get("/apps/{name}", self.get_app)
        app.router.add_put("/apps/{name}", self.put_app)
        app.router.add_delete("/apps/{name}", self.delete_app)
        app.router.add_post("/apps/{name}/scale", self.scale_app)
        app.router.add_get("/apps/{name}/spec", self.get_spec)
        app.router.add_get("/healthz", self.healthz)
        self.app = app
        self.runner: web.AppRunner | None = None

    async def start(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            path.unlink()
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        # Create the socket with no access for others from the first moment, then open it
        # to the lbctl group: a chmod after bind would leave a window.
        old = os.umask(0o117)
        try:
            site = web.UnixSite(self.runner, str(path))
            await site.start()
        finally:
            os.umask(old)
        try:
            os.chown(path, 0, grp.getgrnam(SOCKET_GROUP).gr_gid)
        except KeyError:
            log.warning("group %s does not exist: only root can use the socket", SOCKET_GROUP)
        except PermissionError:
            pass
        os.chmod(path, 0o660)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "synced": self.c.first_sync.is_set()})

    async def list_apps(self, request: web.Request) -> web.Response:
        return web.json_response({"apps": await self.c.status()})

    async def get_app(self, request: web.Request) -> web.Response:
        name = validate_name(request.match_info["name"])
        apps = await self.c.status(name)
        return web.json_response(apps[0])

    async def get_spec(self, request: web.Request) -> web.Response:
        name = validate_name(request.match_info["name"])
        return web.json_response(dict(self.c.spec_json(name)))

    async def create_app(self, request: web.Request) -> web.Response:
        spec = AppSpec.from_json(await _body(request), self.c.settings.default_mode)
        async with self.c.lock(spec.name):
            await self.c.create_app(spec)
        return web.json_response({"app": spec.to_json()}, status=201)

    async def put_app(self, request: web.Request) -> web.Response:
        name = validate_name(request.match_info["name"])
        body = await _body(request)
        if isinstance(body, dict) and body.get("name", name) != name:
            raise InvalidInput("the name in the body differs from the one in the path")
        if isinstance(body, dict):
            body = {**body, "name": name}
        spec = AppSpec.from_json(body, self.c.settings.default_mode)
        async with self.c.lock(name):
            created = await self.c.create_app(spec, replace=True)
        return web.json_response({"app": spec.to_json()}, status=201 if created else 200)

    async def scale_app(self, request: web.Request) -> web.Response:
        name = validate_name(request.match_info["name"])
        body = await _body(request)
        if not isinstance(body, dict) or set(body) != {"replicas"}:
            raise InvalidInput('body must be {"replicas": N}')
        replicas = validate_replicas(body["replicas"])
        async with self.c.lock(name):
            spec = await self.c.scale(name, replicas)
        return web.json_response({"app": spec.to_json()})

    async def delete_app(self, request: web.Request) -> web.Response:
        name = validate_name(request.match_info["name"])
        try:
            timeout = float(request.query.get("timeout", "120"))
        except ValueError:
            raise InvalidInput("timeout must be a number of seconds") from None
        if not 0 < timeout <= 3600:
            raise InvalidInput("timeout must be between 0 and 3600 seconds")
        async with self.c.lock(name):
            await self.c.delete_app(name, timeout)
        return web.json_response({"deleted": name})
