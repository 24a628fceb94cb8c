"""Compose's variable interpolation and its env files, done as Compose does them, so a compose
file means to lbctl what it means to `docker-compose`. Pure: the environment is an argument.

Interpolation (the Compose Specification): `$VAR` and `${VAR}` (unset: empty), `${VAR:-d}`
(d when unset or empty), `${VAR-d}` (d when unset), `${VAR:?msg}` (an error when unset or
empty), `${VAR?msg}` (an error when unset), `$$` (a literal `$`). Values of the shell's
environment win over the project's `.env` file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lbctl.model.errors import InvalidInput

_VAR = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(
    rf"\$(?:(?P<escaped>\$)|(?P<bare>{_VAR})|\{{(?P<braced>{_VAR})"
    rf"(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}}]*))?\}}|(?P<invalid>))"
)


def interpolate_text(text: str, env: Mapping[str, str], where: str = "") -> str:
    """One string with every `$...` replaced."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped") is not None:
            return "$"
        if m.group("bare") is not None:
            return env.get(m.group("bare"), "")
        name = m.group("braced")
        if name is None:
            rest = text[m.start():m.start() + 20]
            raise InvalidInput(f"{where or 'compose file'}: invalid interpolation {rest!r} "
                               "(use $VAR, ${VAR}, ${VAR:-default} or $$ for a literal $)")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise InvalidInput(f"{where or 'compose file'}: required variable {name} is "
                               f"{'unset' if value is None else 'empty'}: {arg or 'set it'}")
        return value or ""

    return _TOKEN.sub(sub, text)


def interpolate(doc: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Every string value in a YAML document (keys stay as written, as in Compose)."""
    if isinstance(doc, str):
        return interpolate_text(doc, env, where)
    if isinstance(doc, dict):
        return {k: interpolate(v, env, f"{where}.{k}" if where else str(k))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [interpolate(v, env, where) for v in doc]
    return doc


def parse_dotenv(text: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Compose's `.env` and `env_file:` format: KEY=VALUE lines, `#` comments, an optional
    `export `, quotes around a value removed ("..." keeps escapes like \\n as written).
    A bare KEY takes its value from `env` (absent there: the key is left out)."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not re.fullmatch(_VAR, key):
            raise InvalidInput(f"line {n}: invalid variable name {key!r}")
        if not eq:
            if env is not None and key in env:
                out[key] = env[key]
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


def parse_docker_env_file(text: str, env: Mapping[str, str]) -> dict[str, str]:
    """`docker run --env-file`'s format: KEY=VALUE lines taken literally (quotes included),
    `#` comment lines; a bare KEY takes its value from `env` (absent: left out)."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line.strip() or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not re.fullmatch(_VAR, key):
            raise InvalidInput(f"line {n}: invalid variable name {key.strip()!r}")
        if eq:
            out[key] = value
        elif key in env:
            out[key] = env[key]
    return out
