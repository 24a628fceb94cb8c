"""How a docker run option is declared: once, as one field of lbctl.model.options.RunOptions,
with everything each part of lbctl does with it.

`opt(...)` makes the field and carries its `Option`:

- the command line: its flags, how they take a value (`Arg`), help (lbctl.cli.parser and
  lbctl.cli.inputs loop over the table);
- the spec: how a JSON value is checked and stored (`value`), which is what TOML, the API and
  the state file take, under the long flag's name (`pids-limit`);
- the engine: where `docker run` puts it in the create JSON (`engine`, a path such as
  "HostConfig.Memory", and `engine_value`; applied by lbctl.runtime.options);
- compose: the service key that says the same and how its value is written (`Compose`, read
  by lbctl.compose.reader and written by lbctl.export);
- Kubernetes: the pod fields that do the same, or why none does (`kube`: a function of the
  value, `Refines`, or `NotExported`; applied by lbctl.export);
- the members' policy: what the option could reach past the app's containers with
  (`Judge`; lbctl.controller.policy has one rule per class).

None of these has a default, so an option cannot be declared without deciding each; the
parts hold no per-option code of their own (lbctl.compose.reader and lbctl.export have one
handler per `Shape`, checked exhaustively by mypy).

The types link up: in `memory: str | None = opt(None, value=size(...), engine_value=
parse_size, kube=lambda m: ..., ...)` mypy checks that the field stores what `value` returns
and gives `engine_value` and `kube` that type (a lambda's parameter included), and the code
that reads the field keeps its type (`spec.options.memory: str | None`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

D = TypeVar("D")  # a field's default (None, (), False, {})
V = TypeVar("V")  # a given value, as the spec stores it

OPTION = "lbctl.option"  # the dataclass field's metadata key


class Arg(Enum):
    """How the command line gives an option."""

    SWITCH = "switch"  # --init: no value, given means true
    ONE = "one"  # --memory 512m: one value (the last one given)
    MANY = "many"  # -v A -v B: repeatable, a list
    PAIRS = "pairs"  # -l K=V -l K2=V2: repeatable, an object


class Judge(StrEnum):
    """How the members' policy (lbctl.controller.policy) judges an option: by what it could
    reach past the app's own containers with."""

    FREE = "free"  # nothing beyond the app's containers: never refused
    VOLUME_SOURCE = "volume source"  # -v: an absolute source binds the host's files
    MOUNT_SOURCE = "mount source"  # --mount: type=bind's source; volume drivers
    NETWORK = "network"  # networks to join: never the host's or another container's
    CAPABILITY = "capability"  # kernel capabilities: those allowed_cap_add names
    LOG_DRIVER = "log driver"  # where output goes: drivers allowed_log_drivers names
    PIDS_BOUND = "pids bound"  # a bound: never unlimited, at most max_pids_limit
    GROUP = "group"  # supplementary groups: never root's or those owning the host's
    NAMESPACE = "namespace"  # "host" or "container:X" shares a namespace: root's alone
    ROOT_ONLY = "root only"  # gives a container the host, whatever its value
    ULIMIT = "ulimit"  # rlimits: no unlimited memlock, no realtime or raised priority
    MEMORY_SIZE = "memory size"  # a tmpfs's pages are the replica's memory: at most its limit
    INTERVAL = "interval"  # how often the engine runs something on the host: a floor


class Shape(Enum):
    """How compose writes an option's value (the reader turns it into the spec's JSON, the
    exporter back)."""

    AS_IS = "as is"  # a YAML scalar the spec takes as it is (pids_limit: 100, init: true)
    TEXT = "text"  # a string; numbers become their text (mem_limit: 512m, user: 1000)
    TEXTS = "texts"  # a list of strings; numbers become their text (cap_add: [CHOWN])
    TEXT_OR_TEXTS = "text or texts"  # one string or a list (dns, tmpfs)
    NUMBER = "number"  # a number, or its text (cpus: "0.5")
    PAIRS = "pairs"  # a mapping of strings (logging.options)
    HOSTS = "hosts"  # extra_hosts: ["host:ip"] or {host: ip}
    ULIMITS = "ulimits"  # {nofile: {soft: 1, hard: 2}, nproc: 512}
    COMMAND = "command"  # a list, or a string split like a shell would
    SECONDS = "seconds"  # a duration (1m30s) as whole seconds, rounded up
    HEALTH_TEST = "health test"  # [CMD, ...], [CMD-SHELL, "..."] or a string
    SHORT_VOLUMES = "short volumes"  # the strings of `volumes:` (SRC:DST:OPTS)
    LONG_VOLUMES = "long volumes"  # the mappings of `volumes:` (type, source, target)
    NETWORKS = "networks"  # networks: / network_mode: (the project's default when absent)
    LABELS = "labels"  # labels: (list of K=V or a mapping), less lbctl's adoption label


@dataclass(frozen=True)
class Compose:
    """The service key that says the same as the option: `mem_limit`, or `parent.child` for
    a key inside a mapping (`healthcheck.interval`); `limit`: deploy.resources.limits.LIMIT
    says it too (compose's two spellings of a limit must agree)."""

    key: str
    shape: Shape = Shape.AS_IS
    limit: str | None = None


@dataclass
class CreateJSON:
    """The parts of the engine's create body that options fill: Config and HostConfig."""

    config: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)

    def put(self, path: str, value: object) -> None:
        """`put("HostConfig.Memory", n)`, `put("Config.Healthcheck.Interval", ns)`: the
        value at that path, lists and objects as JSON has them."""
        top, *middle, last = path.split(".")
        at = {"Config": self.config, "HostConfig": self.host}[top]
        for part in middle:
            at = at.setdefault(part, {})
        at[last] = _json(value)


def _json(v: object) -> object:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, Mapping):
        return dict(v)
    return v


# Where the engine takes an option: a path of its create body ("HostConfig.Memory"), to
# which the value goes (converted by the option's engine_value), or a function that puts it
# itself (one option, several fields); None: placed by the controller.
Engine = str | Callable[[V, CreateJSON], None] | None


# ---- Kubernetes ---------------------------------------------------------------------------

# Fields of a Deployment's pod template, by part: {"container": {...}, "pod": {...},
# "annotations": {...}}; lbctl.export merges every option's patch (mappings merge, lists
# extend).
Patch = dict[str, Any]


@dataclass(frozen=True)
class Unmapped:
    """This value has no Kubernetes field (the option may have one for other values);
    `note` is what the export's header lists."""

    note: str


@dataclass(frozen=True)
class NotExported:
    """No Kubernetes field does what the option does, whatever its value: the export's
    header names the option, and `reason` says why here."""

    reason: str


@dataclass(frozen=True)
class Refines(Generic[V]):
    """The option only refines another one (a health check's timings refine its command):
    without that one it is Unmapped(note)."""

    needs: str
    note: str
    write: Callable[[V], Patch | Unmapped]


# An option's pod fields: a function of its value, or why there are none.
Kube = Callable[[V], Patch | Unmapped] | Refines[V] | NotExported


def nest(path: str, value: object) -> Patch:
    """`nest("pod.dnsConfig.nameservers", [...])` -> {"pod": {"dnsConfig": {...}}}."""
    out: Any = _json(value)
    for part in reversed(path.split(".")):
        out = {part: out}
    return dict(out)


# ---- the declaration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Option(Generic[V]):
    """Everything lbctl knows about one docker run option (see the module's docstring)."""

    flags: tuple[str, ...]  # as docker run spells them, the long one last
    arg: Arg
    value: Callable[[Any, str], V]  # a JSON value, checked, as the spec stores it
    engine: Engine[V]
    compose: Compose
    kube: Kube[V]
    judge: Judge
    engine_value: Callable[[V], object] | None = None  # the value as `engine` takes it
    metavar: str | None = None
    help: str | None = None
    cli_type: Callable[[str], object] | None = None  # argparse's type= (a usage error)
    # The command line's text as JSON (per item of a MANY option), with the caller's
    # directory (docker run takes relative bind sources from it).
    from_cli: Callable[[str, Path], object] | None = None
    # Set on the sandbox in ebpf mode (Docker refuses it beside --network container:...).
    namespace: bool = False

    @property
    def key(self) -> str:
        """The option's name in JSON, TOML and `--unset`: the long flag's."""
        return self.flags[-1].removeprefix("--")

    @property
    def attr(self) -> str:
        """The RunOptions field that holds it."""
        return self.key.replace("-", "_")


@overload
def opt(default: D, *, flags: tuple[str, ...], arg: Arg, value: Callable[[Any, str], V],
        engine: Engine[V], compose: Compose, kube: Kube[V], judge: Judge,
        engine_value: Callable[[V], object] | None = None, metavar: str | None = None,
        help: str | None = None, cli_type: Callable[[str], object] | None = None,
        from_cli: Callable[[str, Path], object] | None = None,
        namespace: bool = False) -> D | V: ...


@overload
def opt(*, factory: Callable[[], D], flags: tuple[str, ...], arg: Arg,
        value: Callable[[Any, str], V], engine: Engine[V], compose: Compose, kube: Kube[V],
        judge: Judge, engine_value: Callable[[V], object] | None = None,
        metavar: str | None = None, help: str | None = None,
        cli_type: Callable[[str], object] | None = None,
        from_cli: Callable[[str, Path], object] | None = None,
        namespace: bool = False) -> D | V: ...


def opt(default: Any = None, *, factory: Callable[[], Any] | None = None,
        flags: tuple[str, ...], arg: Arg, value: Callable[[Any, str], Any],
        engine: Engine[Any], compose: Compose, kube: Kube[Any], judge: Judge,
        engine_value: Callable[[Any], object] | None = None, metavar: str | None = None,
        help: str | None = None, cli_type: Callable[[str], object] | None = None,
        from_cli: Callable[[str, Path], object] | None = None,
        namespace: bool = False) -> Any:
    """A RunOptions field (its default: the option not given) and its Option. Every part
    is a keyword without a default: an option cannot be declared without deciding it."""
    meta = {OPTION: Option(flags, arg, value, engine, compose, kube, judge, engine_value,
                           metavar, help, cli_type, from_cli, namespace)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def table(cls: type) -> tuple[Option[Any], ...]:
    """The Options of a dataclass's fields, in their order; every field must be one, named
    after its long flag."""
    out: list[Option[Any]] = []
    for f in fields(cls):
        o = f.metadata.get(OPTION)
        if not isinstance(o, Option):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with opt()")
        if o.attr != f.name:
            raise TypeError(f"{cls.__name__}.{f.name}: the field is named after the long "
                            f"flag ({o.flags[-1]} -> {o.attr})")
        out.append(o)
    return tuple(out)


def merge(into: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """Mappings merge, lists extend, anything else is replaced."""
    for k, v in patch.items():
        have = into.get(k)
        if isinstance(have, dict) and isinstance(v, Mapping):
            merge(have, v)
        elif isinstance(have, list) and isinstance(v, list):
            have.extend(v)
        else:
            into[k] = (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, list)
                       else v)
