"""The `lbctl` command line.

Exit codes (the contract): 0 done; 2 bad input, nothing changed; 1 anything else. Every
failure is one line on stderr that says what failed and what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from lbctl.api.client import ApiError, DaemonUnavailable, socket_path
from lbctl.cli import commands
from lbctl.cli.inputs import (
    parse_targets,
    read_apps_file,
    spec_from_run,
    specs_from_toml,
    update_from_args,
)
from lbctl.cli.parser import EXIT_USAGE, parse_args
from lbctl.cli.render import render_table
from lbctl.cli.wait import Failure
from lbctl.model import InvalidInput, validate_name
from lbctl.model.hold import parse_max

EXIT_FAIL = 1

__all__ = ["main", "parse_targets", "render_table", "specs_from_toml"]


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args_list:
        i = args_list.index("--")
        args_list, command = args_list[:i], args_list[i + 1 :]
    args = parse_args(args_list)
    try:
        code = _dispatch(args, command)
    except InvalidInput as e:
        _die(str(e), EXIT_USAGE)
    except ApiError as e:
        # 429 (a cap on what one caller holds open) is not bad input: try again later.
        _die(str(e), EXIT_USAGE if 400 <= e.status < 500 and e.status != 429 else EXIT_FAIL)
    except (DaemonUnavailable, Failure) as e:
        _die(str(e), EXIT_FAIL)
    except KeyboardInterrupt:
        _die("interrupted", EXIT_FAIL)
    raise SystemExit(code)


def _die(message: str, code: int) -> NoReturn:
    print(f"lbctl: {message}", file=sys.stderr)
    raise SystemExit(code)


def _dispatch(args: argparse.Namespace, command: list[str]) -> int:
    if command and args.cmd not in ("run", "update"):
        raise InvalidInput("`-- COMMAND` is only valid with `lbctl run` and `lbctl update`")
    if args.cmd == "daemon":
        return _daemon(args)
    if args.cmd == "doctor":
        from lbctl.doctor import run_doctor

        return asyncio.run(run_doctor(socket=socket_path(args.socket)))
    sock = socket_path(args.socket)
    if args.cmd == "run":
        spec = spec_from_run(args, command)
        return asyncio.run(commands.run(sock, spec, args.no_wait, args.timeout))
    if args.cmd == "update":
        validate_name(args.name)
        body = update_from_args(args, command)
        return asyncio.run(commands.update(sock, args.name, body, args.no_wait, args.timeout))
    if args.cmd == "apply":
        given = read_apps_file(Path(args.file))
        for name in given.skipped:
            print(f"{name}: skipped (not an lbctl app: no x-lbctl, no ports with "
                  "deploy.replicas; run it with docker-compose)")
        return asyncio.run(commands.apply(sock, given.body(), args.no_wait, args.timeout))
    if args.cmd == "scale":
        targets = parse_targets(args.targets)
        return asyncio.run(commands.scale(sock, targets, args.no_wait, args.timeout))
    if args.cmd == "status":
        if args.name:
            validate_name(args.name)
        try:
            return asyncio.run(commands.status(sock, args.name, args.output, args.watch))
        except KeyboardInterrupt:
            if not args.watch:
                raise
            return 0  # how a watch ends, as `lbctl logs -f` does: nothing went wrong
    if args.cmd == "rollout":
        validate_name(args.name)
        return asyncio.run(commands.rollout(sock, args.action, args.name, args.to_revision,
                                            args.output, args.no_wait, args.timeout))
    if args.cmd in ("pause", "resume"):
        validate_name(args.name)
        wanted = ({"max": parse_max(args.max)} if args.cmd == "pause" and args.max is not None
                  else None)
        return asyncio.run(commands.hold(sock, args.cmd, args.name, wanted, args.no_wait,
                                         args.timeout))
    if args.cmd == "rm":
        validate_name(args.name)
        return asyncio.run(commands.rm(sock, args.name, args.timeout))
    if args.cmd == "export":
        validate_name(args.name)
        return asyncio.run(commands.export(sock, args.name, args.format))
    if args.cmd == "logs":
        return _logs(args, sock)
    raise InvalidInput(f"unknown command {args.cmd}")


def _logs(args: argparse.Namespace, sock: Path) -> int:
    from lbctl.cli import logs

    validate_name(args.name)
    params = logs.query(args.follow, args.since, args.tail, args.replica)
    color = not args.no_color and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    try:
        return asyncio.run(logs.logs(sock, args.name, params, args.timestamps, color))
    except KeyboardInterrupt:  # how a follow ends: nothing went wrong
        return 0
    except BrokenPipeError:  # `lbctl logs web | head`: the reader has what it wanted
        # Python flushes stdout once more at exit, into the closed pipe: point it elsewhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _daemon(args: argparse.Namespace) -> int:
    from lbctl import logs, malloc

    malloc.limit_arenas()  # before any thread starts: see lbctl.malloc
    from lbctl.cli.daemon_flags import settings_from
    from lbctl.controller import policy
    from lbctl.controller.store import StateError
    from lbctl.daemon import parse_addr, serve
    from lbctl.instance_lock import AlreadyRunning

    settings = settings_from(args)
    logs.setup(settings.daemon.log_level)
    parse_addr(settings.daemon.metrics_addr)
    try:
        rules = policy.load(Path(args.policy) if args.policy else None)
    except policy.PolicyError as e:
        raise Failure(str(e)) from None
    try:
        asyncio.run(serve(settings, socket_path(args.daemon_socket or args.socket), rules))
    except (StateError, AlreadyRunning) as e:
        raise Failure(str(e)) from None
    except OSError as e:
        raise Failure(f"daemon failed to start: {e}") from None
    return 0
