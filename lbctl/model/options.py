"""The `docker run` options real services need, as part of an app's spec.

Users know these from `docker run`, so they keep docker's names and syntaxes everywhere: on
the command line (`-v data:/data`, `--memory 512m`), and as fields of TOML, the API and the
state file, named like the long flag (`volume`, `pids-limit`, `health-cmd`; singular, the
dashes kept). Values are stored as the user wrote them, once validated here, so `export` and
`update` show the user's own words; `lbctl.runtime.options` turns them into the engine's
create JSON.

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
# The default network: Docker's bridge (docker0), where lbctl's replicas always lived.
DEFAULT_NETWORK = "bridge"

MAX_ITEMS = 64  # of any list option: far beyond a real service, short of a hostile body
MAX_STOP_TIMEOUT = 600

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # docker's volume/network name rule
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_CAP_RE = re.compile(r"^[A-Za-z][A-Za-z_]*$")
_SIGNAL_RE = re.compile(r"^(SIG)?[A-Z][A-Z0-9]*(\+[0-9]+)?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_LOG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([bkmgtp]?)b?$", re.IGNORECASE)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_VOLUME_OPTS = frozenset({"ro", "rw", "z", "Z", "nocopy", "shared", "slave", "private",
                          "rshared", "rslave", "rprivate", "consistent", "cached", "delegated"})
_PROPAGATION = frozenset({"shared", "slave", "private", "rshared", "rslave", "rprivate"})
_ULIMITS = frozenset({"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
                      "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"})
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
               "p": 1 << 50}
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}
MIN_MEMORY = 6 * (1 << 20)  # Docker's own minimum


# ---- docker's small syntaxes ----------------------------------------------------------------


def parse_size(text: object, what: str = "size") -> int:
    """Docker's byte sizes: `512m`, `1g`, `1.5g`, `64MB`, or a number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = _SIZE_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise InvalidInput(f"invalid {what} {text!r}: use a number with b, k, m or g (512m)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: object, what: str = "duration") -> float:
    """Go's durations, as docker and compose take them: `30s`, `1m30s`, `500ms`; seconds."""
    if isinstance(text, str) and text == "0":
        return 0.0
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"invalid {what} {text!r}: use a duration like 30s, 1m30s or 500ms")
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise InvalidInput(f"invalid {what} {text!r}: use a duration like 30s, 1m30s "
                               "or 500ms")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if total > 24 * 3600:
        raise InvalidInput(f"{what} {text!r} is longer than a day")
    return total


def _abs_path(text: object, what: str) -> str:
    if not isinstance(text, str) or not text.startswith("/") or len(text) > 4096 or any(
        ch in text for ch in "\0\n,"
    ):
        raise InvalidInput(f"invalid {what} {text!r}: use an absolute path")
    return text


def resource_name(name: object, kind: str) -> str:
    """A volume's or network's name, as Docker allows it."""
    if not isinstance(name, str) or len(name) < 2 or len(name) > 255 or not _NAME_RE.match(
        name
    ):
        raise InvalidInput(f"invalid {kind} name {name!r}: use letters, digits, _ . -")
    return name


def _volume_name(text: str, whole: str) -> str:
    if len(text) < 2 or len(text) > 255 or not _NAME_RE.match(text):
        raise InvalidInput(f"invalid volume {whole!r}: the source is an absolute host path "
                           "or a volume name (letters, digits, _ . -)")
    return text


@dataclass(frozen=True)
class Volume:
    """`-v [SOURCE:]TARGET[:OPTIONS]`: SOURCE an absolute host path (bind) or a volume name;
    no SOURCE: an anonymous volume, one per replica, removed with it."""

    source: str | None
    target: str
    options: tuple[str, ...] = ()

    @property
    def bind(self) -> bool:
        return self.source is not None and self.source.startswith("/")

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    @classmethod
    def parse(cls, text: object) -> Volume:
        if not isinstance(text, str) or not text:
            raise InvalidInput(f"invalid volume {text!r}: use SOURCE:TARGET[:ro]")
        parts = text.split(":")
        if len(parts) > 3:
            raise InvalidInput(f"invalid volume {text!r}: use SOURCE:TARGET[:OPTIONS]")
        opts: tuple[str, ...] = ()
        if len(parts) == 3:
            opts = tuple(parts[2].split(","))
            bad = [o for o in opts if o not in _VOLUME_OPTS]
            if bad:
                raise InvalidInput(f"invalid volume option {bad[0]!r} in {text!r}: use ro, rw, "
                                   "z, Z, nocopy or a propagation (rshared, ...)")
            if "ro" in opts and "rw" in opts:
                raise InvalidInput(f"invalid volume {text!r}: ro and rw together")
        if len(parts) == 1:
            return cls(None, _abs_path(parts[0], f"volume target in {text!r}"))
        source, target = parts[0], _abs_path(parts[1], f"volume target in {text!r}")
        if not source.startswith("/"):
            _volume_name(source, text)
            if any(o in _PROPAGATION for o in opts):
                raise InvalidInput(f"invalid volume {text!r}: propagation is for bind mounts")
        else:
            _abs_path(source, f"volume source in {text!r}")
        return cls(source, target, opts)


@dataclass(frozen=True)
class Mount:
    """`--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,...]`."""

    type: str
    target: str
    source: str | None = None
    read_only: bool = False
    propagation: str | None = None  # bind
    nocopy: bool = False  # volume
    tmpfs_size: str | None = None  # as written (64m)
    tmpfs_mode: str | None = None  # octal, as written (1777)

    def __str__(self) -> str:
        """The canonical --mount text: one spelling per mount (`src`, `dst`, `ro=true` ...
        become source, target, readonly), so spellings do not make revisions."""
        parts = [f"type={self.type}"]
        if self.source is not None:
            parts.append(f"source={self.source}")
        parts.append(f"target={self.target}")
        if self.read_only:
            parts.append("readonly")
        if self.propagation is not None:
            parts.append(f"bind-propagation={self.propagation}")
        if self.nocopy:
            parts.append("volume-nocopy")
        if self.tmpfs_size is not None:
            parts.append(f"tmpfs-size={self.tmpfs_size}")
        if self.tmpfs_mode is not None:
            parts.append(f"tmpfs-mode={self.tmpfs_mode}")
        return ",".join(parts)

    @property
    def tmpfs_size_bytes(self) -> int | None:
        return None if self.tmpfs_size is None else parse_size(self.tmpfs_size, "tmpfs-size")

    @property
    def tmpfs_mode_bits(self) -> int | None:
        return None if self.tmpfs_mode is None else int(self.tmpfs_mode, 8)

    @classmethod
    def parse(cls, text: object) -> Mount:
        if not isinstance(text, str) or not text:
            raise InvalidInput(f"invalid mount {text!r}: use type=...,source=...,target=...")
        kv: dict[str, str] = {}
        for item in text.split(","):
            k, eq, v = item.partition("=")
            k = {"src": "source", "dst": "target", "destination": "target",
                 "ro": "readonly"}.get(k, k)
            if k in kv:
                raise InvalidInput(f"invalid mount {text!r}: {k} given twice")
            if not eq and k not in ("readonly", "volume-nocopy"):
                raise InvalidInput(f"invalid mount {text!r}: {item!r} needs a value")
            kv[k] = v if eq else "true"
        known = {"type", "source", "target", "readonly", "bind-propagation", "volume-nocopy",
                 "tmpfs-size", "tmpfs-mode"}
        unknown = sorted(set(kv) - known)
        if unknown:
            raise InvalidInput(f"unsupported mount key {unknown[0]!r} in {text!r} (lbctl takes "
                               f"{', '.join(sorted(known))})")
        kind = kv.get("type", "volume")
        if kind not in ("bind", "volume", "tmpfs"):
            raise InvalidInput(f"invalid mount type {kind!r} in {text!r}: use bind, volume "
                               "or tmpfs")
        target = _abs_path(kv.get("target"), f"mount target in {text!r}")
        source = kv.get("source")
        if kind == "bind":
            source = _abs_path(source, f"bind source in {text!r}")
        elif kind == "volume":
            if source is not None:
                _volume_name(source, text)
        elif source is not None:
            raise InvalidInput(f"invalid mount {text!r}: a tmpfs has no source")
        for key, kinds in (("bind-propagation", ("bind",)), ("volume-nocopy", ("volume",)),
                           ("tmpfs-size", ("tmpfs",)), ("tmpfs-mode", ("tmpfs",))):
            if key in kv and kind not in kinds:
                raise InvalidInput(f"invalid mount {text!r}: {key} is for type={kinds[0]}")
        prop = kv.get("bind-propagation")
        if prop is not None and prop not in _PROPAGATION:
            raise InvalidInput(f"invalid bind-propagation {prop!r} in {text!r}")
        mode = kv.get("tmpfs-mode")
        if mode is not None and not re.fullmatch(r"[0-7]{1,4}", mode):
            raise InvalidInput(f"invalid tmpfs-mode {mode!r} in {text!r}: use octal (1777)")
        size = kv.get("tmpfs-size")
        if size is not None:
            parse_size(size, f"tmpfs-size in {text!r}")
        return cls(
            kind, target, source,
            read_only=_flag(kv.get("readonly", "false"), text),
            propagation=prop,
            nocopy=_flag(kv.get("volume-nocopy", "false"), text),
            tmpfs_size=size,
            tmpfs_mode=mode,
        )


def _flag(v: str, whole: str) -> bool:
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise InvalidInput(f"invalid mount {whole!r}: {v!r} is not true or false")


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int
    hard: int

    @classmethod
    def parse(cls, text: object) -> Ulimit:
        """`name=soft[:hard]` (-1: unlimited)."""
        if not isinstance(text, str) or "=" not in text:
            raise InvalidInput(f"invalid ulimit {text!r}: use NAME=SOFT[:HARD] (nofile=1024:4096)")
        name, _, limits = text.partition("=")
        if name not in _ULIMITS:
            raise InvalidInput(f"invalid ulimit name {name!r}: use one of "
                               f"{', '.join(sorted(_ULIMITS))}")
        soft_s, _, hard_s = limits.partition(":")
        try:
            soft = int(soft_s)
            hard = int(hard_s) if hard_s else soft
        except ValueError:
            raise InvalidInput(f"invalid ulimit {text!r}: limits are whole numbers") from None
        if soft < -1 or hard < -1 or (hard != -1 and (soft == -1 or soft > hard)):
            raise InvalidInput(f"invalid ulimit {text!r}: the soft limit exceeds the hard one")
        return cls(name, soft, hard)


def parse_tmpfs(text: object) -> tuple[str, str]:
    """`--tmpfs /path[:options]` -> (path, options)."""
    if not isinstance(text, str):
        raise InvalidInput(f"invalid tmpfs {text!r}: use /PATH[:OPTIONS]")
    path, _, opts = text.partition(":")
    _abs_path(path, f"tmpfs path in {text!r}")
    if opts and not re.fullmatch(r"[a-z_]+(=[A-Za-z0-9]+)?(,[a-z_]+(=[A-Za-z0-9]+)?)*", opts):
        raise InvalidInput(f"invalid tmpfs options in {text!r}: use size=64m,mode=1777,...")
    return path, opts


def parse_add_host(text: object) -> tuple[str, str]:
    """`--add-host host:ip` (the IP may be IPv6, or docker's `host-gateway`)."""
    if not isinstance(text, str) or ":" not in text:
        raise InvalidInput(f"invalid add-host {text!r}: use HOST:IP")
    host, _, ip = text.partition(":")
    if not _HOST_RE.match(host) or len(host) > 253:
        raise InvalidInput(f"invalid host name {host!r} in add-host {text!r}")
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise InvalidInput(f"invalid IP {ip!r} in add-host {text!r}") from None
    return host, ip


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
    labels = _mapping(v, key, re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$"))
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
    if name in ("host", "none") or not _NAME_RE.match(name) or len(name) > 255:
        raise InvalidInput(f"invalid network {name!r}: use the name of a bridge network "
                           "(`docker network create NAME`); host, none and container: modes "
                           "would leave lbctl no address to send traffic to")


def _networks(v: Any, key: str) -> tuple[str, ...]:
    nets = _strings(v, key, _network)
    if len(set(nets)) != len(nets):
        raise InvalidInput(f"{key}: a network is named twice")
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
    "workdir": lambda v, k: _abs_path(v, k),
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
    "log-opt": lambda v, k: _mapping(v, k, re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")),
    "init": _bool,
}
assert set(_VALIDATORS) == set(FIELDS) == {f.name.replace("_", "-") for f in fields(RunOptions)}
