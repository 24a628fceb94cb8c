"""docker run's options (`lbctl.model.options.RunOptions`) as the engine's create JSON: what
`docker run` itself sends for the same flags, so a replica inspects like the container the
user would have started by hand. Pure: tested without an engine.

Networks are not here: which networks a container joins is decided with the app's mode in
`lbctl.controller.template` and applied by the engine facade (a create names one network, the
others are connected before the start).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lbctl.model.docker_syntax import Mount, parse_duration, parse_tmpfs
from lbctl.model.options import RunOptions


def _ns(text: str | None, what: str) -> int | None:
    return None if text is None else round(parse_duration(text, what) * 1e9)


def create_config(opts: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Config fields, HostConfig fields) for `opts`; only what was given appears."""
    config: dict[str, Any] = {}
    host: dict[str, Any] = {}
    binds: list[str] = []
    anonymous: dict[str, dict[str, Any]] = {}
    for v in opts.volumes():
        if v.source is None:
            anonymous[v.target] = {}
        else:
            binds.append(":".join([v.source, v.target, *([",".join(v.options)]
                                                          if v.options else [])]))
    if binds:
        host["Binds"] = binds
    if anonymous:
        config["Volumes"] = anonymous
    mounts = [_mount(m) for m in opts.mounts()]
    if mounts:
        host["Mounts"] = mounts
    if opts.tmpfs:
        host["Tmpfs"] = dict(parse_tmpfs(t) for t in opts.tmpfs)
    if opts.add_host:
        host["ExtraHosts"] = list(opts.add_host)
    if opts.dns:
        host["Dns"] = list(opts.dns)
    memory = opts.memory_bytes()
    if memory is not None:
        host["Memory"] = memory
    if opts.cpus is not None:
        host["NanoCpus"] = round(opts.cpus * 1e9)
    if opts.pids_limit is not None:
        host["PidsLimit"] = opts.pids_limit
    if opts.ulimit:
        host["Ulimits"] = [{"Name": u.name, "Soft": u.soft, "Hard": u.hard}
                           for u in opts.ulimits()]
    if opts.user is not None:
        config["User"] = opts.user
    if opts.workdir is not None:
        config["WorkingDir"] = opts.workdir
    if opts.entrypoint is not None:
        config["Entrypoint"] = list(opts.entrypoint)
    if opts.label:
        config["Labels"] = dict(opts.label)
    health = _healthcheck(opts)
    if health:
        config["Healthcheck"] = health
    if opts.read_only:
        host["ReadonlyRootfs"] = True
    if opts.cap_add:
        host["CapAdd"] = list(opts.cap_add)
    if opts.cap_drop:
        host["CapDrop"] = list(opts.cap_drop)
    if opts.stop_signal is not None:
        config["StopSignal"] = opts.stop_signal
    if opts.stop_timeout is not None:
        config["StopTimeout"] = opts.stop_timeout
    if opts.log_driver is not None or opts.log_opt:
        host["LogConfig"] = {"Type": opts.log_driver or "", "Config": dict(opts.log_opt)}
    if opts.init:
        host["Init"] = True
    return config, host


def _mount(m: Mount) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": m.type, "Target": m.target, "ReadOnly": m.read_only}
    if m.source is not None:
        out["Source"] = m.source
    if m.propagation is not None:
        out["BindOptions"] = {"Propagation": m.propagation}
    if m.nocopy:
        out["VolumeOptions"] = {"NoCopy": True}
    tmpfs: dict[str, int] = {}
    if m.tmpfs_size_bytes is not None:
        tmpfs["SizeBytes"] = m.tmpfs_size_bytes
    if m.tmpfs_mode_bits is not None:
        tmpfs["Mode"] = m.tmpfs_mode_bits
    if tmpfs:
        out["TmpfsOptions"] = tmpfs
    return out


def _healthcheck(opts: RunOptions) -> dict[str, Any]:
    """docker run's --health-* flags: a string command runs in the shell (CMD-SHELL), a list
    is the exec form (CMD); durations in nanoseconds. Unset parts are the image's."""
    h: dict[str, Any] = {}
    if isinstance(opts.health_cmd, str):
        h["Test"] = ["CMD-SHELL", opts.health_cmd]
    elif opts.health_cmd is not None:
        h["Test"] = ["CMD", *opts.health_cmd]
    for key, text in (("Interval", opts.health_interval), ("Timeout", opts.health_timeout),
                      ("StartPeriod", opts.health_start_period)):
        ns = _ns(text, f"health-{key.lower()}")
        if ns is not None:
            h[key] = ns
    if opts.health_retries is not None:
        h["Retries"] = opts.health_retries
    return h


def merge_ulimits(defaults: Sequence[Mapping[str, Any]], given: Sequence[Mapping[str, Any]]
                  ) -> list[Mapping[str, Any]]:
    """The engine's default ulimits (Podman needs explicit ones) under the app's own."""
    names = {u["Name"] for u in given}
    return [*(u for u in defaults if u["Name"] not in names), *given]
