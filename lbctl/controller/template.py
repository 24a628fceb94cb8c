"""What lbctl asks the engine to create: a replica from an app's spec, and an app's sandbox.

The one place where a spec's fields become engine create options, so a new option of the
spec is one change here (and in lbctl.runtime, which speaks the engine's JSON).
"""

from __future__ import annotations

import hashlib
import ipaddress

from lbctl.model import LABEL_MANAGED, ROLE_REPLICA, ROLE_SANDBOX, AppSpec, Mode
from lbctl.model.names import replica_name, sandbox_name
from lbctl.runtime.convert import replica_labels
from lbctl.runtime.engine import CreateRequest, NetworkSpec

SANDBOX_IMAGE = "lbctl/pause:latest"
# lbctl's own bridge network, for apps that publish IPv6: the engine's default bridge has no
# IPv6 unless its daemon was configured for it, and lbctl does not reconfigure engines.
NETWORK = "lbctl"
NETWORK_BRIDGE = "lbctl0"


def network_for(spec: AppSpec) -> str | None:
    """The network an app's DNAT targets live on: its replicas' in iptables mode, its
    sandbox's in ebpf mode (replicas join the sandbox's namespace and need none). None: the
    engine's default bridge, as before IPv6. The one place placement is decided."""
    return NETWORK if spec.wants_ipv6 else None


def network_spec(ipv6_subnet: str) -> NetworkSpec:
    """lbctl's network: a plain bridge with IPv6 on `ipv6_subnet`, IPv4 from the engine's
    pools, labelled as lbctl's so that it is recognisably ours (and removed when no app uses
    it)."""
    return NetworkSpec(NETWORK, {LABEL_MANAGED: "true"}, ipv6_subnet, NETWORK_BRIDGE)


def ula_subnet(seed: str) -> str:
    """A unique-local /64 for lbctl's network (RFC 4193: fd00::/8 + a 40-bit global ID),
    the ID taken from `seed` (the machine id): stable across restarts of one host, and
    unlikely to meet another host's or network's, as the RFC's random ID would be."""
    gid = hashlib.sha256(f"lbctl-ula:{seed}".encode()).digest()[:5]
    return str(ipaddress.IPv6Network((b"\xfd" + gid + b"\0" * 10, 64)))


def replica_request(
    spec: AppSpec,
    index: int,
    spec_hash: str,
    revision: int | None,
    join: str | None,
) -> CreateRequest:
    """Replica `index` of `spec` (ebpf mode: `join` is the sandbox it shares a namespace
    with; iptables mode: it joins network_for(spec)). Every replica learns its app and name
    from LBCTL_APP and LBCTL_REPLICA."""
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
        network=None if join or spec.mode is Mode.EBPF else network_for(spec),
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
        network=network_for(spec),
    )
