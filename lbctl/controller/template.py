"""What lbctl asks the engine to create: a replica from an app's spec, and an app's sandbox.

The one place where a spec's fields become engine create options, so a new option of the
spec is one change here (and in lbctl.runtime, which speaks the engine's JSON).

Which container gets which option follows from the mode. iptables mode: every replica is a
container of its own and gets all of them. ebpf mode: the replicas share the sandbox's network
namespace, so what belongs to a namespace (`--network`, `--add-host`, `--dns`: the interfaces,
/etc/hosts, /etc/resolv.conf) is set on the sandbox (Docker refuses it on a container that
joins another's namespace), and everything else on the replicas.

Socket activation (ebpf mode, `activation`): every replica is a container of its own on the
app's networks (no sandbox), run by the shim: the shim is bind-mounted and is the entrypoint,
the image's entrypoint and command (or the app's own) its arguments, and the replica's
socket directory is bind-mounted beside it, both read-only (lbctl.dataplane.activation).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lbctl.model import (
    LABEL_HOLD,
    LABEL_MANAGED,
    LABEL_NETWORK,
    ROLE_HOLD,
    ROLE_RELEASE,
    ROLE_REPLICA,
    ROLE_SANDBOX,
    AppSpec,
    InvalidInput,
)
from lbctl.model.activation import SHIM_IN, SOCKET_DIR_IN
from lbctl.model.dataplane import Bound
from lbctl.model.hold import hold_tag
from lbctl.model.names import (
    OWN_NETWORK,
    hold_name,
    release_name,
    replica_labels,
    replica_name,
    sandbox_name,
)
from lbctl.model.options import DEFAULT_NETWORK, HOST_NETWORK, NAMESPACE_FIELDS, RunOptions
from lbctl.model.runtime import CreateRequest, ImageFacts, NetworkSpec

# lbctl's own bridge network, for apps that publish IPv6: the engine's default bridge has no
# IPv6 unless its daemon was configured for it, and lbctl does not reconfigure engines.
NETWORK = OWN_NETWORK
NETWORK_BRIDGE = "lbctl0"


def network_spec(ipv6_subnet: str) -> NetworkSpec:
    """lbctl's network: a plain bridge with IPv6 on `ipv6_subnet`, IPv4 from the engine's
    pools, labelled as lbctl's so that it is recognisably ours (and removed when no app uses
    it)."""
    return NetworkSpec(NETWORK, {LABEL_MANAGED: "true"}, ipv6_subnet, NETWORK_BRIDGE, owned=True)


def ula_subnet(seed: str) -> str:
    """A unique-local /64 for lbctl's network (RFC 4193: fd00::/8 + a 40-bit global ID),
    the ID taken from `seed` (the machine id): stable across restarts of one host, and
    unlikely to meet another host's or network's, as the RFC's random ID would be."""
    gid = hashlib.sha256(f"lbctl-ula:{seed}".encode()).digest()[:5]
    return str(ipaddress.IPv6Network((b"\xfd" + gid + b"\0" * 10, 64)))


SANDBOX_SYSCTLS = {"net.ipv4.tcp_migrate_req": "1",
                   "net.ipv4.ip_local_port_range": "32768 60999"}


@dataclass(frozen=True)
class Attachment:
    """Where the container that holds an app's address sits on the engine's networks."""

    networks: tuple[str, ...]  # joined in this order
    # The one whose address lbctl's DNAT sends the app's traffic to, recorded in the
    # lbctl.network label; None: the engine's default network, its only one (Docker calls it
    # bridge, Podman podman, so no name is recorded).
    target: str | None
    aliases: tuple[str, ...]  # names it answers to there (user-defined networks only)
    # The target is lbctl's own network (NETWORK): created before the container, removed
    # with the last app on it.
    own: bool = False


def attachment(spec: AppSpec) -> Attachment:
    """Which networks the app's address holder joins (each replica in iptables mode, the
    sandbox in ebpf mode) and which of them carries the DNAT target, for both families:

    - the networks the user named: the first is the target. It must be a bridge network
      with an IPv4 address, and with IPv6 when the app publishes IPv6 (admission checks
      both). The app's name is an alias on user-defined networks, so other containers there
      reach it by name;
    - none named, some publish IPv6: lbctl's own network (the engine's default bridge has no
      IPv6 unless its daemon was configured for it, and lbctl does not reconfigure engines),
      unless the app is activated: its IPv6 listeners are the host's, handed to replicas
      that need no address of their own for them;
    - else the engine's default bridge, where lbctl's apps always lived.

    lbctl sets route_localnet and hairpin mode on the target's bridge. The single place that
    decides placement: a change of where apps live is a change of this function alone."""
    if spec.options.network:
        networks = spec.options.networks()
        aliases = (spec.name,) if any(n != DEFAULT_NETWORK for n in networks) else ()
        return Attachment(networks, networks[0], aliases)
    if spec.wants_ipv6 and not spec.activated:
        return Attachment((NETWORK,), NETWORK, (), own=True)
    return Attachment((DEFAULT_NETWORK,), None, ())


@dataclass(frozen=True)
class Activation:
    """What an activated replica is created with besides its spec: the shim and the replica's
    socket directory on the host, the seconds its shim waits for the daemon, and what the
    image runs by itself (the shim runs that)."""

    shim: Path
    socket_dir: Path
    image: ImageFacts
    shim_timeout: int = 30


def run_argv(entrypoint: tuple[str, ...] | None, command: Sequence[str],
             image: ImageFacts) -> tuple[str, ...]:
    """What a container of the image runs given the app's --entrypoint and command, as the
    engine decides it: an --entrypoint replaces the image's and drops its CMD; a command
    replaces the CMD."""
    if entrypoint is not None:
        return (*entrypoint, *command)
    return (*image.entrypoint, *(command or image.cmd))


def replica_request(
    spec: AppSpec,
    index: int,
    spec_hash: str,
    revision: int | None,
    join: str | None,
    default_pids_limit: int | None,
    activation: Activation | None = None,
    default_memory: int | None = None,
) -> CreateRequest:
    """Replica `index` of `spec` (ebpf mode: `join` is the sandbox it shares a namespace
    with; iptables mode and socket activation: it joins the networks attachment(spec)
    names; `activation`: the shim runs it, see the module doc). Every replica learns its app
    and name from LBCTL_APP and LBCTL_REPLICA. The default pids limit
    (settings.LimitSettings; None: the engine's) is not part of the spec (nor of its
    hash): changing it rolls nothing, and new replicas get the new one. So is
    `default_memory` (bytes), what a member's replica gets without --memory. InvalidInput:
    an activated replica whose image and app name nothing to run."""
    name = replica_name(spec.name, index)
    env = dict(spec.env)
    env.update({"LBCTL_APP": spec.name, "LBCTL_REPLICA": name})
    labels = replica_labels(spec.name, ROLE_REPLICA, index, spec_hash, revision)
    options = spec.options
    command = tuple(spec.command)
    if options.pids_limit is None and default_pids_limit is not None:
        options = replace(options, pids_limit=default_pids_limit)
    if options.memory is None and default_memory is not None:
        options = replace(options, memory=str(default_memory))
    networks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    if join is not None:
        options = options.without(*NAMESPACE_FIELDS)
    else:
        where = attachment(spec)
        networks, aliases = where.networks, where.aliases
        if where.target is not None and activation is None:
            labels[LABEL_NETWORK] = where.target
    if activation is not None:
        command = run_argv(options.entrypoint, spec.command, activation.image)
        if not command:
            raise InvalidInput(f"image {spec.image} names no entrypoint or command, and the "
                               "app gives none: socket activation runs it behind its shim")
        options = replace(options, entrypoint=(SHIM_IN,), volume=(
            *options.volume, f"{activation.shim}:{SHIM_IN}:ro",
            f"{activation.socket_dir}:{SOCKET_DIR_IN}:ro"))
        env["LBCTL_ACTIVATION_TIMEOUT"] = str(activation.shim_timeout)
    return CreateRequest(
        name=name,
        image=spec.image,
        labels=labels,
        env=env,
        command=command,
        join=join,
        options=options,
        networks=networks,
        aliases=aliases,
    )


def sandbox_request(spec: AppSpec, image: str) -> CreateRequest:
    """The app's sandbox: it holds the network namespace every replica joins, and sets
    tcp_migrate_req there so a closing listener's queue migrates even without our program,
    and the ephemeral port range to Linux's default, below the readiness probes' source
    ports (PROBE_PORT_BASE in bpf/lbctl_shared.h), whatever the engine's default: a replica's
    own connection to its app's address must never look like a probe. It carries the
    namespace's options (networks, /etc/hosts entries, DNS servers)."""
    where = attachment(spec)
    labels = replica_labels(spec.name, ROLE_SANDBOX)
    if where.target is not None:
        labels[LABEL_NETWORK] = where.target
    o = spec.options
    return CreateRequest(
        name=sandbox_name(spec.name),
        image=image,
        labels=labels,
        env={"LBCTL_APP": spec.name},
        sysctls=SANDBOX_SYSCTLS,
        options=RunOptions(add_host=o.add_host, dns=o.dns),
        networks=where.networks,
        aliases=where.aliases,
    )


def release_request(spec: AppSpec, revision: int, spec_hash: str,
                    default_pids_limit: int | None) -> CreateRequest:
    """The one-off container that runs `spec`'s release command for `revision`: the
    revision's image, environment, volumes, networks, user and the rest of its options, as a
    replica gets them, the command in place of the replica's; but no place in any data plane:
    a network namespace of its own on the app's networks (ebpf mode's sandbox holds the
    replicas' port; the host's with `--network host`), without the app's name as an alias
    (other containers calling the app by name must never reach it). It learns its app and
    revision from LBCTL_APP and LBCTL_REVISION."""
    env = dict(spec.env)
    env.update({"LBCTL_APP": spec.name, "LBCTL_REVISION": str(revision)})
    options = spec.options
    if options.pids_limit is None and default_pids_limit is not None:
        options = replace(options, pids_limit=default_pids_limit)
    join: str | None = None
    networks: tuple[str, ...] = ()
    if spec.host_network:
        join = HOST_NETWORK
        options = options.without(*NAMESPACE_FIELDS)
    else:
        networks = attachment(spec).networks
    return CreateRequest(
        name=release_name(spec.name, revision),
        image=spec.image,
        labels=replica_labels(spec.name, ROLE_RELEASE, spec_hash=spec_hash, revision=revision),
        env=env,
        command=spec.release_argv(),
        join=join,
        options=options,
        networks=networks,
    )


def hold_request(app: str, join: str, bound: Sequence[Bound], until: float, margin: float,
                 image: str) -> CreateRequest:
    """ebpf mode's traffic hold: `pause hold` (images/pause) in the replicas' network
    namespace (`join`: the sandbox, or the host's), listening beside them on every address
    they listen on (`bound`, read from a replica's listeners) with SO_REUSEPORT, as their
    user (the kernel puts only sockets of one owner in a reuseport group), so the program
    can steer new connections to it; it never accepts one. It exits by itself `margin`
    seconds after the deadline, so that a hold ends even with no daemon running."""
    tag = hold_tag(until)
    labels = replica_labels(app, ROLE_HOLD)
    labels[LABEL_HOLD] = tag
    deadline = math.ceil(until + margin)
    return CreateRequest(
        name=hold_name(app, tag),
        image=image,
        labels=labels,
        env={"LBCTL_APP": app},
        command=("hold", str(deadline), *sorted({b.text for b in bound})),
        join=join,
        options=RunOptions(user=str(bound[0].uid)),
    )
