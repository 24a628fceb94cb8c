"""What a member of the lbctl group may ask for: the rules of /etc/lbctl/policy.toml.

The control socket lets every member of the `lbctl` group manage apps, and an app is a set of
containers the engine runs as root with whatever the spec asks for: a bind mount of `/`, a
port below 1024 (sshd's), a capability that escapes the container. Root may ask for all of
that; anyone else gets this policy, whose defaults let a member run a real service and
nothing that reaches past its containers.

The checks read an app's JSON (the API body, or the spec an update makes), not AppSpec: they
judge fields by their docker names whether or not this version's parser knows them, so the
ones the parser refuses (privileged, pid, ipc, device, ...) are refused here too. Each option
of the table (lbctl.model.options) says how it is judged (its `Judge` class), and there is
one rule per class here: an option cannot be added without its class, nor a class without
its rule. A value the checks cannot read is refused: a syntax the policy does not understand
is not a syntax it allows.

A bind source is judged here by its text (an allowed prefix, never a path that holds the
host's keys); what it is on disk, and what named volumes are, needs the engine's view and is
judged by controller.sources, at the change and again before every create.

Pure: no I/O but reading the file at start and looking up the host's privileged groups.
"""

from __future__ import annotations

import contextlib
import fnmatch
import grp
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lbctl.model import Forbidden, InvalidInput, Publish
from lbctl.model.docker_syntax import Mount, Ulimit, parse_duration, parse_size, parse_tmpfs
from lbctl.model.host import HostFacts
from lbctl.model.option import Judge
from lbctl.model.options import OPTIONS

DEFAULT_PATH = Path("/etc/lbctl/policy.toml")

# What `cap-add` may name by default: the capabilities both engines already give a container
# (Docker's default set less NET_RAW, MKNOD and AUDIT_WRITE, which Podman 4 drops), so an add
# grants nothing a plain `docker run` lacks; it makes `cap-drop ALL` + `cap-add
# NET_BIND_SERVICE` work, the usual hardening of a server.
ENGINE_DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE",
                       "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")
# Drivers that write where the engine keeps logs; others send a container's output to an
# address or a socket the spec names (syslog, fluentd, gelf, splunk, ...), from the host.
SAFE_LOG_DRIVERS = ("json-file", "local", "journald", "none")
# Fields that give a container the host, whatever their value (but "off").
_NEVER = ("privileged", "device", "device-cgroup-rule", "volumes-from", "cgroup-parent",
          "runtime", "gpus", "sysctl", "security-opt")
# Namespace fields: "host" or "container:X" share a namespace beyond the app's own.
_NAMESPACES = ("pid", "ipc", "uts", "userns", "cgroupns")
# Groups a member may not add to a replica's process (--group-add): root's, and the groups
# that own what a process of theirs reaches past the container with where such files are
# bind-mounted or shared (the engine's socket, disks, password hashes, sudo, the logs).
PRIVILEGED_GROUPS = ("root", "docker", "disk", "shadow", "sudo", "adm")
# A member's caps: a quarter of the spec's 64 replicas per app, half the daemon's 64 apps, so
# that members alone cannot fill the daemon's caps that bind root too.
DEFAULT_MAX_REPLICAS = 16
DEFAULT_MAX_APPS = 32
# Paths no member may bind-mount whatever allowed_bind_sources says, nor a directory that
# holds one, nor anything under one: the host's root, its kernel interfaces and devices, and
# what gives root: lbctl's control socket (a uid-0 process in a container is root to
# SO_PEERCRED) and state, the engines' sockets and data (every volume, every container's
# files), the policy itself. The daemon adds its actual socket, state dir and engine socket.
PROTECTED = ("/", "/proc", "/sys", "/dev", "/boot", "/run/lbctl", "/var/lib/lbctl",
             "/etc/lbctl", "/run/docker.sock", "/var/run/docker.sock", "/run/containerd",
             "/var/lib/docker", "/var/lib/containerd", "/run/podman", "/var/lib/containers",
             "/run/containers")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(RuntimeError):
    """The policy file cannot be used: the daemon does not start (it would else guess)."""


@dataclass(frozen=True)
class Policy:
    """The rules for callers other than root. The defaults are the built-in policy, the same
    as the shipped etc/policy.toml."""

    # Host ports, as inclusive ranges: none below 1024, the privileged ports (ssh, http...)
    # whose owner the host's users trust.
    allowed_ports: tuple[tuple[int, int], ...] = ((1024, 65535),)
    # Host addresses an app may publish on. Loopback only: publishing on 0.0.0.0 or a public
    # address exposes a service to the network, past the host's INPUT firewall (DNATed
    # traffic is forwarded, not input), which is the host admin's decision.
    allowed_host_ips: tuple[IPNetwork, ...] = (ipaddress.IPv4Network("127.0.0.0/8"),)
    # Host directories whose contents may be bind-mounted (volume "/src:/dst", mount
    # type=bind). None: a bind mount is the host's file system, root's to hand out.
    allowed_bind_sources: tuple[str, ...] = ()
    allowed_cap_add: frozenset[str] = frozenset(ENGINE_DEFAULT_CAPS)
    # Networks an app may join, as shell patterns (never "host" or "container:X").
    allowed_networks: tuple[str, ...] = ("*",)
    allowed_log_drivers: tuple[str, ...] = SAFE_LOG_DRIVERS
    # The largest pids-limit a member may set (and no unlimited, 0 or -1).
    max_pids_limit: int = 4096
    # Containers per app and apps on the host a member may grow to. Root is bound only by
    # the spec's maximum (64 replicas) and the daemon's --max-apps / --max-containers.
    max_replicas: int = DEFAULT_MAX_REPLICAS
    max_apps: int = DEFAULT_MAX_APPS
    # Networks and volumes lbctl creates for one member (a compose file's, a missing volume
    # an app names), counted by their `lbctl.owner` label; lbctl never removes them, root
    # does. Docker's default address pools hold about 30 bridge networks for everyone.
    max_networks: int = 4
    max_volumes: int = 16
    # What members' apps may hold together, counted at their peak (a rollout's surge and a
    # canary's extra replicas included): the sum of their replicas' pids limits and memory
    # limits. "N%" of the host's kernel.pid_max / memory, or a number (a size for memory);
    # 0: no ceiling. Half the host: members alone cannot exhaust either.
    max_pids_total: int | str = "50%"
    max_memory_total: int | str = "50%"
    # A member's replica whose app sets no --memory gets this limit (never unlimited, so
    # that the memory ceiling counts every replica of theirs).
    default_memory: str = "512m"
    # The shortest --health-interval: every check is a process the engine starts on the
    # host (an exec), and 1ms is a fork storm.
    min_health_interval: str = "1s"
    # The largest memlock rlimit (locked pages cannot be reclaimed); never unlimited.
    max_memlock: str = "64m"
    path: Path = DEFAULT_PATH
    from_file: bool = False
    # Not from the file: paths never bind-mounted (PROTECTED and the daemon's own), and the
    # host's numbers the ceilings are shares of (the daemon reads them at start).
    protected: tuple[str, ...] = PROTECTED
    host: HostFacts = field(default_factory=HostFacts)

    # ---- messages ------------------------------------------------------------------------

    def rule(self, key: str) -> str:
        if self.from_file:
            return f"{key} in {self.path}"
        return f"{key}: the built-in default, as there is no {self.path}"

    def _refuse(self, what: str, key: str) -> Forbidden:
        return Forbidden(f"policy: {what} ({self.rule(key)})")

    # ---- checks --------------------------------------------------------------------------

    def check_app(self, app: Mapping[str, Any], current_replicas: int = 0) -> None:
        """Every rule on one app's JSON; Forbidden names the first rule it breaks.
        `current_replicas`: what the app runs now (an update keeps a count above the cap)."""
        name = app.get("name")
        for key in _NEVER:
            self._root_only(key, app.get(key), name)
        for key in _NAMESPACES:
            self._namespace(key, app.get(key))
        self.check_publish(app.get("publish"))
        for o in OPTIONS:
            value = app.get(o.key)
            if value is not None:
                _RULES[o.judge](self, o.key, value, app)
        self.check_replicas(app.get("replicas", 1), current_replicas)

    # ---- what a member's replica gets where the app says nothing ---------------------------

    @property
    def default_memory_bytes(self) -> int:
        return parse_size(self.default_memory, "default_memory")

    def ceilings(self) -> tuple[int, int]:
        """(pids, memory bytes) members' apps may hold together (0: no ceiling)."""
        return (_share(self.max_pids_total, self.host.pid_max, int),
                _share(self.max_memory_total, self.host.mem_total, parse_size))

    # ---- one rule per Judge class: (policy, option key, its value (not None), the app) ----

    def _free(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        """Nothing to judge: the option reaches nothing beyond the app's containers."""

    def _volume_sources(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        for text in _items(value, key):
            parts = text.split(":")
            if len(parts) >= 2 and parts[0].startswith(("/", ".", "~")):
                self._check_bind(parts[0], f"{key} {text}")

    def _mount_sources(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        for text in _items(value, key):
            self._check_mount(text, app)

    def _networks(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        for net in _items(value, key):
            self.check_network(net)

    def _ulimits(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        """No unlimited or large memlock (pages nothing can reclaim), no realtime priority
        (`rtprio`: SCHED_FIFO starves the host's CPUs) or raised nice, nofile within what the
        kernel allows a process (fs.nr_open: beyond it every create fails)."""
        memlock = parse_size(self.max_memlock, "max_memlock")
        for text in _items(value, key):
            u = Ulimit.parse(text)
            if u.name == "memlock" and (-1 in (u.soft, u.hard) or u.hard > memlock):
                raise self._refuse(f"ulimit {text} is more than {self.max_memlock} of locked "
                                   "memory", "max_memlock")
            if u.name in ("rtprio", "nice") and (u.soft != 0 or u.hard != 0):
                raise Forbidden(f"policy: ulimit {text} is root's alone (a realtime or raised "
                                "priority can starve the host's CPUs)")
            if u.name == "nofile" and (-1 in (u.soft, u.hard) or u.hard > self.host.nr_open):
                raise Forbidden(f"policy: ulimit {text} is more than this host's fs.nr_open "
                                f"({self.host.nr_open})")

    def _memory_sizes(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        """A tmpfs or /dev/shm lives in the replica's memory: at most its memory limit (the
        app's, else default_memory), so that its size says what it can really hold."""
        for text in _items(value, key):
            if key == "shm-size":
                self._memory_size(key, parse_size(text, key), text, app)
                continue
            _, opts = parse_tmpfs(text)
            for item in opts.split(",") if opts else ():
                k, _, v = item.partition("=")
                if k == "size":
                    self._memory_size(key, parse_size(v, "tmpfs size"), text, app)

    def _memory_size(self, key: str, size: int, text: str, app: Mapping[str, Any]) -> None:
        memory = app.get("memory")
        limit = parse_size(memory, "memory") if memory is not None else self.default_memory_bytes
        if size > limit:
            shown = memory if memory is not None else f"default_memory {self.default_memory}"
            raise Forbidden(f"policy: {key} {text} is larger than the replica's memory "
                            f"({shown}), which its pages are part of")

    def _interval(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        seconds = parse_duration(value, key)
        floor = parse_duration(self.min_health_interval, "min_health_interval")
        if 0 < seconds < floor:
            raise self._refuse(f"{key} {value} is shorter than {self.min_health_interval}",
                               "min_health_interval")

    def _capabilities(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        for cap in _items(value, key):
            norm = cap.upper().removeprefix("CAP_")
            if norm not in self.allowed_cap_add:
                raise self._refuse(f"{key} {cap} is not allowed", "allowed_cap_add")

    def _log_driver(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        if value not in self.allowed_log_drivers:
            raise self._refuse(f"{key} {value!r} is not allowed", "allowed_log_drivers")

    def _pids_bound(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                1 <= value <= self.max_pids_limit):
            raise self._refuse(f"{key} {value!r} is not from 1 to {self.max_pids_limit}",
                               "max_pids_limit")

    def _groups(self, key: str, value: object, app: Mapping[str, Any]) -> None:
        """No group 0 and none of PRIVILEGED_GROUPS, by name (the image's /etc/group names
        them) or by the number they have on this host (which owns its files)."""
        host_gids = _host_gids(PRIVILEGED_GROUPS)
        for text in _items(value, key):
            if text in PRIVILEGED_GROUPS or (text.isascii() and text.isdigit() and (
                    int(text) == 0 or int(text) in host_gids)):
                raise Forbidden(f"policy: {key} {text} is root's alone (a privileged group: "
                                f"GID 0, {', '.join(PRIVILEGED_GROUPS[1:])} or their "
                                "numbers on this host)")

    def _namespace(self, key: str, value: object, app: Mapping[str, Any] | None = None) -> None:
        if isinstance(value, str) and (value == "host" or value.startswith("container:")):
            raise Forbidden(f"policy: {key} {value} shares a namespace beyond the app's own: "
                            "root's alone")
        if _given(value) and not isinstance(value, str):
            raise Forbidden(f"policy: cannot check {key} {value!r}")

    def _root_only(self, key: str, value: object, app: object = None) -> None:
        if _given(value) and not (key == "security-opt" and _harmless_secopt(value)):
            name = app.get("name") if isinstance(app, Mapping) else app
            raise Forbidden(f"policy: {key} is root's alone (it gives a container the "
                            f"host{'' if name is None else f'; app {name}'})")

    def check_publish(self, value: object) -> None:
        for text in _items(value, "publish"):
            p = Publish.parse(text)  # as the spec reads it (host IP 127.0.0.1 by default)
            if not any(lo <= p.host_port <= hi for lo, hi in self.allowed_ports):
                why = "is below 1024" if p.host_port < 1024 else "is not allowed"
                raise self._refuse(f"host port {p.host_port} {why}", "allowed_ports")
            ip = ipaddress.ip_address(p.host_ip.strip("[]"))
            if not any(ip.version == net.version and ip in net
                       for net in self.allowed_host_ips):
                hint = " (every address)" if p.host_ip == "0.0.0.0" else ""
                raise self._refuse(f"host IP {p.host_ip}{hint} is not allowed",
                                   "allowed_host_ips")

    def check_replicas(self, n: object, current: int = 0) -> None:
        """Growth past the cap only: scaling down an app above it (root's) is always fine."""
        if isinstance(n, int) and n > self.max_replicas and n > current:
            raise self._refuse(f"{n} replicas are more than {self.max_replicas}", "max_replicas")

    def check_network(self, net: str) -> None:
        if net == "host" or net.startswith("container:"):
            raise Forbidden(f"policy: network {net} is root's alone (the host's or another "
                            "container's network namespace)")
        if not any(fnmatch.fnmatchcase(net, pat) for pat in self.allowed_networks):
            raise self._refuse(f"network {net} is not allowed", "allowed_networks")

    def _check_mount(self, text: str, app: Mapping[str, Any]) -> None:
        kv: dict[str, str] = {}
        for item in text.split(","):
            k, _, v = item.partition("=")
            kv[{"src": "source"}.get(k.strip(), k.strip())] = v
        if any(k in kv for k in ("volume-driver", "volume-opt")):
            raise Forbidden(f"policy: mount {text}: volume drivers and their options (which "
                            "can bind any host path) are root's alone")
        kind = kv.get("type", "volume")
        if kind == "bind":
            self._check_bind(kv.get("source", ""), f"mount {text}")
        elif kind == "tmpfs":
            size = Mount.parse(text).tmpfs_size_bytes
            if size is not None:
                self._memory_size("mount", size, text, app)
        elif kind != "volume":
            raise Forbidden(f"policy: cannot check mount {text}")

    def _check_bind(self, source: str, what: str) -> None:
        """The text of a bind source: under an allowed prefix, and none of the host's keys.
        Symlinks and who can write the path are controller.sources' (the engine's view)."""
        if not source.startswith("/"):
            raise self._refuse(f"{what}: a bind mount needs an absolute source",
                               "allowed_bind_sources")
        norm = os.path.normpath(source)
        if not any(_under(norm, prefix) for prefix in self.allowed_bind_sources):
            raise self._refuse(f"bind mount of {source} is not allowed ({what})",
                               "allowed_bind_sources")
        if norm != (source.rstrip("/") or "/") or source.startswith("//"):
            raise self._refuse(f"bind mount of {source}: a member names the path as it is, "
                               f"without . or .. or // ({what})", "allowed_bind_sources")
        for key in self.protected:
            if norm == key or _under(key, norm) or (key != "/" and _under(norm, key)):
                holds = "is" if norm == key else "holds" if _under(key, norm) else "is under"
                raise Forbidden(f"policy: bind mount of {source} is never a member's: it "
                                f"{holds} {key}, which gives the host away ({what})")

    def check_resources(self, networks: Iterable[str]) -> None:
        """A compose file's networks to create: only names the member may join."""
        for net in networks:
            self.check_network(net)


_RULES: dict[Judge, Callable[[Policy, str, object, Mapping[str, Any]], None]] = {
    Judge.FREE: Policy._free,
    Judge.VOLUME_SOURCE: Policy._volume_sources,
    Judge.MOUNT_SOURCE: Policy._mount_sources,
    Judge.NETWORK: Policy._networks,
    Judge.CAPABILITY: Policy._capabilities,
    Judge.LOG_DRIVER: Policy._log_driver,
    Judge.PIDS_BOUND: Policy._pids_bound,
    Judge.GROUP: Policy._groups,
    Judge.NAMESPACE: Policy._namespace,
    Judge.ROOT_ONLY: Policy._root_only,
    Judge.ULIMIT: Policy._ulimits,
    Judge.MEMORY_SIZE: Policy._memory_sizes,
    Judge.INTERVAL: Policy._interval,
}


def _share(value: int | str, of: int, parse: Callable[[str], int]) -> int:
    """A ceiling: "N%" of the host's `of`, or an absolute number (0: none)."""
    if isinstance(value, str) and value.endswith("%"):
        return of * int(value[:-1]) // 100
    return value if isinstance(value, int) else parse(value)


def _host_gids(names: Iterable[str]) -> set[int]:
    gids = set()
    for name in names:
        with contextlib.suppress(KeyError):  # no such group here
            gids.add(grp.getgrnam(name).gr_gid)
    return gids


def _given(v: object) -> bool:
    return v is not None and v is not False and v != "" and v != [] and v != {}


def _harmless_secopt(v: object) -> bool:
    items = v if isinstance(v, list) else [v]
    return all(isinstance(x, str) and x.replace("=", ":") in (
        "no-new-privileges", "no-new-privileges:true") for x in items)


def _items(value: object, key: str) -> list[str]:
    """A field that is one string or a list of them; anything else cannot be judged."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return list(value)
    raise Forbidden(f"policy: cannot check {key} {value!r}")


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


# ---- the file ---------------------------------------------------------------------------------


def load(path: Path | None) -> Policy:
    """The policy in `path` (None: DEFAULT_PATH, which may be absent: the built-in defaults).
    An explicit path must exist: a typo must not silently mean the defaults."""
    explicit = path is not None
    path = path or DEFAULT_PATH
    try:
        st = path.stat()
    except FileNotFoundError:
        if explicit:
            raise PolicyError(f"policy file {path} does not exist") from None
        return Policy(path=path)
    except OSError as e:
        raise PolicyError(f"policy file {path}: {e.strerror}") from None
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PolicyError(f"policy file {path} must be owned by root and writable by root "
                          "only (anyone else could loosen it): chown root "
                          f"{path} && chmod go-w {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"policy file {path}: {e}") from None
    try:
        return parse(data, path)
    except InvalidInput as e:
        raise PolicyError(f"policy file {path}: {e}") from None


def parse(data: Mapping[str, Any], path: Path = DEFAULT_PATH) -> Policy:
    known = {f for f in Policy.__dataclass_fields__
             if f not in ("path", "from_file", "protected", "host")}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(f"unknown key(s) {', '.join(unknown)} (known: "
                           f"{', '.join(sorted(known))})")
    p = Policy(path=path, from_file=True)
    values: dict[str, Any] = {}
    if "allowed_ports" in data:
        values["allowed_ports"] = tuple(_port_range(x) for x in _list(data, "allowed_ports"))
    if "allowed_host_ips" in data:
        values["allowed_host_ips"] = tuple(_network(x) for x in _strs(data, "allowed_host_ips"))
    if "allowed_bind_sources" in data:
        srcs = _strs(data, "allowed_bind_sources")
        bad = [s for s in srcs if not s.startswith("/")]
        if bad:
            raise InvalidInput(f"allowed_bind_sources: {bad[0]!r} is not an absolute path")
        values["allowed_bind_sources"] = tuple(os.path.normpath(s) for s in srcs)
    if "allowed_cap_add" in data:
        values["allowed_cap_add"] = frozenset(
            c.upper().removeprefix("CAP_") for c in _strs(data, "allowed_cap_add"))
    for key in ("allowed_networks", "allowed_log_drivers"):
        if key in data:
            values[key] = tuple(_strs(data, key))
    for key, lo in (("max_pids_limit", 1), ("max_replicas", 0), ("max_apps", 0),
                    ("max_networks", 0), ("max_volumes", 0)):
        if key in data:
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidInput(f"{key} must be a whole number of at least {lo}, not {v!r}")
            values[key] = v
    for key in ("max_pids_total", "max_memory_total"):
        if key in data:
            values[key] = _ceiling(key, data[key], memory=key == "max_memory_total")
    for key, check in (("default_memory", _size), ("max_memlock", _size),
                       ("min_health_interval", _duration)):
        if key in data:
            values[key] = check(key, data[key])
    return replace(p, **values)


def _ceiling(key: str, v: object, memory: bool) -> int | str:
    """"N%" (1-100), a whole number (a size too, for memory), or 0 for none."""
    if isinstance(v, str) and re.fullmatch(r"[0-9]{1,3}%", v) and 1 <= int(v[:-1]) <= 100:
        return v
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if memory and isinstance(v, str):
        return _size(key, v)
    raise InvalidInput(f"{key} must be a share of the host (\"50%\"), "
                       f"{'a size (16g)' if memory else 'a whole number'} or 0, not {v!r}")


def _size(key: str, v: object) -> str:
    if not isinstance(v, str):
        raise InvalidInput(f"{key} must be a size like \"512m\", not {v!r}")
    parse_size(v, key)
    return v


def _duration(key: str, v: object) -> str:
    if not isinstance(v, str):
        raise InvalidInput(f"{key} must be a duration like \"1s\", not {v!r}")
    parse_duration(v, key)
    return v


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    v = data[key]
    if not isinstance(v, list):
        raise InvalidInput(f"{key} must be a list")
    return v


def _strs(data: Mapping[str, Any], key: str) -> list[str]:
    v = _list(data, key)
    if not all(isinstance(x, str) for x in v):
        raise InvalidInput(f"{key} must be a list of strings")
    return v


def _port_range(x: object) -> tuple[int, int]:
    """8080, "8080" or "8000-8999" (ASCII digits only, nothing around them: fullmatch)."""
    text = str(x) if isinstance(x, int) and not isinstance(x, bool) else x
    if isinstance(text, str):
        m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", text)
        if m:
            lo, hi = int(m[1]), int(m[2] or m[1])
            if 1 <= lo <= hi <= 65535:
                return lo, hi
    raise InvalidInput(f"allowed_ports: {x!r} is not a port or a range LOW-HIGH in 1-65535")


def _network(x: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(x.strip("[]"))
    except ValueError:
        raise InvalidInput(f"allowed_host_ips: {x!r} is not an IP address or network "
                           "(127.0.0.0/8, 0.0.0.0 for every address)") from None


__all__ = ["DEFAULT_PATH", "Policy", "PolicyError", "load", "parse"]
