"""`lbctl export`: an app as a docker-compose file or as Kubernetes manifests. Pure: no I/O.

Both renderers take the daemon's `GET /apps/NAME/spec` (an `AppSpec`) and return YAML text.

- **compose**: a file to run *with* lbctl, not instead of it. Compose cannot put N replicas
  on one host port (the second one gets `port is already allocated`), which is the very thing
  lbctl exists for; so the service carries the label `lbctl.app=NAME` (lbctl adopts every
  container it starts), `expose`s the container port and publishes nothing itself. The host
  port stays lbctl's: the header says which `lbctl run ... --replicas 0` owns it, and
  `x-lbctl` carries it for tools. No `version` key and `deploy.replicas` (not `scale`, which
  may not be set beside it): the Compose Specification, read by docker-compose 1.29 and by
  Compose v2 alike.
- **kubernetes**: a Deployment and a Service of type LoadBalancer. LoadBalancer, not
  NodePort: a NodePort must lie in 30000-32767, while a LoadBalancer's `port` can be exactly
  lbctl's host port (`targetPort` = the container port), as a single-node k3s (ServiceLB)
  binds it on the node like lbctl does.

The compose file round-trips: `lbctl apply -f` of it gives the same spec (docker run's options
in compose's words; declared volumes and networks carry their engine names in `name:`). With
no `--network`, the service says `network_mode: bridge` (Docker's default network, where such
an app's replicas run), not compose's project network.

In both, `command` is the container's Cmd (compose `command`, Kubernetes `args`): lbctl sets
Cmd and keeps the image's entrypoint. Every replica gets `LBCTL_APP`; `LBCTL_REPLICA` is the
pod name in Kubernetes and absent in compose (one environment for all of a service's
containers: the demo image then answers with its hostname).
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import yaml

from lbctl.model import LABEL_APP, AppSpec, InvalidInput
from lbctl.model.docker_syntax import Mount, Volume, parse_duration
from lbctl.model.options import RunOptions
from lbctl.model.rollout import UpdatePolicy

FORMATS = ("compose", "kubernetes")


def export(spec: AppSpec, fmt: str) -> str:
    if fmt == "compose":
        return to_compose(spec)
    if fmt in ("kubernetes", "k8s"):
        return to_kubernetes(spec)
    raise InvalidInput(f"unknown export format {fmt!r}: use {' or '.join(FORMATS)}")


def _dump(*docs: Any) -> str:
    # safe_dump quotes what YAML 1.1 would misread ("8080:8080" is a base-60 number to it,
    # "yes" a boolean), so the output means what the spec says.
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def to_compose(spec: AppSpec) -> str:
    pub = spec.publish
    o = spec.options
    service: dict[str, Any] = {"image": spec.image}
    x_lbctl: dict[str, Any] = {"app": spec.name, "publish": _publish_field(spec),
                               "mode": str(spec.mode)}
    if spec.update != UpdatePolicy():
        x_lbctl["update"] = spec.update.to_json()
    service["x-lbctl"] = x_lbctl
    if o.entrypoint is not None:
        service["entrypoint"] = list(o.entrypoint)
    if spec.command:
        service["command"] = list(spec.command)
    env = {**spec.env, "LBCTL_APP": spec.name}
    service["environment"] = env
    service["labels"] = {**o.label, LABEL_APP: spec.name}
    service["expose"] = [f"{pub.container_port}/{pub.proto}"]
    service["deploy"] = {"replicas": spec.replicas}
    volumes, networks = _compose_options(o, service)
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
        f"#   lbctl run {spec.name} --image {spec.image} {_publish_flags(spec)} --replicas 0 "
        f"--mode iptables\n"
        f"#   docker-compose up -d\n"
        f"# (beside an ebpf-mode app: network_mode: container:{spec.name}-sandbox, and no\n"
        f"# networks:, puts these containers in the namespace its program serves)\n"
    )
    return header + _dump(doc)


def _publish_field(spec: AppSpec) -> str | list[str]:
    """One publish as a string, several as a list: as in lbctl's own JSON."""
    pubs = [str(p) for p in spec.publishes]
    return pubs[0] if len(pubs) == 1 else pubs


def _publish_flags(spec: AppSpec) -> str:
    return " ".join(f"-p {p}" for p in spec.publishes)


def _compose_options(o: RunOptions, svc: dict[str, Any]) -> tuple[list[str], list[str]]:
    """docker run's options in compose's words; returns the named volumes and networks the
    file must declare."""
    named: list[str] = []
    vols: list[Any] = []
    for text in o.volume:
        vol = Volume.parse(text)
        if vol.source is not None and not vol.bind and vol.source not in named:
            named.append(vol.source)
        vols.append(text)
    for text in o.mount:
        m = Mount.parse(text)
        vols.append(_long_volume(m))
        if m.type == "volume" and m.source is not None and m.source not in named:
            named.append(m.source)
    if vols:
        svc["volumes"] = vols
    if o.tmpfs:
        svc["tmpfs"] = list(o.tmpfs)
    if o.host_network:
        svc["network_mode"] = "host"
    elif o.network:
        svc["networks"] = list(o.network)
    else:
        svc["network_mode"] = "bridge"
    if o.add_host:
        svc["extra_hosts"] = list(o.add_host)
    if o.dns:
        svc["dns"] = list(o.dns)
    if o.memory is not None:
        svc["mem_limit"] = o.memory
    if o.cpus is not None:
        svc["cpus"] = o.cpus
    if o.pids_limit is not None:
        svc["pids_limit"] = o.pids_limit
    if o.ulimit:
        limits: dict[str, Any] = {}
        for text in o.ulimit:
            name, _, value = text.partition("=")
            soft, colon, hard = value.partition(":")
            limits[name] = {"soft": int(soft), "hard": int(hard)} if colon else int(soft)
        svc["ulimits"] = limits
    if o.user is not None:
        svc["user"] = o.user
    if o.workdir is not None:
        svc["working_dir"] = o.workdir
    health: dict[str, Any] = {}
    if isinstance(o.health_cmd, str):
        health["test"] = o.health_cmd
    elif o.health_cmd is not None:
        health["test"] = ["CMD", *o.health_cmd]
    for key, v in (("interval", o.health_interval), ("timeout", o.health_timeout),
                   ("start_period", o.health_start_period)):
        if v is not None:
            health[key] = v
    if o.health_retries is not None:
        health["retries"] = o.health_retries
    if health:
        svc["healthcheck"] = health
    if o.read_only:
        svc["read_only"] = True
    if o.init:
        svc["init"] = True
    if o.cap_add:
        svc["cap_add"] = list(o.cap_add)
    if o.cap_drop:
        svc["cap_drop"] = list(o.cap_drop)
    if o.stop_signal is not None:
        svc["stop_signal"] = o.stop_signal
    if o.stop_timeout is not None:
        svc["stop_grace_period"] = f"{o.stop_timeout}s"
    if o.log_driver is not None or o.log_opt:
        logging: dict[str, Any] = {}
        if o.log_driver is not None:
            logging["driver"] = o.log_driver
        if o.log_opt:
            logging["options"] = dict(o.log_opt)
        svc["logging"] = logging
    return named, [] if o.host_network else list(o.network)


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


def k8s_name(name: str) -> str:
    """An lbctl app name as a DNS-1035 label (Service names): `_` and `.` become `-`."""
    out = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not out or not out[0].isalpha():
        out = "app-" + out
    return out[:63].rstrip("-")


_MI = 1 << 20


def _k8s_options(o: RunOptions, container: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """docker run's options as container and pod fields where Kubernetes has the same thing;
    returns the options it has not, which the header names (never dropped silently)."""
    left: list[str] = []
    limits: dict[str, str] = {}
    memory = o.memory_bytes()
    if memory is not None:
        limits["memory"] = f"{memory // _MI}Mi" if memory % _MI == 0 else str(memory)
    if o.cpus is not None:
        limits["cpu"] = f"{o.cpus:g}"
    if limits:
        container["resources"] = {"limits": limits}
    if o.workdir is not None:
        container["workingDir"] = o.workdir
    security: dict[str, Any] = {}
    if o.user is not None:
        uid, _, gid = o.user.partition(":")
        if uid.isdigit() and (not gid or gid.isdigit()):
            security["runAsUser"] = int(uid)
            if gid:
                security["runAsGroup"] = int(gid)
        else:
            left.append("user (a name; Kubernetes takes a numeric runAsUser)")
    if o.read_only:
        security["readOnlyRootFilesystem"] = True
    caps: dict[str, list[str]] = {}
    if o.cap_add:
        caps["add"] = list(o.cap_add)
    if o.cap_drop:
        caps["drop"] = list(o.cap_drop)
    if caps:
        security["capabilities"] = caps
    if security:
        container["securityContext"] = security
    if o.health_cmd is not None:
        cmd = (["/bin/sh", "-c", o.health_cmd] if isinstance(o.health_cmd, str)
               else list(o.health_cmd))
        probe: dict[str, Any] = {"exec": {"command": cmd}}
        for key, v in (("periodSeconds", o.health_interval), ("timeoutSeconds", o.health_timeout),
                       ("initialDelaySeconds", o.health_start_period)):
            if v is not None:
                probe[key] = max(1, math.ceil(parse_duration(v)))
        if o.health_retries:
            probe["failureThreshold"] = o.health_retries
        container["livenessProbe"] = probe
    elif any(v is not None for v in (o.health_interval, o.health_timeout, o.health_retries,
                                      o.health_start_period)):
        left.append("health-* (timings of the image's own health check)")
    if o.stop_timeout is not None:
        pod["terminationGracePeriodSeconds"] = o.stop_timeout
    if o.add_host:
        by_ip: dict[str, list[str]] = {}
        for text in o.add_host:
            host, _, ip = text.partition(":")
            by_ip.setdefault(ip, []).append(host)
        pod["hostAliases"] = [{"ip": ip, "hostnames": hosts} for ip, hosts in by_ip.items()]
    if o.dns:
        pod["dnsConfig"] = {"nameservers": list(o.dns)}
    for key in ("volume", "mount", "tmpfs", "network", "pids-limit", "ulimit", "stop-signal",
                "log-driver", "log-opt", "init"):
        if key in o.to_json():
            left.append(key)
    return left


def to_kubernetes(spec: AppSpec) -> str:
    pub = spec.publish
    name = k8s_name(spec.name)
    labels = {"app.kubernetes.io/name": name, LABEL_APP: spec.name}
    proto = pub.proto.upper()
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in spec.env.items()]
    env.append({"name": "LBCTL_APP", "value": spec.name})
    env.append({"name": "LBCTL_REPLICA", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    container: dict[str, Any] = {"name": name, "image": spec.image}
    if spec.options.entrypoint is not None:
        container["command"] = list(spec.options.entrypoint)
    if spec.command:
        container["args"] = list(spec.command)
    container["env"] = env
    container["ports"] = [{"containerPort": pub.container_port, "protocol": proto}]
    if proto == "TCP":
        container["readinessProbe"] = {"tcpSocket": {"port": pub.container_port}}
    pod: dict[str, Any] = {"containers": [container]}
    left = _k8s_options(spec.options, container, pod)
    template: dict[str, Any] = {"metadata": {"labels": labels}, "spec": pod}
    if spec.options.label:
        # Docker labels are free-form; Kubernetes labels are not: annotations keep them.
        template["metadata"]["annotations"] = dict(spec.options.label)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": template,
        },
    }
    host_ports = sorted({p.host_port for p in spec.publishes})
    service_spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "selector": {"app.kubernetes.io/name": name},
        "ports": [
            {"name": pub.proto if len(host_ports) == 1 else f"{pub.proto}-{port}",
             "protocol": proto, "port": port, "targetPort": pub.container_port}
            for port in host_ports
        ],
    }
    families = {p.family for p in spec.publishes}
    if families == {4, 6}:
        service_spec["ipFamilyPolicy"] = "PreferDualStack"
        service_spec["ipFamilies"] = ["IPv4", "IPv6"]
    elif families == {6}:
        service_spec["ipFamilies"] = ["IPv6"]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": service_spec,
    }
    header = (
        f"# {spec.name}: exported by `lbctl export {spec.name} --format kubernetes`.\n"
        f"# Service type LoadBalancer: port {pub.host_port} as lbctl publishes it (a NodePort\n"
        f"# would have to be in 30000-32767); targetPort {pub.container_port}.\n"
        + (f"# lbctl publishes it on {', '.join(p.host_ip for p in spec.publishes)} only; "
           "restrict access on the cluster side.\n"
           if not any(p.wildcard for p in spec.publishes) else "")
        + (f"# Not in these manifests (no one-to-one Kubernetes field; add them by hand):\n"
           f"#   {', '.join(left)}\n" if left else "")
    )
    return header + _dump(deployment, service)
