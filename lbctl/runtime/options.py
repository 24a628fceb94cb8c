"""docker run's options (`lbctl.model.options.RunOptions`) as the engine's create JSON: what
`docker run` itself sends for the same flags, so a replica inspects like the container the
user would have started by hand. Where each option goes is its entry's `engine` in the option
table; this applies them. Pure: tested without an engine.

Networks are not here: which networks a container joins is decided with the app's mode in
`lbctl.controller.template` and applied by the engine facade (a create names one network, the
others are connected before the start).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lbctl.model.option import CreateJSON
from lbctl.model.options import RunOptions


def create_config(opts: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Config fields, HostConfig fields) for `opts`; only what was given appears."""
    out = CreateJSON()
    for o, v in opts.given():
        if isinstance(o.engine, str):
            out.put(o.engine, v if o.engine_value is None else o.engine_value(v))
        elif o.engine is not None:
            o.engine(v, out)
    return out.config, out.host


def merge_ulimits(defaults: Sequence[Mapping[str, Any]], given: Sequence[Mapping[str, Any]]
                  ) -> list[Mapping[str, Any]]:
    """The engine's default ulimits (Podman needs explicit ones) under the app's own."""
    names = {u["Name"] for u in given}
    return [*(u for u in defaults if u["Name"] not in names), *given]
