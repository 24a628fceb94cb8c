"""Admission: what must hold before an app is accepted, beyond valid input. Nothing here
changes anything; a refusal is one line for the user (InvalidInput: HTTP 400, exit code 2).

- the host port is not published by another app, nor served by anything else on the host
  (our DNAT would silently steal its traffic), for every address the app publishes;
- an IPv6 publish finds an IPv6 stack and ip6tables on this host;
- the app's mode works on this host now (ebpf needs root, bcc, a header tree, bpffs);
- the image is on the engine (no registry is assumed reachable);
- the networks an app names exist (or are declared, to be created) and the first is a bridge
  network: lbctl sends the app's traffic to the address there (to its IPv6 address for IPv6
  publishes, so then it must have IPv6; see controller.template.attachment);
- `cpus` does not exceed the engine host's CPUs (the engine would refuse every create);
- socket activation works here when an app asks for it; an app that leaves it to its image
  gets it when the image declares it takes an inherited listener (model.activation.
  LABEL_LISTEN_FDS) and the app can have it (ebpf mode, not `--network host`): `resolve`.

`Resources` are the volumes and networks a compose file declares (and, for a member, the
named volumes their apps name that do not exist yet): created, when missing, only after
every check of the request passed, caps included, and removed again when its commit then
fails, so a refused request leaves nothing behind. Otherwise lbctl never removes them (a
volume holds data, and both may be shared with docker-compose's services).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from lbctl.controller.interfaces import EnginePort
from lbctl.controller.template import attachment
from lbctl.model import LABEL_OWNER, AppSpec, Forbidden, InvalidInput, Mode
from lbctl.model.activation import LABEL_LISTEN_FDS, declares_listen_fds
from lbctl.model.docker_syntax import parse_duration
from lbctl.model.host import HostFacts
from lbctl.model.options import DEFAULT_NETWORK
from lbctl.model.runtime import NetworkFacts, NetworkSpec

log = logging.getLogger("lbctl.controller")


@dataclass(frozen=True)
class Resources:
    """Volumes and networks to create when missing: name -> labels."""

    networks: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    volumes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.networks or self.volumes)

    def owned_by(self, uid: int) -> Resources:
        """The same, labelled as made for member `uid` (what their bounds count)."""
        def mark(items: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
            return {n: {**labels, LABEL_OWNER: str(uid)} for n, labels in items.items()}

        return Resources(mark(self.networks), mark(self.volumes))

    def plus(self, other: Resources) -> Resources:
        return Resources({**self.networks, **other.networks}, {**self.volumes, **other.volumes})


class Admission:
    def __init__(
        self,
        engine: EnginePort,
        ebpf_unavailable: Callable[[], str | None],
        ipv6_unavailable: Callable[[], str | None],
        port_check: Callable[[AppSpec], None] | None = None,
        activation_unavailable: Callable[[], str | None] | None = None,
        host: HostFacts | None = None,
        min_health_interval: float = 0.0,
    ) -> None:
        """`ebpf_unavailable`/`ipv6_unavailable`/`activation_unavailable`: why this host
        cannot serve that mode, family or path now (None: it can; lbctl.dataplane knows;
        activation's default: never, a host without the hand-over); `port_check`: refuses a
        host port something else serves (the daemon's HostPorts; default: try to bind it);
        `host`: what the host allows a replica (its rlimits); `min_health_interval`: the
        daemon's floor, for every caller (settings.LimitSettings)."""
        self.engine = engine
        self.host = host or HostFacts()
        self.min_health_interval = min_health_interval
        self.ebpf_unavailable = ebpf_unavailable
        self.port_check = port_check or check_port_free
        self.ipv6_unavailable = ipv6_unavailable
        self.activation_unavailable = activation_unavailable or (
            lambda: "this daemon hands no listeners over")

    async def resolve(self, spec: AppSpec) -> AppSpec:
        """A new app's socket activation, decided: as asked, or (not asked) by its image's
        LABEL_LISTEN_FDS where the app can have it. InvalidInput when it is asked for and this
        host cannot hand listeners over."""
        if spec.activated:
            why = self.activation_unavailable()
            if why:
                raise InvalidInput(f"socket activation is not available here ({why}): run "
                                   "the app without --activation")
            return spec
        if spec.activation is not None:
            return spec
        activated = False
        if (spec.mode is Mode.EBPF and not spec.host_network and self.ebpf_unavailable() is None
                and self.activation_unavailable() is None):
            facts = await self.engine.image_facts(spec.image)  # None: check_new says so
            activated = facts is not None and declares_listen_fds(dict(facts.labels))
            if activated:
                log.info("image %s declares %s: socket activation", spec.image,
                         LABEL_LISTEN_FDS, extra={"app": spec.name})
        return replace(spec, activation=activated)

    async def check_new(
        self, new: Sequence[AppSpec], changed: Sequence[AppSpec], others: Sequence[AppSpec],
        declared: Resources | None = None,
    ) -> None:
        """Everything for apps to create (`new`) and apps to change (`changed`)."""
        self.check_clashes([*new, *changed], others)
        for spec in [*new, *changed]:
            self.check_host_bounds(spec)
        for spec in new:
            if spec.wants_ipv6:
                reason = self.ipv6_unavailable()
                if reason:
                    raise InvalidInput(f"cannot publish IPv6 on this host: {reason}")
            for pub in spec.publishes:
                # A listener of the host's namespace serves ::1 itself: no NAT involved.
                if pub.family == 6 and pub.loopback and not spec.activated:
                    raise InvalidInput(
                        f"cannot publish {pub}: the kernel does not NAT IPv6 loopback (::1) "
                        "traffic to a container; publish [::] and connect to one of the "
                        "host's IPv6 addresses (or use 127.0.0.1)"
                    )
            self.port_check(spec)
        for spec in [*new, *changed]:
            if spec.mode is Mode.EBPF:
                reason = self.ebpf_unavailable()
                if reason:
                    raise InvalidInput(
                        f"ebpf mode is not available here ({reason}): use --mode iptables"
                    )
        for image in sorted({s.image for s in [*new, *changed]}):
            if not await self.engine.image_exists(image):
                raise InvalidInput(f"image {image} is not on this engine: build or pull it first")
        await self.check_networks([*new, *changed], declared or Resources())
        await self.check_cpus([*new, *changed])

    def check_host_bounds(self, spec: AppSpec) -> None:
        """What no caller gets, root neither: a health check more often than the daemon's
        floor (Forbidden: root lowers it with the flag), a nofile limit above fs.nr_open
        (the kernel refuses it: every create would fail)."""
        o = spec.options
        if o.health_interval is not None and self.min_health_interval > 0:
            seconds = parse_duration(o.health_interval)
            if 0 < seconds < self.min_health_interval:
                raise Forbidden(f"limit: health-interval {o.health_interval} is shorter than "
                                f"{self.min_health_interval:g}s (--min-health-interval of "
                                "the daemon; root can lower it)")
        for u in o.ulimits():
            if u.name == "nofile" and max(u.soft, u.hard) > self.host.nr_open:
                raise InvalidInput(f"app {spec.name}: ulimit nofile={u.soft}:{u.hard} is "
                                   f"above this host's fs.nr_open ({self.host.nr_open}): the "
                                   "engine would fail every create")

    async def check_cpus(self, specs: Sequence[AppSpec]) -> None:
        """The engine refuses --cpus above its host's count at every create: say it once,
        now, rather than as a crash loop."""
        wanted = [s for s in specs if s.options.cpus is not None]
        if not wanted:
            return
        ncpu = await self.engine.cpu_count()
        for spec in wanted:
            if ncpu is not None and spec.options.cpus is not None and spec.options.cpus > ncpu:
                raise InvalidInput(f"app {spec.name}: cpus {spec.options.cpus:g} is more than "
                                   f"the {ncpu} CPUs of the engine's host")

    async def check_networks(self, specs: Sequence[AppSpec], declared: Resources) -> None:
        found: dict[str, NetworkFacts | None] = {}
        for spec in specs:
            if spec.host_network:
                continue  # the host's namespace: no network of the engine's is involved
            # An activated app's IPv6 listeners are the host's: its replicas' networks need
            # no IPv6 of their own.
            ipv6 = spec.wants_ipv6 and not spec.activated
            for i, net in enumerate(spec.options.network):
                if net in declared.networks:
                    continue  # created as a bridge network before the app is committed
                if net not in found:
                    found[net] = await self.engine.network(net)
                facts = found[net]
                if facts is None:
                    raise InvalidInput(f"app {spec.name}: network {net} does not exist: create "
                                       f"it with `docker network create {net}`")
                if i == 0 and facts.driver != "bridge" and net != DEFAULT_NETWORK:
                    raise InvalidInput(
                        f"app {spec.name}: network {net} uses the {facts.driver} driver; the "
                        "first network of an app must be a bridge network, where lbctl sends "
                        "its traffic")
            target = attachment(spec)
            if ipv6 and target.own and target.target is not None:
                # lbctl never uses or removes a network of that name it did not create: say
                # so now, not after the run's timeout.
                if target.target not in found:
                    found[target.target] = await self.engine.network(target.target)
                facts = found[target.target]
                if facts is not None and not facts.managed:
                    raise InvalidInput(
                        f"app {spec.name} publishes IPv6 and names no network, so lbctl places "
                        f"it on a network of its own, {target.target}; a network of that name "
                        f"exists and is not lbctl's: rename or remove it, or give the app an "
                        f"IPv6 network with --network")
            if ipv6 and target.target is not None and not target.own:
                # A declared network that does not exist yet is created without IPv6.
                facts = found.get(target.target) or await self.engine.network(target.target)
                if facts is None or not facts.ipv6:
                    raise InvalidInput(
                        f"app {spec.name} publishes IPv6 but its network {target.target} has "
                        f"no IPv6: use one created with `docker network create --ipv6 "
                        f"--subnet IPV6_PREFIX/64 NAME`, or name no network (lbctl then "
                        f"places the app on an IPv6 network of its own)")

    async def check_bounds(self, resources: Resources, uid: int, max_networks: int,
                           max_volumes: int, rule: Callable[[str], str]) -> None:
        """A member's networks and volumes (labelled with their uid) stay within their
        bounds: those lbctl made for them before, and those this request would make."""
        for kind, items, bound in (("network", resources.networks, max_networks),
                                   ("volume", resources.volumes, max_volumes)):
            new = [n for n in items if await self._missing(kind, n)]
            if not new:
                continue
            have = await self.engine.count_labelled(kind, LABEL_OWNER, str(uid))
            if have + len(new) > bound:
                raise Forbidden(f"policy: this would make {have + len(new)} {kind}s lbctl "
                                f"created for uid {uid}, more than {bound} "
                                f"({rule(f'max_{kind}s')}; root removes unused ones)")

    async def _missing(self, kind: str, name: str) -> bool:
        if kind == "network":
            return await self.engine.network(name) is None
        return await self.engine.volume(name) is None

    async def create(self, resources: Resources) -> Resources:
        """Create what is missing; returns what this call created (what `undo` takes back).
        A failure takes back what it had created already."""
        made = Resources({}, {})
        try:
            for name, labels in sorted(resources.volumes.items()):
                if await self.engine.ensure_volume(name, labels):
                    log.info("created volume %s", name)
                    made = made.plus(Resources({}, {name: labels}))
            for name, labels in sorted(resources.networks.items()):
                if await self.engine.ensure_network(NetworkSpec(name, labels)):
                    log.info("created network %s", name)
                    made = made.plus(Resources({name: labels}, {}))
        except BaseException:
            await self.undo(made)
            raise
        return made

    async def undo(self, made: Resources) -> None:
        """Remove what `create` made for a request that was then not committed (refused
        at its commit, or its client gone): nothing of it stays behind. Best effort: the
        engine keeps what is in use (never, here: no app of the request was committed)."""
        for name, labels in sorted(made.networks.items()):
            try:
                if await self.engine.remove_network(name, labels):
                    log.info("removed network %s: its request was not committed", name)
            except Exception as e:
                log.warning("cannot remove network %s of a refused request: %s", name, e)
        for name in sorted(made.volumes):
            try:
                if await self.engine.remove_volume(name):
                    log.info("removed volume %s: its request was not committed", name)
            except Exception as e:
                log.warning("cannot remove volume %s of a refused request: %s", name, e)

    @staticmethod
    def check_clashes(specs: Sequence[AppSpec], others: Sequence[AppSpec]) -> None:
        for i, spec in enumerate(specs):
            for other in [*others, *specs[:i]]:
                if other.name == spec.name:
                    continue
                for mine in spec.publishes:
                    if any(mine.clashes_with(theirs) for theirs in other.publishes):
                        raise InvalidInput(
                            f"port {mine.host_addr}/{mine.proto} is already "
                            f"published by app {other.name}"
                        )


def check_port_free(spec: AppSpec) -> None:
    """Refuse a host port that something else on the host already serves (Docker's -p, a
    local server), or an address that is not this host's.

    TCP binds with SO_REUSEADDR, as servers do: a port that served short connections a moment
    ago (a redeploy: `rm`, then `run` again) keeps TIME_WAIT sockets for about a minute, which
    refuse a bind without it although nothing serves there. A listener still refuses it
    (Linux never shares a port in LISTEN through SO_REUSEADDR). Not for UDP, where the option
    would let the bind share a port another socket serves."""
    for pub in spec.publishes:
        kind = socket.SOCK_STREAM if pub.proto == "tcp" else socket.SOCK_DGRAM
        family = socket.AF_INET6 if pub.family == 6 else socket.AF_INET
        with socket.socket(family, kind) as s:
            if family == socket.AF_INET6:
                # [::] must not look taken because of an IPv4 listener: our rules for one
                # family never catch the other's packets.
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((pub.host_ip, pub.host_port))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    raise InvalidInput(
                        f"{pub.host_ip} in publish {pub} is not an address of this host"
                    ) from None
                raise InvalidInput(
                    f"port {pub.host_addr}/{pub.proto} is already in use on this "
                    f"host ({e.strerror})"
                ) from None


def judged(spec: AppSpec) -> tuple[object, ...]:
    """What of an app `Admission.check_new` reads (and the engine answers about). A change
    carried over to an app that changed meanwhile needs admission again only when these
    differ from what was judged."""
    return (spec.image, spec.mode, spec.publishes, spec.options.network, spec.options.cpus,
            spec.activation)
