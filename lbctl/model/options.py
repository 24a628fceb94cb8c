"""The `docker run` options real services need, as part of an app's spec.

Users know these from `docker run`, so they keep docker's names and syntaxes everywhere: on
the command line (`-v data:/data`, `--memory 512m`), and as fields of TOML, the API and the
state file, named like the long flag (`volume`, `pids-limit`, `health-cmd`; singular, the
dashes kept). Values are stored as the user wrote them (a `--mount` in one canonical
spelling), once validated here with lbctl.model.docker_syntax, so `export` and `update` show
the user's own words; `lbctl.runtime.options` turns them into the engine's create JSON.

Validation is strict and pure: whatever passes here is something the engine accepts in
form, and a value the engine would refuse (or worse, read differently) is refused with one
line before anything changes.

Options that belong to a network namespace (`network`, `add-host`, `dns`, see
NAMESPACE_FIELDS) go on the app's sandbox in ebpf mode: replicas join its namespace with
`--network container:<sandbox>`, share its /etc/hosts and /etc/resolv.conf, and Docker refuses
these options on a container that joins another's namespace.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from lbctl.model.docker_syntax import (
    NAME_RE,
    Mount,
    Ulimit,
    Volume,
    abs_path,
    parse_add_host,
    parse_duration,
    parse_size,
    parse_tmpfs,
)
from lbctl.model.errors import InvalidInput

# JSON field name -> dataclass attribute. The order is the order of `to_json` and of
# `lbctl run --help`.
FIELDS: dict[str, str] = {
    "volume": "volume",
    "mount": "mount",
    "tmpfs": "tmpfs",
    "network": "network",
    "add-host": "add_host",
    "dns": "dns",
    "memory": "memory",
    "cpus": "cpus",
    "pids-limit": "pids_limit",
    "ulimit": "ulimit",
    "user": "user",
    "workdir": "workdir",
    "entrypoint": "entrypoint",
    "label": "label",
    "health-cmd": "health_cmd",
    "health-interval": "health_interval",
    "health-timeout": "health_timeout",
    "health-retries": "health_retries",
    "health-start-period": "health_start_period",
    "read-only": "read_only",
    "cap-add": "cap_add",
    "cap-drop": "cap_drop",
    "stop-signal": "stop_signal",
    "stop-timeout": "stop_timeout",
    "log-driver": "log_driver",
    "log-opt": "log_opt",
    "init": "init",
}
# Set on the sandbox in ebpf mode (Docker refuses them beside `--network container:...`).
NAMESPACE_FIELDS = frozenset({"network", "add-host", "dns"})
# `--network host`: replicas in the host's own network namespace (lbctl's fastest path, ebpf
# mode only; see lbctl.model.spec.check_host_network).
HOST_NETWORK = "host"
# The default network: Docker's bridge (docker0), where lbctl's replicas always lived.
DEFAULT_NETWORK = "bridge"

MAX_ITEMS = 64  # of any list option: far beyond a real service, short of a hostile body
MAX_STOP_TIMEOUT = 600

_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?\Z")
_CAP_RE = re.compile(r"^[A-Za-z][A-Za-z_]*\Z")
_SIGNAL_RE = re.compile(r"^(SIG)?[A-Z][A-Z0-9]*(\+[0-9]+)?\Z")
_LOG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*\Z")
MIN_MEMORY = 6 * (1 << 20)  # Docker's own minimum

# ---- the options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """docker run's options of an app, as validated strings and numbers (None / empty:
    not given, the image's or the engine's default)."""

    volume: tuple[str, ...] = ()
    mount: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    add_host: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    memory: str | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    ulimit: tuple[str, ...] = ()
    user: str | None = None
    workdir: str | None = None
    entrypoint: tuple[str, ...] | None = None
    label: Mapping[str, str] = field(default_factory=dict)
    # A string runs in the image's shell (docker run's --health-cmd); a list is the exec form
    # (a Dockerfile's HEALTHCHECK CMD [...]), which images without a shell need.
    health_cmd: str | tuple[str, ...] | None = None
    health_interval: str | None = None
    health_timeout: str | None = None
    health_retries: int | None = None
    health_start_period: str | None = None
    read_only: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    stop_signal: str | None = None
    stop_timeout: int | None = None
    log_driver: str | None = None
    log_opt: Mapping[str, str] = field(default_factory=dict)
    init: bool = False

    # -- parsed views, for lbctl.runtime --------------------------------------------------

    def volumes(self) -> list[Volume]:
        return [Volume.parse(v) for v in self.volume]

    def mounts(self) -> list[Mount]:
        return [Mount.parse(m) for m in self.mount]

    def ulimits(self) -> list[Ulimit]:
        return [Ulimit.parse(u) for u in self.ulimit]

    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_size(self.memory, "memory")

    def networks(self) -> tuple[str, ...]:
        """The networks in the order given; the first carries the app's address."""
        return self.network or (DEFAULT_NETWORK,)

    @property
    def host_network(self) -> bool:
        """`--network host`: the replicas share the host's network namespace."""
        return self.network == (HOST_NETWORK,)

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Only what was given: an app without options keeps the JSON (and the spec hash) it
        had before options existed, so upgrading lbctl rolls no replica."""
        out: dict[str, Any] = {}
        default = RunOptions()
        for key, attr in FIELDS.items():
            v = getattr(self, attr)
            if v == getattr(default, attr):
                continue
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(sorted(v.items()))
            out[key] = v
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunOptions:
        """The option fields of an app's JSON (other keys are the caller's)."""
        values: dict[str, Any] = {}
        for key, attr in FIELDS.items():
            if key in data and data[key] is not None:
                values[attr] = _VALIDATORS[key](data[key], key)
        opts = cls(**values)
        opts._check_together()
        return opts

    def _check_together(self) -> None:
        targets: list[str] = [v.target for v in self.volumes()]
        targets += [m.target for m in self.mounts()]
        targets += [parse_tmpfs(t)[0] for t in self.tmpfs]
        dup = sorted({t for t in targets if targets.count(t) > 1})
        if dup:
            raise InvalidInput(f"{dup[0]} is mounted twice (volume, mount and tmpfs targets "
                               "must differ)")
        for key in ("health-interval", "health-timeout", "health-start-period"):
            v = getattr(self, FIELDS[key])
            if v is not None and 0 < parse_duration(v, key) < 0.001:
                raise InvalidInput(f"{key} must be 0 or at least 1ms, not {v!r}")

    def without(self, *keys: str) -> RunOptions:
        """These options reset to their defaults (`lbctl update --unset`)."""
        default = RunOptions()
        return replace(self, **{FIELDS[k]: getattr(default, FIELDS[k]) for k in keys})


def _strings(v: Any, key: str, check: Callable[[str], object] | None = None
             ) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidInput(f"{key} must be a list of strings")
    if len(v) > MAX_ITEMS:
        raise InvalidInput(f"{key}: more than {MAX_ITEMS} entries")
    if check is not None:
        for x in v:
            check(x)
    return tuple(v)


def _mapping(v: Any, key: str, key_re: re.Pattern[str]) -> dict[str, str]:
    if isinstance(v, list):  # ["k=v", ...] as on the command line
        pairs: dict[str, str] = {}
        for item in v:
            if not isinstance(item, str):
                raise InvalidInput(f"{key} must be an object of strings or a list of KEY=VALUE")
            k, _, val = item.partition("=")
            pairs[k] = val
        v = pairs
    if not isinstance(v, dict) or len(v) > MAX_ITEMS:
        raise InvalidInput(f"{key} must be an object of strings or a list of KEY=VALUE")
    for k, val in v.items():
        if not isinstance(k, str) or not key_re.match(k) or len(k) > 255:
            raise InvalidInput(f"invalid {key} key {k!r}")
        if not isinstance(val, str) or len(val) > 4096 or "\0" in val:
            raise InvalidInput(f"invalid {key} value for {k!r}: use a string")
    return dict(v)


def _labels(v: Any, key: str) -> dict[str, str]:
    labels = _mapping(v, key, re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*\Z"))
    ours = sorted(k for k in labels if k.startswith("lbctl."))
    if ours:
        raise InvalidInput(f"label {ours[0]!r}: keys starting with lbctl. are lbctl's own")
    return labels


def _optional_str(pattern: re.Pattern[str], hint: str) -> Callable[[Any, str], str]:
    def check(v: Any, key: str) -> str:
        if not isinstance(v, str) or not pattern.match(v) or len(v) > 255:
            raise InvalidInput(f"invalid {key} {v!r}: {hint}")
        return v

    return check


def _duration(v: Any, key: str) -> str:
    parse_duration(v, key)
    return str(v)


def _int_in(lo: int, hi: int) -> Callable[[Any, str], int]:
    def check(v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise InvalidInput(f"{key} must be a whole number from {lo} to {hi}, not {v!r}")
        return v

    return check


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise InvalidInput(f"{key} must be true or false, not {v!r}")
    return v


def _memory(v: Any, key: str) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    n = parse_size(v, key)
    if n < MIN_MEMORY:
        raise InvalidInput(f"memory {v!r} is below the engine's minimum of 6m")
    return str(v)


def _cpus(v: Any, key: str) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise InvalidInput(f"cpus must be a number of CPUs (0.5, 2), not {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.01 <= v <= 1024:
        raise InvalidInput(f"cpus must be a number of CPUs from 0.01 to 1024, not {v!r}")
    return float(v)


def _network(name: str) -> None:
    if name == HOST_NETWORK:
        return
    if name == "none" or not NAME_RE.match(name) or len(name) > 255:
        raise InvalidInput(f"invalid network {name!r}: use the name of a bridge network "
                           "(`docker network create NAME`) or host; none and container: "
                           "modes would leave lbctl no address to send traffic to")


def _networks(v: Any, key: str) -> tuple[str, ...]:
    nets = _strings(v, key, _network)
    if len(set(nets)) != len(nets):
        raise InvalidInput(f"{key}: a network is named twice")
    if HOST_NETWORK in nets and len(nets) > 1:
        raise InvalidInput(f"{key}: host cannot be combined with other networks (a replica "
                           "on the host's network has no interface of its own to join them)")
    return nets


def _dns(text: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(f"invalid dns {text!r}: use an IP address") from None


def _cap(text: str) -> None:
    if not _CAP_RE.match(text) or len(text) > 64:
        raise InvalidInput(f"invalid capability {text!r}: use a name like NET_ADMIN or ALL")


def _entrypoint(v: Any, key: str) -> tuple[str, ...]:
    ep = _strings(v, key)
    if not ep:
        raise InvalidInput("entrypoint must name a program ([\"\"] resets the image's)")
    return ep


def _health_cmd(v: Any, key: str) -> str | tuple[str, ...]:
    if isinstance(v, str):
        if not v.strip():
            raise InvalidInput("health-cmd must not be empty")
        return v
    cmd = _strings(v, key)
    if not cmd or not cmd[0]:
        raise InvalidInput("health-cmd must name a program")
    return cmd


def _signal(v: Any, key: str) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64:
        return str(v)
    if isinstance(v, str) and ((re.fullmatch(r"[0-9]{1,2}", v) and 1 <= int(v) <= 64)
                               or _SIGNAL_RE.match(v)):
        return v
    raise InvalidInput(f"invalid stop-signal {v!r}: use a name like SIGTERM or a number")


_VALIDATORS: dict[str, Callable[[Any, str], Any]] = {
    "volume": lambda v, k: _strings(v, k, Volume.parse),
    "mount": lambda v, k: tuple(str(Mount.parse(m)) for m in _strings(v, k)),
    "tmpfs": lambda v, k: _strings(v, k, parse_tmpfs),
    "network": _networks,
    "add-host": lambda v, k: _strings(v, k, parse_add_host),
    "dns": lambda v, k: _strings(v, k, _dns),
    "memory": _memory,
    "cpus": _cpus,
    "pids-limit": _int_in(-1, 4_194_304),
    "ulimit": lambda v, k: _strings(v, k, Ulimit.parse),
    "user": _optional_str(_USER_RE, "use USER[:GROUP] or UID[:GID]"),
    "workdir": lambda v, k: abs_path(v, k),
    "entrypoint": _entrypoint,
    "label": _labels,
    "health-cmd": _health_cmd,
    "health-interval": _duration,
    "health-timeout": _duration,
    "health-retries": _int_in(0, 1000),
    "health-start-period": _duration,
    "read-only": _bool,
    "cap-add": lambda v, k: _strings(v, k, _cap),
    "cap-drop": lambda v, k: _strings(v, k, _cap),
    "stop-signal": _signal,
    "stop-timeout": _int_in(0, MAX_STOP_TIMEOUT),
    "log-driver": _optional_str(_LOG_RE, "use a logging driver's name (json-file, local, ...)"),
    "log-opt": lambda v, k: _mapping(v, k, re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")),
    "init": _bool,
}
assert set(_VALIDATORS) == set(FIELDS) == {f.name.replace("_", "-") for f in fields(RunOptions)}
