"""A compose file as lbctl apps: `lbctl apply -f compose.yaml`.

Which services are apps: those with `x-lbctl` (publish, mode; what `lbctl export --format
compose` writes), and those with `ports:` and `deploy.replicas` (the combination docker-compose
answers with "port is already allocated"). Other services (a database, say) stay compose's:
they are listed as skipped, and run with `docker-compose up` beside lbctl's apps (`profiles:`
on an app's service, which lbctl ignores, keeps docker-compose from starting it too).

Every key of an app's service is read with Compose's meaning (interpolation, `.env`, short and
long volume syntax, relative paths from the project directory, project-prefixed volume and
network names, the project's `default` network) and turned into lbctl's spec fields (the
docker run names of lbctl.model.options). A key lbctl cannot honour is refused by name, never
dropped: the app would not be what the file says.

Volumes and networks the file declares are created by the daemon when missing, with the labels
docker-compose gives them, so that docker-compose takes them as its own and its services share
them with lbctl's apps. lbctl never removes either.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never

from lbctl.compose.interpolate import interpolate, parse_dotenv
from lbctl.model import LABEL_APP, InvalidInput, Publish
from lbctl.model.docker_syntax import HOST_NETWORK, parse_duration
from lbctl.model.option import Option, Shape
from lbctl.model.options import OPTIONS
from lbctl.model.publish import parse_publishes, validate_publishes

LBCTL_KEY = "x-lbctl"
_TOP_KEYS = {"version", "name", "services", "networks", "volumes"}
# A service's keys: the app's own, and the docker run options' (the option table's compose
# keys; `network_mode` is read with `networks`).
_SERVICE_KEYS = {
    "image", LBCTL_KEY, "ports", "deploy", "expose", "restart", "environment", "env_file",
    "command", "network_mode", "profiles", *(o.compose.key.split(".")[0] for o in OPTIONS),
}
# Keys inside an option's mapping (healthcheck: {interval: ...}): the table's.
_NESTED = [o.compose.key.partition(".") for o in OPTIONS if "." in o.compose.key]
_SUB_KEYS = {parent: {k for p, _, k in _NESTED if p == parent} for parent, _, _ in _NESTED}
# Keys compose has and lbctl cannot honour when they are set: why, in the refusal.
_REFUSED = {"healthcheck.disable": "not supported by lbctl (lbctl keeps the image's health "
                                   "check)"}
_LIMITS = {o.compose.limit for o in OPTIONS if o.compose.limit is not None}
_LBCTL_KEYS = {"app", "publish", "mode", "replicas", "update", "activation", "readiness",
               "release"}
_DEPLOY_KEYS = {"replicas", "resources", "update_config"}
_UPDATE_CONFIG = {"parallelism", "delay", "failure_action", "monitor", "order",
                  "max_failure_ratio"}
_DROPPED_ENV = ("LBCTL_APP", "LBCTL_REPLICA")  # lbctl sets them on every replica


@dataclass
class ComposeApps:
    """What a compose file asks of lbctl."""

    apps: list[dict[str, Any]] = field(default_factory=list)  # spec JSON, as the API takes it
    # name -> labels: created by the daemon when missing
    networks: dict[str, dict[str, str]] = field(default_factory=dict)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # services left to docker-compose
    project: str = ""


def is_compose(path: Path, text: str) -> bool:
    """A compose file by its extension, or by a top-level `services:` mapping."""
    if path.suffix in (".yml", ".yaml"):
        return True
    if path.suffix == ".toml":
        return False
    return re.search(r"^services\s*:", text, re.MULTILINE) is not None


def project_name(project_dir: Path, env: Mapping[str, str], declared: object = None) -> str:
    """Compose's project name: COMPOSE_PROJECT_NAME, else the file's top-level `name:`, else
    the directory's name, lower-cased, with what is not a letter, digit, - or _ dropped."""
    raw = env.get("COMPOSE_PROJECT_NAME") or (
        declared if isinstance(declared, str) and declared else project_dir.name)
    name = re.sub(r"[^-_a-z0-9]", "", raw.lower())
    if not name:
        raise InvalidInput(f"cannot make a project name of {raw!r}: set COMPOSE_PROJECT_NAME")
    return name


def read_compose(path: Path, environ: Mapping[str, str] | None = None) -> ComposeApps:
    """Read `path` (and the `.env` beside it) with the environment `environ`."""
    environ = dict(os.environ if environ is None else environ)
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    project_dir = path.resolve().parent
    dotenv_path = project_dir / ".env"
    dotenv: dict[str, str] = {}
    if dotenv_path.is_file():
        try:
            # Values in .env are interpolated from the shell's environment, then from the
            # file's earlier keys (compose-go's GetEnvFromFile).
            dotenv = parse_dotenv(dotenv_path.read_text(), environ)
        except InvalidInput as e:
            raise InvalidInput(f"{dotenv_path}: {e}") from None
    env = {**dotenv, **environ}  # the shell's environment wins, as in Compose
    # Here, not at the top: the daemon imports the CLI package that imports this module, and
    # has no use for PyYAML's 20 modules and C extension.
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidInput(f"{path} is not valid YAML: {_first_line(e)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise InvalidInput(f"{path}: a compose file needs a services: mapping")
    doc = interpolate(raw, env)
    project = project_name(project_dir, env, doc.get("name"))
    return Reader(path, project_dir, project, env).read(doc)


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


@dataclass(frozen=True)
class _Service:
    """The service an option is read from."""

    svc: dict[str, Any]
    where: str  # services.NAME
    app: str


class Reader:
    def __init__(self, path: Path, project_dir: Path, project: str,
                 env: Mapping[str, str]) -> None:
        self.path = path
        self.dir = project_dir
        self.project = project
        self.env = env
        self.out = ComposeApps(project=project)
        self.top_networks: dict[str, Any] = {}
        self.top_volumes: dict[str, Any] = {}

    def fail(self, where: str, message: str) -> InvalidInput:
        return InvalidInput(f"{self.path.name}: {where}: {message}")

    def read(self, doc: dict[str, Any]) -> ComposeApps:
        unknown = sorted(k for k in doc if k not in _TOP_KEYS and not str(k).startswith("x-"))
        if unknown:
            raise self.fail(unknown[0], "not supported by lbctl (it reads services, networks, "
                            "volumes)")
        self.top_networks = self._mapping(doc.get("networks") or {}, "networks")
        self.top_volumes = self._mapping(doc.get("volumes") or {}, "volumes")
        for name, svc in doc["services"].items():
            where = f"services.{name}"
            if not isinstance(svc, dict):
                raise self.fail(where, "must be a mapping")
            if not self._is_app(svc):
                self.out.skipped.append(str(name))
                continue
            self.out.apps.append(self._app(str(name), svc, where))
        if not self.out.apps:
            raise InvalidInput(
                f"{self.path.name}: no service is an lbctl app: give one x-lbctl: {{publish: "
                "...}} or ports: with deploy.replicas")
        return self.out

    def _mapping(self, v: Any, where: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(where, "must be a mapping")
        return v

    @staticmethod
    def _is_app(svc: dict[str, Any]) -> bool:
        deploy = svc.get("deploy")
        return LBCTL_KEY in svc or (
            bool(svc.get("ports")) and isinstance(deploy, dict) and "replicas" in deploy)

    # ---- one service -------------------------------------------------------------------------

    def _app(self, service: str, svc: dict[str, Any], where: str) -> dict[str, Any]:
        unknown = sorted(str(k) for k in svc if k not in _SERVICE_KEYS)
        if "depends_on" in unknown:
            raise self.fail(f"{where}.depends_on", "not supported by lbctl (it starts the app "
                            "itself): start what it needs first, `docker-compose up -d SERVICE`")
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}", "not supported by lbctl")
        x = self._mapping(svc.get(LBCTL_KEY) or {}, f"{where}.{LBCTL_KEY}")
        bad = sorted(set(x) - _LBCTL_KEYS)
        if bad:
            raise self.fail(f"{where}.{LBCTL_KEY}.{bad[0]}",
                            f"unknown (use {', '.join(sorted(_LBCTL_KEYS))})")
        name = x.get("app", service)
        spec: dict[str, Any] = {"name": name}
        if "image" not in svc:
            raise self.fail(where, "needs an image (lbctl does not build)")
        spec["image"] = self._str(svc["image"], f"{where}.image")
        spec["publish"] = self._publish(svc, x, where)
        deploy = self._mapping(svc.get("deploy") or {}, f"{where}.deploy")
        bad = sorted(set(deploy) - _DEPLOY_KEYS)
        if bad:
            raise self.fail(f"{where}.deploy.{bad[0]}", "not supported by lbctl")
        if "replicas" in x and "replicas" in deploy and x["replicas"] != deploy["replicas"]:
            raise self.fail(where, "x-lbctl.replicas and deploy.replicas differ")
        replicas = x.get("replicas", deploy.get("replicas", 1))
        spec["replicas"] = replicas
        if "mode" in x:
            spec["mode"] = x["mode"]
        if "activation" in x:
            if not isinstance(x["activation"], bool):
                raise self.fail(f"{where}.{LBCTL_KEY}.activation", "must be true or false")
            spec["activation"] = x["activation"]
        if x.get("release") is not None:
            # As compose's `command:`: a string (split like a shell would) or a list, whose
            # numbers are their text.
            rel = x["release"]
            spec["release"] = ([str(w) if isinstance(w, int | float) else w for w in rel]
                               if isinstance(rel, list) else rel)
        update = dict(self._mapping(x.get("update") or {}, f"{where}.x-lbctl.update"))
        update.update(self._update_config(deploy.get("update_config"), f"{where}.deploy"))
        if update:
            spec["update"] = update
        if x.get("readiness") is not None:
            ready = dict(self._mapping(x["readiness"], f"{where}.x-lbctl.readiness"))
            for key in ("interval", "timeout"):  # durations as compose writes them, or seconds
                if key in ready:
                    ready[key] = self._seconds(ready[key], f"{where}.x-lbctl.readiness.{key}")
            spec["readiness"] = ready
        if "restart" in svc and str(svc["restart"]) == "no":
            raise self.fail(f"{where}.restart", "lbctl always replaces a replica that exits; "
                            "remove restart: no")
        self._expose(svc.get("expose"), spec["publish"], where)
        env = self._env(svc, where)
        if env:
            spec["env"] = env
        if svc.get("command") is not None:
            spec["command"] = self._command(svc["command"], f"{where}.command")
        self._options(svc, spec, deploy, where, name)
        return spec

    def _publish(self, svc: dict[str, Any], x: dict[str, Any], where: str) -> str | list[str]:
        """The app's publishes: x-lbctl.publish (one, or a list), else `ports:`. Several
        share the container port (one app, several host addresses: IPv4 and IPv6, say)."""
        ports = svc.get("ports") or []
        if not isinstance(ports, list):
            raise self.fail(f"{where}.ports", "must be a list")
        given = x.get("publish")
        if given is not None:
            pubs = parse_publishes(given)
            for p in ports:
                q = self._port(p, f"{where}.ports")
                if not any((q.host_port, q.container_port, q.proto) == (
                        pub.host_port, pub.container_port, pub.proto) for pub in pubs):
                    raise self.fail(f"{where}.ports", f"{p!r} is not in x-lbctl.publish "
                                    f"{given!r}: lbctl publishes one container port per app")
        else:
            if not ports:
                raise self.fail(f"{where}.ports", "an lbctl app publishes a port: give ports: "
                                "or x-lbctl.publish")
            parsed = [self._port(p, f"{where}.ports") for p in ports]
            try:
                pubs = validate_publishes(parsed)
            except InvalidInput as e:
                raise self.fail(f"{where}.ports", str(e)) from None
        texts = [str(p) for p in pubs]
        return texts[0] if len(texts) == 1 else texts

    def _port(self, p: Any, where: str) -> Publish:
        """A compose port, with Compose's meaning: no host IP is every address (0.0.0.0)."""
        if isinstance(p, dict):
            bad = sorted(set(p) - {"target", "published", "protocol", "host_ip", "mode"})
            if bad:
                raise self.fail(f"{where}.{bad[0]}", "not supported by lbctl")
            if p.get("mode", "host") not in ("host", "ingress"):
                raise self.fail(f"{where}.mode", f"unknown mode {p.get('mode')!r}")
            if p.get("published") in (None, ""):
                raise self.fail(f"{where}.published", "name the host port (lbctl publishes "
                                "on a port you choose, not a random one)")
            host_ip = str(p.get("host_ip") or "0.0.0.0")
            if ":" in host_ip and not host_ip.startswith("["):
                host_ip = f"[{host_ip}]"  # an IPv6 address, as the short syntax writes it
            published = str(p["published"])
            if "-" in published:
                raise self.fail(where, f"{published!r}: port ranges are not supported by lbctl")
            text = f"{host_ip}:{published}:{p.get('target')}/{p.get('protocol') or 'tcp'}"
            return Publish.parse(text)
        if not isinstance(p, str):
            raise self.fail(where, f"{p!r}: quote ports in YAML (\"8080:80\"); a bare 22:22 is "
                            "a number to YAML 1.1")
        spec = p
        if spec.count(":") == 1:
            spec = "0.0.0.0:" + spec
        elif ":" not in spec.partition("/")[0]:
            raise self.fail(where, f"{p!r}: name the host port (HOST:CONTAINER)")
        if re.search(r"[0-9]-[0-9]", spec):
            raise self.fail(where, f"{p!r}: port ranges are not supported by lbctl")
        return Publish.parse(spec)

    def _expose(self, expose: Any, publish: str | list[str], where: str) -> None:
        if expose is None:
            return
        pub = parse_publishes(publish)[0]  # every publish has the same container port
        for e in expose if isinstance(expose, list) else [expose]:
            port, _, proto = str(e).partition("/")
            if port != str(pub.container_port) or (proto or "tcp") != pub.proto:
                raise self.fail(f"{where}.expose", f"{e!r}: lbctl apps expose only their "
                                f"published port ({pub.container_port}/{pub.proto})")

    def _update_config(self, v: Any, where: str) -> dict[str, Any]:
        if v is None:
            return {}
        u = self._mapping(v, f"{where}.update_config")
        bad = sorted(set(u) - _UPDATE_CONFIG)
        if bad:
            raise self.fail(f"{where}.update_config.{bad[0]}", "not supported by lbctl")
        out: dict[str, Any] = {}
        if "parallelism" in u:
            out["parallelism"] = u["parallelism"]
        for key in ("delay", "monitor"):
            if key in u:
                out[key] = self._seconds(u[key], f"{where}.update_config.{key}")
        if "failure_action" in u:
            if u["failure_action"] not in ("rollback", "pause"):
                raise self.fail(f"{where}.update_config.failure_action",
                                "lbctl does rollback or pause")
            out["failure_action"] = u["failure_action"]
        if "order" in u:
            out["order"] = u["order"]
        if u.get("max_failure_ratio", 0) not in (0, 0.0):
            raise self.fail(f"{where}.update_config.max_failure_ratio",
                            "lbctl stops a rollout at the first failure (use 0)")
        return out

    def _seconds(self, v: Any, where: str) -> float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        try:
            return parse_duration(v, where)
        except InvalidInput as e:
            raise self.fail(where, str(e)) from None

    # ---- environment ---------------------------------------------------------------------

    def _env(self, svc: dict[str, Any], where: str) -> dict[str, str]:
        """`env_file:` then `environment:` (which wins), as compose-go resolves them."""
        environment = self._environment(svc, where)
        # An env file's values are interpolated from the project's environment first, then
        # from the service's `environment:` (compose-go's WithServicesEnvironmentResolved).
        lookup = {**environment, **self.env}
        env: dict[str, str] = {}
        for f, required, fmt in self._env_files(svc.get("env_file"), f"{where}.env_file"):
            p = self._host_path(f)
            if not required and not os.path.exists(p):
                continue
            if fmt not in (None, ".env"):
                raise self.fail(f"{where}.env_file", f"unsupported env_file format {fmt!r}")
            try:
                env.update(parse_dotenv(Path(p).read_text(), {**lookup, **env}))
            except OSError as e:
                raise self.fail(f"{where}.env_file", f"cannot read {p}: {e.strerror}") from None
            except InvalidInput as e:
                raise self.fail(f"{where}.env_file", f"failed to read {p}: {e}") from None
        env.update(environment)
        for k in _DROPPED_ENV:
            env.pop(k, None)
        return env

    def _env_files(self, v: Any, where: str) -> list[tuple[str, bool, str | None]]:
        """A path, a list of paths, or a list of `{path, required, format}` items."""
        if v is None:
            return []
        out = []
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, dict):
                bad = sorted(set(item) - {"path", "required", "format"})
                if bad:
                    raise self.fail(f"{where}.{bad[0]}", "not supported by lbctl")
                required = item.get("required", True)
                if not isinstance(required, bool):
                    raise self.fail(f"{where}.required", "must be true or false")
                fmt = item.get("format")
                out.append((self._str(item.get("path"), f"{where}.path"), required,
                            None if fmt is None else str(fmt)))
            else:
                out.append((self._str(item, where), True, None))
        return out

    def _environment(self, svc: dict[str, Any], where: str) -> dict[str, str]:
        env: dict[str, str] = {}
        raw = svc.get("environment") or {}
        if isinstance(raw, list):
            items: list[tuple[str, Any]] = []
            for item in raw:
                k, eq, v = self._str(item, f"{where}.environment").partition("=")
                items.append((k, v if eq else None))
        elif isinstance(raw, dict):
            items = list(raw.items())
        else:
            raise self.fail(f"{where}.environment", "must be a list or a mapping")
        for k, v in items:
            if v is None:  # `- KEY` or `KEY:`: from the shell, as in Compose
                if k in self.env:
                    env[str(k)] = self.env[k]
                continue
            if not isinstance(v, str | int | float):
                raise self.fail(f"{where}.environment.{k}", "must be a string")
            env[str(k)] = go_str(v)
        return env

    def _command(self, v: Any, where: str) -> list[str]:
        if isinstance(v, str):
            try:
                return shlex.split(v)
            except ValueError as e:
                raise self.fail(where, str(e)) from None
        return self._strs(v, where)

    # ---- docker run's options ------------------------------------------------------------------

    def _options(self, svc: dict[str, Any], spec: dict[str, Any], deploy: dict[str, Any],
                 where: str, app: str) -> None:
        """docker run's options, each read from its compose key (the option table's)."""
        for parent, known in _SUB_KEYS.items():
            sub = self._mapping(svc.get(parent) or {}, f"{where}.{parent}")
            for k in sorted(set(sub) - known):
                hint = _REFUSED.get(f"{parent}.{k}")
                if hint is None or sub[k]:
                    raise self.fail(f"{where}.{parent}.{k}", hint or "not supported by lbctl")
        limits = self._limits(deploy, f"{where}.deploy")
        service = _Service(svc, where, app)
        for o in OPTIONS:
            c = o.compose
            at = f"{where}.{c.key}"
            parent, _, key = c.key.rpartition(".")
            raw = (svc.get(parent) or {}).get(key) if parent else svc.get(key)
            if c.limit is not None and limits.get(c.limit) is not None:
                limit_at = f"{where}.deploy.resources.limits.{c.limit}"
                if raw is None:
                    raw, at = limits[c.limit], limit_at
                elif _norm(self._read(o, raw, at, service)) != _norm(
                        self._read(o, limits[c.limit], limit_at, service)):
                    raise self.fail(where, f"{c.key} and deploy.resources.limits.{c.limit} "
                                    "differ")
            if raw is None and c.shape is not Shape.NETWORKS:
                continue
            value = self._read(o, raw, at, service)
            if value is not None and value != [] and value != {}:
                spec[o.key] = value

    def _read(self, o: Option[Any], v: Any, where: str, service: _Service) -> Any:
        """Compose's value `v` of option `o` (at `where` in `service`), as the spec's JSON
        takes it; None: nothing."""
        match o.compose.shape:
            case Shape.AS_IS:
                return v
            case Shape.TEXT:
                return self._str(v, where)
            case Shape.TEXTS:
                return self._strs(v, where)
            case Shape.TEXT_OR_TEXTS:
                return self._list_or_one(v, where)
            case Shape.NUMBER:
                if isinstance(v, str):
                    try:
                        return float(v)
                    except ValueError:
                        raise self.fail(where, "must be a number") from None
                return v
            case Shape.PAIRS:
                return {str(k): str(x) for k, x in self._mapping(v, where).items()}
            case Shape.HOSTS:
                return self._extra_hosts(v, where)
            case Shape.ULIMITS:
                return self._ulimits(v, where)
            case Shape.COMMAND:
                return self._command(v, where)
            case Shape.SECONDS:
                return math.ceil(self._seconds(v, where))
            case Shape.HEALTH_TEST:
                return self._health_test(v, where)
            case Shape.SHORT_VOLUMES:
                return [self._short_volume(item, where) for item in self._volume_items(v, where)
                        if isinstance(item, str)]
            case Shape.LONG_VOLUMES:
                return [self._long_volume(item, where) for item in self._volume_items(v, where)
                        if isinstance(item, dict)]
            case Shape.NETWORKS:
                return self._network_mode(service.svc, service.where)
            case Shape.LABELS:
                labels = self._labels(v, where)
                if labels.get(LABEL_APP) == service.app:
                    del labels[LABEL_APP]  # what makes docker-compose's containers adopted
                return labels
            case _:
                assert_never(o.compose.shape)

    def _network_mode(self, svc: dict[str, Any], where: str) -> list[str] | None:
        mode = svc.get("network_mode")
        if mode is None:
            return self._networks(svc.get("networks"), f"{where}.networks")
        if mode not in ("bridge", "host"):
            raise self.fail(f"{where}.network_mode", f"{mode!r} is not supported by lbctl "
                            "(bridge, host, or networks:); to put docker-compose's "
                            "containers into an ebpf app's namespace, see `lbctl export`")
        if svc.get("networks") is not None:
            raise self.fail(where, "network_mode and networks together")
        return [HOST_NETWORK] if mode == HOST_NETWORK else None

    def _health_test(self, test: Any, where: str) -> str | list[str]:
        if isinstance(test, str):
            return test
        t = self._strs(test, where)
        if t[:1] == ["CMD"] and len(t) > 1:
            return t[1:]
        if t[:1] == ["CMD-SHELL"] and len(t) == 2:
            return t[1]
        raise self.fail(where, "use [CMD, ...], [CMD-SHELL, ...] or a string")

    def _extra_hosts(self, v: Any, where: str) -> list[str]:
        """compose-go's HostsList: `host=ip` or `host:ip` items (`=` looked for first), or a
        mapping of host to an address or a list; several addresses after a comma; brackets
        around an IPv6 address dropped. As docker's `host:ip`."""
        pairs: list[tuple[str, str]] = []
        if isinstance(v, dict):
            for host, ips in v.items():
                ips = [""] if ips is None else ips if isinstance(ips, list) else [ips]
                pairs += [(str(host), go_str(ip)) for ip in ips]
        else:
            for item in self._strs(v, where):
                sep = "=" if "=" in item else ":"
                host, found, ips_text = item.partition(sep)
                if not found:
                    raise self.fail(where, f"invalid additional host, missing IP: {item}")
                pairs += [(host, ip) for ip in ips_text.split(",")]
        out = []
        for host, ip in pairs:
            if not host or any(c in host for c in ":="):
                raise self.fail(where, f"bad host name {host!r}")
            if len(ip) > 2 and ip[0] == "[" and ip[-1] == "]":
                ip = ip[1:-1]
            out.append(f"{host}:{ip}")
        return out

    def _limits(self, deploy: dict[str, Any], where: str) -> dict[str, Any]:
        res = self._mapping(deploy.get("resources") or {}, f"{where}.resources")
        bad = sorted(set(res) - {"limits"})
        if bad:
            raise self.fail(f"{where}.resources.{bad[0]}", "not supported by lbctl")
        limits = self._mapping(res.get("limits") or {}, f"{where}.resources.limits")
        bad = sorted(set(limits) - _LIMITS)
        if bad:
            raise self.fail(f"{where}.resources.limits.{bad[0]}", "not supported by lbctl")
        return limits

    def _volume_items(self, v: Any, where: str) -> list[Any]:
        """`volumes:`, short syntax (docker -v strings) and long (docker --mount strings)."""
        items = self._list(v, where)
        for item in items:
            if not isinstance(item, str | dict):
                raise self.fail(where, f"{item!r} is neither a string nor a mapping")
        return items

    def _short_volume(self, text: str, where: str) -> str:
        parts = text.split(":")
        if len(parts) == 1:
            return text  # an anonymous volume
        source, rest = parts[0], parts[1:]
        source = self._host_path(source) if _is_path(source) else self._volume_name(source, where)
        return ":".join([source, *rest])

    def _long_volume(self, item: dict[str, Any], where: str) -> str:
        bad = sorted(set(item) - {"type", "source", "target", "read_only", "bind", "volume",
                                  "tmpfs"})
        if bad:
            raise self.fail(f"{where}.{bad[0]}", "not supported by lbctl")
        kind = item.get("type")
        if kind not in ("bind", "volume", "tmpfs"):
            raise self.fail(f"{where}.type", f"{kind!r}: use bind, volume or tmpfs")
        parts = [f"type={kind}"]
        source = item.get("source")
        if source is not None:
            src = self._str(source, f"{where}.source")
            if kind == "bind":
                src = self._host_path(src)
            elif kind == "volume":
                src = self._volume_name(src, where)
            parts.append(f"source={src}")
        parts.append(f"target={self._str(item.get('target'), f'{where}.target')}")
        if item.get("read_only"):
            parts.append("readonly")
        sub = {"bind": ({"propagation": "bind-propagation"}, "bind"),
               "volume": ({"nocopy": "volume-nocopy"}, "volume"),
               "tmpfs": ({"size": "tmpfs-size", "mode": "tmpfs-mode"}, "tmpfs")}
        for key, (names, kind_of) in sub.items():
            opts = item.get(key)
            if opts is None:
                continue
            if kind != kind_of:
                raise self.fail(f"{where}.{key}", f"is for type: {kind_of}")
            opts = self._mapping(opts, f"{where}.{key}")
            bad = sorted(set(opts) - set(names))
            if bad:
                raise self.fail(f"{where}.{key}.{bad[0]}", "not supported by lbctl")
            for k, v in opts.items():
                if isinstance(v, bool):
                    v = "true" if v else "false"
                elif k == "mode" and isinstance(v, int):
                    v = format(v, "o")
                parts.append(f"{names[k]}={v}")
        return ",".join(parts)

    def _volume_name(self, key: str, where: str) -> str:
        if key not in self.top_volumes:
            raise self.fail(where, f"named volume {key!r} is not declared under the top-level "
                            "volumes:")
        decl = self.top_volumes[key] or {}
        return self._resource(key, decl, "volumes", "volume", self.out.volumes)

    def _networks(self, v: Any, where: str) -> list[str]:
        if v is None:
            keys = ["default"]  # Compose puts every service on the project's default network
        elif isinstance(v, list):
            keys = self._strs(v, where)
        elif isinstance(v, dict):
            keys = []
            for k, conf in v.items():
                if conf:
                    bad = sorted(self._mapping(conf, f"{where}.{k}"))
                    raise self.fail(f"{where}.{k}.{bad[0]}", "not supported by lbctl (every "
                                    "replica answers to the app's name on its networks)")
                keys.append(str(k))
        else:
            raise self.fail(where, "must be a list or a mapping")
        names = []
        for key in keys:
            if key not in self.top_networks and key != "default":
                raise self.fail(where, f"network {key!r} is not declared under the top-level "
                                "networks:")
            decl = self.top_networks.get(key) or {}
            names.append(self._resource(key, decl, "networks", "network", self.out.networks))
        return names

    def _resource(self, key: str, decl: Any, section: str, kind: str,
                  created: dict[str, dict[str, str]]) -> str:
        """The engine's name of a declared volume or network; one to create is noted in
        `created` with docker-compose's labels."""
        where = f"{section}.{key}"
        d = self._mapping(decl, where)
        bad = sorted(set(d) - {"name", "external", "driver", "labels"})
        if bad:
            raise self.fail(f"{where}.{bad[0]}", "not supported by lbctl")
        if d.get("driver") not in (None, "local" if kind == "volume" else "bridge"):
            raise self.fail(f"{where}.driver", "lbctl creates only "
                            f"{'local volumes' if kind == 'volume' else 'bridge networks'}")
        external = d.get("external")
        if external:
            if isinstance(external, dict):
                return self._str(external.get("name", d.get("name", key)), where)
            return self._str(d.get("name", key), where)
        name = self._str(d.get("name", f"{self.project}_{key}"), where)
        labels = {"com.docker.compose.project": self.project,
                  f"com.docker.compose.{kind}": key}
        labels.update(self._labels(d.get("labels") or {}, f"{where}.labels"))
        created[name] = labels
        return name

    def _ulimits(self, v: Any, where: str) -> list[str]:
        out = []
        for name, lim in self._mapping(v, where).items():
            if isinstance(lim, dict):
                bad = sorted(set(lim) - {"soft", "hard"})
                if bad or "soft" not in lim or "hard" not in lim:
                    raise self.fail(f"{where}.{name}", "give soft and hard")
                out.append(f"{name}={lim['soft']}:{lim['hard']}")
            else:
                out.append(f"{name}={lim}")
        return out

    def _labels(self, v: Any, where: str) -> dict[str, str]:
        if isinstance(v, list):
            pairs = {}
            for item in self._strs(v, where):
                k, _, val = item.partition("=")
                pairs[k] = val
            return pairs
        return {str(k): "" if val is None else go_str(val)
                for k, val in self._mapping(v, where).items()}

    # ---- small things --------------------------------------------------------------------------

    def _host_path(self, p: str) -> str:
        """A path as Compose reads it: relative to the project directory, ~ the home."""
        path = Path(os.path.expanduser(p)) if p.startswith("~") else Path(p)
        if not path.is_absolute():
            path = self.dir / path
        return os.path.normpath(path)

    def _str(self, v: Any, where: str) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.fail(where, f"{v!r} must be a string")
        return str(v)

    def _list(self, v: Any, where: str) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(where, "must be a list")
        return v

    def _strs(self, v: Any, where: str) -> list[str]:
        return [self._str(x, where) for x in self._list(v, where)]

    def _list_or_one(self, v: Any, where: str) -> list[str]:
        return self._strs(v if isinstance(v, list) else [v], where)


def go_str(v: Any) -> str:
    """A YAML scalar as compose-go turns it into a string (Go's fmt.Sprint): `true`, not
    Python's `True`; `1` for 1.0, `1e+06` for 1000000.0."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isfinite(v) and v != 0:
        # Go's %v: the shortest digits (as Python's repr), in %e form when the exponent is
        # below -4 or at least 6 (strconv's 'g' with the shortest precision).
        mant, _, e = repr(abs(v)).partition("e")
        ip, _, fp = mant.partition(".")
        all_digits = (ip + fp).lstrip("0")
        dp = (len(ip.lstrip("0")) if ip.strip("0") else len(fp.lstrip("0")) - len(fp))
        dp += int(e or 0)
        digits = all_digits.rstrip("0")
        sign = "-" if v < 0 else ""
        x = dp - 1
        if x < -4 or x >= 6:
            m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
            return f"{sign}{m}e{'-' if x < 0 else '+'}{abs(x):02d}"
        return f"{sign}{abs(v):.{max(len(digits) - dp, 0)}f}"
    if isinstance(v, float):
        return "0" if v == 0 else str(v)
    return str(v)


def _is_path(source: str) -> bool:
    return source.startswith(("/", ".", "~"))


def _norm(v: Any) -> str:
    return str(v).lower().rstrip("b")

