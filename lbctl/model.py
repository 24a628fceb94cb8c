"""The vocabulary every layer shares: apps as the user wants them, containers as the engine
shows them, and the validation that keeps bad input from reaching the engine or a chain name.

Everything here is pure data: no I/O, so the planner and the renderers can be tested alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

LABEL_APP = "lbctl.app"
LABEL_MANAGED = "lbctl.managed"
LABEL_ROLE = "lbctl.role"
LABEL_INDEX = "lbctl.index"
ROLE_REPLICA = "replica"
ROLE_SANDBOX = "sandbox"

# Replica containers are named NAME-<index> and the sandbox NAME-sandbox; both must stay valid
# Docker names, and the app name also ends up in iptables chain names (28 chars at most), so
# the rule is Docker's container-name rule, shortened.
MAX_NAME_LEN = 20
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$")
MAX_REPLICAS = 64


class InvalidInput(ValueError):
    """Bad input from a user: reported as one line, exit code 2 / HTTP 400, nothing changed."""


class Mode(StrEnum):
    IPTABLES = "iptables"
    EBPF = "ebpf"


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput("app name must be a non-empty string")
    if len(name) > MAX_NAME_LEN:
        raise InvalidInput(f"app name {name!r} is longer than {MAX_NAME_LEN} characters")
    if not _NAME_RE.match(name):
        raise InvalidInput(
            f"invalid app name {name!r}: use lower-case letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def validate_replicas(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"replicas must be a whole number, not {value!r}")
    if value < 0 or value > MAX_REPLICAS:
        raise InvalidInput(f"replicas must be between 0 and {MAX_REPLICAS}, not {value}")
    return value


def parse_replicas(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise InvalidInput(f"replicas must be a whole number, not {text!r}")
    return validate_replicas(int(text))


@dataclass(frozen=True)
class Publish:
    """Where an app answers on the host, and where its replicas listen."""

    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"

    @classmethod
    def parse(cls, text: object) -> Publish:
        """Parse docker's `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]` (host IP defaults to
        127.0.0.1: publishing to every interface must be asked for, as 0.0.0.0)."""
        if not isinstance(text, str) or not text:
            raise InvalidInput(
                "publish must look like [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"
            )
        spec, slash, proto = text.partition("/")
        proto = proto if slash else "tcp"  # "8080:80/" names no protocol: refused below
        if proto not in ("tcp", "udp"):
            raise InvalidInput(f"invalid protocol {proto!r} in publish {text!r}: use tcp or udp")
        parts = spec.rsplit(":", 2)
        if len(parts) == 2:
            host_ip, host_port, container_port = "127.0.0.1", parts[0], parts[1]
        elif len(parts) == 3:
            host_ip, host_port, container_port = parts
        else:
            raise InvalidInput(
                f"invalid publish {text!r}: use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"
            )
        try:
            ip = ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise InvalidInput(f"invalid host IP {host_ip!r} in publish {text!r}") from None
        return cls(str(ip), _port(host_port, text), _port(container_port, text), proto)

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.container_port}/{self.proto}"

    def clashes_with(self, other: Publish) -> bool:
        if self.proto != other.proto or self.host_port != other.host_port:
            return False
        return "0.0.0.0" in (self.host_ip, other.host_ip) or self.host_ip == other.host_ip


def _port(text: str, whole: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise InvalidInput(f"invalid port {text!r} in publish {whole!r}: use 1-65535")
    return int(text)


@dataclass(frozen=True)
class AppSpec:
    """An app as the user asked for it: what `lbctl run` and `[[app]]` tables carry."""

    name: str
    image: str
    publish: Publish
    replicas: int = 1
    mode: Mode = Mode.IPTABLES
    env: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "publish": str(self.publish),
            "replicas": self.replicas,
            "mode": str(self.mode),
            "env": dict(self.env),
            "command": list(self.command),
        }

    @classmethod
    def from_json(cls, data: object, default_mode: Mode = Mode.IPTABLES) -> AppSpec:
        """Validate untrusted input (API body, TOML table, state file) into an AppSpec."""
        if not isinstance(data, dict):
            raise InvalidInput("an app must be a JSON object")
        known = {"name", "image", "publish", "replicas", "mode", "env", "command"}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        name = validate_name(data.get("name"))
        image = data.get("image")
        if not isinstance(image, str) or len(image) > 255 or not _IMAGE_RE.match(image):
            raise InvalidInput(f"invalid image {image!r}")
        publish = Publish.parse(data.get("publish"))
        replicas = validate_replicas(data.get("replicas", 1))
        mode_raw = data.get("mode")
        if mode_raw is None:  # absent or null: the daemon's default; 0, false, "" are errors
            mode_raw = str(default_mode)
        try:
            mode = Mode(mode_raw)
        except ValueError:
            raise InvalidInput(f"invalid mode {mode_raw!r}: use iptables or ebpf") from None
        env = _env(data.get("env", {}))
        command = data.get("command", [])
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise InvalidInput("command must be a list of strings")
        return cls(name, image, publish, replicas, mode, env, tuple(command))

    def with_replicas(self, replicas: int) -> AppSpec:
        return AppSpec(
            self.name, self.image, self.publish, replicas, self.mode, self.env, self.command
        )


def _env(raw: object) -> dict[str, str]:
    if isinstance(raw, list):  # ["K=V", ...] as on the command line
        pairs: dict[str, str] = {}
        for item in raw:
            pairs.update(parse_env(item))
        return pairs
    if not isinstance(raw, dict):
        raise InvalidInput("env must be an object of strings or a list of KEY=VALUE")
    for k, v in raw.items():
        if not isinstance(k, str) or not _ENV_KEY_RE.match(k) or not isinstance(v, str):
            raise InvalidInput(f"invalid env entry {k!r}")
    return dict(raw)


def parse_env(item: object) -> dict[str, str]:
    if not isinstance(item, str) or "=" not in item:
        raise InvalidInput(f"invalid env {item!r}: use KEY=VALUE")
    k, _, v = item.partition("=")
    if not _ENV_KEY_RE.match(k):
        raise InvalidInput(f"invalid env key {k!r}")
    return {k: v}


@dataclass(frozen=True)
class Container:
    """One container labelled `lbctl.app`, as the engine reports it (engine differences are
    smoothed over in lbctl.runtime before this is built)."""

    id: str
    name: str
    app: str
    role: str  # ROLE_REPLICA or ROLE_SANDBOX
    managed: bool  # created by lbctl (never remove one that is not)
    index: int | None  # replica index for managed replicas
    running: bool
    health: str | None  # "healthy", "unhealthy", "starting", or None when the image has none
    ip: str | None  # address on its network (the sandbox's for ebpf-mode replicas)
    pid: int | None  # init PID on the host, for socket discovery
    started_at: float | None  # epoch seconds
    paused: bool = False  # frozen by `docker pause`: alive, but answers nobody
    network_mode: str = ""  # "container:<id>" for replicas joined to a sandbox
    bridge: str | None = None  # host bridge interface its network lives on (docker0, br-...)


def replica_name(app: str, index: int) -> str:
    return f"{app}-{index}"


def sandbox_name(app: str) -> str:
    return f"{app}-sandbox"
