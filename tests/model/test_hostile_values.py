"""Values an attacker (or a typo) sends that the engine would choke on, read differently, or
answer only at create time with a crash loop: each is refused by the model with one short
line (InvalidInput: HTTP 400, exit 2), never an exception of another kind (a 500), and a
property test throws arbitrary JSON at every parser of untrusted input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbctl.model import AppSpec, Forbidden, InvalidInput, parse_replicas
from lbctl.model.changes import Apply, Scale, Update
from lbctl.model.docker_syntax import MAX_INT64, parse_size
from lbctl.model.options import OPTIONS
from lbctl.model.spec import Mode

BASE = {"name": "web", "image": "lbctl/demo", "publish": "8080:8080"}
HUGE = "9" * 400


def refused(**fields: Any) -> str:
    with pytest.raises(InvalidInput) as e:
        AppSpec.from_json({**BASE, **fields})
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 250, msg
    return msg


@pytest.mark.parametrize(("field", "value", "words"), [
    ("memory", HUGE, "memory"),
    ("memory", 10 ** 30, "memory"),
    ("memory", "8589934592g", "larger than the engine's largest"),
    ("shm-size", HUGE, "shm-size"),
    ("tmpfs", [f"/x:size={HUGE}"], "tmpfs size"),
    ("tmpfs", ["/x:nr_inodes=99999999999999999999999"], "larger than"),
    ("tmpfs", ["/x:foo"], "invalid tmpfs option 'foo'"),
    ("tmpfs", ["/x:uid=99999999999"], "invalid tmpfs option"),
    ("mount", [f"type=tmpfs,target=/x,tmpfs-size={HUGE}"], "tmpfs-size"),
    ("ulimit", ["nofile=99999999999999999999999"], "at most 2^63 - 1"),
    ("ulimit", ["nofile=9223372036854775808"], "at most 2^63 - 1"),
    ("env", {"A": "x\0y"}, "env.A: NUL"),
    ("env", ["A=x\0"], "NUL"),
    ("command", ["sh", "-c", "a\0b"], "command[2]: NUL"),
    ("entrypoint", ["/bin/a\0"], "entrypoint[0]: NUL"),
    ("health-cmd", "true\0", "health-cmd: NUL"),
    ("health-cmd", ["/bin/true", "\0"], "NUL"),
    ("label", {"a": "b\0"}, "NUL"),
    ("log-opt", {"max-size": "1m\0"}, "NUL"),
    ("stop-signal", "SIGFOO", "invalid stop-signal 'SIGFOO'"),
    ("stop-signal", "RTMIN+99", "invalid stop-signal"),
    ("stop-signal", 0, "invalid stop-signal"),
    ("stop-signal", "SIG" + HUGE, "invalid stop-signal"),
    ("volume", ["data:/"], "root cannot be a mount target"),
    ("volume", ["/srv/a:/."], "root cannot be a mount target"),
    ("mount", ["type=volume,source=data,target=/"], "root cannot be a mount target"),
    ("tmpfs", ["//"], "root cannot be a mount target"),
    ("dns", ["fe80::1%eth0"], "without a %zone"),
    ("add-host", ["db:fe80::1%eth0"], "no %zone"),
    ("publish", "[2001:db8::1%eth0]:8080:80", "no %zone"),
])
def test_each_hostile_value_is_one_line(field: str, value: object, words: str) -> None:
    assert words in refused(**{field: value})


def test_a_nul_in_any_field_or_key_is_refused() -> None:
    for body in ({**BASE, "image": "img\0"}, {**BASE, "env": {"A\0": "1"}},
                 {**BASE, "update": {"order": "start-first\0"}}):
        with pytest.raises(InvalidInput, match="NUL"):
            AppSpec.from_json(body)
    with pytest.raises(InvalidInput, match="NUL"):
        Update.parse("web", {"env_add": {"A": "\0"}})
    with pytest.raises(InvalidInput, match="NUL"):
        Apply.parse({"apps": [BASE], "volumes": {"data": {"k": "v\0"}}}, Mode.IPTABLES)


def test_real_signals_pass_as_written() -> None:
    for sig in ("SIGTERM", "TERM", "sigquit", "SIGRTMIN+3", "RTMAX-2", "15", 9, "SIGWINCH"):
        assert AppSpec.from_json({**BASE, "stop-signal": sig}).options.stop_signal == str(sig)


def test_sizes_up_to_int64_pass() -> None:
    assert parse_size("8191p") == 8191 << 50
    assert parse_size(MAX_INT64) == MAX_INT64
    with pytest.raises(InvalidInput):
        parse_size(MAX_INT64 + 1)
    AppSpec.from_json({**BASE, "tmpfs": ["/x:size=64m,mode=1777,noexec,uid=1000"]})


def test_scale_counts_of_any_length_are_one_line() -> None:
    with pytest.raises(InvalidInput) as e:
        parse_replicas("9" * 5000)
    assert len(str(e.value)) < 120 and "5000 characters" in str(e.value)
    with pytest.raises(InvalidInput):
        Scale.parse("web", {"replicas": 2 ** 64})


def test_lbctl_labels_are_nobodys_to_set() -> None:
    with pytest.raises(Forbidden, match="lbctl's own"):
        AppSpec.from_json({**BASE, "label": {"lbctl.managed": "true"}})
    with pytest.raises(Forbidden, match=r"volume data: label 'lbctl\.owner'"):
        Apply.parse({"apps": [BASE], "volumes": {"data": {"lbctl.owner": "0"}}}, Mode.IPTABLES)
    with pytest.raises(Forbidden, match="network lbctl: the name is lbctl's own"):
        Apply.parse({"apps": [BASE], "networks": {"lbctl": {}}}, Mode.IPTABLES)


# ---- any JSON at all ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2 ** 62)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
    | st.sampled_from([HUGE, "\0", "/", "-1", "1e400", "9" * 30 + "g", "SIGFOO", "fe80::1%lo",
                       "/x:size=" + HUGE, "type=bind,source=/,target=/x", "nofile=-1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
# A valid app with some of its fields (docker run's options included) replaced by any JSON:
# the parsers' every branch, not only the first type check.
field_names = st.sampled_from(["name", "image", "publish", "replicas", "mode", "env",
                               "command", "update", *(o.key for o in OPTIONS)])
mutated_apps = st.dictionaries(field_names, json_values, max_size=4).map(
    lambda d: {**BASE, **d})


@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=mutated_apps | json_values)
def test_any_json_is_an_app_or_one_line_of_bad_input(body: object) -> None:
    for parse in (lambda b: AppSpec.from_json(b), lambda b: Update.parse("web", b),
                  lambda b: Apply.parse({"apps": [b]}, Mode.EBPF),
                  lambda b: Scale.parse("web", b)):
        try:
            parse(body)
        except InvalidInput as e:
            assert str(e) and "\n" not in str(e), repr(str(e))
