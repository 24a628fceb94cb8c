"""docker run's options in the spec: docker's syntaxes (lbctl.model.docker_syntax) parsed,
bad values refused with one line, the JSON contract (field names, only what was given) and
the spec hash."""

from __future__ import annotations

from typing import Any

import pytest

from lbctl.model import AppSpec, InvalidInput
from lbctl.model.docker_syntax import (
    Mount,
    Ulimit,
    Volume,
    parse_add_host,
    parse_duration,
    parse_size,
    parse_tmpfs,
)
from lbctl.model.options import FIELDS, RunOptions

BASE = {"name": "web", "image": "lbctl/demo", "publish": "8080:8080"}


def spec(**opts: Any) -> AppSpec:
    return AppSpec.from_json({**BASE, **opts})


@pytest.mark.parametrize(("text", "n"), [
    ("512m", 512 << 20), ("1g", 1 << 30), ("1.5g", 3 << 29), ("64MB", 64 << 20), ("100", 100),
    ("10k", 10240), (4096, 4096),
])
def test_sizes(text: object, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "m", "1x", "-1m", "1 gig", True, None, "1e3"])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text)


@pytest.mark.parametrize(("text", "s"), [
    ("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600), ("0", 0), ("1.5s", 1.5),
    ("2m", 120), ("100us", 1e-4),
])
def test_durations(text: str, s: float) -> None:
    assert parse_duration(text) == pytest.approx(s)


@pytest.mark.parametrize("text", ["", "30", "s", "1d", "1m 30s", "-1s", "25h", 30])
def test_bad_durations(text: object) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(text)


def test_volume_syntax() -> None:
    assert Volume.parse("data:/data") == Volume("data", "/data")
    v = Volume.parse("/etc/app.conf:/etc/app.conf:ro")
    assert v.bind and v.read_only and v.options == ("ro",)
    assert Volume.parse("/cache") == Volume(None, "/cache")  # anonymous
    assert Volume.parse("/src:/dst:ro,rslave").options == ("ro", "rslave")


@pytest.mark.parametrize("text", [
    "", "data", "data:rel", "x:/d", "data:/d:bogus", "a:/b:/c:ro", "./rel:/d", "d@ta:/d",
    "data:/d:rshared", "/a:/b:ro,rw",
])
def test_bad_volumes(text: str) -> None:
    with pytest.raises(InvalidInput):
        Volume.parse(text)


def test_mount_syntax_and_canonical_text() -> None:
    m = Mount.parse("type=bind,src=/etc/x,dst=/x,ro=true,bind-propagation=rslave")
    assert (m.type, m.source, m.target, m.read_only, m.propagation) == (
        "bind", "/etc/x", "/x", True, "rslave")
    assert str(m) == "type=bind,source=/etc/x,target=/x,readonly,bind-propagation=rslave"
    t = Mount.parse("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1777")
    assert (t.tmpfs_size_bytes, t.tmpfs_mode_bits) == (64 << 20, 0o1777)
    v = Mount.parse("source=data,target=/d,volume-nocopy")  # type defaults to volume
    assert (v.type, v.nocopy) == ("volume", True)
    # one spelling per mount: spellings make no revisions
    assert spec(mount=["src=data,dst=/d"]).spec_hash() == spec(
        mount=["type=volume,source=data,target=/d"]).spec_hash()


@pytest.mark.parametrize("text", [
    "type=nfs,target=/x", "type=bind,source=rel,target=/x", "type=bind,target=/x",
    "type=tmpfs,source=x,target=/t", "type=volume,target=/x,tmpfs-size=1m",
    "type=volume,target=/x,consistency=cached", "type=bind,source=/a,target=/b,readonly=maybe",
    "target=/x,target=/y", "type=tmpfs,target=/t,tmpfs-mode=999", "type=volume,target",
])
def test_bad_mounts(text: str) -> None:
    with pytest.raises(InvalidInput):
        Mount.parse(text)


def test_small_syntaxes() -> None:
    assert Ulimit.parse("nofile=1024:4096") == Ulimit("nofile", 1024, 4096)
    assert Ulimit.parse("nproc=512") == Ulimit("nproc", 512, 512)
    assert Ulimit.parse("core=-1") == Ulimit("core", -1, -1)
    assert parse_tmpfs("/run:size=64m,mode=1777") == ("/run", "size=64m,mode=1777")
    assert parse_add_host("db:10.0.0.5") == ("db", "10.0.0.5")
    assert parse_add_host("v6:fe80::1") == ("v6", "fe80::1")
    assert parse_add_host("gw:host-gateway") == ("gw", "host-gateway")
    for bad in ("nofile", "nofile=a", "bogus=1", "nofile=10:5"):
        with pytest.raises(InvalidInput):
            Ulimit.parse(bad)
    for bad in ("run", "/run:size=1m;rm"):
        with pytest.raises(InvalidInput):
            parse_tmpfs(bad)
    for bad in ("db", "db:not-an-ip", "-x:1.2.3.4"):
        with pytest.raises(InvalidInput):
            parse_add_host(bad)


FULL: dict[str, Any] = {
    "volume": ["data:/data", "/etc/app.conf:/etc/app.conf:ro"],
    "mount": ["type=tmpfs,target=/scratch,tmpfs-size=16m"],
    "tmpfs": ["/run:size=1m"],
    "network": ["backend", "front"],
    "add-host": ["db2:10.0.0.5"],
    "dns": ["10.0.0.53"],
    "memory": "512m",
    "cpus": 0.5,
    "pids-limit": 100,
    "ulimit": ["nofile=1024:2048"],
    "user": "1000:1000",
    "workdir": "/data",
    "entrypoint": ["/httpd"],
    "label": {"team": "web"},
    "health-cmd": ["/httpd", "--check"],
    "health-interval": "1s",
    "health-timeout": "2s",
    "health-retries": 3,
    "health-start-period": "5s",
    "read-only": True,
    "cap-add": ["NET_BIND_SERVICE"],
    "cap-drop": ["ALL"],
    "stop-signal": "SIGINT",
    "stop-timeout": 20,
    "log-driver": "json-file",
    "log-opt": {"max-size": "10m"},
    "init": True,
    "shm-size": "96m",
    "group-add": ["1234", "audio"],
}


def test_every_option_round_trips_through_json_with_docker_names() -> None:
    assert set(FULL) == set(FIELDS)  # the contract: docker run's long flag names
    s = spec(**FULL)
    assert AppSpec.from_json(s.to_json()) == s
    assert {k: s.to_json()[k] for k in FULL} == FULL
    assert set(FULL) <= set(s.template_json())  # every option is part of the template


def test_no_options_keep_the_json_and_hash_of_before() -> None:
    """Upgrading lbctl must roll no replica: an app without options hashes as it did."""
    s = spec()
    assert s.options == RunOptions()
    assert set(s.to_json()) == {"name", "image", "publish", "replicas", "mode", "env",
                                "command", "update"}
    assert s.template_json() == {"image": "lbctl/demo", "env": {}, "command": []}
    # A readiness probe is part of the spec, not of the template: it rolls nothing.
    probed = spec(readiness={"path": "/ready", "interval": 0.5})
    assert probed.to_json()["readiness"]["path"] == "/ready"
    assert AppSpec.from_json(probed.to_json()) == probed
    assert probed.spec_hash() == s.spec_hash()


@pytest.mark.parametrize("key", sorted(FULL))
def test_changing_any_option_changes_the_hash(key: str) -> None:
    s = spec(**FULL)
    changed = dict(FULL)
    del changed[key]
    assert spec(**changed).spec_hash() != s.spec_hash()


@pytest.mark.parametrize("body", [
    {"volume": "data:/data"},  # a list, not a string
    {"volume": ["data:/data", "other:/data"]},  # one target twice
    {"volume": ["data:/x"], "tmpfs": ["/x"]},
    {"mount": ["type=bogus,target=/x"]},
    {"network": ["none"]}, {"network": ["container:x"]},
    {"network": ["a", "a"]},
    {"memory": "1k"}, {"memory": "lots"}, {"memory": True},
    {"cpus": 0}, {"cpus": "fast"}, {"cpus": True},
    {"pids-limit": "100"}, {"pids-limit": -2},
    {"user": "root;rm"}, {"user": ""},
    {"workdir": "relative"},
    {"entrypoint": "/httpd"}, {"entrypoint": []},
    {"label": {"lbctl.app": "x"}}, {"label": {"lbctl.managed": "true"}}, {"label": [1]},
    {"health-cmd": ""}, {"health-cmd": []}, {"health-interval": "10"},
    {"health-timeout": "1us"}, {"health-retries": -1},
    {"read-only": "yes"}, {"init": 1},
    {"cap-add": ["NET ADMIN"]}, {"cap-drop": "ALL"},
    {"stop-signal": "TERM;"}, {"stop-signal": 99}, {"stop-timeout": 601},
    {"log-driver": "json file"}, {"log-opt": {"max size": "1"}},
    {"add-host": ["db"]}, {"dns": ["dns.example"]},
    {"shm-size": "0"}, {"shm-size": "lots"}, {"shm-size": True}, {"shm-size": -1},
    {"group-add": "1234"}, {"group-add": ["a b"]}, {"group-add": [-1]},
    {"group-add": [str(1 << 32)]}, {"group-add": [1234]}, {"group-add": [""]},
    {"group-add": ["١٢٣"]},
    {"env-file": "x.env"},  # read by the CLI, never sent to the daemon
    {"privileged": True},  # not an option lbctl takes
    {"volume": [f"v{i}:/d{i}" for i in range(65)]},
])
def test_bad_options_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as e:
        spec(**body)
    assert "\n" not in str(e.value)


def test_namespace_options_and_networks() -> None:
    s = spec(network=["backend"], dns=["1.1.1.1"], memory="64m")
    assert s.options.networks() == ("backend",)
    assert spec().options.networks() == ("bridge",)
    plain = s.options.without("network", "dns", "add-host")
    assert plain.network == () and plain.dns == () and plain.memory == "64m"


def test_cpus_and_memory_accept_compose_forms() -> None:
    s = spec(cpus="0.25", memory=268435456)
    assert s.options.cpus == 0.25 and s.options.memory_bytes() == 256 << 20


def test_host_network_is_ebpf_mode_on_the_container_port() -> None:
    s = spec(mode="ebpf", network=["host"], publish="0.0.0.0:8080:8080")
    assert s.host_network and s.options.networks() == ("host",)
    assert AppSpec.from_json(s.to_json()) == s  # the state file round trip
    assert not spec().host_network


@pytest.mark.parametrize(("body", "says"), [
    ({"mode": "iptables", "network": ["host"], "publish": "8080:8080"}, "needs mode ebpf"),
    ({"mode": "ebpf", "network": ["host"], "publish": "8080:80"}, "same host and container"),
    ({"mode": "ebpf", "network": ["host", "backend"], "publish": "8080:8080"}, "combined"),
    ({"mode": "ebpf", "network": ["host"], "publish": "8080:8080", "dns": ["1.1.1.1"]}, "dns"),
    ({"mode": "ebpf", "network": ["host"], "publish": "8080:8080",
      "add-host": ["db:10.0.0.5"]}, "add-host"),
])
def test_host_network_refusals_name_the_reason(body: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as e:
        spec(**body)
    assert "\n" not in str(e.value)
