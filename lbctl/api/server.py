"""The control API: HTTP+JSON on a Unix socket (no TCP port exists, by design).

Every handler validates its input completely before it asks the apps service for a change, so
bad input gets a 4xx with {"error": "..."} and changes nothing. The API holds no lock of its
own: the apps service serializes changes, and waiting (for a removal) happens outside it.

Who asks matters: the socket's peer credentials name the caller of every request (see
identity.py). Root may ask for anything; any other caller (a member of the lbctl group) may
manage every app, but what a change makes desired must pass the policy (policy.toml): a
refusal is a 403 with the rule's name, and nothing changes. Deleting, scaling down, pausing
and resuming a rollout need no judging: they never give a container more than it had.
"""

from __future__ import annotations

import grp
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from lbctl.api.identity import Caller, peer
from lbctl.api.logs import LogStreams
from lbctl.controller.admission import Resources
from lbctl.controller.app_logs import AppLogs
from lbctl.controller.apps import AppsService, NotFound
from lbctl.controller.limits import Cap, Limits
from lbctl.controller.policy import Policy
from lbctl.controller.status import Status
from lbctl.model import (
    AppSpec,
    Forbidden,
    InvalidInput,
    Mode,
    validate_name,
    validate_replicas,
)
from lbctl.model.docker_syntax import resource_name
from lbctl.model.options import FIELDS as OPTION_FIELDS
from lbctl.model.spec import parse_env
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


def _canary(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 99:
        raise InvalidInput(f"canary must be a percentage from 1 to 99, not {value!r}")
    return value


def _resources(raw: object, what: str) -> dict[str, dict[str, str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > 64:
        raise InvalidInput(f"{what} must be an object of name -> labels")
    out: dict[str, dict[str, str]] = {}
    for name, labels in raw.items():
        resource_name(name, what[:-1])
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidInput(f"{what}: the labels of {name} must be an object of strings")
        out[name] = dict(labels)
    return out


class Api:
    def __init__(
        self,
        apps: AppsService,
        status: Status,
        default_mode: Mode,
        policy: Policy | None = None,
        identify: Callable[[web.Request], Caller] = peer,
        settings: ApiSettings = ApiSettings(),  # noqa: B008 (frozen: one shared default)
        logs: AppLogs | None = None,
    ) -> None:
        self.apps = apps
        self.status = status
        self.default_mode = default_mode
        self.policy = policy or Policy()
        self.identify = identify  # tests inject a caller; the daemon asks the kernel
        app = web.Application(middlewares=[_errors, self._caller],
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

    def _spec(self, body: object) -> AppSpec:
        return AppSpec.from_json(body, self.default_mode)

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

    def _rules(self, request: web.Request) -> Policy | None:
        """The caller's policy; None for root, who may ask for anything."""
        caller = request.get(CALLER)
        return None if caller is not None and caller.root else self.policy

    def _judge(self, request: web.Request, *apps: Mapping[str, Any]) -> None:
        """Refuse (Forbidden) what the caller may not ask for; each app is judged as it would
        be after the change, and against what it runs now (a count above the cap stays)."""
        rules = self._rules(request)
        if rules is not None:
            for app in apps:
                rec = self.apps.record(app["name"]) if isinstance(app.get("name"), str) \
                    else None
                rules.check_app(app, rec.spec.replicas if rec is not None else 0)

    def _limits(self, request: web.Request) -> Limits | None:
        """The caller's caps on top of the daemon's (which bind root too)."""
        rules = self._rules(request)
        if rules is None:
            return None
        return Limits(apps=(Cap(rules.max_apps, rules.rule("max_apps"), "policy"),))

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
        body = await read_json(request)
        spec = self._spec(body)
        self._judge(request, body)
        await self.apps.create(spec, limits=self._limits(request))
        return web.json_response({"app": spec.to_json()}, status=201)

    async def put_app(self, request: web.Request) -> web.Response:
        """Create the app, or change it: a new template rolls out, a new count scales."""
        name = _name(request)
        body = await read_json(request)
        if isinstance(body, dict):
            if body.get("name", name) != name:
                raise InvalidInput("the name in the body differs from the one in the path")
            body = {**body, "name": name}
        spec = self._spec(body)
        self._judge(request, body)
        outcome = await self.apps.apply([spec], limits=self._limits(request))
        what = outcome[name]
        return web.json_response({"app": spec.to_json(), "result": what},
                                 status=201 if what == "created" else 200)

    async def apply(self, request: web.Request) -> web.Response:
        """Several apps at once, all or nothing; `networks` and `volumes` (name -> labels)
        are created first when missing (what a compose file declares)."""
        body = await read_json(request)
        if not isinstance(body, dict) or not set(body) <= {"apps", "networks", "volumes"} or (
            not isinstance(body.get("apps"), list) or not body["apps"]
        ):
            raise InvalidInput('body must be {"apps": [app, ...]} (and optionally "networks" '
                               'and "volumes": {name: {label: value}})')
        specs = [self._spec(item) for item in body["apps"]]
        resources = Resources(_resources(body.get("networks"), "networks"),
                              _resources(body.get("volumes"), "volumes"))
        self._judge(request, *body["apps"])
        rules = self._rules(request)
        if rules is not None:
            rules.check_resources(resources.networks)
        outcome = await self.apps.apply(specs, resources=resources,
                                        limits=self._limits(request))
        return web.json_response({"result": outcome})

    async def update_app(self, request: web.Request) -> web.Response:
        """Change some fields of an app: any field of the spec (replaced), `env_add` (merged
        into env), `env_rm` (keys removed from env), `unset` (options back to the image's or
        engine's default), and `canary` (percent held for the new revision until
        `rollout resume`)."""
        name = _name(request)
        body = await read_json(request)
        if not isinstance(body, dict) or not body:
            raise InvalidInput("body must be an object of the fields to change")
        if "name" in body and body["name"] != name:
            raise InvalidInput("an app cannot be renamed")
        canary = _canary(body.get("canary"))
        current = self.apps.spec(name).to_json()
        merged = {**current, **{k: v for k, v in body.items()
                                if k not in ("env_add", "env_rm", "canary", "unset")}}
        unset = body.get("unset", [])
        if not isinstance(unset, list) or not all(
            isinstance(k, str) and k in OPTION_FIELDS for k in unset
        ):
            raise InvalidInput(f"unset must be a list of options ({', '.join(OPTION_FIELDS)})")
        both = sorted(set(unset) & set(body))
        if both:
            raise InvalidInput(f"{both[0]} is both given and unset")
        for k in unset:
            merged.pop(k, None)
        env = dict(merged.get("env") or {}) if isinstance(merged.get("env"), dict) else {}
        add = body.get("env_add", {})
        if isinstance(add, list):
            for item in add:
                env.update(parse_env(item))
        elif isinstance(add, dict):
            env.update(add)
        else:
            raise InvalidInput("env_add must be a list of KEY=VALUE or an object")
        rm = body.get("env_rm", [])
        if not isinstance(rm, list) or not all(isinstance(k, str) for k in rm):
            raise InvalidInput("env_rm must be a list of keys")
        for k in rm:
            env.pop(k, None)
        if "env" in body or "env_add" in body or "env_rm" in body:
            merged["env"] = env
        spec = self._spec(merged)
        if canary is not None and spec.spec_hash() == self.apps.spec(name).spec_hash():
            raise InvalidInput("--canary needs a change of the replica template (image, env, "
                               "command, ...): there is nothing new to send traffic to")
        # The whole app as it would be, not only the fields sent: an app beyond the policy
        # (root's port 80) is root's to change, though members may still scale and remove it.
        self._judge(request, merged)
        outcome = await self.apps.apply([spec], canary=canary, limits=self._limits(request))
        return web.json_response({"app": spec.to_json(), "result": outcome[name]})

    async def scale_app(self, request: web.Request) -> web.Response:
        name = _name(request)
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) != {"replicas"}:
            raise InvalidInput('body must be {"replicas": N}')
        replicas = validate_replicas(body["replicas"])
        rules = self._rules(request)
        if rules is not None:
            rules.check_replicas(replicas, self.apps.spec(name).replicas)
        spec = await self.apps.scale(name, replicas, limits=self._limits(request))
        return web.json_response({"app": spec.to_json()})

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

    async def rollout_action(self, request: web.Request) -> web.Response:
        name = _name(request)
        action = request.match_info["action"]
        body = await read_json(request) if request.can_read_body else None
        if action == "pause":
            ro = await self.apps.rollout_pause(name)
        elif action == "resume":
            ro = await self.apps.rollout_resume(name)
        elif action == "undo":
            to = body.get("revision") if isinstance(body, dict) else None
            if to is not None and (isinstance(to, bool) or not isinstance(to, int)):
                raise InvalidInput(f"revision must be a whole number, not {to!r}")
            # The revision gone back to is judged like an update: it may be one root made.
            number, target = self.apps.undo_target(name, to)
            self._judge(request, target.to_json())
            ro = await self.apps.rollout_undo(name, number)
        else:
            raise InvalidInput(f"unknown rollout action {action!r}: use pause, resume or undo")
        return web.json_response({"rollout": ro.to_json()})
