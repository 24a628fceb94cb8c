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

In both, `command` is the container's Cmd (compose `command`, Kubernetes `args`): lbctl sets
Cmd and keeps the image's entrypoint. Every replica gets `LBCTL_APP`; `LBCTL_REPLICA` is the
pod name in Kubernetes and absent in compose (one environment for all of a service's
containers: the demo image then answers with its hostname).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from lbctl.model import LABEL_APP, AppSpec, InvalidInput

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
    service: dict[str, Any] = {"image": spec.image}
    if spec.command:
        service["command"] = list(spec.command)
    env = {**spec.env, "LBCTL_APP": spec.name}
    service["environment"] = env
    service["labels"] = {LABEL_APP: spec.name}
    service["expose"] = [f"{pub.container_port}/{pub.proto}"]
    service["deploy"] = {"replicas": spec.replicas}
    doc = {
        "services": {spec.name: service},
        "x-lbctl": {"app": spec.name, "publish": _publish_field(spec), "mode": str(spec.mode)},
    }
    header = (
        f"# {spec.name}: exported by `lbctl export {spec.name} --format compose`.\n"
        f"# Compose cannot share one host port between replicas; lbctl publishes it and\n"
        f"# adopts these containers (label {LABEL_APP}={spec.name}):\n"
        f"#   lbctl run {spec.name} --image {spec.image} {_publish_flags(spec)} --replicas 0 "
        f"--mode iptables\n"
        f"#   docker-compose up -d\n"
    )
    return header + _dump(doc)


def _publish_field(spec: AppSpec) -> str | list[str]:
    """One publish as a string, several as a list: as in lbctl's own JSON."""
    pubs = [str(p) for p in spec.publishes]
    return pubs[0] if len(pubs) == 1 else pubs


def _publish_flags(spec: AppSpec) -> str:
    return " ".join(f"-p {p}" for p in spec.publishes)


def k8s_name(name: str) -> str:
    """An lbctl app name as a DNS-1035 label (Service names): `_` and `.` become `-`."""
    out = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not out or not out[0].isalpha():
        out = "app-" + out
    return out[:63].rstrip("-")


def to_kubernetes(spec: AppSpec) -> str:
    pub = spec.publish
    name = k8s_name(spec.name)
    labels = {"app.kubernetes.io/name": name, LABEL_APP: spec.name}
    proto = pub.proto.upper()
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in spec.env.items()]
    env.append({"name": "LBCTL_APP", "value": spec.name})
    env.append({"name": "LBCTL_REPLICA", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    container: dict[str, Any] = {"name": name, "image": spec.image}
    if spec.command:
        container["args"] = list(spec.command)
    container["env"] = env
    container["ports"] = [{"containerPort": pub.container_port, "protocol": proto}]
    if proto == "TCP":
        container["readinessProbe"] = {"tcpSocket": {"port": pub.container_port}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
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
    )
    return header + _dump(deployment, service)
