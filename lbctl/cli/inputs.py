"""What the user typed, turned into API bodies and checked before the daemon is asked:
bad input is refused here with one line and exit 2, and nothing is sent."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lbctl.model import AppSpec, InvalidInput, parse_env, parse_replicas, validate_name
from lbctl.model.publish import parse_publishes
from lbctl.model.rollout import UpdatePolicy

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


def spec_from_run(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    env: dict[str, str] = {}
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
    policy = policy_from_args(args)
    if policy is not None:
        data["update"] = policy
    AppSpec.from_json(data)  # validate everything before talking to the daemon
    return data


def _publish_json(given: Sequence[str]) -> str | list[str]:
    """`-p` once: a string, as the API always took; more often: the list."""
    pubs = [str(p) for p in parse_publishes(list(given))]
    return pubs[0] if len(pubs) == 1 else pubs


def update_from_args(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.image is not None:
        body["image"] = args.image
    if args.env:
        add: dict[str, str] = {}
        for item in args.env:
            add.update(parse_env(item))
        body["env_add"] = add
    if args.env_rm:
        body["env_rm"] = list(args.env_rm)
    if args.replicas is not None:
        body["replicas"] = parse_replicas(args.replicas)
    if command:
        body["command"] = command
    if args.canary is not None:
        if not 1 <= args.canary <= 99:
            raise InvalidInput(f"--canary must be a percentage from 1 to 99, not {args.canary}")
        body["canary"] = args.canary
    policy = policy_from_args(args)
    if policy is not None:
        body["update"] = policy
    if not body:
        raise InvalidInput("nothing to update: give --image, -e, --env-rm, --replicas, a "
                           "command after --, or update-policy flags")
    return body


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
        AppSpec.from_json(data)
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
