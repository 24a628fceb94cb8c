"""The command line's grammar: every command and flag, and usage errors as one line, exit 2."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from lbctl import __version__
from lbctl.cli.daemon_flags import add_flags as add_daemon_flags
from lbctl.model import InvalidInput
from lbctl.model.option import Arg
from lbctl.model.options import OPTIONS

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse quotes the value it refused whole: a 5000-digit --pids-limit stays one
        # readable line (InvalidInput escapes and cuts the same way).
        line = str(InvalidInput(message))
        print(f"lbctl: {line} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; an option `run`/`update` do not take is most likely one of docker
    run's that lbctl does not pass on: it is named and refused, never dropped."""
    p = build_parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        if args.cmd in ("run", "update"):
            p.error(f"{extra[0]}: not an option of `lbctl {args.cmd}` (lbctl takes the docker "
                    "run options its --help lists, and refuses the others)")
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _activation_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activation", nargs="?", const="true", choices=["true", "false"],
                   metavar="true|false",
                   help="ebpf mode: hand each replica listeners made in the host's namespace "
                        "(systemd socket activation, LISTEN_FDS) instead of a sandbox behind a "
                        "DNAT; default: what the image's io.lbctl.listen-fds label says")


def _wait_flags(p: argparse.ArgumentParser, default: float = 60.0) -> None:
    p.add_argument("--no-wait", action="store_true", help="return once the change is accepted")
    p.add_argument("--timeout", type=float, default=default,
                   help=f"seconds to wait for the data plane (default {default:g})")


def _update_policy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rolling update (how a changed spec replaces replicas)")
    g.add_argument("--parallelism", type=int, help="replicas replaced at once (default 1)")
    g.add_argument("--delay", type=float, help="seconds between batches (default 0)")
    g.add_argument("--max-unavailable", type=int,
                   help="ready replicas a rollout may go below the count by (default 0)")
    g.add_argument("--monitor", type=float,
                   help="seconds a new replica must stay ready before an old one drains "
                        "(default 5)")
    g.add_argument("--ready-timeout", type=float,
                   help="seconds a new replica may take to get ready (default 60)")
    g.add_argument("--failure-action", choices=["rollback", "pause"],
                   help="what a failed rollout does (default rollback)")
    g.add_argument("--update-order", choices=["start-first", "stop-first"],
                   help="start a new replica before draining an old one, or after "
                        "(default start-first)")


def _readiness_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "readiness probe (whether a replica may get connections; changing it restarts nothing)")
    g.add_argument("--ready-path", metavar="PATH",
                   help="GET this path on each replica's container port; ready on a status in "
                        "--ready-status ('': back to a TCP check, the default)")
    g.add_argument("--ready-status", metavar="CODES",
                   help="status codes that count as ready (default 200-399)")
    g.add_argument("--ready-host", metavar="HOST", help="Host header (default localhost)")
    g.add_argument("--ready-interval", type=float, metavar="SECONDS",
                   help="seconds between two probes of a replica (default 0.25)")
    g.add_argument("--ready-probe-timeout", type=float, metavar="SECONDS",
                   help="seconds one probe may take (default 1)")
    g.add_argument("--ready-threshold", type=int, metavar="N",
                   help="failed probes in a row that take a ready replica out (default 3)")
    g.add_argument("--ready-success-threshold", type=int, metavar="N",
                   help="passing probes in a row that put a replica in (default 1)")


def _docker_run_flags(p: argparse.ArgumentParser, update: bool = False) -> None:
    """docker run's options, under docker's names: one flag per entry of the option table
    (lbctl.model.options), in its order."""
    title = ("docker run options (given ones replace the app's; --unset resets one)" if update
             else "docker run options (same names and syntax as docker run)")
    g = p.add_argument_group(title)
    for o in OPTIONS:
        kw: dict[str, Any] = {"dest": o.attr, "help": o.help}
        if o.arg is Arg.SWITCH:
            g.add_argument(*o.flags, action="store_true", default=None, **kw)
            continue
        kw["metavar"] = o.metavar
        if o.cli_type is not None:
            kw["type"] = o.cli_type
        if o.arg is Arg.ONE:
            g.add_argument(*o.flags, **kw)
        else:
            g.add_argument(*o.flags, action="append", default=None, **kw)
    g.add_argument("--env-file", action="append", default=None, metavar="FILE",
                   help="read KEY=VALUE lines into the environment (-e wins)")
    if update:
        g.add_argument("--unset", action="append", default=None, metavar="OPTION",
                       help="reset an option (memory, volume, ...) to the image's default")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lbctl", description="N replicas on one host port, balanced by the kernel")
    p.add_argument("--version", action="version", version=f"lbctl {__version__}")
    p.add_argument(
        "--socket", help="control socket (default $LBCTL_SOCKET or /run/lbctl/lbctl.sock)"
    )
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    d = sub.add_parser("daemon", help="run the controller")
    d.add_argument("--socket", dest="daemon_socket")
    add_daemon_flags(d)  # each sets a field of lbctl.settings.Settings
    d.add_argument("--policy", metavar="FILE",
                   help="what callers other than root may ask for (default "
                        "/etc/lbctl/policy.toml; absent: the built-in safe defaults)")

    r = sub.add_parser("run", help="run an app: N replicas on one host port (again: update it)")
    r.add_argument("name")
    r.add_argument("--image", required=True)
    r.add_argument("-p", "--publish", required=True, action="append",
                   help="[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]; IPv6 in brackets "
                        "([::]:80:8080); repeat for more addresses (both families: "
                        "-p 0.0.0.0:80:8080 -p [::]:80:8080)")
    r.add_argument("--replicas", default="1")
    r.add_argument("--mode", choices=["iptables", "ebpf"])
    _activation_flag(r)
    r.add_argument("-e", "--env", action="append", default=[])
    r.add_argument("--release", metavar="CMD",
                   help="run CMD in a one-off container of each new revision before its first "
                        "replica starts (split like a shell would; a non-zero exit fails the "
                        "rollout)")
    _docker_run_flags(r)
    _readiness_flags(r)
    _update_policy_flags(r)
    _wait_flags(r)

    u = sub.add_parser("update", help="change an app; a new image, env, command or option "
                                      "rolls out")
    u.add_argument("name")
    u.add_argument("--image")
    u.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE to add or change")
    u.add_argument("--env-rm", action="append", default=[], help="KEY to remove")
    u.add_argument("--replicas")
    u.add_argument("--release", metavar="CMD",
                   help="the release command of the revisions to come ('' removes it); alone "
                        "it rolls nothing")
    u.add_argument("--canary", type=int, metavar="PCT",
                   help="hold the new revision beside the old one with PCT%% of new "
                        "connections, until `lbctl rollout resume` or `undo`")
    _docker_run_flags(u, update=True)
    _readiness_flags(u)
    _update_policy_flags(u)
    _wait_flags(u, 300.0)

    a = sub.add_parser("apply", help="create or change the apps of a TOML or compose file "
                                     "(all or nothing)")
    a.add_argument("-f", "--file", required=True)
    _wait_flags(a, 300.0)

    s = sub.add_parser("scale", help="set the number of replicas: NAME=N ...")
    s.add_argument("targets", nargs="+", metavar="NAME=N")
    _wait_flags(s)

    st = sub.add_parser("status", help="show apps and replicas")
    st.add_argument("name", nargs="?")
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    st.add_argument("-w", "--watch", action="store_true",
                    help="redraw the table every second in place until Ctrl-C (exit 0)")

    ro = sub.add_parser("rollout", help="follow and steer an app's rollout")
    ro.add_argument("action", choices=["status", "pause", "resume", "undo", "history"])
    ro.add_argument("name")
    ro.add_argument("--to-revision", type=int, help="undo: go back to this revision")
    ro.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ro.add_argument("--timeout", type=float, default=300.0,
                    help="status, undo, resume: seconds to wait for the rollout to end")
    ro.add_argument("--no-wait", action="store_true")

    pa = sub.add_parser("pause", help="hold the app's new connections in the kernel (neither "
                                      "refused nor reset) until `lbctl resume` or --max")
    pa.add_argument("name")
    pa.add_argument("--max", type=float, metavar="SECONDS",
                    help="the hold ends by itself after this long (default 30, at most 3600)")
    _wait_flags(pa, 30.0)

    re_ = sub.add_parser("resume", help="end the hold: what it held is served, in order")
    re_.add_argument("name")
    _wait_flags(re_, 30.0)

    rm = sub.add_parser("rm", help="remove an app, its containers, rules and maps")
    rm.add_argument("name")
    rm.add_argument("--timeout", type=float, default=120.0)

    ex = sub.add_parser("export", help="print an app as a compose file, a Swarm stack file or "
                        "Kubernetes manifests")
    ex.add_argument("name")
    ex.add_argument("--format", choices=["compose", "swarm", "kubernetes"], default="compose")

    lg = sub.add_parser("logs", help="the output of every replica of an app, each line "
                                     "prefixed with its replica (-f: follow)")
    lg.add_argument("name")
    lg.add_argument("-f", "--follow", action="store_true",
                    help="keep printing: new replicas (a scale, a rollout) join, stopped ones "
                         "end after their last line; until Ctrl-C or the app's removal")
    lg.add_argument("--since", metavar="T",
                    help="lines since T: a duration back from now (10m, 1h30m) or a time "
                         "(2026-05-01T12:00:00Z; 2026-05-01; no zone: local time; Unix "
                         "seconds)")
    lg.add_argument("--tail", metavar="N", default="all",
                    help="the last N lines of each replica (default all)")
    lg.add_argument("--replica", metavar="R",
                    help="one replica, by name (web-2) or index (2)")
    lg.add_argument("-t", "--timestamps", action="store_true",
                    help="each line's time, as the engine stamped it")
    lg.add_argument("--no-color", action="store_true",
                    help="no colors (never on a pipe, nor with $NO_COLOR set)")

    sub.add_parser("doctor", help="check what this host needs")
    return p
