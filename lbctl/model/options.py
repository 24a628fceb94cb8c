"""The `docker run` options real services need, as part of an app's spec: one table, one entry
per option.

Users know these from `docker run`, so they keep docker's names and syntaxes everywhere: on
the command line (`-v data:/data`, `--memory 512m`), and as fields of TOML, the API and the
state file, named like the long flag (`volume`, `pids-limit`, `health-cmd`; singular, the
dashes kept). Values are stored as the user wrote them (a `--mount` in one canonical
spelling), once validated (lbctl.model.option_values), so `export` and `update` show the
user's own words.

`RunOptions` is the table: each field is an option, declared with `opt(...)` (see
lbctl.model.option), which says its flags, how its value is checked, where the engine takes
it, its compose key, its Kubernetes fields and how the members' policy judges it. The command
line, the engine's create JSON, the compose reader and exporter, the Kubernetes exporter and
the policy all loop over `OPTIONS`: adding an option is adding its field here.

Options that belong to a network namespace (`network`, `add-host`, `dns`, see
NAMESPACE_FIELDS) go on the app's sandbox in ebpf mode: replicas join its namespace with
`--network container:<sandbox>`, share its /etc/hosts and /etc/resolv.conf, and Docker refuses
these options on a container that joins another's namespace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from lbctl.model import option_values as values
from lbctl.model.docker_syntax import (
    DEFAULT_NETWORK,
    HOST_NETWORK,
    Mount,
    Ulimit,
    Volume,
    absolute_bind,
    duration_ns,
    health_cmd_text,
    health_test,
    parse_add_host,
    parse_duration,
    parse_group,
    parse_size,
    parse_tmpfs,
    volume_engine_json,
)
from lbctl.model.errors import InvalidInput
from lbctl.model.option import (
    Arg,
    Compose,
    CreateJSON,
    Judge,
    NotExported,
    Option,
    Patch,
    Refines,
    Shape,
    Unmapped,
    merge,
    nest,
    opt,
    table,
)

__all__ = ["DEFAULT_NETWORK", "FIELDS", "HOST_NETWORK", "NAMESPACE_FIELDS", "OPTIONS",
           "RunOptions"]

_MI = 1 << 20


def _volumes(given: tuple[str, ...], out: CreateJSON) -> None:
    anonymous, binds = volume_engine_json([Volume.parse(v) for v in given])
    if binds:
        out.host["Binds"] = binds
    if anonymous:
        out.config["Volumes"] = anonymous


def _log_config(part: str) -> Callable[[object, CreateJSON], None]:
    """A part of HostConfig.LogConfig, which docker run always sends whole."""

    def put(v: object, out: CreateJSON) -> None:
        log = out.host.setdefault("LogConfig", {"Type": "", "Config": {}})
        log[part] = dict(v) if isinstance(v, Mapping) else v

    return put


def _quantity(text: str) -> str:
    """A size as a Kubernetes quantity: Mi when it is whole mebibytes, else bytes."""
    n = parse_size(text)
    return f"{n // _MI}Mi" if n % _MI == 0 else str(n)


# A health check's timings alone tune the image's own check, which Kubernetes cannot run.
_IMAGES_CHECK = "health-* (timings of the image's own health check)"


def _probe_seconds(part: str) -> Refines[str]:
    """A health check's duration as the liveness probe's (whole seconds, at least 1)."""

    def write(text: str) -> Patch:
        return nest(f"container.livenessProbe.{part}", max(1, math.ceil(parse_duration(text))))

    return Refines("health-cmd", _IMAGES_CHECK, write)


def _host_aliases(hosts: tuple[str, ...]) -> Patch:
    by_ip: dict[str, list[str]] = {}
    for h in hosts:
        name, _, ip = h.partition(":")
        by_ip.setdefault(ip, []).append(name)
    return nest("pod.hostAliases", [{"ip": ip, "hostnames": names}
                                    for ip, names in by_ip.items()])


def _run_as(user: str) -> Patch | Unmapped:
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return Unmapped("user (a name; Kubernetes takes a numeric runAsUser)")
    ids = {"runAsUser": int(uid), **({"runAsGroup": int(gid)} if gid else {})}
    return nest("container.securityContext", ids)


# ---- volumes in Kubernetes: what `lbctl export --format kubernetes` makes of them -----------
# A pod's volume per mount, named after its target (unique in a container); a named Docker
# volume becomes a PersistentVolumeClaim of the same name, which the exporter writes out
# (the patch's `claims`); what a pod cannot say goes to the header (`notes`).


def _dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63].rstrip("-") or "root"


_BIND = ("cannot be exported to Kubernetes: a pod has no host's files to bind (hostPath would "
         "tie it to one node's); put them in a ConfigMap or a volume")


def _pod_volume(volume: dict[str, Any], target: str, read_only: bool = False) -> Patch:
    name = _dns_label(f"v-{target}")
    mount: dict[str, Any] = {"name": name, "mountPath": target}
    if read_only:
        mount["readOnly"] = True
    return {"pod": {"volumes": [{"name": name, **volume}]},
            "container": {"volumeMounts": [mount]}}


def _claim(source: str, target: str, read_only: bool) -> Patch:
    claim = _dns_label(source)
    patch = _pod_volume({"persistentVolumeClaim": {"claimName": claim}}, target, read_only)
    patch["claims"] = {claim: source}
    return patch


def _memory_dir(target: str, size: int | None) -> Patch:
    empty: dict[str, Any] = {"medium": "Memory"}
    if size is not None:
        empty["sizeLimit"] = f"{size // _MI}Mi" if size % _MI == 0 else str(size)
    return _pod_volume({"emptyDir": empty}, target)


def _kube_volumes(given: tuple[str, ...]) -> Patch:
    patch: Patch = {}
    for text in given:
        v = Volume.parse(text)
        if v.bind:
            raise InvalidInput(f"bind mount {text} {_BIND}")
        merge(patch, _pod_volume({"emptyDir": {}}, v.target) if v.source is None
              else _claim(v.source, v.target, v.read_only))
    return patch


def _kube_mounts(given: tuple[str, ...]) -> Patch:
    patch: Patch = {}
    for text in given:
        m = Mount.parse(text)
        if m.type == "bind":
            raise InvalidInput(f"bind mount {text} {_BIND}")
        if m.type == "tmpfs":
            merge(patch, _memory_dir(m.target, m.tmpfs_size_bytes))
            if m.tmpfs_mode is not None:
                merge(patch, {"notes": [f"mount tmpfs-mode of {m.target}"]})
        else:
            merge(patch, _pod_volume({"emptyDir": {}}, m.target) if m.source is None
                  else _claim(m.source, m.target, m.read_only))
    return patch


def _kube_tmpfs(given: tuple[str, ...]) -> Patch:
    patch: Patch = {}
    for text in given:
        path, opts = parse_tmpfs(text)
        kv = dict(item.partition("=")[::2] for item in opts.split(",") if item)
        size = kv.pop("size", None)
        merge(patch, _memory_dir(path, None if size is None else parse_size(size)))
        if kv:  # an emptyDir has no mount options
            merge(patch, {"notes": [f"tmpfs {','.join(kv)} of {path}"]})
    return patch


def _kube_network(networks: tuple[str, ...]) -> Patch | Unmapped:
    if networks == (HOST_NETWORK,):
        return nest("pod", {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"})
    return Unmapped("network (pods reach each other through Services, not named networks)")


@dataclass(frozen=True)
class RunOptions:
    """docker run's options of an app, as validated strings and numbers (None / empty:
    not given, the image's or the engine's default). One field per option, in the order of
    `to_json` and of `lbctl run --help`."""

    volume: tuple[str, ...] = opt(
        (), flags=("-v", "--volume"), arg=Arg.MANY, value=values.strings(Volume.parse),
        metavar="[SRC:]DST[:OPTS]",
        help="named volume, absolute (or ./relative) host path, or anonymous",
        from_cli=absolute_bind,
        engine=_volumes,
        compose=Compose("volumes", Shape.SHORT_VOLUMES),
        kube=_kube_volumes,
        judge=Judge.VOLUME_SOURCE)
    mount: tuple[str, ...] = opt(
        (), flags=("--mount",), arg=Arg.MANY, value=values.canonical(Mount.parse),
        metavar="type=...,source=...,target=...",
        engine="HostConfig.Mounts",
        engine_value=lambda ms: [Mount.parse(m).engine_json() for m in ms],
        compose=Compose("volumes", Shape.LONG_VOLUMES),
        kube=_kube_mounts,
        judge=Judge.MOUNT_SOURCE)
    tmpfs: tuple[str, ...] = opt(
        (), flags=("--tmpfs",), arg=Arg.MANY, value=values.strings(parse_tmpfs),
        metavar="PATH[:OPTS]",
        engine="HostConfig.Tmpfs", engine_value=lambda ts: dict(parse_tmpfs(t) for t in ts),
        compose=Compose("tmpfs", Shape.TEXT_OR_TEXTS),
        kube=_kube_tmpfs,
        judge=Judge.MEMORY_SIZE)
    network: tuple[str, ...] = opt(
        (), flags=("--network",), arg=Arg.MANY, value=values.networks, metavar="NET",
        help="user-defined bridge network(s); the first carries the app's traffic (ebpf "
             "mode: the sandbox joins them)",
        engine=None,  # joined as lbctl.controller.template decides with the app's mode
        compose=Compose("networks", Shape.NETWORKS),
        kube=_kube_network,
        judge=Judge.NETWORK, namespace=True)
    add_host: tuple[str, ...] = opt(
        (), flags=("--add-host",), arg=Arg.MANY, value=values.strings(parse_add_host),
        metavar="HOST:IP",
        engine="HostConfig.ExtraHosts",
        compose=Compose("extra_hosts", Shape.HOSTS),
        kube=_host_aliases,
        judge=Judge.FREE, namespace=True)
    dns: tuple[str, ...] = opt(
        (), flags=("--dns",), arg=Arg.MANY, value=values.strings(values.ip_address),
        metavar="IP",
        engine="HostConfig.Dns",
        compose=Compose("dns", Shape.TEXT_OR_TEXTS),
        kube=lambda ips: nest("pod.dnsConfig.nameservers", ips),
        judge=Judge.FREE, namespace=True)
    memory: str | None = opt(
        None, flags=("-m", "--memory"), arg=Arg.ONE,
        value=values.size(values.MIN_MEMORY, "the engine's minimum of 6m"), metavar="SIZE",
        help="memory limit (512m, 1g)",
        engine="HostConfig.Memory", engine_value=parse_size,
        compose=Compose("mem_limit", Shape.TEXT, limit="memory"),
        kube=lambda m: nest("container.resources.limits.memory", _quantity(m)),
        judge=Judge.FREE)
    cpus: float | None = opt(
        None, flags=("--cpus",), arg=Arg.ONE, value=values.cpus, metavar="N",
        help="CPU limit (0.5, 2)",
        engine="HostConfig.NanoCpus", engine_value=lambda n: round(n * 1e9),
        compose=Compose("cpus", Shape.NUMBER, limit="cpus"),
        kube=lambda n: nest("container.resources.limits.cpu", f"{n:g}"),
        judge=Judge.FREE)
    pids_limit: int | None = opt(
        None, flags=("--pids-limit",), arg=Arg.ONE, value=values.int_in(-1, 4_194_304),
        metavar="N", cli_type=int,
        engine="HostConfig.PidsLimit",
        compose=Compose("pids_limit", limit="pids"),
        kube=NotExported("the kubelet's podPidsLimit is the node's"),
        judge=Judge.PIDS_BOUND)
    ulimit: tuple[str, ...] = opt(
        (), flags=("--ulimit",), arg=Arg.MANY, value=values.strings(Ulimit.parse),
        metavar="NAME=SOFT[:HARD]",
        engine="HostConfig.Ulimits",
        engine_value=lambda us: [Ulimit.parse(u).engine_json() for u in us],
        compose=Compose("ulimits", Shape.ULIMITS),
        kube=NotExported("a pod has no rlimits"),
        judge=Judge.ULIMIT)
    user: str | None = opt(
        None, flags=("-u", "--user"), arg=Arg.ONE,
        value=values.text(values.USER_RE, "use USER[:GROUP] or UID[:GID]"),
        metavar="USER[:GROUP]",
        engine="Config.User",
        compose=Compose("user", Shape.TEXT),
        kube=_run_as,
        judge=Judge.FREE)
    workdir: str | None = opt(
        None, flags=("-w", "--workdir"), arg=Arg.ONE, value=values.path, metavar="DIR",
        engine="Config.WorkingDir",
        compose=Compose("working_dir", Shape.TEXT),
        kube=lambda d: nest("container.workingDir", d),
        judge=Judge.FREE)
    entrypoint: tuple[str, ...] | None = opt(
        None, flags=("--entrypoint",), arg=Arg.ONE, value=values.entrypoint, metavar="CMD",
        from_cli=lambda cmd, _: [cmd],
        engine="Config.Entrypoint",
        compose=Compose("entrypoint", Shape.COMMAND),
        kube=lambda cmd: nest("container.command", cmd),
        judge=Judge.FREE)
    label: Mapping[str, str] = opt(
        factory=dict, flags=("-l", "--label"), arg=Arg.PAIRS, value=values.labels,
        metavar="KEY=VALUE",
        engine="Config.Labels",
        compose=Compose("labels", Shape.LABELS),
        # Docker labels are free-form; Kubernetes labels are not: annotations keep them.
        kube=lambda ls: nest("annotations", ls),
        judge=Judge.FREE)
    health_cmd: str | tuple[str, ...] | None = opt(
        None, flags=("--health-cmd",), arg=Arg.ONE, value=values.health_cmd, metavar="CMD",
        help='run in the image\'s shell; a JSON list (\'["/httpd","--check"]\') runs '
             "without one",
        from_cli=lambda cmd, _: health_cmd_text(cmd),
        engine="Config.Healthcheck.Test", engine_value=health_test,
        compose=Compose("healthcheck.test", Shape.HEALTH_TEST),
        kube=lambda c: nest("container.livenessProbe.exec.command",
                           ["/bin/sh", "-c", c] if isinstance(c, str) else c),
        judge=Judge.FREE)
    health_interval: str | None = opt(
        None, flags=("--health-interval",), arg=Arg.ONE, value=values.duration,
        metavar="DURATION",
        engine="Config.Healthcheck.Interval", engine_value=duration_ns,
        compose=Compose("healthcheck.interval", Shape.TEXT),
        kube=_probe_seconds("periodSeconds"),
        judge=Judge.INTERVAL)
    health_timeout: str | None = opt(
        None, flags=("--health-timeout",), arg=Arg.ONE, value=values.duration,
        metavar="DURATION",
        engine="Config.Healthcheck.Timeout", engine_value=duration_ns,
        compose=Compose("healthcheck.timeout", Shape.TEXT),
        kube=_probe_seconds("timeoutSeconds"),
        judge=Judge.FREE)
    health_retries: int | None = opt(
        None, flags=("--health-retries",), arg=Arg.ONE, value=values.int_in(0, 1000),
        metavar="N", cli_type=int,
        engine="Config.Healthcheck.Retries",
        compose=Compose("healthcheck.retries"),
        kube=Refines("health-cmd", _IMAGES_CHECK, lambda n: nest(
            "container.livenessProbe.failureThreshold", n) if n else {}),
        judge=Judge.FREE)
    health_start_period: str | None = opt(
        None, flags=("--health-start-period",), arg=Arg.ONE, value=values.duration,
        metavar="DURATION",
        engine="Config.Healthcheck.StartPeriod",
        engine_value=duration_ns,
        compose=Compose("healthcheck.start_period", Shape.TEXT),
        kube=_probe_seconds("initialDelaySeconds"),
        judge=Judge.FREE)
    read_only: bool = opt(
        False, flags=("--read-only",), arg=Arg.SWITCH, value=values.boolean,
        engine="HostConfig.ReadonlyRootfs",
        compose=Compose("read_only"),
        kube=lambda ro: nest("container.securityContext.readOnlyRootFilesystem", ro),
        judge=Judge.FREE)
    cap_add: tuple[str, ...] = opt(
        (), flags=("--cap-add",), arg=Arg.MANY, value=values.strings(values.capability),
        metavar="CAP",
        engine="HostConfig.CapAdd",
        compose=Compose("cap_add", Shape.TEXTS),
        kube=lambda caps: nest("container.securityContext.capabilities.add", caps),
        judge=Judge.CAPABILITY)
    cap_drop: tuple[str, ...] = opt(
        (), flags=("--cap-drop",), arg=Arg.MANY, value=values.strings(values.capability),
        metavar="CAP",
        engine="HostConfig.CapDrop",
        compose=Compose("cap_drop", Shape.TEXTS),
        kube=lambda caps: nest("container.securityContext.capabilities.drop", caps),
        judge=Judge.FREE)
    stop_signal: str | None = opt(
        None, flags=("--stop-signal",), arg=Arg.ONE, value=values.signal, metavar="SIGNAL",
        engine="Config.StopSignal",
        compose=Compose("stop_signal", Shape.TEXT),
        kube=NotExported("the kubelet stops a container with the image's STOPSIGNAL"),
        judge=Judge.FREE)
    stop_timeout: int | None = opt(
        None, flags=("--stop-timeout",), arg=Arg.ONE,
        value=values.int_in(0, values.MAX_STOP_TIMEOUT),
        metavar="SECONDS", cli_type=int,
        engine="Config.StopTimeout",
        compose=Compose("stop_grace_period", Shape.SECONDS),
        kube=lambda s: nest("pod.terminationGracePeriodSeconds", s),
        judge=Judge.FREE)
    log_driver: str | None = opt(
        None, flags=("--log-driver",), arg=Arg.ONE,
        value=values.text(values.LOG_DRIVER_RE,
                          "use a logging driver's name (json-file, local, ...)"),
        metavar="DRIVER",
        engine=_log_config("Type"),
        compose=Compose("logging.driver"),
        kube=NotExported("the cluster collects containers' output its own way"),
        judge=Judge.LOG_DRIVER)
    log_opt: Mapping[str, str] = opt(
        factory=dict, flags=("--log-opt",), arg=Arg.PAIRS,
        value=values.pairs(values.LOG_OPT_RE),
        metavar="KEY=VALUE",
        engine=_log_config("Config"),
        compose=Compose("logging.options", Shape.PAIRS),
        kube=NotExported("as log-driver"),
        judge=Judge.FREE)
    init: bool = opt(
        False, flags=("--init",), arg=Arg.SWITCH, value=values.boolean,
        engine="HostConfig.Init",
        compose=Compose("init"),
        kube=NotExported("a pod has no init process of the runtime's"),
        judge=Judge.FREE)
    # /dev/shm is a tmpfs whose pages are charged to the replica's memory cgroup like any it
    # writes, as with --tmpfs: a member's may be as large as the replica's memory limit.
    shm_size: str | None = opt(
        None, flags=("--shm-size",), arg=Arg.ONE,
        value=values.size(1, "one byte (leave it out for the engine's 64m)"), metavar="SIZE",
        help="size of /dev/shm (64m, 1g)",
        engine="HostConfig.ShmSize", engine_value=parse_size,
        compose=Compose("shm_size", Shape.TEXT),
        kube=lambda s: {
            "pod": {"volumes": [{"name": "dshm", "emptyDir": {
                "medium": "Memory", "sizeLimit": _quantity(s)}}]},
            "container": {"volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}},
        judge=Judge.MEMORY_SIZE)
    group_add: tuple[str, ...] = opt(
        (), flags=("--group-add",), arg=Arg.MANY, value=values.strings(parse_group),
        metavar="GROUP", help="another group of the container's process (name or GID)",
        engine="HostConfig.GroupAdd",
        compose=Compose("group_add", Shape.TEXTS),
        kube=lambda gs: (
            nest("pod.securityContext.supplementalGroups", [int(g) for g in gs])
            if all(g.isdigit() for g in gs)
            else Unmapped("group-add (a name; Kubernetes takes numeric supplementalGroups)")),
        judge=Judge.GROUP)

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

    def given(self) -> list[tuple[Option[Any], Any]]:
        """The options set to something other than their default, with their values."""
        return [(o, getattr(self, o.attr)) for o in OPTIONS
                if getattr(self, o.attr) != getattr(_DEFAULT, o.attr)]

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Only what was given: an app without options keeps the JSON (and the spec hash) it
        had before options existed, so upgrading lbctl rolls no replica."""
        out: dict[str, Any] = {}
        for o, v in self.given():
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(sorted(v.items()))
            out[o.key] = v
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunOptions:
        """The option fields of an app's JSON (other keys are the caller's)."""
        values: dict[str, Any] = {}
        for o in OPTIONS:
            if data.get(o.key) is not None:
                values[o.attr] = o.value(data[o.key], o.key)
        opts = cls(**values)
        opts._check_targets()
        return opts

    def _check_targets(self) -> None:
        targets: list[str] = [v.target for v in self.volumes()]
        targets += [m.target for m in self.mounts()]
        targets += [parse_tmpfs(t)[0] for t in self.tmpfs]
        dup = sorted({t for t in targets if targets.count(t) > 1})
        if dup:
            raise InvalidInput(f"{dup[0]} is mounted twice (volume, mount and tmpfs targets "
                               "must differ)")

    def without(self, *keys: str) -> RunOptions:
        """These options reset to their defaults (`lbctl update --unset`)."""
        return replace(self, **{FIELDS[k]: getattr(_DEFAULT, FIELDS[k]) for k in keys})


OPTIONS: tuple[Option[Any], ...] = table(RunOptions)
# JSON field name -> RunOptions attribute, in the table's order.
FIELDS: dict[str, str] = {o.key: o.attr for o in OPTIONS}
# Set on the sandbox in ebpf mode (Docker refuses them beside `--network container:...`).
NAMESPACE_FIELDS = frozenset(o.key for o in OPTIONS if o.namespace)
_DEFAULT = RunOptions()
