"""`lbctl export --format swarm`: a stack file for `docker stack deploy -c FILE NAME`.

A stack file is a compose file that Swarm reads, so docker run's options are written as the
compose export writes them (checked on Docker 20.10's CLI and a current one: user, workdir,
read_only, init, capabilities, ulimits, extra_hosts, dns, logging, stop signal and grace all
reach the service), except where Swarm takes them elsewhere: limits under
`deploy.resources.limits` (the option table's `compose.limit`; pids from stack file 3.9),
and `--tmpfs` and `--shm-size` as tmpfs volumes (`docker stack deploy` drops a service's
`tmpfs:` and `shm_size:`, Docker 20.10's CLI without a word). What has no field
(`--group-add`) is named in the header. On top, the Swarm service:

- `deploy.replicas`, and `deploy.update_config` from the app's update policy, which is
  Swarm's own vocabulary (lbctl's flags are Swarm's): parallelism, delay, monitor,
  failure_action (rollback or pause), order (start-first or stop-first), and
  `max_failure_ratio: 0` (lbctl fails a rollout at its first failed replica);
  `deploy.rollback_config` rolls back the same way, pausing if the rollback itself fails.
- limits as `deploy.resources.limits`; the health check as `healthcheck` (Swarm routes only
  to healthy tasks, as lbctl routes only to ready replicas), or without one, the readiness
  path as a health check that GETs it with curl or wget, whichever the image has (the header
  says it needs one; Swarm also restarts an unhealthy task, where lbctl keeps an unready
  replica out of the data plane until it passes again); `deploy.restart_policy`
  `condition: any` (lbctl replaces any replica that exits).
- each host port published once through Swarm's routing mesh (`mode: ingress`), which takes
  a connection on every node and balances it over the tasks. It hides the client's address
  (moby#25526) and has no IPv6; `mode: host` would keep the address but allows one task per
  node and port. Swarm has no host address to publish on: every address of every node.
- named volumes as the stack's volumes (local to each node: every task on a node shares it,
  as lbctl's replicas share one), networks as overlay networks of the stack, `--network host`
  as Swarm's `host` network (no ports: the replicas bind the port themselves).

A `version` key: the Docker CLI of Docker 20.10 reads a stack file without one as the
obsolete version 1 and refuses it; newer CLIs and the Compose Specification accept it.
"""

from __future__ import annotations

import shlex
from typing import Any

from lbctl.export.common import dump, go_duration
from lbctl.export.compose import compose_options
from lbctl.model import LABEL_APP, AppSpec
from lbctl.model.docker_syntax import parse_size, parse_tmpfs
from lbctl.model.options import OPTIONS, RunOptions

# The newest stack file version that the CLI of Docker 20.10 and later all read (3.9 brings
# deploy.resources.limits.pids).
VERSION = "3.9"

# Compose keys (as compose_options writes them) that a stack file says elsewhere: the
# limits (the option table's `compose.limit`), the network mode, tmpfs.
_LIMITS = {o.compose.key: o.compose.limit for o in OPTIONS if o.compose.limit is not None}
_MOVED = ("network_mode", "tmpfs", "shm_size", "group_add")


def _limits(opts: dict[str, Any]) -> dict[str, Any]:
    """The service's limits keys, taken out of `opts`, as deploy.resources.limits."""
    limits: dict[str, Any] = {}
    for key, limit in _LIMITS.items():
        if key in opts:
            v = opts.pop(key)
            limits[limit] = f"{v:g}" if isinstance(v, float) else v  # cpus: a string there
    return limits


def _tmpfs(o: RunOptions, notes: list[str]) -> list[dict[str, Any]]:
    """`--tmpfs` as long-syntax tmpfs volumes: docker stack deploy ignores a service's
    `tmpfs:` key without a word."""
    out = []
    for text in o.tmpfs:
        path, opts = parse_tmpfs(text)
        mount: dict[str, Any] = {"type": "tmpfs", "target": path}
        kv = dict(item.partition("=")[::2] for item in opts.split(",") if item)
        if "size" in kv:
            mount["tmpfs"] = {"size": parse_size(kv.pop("size"))}
        if kv:
            notes.append(f"tmpfs options {','.join(kv)} of {path}")
        out.append(mount)
    return out


def _update(spec: AppSpec, failure_action: str) -> dict[str, Any]:
    u = spec.update
    return {"parallelism": u.parallelism, "delay": go_duration(u.delay),
            "failure_action": failure_action, "monitor": go_duration(u.monitor),
            "max_failure_ratio": 0, "order": str(u.order)}


def _ports(spec: AppSpec) -> list[dict[str, Any]]:
    """One ingress port per host port: Swarm publishes on every address, both lbctl
    publishes of one port (0.0.0.0:80 and [::]:80) are the same one to it."""
    pub = spec.publish
    return [{"target": pub.container_port, "published": port, "protocol": pub.proto,
             "mode": "ingress"}
            for port in sorted({p.host_port for p in spec.publishes})]


def _readiness_check(spec: AppSpec) -> dict[str, Any] | None:
    """The readiness path as a Swarm health check: a GET of the task's own port (a task has
    a network namespace of its own), with curl or else wget."""
    r = spec.readiness
    if r.path is None:
        return None
    url = shlex.quote(f"http://localhost:{spec.publish.container_port}{r.path}")
    host = shlex.quote(f"Host: {r.host}") if r.host else None
    curl = "curl -fsS -o /dev/null" + (f" -H {host}" if host else "") + f" {url}"
    wget = "wget -q -O /dev/null" + (f" --header {host}" if host else "") + f" {url}"
    return {"test": ["CMD-SHELL", f"{curl} || {wget}"], "interval": go_duration(r.interval),
            "timeout": go_duration(r.timeout), "retries": r.failure_threshold}


def to_swarm(spec: AppSpec) -> str:
    o = spec.options
    service: dict[str, Any] = {"image": spec.image}
    if spec.command:
        service["command"] = list(spec.command)
    service["environment"] = {**spec.env, "LBCTL_APP": spec.name}
    opts: dict[str, Any] = {}
    volumes, networks = compose_options(o, opts)
    notes: list[str] = []
    limits = _limits(opts)
    for key in _MOVED:
        opts.pop(key, None)
    tmpfs = _tmpfs(o, notes)
    if o.shm_size is not None:
        # docker stack deploy drops shm_size (Docker 20.10's CLI without a word): a tmpfs at
        # /dev/shm is the same thing, as Kubernetes' memory emptyDir there.
        tmpfs.append({"type": "tmpfs", "target": "/dev/shm",
                      "tmpfs": {"size": parse_size(o.shm_size)}})
    if o.group_add:
        notes.append("group-add (a stack file has no supplementary groups)")
    if tmpfs:
        opts["volumes"] = [*opts.get("volumes", []), *tmpfs]
    for item in opts.get("volumes", []):
        size = item.get("tmpfs", {}).get("size") if isinstance(item, dict) else None
        if isinstance(size, str):
            item["tmpfs"]["size"] = parse_size(size)  # stack files before 3.9 take bytes
    doc_networks: dict[str, Any] = {}
    if o.host_network:
        # Swarm's predefined `host` network, referred to as external under a stack name.
        opts["networks"] = ["hostnet"]
        doc_networks["hostnet"] = {"external": True, "name": "host"}
    else:
        service["ports"] = _ports(spec)
        for n in networks:
            doc_networks[n] = {"name": n, "driver": "overlay", "attachable": True}
    service.update(opts)
    http_check = _readiness_check(spec) if "healthcheck" not in service else None
    if http_check is not None:
        service["healthcheck"] = http_check
        notes.append("the readiness path's health check needs curl or wget in the image")
    deploy: dict[str, Any] = {
        "mode": "replicated",
        "replicas": spec.replicas,
        "update_config": _update(spec, str(spec.update.failure_action)),
        # A rollback that fails itself has nothing to roll back to: it pauses.
        "rollback_config": _update(spec, "pause"),
        "restart_policy": {"condition": "any"},
        "labels": {LABEL_APP: spec.name},
    }
    if limits:
        deploy["resources"] = {"limits": limits}
    service["deploy"] = deploy
    doc: dict[str, Any] = {"version": VERSION, "services": {spec.name: service}}
    if volumes:
        doc["volumes"] = {v: {"name": v} for v in volumes}
    if doc_networks:
        doc["networks"] = doc_networks
    left = list(notes)
    if spec.release is not None:
        left.append("the release command (run it with `docker run` of the new image before "
                    "the deploy)")
    if spec.update.max_unavailable:
        left.append(f"max-unavailable {spec.update.max_unavailable} (Swarm replaces "
                    "parallelism tasks at a time)")
    addresses = {p.host_ip for p in spec.publishes}
    header = (
        f"# {spec.name}: exported by `lbctl export {spec.name} --format swarm`.\n"
        f"# Deploy it on a swarm:  docker stack deploy -c THIS_FILE STACK\n"
        + ("" if o.host_network else
           "# Ports go through Swarm's routing mesh: every node, every address, no IPv6, and\n"
           "# the app sees a mesh address, not the client's (moby#25526).\n")
        + (f"# lbctl publishes on {', '.join(sorted(addresses))} only; Swarm cannot: restrict "
           "access on the nodes.\n" if not any(p.wildcard for p in spec.publishes)
           and not o.host_network else "")
        + (f"# Not in this file (docker stack deploy has no such field):\n"
           f"#   {', '.join(left)}\n" if left else "")
    )
    return header + dump(doc)

