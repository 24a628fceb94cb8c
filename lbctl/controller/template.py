"""What lbctl asks the engine to create: a replica from an app's spec, and an app's sandbox.

The one place where a spec's fields become engine create options, so a new option of the
spec is one change here (and in lbctl.runtime, which speaks the engine's JSON).
"""

from __future__ import annotations

from lbctl.model import ROLE_REPLICA, ROLE_SANDBOX, AppSpec
from lbctl.model.names import replica_name, sandbox_name
from lbctl.runtime.convert import replica_labels
from lbctl.runtime.engine import CreateRequest

SANDBOX_IMAGE = "lbctl/pause:latest"


def replica_request(
    spec: AppSpec,
    index: int,
    spec_hash: str,
    revision: int | None,
    join: str | None,
) -> CreateRequest:
    """Replica `index` of `spec` (ebpf mode: `join` is the sandbox it shares a namespace
    with). Every replica learns its app and name from LBCTL_APP and LBCTL_REPLICA."""
    name = replica_name(spec.name, index)
    env = dict(spec.env)
    env.update({"LBCTL_APP": spec.name, "LBCTL_REPLICA": name})
    return CreateRequest(
        name=name,
        image=spec.image,
        labels=replica_labels(spec.name, ROLE_REPLICA, index, spec_hash, revision),
        env=env,
        command=spec.command,
        join=join,
    )


def sandbox_request(spec: AppSpec, image: str = SANDBOX_IMAGE) -> CreateRequest:
    """The app's sandbox: it holds the network namespace every replica joins, and sets
    tcp_migrate_req there so a closing listener's queue migrates even without our program."""
    return CreateRequest(
        name=sandbox_name(spec.name),
        image=image,
        labels=replica_labels(spec.name, ROLE_SANDBOX),
        env={"LBCTL_APP": spec.name},
        sysctls={"net.ipv4.tcp_migrate_req": "1"},
    )
