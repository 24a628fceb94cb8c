"""What the user typed, turned into API bodies and checked before the daemon is asked:
bad input is refused here with one line and exit 2, and nothing is sent."""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never

from lbctl.compose.interpolate import parse_docker_env_file
from lbctl.compose.reader import is_compose, read_compose
from lbctl.model import AppSpec, InvalidInput, Mode, parse_env, parse_replicas, validate_name
from lbctl.model.changes import Update
from lbctl.model.docker_syntax import absolute_bind
from lbctl.model.option import Arg
from lbctl.model.options import FIELDS as OPTION_FIELDS
from lbctl.model.options import OPTIONS
from lbctl.model.publish import parse_publishes
from lbctl.model.readiness import ReadinessProbe
from lbctl.model.update_policy import UpdatePolicy


@dataclass
class FileInput:
    """What `lbctl apply -f` sends: the apps, and what a compose file declares."""

    apps: list[dict[str, Any]]
    networks: dict[str, dict[str, str]] = field(default_factory=dict)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"apps": self.apps}
        if self.networks:
            body["networks"] = self.networks
        if self.volumes:
            body["volumes"] = self.volumes
        return body


def options_from_args(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """The docker run options given on the command line, as spec fields (relative bind
    sources are taken from `base`, the working directory, as docker run does)."""
    out: dict[str, Any] = {}
    for o in OPTIONS:
        v = getattr(args, o.attr, None)
        if v is None:
            continue
        conv = o.from_cli or (lambda text, _base: text)
        match o.arg:
            case Arg.SWITCH:
                out[o.key] = True
            case Arg.ONE:
                out[o.key] = conv(v, base)
            case Arg.MANY:
                out[o.key] = [conv(item, base) for item in v]
            case Arg.PAIRS:
                out[o.key] = dict(item.partition("=")[::2] for item in v)
            case _:
                assert_never(o.arg)
    return out


def env_from_files(paths: Sequence[str], base: Path,
                   environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """--env-file (and a TOML app's env-file): docker's KEY=VALUE format, read here so that
    the daemon receives variables, never a path."""
    env: dict[str, str] = {}
    for name in paths:
        path = base / os.path.expanduser(name)
        try:
            text = path.read_text()
        except OSError as e:
            raise InvalidInput(f"cannot read env file {path}: {e.strerror}") from None
        try:
            env.update(parse_docker_env_file(text, os.environ if environ is None else environ))
        except InvalidInput as e:
            raise InvalidInput(f"env file {path}: {e}") from None
    return env

_POLICY_FLAGS = {
    "parallelism": "parallelism",
    "delay": "delay",
    "max_unavailable": "max_unavailable",
    "monitor": "monitor",
    "ready_timeout": "ready_timeout",
    "failure_action": "failure_action",
    "update_order": "order",
}


def policy_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None
                     ) -> dict[str, Any] | None:
    """The update policy the flags ask for, over `base`; None when no flag was given."""
    given = {field: getattr(args, flag) for flag, field in _POLICY_FLAGS.items()
             if getattr(args, flag, None) is not None}
    if not given:
        return None
    policy = {**(base or {}), **given}
    UpdatePolicy.from_json(policy)
    return policy


def validate(data: dict[str, Any]) -> None:
    """An app's fields checked as the daemon will check them. The daemon's default mode is
    not known here: an app that names none is checked as ebpf mode (the default wherever the
    kernel allows it), so `--network host` or `--activation` without `--mode` reach the
    daemon, which refuses them in one line where its default is iptables mode."""
    AppSpec.from_json(data, Mode.EBPF)


_READINESS_FLAGS = {
    "ready_path": "path",
    "ready_status": "status",
    "ready_host": "host",
    "ready_interval": "interval",
    "ready_probe_timeout": "timeout",
    "ready_threshold": "failure_threshold",
    "ready_success_threshold": "success_threshold",
}


def readiness_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The readiness probe fields the flags give (checked); None when no flag was given."""
    given = {field: getattr(args, flag) for flag, field in _READINESS_FLAGS.items()
             if getattr(args, flag, None) is not None}
    if not given:
        return None
    ReadinessProbe.from_json(given)
    return given


def spec_from_run(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    env = env_from_files(args.env_file or [], Path.cwd())
    for item in args.env:
        env.update(parse_env(item))
    data: dict[str, Any] = {
        "name": validate_name(args.name),
        "image": args.image,
        "publish": _publish_json(args.publish),
        "replicas": parse_replicas(args.replicas),
        "env": env,
        "command": command,
    }
    if args.mode:
        data["mode"] = args.mode
    if args.activation is not None:
        data["activation"] = args.activation == "true"
    if args.release:
        data["release"] = args.release
    data.update(options_from_args(args, Path.cwd()))
    policy = policy_from_args(args)
    if policy is not None:
        data["update"] = policy
    readiness = readiness_from_args(args)
    if readiness is not None:
        data["readiness"] = readiness
    validate(data)  # everything before talking to the daemon
    return data


def _publish_json(given: Sequence[str]) -> str | list[str]:
    """`-p` once: a string, as the API always took; more often: the list."""
    pubs = [str(p) for p in parse_publishes(list(given))]
    return pubs[0] if len(pubs) == 1 else pubs


def update_from_args(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.image is not None:
        body["image"] = args.image
    if args.env or args.env_file:
        add = env_from_files(args.env_file or [], Path.cwd())
        for item in args.env:
            add.update(parse_env(item))
        body["env_add"] = add
    if args.env_rm:
        body["env_rm"] = list(args.env_rm)
    if args.replicas is not None:
        body["replicas"] = parse_replicas(args.replicas)
    if command:
        body["command"] = command
    if args.release is not None:
        body["release"] = args.release
    if args.canary is not None:
        if not 1 <= args.canary <= 99:
            raise InvalidInput(f"--canary must be a percentage from 1 to 99, not {args.canary}")
        body["canary"] = args.canary
    policy = policy_from_args(args)
    if policy is not None:
        body["update"] = policy
    readiness = readiness_from_args(args)
    if readiness is not None:
        body["readiness"] = readiness
    options = options_from_args(args, Path.cwd())
    body.update(options)
    if args.unset:
        bad = [k for k in args.unset if k not in OPTION_FIELDS]
        if bad:
            raise InvalidInput(f"--unset {bad[0]}: not an option (use one of "
                               f"{', '.join(OPTION_FIELDS)})")
        both = sorted(set(args.unset) & set(options))
        if both:
            raise InvalidInput(f"--{both[0]} is both given and unset")
        body["unset"] = sorted(set(args.unset))
    if not body:
        raise InvalidInput("nothing to update: give --image, -e, --env-rm, --replicas, a "
                           "docker run option, --unset, --release, a command after --, "
                           "update-policy or readiness flags")
    # The change alone is checked here (each option by the model's own validation); the
    # daemon checks the app it makes.
    Update.parse(args.name, body)
    return body


def read_apps_file(path: Path) -> FileInput:
    """`lbctl apply -f`: a TOML file of [[app]] tables, or a compose file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not a text file") from None
    if is_compose(path, text):
        read = read_compose(path)
        seen: set[str] = set()
        for data in read.apps:
            validate(data)
            if data["name"] in seen:
                raise InvalidInput(f"{path}: app {data['name']} appears twice")
            seen.add(data["name"])
        return FileInput(read.apps, read.networks, read.volumes, read.skipped)
    return FileInput(specs_from_toml(path))


def specs_from_toml(path: Path) -> list[dict[str, Any]]:
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{path} is not valid TOML: {e}") from None
    apps = doc.get("app")
    if set(doc) - {"app"} or not isinstance(apps, list) or not apps:
        raise InvalidInput(f"{path} must hold one or more [[app]] tables and nothing else")
    specs = []
    seen: set[str] = set()
    for table in apps:
        if not isinstance(table, dict):
            raise InvalidInput(f"{path}: every [[app]] must be a table")
        data = dict(table)
        base = path.resolve().parent
        if "env-file" in data:
            files = data.pop("env-file")
            if isinstance(files, str):
                files = [files]
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise InvalidInput(f"{path}: env-file must be a path or a list of paths")
            env = data.get("env", {})
            if not isinstance(env, dict):
                raise InvalidInput(f"{path}: env must be a table beside env-file")
            data["env"] = {**env_from_files(files, base), **env}
        if isinstance(data.get("volume"), list):
            data["volume"] = [absolute_bind(v, base) if isinstance(v, str) else v
                              for v in data["volume"]]
        validate(data)
        if data["name"] in seen:
            raise InvalidInput(f"{path}: app {data['name']} appears twice")
        seen.add(data["name"])
        specs.append(data)
    return specs


def parse_targets(items: Sequence[str]) -> dict[str, int]:
    targets: dict[str, int] = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not name:
            raise InvalidInput(f"invalid scale target {item!r}: use NAME=N")
        validate_name(name)
        if name in targets:
            raise InvalidInput(f"app {name} is named twice")
        targets[name] = parse_replicas(count)
    return targets
