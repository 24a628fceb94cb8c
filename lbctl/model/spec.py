"""An app as the user wants it: what `lbctl run`, `[[app]]` tables and the API carry, validated
once here so that nothing invalid reaches the engine, a chain name or the state file."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from lbctl.model.errors import InvalidInput
from lbctl.model.names import validate_name, validate_replicas
from lbctl.model.options import FIELDS as OPTION_FIELDS
from lbctl.model.options import RunOptions
from lbctl.model.publish import Publish, parse_publishes
from lbctl.model.readiness import ReadinessProbe
from lbctl.model.update_policy import UpdatePolicy

_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*\Z")


_KNOWN = frozenset({"name", "image", "publish", "replicas", "mode", "env", "command", "update",
                    "activation", "readiness", "release", *OPTION_FIELDS})


class Mode(StrEnum):
    IPTABLES = "iptables"
    EBPF = "ebpf"


class DataPath(StrEnum):
    """How a new connection reaches an app's replicas (`status`'s `path`)."""

    # ebpf mode's default: lbctl's DNAT to the sandbox's address, the program steering the
    # replicas that share its network namespace.
    SANDBOX = "sandbox"
    # `--network host`: the replicas' own listeners in the host's namespace, no DNAT.
    HOST = "host"
    # `--activation`: listeners lbctl makes in the host's namespace and hands to replicas that
    # keep network namespaces of their own (lbctl.dataplane.activation), no DNAT.
    ACTIVATION = "activation"
    # iptables mode: a statistic DNAT to each replica's own address.
    DNAT = "dnat"


@dataclass(frozen=True)
class AppSpec:
    """An app as the user asked for it."""

    name: str
    image: str
    publish: Publish
    replicas: int = 1
    mode: Mode = Mode.IPTABLES
    env: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] = ()
    # How a changed template rolls out; not part of the template (changing it alone restarts
    # nothing).
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    # docker run's options (volumes, networks, limits, health check, ...): part of the
    # template, so changing one rolls the app like a new image.
    options: RunOptions = field(default_factory=RunOptions)
    # Further host addresses after `publish` (another family, another address): same
    # container port and protocol, checked by model.publish.validate_publishes.
    extra_publishes: tuple[Publish, ...] = ()
    # Socket activation (ebpf mode): True, False, or None where the request left it to the
    # image (its model.activation.LABEL_LISTEN_FDS, read at admission, which stores the
    # answer; a spec stored before this field existed has None, the sandbox path). Not part
    # of the template (nor of its hash): it decides the data plane, like `mode`, so a change
    # is refused rather than rolled (lbctl.controller.apps).
    activation: bool | None = None
    # How lbctl asks each replica whether it answers (lbctl.model.readiness); not part of the
    # template either: replicas are not created from it, so changing it restarts nothing.
    readiness: ReadinessProbe = field(default_factory=ReadinessProbe)
    # The release command (`--release`): run once in a one-off container of each new
    # revision before its first replica starts (controller.planner, "release"). Not part of
    # the template: no replica runs it, so changing it alone rolls nothing, and it is the
    # command of the revision a rollout goes to. As the user wrote it: a string (split like
    # a shell would, as compose's `command:`) or a list; None: no release step.
    release: str | tuple[str, ...] | None = None

    @property
    def publishes(self) -> tuple[Publish, ...]:
        """Every host address the app answers on, `publish` first."""
        return (self.publish, *self.extra_publishes)

    @property
    def wants_ipv6(self) -> bool:
        """Some publish is IPv6: replicas need IPv6 addresses (see controller.template),
        unless lbctl hands them listeners made in the host's namespace."""
        return any(p.family == 6 for p in self.publishes)

    @property
    def activated(self) -> bool:
        """Socket activation: ebpf mode with listeners lbctl makes in the host's namespace and
        hands to each replica (no sandbox, no DNAT)."""
        return self.activation is True

    @property
    def path(self) -> DataPath:
        if self.mode is Mode.IPTABLES:
            return DataPath.DNAT
        if self.host_network:
            return DataPath.HOST
        return DataPath.ACTIVATION if self.activated else DataPath.SANDBOX

    @property
    def host_listeners(self) -> bool:
        """The replicas' listeners live in the host's namespace (`--network host` or socket
        activation): no DNAT, no sandbox, no placeholder on the port (the listeners hold it),
        and the program steers the host's reuseport group on HOST_PORT."""
        return self.path in (DataPath.HOST, DataPath.ACTIVATION)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            # One publish stays a string, as it always was; several are a list.
            "publish": (str(self.publish) if not self.extra_publishes
                        else [str(p) for p in self.publishes]),
            "replicas": self.replicas,
            "mode": str(self.mode),
            "env": dict(self.env),
            "command": list(self.command),
            "update": self.update.to_json(),
            **({"activation": self.activation} if self.activation is not None else {}),
            # Only when set: an app without a probe of its own keeps the JSON (and the state
            # file) an lbctl without probes reads.
            **({"readiness": self.readiness.to_json()}
               if self.readiness != ReadinessProbe() else {}),
            # Only when set: an app without one keeps the JSON (and state file) it had.
            **({"release": _release_json(self.release)} if self.release is not None else {}),
            **self.options.to_json(),
        }

    def release_argv(self) -> tuple[str, ...]:
        """The release command as the engine takes it (the container's command: the image's
        entrypoint, or --entrypoint, runs it as it runs a replica's command)."""
        if self.release is None:
            return ()
        return tuple(shlex.split(self.release)) if isinstance(self.release, str) \
            else self.release

    def template_json(self) -> dict[str, Any]:
        """What every replica is created from. Two specs with the same template run the same
        containers; any change to it is a new revision that replicas roll to."""
        return {"image": self.image, "env": dict(sorted(self.env.items())),
                "command": list(self.command), **self.options.to_json()}

    def spec_hash(self) -> str:
        """Short, stable hash of the template: the label that tells a replica's revision."""
        doc = json.dumps(self.template_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()[:12]

    @classmethod
    def from_json(cls, data: object, default_mode: Mode = Mode.IPTABLES) -> AppSpec:
        """Validate untrusted input (API body, TOML table, state file) into an AppSpec."""
        if not isinstance(data, dict):
            raise InvalidInput("an app must be a JSON object")
        check_no_nul(data)
        unknown = set(data) - _KNOWN
        if "env-file" in unknown:
            raise InvalidInput("env-file is read by the command line (`lbctl run --env-file`, "
                               "an env-file key in TOML): send its variables as env")
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        name = validate_name(data.get("name"))
        image = validate_image(data.get("image"))
        publishes = parse_publishes(data.get("publish"))
        replicas = validate_replicas(data.get("replicas", 1))
        mode_raw = data.get("mode")
        if mode_raw is None:  # absent or null: the daemon's default; 0, false, "" are errors
            mode_raw = str(default_mode)
        try:
            mode = Mode(mode_raw)
        except ValueError:
            raise InvalidInput(f"invalid mode {mode_raw!r}: use iptables or ebpf") from None
        env = validate_env(data.get("env", {}))
        command = validate_command(data.get("command", []))
        update = UpdatePolicy.from_json(data.get("update"))
        readiness = ReadinessProbe.from_json(data.get("readiness"))
        options = RunOptions.from_json(data)
        activation = data.get("activation")
        if activation is not None and not isinstance(activation, bool):
            raise InvalidInput(f"activation must be true or false, not {activation!r}")
        spec = cls(name, image, publishes[0], replicas, mode, env, command, update,
                   options, publishes[1:], activation, readiness,
                   release=validate_release(data.get("release")))
        check_host_network(spec)
        check_activation(spec)
        if readiness.path is not None and spec.publish.proto != "tcp":
            raise InvalidInput("a readiness path needs a TCP publish (an HTTP probe): a UDP app "
                               "is ready when its replica runs and listens")
        return spec

    @property
    def host_network(self) -> bool:
        return self.options.host_network

    def with_replicas(self, replicas: int) -> AppSpec:
        return replace(self, replicas=replicas)


def check_host_network(spec: AppSpec) -> None:
    """`--network host` is ebpf mode's path without a sandbox: the replicas' own listeners in
    the host's namespace are the published port, so there is nothing to translate (no DNAT,
    no second port) and nothing of a sandbox's namespace to configure."""
    if not spec.host_network:
        return
    if spec.mode is not Mode.EBPF:
        raise InvalidInput("--network host needs mode ebpf: iptables mode sends traffic to "
                           "each replica's own address, which a host-network replica has not")
    for p in spec.publishes:
        if p.host_port != p.container_port:
            raise InvalidInput(f"--network host: publish {p} must use the same host and "
                               f"container port (the replicas listen on the host's "
                               f"{p.container_port} themselves)")
    for key in ("add-host", "dns"):
        if getattr(spec.options, OPTION_FIELDS[key]):
            raise InvalidInput(f"--network host: {key} cannot be set (the replicas use the "
                               "host's /etc/hosts and resolver)")


def check_activation(spec: AppSpec) -> None:
    """Socket activation is ebpf mode's (the program steers the host's reuseport group of the
    listeners lbctl makes), a path of its own beside `--network host`, and the listeners of
    all publishes share one port: the eBPF data plane keeps one port per app."""
    if not spec.activated:
        return
    if spec.mode is not Mode.EBPF:
        raise InvalidInput("--activation needs mode ebpf: lbctl's program steers the listeners "
                           "it hands to the replicas")
    if spec.host_network:
        raise InvalidInput("--activation and --network host are two paths: host-network "
                           "replicas bind the port themselves; give one of them")
    ports = sorted({p.host_port for p in spec.publishes})
    if len(ports) > 1:
        raise InvalidInput(f"--activation: every publish must use the same HOST_PORT (not "
                           f"{', '.join(map(str, ports))}): the replicas' listeners share it")


def check_no_nul(value: object, where: str = "") -> None:
    """No NUL anywhere in a request: every string of an app reaches C (argv, environ, the
    engine's Go, a label), where a NUL ends it; what runs would not be what was asked for."""
    if isinstance(value, str):
        if "\0" in value:
            raise InvalidInput(f"{where or 'a value'}: NUL characters are not allowed")
    elif isinstance(value, dict):
        for k, v in value.items():
            name = f"{where}.{k}" if where else str(k)
            check_no_nul(k, f"a key of {where or 'the body'}")
            check_no_nul(v, name[:80])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_no_nul(v, f"{where}[{i}]")


def validate_image(image: object) -> str:
    if not isinstance(image, str) or len(image) > 255 or not _IMAGE_RE.match(image):
        raise InvalidInput(f"invalid image {image!r}")
    return image


def validate_command(command: object) -> tuple[str, ...]:
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise InvalidInput("command must be a list of strings")
    return tuple(command)


def validate_release(v: object) -> str | tuple[str, ...] | None:
    """The release command: a string split like a shell would (compose's `command:`), or
    the exec form as a list; None, "" or []: none."""
    if v is None or v == "" or v == []:
        return None
    if isinstance(v, str):
        if len(v) > 4096:
            raise InvalidInput("release is longer than 4096 characters")
        try:
            words = shlex.split(v)
        except ValueError as e:
            raise InvalidInput(f"invalid release command {v!r}: {e}") from None
        if not words:
            raise InvalidInput("release must name a command")
        return v
    if (not isinstance(v, list) or not all(isinstance(w, str) for w in v) or not v[0]
            or len(v) > 256):
        raise InvalidInput("release must be a command (a string) or a list of strings")
    return tuple(v)


def _release_json(v: str | tuple[str, ...]) -> str | list[str]:
    return v if isinstance(v, str) else list(v)


def validate_env(raw: object) -> dict[str, str]:
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


_LOCAL = r"(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1?\]|::1)"


def shared_port_check(spec: AppSpec) -> str | None:
    """ebpf mode: a health check that asks the app's own port on a local address is answered
    by whichever replica the program picks (every replica listens on that one address and
    port in the sandbox's namespace), so a new replica may be judged healthy by its
    neighbours, or a healthy one unhealthy. One line saying so and what to do instead (lbctl's
    own probe reaches each replica through its slot), or None."""
    cmd = spec.options.health_cmd
    if spec.mode is not Mode.EBPF or cmd is None:
        return None
    text = cmd if isinstance(cmd, str) else " ".join(cmd)
    port = spec.publish.container_port
    if not re.search(rf"{_LOCAL}:{port}(?![0-9])", text):
        return None
    return (f"--health-cmd asks localhost:{port}, which in ebpf mode any replica may answer "
            "(they share the port): use --ready-path, lbctl's probe of each replica itself")
