"""Compose's variable interpolation and its `.env` format, done as the Compose Specification's
reference implementation (compose-go, what `docker compose` runs) does them, so a compose file
means to lbctl what it means to Compose. Pure: the environment is an argument.

Interpolation (compose-go's `template` package):

- `$VAR` and `${VAR}`: the value; unset is empty. A name is `[_a-zA-Z][_a-zA-Z0-9]*`, so
  `$FOO-bar` is FOO's value then `-bar`.
- `${VAR:-default}` (unset or empty) and `${VAR-default}` (unset): the default.
- `${VAR:+alt}` (set and not empty) and `${VAR+alt}` (set): the alternative, else the value.
- `${VAR:?message}` (unset or empty) and `${VAR?message}` (unset): an error,
  `required variable VAR is missing a value: message`.
- Defaults, alternatives and messages are themselves interpolated, so they nest:
  `${A:-${B:-x}}`, `${A-${B} ${C}}`, `${A?need $B}`; braces inside count in pairs
  (`${A:-{"json":1}}` is `{"json":1}`).
- `$$` is a literal `$`; a `$` that starts no name and no `{` is kept as written (`a $ b`, `^x$`).
- `${` with no valid name and operator before its `}` (`${}`, `${ A}`, `${A!}`, `${A`) is an
  error: `invalid interpolation format for PATH`.
- Values only, never keys; after interpolation the keys Compose types (`deploy.replicas`,
  `cpus`, `read_only`, `ulimits`, ...) are cast from strings to numbers and booleans.

`.env` and `env_file:` files (compose-go's `dotenv` package): `KEY=VALUE` or `KEY: VALUE`
lines, an optional `export `, `#` comment lines; unquoted values end at ` #` and are trimmed;
'single quotes' are literal; "double quotes" may span lines and take the shell escapes
(`\\n`, `\\t`, `\\"`, `\\\\`, `\\$`, `\\0NNN`); unquoted and double-quoted values are
interpolated like the compose file, from the environment first, then the file's earlier keys;
a bare `KEY` line takes its value from the environment (absent there: left out).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from lbctl.model.errors import InvalidInput

# compose-go's DefaultPattern: `$$`, `$name`, `${name}` or `${name<op>...}` (`.*` is greedy:
# the match runs to the last `}` and the replacement cuts it at the brace that closes the
# first), or `${` alone (invalid). Case-insensitive, as `(?i:...)` there.
_NAME = r"[_a-z][_a-z0-9]*"
_PATTERN = re.compile(
    rf"\$(?:(?P<escaped>\$)|(?P<named>{_NAME})|\{{(?:(?P<braced>{_NAME}(?::?[-+?](.*))?)\}}"
    rf"|(?P<invalid>)))",
    re.IGNORECASE,
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InvalidTemplate(Exception):
    """compose-go's InvalidTemplateError: `template` is the string being interpolated."""

    def __init__(self, template: str | None = None) -> None:
        super().__init__(template)
        self.template = template

    def __str__(self) -> str:
        return f"Invalid template: {_goquote(self.template or '')}"


class MissingRequired(Exception):
    """compose-go's MissingRequiredError (`${VAR?message}`, `${VAR:?message}`)."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(variable, reason)
        self.variable = variable
        self.reason = reason

    def __str__(self) -> str:
        if self.reason:
            return f"required variable {self.variable} is missing a value: {self.reason}"
        return f"required variable {self.variable} is missing a value"


Lookup = Callable[[str], str | None]


def substitute(template: str, lookup: Lookup) -> str:
    """compose-go's template.Substitute: one string, every `$...` replaced. `lookup` answers
    None for an unset variable (set but empty is "")."""
    out: list[str] = []
    pos = 0
    try:
        for m in _PATTERN.finditer(template):
            out.append(template[pos:m.start()])
            out.append(_replace(m.group(0), lookup))
            pos = m.end()
    except InvalidTemplate as e:
        if e.template is None:
            e.template = template  # the innermost string that held the bad `${`
        raise
    out.append(template[pos:])
    return "".join(out)


def _replace(substring: str, lookup: Lookup) -> str:
    """compose-go's DefaultReplacementAppliedFunc, step for step."""
    op = _operator(substring)  # chosen on the whole match, as compose-go does
    close = _first_closing_brace(substring)
    rest = ""
    if close > -1:
        substring, rest = substring[:close + 1], substring[close + 1:]
    m = _PATTERN.search(substring)
    assert m is not None  # it starts with the `$` the outer pattern matched
    if m.group("escaped"):
        return "$"
    substitution = m.group("named") or ""
    braced = not substitution
    if braced:
        substitution = m.group("braced") or ""
    if not substitution:
        raise InvalidTemplate()
    if braced and op is not None:
        value = _apply(op, substitution, lookup)
        if value is not None:
            return value + substitute(rest, lookup)
    return lookup(substitution) or ""


_OPERATORS = (":?", "?", ":-", "-", ":+", "+")


def _operator(template: str) -> str | None:
    """The operator that comes first in `template` (compose-go's
    getSubstitutionFunctionForTemplate)."""
    found = [(template.find(op), op) for op in _OPERATORS if op in template]
    return min(found)[1] if found else None


def _first_closing_brace(s: str) -> int:
    """compose-go's getFirstBraceClosingIndex, quirk included: the character after each `{` is
    skipped (it is the name's first, or a nested `${`'s `{`... after its `$`)."""
    depth = 0
    i = 0
    while i < len(s):
        if s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        if s[i] == "{":
            depth += 1
            i += 1
        i += 1
    return -1


def _apply(op: str, substitution: str, lookup: Lookup) -> str | None:
    """One operator; None when `substitution` does not contain it (not applied)."""
    if op not in substitution:
        return None
    name, _, arg = substitution.partition(op)
    value = lookup(name)
    if op in (":?", "?"):
        if value is None or (op == ":?" and value == ""):
            raise MissingRequired(name, substitute(arg, lookup))
        return value
    if op in (":-", "-"):
        if value is None or (op == ":-" and value == ""):
            return substitute(arg, lookup)
        return value
    # `:+` and `+`: the alternative when set (and not empty), else the value as it is.
    if value is not None and (op == "+" or value != ""):
        return substitute(arg, lookup)
    return value or ""


def interpolate_text(text: str, env: Mapping[str, str], where: str = "") -> str:
    """One string, with compose-go's error texts (on one line) for `where`, its dotted path."""
    try:
        return substitute(text, env.get)
    except InvalidTemplate as e:
        raise InvalidInput(f"invalid interpolation format for {where or 'compose file'}. "
                           f"You may need to escape any $ with another $. {e.template}") from None
    except MissingRequired as e:
        raise InvalidInput(f"error while interpolating {where or 'compose file'}: {e}") from None


# ---- typed keys -------------------------------------------------------------------------------

def _to_int(v: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", v):
        raise ValueError(f'strconv.Atoi: parsing {_goquote(v)}: invalid syntax')
    return int(v)


def _to_float(v: str) -> float:
    try:
        out = float(v)
    except ValueError:
        raise ValueError(f"strconv.ParseFloat: parsing {_goquote(v)}: invalid syntax") from None
    return out


def _to_bool(v: str) -> bool:
    low = v.lower()
    if low in ("true", "y", "yes", "on"):
        return True
    if low in ("false", "n", "no", "off"):
        return False
    raise ValueError(f"invalid boolean: {v}")


# compose-go's loader/interpolate.go interpolateTypeCastMapping: these keys are typed, so a
# string there (as every interpolated value is) is cast after interpolation.
_S = "services.*."
_CASTS: dict[str, Callable[[str], Any]] = {
    **{_S + k: _to_int for k in (
        "cpu_count", "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares",
        "deploy.replicas", "deploy.update_config.parallelism", "deploy.rollback_config.parallelism",
        "deploy.restart_policy.max_attempts", "deploy.placement.max_replicas_per_node",
        "healthcheck.retries", "oom_score_adj", "pids_limit", "ports.[].target", "scale",
        "ulimits.*", "ulimits.*.hard", "ulimits.*.soft")},
    **{_S + k: _to_float for k in (
        "cpu_percent", "cpus", "deploy.update_config.max_failure_ratio",
        "deploy.rollback_config.max_failure_ratio")},
    **{_S + k: _to_bool for k in (
        "init", "depends_on.*.required", "depends_on.*.restart", "healthcheck.disable",
        "oom_kill_disable", "privileged", "read_only", "stdin_open", "tty",
        "volumes.[].read_only", "volumes.[].volume.nocopy")},
    **{f"{top}.*.external": _to_bool for top in ("networks", "volumes", "secrets", "configs")},
    **{f"networks.*.{k}": _to_bool for k in ("internal", "attachable", "enable_ipv4",
                                              "enable_ipv6")},
}


def _cast_for(path: list[str]) -> Callable[[str], Any] | None:
    for pattern, cast in _CASTS.items():
        parts = pattern.split(".")
        if len(parts) == len(path) and all(p in ("*", q) for p, q in zip(parts, path,
                                                                              strict=True)):
            return cast
    return None


def interpolate(doc: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Every string value in a YAML document (keys stay as written, as in Compose), then the
    typed keys cast. Errors name the value's path as compose-go does (`services.web.image`,
    `services.web.ports.[]` for a list item)."""
    return _interpolate(doc, env, where.split(".") if where else [])


def _interpolate(doc: Any, env: Mapping[str, str], path: list[str]) -> Any:
    if isinstance(doc, str):
        where = ".".join(path)
        value = interpolate_text(doc, env, where)
        cast = _cast_for(path)
        if cast is None:
            return value
        try:
            return cast(value)
        except ValueError as e:
            raise InvalidInput(f"error while interpolating {where}: failed to cast to expected "
                               f"type: {e}") from None
    if isinstance(doc, dict):
        return {k: _interpolate(v, env, [*path, str(k)]) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_interpolate(v, env, [*path, "[]"]) for v in doc]
    return doc


# ---- .env files -------------------------------------------------------------------------------

_ESCAPE = re.compile(r'\\(?:[abcfnrtv$"\\]|0[0-9]{0,3})')
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   '"': '"', "\\": "\\"}
_SPACE = "\t\v\f\r \x85\xa0"  # compose-go's isSpace: not the line break


def parse_dotenv(text: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A `.env` or `env_file:` file, as compose-go's dotenv parser reads it. `env` is what
    values are interpolated from and bare keys inherit (before the file's own earlier keys).
    Errors are one line, `line N: ...`, in compose-go's words."""
    return _DotenvParser(env or {}).parse(text.removeprefix("\ufeff"))


class _DotenvParser:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.line = 1
        self.out: dict[str, str] = {}

    def lookup(self, key: str) -> str | None:
        v = self.env.get(key)
        return v if v is not None else self.out.get(key)

    def parse(self, src: str) -> dict[str, str]:
        while True:
            src = self._statement_start(src)
            if not src:
                return self.out
            key, src, inherited = self._key(src)
            if " " in key:
                raise InvalidInput(f"line {self.line}: key cannot contain a space")
            if inherited:
                v = self.env.get(key)
                if v is not None:
                    self.out[key] = v
                continue
            self.out[key], src = self._value(src)

    def _statement_start(self, src: str) -> str:
        while True:
            pos = self._non_space(src)
            if pos == -1:
                return ""
            src = src[pos:]
            if src[0] != "#":
                return src
            nl = src.find("\n")
            if nl == -1:
                return ""
            src = src[nl:]

    def _non_space(self, src: str) -> int:
        for i, ch in enumerate(src):
            if ch == "\n":
                self.line += 1
            if not ch.isspace():
                return i
        return -1

    def _key(self, src: str) -> tuple[str, str, bool]:
        if re.match(r"export[\t\n\f\r ]", src):
            src = src[len("export"):].lstrip(_SPACE)
        for i, ch in enumerate(src):
            if ch in _SPACE:
                continue
            if ch in "=:\n":
                key, offset, inherited = src[:i], i + 1, ch == "\n"
                break
            if ch in "_.-[]" or unicodedata.category(ch)[0] in "LN":
                continue
            raise InvalidInput(f"line {self.line}: unexpected character {_goquote(ch)} in "
                               f"variable name {_goquote(src.split(chr(10))[0])}")
        else:
            # A bare KEY on the file's last line: compose-go would read it as a value for an
            # empty key; it is meant as the inherited KEY, as on any other line.
            key, offset, inherited = src, len(src), True
        if inherited and " " not in key:
            self.line += 1
        return key.rstrip(), src[offset:].lstrip(_SPACE), inherited

    def _value(self, src: str) -> tuple[str, str]:
        quote = src[:1]
        if quote not in ("'", '"'):
            value, _, rest = src.partition("\n")
            self.line += 1
            value = value.split(" #", 1)[0].rstrip()
            return self._expand(value), rest
        chars: list[str] = []
        escaped = False
        for i in range(1, len(src)):
            ch = src[i]
            if ch == "\n":
                self.line += 1
            if ch != quote:
                if not escaped and ch == "\\":
                    escaped = True
                    continue
                if escaped:
                    escaped = False
                    chars.append("\\")
                chars.append(ch)
                continue
            if escaped:  # \" in "...", \' in '...'
                escaped = False
                chars.append(ch)
                continue
            value = "".join(chars)
            if quote == '"':
                value = self._expand(_expand_escapes(value))
            return value, src[i + 1:]
        end = src.find("\n")
        raise InvalidInput(f"line {self.line}: unterminated quoted value "
                           f"{src if end == -1 else src[:end]}")

    def _expand(self, value: str) -> str:
        try:
            return substitute(value, self.lookup)
        except (InvalidTemplate, MissingRequired) as e:
            raise InvalidInput(str(e)) from None


def _expand_escapes(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        s = m.group(0)
        if s == "\\$":
            return "$$"  # a literal `$` to the interpolation that follows
        if s[1] == "0":
            digits = s[2:]
            if len(digits) == 3 and all(c in "01234567" for c in digits) and int(digits, 8) < 256:
                return chr(int(digits, 8))
            return "\\" + digits  # compose-go keeps what Go cannot unquote, `\0` rewritten
        return _SIMPLE_ESCAPES[s[1]]

    return _ESCAPE.sub(one, text)


def _goquote(s: str) -> str:
    """Go's %q, for the strings of its error messages."""
    return json.dumps(s, ensure_ascii=False)


def parse_docker_env_file(text: str, env: Mapping[str, str]) -> dict[str, str]:
    """`docker run --env-file`'s format: KEY=VALUE lines taken literally (quotes included),
    `#` comment lines; a bare KEY takes its value from `env` (absent: left out)."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line.strip() or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not _ENV_NAME.fullmatch(key):
            raise InvalidInput(f"line {n}: invalid variable name {key.strip()!r}")
        if eq:
            out[key] = value
        elif key in env:
            out[key] = env[key]
    return out
