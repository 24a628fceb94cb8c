"""`lbctl export --format kubernetes`: a Deployment, a PersistentVolumeClaim per named volume
and a Service, valid (strict) for every Kubernetes from 1.25 on.

- **Rolling update** from the app's update policy: `maxSurge` the replicas a start-first
  rollout adds (its parallelism; 0 for stop-first), `maxUnavailable` the ready replicas it may
  go below the count by (max-unavailable; the parallelism for stop-first), `minReadySeconds`
  the monitor time, `progressDeadlineSeconds` the ready timeout (Kubernetes then marks the
  rollout failed; it does not roll back by itself: `kubectl rollout undo`).
- **Readiness** is what lbctl routes on: the app's readiness path as an `httpGet` probe (its
  interval, timeout and thresholds; Kubernetes probes at most once a second and counts
  200-399 as ready, the header says where lbctl's differ), else the health command when the
  app has one (lbctl takes an unhealthy replica out at once), else a TCP connect to the port,
  as lbctl's own probe. The health command is also the liveness probe (lbctl replaces an
  unhealthy replica); the readiness path never is (lbctl does not replace an unready one).
- **Drain**: lbctl takes a replica out of the data plane, waits for its connections (the
  daemon's drain timeout, 10 s by default), then stops it with its stop grace. Kubernetes
  sends SIGTERM while endpoints are still being removed, so a preStop `sleep` keeps the pod
  serving for the drain time first, and `terminationGracePeriodSeconds` is that plus the stop
  grace (the image needs a `sleep`; 1.30+ also has `lifecycle.preStop.sleep`, not used so the
  manifests stay valid for older clusters).
- **Volumes**: a named volume becomes a PersistentVolumeClaim (ReadWriteMany: every replica
  mounts it, as with lbctl; its size is a placeholder to set), an anonymous one or a tmpfs an
  emptyDir. A bind mount is refused: a pod has no host's files to bind (hostPath ties a pod to
  whatever one node has); put such files in a ConfigMap or a volume.
- **Service** of type LoadBalancer, `port` the host port (a NodePort would have to be in
  30000-32767), `targetPort` the container port, `externalTrafficPolicy: Local`: traffic
  goes only to pods on the node it reached, so the pod sees the client's address, as behind
  lbctl (Cluster would SNAT it to a node's).
- `--network host` maps to `hostNetwork: true` (one replica per node: pods of one host port
  do not share a node); other networks, and what else Kubernetes has no field for, are named
  in the header.

docker run's options become pod and container fields through each option's `kube` entry in
the option table (lbctl.model.options), volumes and the host network included; this module
adds what comes from the app rather than one option: the rollout, probes, the drain, claims
and the Service.

`command` is the container's Cmd (`args`): lbctl sets Cmd and keeps the image's entrypoint.
Every pod gets `LBCTL_APP`, and `LBCTL_REPLICA` as its own name.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from lbctl.export.common import dump, k8s_name
from lbctl.model import LABEL_APP, AppSpec, InvalidInput
from lbctl.model.option import NotExported, Refines, Unmapped, merge
from lbctl.model.options import RunOptions
from lbctl.model.readiness import ReadinessProbe
from lbctl.model.update_policy import Order
from lbctl.settings import DrainSettings

PVC_SIZE = "1Gi"  # a placeholder: Docker volumes have no size to carry over


def _options(o: RunOptions, parts: dict[str, Any]) -> list[str]:
    """docker run's options as container and pod fields where Kubernetes has the same thing
    (each option's `kube` entry in the table), merged into `parts` (container, pod,
    annotations, claims, notes); returns the options it has not, which the header names
    (never dropped silently)."""
    left: list[str] = []
    given = o.to_json()
    for opt, v in o.given():
        kube = opt.kube
        if isinstance(kube, NotExported):
            note = opt.key
        elif isinstance(kube, Refines) and kube.needs not in given:
            note = kube.note
        else:
            patch = (kube.write if isinstance(kube, Refines) else kube)(v)
            if not isinstance(patch, Unmapped):
                merge(parts, patch)
                continue
            note = patch.note
        if note not in left:
            left.append(note)
    return left


def _probes(spec: AppSpec, container: dict[str, Any]) -> list[str]:
    """Readiness is what lbctl routes on: its HTTP probe, else the health command (the table
    made it the liveness probe: lbctl also replaces an unhealthy replica), else a TCP connect
    as lbctl's probe. Returns what Kubernetes cannot say as lbctl does."""
    r = spec.readiness
    timing: dict[str, Any] = {"periodSeconds": max(1, math.ceil(r.interval))}
    if r.timeout != 1:
        timing["timeoutSeconds"] = max(1, math.ceil(r.timeout))
    if r.success_threshold != 1:
        timing["successThreshold"] = r.success_threshold
    timing["failureThreshold"] = r.failure_threshold
    notes = []
    if r.path is not None:
        get: dict[str, Any] = {"path": r.path, "port": spec.publish.container_port}
        if r.host is not None:
            get["httpHeaders"] = [{"name": "Host", "value": r.host}]
        container["readinessProbe"] = {"httpGet": get, **timing}
        if r.status != ReadinessProbe().status:
            notes.append(f"readiness status {r.status_text()} (Kubernetes: 200-399)")
    elif "livenessProbe" in container:
        container["readinessProbe"] = copy.deepcopy(container["livenessProbe"])
        return notes
    elif spec.publish.proto == "tcp":
        container["readinessProbe"] = {"tcpSocket": {"port": spec.publish.container_port},
                                       **timing}
    else:
        return notes
    if r.changed() and (r.interval < 1 or r.timeout < 1):
        notes.append(f"readiness every {r.interval:g}s, timeout {r.timeout:g}s (Kubernetes: "
                     "1s at the least)")
    return notes


def _strategy(spec: AppSpec, deployment_spec: dict[str, Any]) -> list[str]:
    u = spec.update
    deployment_spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": u.surge, "maxUnavailable": u.unavailable}}
    if u.monitor:
        deployment_spec["minReadySeconds"] = math.ceil(u.monitor)
    # Kubernetes wants the deadline above minReadySeconds.
    deployment_spec["progressDeadlineSeconds"] = max(math.ceil(u.ready_timeout),
                                                     math.ceil(u.monitor) + 1)
    notes = []
    if str(u.failure_action) == "rollback":
        notes.append("a failed rollout is marked failed, not rolled back: `kubectl rollout "
                     "undo`")
    if u.delay:
        notes.append(f"no {u.delay:g}s delay between batches (a Deployment has none)")
    if u.order is Order.START_FIRST and u.parallelism > 1:
        notes.append("parallelism is the surge: up to that many new pods start at once")
    return notes


def _ordered(d: dict[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    return {**{k: d[k] for k in first if k in d}, **d}


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
    port: dict[str, Any] = {"containerPort": pub.container_port, "protocol": proto}
    container["ports"] = [port]
    pod: dict[str, Any] = {"containers": [container]}
    parts: dict[str, Any] = {"container": container, "pod": pod, "annotations": {},
                             "claims": {}, "notes": []}
    try:
        left = _options(spec.options, parts)
    except InvalidInput as e:
        raise InvalidInput(f"{spec.name}: {e}") from None
    left += [n for n in parts["notes"] if n not in left]
    probe_notes = _probes(spec, container)
    if "limits" in container.get("resources", {}):
        # Requests equal to limits: what a replica gets is what lbctl's limit gave it.
        container["resources"]["requests"] = dict(container["resources"]["limits"])
    if pod.get("hostNetwork"):
        port["hostPort"] = pub.container_port
    drain = math.ceil(DrainSettings().timeout)
    container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(drain)]}}}
    # The table gives the stop grace (--stop-timeout); the drain comes before it.
    pod["terminationGracePeriodSeconds"] = drain + pod.get("terminationGracePeriodSeconds",
                                                           DrainSettings().stop_grace)
    container = _ordered(container, ("name", "image", "command", "args", "env", "ports"))
    pod["containers"] = [container]
    template: dict[str, Any] = {"metadata": {"labels": dict(labels)}, "spec": pod}
    if parts["annotations"]:
        # Docker labels are free-form; Kubernetes labels are not: annotations keep them.
        template["metadata"]["annotations"] = parts["annotations"]
    deployment_spec: dict[str, Any] = {
        "replicas": spec.replicas,
        "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
    }
    rollout_notes = _strategy(spec, deployment_spec)
    deployment_spec["template"] = template
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": name, "labels": dict(labels)}, "spec": deployment_spec}
    claims = [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": claim, "labels": dict(labels),
                      "annotations": {"lbctl.volume": source}},
         "spec": {"accessModes": ["ReadWriteMany"],
                  "resources": {"requests": {"storage": PVC_SIZE}}}}
        for claim, source in parts["claims"].items()
    ]
    host_ports = sorted({p.host_port for p in spec.publishes})
    service_spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "selector": {"app.kubernetes.io/name": name},
        "ports": [
            {"name": pub.proto if len(host_ports) == 1 else f"{pub.proto}-{hp}",
             "protocol": proto, "port": hp, "targetPort": pub.container_port}
            for hp in host_ports
        ],
    }
    families = {p.family for p in spec.publishes}
    if families == {4, 6}:
        service_spec["ipFamilyPolicy"] = "PreferDualStack"
        service_spec["ipFamilies"] = ["IPv4", "IPv6"]
    elif families == {6}:
        service_spec["ipFamilies"] = ["IPv6"]
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "labels": dict(labels)}, "spec": service_spec}
    header = (
        f"# {spec.name}: exported by `lbctl export {spec.name} --format kubernetes`.\n"
        f"# Service type LoadBalancer: port {pub.host_port} as lbctl publishes it (a NodePort\n"
        f"# would have to be in 30000-32767); targetPort {pub.container_port}; "
        "externalTrafficPolicy\n# Local keeps the client's address.\n"
        + (f"# lbctl publishes it on {', '.join(p.host_ip for p in spec.publishes)} only; "
           "restrict access on the cluster side.\n"
           if not any(p.wildcard for p in spec.publishes) else "")
        + f"# preStop sleeps {drain}s (lbctl's drain time): the image needs a `sleep`.\n"
        + (f"# PersistentVolumeClaims ({', '.join(parts['claims'])}) ask for {PVC_SIZE}, "
           "ReadWriteMany: set the size\n# and a storage class that serves it.\n"
           if parts["claims"] else "")
        + ("# hostNetwork: one replica per node (pods of one host port do not share a "
           "node).\n" if pod.get("hostNetwork") else "")
        + "".join(f"# Rollout: {note}.\n" for note in rollout_notes)
        + "".join(f"# Probe: {note}.\n" for note in probe_notes)
        + (f"# Release command ({_release_text(spec)}): run it before applying a new image,\n"
           "# e.g. as a Job of that image (a Deployment has no pre-rollout step).\n"
           if spec.release is not None else "")
        + (f"# Not in these manifests (no one-to-one Kubernetes field; add them by hand):\n"
           f"#   {', '.join(left)}\n" if left else "")
    )
    return header + dump(deployment, *claims, service)


def _release_text(spec: AppSpec) -> str:
    r = spec.release
    return r if isinstance(r, str) else " ".join(r or ())
