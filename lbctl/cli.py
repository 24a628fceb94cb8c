"""The `lbctl` command line.

Exit codes (the contract): 0 done; 2 bad input, nothing changed; 1 anything else. Every
failure is one line on stderr that says what failed and what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lbctl import __version__
from lbctl.api.client import ApiError, Client, DaemonUnavailable, socket_path
from lbctl.model import AppSpec, InvalidInput, Publish, parse_env, parse_replicas, validate_name

EXIT_FAIL = 1
EXIT_USAGE = 2


class Failure(Exception):
    """Not the user's fault (exit 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"lbctl: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lbctl", description="N replicas on one host port, balanced by the kernel")
    p.add_argument("--version", action="version", version=f"lbctl {__version__}")
    p.add_argument(
        "--socket", help="control socket (default $LBCTL_SOCKET or /run/lbctl/lbctl.sock)"
    )
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    d = sub.add_parser("daemon", help="run the controller")
    d.add_argument("--socket", dest="daemon_socket")
    d.add_argument("--state-dir", default=None)
    d.add_argument("--metrics-addr", default=None)
    d.add_argument("--docker-host", default=None)
    d.add_argument("--drain-timeout", type=float, default=10.0)
    d.add_argument("--stop-grace", type=int, default=10)
    d.add_argument("--bpf-pin-root", default="/sys/fs/bpf/lbctl")
    d.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    r = sub.add_parser("run", help="run an app: N replicas on one host port")
    r.add_argument("name")
    r.add_argument("--image", required=True)
    r.add_argument("-p", "--publish", required=True)
    r.add_argument("--replicas", default="1")
    r.add_argument("--mode", choices=["iptables", "ebpf"])
    r.add_argument("-e", "--env", action="append", default=[])
    r.add_argument("--no-wait", action="store_true")
    r.add_argument("--timeout", type=float, default=60.0)

    a = sub.add_parser("apply", help="create or scale the apps of a TOML file")
    a.add_argument("-f", "--file", required=True)
    a.add_argument("--no-wait", action="store_true")
    a.add_argument("--timeout", type=float, default=60.0)

    s = sub.add_parser("scale", help="set the number of replicas: NAME=N ...")
    s.add_argument("targets", nargs="+", metavar="NAME=N")
    s.add_argument("--no-wait", action="store_true")
    s.add_argument("--timeout", type=float, default=60.0)

    st = sub.add_parser("status", help="show apps and replicas")
    st.add_argument("name", nargs="?")
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    st.add_argument("-w", "--watch", action="store_true")

    rm = sub.add_parser("rm", help="remove an app, its containers, rules and maps")
    rm.add_argument("name")
    rm.add_argument("--timeout", type=float, default=120.0)

    ex = sub.add_parser("export", help="print an app as a compose file or Kubernetes manifests")
    ex.add_argument("name")
    ex.add_argument("--format", choices=["compose", "kubernetes"], default="compose")

    sub.add_parser("doctor", help="check what this host needs")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args_list:
        i = args_list.index("--")
        args_list, command = args_list[:i], args_list[i + 1 :]
    args = build_parser().parse_args(args_list)
    try:
        code = _dispatch(args, command)
    except InvalidInput as e:
        _die(str(e), EXIT_USAGE)
    except ApiError as e:
        _die(str(e), EXIT_USAGE if 400 <= e.status < 500 else EXIT_FAIL)
    except (DaemonUnavailable, Failure) as e:
        _die(str(e), EXIT_FAIL)
    except KeyboardInterrupt:
        _die("interrupted", EXIT_FAIL)
    raise SystemExit(code)


def _die(message: str, code: int) -> NoReturn:
    print(f"lbctl: {message}", file=sys.stderr)
    raise SystemExit(code)


def _dispatch(args: argparse.Namespace, command: list[str]) -> int:
    if command and args.cmd != "run":
        raise InvalidInput("`-- COMMAND` is only valid with `lbctl run`")
    if args.cmd == "daemon":
        return _daemon(args)
    if args.cmd == "doctor":
        from lbctl.doctor import run_doctor

        return asyncio.run(run_doctor())
    sock = socket_path(args.socket)
    if args.cmd == "run":
        spec = _spec_from_run(args, command)
        return asyncio.run(_run(sock, [spec], args.no_wait, args.timeout, create=True))
    if args.cmd == "apply":
        specs = _specs_from_toml(Path(args.file))
        return asyncio.run(_run(sock, specs, args.no_wait, args.timeout, create=False))
    if args.cmd == "scale":
        targets = _parse_targets(args.targets)
        return asyncio.run(_scale(sock, targets, args.no_wait, args.timeout))
    if args.cmd == "status":
        if args.name:
            validate_name(args.name)
        return asyncio.run(_status(sock, args.name, args.output, args.watch))
    if args.cmd == "rm":
        validate_name(args.name)
        return asyncio.run(_rm(sock, args.name, args.timeout))
    if args.cmd == "export":
        validate_name(args.name)
        return asyncio.run(_export(sock, args.name, args.format))
    raise InvalidInput(f"unknown command {args.cmd}")


def _daemon(args: argparse.Namespace) -> int:
    from lbctl import logs
    from lbctl.controller.store import StateError
    from lbctl.daemon import (
        DEFAULT_METRICS_ADDR,
        DEFAULT_STATE_DIR,
        DaemonConfig,
        parse_addr,
        serve,
    )

    logs.setup(args.log_level)
    metrics_addr = args.metrics_addr or DEFAULT_METRICS_ADDR
    parse_addr(metrics_addr)
    if args.drain_timeout < 0 or args.stop_grace < 0:
        raise InvalidInput("--drain-timeout and --stop-grace must not be negative")
    cfg = DaemonConfig(
        socket=socket_path(args.daemon_socket or args.socket),
        state_dir=Path(args.state_dir or os.environ.get("STATE_DIRECTORY") or DEFAULT_STATE_DIR),
        metrics_addr=metrics_addr,
        docker_host=args.docker_host,
        drain_timeout=args.drain_timeout,
        stop_grace=args.stop_grace,
        bpf_pin_root=Path(args.bpf_pin_root),
    )
    try:
        asyncio.run(serve(cfg))
    except StateError as e:
        raise Failure(str(e)) from None
    except OSError as e:
        raise Failure(f"daemon failed to start: {e}") from None
    return 0


def _spec_from_run(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    env: dict[str, str] = {}
    for item in args.env:
        env.update(parse_env(item))
    data: dict[str, Any] = {
        "name": validate_name(args.name),
        "image": args.image,
        "publish": str(Publish.parse(args.publish)),
        "replicas": parse_replicas(args.replicas),
        "env": env,
        "command": command,
    }
    if args.mode:
        data["mode"] = args.mode
    AppSpec.from_json(data)  # validate everything before talking to the daemon
    return data


def _specs_from_toml(path: Path) -> list[dict[str, Any]]:
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


def _parse_targets(items: Sequence[str]) -> dict[str, int]:
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


async def _run(
    sock: Path, specs: list[dict[str, Any]], no_wait: bool, timeout: float, create: bool
) -> int:
    async with Client(sock) as c:
        if create:
            await c.request("POST", "/apps", specs[0])
        else:
            for spec in specs:
                await c.request("PUT", f"/apps/{spec['name']}", spec)
        if no_wait:
            return 0
        try:
            await _wait(c, [s["name"] for s in specs], timeout)
        except Failure:
            if create:  # `run` is all or nothing: a failed app leaves nothing behind
                await c.request("DELETE", f"/apps/{specs[0]['name']}")
            raise
        if create:
            print(f"{specs[0]['name']}: {specs[0]['replicas']} replicas ready on "
                  f"{specs[0]['publish']}")
    return 0


async def _scale(sock: Path, targets: dict[str, int], no_wait: bool, timeout: float) -> int:
    async with Client(sock) as c:
        listing = await c.request("GET", "/apps")
        known = {a["name"] for a in listing["apps"]}
        unknown = sorted(set(targets) - known)
        if unknown:  # checked for all before any change: nothing changes on bad input
            raise InvalidInput(f"no app named {', '.join(unknown)} (see `lbctl status`)")
        for name, n in targets.items():
            await c.request("POST", f"/apps/{name}/scale", {"replicas": n})
        if not no_wait:
            await _wait(c, list(targets), timeout)
    return 0


async def _wait(c: Client, names: list[str], timeout: float) -> None:
    """Until the data plane serves exactly the desired replicas of every app."""
    deadline = time.monotonic() + timeout
    tty = sys.stderr.isatty()
    last = ""
    while True:
        apps = [await c.request("GET", f"/apps/{n}") for n in names]
        for a in apps:
            if a.get("error"):
                raise Failure(f"{a['name']}: {a['error']}")
        line = "  ".join(_progress(a) for a in apps)
        if tty and line != last:
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
            last = line
        if all(a["converged"] and a["ready"] >= a["desired"] for a in apps):
            if tty:
                print(file=sys.stderr)
            return
        if time.monotonic() > deadline:
            if tty:
                print(file=sys.stderr)
            hint = "; ".join(a["last_event"] for a in apps if a.get("last_event"))
            raise Failure(
                f"timed out after {timeout:g}s: {line}"
                + (f" (last: {hint})" if hint else "")
                + "; see `lbctl status`"
            )
        await asyncio.sleep(0.2)


def _progress(a: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for r in a["replicas"]:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    extra = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "ready")
    return f"{a['name']}: {a['ready']}/{a['desired']} ready" + (f" ({extra})" if extra else "")


async def _status(sock: Path, name: str | None, output: str, watch: bool) -> int:
    async with Client(sock) as c:
        while True:
            if name:
                apps = [await c.request("GET", f"/apps/{name}")]
            else:
                apps = (await c.request("GET", "/apps"))["apps"]
            if output == "json":
                print(json.dumps({"apps": apps}, indent=2))
            else:
                if watch:
                    print("\033[H\033[J", end="")
                print(render_table(apps))
            if not watch:
                return 0
            sys.stdout.flush()
            await asyncio.sleep(1.0)


def render_table(apps: list[dict[str, Any]]) -> str:
    """One block per app, 80 columns wide."""
    if not apps:
        return "no apps (create one with `lbctl run`)"
    lines: list[str] = []
    for a in apps:
        total = sum(r["connections_total"] for r in a["replicas"]) or 0
        head = f"{a['name']}  {a['mode']}  {a['publish']}  {a['ready']}/{a['desired']} ready"
        lines.append(head)
        if a.get("error"):
            lines.append(f"  error: {a['error']}")
        lines.append(f"  {'REPLICA':<24}{'STATE':<11}{'UPTIME':>9}{'CONNECTIONS':>14}{'SHARE':>8}")
        for r in a["replicas"]:
            share = f"{100 * r['connections_total'] / total:.0f}%" if total else "-"
            name = r["name"] + (" *" if r.get("adopted") else "")
            lines.append(
                f"  {name[:23]:<24}{r['state']:<11}{_uptime(r.get('uptime_seconds')):>9}"
                f"{r['connections_total']:>14}{share:>8}"
            )
        if any(r.get("adopted") for r in a["replicas"]):
            lines.append("  * adopted: not created by lbctl, never removed by it")
        lines.append("")
    return "\n".join(lines).rstrip()


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


async def _export(sock: Path, name: str, fmt: str) -> int:
    from lbctl.export import export

    async with Client(sock) as c:
        data = await c.request("GET", f"/apps/{name}/spec")
    print(export(AppSpec.from_json(data), fmt), end="")
    return 0


async def _rm(sock: Path, name: str, timeout: float) -> int:
    async with Client(sock) as c:
        await c.request("DELETE", f"/apps/{name}?timeout={timeout:g}")
    print(f"{name}: removed")
    return 0
