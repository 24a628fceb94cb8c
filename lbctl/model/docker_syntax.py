"""Docker's small syntaxes, parsed and validated: sizes (`512m`), Go durations (`1m30s`),
`-v SOURCE:TARGET[:OPTIONS]`, `--mount type=...,source=...,target=...`, `--ulimit`,
`--tmpfs`, `--add-host`, `--group-add`, and volume and network names; and their forms in the
engine's API. Pure; the option table (lbctl.model.options) validates an app's options with
them and says with them what the engine is sent.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from lbctl.model.errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # docker's volume/network name rule
HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([bkmgtp]?)b?\Z", re.IGNORECASE)
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
_GROUP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?\Z")  # useradd's names (and Samba's $)
MAX_GID = (1 << 32) - 2  # (gid_t)-1 means "no change" to the kernel
# The engine's numbers are Go int64s: anything larger fails its JSON decoding at create time
# (a crash loop, not an answer), so it is refused here, as bad input.
MAX_INT64 = (1 << 63) - 1
# Signal names as the engine reads --stop-signal (moby's signal.SignalMap for Linux, "SIG"
# optional, any case), and RTMIN+N / RTMAX-N up to the 32 real-time signals.
SIGNALS = frozenset({
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
    "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
    "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    "RTMIN", "RTMAX", *(f"RTMIN+{i}" for i in range(1, 16)), *(f"RTMAX-{i}" for i in range(1, 15)),
})
# --tmpfs options the engine passes to mount(2): flags, and KEY=VALUE data (size and
# nr_inodes/nr_blocks are sizes, mode octal, uid/gid numbers).
_TMPFS_FLAGS = frozenset({
    "defaults", "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync",
    "async", "dirsync", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime",
    "relatime", "norelatime", "strictatime", "nostrictatime", "tmpcopyup", "notmpcopyup",
})
_TMPFS_SIZES = frozenset({"size", "nr_inodes", "nr_blocks"})

# `--network host`: replicas in the host's own network namespace (lbctl's fastest path, ebpf
# mode only; see lbctl.model.spec.check_host_network).
HOST_NETWORK = "host"
# The default network: Docker's bridge (docker0), where lbctl's replicas always lived.
DEFAULT_NETWORK = "bridge"


def parse_size(text: object, what: str = "size") -> int:
    """Docker's byte sizes: `512m`, `1g`, `1.5g`, `64MB`, or a number of bytes; at most
    the engine's largest number (2^63 - 1 bytes)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        n = text
    else:
        m = _SIZE_RE.match(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise InvalidInput(f"invalid {what} {_short(text)}: use a number with b, k, m or g "
                               "(512m)")
        # Decimal, not float: exact to the byte, and 400 digits are a large number, not inf.
        n = int(Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n > MAX_INT64:
        raise InvalidInput(f"{what} {_short(text)} is larger than the engine's largest size "
                           "(8 EiB)")
    return n


def _short(v: object) -> str:
    """A value as an error line shows it: repr, cut to 60 characters (a 400-digit number
    stays one readable line)."""
    text = repr(v)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"


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


def abs_path(text: object, what: str) -> str:
    if not isinstance(text, str) or not text.startswith("/") or len(text) > 4096 or any(
        ch in text for ch in "\0\n,"
    ):
        raise InvalidInput(f"invalid {what} {_short(text)}: use an absolute path")
    return text


def target_path(text: object, what: str) -> str:
    """Where a volume, mount or tmpfs goes in the container: an absolute path that is not
    the root (the engine refuses `/` as a destination, at every create)."""
    path = abs_path(text, what)
    if os.path.normpath(path) in ("/", "//"):
        raise InvalidInput(f"invalid {what} {path!r}: the container's root cannot be a mount "
                           "target")
    return path


def resource_name(name: object, kind: str) -> str:
    """A volume's or network's name, as Docker allows it."""
    if not isinstance(name, str) or len(name) < 2 or len(name) > 255 or not NAME_RE.match(
        name
    ):
        raise InvalidInput(f"invalid {kind} name {name!r}: use letters, digits, _ . -")
    return name


def _volume_name(text: str, whole: str) -> str:
    if len(text) < 2 or len(text) > 255 or not NAME_RE.match(text):
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
            return cls(None, target_path(parts[0], f"volume target in {text!r}"))
        source, target = parts[0], target_path(parts[1], f"volume target in {text!r}")
        if not source.startswith("/"):
            _volume_name(source, text)
            if any(o in _PROPAGATION for o in opts):
                raise InvalidInput(f"invalid volume {text!r}: propagation is for bind mounts")
        else:
            abs_path(source, f"volume source in {text!r}")
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

    def engine_json(self) -> dict[str, Any]:
        """As HostConfig.Mounts takes it (what docker run sends for the same --mount)."""
        out: dict[str, Any] = {"Type": self.type, "Target": self.target,
                               "ReadOnly": self.read_only}
        if self.source is not None:
            out["Source"] = self.source
        if self.propagation is not None:
            out["BindOptions"] = {"Propagation": self.propagation}
        if self.nocopy:
            out["VolumeOptions"] = {"NoCopy": True}
        tmpfs: dict[str, int] = {}
        if self.tmpfs_size_bytes is not None:
            tmpfs["SizeBytes"] = self.tmpfs_size_bytes
        if self.tmpfs_mode_bits is not None:
            tmpfs["Mode"] = self.tmpfs_mode_bits
        if tmpfs:
            out["TmpfsOptions"] = tmpfs
        return out

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
        target = target_path(kv.get("target"), f"mount target in {text!r}")
        source = kv.get("source")
        if kind == "bind":
            source = abs_path(source, f"bind source in {text!r}")
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
            parse_size(size, f"tmpfs-size in {_short(text)}")
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

    def engine_json(self) -> dict[str, Any]:
        return {"Name": self.name, "Soft": self.soft, "Hard": self.hard}

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
        if not re.fullmatch(r"-?[0-9]+", soft_s) or (
                hard_s and not re.fullmatch(r"-?[0-9]+", hard_s)):
            raise InvalidInput(f"invalid ulimit {_short(text)}: limits are whole numbers")
        if len(soft_s) > 20 or len(hard_s) > 20:
            raise InvalidInput(f"invalid ulimit {_short(text)}: a limit is at most 2^63 - 1")
        try:
            soft = int(soft_s)
            hard = int(hard_s) if hard_s else soft
        except ValueError:
            raise InvalidInput(f"invalid ulimit {text!r}: limits are whole numbers") from None
        if soft > MAX_INT64 or hard > MAX_INT64:
            raise InvalidInput(f"invalid ulimit {_short(text)}: a limit is at most 2^63 - 1")
        if soft < -1 or hard < -1 or (hard != -1 and (soft == -1 or soft > hard)):
            raise InvalidInput(f"invalid ulimit {text!r}: the soft limit exceeds the hard one")
        return cls(name, soft, hard)


def parse_tmpfs(text: object) -> tuple[str, str]:
    """`--tmpfs /path[:options]` -> (path, options)."""
    if not isinstance(text, str):
        raise InvalidInput(f"invalid tmpfs {text!r}: use /PATH[:OPTIONS]")
    path, _, opts = text.partition(":")
    target_path(path, f"tmpfs path in {_short(text)}")
    if opts and not re.fullmatch(r"[a-z_]+(=[A-Za-z0-9]+)?(,[a-z_]+(=[A-Za-z0-9]+)?)*", opts):
        raise InvalidInput(f"invalid tmpfs options in {_short(text)}: use size=64m,mode=1777,...")
    for item in opts.split(",") if opts else ():
        key, eq, value = item.partition("=")
        if eq and key in _TMPFS_SIZES:
            parse_size(value, f"tmpfs {key} in {_short(text)}")
            continue
        if not (
            (not eq and key in _TMPFS_FLAGS)
            or (key == "mode" and re.fullmatch(r"[0-7]{1,4}", value))
            or (key in ("uid", "gid") and re.fullmatch(r"[0-9]{1,10}", value)
                and int(value) <= MAX_GID)
        ):
            raise InvalidInput(f"invalid tmpfs option {_short(item)} in {_short(text)}: use "
                               "size=64m, mode=1777, uid=N, gid=N, nr_inodes=N or a mount flag "
                               "(noexec, nosuid, ...)")
    return path, opts


def parse_add_host(text: object) -> tuple[str, str]:
    """`--add-host host:ip` (the IP may be IPv6, or docker's `host-gateway`)."""
    if not isinstance(text, str) or ":" not in text:
        raise InvalidInput(f"invalid add-host {text!r}: use HOST:IP")
    host, _, ip = text.partition(":")
    if not HOST_RE.match(host) or len(host) > 253:
        raise InvalidInput(f"invalid host name {host!r} in add-host {text!r}")
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise InvalidInput(f"invalid IP {ip!r} in add-host {text!r}") from None
        if "%" in ip:  # a zone: /etc/hosts of another namespace has no such interface
            raise InvalidInput(f"invalid IP {ip!r} in add-host {text!r}: no %zone")
    return host, ip


def parse_group(item: object) -> str:
    """`--group-add GROUP`: a group name (looked up in the image's /etc/group) or a number."""
    if isinstance(item, str):
        if item.isascii() and item.isdigit():
            if int(item) <= MAX_GID:
                return item
        elif _GROUP_RE.match(item) and len(item) <= 64:
            return item
    raise InvalidInput(f"invalid group-add {item!r}: use a group name or a number")


def volume_engine_json(volumes: list[Volume]) -> tuple[dict[str, Any], list[str]]:
    """-v as docker run sends it: (Config.Volumes for anonymous volumes, HostConfig.Binds
    for the others)."""
    anonymous: dict[str, Any] = {}
    binds: list[str] = []
    for v in volumes:
        if v.source is None:
            anonymous[v.target] = {}
        else:
            binds.append(":".join([v.source, v.target, *([",".join(v.options)]
                                                          if v.options else [])]))
    return anonymous, binds


def absolute_bind(volume: str, base: Path) -> str:
    """`-v ./conf:/etc/app` -> the absolute host path, from `base` (the daemon has no working
    directory: the command line resolves it where the user typed it, as docker run does)."""
    source, sep, rest = volume.partition(":")
    if sep and (source.startswith(("./", "../", "~")) or source in (".", "..")):
        source = os.path.normpath(base / os.path.expanduser(source))
        return f"{source}:{rest}"
    return volume


def health_cmd_text(text: str) -> str | list[str]:
    """--health-cmd: a shell command, as in docker run; a JSON list is the exec form (a
    Dockerfile's HEALTHCHECK CMD [...]), for images without a shell."""
    if text.lstrip().startswith("["):
        try:
            cmd = json.loads(text)
        except ValueError:
            raise InvalidInput(f"--health-cmd {text!r} is not a JSON list of strings") from None
        if not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd):
            raise InvalidInput(f"--health-cmd {text!r} is not a JSON list of strings")
        return cmd
    return text


def health_test(cmd: str | tuple[str, ...]) -> list[str]:
    """Config.Healthcheck.Test: a string runs in the image's shell (CMD-SHELL), a list is
    the exec form (CMD)."""
    return ["CMD-SHELL", cmd] if isinstance(cmd, str) else ["CMD", *cmd]


def duration_ns(text: str) -> int:
    """A Go duration as the engine's nanoseconds."""
    return round(parse_duration(text) * 1e9)
