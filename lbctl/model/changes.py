"""Typed changes to apps: one type per mutation the API offers, validated when it is parsed,
and applied (by lbctl.controller.apps, under its commit lock) to the app as it is when the
change is committed, not as it was when the request arrived.

Two kinds. `Create` and `Replace` carry the whole app: the result is their spec, whatever the
app was. `Update` and `Scale` carry only what the user named (a delta), so a delta whose app
changed while it was being judged is simply applied again to the app as it is now: two racing
deltas both land, in commit order, exactly as if they had been sent one after the other.
Where a delta does not carry over (the merged app is no longer valid, a canary has nothing
left to send traffic to) the controller refuses it with Conflict. `Pause`, `Resume` and `Undo`
act on the app's rollout and are decided under the lock alone.

Nothing here does I/O or knows HTTP: the API parses a body into one of these and hands it
over, and the CLI checks what it sends with the same parsers (`lbctl update` validates its
options alone, without inventing an app around them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from lbctl.model.docker_syntax import resource_name
from lbctl.model.errors import Conflict, Forbidden, InvalidInput, NotFound
from lbctl.model.hold import Hold, parse_max
from lbctl.model.names import OWN_NETWORK, validate_replicas
from lbctl.model.option_values import check_own_labels
from lbctl.model.options import FIELDS as OPTION_FIELDS
from lbctl.model.options import RunOptions
from lbctl.model.readiness import ReadinessProbe
from lbctl.model.rollout import Rollout, UpdatePolicy
from lbctl.model.spec import (
    AppSpec,
    Mode,
    check_no_nul,
    validate_command,
    validate_env,
    validate_image,
    validate_release,
)

MAX_RESOURCES = 64  # networks or volumes one apply may declare
# Network names no request may create: lbctl's own (a `lbctl` network made by a caller would
# be taken for it, and root's IPv6 apps placed on it), and the engine's predefined ones.
RESERVED_NETWORKS = {OWN_NETWORK: "lbctl's own network's",
                     "bridge": "the engine's default network's", "host": "the host network's",
                     "none": "the engine's no-network mode's",
                     "podman": "Podman's default network's"}


def _no_app(name: str) -> NotFound:
    return NotFound(f"no app named {name}")


# ---- changes of the spec -----------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """`POST /apps`: a new app; an app of that name must not exist (Conflict: two racing
    creates of one name give one app and a 409)."""

    spec: AppSpec
    # Admission (image, ports, networks: the engine's answers) judges the result.
    admitted: ClassVar[bool] = True
    canary: ClassVar[int | None] = None

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def parse(cls, body: object, default_mode: Mode) -> Create:
        return cls(AppSpec.from_json(body, default_mode))

    def target(self, current: AppSpec | None) -> AppSpec:
        if current is not None:
            raise Conflict(f"app {self.name} already exists: change it with `lbctl update`, "
                           "`lbctl apply` or `lbctl scale`")
        return self.spec


@dataclass(frozen=True)
class Replace:
    """`PUT /apps/NAME` and each app of `POST /apply` (`lbctl run`, `lbctl apply -f`): the app
    is this spec, created when missing. Declarative: the last one committed wins whole."""

    spec: AppSpec
    admitted: ClassVar[bool] = True
    canary: ClassVar[int | None] = None

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def parse(cls, body: object, default_mode: Mode, name: str | None = None) -> Replace:
        """`name`: the one in the path, which the body may repeat but not contradict."""
        if name is not None and isinstance(body, dict):
            if body.get("name", name) != name:
                raise InvalidInput("the name in the body differs from the one in the path")
            body = {**body, "name": name}
        return cls(AppSpec.from_json(body, default_mode))

    def target(self, current: AppSpec | None) -> AppSpec:
        if self.spec.activation is None and current is not None:
            # A spec that does not say (a TOML file, a `run` without --activation) keeps the
            # app's socket activation: the path is the app's for good (controller.apps).
            return replace(self.spec, activation=current.activation)
        return self.spec


# What an update body may hold besides docker run's options (named like the long flag).
_UPDATE_KEYS = frozenset({"name", "image", "env", "env_add", "env_rm", "command", "replicas",
                          "update", "readiness", "unset", "canary", "release"})


@dataclass(frozen=True)
class Update:
    """`POST /apps/NAME/update` (`lbctl update`): only what the user named changes.

    `env` replaces the environment, `env_add` then adds to it and `env_rm` removes keys;
    `options` replace the app's values of those options (a list option given replaces the
    whole list), `unset` resets options to the image's or engine's default; `policy` sets the
    named fields of the update policy and `readiness` those of the readiness probe (neither
    rolls the app); `canary` holds that percentage of new connections for the new revision
    until `rollout resume`; `release` sets the release command (None: not named; "" or []:
    remove it)."""

    name: str
    image: str | None = None
    env: Mapping[str, str] | None = None
    env_add: Mapping[str, str] = field(default_factory=dict)
    env_rm: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None
    replicas: int | None = None
    policy: Mapping[str, Any] = field(default_factory=dict)
    readiness: Mapping[str, Any] = field(default_factory=dict)  # fields of the probe, as JSON
    options: Mapping[str, Any] = field(default_factory=dict)  # option -> validated JSON value
    unset: frozenset[str] = frozenset()
    canary: int | None = None
    release: str | tuple[str, ...] | None = None
    admitted: ClassVar[bool] = True

    @classmethod
    def parse(cls, name: str, body: object) -> Update:
        if not isinstance(body, dict) or not body:
            raise InvalidInput("body must be an object of the fields to change")
        check_no_nul(body)
        if "name" in body and body["name"] != name:
            raise InvalidInput("an app cannot be renamed")
        if "env-file" in body:
            raise InvalidInput("env-file is read by the command line (`lbctl update "
                               "--env-file`): send its variables as env_add")
        if "publish" in body or "mode" in body:
            raise InvalidInput("publish and mode cannot be updated (they change the data "
                               "plane): `lbctl rm` the app and run it again")
        if "activation" in body:
            raise InvalidInput("activation cannot be updated (it changes the data plane): "
                               "`lbctl rm` the app and run it again")
        unknown = set(body) - _UPDATE_KEYS - set(OPTION_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        unset = body.get("unset", [])
        if not isinstance(unset, list) or not all(
            isinstance(k, str) and k in OPTION_FIELDS for k in unset
        ):
            raise InvalidInput(f"unset must be a list of options ({', '.join(OPTION_FIELDS)})")
        given = [k for k in OPTION_FIELDS if k in body]
        both = sorted(set(unset) & set(given))
        if both:
            raise InvalidInput(f"{both[0]} is both given and unset")
        # The options alone, through the model's own validation (each value, and the given
        # ones together: two of them mounting one target is refused here already).
        values = {k: body[k] for k in given if body[k] is not None}
        options = RunOptions.from_json(values).to_json()
        # null, or a value that is the default (`read-only: false`, `volume: []`), resets it.
        reset = {k for k in given if k not in options}
        env_rm = body.get("env_rm", [])
        if not isinstance(env_rm, list) or not all(isinstance(k, str) for k in env_rm):
            raise InvalidInput("env_rm must be a list of keys")
        if "env_add" in body and not isinstance(body["env_add"], list | dict):
            raise InvalidInput("env_add must be a list of KEY=VALUE or an object")
        policy = body.get("update")
        if policy is not None and not isinstance(policy, dict):
            raise InvalidInput("update must be an object (parallelism, delay, ...)")
        full = UpdatePolicy.from_json(policy).to_json()  # each given field checked
        return cls(
            name=name,
            image=validate_image(body["image"]) if "image" in body else None,
            env=validate_env(body["env"]) if "env" in body else None,
            env_add=validate_env(body.get("env_add", {})),
            env_rm=tuple(env_rm),
            command=validate_command(body["command"]) if "command" in body else None,
            replicas=validate_replicas(body["replicas"]) if "replicas" in body else None,
            policy={k: full[k] for k in policy or {}},
            readiness=_readiness_delta(body.get("readiness")),
            options=options,
            unset=frozenset(unset) | reset,
            canary=canary(body.get("canary")),
            release=_release_change(body),
        )

    def target(self, current: AppSpec | None) -> AppSpec:
        if current is None:
            raise _no_app(self.name)
        data = current.to_json()
        for key in self.unset:
            data.pop(key, None)
        data.update(self.options)
        if self.image is not None:
            data["image"] = self.image
        env = dict(current.env if self.env is None else self.env)
        env.update(self.env_add)
        for key in self.env_rm:
            env.pop(key, None)
        data["env"] = env
        if self.command is not None:
            data["command"] = list(self.command)
        if self.replicas is not None:
            data["replicas"] = self.replicas
        data["update"] = {**data["update"], **self.policy}
        if self.readiness:
            data["readiness"] = {**current.readiness.to_json(), **self.readiness}
        if self.release is not None:
            data["release"] = (self.release if isinstance(self.release, str)
                               else list(self.release)) or None
        # The whole app, checked as one: a delta valid alone may not be beside what the app
        # has (a volume on the target of its tmpfs, --dns beside --network host).
        spec = AppSpec.from_json(data, current.mode)
        if self.canary is not None and spec.spec_hash() == current.spec_hash():
            raise InvalidInput("--canary needs a change of the replica template (image, env, "
                               "command, ...): there is nothing new to send traffic to")
        return spec


@dataclass(frozen=True)
class Scale:
    """`POST /apps/NAME/scale` (`lbctl scale`): the count alone."""

    name: str
    replicas: int
    # A count is no engine question: the caps, checked under the commit lock, are its limit.
    admitted: ClassVar[bool] = False
    canary: ClassVar[int | None] = None

    @classmethod
    def parse(cls, name: str, body: object) -> Scale:
        if not isinstance(body, dict) or set(body) != {"replicas"}:
            raise InvalidInput('body must be {"replicas": N}')
        return cls(name, validate_replicas(body["replicas"]))

    def target(self, current: AppSpec | None) -> AppSpec:
        if current is None:
            raise _no_app(self.name)
        return current.with_replicas(self.replicas)


SpecChange = Create | Replace | Update | Scale


@dataclass(frozen=True)
class Apply:
    """`POST /apply` (`lbctl apply -f`): several apps, all or nothing, and the networks and
    volumes (name -> labels) a compose file declares, created first when missing."""

    apps: tuple[Replace, ...]
    networks: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    volumes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: object, default_mode: Mode) -> Apply:
        if not isinstance(body, dict) or not set(body) <= {"apps", "networks", "volumes"} or (
            not isinstance(body.get("apps"), list) or not body["apps"]
        ):
            raise InvalidInput('body must be {"apps": [app, ...]} (and optionally "networks" '
                               'and "volumes": {name: {label: value}})')
        check_no_nul(body)
        apps = tuple(Replace.parse(item, default_mode) for item in body["apps"])
        return cls(apps, _resources(body.get("networks"), "networks"),
                   _resources(body.get("volumes"), "volumes"))


def _readiness_delta(raw: object) -> dict[str, Any]:
    """The probe fields an update names, each checked (`path: null`: back to TCP)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("readiness must be an object (path, interval, ...)")
    full = ReadinessProbe.from_json(raw).to_json()
    return {k: full[k] for k in raw}


def _release_change(body: dict[str, Any]) -> str | tuple[str, ...] | None:
    """The release command an update sets: as given (checked), "" to remove it; None when the
    body does not name it."""
    if "release" not in body:
        return None
    given = validate_release(body["release"])
    return "" if given is None else given


def canary(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 99:
        raise InvalidInput(f"canary must be a percentage from 1 to 99, not {value!r}")
    return value


def _resources(raw: object, what: str) -> dict[str, dict[str, str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_RESOURCES:
        raise InvalidInput(f"{what} must be an object of name -> labels")
    out: dict[str, dict[str, str]] = {}
    for name, labels in raw.items():
        resource_name(name, what[:-1])
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidInput(f"{what}: the labels of {name} must be an object of strings")
        check_own_labels(labels, f"{what[:-1]} {name}: label")
        if what == "networks" and name in RESERVED_NETWORKS:
            raise Forbidden(f"network {name}: the name is {RESERVED_NETWORKS[name]}, never "
                            "created through lbctl's API")
        out[name] = dict(labels)
    return out


# ---- changes of the rollout --------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """`POST /apps/NAME/rollout/pause`: hold the rollout in progress where it is."""

    name: str


@dataclass(frozen=True)
class Resume:
    """`POST /apps/NAME/rollout/resume`: go on with a paused or failed rollout (or roll a held
    canary out to every replica)."""

    name: str


@dataclass(frozen=True)
class Undo:
    """`POST /apps/NAME/rollout/undo`: back to revision `to` (None: the one before the
    current, decided when it is committed)."""

    name: str
    to: int | None = None


RolloutChange = Pause | Resume | Undo


# ---- changes of the traffic hold ---------------------------------------------------------


@dataclass(frozen=True)
class HoldTraffic:
    """`POST /apps/NAME/pause` (`lbctl pause NAME [--max S]`): hold the app's new connections
    for at most `seconds`, from when it is committed (a paused app's hold gets the new
    deadline)."""

    name: str
    seconds: float

    @classmethod
    def parse(cls, name: str, body: object) -> HoldTraffic:
        if body is None:
            body = {}
        if not isinstance(body, dict) or not set(body) <= {"max"}:
            raise InvalidInput('body must be {"max": SECONDS} (or empty: the default)')
        return cls(name, parse_max(body.get("max")))


@dataclass(frozen=True)
class ResumeTraffic:
    """`POST /apps/NAME/resume` (`lbctl resume NAME`): end the hold; what it held is served."""

    name: str

    @classmethod
    def parse(cls, name: str, body: object) -> ResumeTraffic:
        if body not in (None, {}):
            raise InvalidInput("resume takes no body")
        return cls(name)


HoldChange = HoldTraffic | ResumeTraffic


def parse_rollout(name: str, action: str, body: object) -> RolloutChange:
    if action == "pause":
        return Pause(name)
    if action == "resume":
        return Resume(name)
    if action == "undo":
        to = body.get("revision") if isinstance(body, dict) else None
        if to is not None and (isinstance(to, bool) or not isinstance(to, int)):
            raise InvalidInput(f"revision must be a whole number, not {to!r}")
        return Undo(name, to)
    raise InvalidInput(f"unknown rollout action {action!r}: use pause, resume or undo")


# ---- what a change answers -----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one change made of one app: `result` (created, rolling: a new revision,
    updated: the same template, unchanged, or the rollout's new state), the `revision` the
    app is on now and the `generation` of its desired state (bumped by every change), so
    that a client follows exactly what it made without asking again."""

    name: str
    result: str
    revision: int
    generation: int
    spec: AppSpec
    rollout: Rollout | None = None
    hold: Hold | None = None  # the app's traffic hold after the change (None: not paused)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"app": self.spec.to_json(), "result": self.result,
                               "revision": self.revision, "generation": self.generation}
        if self.rollout is not None:
            out["rollout"] = self.rollout.to_json()
        if self.hold is not None:
            out["hold"] = self.hold.to_json()
        return out

