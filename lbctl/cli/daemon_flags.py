"""`lbctl daemon`'s flags: each one sets one field of the settings tree (lbctl.settings).

argparse keeps no default of its own: a flag not given leaves the field as `Settings()` has
it, and the help shows that default, so a default is written once, in lbctl/settings.py.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lbctl.model import InvalidInput
from lbctl.model.docker_syntax import parse_size
from lbctl.settings import Settings

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Flag:
    name: str  # "--drain-timeout"
    section: str  # the settings section ("drain")
    field: str  # its field ("timeout")
    kind: Callable[[str], Any]
    help: str
    minimum: float | None = None  # refused below this
    positive: bool = False  # refused at 0 too
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    def default(self, settings: Settings) -> Any:
        return getattr(getattr(settings, self.section), self.field)


def size(text: str) -> int:
    """A byte size as docker writes it (512m, 16g) or a number of bytes."""
    return parse_size(text, "size")


FLAGS = (
    Flag("--state-dir", "daemon", "state_dir", Path,
         "desired state, eBPF and rule state, the lock (else $STATE_DIRECTORY)", metavar="DIR"),
    Flag("--metrics-addr", "daemon", "metrics_addr", str, "Prometheus endpoint",
         metavar="HOST:PORT"),
    Flag("--log-level", "daemon", "log_level", str, "one of " + ", ".join(LOG_LEVELS)),
    Flag("--docker-host", "engine", "docker_host", str,
         "engine API (default $DOCKER_HOST, else unix:///var/run/docker.sock)", metavar="URL"),
    Flag("--engine-timeout", "engine", "call_timeout", float,
         "seconds any one engine call may take", positive=True, metavar="SECONDS"),
    Flag("--drain-timeout", "drain", "timeout", float,
         "seconds a leaving replica's open connections are waited for", minimum=0,
         metavar="SECONDS"),
    Flag("--stop-grace", "drain", "stop_grace", int,
         "seconds a replica gets to exit before SIGKILL (an app's --stop-timeout wins)",
         minimum=0, metavar="SECONDS"),
    Flag("--unhealthy-grace", "worker", "unhealthy_grace", float,
         "seconds an unhealthy replica is kept before it is replaced", minimum=0,
         metavar="SECONDS"),
    Flag("--release-timeout", "worker", "release_timeout", float,
         "seconds an app's release command may run before its rollout fails", positive=True,
         metavar="SECONDS"),
    Flag("--sandbox-image", "worker", "sandbox_image", str,
         "image of ebpf-mode sandboxes and traffic holds", metavar="IMAGE"),
    Flag("--bpf-pin-root", "ebpf", "pin_root", Path, "where eBPF objects are pinned",
         metavar="DIR"),
    Flag("--activation-shim", "activation", "shim", Path,
         "the socket-activation shim activated replicas run (default: the package's "
         "/usr/lib/lbctl/activate, or this checkout's images/activate/out/activate)",
         metavar="FILE"),
    Flag("--max-apps", "limits", "max_apps", int, "apps on this host, for every caller; 0: no cap",
         minimum=0, metavar="N"),
    Flag("--max-containers", "limits", "max_containers", int,
         "replicas and sandboxes of all apps, for every caller; 0: no cap", minimum=0,
         metavar="N"),
    Flag("--default-pids-limit", "limits", "default_pids_limit", int,
         "pids-limit of a replica whose app sets none; 0: the engine's default", minimum=0,
         metavar="N"),
    Flag("--api-max-connections", "api", "max_connections", int,
         "connections to the control socket of callers other than root; 0: no cap",
         minimum=0, metavar="N"),
    Flag("--api-max-connections-per-uid", "api", "max_connections_per_uid", int,
         "connections to the control socket of one caller other than root; 0: no cap",
         minimum=0, metavar="N"),
    Flag("--metrics-max-connections", "api", "metrics_max_connections", int,
         "connections to the metrics port; 0: no cap", minimum=0, metavar="N"),
    Flag("--api-idle-timeout", "api", "idle_timeout", float,
         "seconds a connection to either listener may wait before its next request",
         positive=True, metavar="SECONDS"),
    Flag("--api-header-timeout", "api", "header_timeout", float,
         "seconds a request's head, and then its body, may take to arrive", positive=True,
         metavar="SECONDS"),
    Flag("--fd-reserve", "api", "fd_reserve", int,
         "file descriptors the listeners leave to syncs", minimum=0, metavar="N"),
    Flag("--max-open-files", "daemon", "max_open_files", int,
         "RLIMIT_NOFILE the daemon raises its soft limit to (at most the hard limit)",
         positive=True, metavar="N"),
    Flag("--max-log-streams", "logs", "max_streams_per_caller", int,
         "`lbctl logs` streams one caller (uid) may have open at once; 0: no cap", minimum=0,
         metavar="N"),
    Flag("--max-pids-total", "limits", "max_pids_total", int,
         "the sum of all replicas' pids limits, at each app's peak (a rollout's and a "
         "canary's extra replicas counted), for every caller; 0: no cap", minimum=0,
         metavar="N"),
    Flag("--max-memory-total", "limits", "max_memory_total", size,
         "the sum of all replicas' memory limits, at each app's peak, for every caller "
         "(512g, or bytes); 0: no cap", minimum=0, metavar="SIZE"),
    Flag("--min-health-interval", "limits", "min_health_interval", float,
         "the shortest --health-interval any caller may ask for", minimum=0,
         metavar="SECONDS"),
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for f in FLAGS:
        shown = f.default(defaults)
        parser.add_argument(
            f.name, dest=f.dest, type=f.kind, default=None, metavar=f.metavar,
            choices=LOG_LEVELS if f.name == "--log-level" else None,
            help=f"{f.help} (default {shown})" if shown is not None else f.help,
        )


def settings_from(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    """The settings the flags ask for, on top of `base` (default: every default); one line
    (InvalidInput) for a value out of range."""
    settings = base or Settings()
    given: dict[str, dict[str, Any]] = {}
    for f in FLAGS:
        value = getattr(args, f.dest, None)
        if value is None and f.name == "--state-dir" and os.environ.get("STATE_DIRECTORY"):
            value = Path(os.environ["STATE_DIRECTORY"])  # systemd's StateDirectory=
        if value is None:
            continue
        if f.minimum is not None and value < f.minimum:
            raise InvalidInput(f"{f.name} must not be negative" if f.minimum == 0
                               else f"{f.name} must be at least {f.minimum:g}")
        if f.positive and value <= 0:
            raise InvalidInput(f"{f.name} must be positive")
        given.setdefault(f.section, {})[f.field] = value
    return replace(settings, **{section: replace(getattr(settings, section), **fields)
                                for section, fields in given.items()})
