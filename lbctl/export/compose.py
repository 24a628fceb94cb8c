"""`lbctl export --format compose`: a file to run *with* lbctl, not instead of it.

Compose cannot put N replicas on one host port (the second one gets `port is already
allocated`), which is the very thing lbctl exists for; so the service carries the label
`lbctl.app=NAME` (lbctl adopts every container it starts), `expose`s the container port and
publishes nothing itself. The host port stays lbctl's: the header says which `lbctl run ...
--replicas 0` owns it, and `x-lbctl` carries it for tools. No `version` key and
`deploy.replicas` (not `scale`, which may not be set beside it): the Compose Specification,
read by docker-compose 1.29 and by Compose v2 alike.

The file round-trips: `lbctl apply -f` of it gives the same spec (docker run's options in
compose's words; declared volumes and networks carry their engine names in `name:`). With no
`--network`, the service says `network_mode: bridge` (Docker's default network, where such an
app's replicas run), not compose's project network. `command` is the container's Cmd: lbctl
sets Cmd and keeps the image's entrypoint. Every replica gets `LBCTL_APP`; `LBCTL_REPLICA` is
absent (one environment for all of a service's containers: the demo image then answers with
its hostname).
"""

from __future__ import annotations

import copy
from typing import Any, assert_never

from lbctl.export.common import dump, publish_field, publish_flags
from lbctl.model import LABEL_APP, AppSpec
from lbctl.model.docker_syntax import DEFAULT_NETWORK, HOST_NETWORK, Mount, Volume
from lbctl.model.option import Shape
from lbctl.model.options import OPTIONS, RunOptions
from lbctl.model.update_policy import UpdatePolicy

_NO_OPTIONS = RunOptions()


def to_compose(spec: AppSpec) -> str:
    pub = spec.publish
    o = spec.options
    service: dict[str, Any] = {"image": spec.image}
    x_lbctl: dict[str, Any] = {"app": spec.name, "publish": publish_field(spec),
                               "mode": str(spec.mode)}
    if spec.activation is not None:
        x_lbctl["activation"] = spec.activation
    if spec.update != UpdatePolicy():
        x_lbctl["update"] = spec.update.to_json()
    if spec.readiness.changed():
        x_lbctl["readiness"] = spec.readiness.changed()
    if spec.release is not None:
        x_lbctl["release"] = spec.to_json()["release"]
    service["x-lbctl"] = x_lbctl
    if spec.command:
        service["command"] = list(spec.command)
    env = {**spec.env, "LBCTL_APP": spec.name}
    service["environment"] = env
    service["expose"] = [f"{pub.container_port}/{pub.proto}"]
    service["deploy"] = {"replicas": spec.replicas}
    volumes, networks = compose_options(o, service)
    service["labels"] = {**service.get("labels", {}), LABEL_APP: spec.name}
    service = _ordered(service, ("image", "x-lbctl", "entrypoint", "command", "environment",
                                 "labels", "expose", "deploy"))
    doc: dict[str, Any] = {"services": {spec.name: service}}
    if volumes:
        doc["volumes"] = {v: {"name": v} for v in volumes}
    if networks:
        doc["networks"] = {n: {"name": n} for n in networks}
    # Also at the top level, where tools that read only a file's extensions find it.
    # A deep copy: YAML would write an anchor for the same dict or list (publish, update).
    doc["x-lbctl"] = copy.deepcopy(x_lbctl)
    header = (
        f"# {spec.name}: exported by `lbctl export {spec.name} --format compose`.\n"
        f"# Run it with lbctl:   lbctl apply -f THIS_FILE\n"
        f"# or beside lbctl: Compose cannot share one host port between replicas; lbctl\n"
        f"# publishes it and adopts these containers (label {LABEL_APP}={spec.name}):\n"
        f"#   lbctl run {spec.name} --image {spec.image} {publish_flags(spec)} --replicas 0 "
        f"--mode iptables\n"
        f"#   docker-compose up -d\n"
        + ("# (an app with socket activation serves its own replicas alone: lbctl hands\n"
           "# them their listeners)\n" if spec.activated else
           f"# (beside an ebpf-mode app: network_mode: container:{spec.name}-sandbox, and no\n"
           f"# networks:, puts these containers in the namespace its program serves)\n")
    )
    return header + dump(doc)


def _ordered(d: dict[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    """`d` with the keys of `first` first, for a reader: the options fill their keys in the
    table's order."""
    return {**{k: d[k] for k in first if k in d}, **d}


def compose_options(o: RunOptions, svc: dict[str, Any]) -> tuple[list[str], list[str]]:
    """docker run's options in compose's words (each option's `compose` entry in the table);
    returns the named volumes and networks the file must declare."""
    named: list[str] = []
    networks: list[str] = []
    for opt in OPTIONS:
        v = getattr(o, opt.attr)
        # No networks: compose would mean its project network; the app's is Docker's bridge.
        if v == getattr(_NO_OPTIONS, opt.attr) and opt.compose.shape is not Shape.NETWORKS:
            continue
        key = opt.compose.key
        match opt.compose.shape:
            case Shape.AS_IS | Shape.TEXT | Shape.NUMBER:
                _put(svc, key, v)
            case Shape.TEXTS | Shape.TEXT_OR_TEXTS | Shape.HOSTS | Shape.COMMAND:
                _put(svc, key, list(v))
            case Shape.PAIRS | Shape.LABELS:
                _put(svc, key, dict(v))
            case Shape.SECONDS:
                _put(svc, key, f"{v}s")
            case Shape.HEALTH_TEST:
                _put(svc, key, v if isinstance(v, str) else ["CMD", *v])
            case Shape.ULIMITS:
                limits: dict[str, Any] = {}
                for text in v:
                    name, _, value = text.partition("=")
                    soft, colon, hard = value.partition(":")
                    limits[name] = {"soft": int(soft), "hard": int(hard)} if colon else int(soft)
                _put(svc, key, limits)
            case Shape.SHORT_VOLUMES:
                for text in v:
                    vol = Volume.parse(text)
                    if vol.source is not None and not vol.bind and vol.source not in named:
                        named.append(vol.source)
                    svc.setdefault(key, []).append(text)
            case Shape.LONG_VOLUMES:
                for text in v:
                    m = Mount.parse(text)
                    if m.type == "volume" and m.source is not None and m.source not in named:
                        named.append(m.source)
                    svc.setdefault(key, []).append(_long_volume(m))
            case Shape.NETWORKS:
                if v == (HOST_NETWORK,):
                    svc["network_mode"] = HOST_NETWORK
                elif v:
                    svc[key] = list(v)
                    networks += v
                else:
                    svc["network_mode"] = DEFAULT_NETWORK
            case _:
                assert_never(opt.compose.shape)
    return named, networks


def _put(svc: dict[str, Any], key: str, value: object) -> None:
    """`healthcheck.interval` is `interval` in the service's `healthcheck` mapping."""
    *parents, last = key.split(".")
    for part in parents:
        svc = svc.setdefault(part, {})
    svc[last] = value


def _long_volume(m: Mount) -> dict[str, Any]:
    out: dict[str, Any] = {"type": m.type}
    if m.source is not None:
        out["source"] = m.source
    out["target"] = m.target
    if m.read_only:
        out["read_only"] = True
    if m.propagation is not None:
        out["bind"] = {"propagation": m.propagation}
    if m.nocopy:
        out["volume"] = {"nocopy": True}
    tmpfs: dict[str, Any] = {}
    if m.tmpfs_size is not None:
        tmpfs["size"] = m.tmpfs_size
    if m.tmpfs_mode is not None:
        tmpfs["mode"] = m.tmpfs_mode
    if tmpfs:
        out["tmpfs"] = tmpfs
    return out
