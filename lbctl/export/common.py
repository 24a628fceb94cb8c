"""What the exporters share: YAML out, an app's publishes as text, durations as Go writes
them."""

from __future__ import annotations

import re
from typing import Any

import yaml

from lbctl.model import AppSpec


def dump(*docs: Any) -> str:
    # safe_dump quotes what YAML 1.1 would misread ("8080:8080" is a base-60 number to it,
    # "yes" a boolean), so the output means what the spec says.
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def publish_field(spec: AppSpec) -> str | list[str]:
    """One publish as a string, several as a list: as in lbctl's own JSON."""
    pubs = [str(p) for p in spec.publishes]
    return pubs[0] if len(pubs) == 1 else pubs


def publish_flags(spec: AppSpec) -> str:
    return " ".join(f"-p {p}" for p in spec.publishes)


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration (`1m30s`, `500ms`, `0s`), as compose and swarm write them."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "")
    if s or ms:
        out += f"{s}.{ms:03d}".rstrip("0").rstrip(".") + "s" if s else f"{ms}ms"
    return out


def k8s_name(name: str) -> str:
    """An lbctl app name as a DNS-1035 label (Service names): `_` and `.` become `-`."""
    out = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not out or not out[0].isalpha():
        out = "app-" + out
    return out[:63].rstrip("-")
