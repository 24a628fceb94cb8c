"""When an activated app's replica is ready, and what `status` says of its listener.

A replica of an activated app serves listeners that lbctl made in the host's namespace and
handed to it (lbctl.dataplane.activation); it is ready when

- it holds them: they are in the app's socket map (the daemon put them there when it handed
  them over, and a socket leaves the map the moment its last holder closes it),
- it took them: it has no listener of its own on the container port in its own namespace.
  An image whose server ignores LISTEN_FDS binds its usual port there instead; such a
  replica is `not taken`: the listeners it holds unused are shut down (no client waits in
  a queue nobody accepts from, even while no replica is ready and the kernel picks), it is
  never steered to, and the app's error says so in one line (the image must change, or the
  app run without --activation), and
- it accepts from them: a connection through the replica's slot, from the host's namespace
  (where those listeners are) to the published address, is accept()ed (the listeners' accept
  queue empties), once; holding a socket is not serving it (an image that ignores
  LISTEN_FDS holds it unused until it binds its own port, a JVM seconds later), and
- with a readiness path, it answers it: the probe goes the same way (an answer proves the
  accept).

`ActivationQuestions` asks that of activated apps' replicas and hands every other app to the
probe it wraps (readiness.answers.Questions), so readiness keeps one entry point per replica;
`ListenerStates` keeps each replica's answer for `status`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from enum import StrEnum

from lbctl.controller.interfaces import ActivationPort, Answers, AnswersFor, EbpfPort
from lbctl.controller.readiness import http
from lbctl.controller.readiness.outcome import OK, Failure, ProbeResult, failed
from lbctl.model import AppSpec, Container


class Listener(StrEnum):
    HELD = "held"  # in the socket map, and the replica listens on nothing of its own
    NOT_TAKEN = "not taken"  # the replica bound the container port itself instead
    NONE = "none"  # nothing handed over yet (the shim has not asked), or it closed them


class ListenerStates:
    """app -> replica container id -> its listener's state, as last asked; and the replicas
    seen accepting from it (once is enough: after that, readiness is the probe's)."""

    def __init__(self) -> None:
        self._apps: dict[str, dict[str, Listener]] = {}
        self._accepting: dict[str, set[str]] = {}

    def accepting(self, app: str, container_id: str) -> bool:
        return container_id in self._accepting.get(app, ())

    def accepted(self, app: str, container_id: str) -> None:
        self._accepting.setdefault(app, set()).add(container_id)

    def get(self, app: str, container_id: str) -> Listener | None:
        return self._apps.get(app, {}).get(container_id)

    def set(self, app: str, container_id: str, state: Listener) -> None:
        self._apps.setdefault(app, {})[container_id] = state

    def keep(self, app: str, container_ids: Collection[str]) -> None:
        mine = self._apps.get(app)
        if mine is not None:
            for cid in [c for c in mine if c not in container_ids]:
                del mine[cid]
        if app in self._accepting:
            self._accepting[app] &= set(container_ids)


def not_taken(replica: str, port: int, proto: str) -> str:
    where = str(port) if proto == "tcp" else f"{port}/{proto}"
    return (f"{replica} did not take the listener lbctl handed it: it listens on its own port "
            f"{where} instead (its image ignores LISTEN_FDS); serve the inherited socket, or "
            "run the app without --activation")


class ActivationQuestions:
    """An interfaces.AnswersFor: activated apps' replicas as the module doc says, every other
    app's by `inner`."""

    def __init__(self, inner: AnswersFor, ebpf: EbpfPort | None,
                 activation: ActivationPort | None, states: ListenerStates) -> None:
        self.inner = inner
        self.ebpf = ebpf
        self.activation = activation
        self.states = states

    def __call__(self, spec: AppSpec, fail: Callable[[str], None],
                 bridges: Mapping[str, str | None]) -> Answers:
        if not spec.activated:
            return self.inner(spec, fail, bridges)
        self.states.keep(spec.name, bridges.keys())
        ebpf, activation, states = self.ebpf, self.activation, self.states
        port, proto = spec.publish.container_port, spec.publish.proto
        probe = spec.readiness
        families = sorted({p.family for p in spec.publishes})

        async def answers(c: Container) -> ProbeResult:
            if ebpf is None or activation is None or c.pid is None or not c.managed:
                # an adopted container was handed nothing
                return failed(Failure.NO_LISTENER, "lbctl handed it no listener")
            if await activation.own_listener(c.pid, port, proto):
                if states.get(spec.name, c.id) is not Listener.NOT_TAKEN:
                    await activation.shut_down(c.pid, spec.publish.host_port, proto)
                states.set(spec.name, c.id, Listener.NOT_TAKEN)
                fail(not_taken(c.name, port, proto))
                return failed(Failure.NO_LISTENER, "listens on its own port, not lbctl's")
            held = await ebpf.holds(spec.name, c.name, c.pid)
            states.set(spec.name, c.id, Listener.HELD if held else Listener.NONE)
            if not held:
                return failed(Failure.NO_LISTENER, "holds no listener lbctl handed it")
            if proto != "tcp" or (probe.path is None and states.accepting(spec.name, c.id)):
                return OK
            # Its listeners are the host's: the probe is made in the daemon's own namespace,
            # to the published address, through the slot (as for `--network host`).
            result = OK
            for family in families:
                got = await ebpf.probe_socket(spec.name, c.name, os.getpid(), family)
                if got is None:
                    return failed(Failure.JOINING, "listening, not in the socket map yet")
                sock, address = got
                to = (address, spec.publish.host_port)
                if probe.path is not None:
                    result = await http.ask(sock, to, probe)
                    if not result.ok:
                        return result
                    continue
                # Not serving yet is readiness, not liveness: such a replica is kept.
                why = await activation.accepts(sock, to, c.pid, probe.timeout)
                if why is not None:
                    return failed(Failure.TIMEOUT, why)
            if probe.path is None:
                states.accepted(spec.name, c.id)
            return result

        return answers
