"""The control API: HTTP+JSON on a Unix socket (no TCP port exists, by design).

A handler parses the body into a typed change (lbctl.model.changes), validated completely as
it is parsed, and hands it to the apps service, which judges and commits it; the handler
holds no domain logic. Bad input gets a 4xx with {"error": "..."} and changes nothing: 400
invalid, 403 not this caller's to ask for, 404 no such app, 409 a conflict with a change
committed meanwhile (nothing of this request was committed). The answer to a change carries
the revision and generation it made. The API holds no lock of its own: the apps service
serializes changes, and waiting (for a removal) happens outside it.

Who asks matters: the socket's peer credentials name the caller of every request (see
identity.py). Root may ask for anything; any other caller (a member of the lbctl group) may
manage every app, but what a change makes desired must pass the policy (policy.toml): a
refusal is a 403 with the rule's name, and nothing changes. Deleting, scaling down, pausing
and resuming a rollout or the app's traffic need no judging: they never give a container more
than it had.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from lbctl.api.identity import Caller, peer
from lbctl.api.listener import BACKLOG, FdBudget, GuardedListener, ListenerLimits, Report
from lbctl.api.logs import LogStreams
from lbctl.controller.admission import Resources
from lbctl.controller.app_logs import AppLogs
from lbctl.controller.apps import ROOT, AppsService, Rights
from lbctl.controller.policy import Policy
from lbctl.controller.sources import Who
from lbctl.controller.status import Status
from lbctl.model import Forbidden, InvalidInput, Mode, validate_name
from lbctl.model.changes import (
    Apply,
    Create,
    HoldTraffic,
    Replace,
    ResumeTraffic,
    Scale,
    Update,
    parse_rollout,
)
from lbctl.model.errors import Conflict, NotFound
from lbctl.settings import ApiSettings

log = logging.getLogger("lbctl.api")

SOCKET_GROUP = "lbctl"
CALLER = web.RequestKey("caller", Caller)
MAX_BODY = web.AppKey("max_body", int)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_json(request: web.Request) -> Any:
    """The whole body as JSON, at most the settings' `max_body` bytes. `read()` collects
    every segment up to the end of the body (a single `content.read(n)` returns whatever
    arrived first: half a JSON document when the client's write was split in two segments)."""
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise InvalidInput(f"request body larger than {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise InvalidInput(f"request body larger than {limit} bytes") from None
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
    except Forbidden as e:
        caller = request.get(CALLER)
        log.warning("refused: %s", e, extra={"uid": caller.uid if caller else None,
                                             "method": request.method, "path": request.path})
        return _error(403, str(e))
    except InvalidInput as e:
        return _error(400, str(e))
    except NotFound as e:
        return _error(404, str(e.args[0]) if e.args else "not found")
    except Conflict as e:
        return _error(409, str(e))
    except web.HTTPException as e:
        return _error(e.status, e.reason or "error")
    except TimeoutError:
        return _error(504, "timed out waiting for the data plane; see `lbctl status`")
    except Exception as e:  # the daemon stays up whatever a request does
        log.exception("API handler failed")
        return _error(500, f"internal error: {e}")


def _name(request: web.Request) -> str:
    return validate_name(request.match_info["name"])


def _timeout(request: web.Request, default: str = "120") -> float:
    try:
        timeout = float(request.query.get("timeout", default))
    except ValueError:
        raise InvalidInput("timeout must be a number of seconds") from None
    if not 0 < timeout <= 3600:
        raise InvalidInput("timeout must be between 0 and 3600 seconds")
    return timeout


class Api:
    def __init__(
        self,
        apps: AppsService,
        status: Status,
        default_mode: Mode,
        policy: Policy | None = None,
        identify: Callable[[web.Request], Caller] = peer,
        settings: ApiSettings = ApiSettings(),  # noqa: B008 (frozen: one shared default)
        report: Report = lambda label, event: None,
        logs: AppLogs | None = None,
    ) -> None:
        """`report`: what the socket's guard refused or cut (lbctl.api.listener.EVENTS)."""
        self.apps = apps
        self.status = status
        self.default_mode = default_mode
        self.policy = policy or Policy()
        self.identify = identify  # tests inject a caller; the daemon asks the kernel
        # Caps, timeouts and the fd reserve (lbctl.api.listener); its middleware is the
        # innermost, so a request whose body it cut ends there, not as a handler's error.
        self.listener = GuardedListener(
            ListenerLimits("control", "control socket", settings.max_connections,
                   settings.idle_timeout, settings.header_timeout,
                   settings.max_connections_per_uid),
            FdBudget(settings.fd_reserve), report)
        app = web.Application(middlewares=[_errors, self._caller, self.listener.middleware],
                              client_max_size=settings.max_body)
        app[MAX_BODY] = settings.max_body
        r = app.router
        r.add_get("/apps", self.list_apps)
        r.add_post("/apps", self.create_app)
        r.add_post("/apply", self.apply)
        r.add_get("/apps/{name}", self.get_app)
        r.add_put("/apps/{name}", self.put_app)
        r.add_delete("/apps/{name}", self.delete_app)
        r.add_post("/apps/{name}/scale", self.scale_app)
        r.add_post("/apps/{name}/update", self.update_app)
        r.add_get("/apps/{name}/spec", self.get_spec)
        r.add_get("/apps/{name}/rollout", self.get_rollout)
        r.add_post("/apps/{name}/rollout/{action}", self.rollout_action)
        # Any caller may read the logs of the apps they may manage.
        self.logs = LogStreams(logs, lambda rq: rq[CALLER].uid) if logs is not None else None
        if self.logs is not None:
            r.add_get("/apps/{name}/logs", self.logs.handle)
        r.add_post("/apps/{name}/pause", self.pause_app)
        r.add_post("/apps/{name}/resume", self.resume_app)
        r.add_get("/healthz", self.healthz)
        self.app = app
        self.runner: web.AppRunner | None = None

    async def start(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            path.unlink()
        # A stopping daemon does not wait for long requests (an `rm` waiting for its drains):
        # their clients see the connection close and `lbctl status` tells the rest.
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        # Create the socket with no access for others from the first moment, then open it
        # to the lbctl group: a chmod after bind would leave a window.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            sock.bind(str(path))
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        await self.listener.start(self.runner, [sock])
        try:
            os.chown(path, 0, grp.getgrnam(SOCKET_GROUP).gr_gid)
        except KeyError:
            log.warning("group %s does not exist: only root can use the socket", SOCKET_GROUP)
        except PermissionError:
            pass
        os.chmod(path, 0o660)

    async def stop(self) -> None:
        self.listener.close()
        if self.runner is not None:
            await self.runner.cleanup()

    # ---- who asks, and what they may ask for ---------------------------------------------

    @web.middleware
    async def _caller(self, request: web.Request, handler: Any) -> web.StreamResponse:
        caller = self.identify(request)
        request[CALLER] = caller
        if request.method not in ("GET", "HEAD"):
            # Who changed what: one line per change asked for, accepted or not.
            log.info("request", extra={"uid": caller.uid, "pid": caller.pid,
                                       "method": request.method, "path": request.path})
        resp: web.StreamResponse = await handler(request)
        return resp

    def _rights(self, request: web.Request) -> Rights:
        """What the caller may ask for: root anything (within the daemon's caps), any other
        caller what the policy allows."""
        caller = request.get(CALLER)
        if caller is not None and caller.root:
            return ROOT
        return Rights.member(self.policy, Who.of(caller.uid if caller else None,
                                                 caller.gid if caller else None))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "synced": self.status.synced()})

    async def list_apps(self, request: web.Request) -> web.Response:
        return web.json_response({"apps": await self.status.report()})

    async def get_app(self, request: web.Request) -> web.Response:
        apps = await self.status.report(_name(request))
        return web.json_response(apps[0])

    async def get_spec(self, request: web.Request) -> web.Response:
        return web.json_response(self.apps.spec(_name(request)).to_json())

    async def create_app(self, request: web.Request) -> web.Response:
        change = Create.parse(await read_json(request), self.default_mode)
        done = await self.apps.change([change], self._rights(request))
        return web.json_response(done[change.name].to_json(), status=201)

    async def put_app(self, request: web.Request) -> web.Response:
        """Create the app, or change it: a new template rolls out, a new count scales."""
        change = Replace.parse(await read_json(request), self.default_mode, _name(request))
        out = (await self.apps.change([change], self._rights(request)))[change.name]
        return web.json_response(out.to_json(), status=201 if out.result == "created" else 200)

    async def apply(self, request: web.Request) -> web.Response:
        """Several apps at once, all or nothing; `networks` and `volumes` (name -> labels)
        are created first when missing (what a compose file declares)."""
        change = Apply.parse(await read_json(request), self.default_mode)
        done = await self.apps.change(change.apps, self._rights(request),
                                      Resources(change.networks, change.volumes))
        return web.json_response({
            "result": {name: out.result for name, out in done.items()},
            "changes": {name: {k: v for k, v in out.to_json().items() if k != "app"}
                        for name, out in done.items()},
        })

    async def update_app(self, request: web.Request) -> web.Response:
        """Change some fields of an app (see lbctl.model.changes.Update): the change lands on
        the app as it is when it is committed."""
        change = Update.parse(_name(request), await read_json(request))
        done = await self.apps.change([change], self._rights(request))
        return web.json_response(done[change.name].to_json())

    async def scale_app(self, request: web.Request) -> web.Response:
        change = Scale.parse(_name(request), await read_json(request))
        done = await self.apps.change([change], self._rights(request))
        return web.json_response(done[change.name].to_json())

    async def delete_app(self, request: web.Request) -> web.Response:
        name = _name(request)
        timeout = _timeout(request)
        await self.apps.delete(name)
        await self.apps.wait_gone(name, timeout)
        return web.json_response({"deleted": name})

    async def get_rollout(self, request: web.Request) -> web.Response:
        name = _name(request)
        rec = self.apps.record(name)
        if rec is None:
            raise NotFound(f"no app named {name}")
        return web.json_response({
            "name": name,
            "revision": rec.revision,
            "rollout": rec.rollout.to_json() if rec.rollout else None,
            "history": [
                {**r.to_json(), "current": r.number == rec.revision} for r in rec.history
            ],
        })

    async def pause_app(self, request: web.Request) -> web.Response:
        """Hold the app's new connections (`{"max": S}`, optional) until resume or S."""
        body = await read_json(request) if request.can_read_body else None
        out = await self.apps.hold(HoldTraffic.parse(_name(request), body))
        return web.json_response(out.to_json())

    async def resume_app(self, request: web.Request) -> web.Response:
        body = await read_json(request) if request.can_read_body else None
        out = await self.apps.hold(ResumeTraffic.parse(_name(request), body))
        return web.json_response(out.to_json())

    async def rollout_action(self, request: web.Request) -> web.Response:
        body = await read_json(request) if request.can_read_body else None
        change = parse_rollout(_name(request), request.match_info["action"], body)
        out = await self.apps.rollout(change, self._rights(request))
        return web.json_response(out.to_json())
