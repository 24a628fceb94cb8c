"""The members' policy: the file (shipped, missing, damaged, loosely owned) and every rule,
judged on apps' JSON as the API receives them, including fields this version's parser does
not know (the checks must hold from the day such a field lands)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lbctl.controller import policy
from lbctl.controller.policy import Policy, PolicyError
from lbctl.model import AppSpec, Forbidden, InvalidInput

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "etc" / "policy.toml"


def app(**kw: Any) -> dict[str, Any]:
    return {"name": "web", "image": "img:1", "publish": "127.0.0.1:8080:80", **kw}


def refused(p: Policy, body: dict[str, Any], *words: str) -> str:
    with pytest.raises(Forbidden) as e:
        p.check_app(body)
    msg = str(e.value)
    assert msg.startswith("policy: ") and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ---- the file ------------------------------------------------------------------------------


def test_the_shipped_file_is_the_built_in_default() -> None:
    """etc/policy.toml (what the package installs) and no file at all mean the same."""
    shipped = policy.parse(__import__("tomllib").loads(SHIPPED.read_text()), SHIPPED)
    assert replace(shipped, path=Policy().path, from_file=False) == Policy()


def test_a_missing_default_file_is_the_defaults_an_explicit_one_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policy, "DEFAULT_PATH", tmp_path / "absent.toml")
    p = policy.load(None)
    assert p == Policy(path=tmp_path / "absent.toml") and not p.from_file
    msg = refused(p, app(publish="127.0.0.1:22:22"), "built-in default", "absent.toml")
    assert "allowed_ports" in msg
    with pytest.raises(PolicyError, match="does not exist"):
        policy.load(tmp_path / "typo.toml")


def test_a_file_is_read_and_named_in_refusals(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text('allowed_ports = [8080, "9000-9100"]\nallowed_host_ips = ["0.0.0.0", '
                 '"127.0.0.1"]\nallowed_bind_sources = ["/srv/apps/"]\nmax_replicas = 4\n'
                 'max_apps = 3\nallowed_cap_add = ["cap_net_admin"]\n')
    os.chmod(f, 0o644)
    p = policy.load(f)
    assert p.from_file and p.allowed_ports == ((8080, 8080), (9000, 9100))
    assert p.allowed_bind_sources == ("/srv/apps",) and p.allowed_cap_add == {"NET_ADMIN"}
    p.check_app(app(publish="0.0.0.0:9050:80", replicas=4, volume=["/srv/apps/x:/x"],
                    **{"cap-add": ["NET_ADMIN"]}))
    assert refused(p, app(publish="9101:80"), "host port 9101 is not allowed") == (
        f"policy: host port 9101 is not allowed (allowed_ports in {f})")
    refused(p, app(publish="127.0.0.2:8080:80"), "host IP 127.0.0.2", f"allowed_host_ips in {f}")
    refused(p, app(replicas=5), "5 replicas are more than 4", "max_replicas")


@pytest.mark.parametrize("text, words", [
    ("allowed_port = [1]\n", "unknown key(s) allowed_port"),
    ("allowed_ports = [0]\n", "allowed_ports: 0"),
    ('allowed_ports = ["2000-1000"]\n', "2000-1000"),
    ('allowed_ports = "1024-65535"\n', "must be a list"),
    ('allowed_ports = ["8080\\n"]\n', "allowed_ports: '8080\\n'"),
    ('allowed_ports = [" 8080"]\n', "allowed_ports: ' 8080'"),
    ('allowed_ports = ["\\u0661\\u0662\\u0663\\u0664"]\n', "allowed_ports: '"),
    ('allowed_host_ips = ["localhost"]\n', "'localhost' is not an IP address"),
    ('allowed_bind_sources = ["srv"]\n', "not an absolute path"),
    ("max_pids_limit = 0\n", "max_pids_limit must be"),
    ("max_apps = true\n", "max_apps must be"),
    ("allowed_ports = [\n", "policy file"),
])
def test_a_bad_file_stops_the_daemon_with_one_line(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(text)
    os.chmod(f, 0o644)
    with pytest.raises(PolicyError) as e:
        policy.load(f)
    assert words in str(e.value) and str(f) in str(e.value)


def test_a_file_others_can_write_is_refused(tmp_path: Path) -> None:
    """A member who can edit the policy can loosen it: the daemon does not start on it."""
    f = tmp_path / "policy.toml"
    f.write_text("max_apps = 1\n")
    os.chmod(f, 0o664)
    with pytest.raises(PolicyError, match="writable by root only"):
        policy.load(f)
    os.chmod(f, 0o644)
    os.chown(f, 65534, 0)
    with pytest.raises(PolicyError, match="owned by root"):
        policy.load(f)


# ---- the rules, with the defaults ------------------------------------------------------------

P = Policy()


def test_defaults_allow_a_real_service() -> None:
    P.check_app(app(replicas=8, volume=["data:/data", "/cache"], mount=[
        "type=volume,source=db,target=/db", "type=tmpfs,target=/tmp"], network=["backend"],
        **{"cap-drop": ["ALL"], "cap-add": ["NET_BIND_SERVICE", "cap_chown"],
           "pids-limit": 512, "log-driver": "local", "memory": "64m", "read-only": True,
           "security-opt": ["no-new-privileges"], "privileged": False}))
    P.check_app(app(publish="8080:80"))  # the host IP defaults to 127.0.0.1
    P.check_app(app(publish="127.9.9.9:65535:80/udp"))


@pytest.mark.parametrize("publish, words", [
    ("127.0.0.1:22:22", ["host port 22 is below 1024", "allowed_ports"]),
    ("80:8080", ["host port 80 is below 1024"]),
    ("0.0.0.0:8080:80", ["host IP 0.0.0.0 (every address) is not allowed", "allowed_host_ips"]),
    ("10.0.0.1:8080:80", ["host IP 10.0.0.1"]),
    (["127.0.0.1:8080:80", "127.0.0.1:443:443"], ["host port 443"]),  # a list, once it lands
])
def test_host_ports_and_addresses(publish: object, words: list[str]) -> None:
    refused(P, app(publish=publish), *words)


@pytest.mark.parametrize("field, value, words", [
    ("volume", ["/:/host"], ["bind mount of / is not allowed", "allowed_bind_sources"]),
    ("volume", ["/etc:/etc:ro"], ["bind mount of /etc"]),
    ("volume", ["./data:/data"], ["needs an absolute source"]),
    ("mount", ["type=bind,source=/,target=/host"], ["bind mount of /"]),
    ("mount", ["type=bind,src=/var/run/docker.sock,target=/s"], ["docker.sock"]),
    ("mount", ["target=/x,type=bind,source=/root"], ["bind mount of /root"]),
    ("mount", ["type=bind,target=/x"], ["absolute source"]),
    ("mount", ["type=volume,source=v,target=/x,volume-opt=device=/"], ["volume drivers"]),
    ("mount", ["type=npipe,source=x,target=/x"], ["cannot check mount"]),
    ("network", ["host"], ["network host is root's alone"]),
    ("network", ["container:db"], ["network container:db"]),
    ("cap-add", ["SYS_ADMIN"], ["cap-add SYS_ADMIN is not allowed", "allowed_cap_add"]),
    ("cap-add", ["ALL"], ["cap-add ALL"]),
    ("cap-add", ["CAP_NET_ADMIN"], ["cap-add CAP_NET_ADMIN"]),
    ("cap-add", ["NET_RAW"], ["cap-add NET_RAW"]),
    ("pids-limit", -1, ["pids-limit -1 is not from 1 to 4096", "max_pids_limit"]),
    ("pids-limit", 0, ["pids-limit 0"]),
    ("pids-limit", 5000, ["pids-limit 5000"]),
    ("log-driver", "syslog", ["log-driver 'syslog'", "allowed_log_drivers"]),
    # refused by the spec parser too; refused here whatever the parser becomes
    ("privileged", True, ["privileged is root's alone"]),
    ("device", ["/dev/sda:/dev/sda"], ["device is root's alone"]),
    ("pid", "host", ["pid host shares a namespace"]),
    ("ipc", "host", ["ipc host"]),
    ("ipc", "container:db", ["ipc container:db"]),
    ("userns", "host", ["userns host"]),
    ("security-opt", ["seccomp=unconfined"], ["security-opt is root's alone"]),
    ("sysctl", {"net.ipv4.ip_forward": "1"}, ["sysctl"]),
    ("volumes-from", ["other"], ["volumes-from"]),
    # a value the policy cannot read is not a value it allows
    ("volume", "/:/host", ["bind mount of /"]),
    ("volume", [{"source": "/"}], ["cannot check volume"]),
    ("cap-add", "SYS_ADMIN", ["cap-add SYS_ADMIN"]),
    ("pids-limit", "100", ["pids-limit '100'"]),
])
def test_each_rule_refuses_with_its_name(field: str, value: object, words: list[str]) -> None:
    refused(P, app(**{field: value}), *words)


def test_harmless_values_of_dangerous_fields_pass() -> None:
    P.check_app(app(ipc="private", pid=None, privileged=False, device=[],
                    **{"security-opt": "no-new-privileges:true"}))


def test_bind_sources_under_an_allowed_prefix_only(tmp_path: Path) -> None:
    """Prefixes match whole path components; a member names the path as it is (no `..`:
    the engine resolves it on disk, past a symlink). What the path is on disk (symlinks,
    who may write it) is judged with the engine's view: tests/controller/test_sources.py."""
    srv = tmp_path / "srv"
    p = replace(P, allowed_bind_sources=(str(srv),))
    p.check_app(app(volume=[f"{srv}:/a", f"{srv}/app:/b:ro"],
                    mount=[f"type=bind,source={srv}/app,target=/c"]))
    refused(p, app(volume=[f"{tmp_path}/srvother:/x"]), "srvother")
    refused(p, app(volume=[f"{srv}/../../etc:/x"]), "not allowed")
    refused(p, app(volume=[f"{srv}/app/../app:/x"]), "without . or ..")
    refused(p, app(mount=[f"type=bind,source={srv}/./app,target=/x"]), "without . or ..")


@pytest.mark.parametrize(("source", "holds"), [
    ("/", "is /"), ("/run/lbctl", "is /run/lbctl"), ("/run", "holds /run/lbctl"),
    ("/run/lbctl/lbctl.sock", "is under /run/lbctl"), ("/var/lib", "holds /var/lib/lbctl"),
    ("/proc/1", "is under /proc"), ("/sys/fs/bpf", "is under /sys"), ("/dev/sda", "under /dev"),
    ("/var/lib/docker/volumes/db/_data", "is under /var/lib/docker"),
    ("/etc/lbctl", "is /etc/lbctl"), ("/etc", "holds /etc/lbctl"),
    ("/srv/state", "is /srv/state"),  # the daemon's own, added to the list
])
def test_some_paths_are_never_a_members_whatever_the_file_says(source: str, holds: str) -> None:
    p = replace(P, allowed_bind_sources=("/",), protected=(*policy.PROTECTED, "/srv/state"))
    msg = refused(p, app(volume=[f"{source}:/x"]), "is never a member's", holds)
    assert "allowed_bind_sources" not in msg  # no line of the file can allow it
    p.check_app(app(volume=["/srv/www:/x", "/home/alice/conf:/y", "/opt/app:/z"]))


def test_caps_on_replicas_refuse_growth_only() -> None:
    p = replace(P, max_replicas=3)
    p.check_app(app(replicas=3))
    p.check_app(app())  # one replica by default
    refused(p, app(replicas=4), "4 replicas are more than 3")
    with pytest.raises(Forbidden, match="max_replicas"):
        p.check_replicas(10)
    # Root's app above the cap: a member may scale it down, or change it at its count.
    p.check_replicas(8, current=10)
    p.check_app(app(replicas=10), current_replicas=10)
    with pytest.raises(Forbidden, match="11 replicas are more than 3"):
        p.check_replicas(11, current=10)
    # The defaults: 16 replicas per app, 32 apps on the host.
    P.check_replicas(16)
    refused(P, app(replicas=17), "17 replicas are more than 16", "max_replicas: the built-in")
    assert P.max_apps == 32


def test_host_ips_of_either_family() -> None:
    """IPv6 networks can be allowed too (an address never matches a network of the other
    family: ::ffff:127.0.0.1 is not 127.0.0.1 for this check)."""
    p = policy.parse({"allowed_host_ips": ["127.0.0.1", "fd00::/8"]})
    assert [str(n) for n in p.allowed_host_ips] == ["127.0.0.1/32", "fd00::/8"]
    p.check_app(app(publish="127.0.0.1:8080:80"))
    refused(p, app(publish="127.0.0.2:8080:80"), "host IP 127.0.0.2")


def test_networks_to_create_follow_the_networks_to_join() -> None:
    p = replace(P, allowed_networks=("team-*",))
    p.check_app(app(network=["team-a"]))
    p.check_resources(["team-b"])
    with pytest.raises(Forbidden, match="network other is not allowed"):
        p.check_resources(["other"])
    refused(p, app(network=["team-a", "db"]), "network db")


def test_every_option_has_its_class_and_every_class_its_rule() -> None:
    """A new option of the table needs a decision here: this is how each is judged. FREE
    ones cannot reach past the app's containers."""
    from lbctl.model.option import Judge
    from lbctl.model.options import OPTIONS

    assert set(policy._RULES) == set(Judge)  # a class without a rule cannot be declared
    assert {o.key: o.judge for o in OPTIONS if o.judge is not Judge.FREE} == {
        "volume": Judge.VOLUME_SOURCE, "mount": Judge.MOUNT_SOURCE, "network": Judge.NETWORK,
        "pids-limit": Judge.PIDS_BOUND, "cap-add": Judge.CAPABILITY,
        "log-driver": Judge.LOG_DRIVER, "group-add": Judge.GROUP, "ulimit": Judge.ULIMIT,
        "tmpfs": Judge.MEMORY_SIZE, "shm-size": Judge.MEMORY_SIZE,
        "health-interval": Judge.INTERVAL}
    assert {o.key for o in OPTIONS if o.judge is Judge.FREE} == {
        "add-host", "dns", "memory", "cpus", "user", "workdir",
        "entrypoint", "label", "health-cmd", "health-timeout",
        "health-retries", "health-start-period", "read-only", "cap-drop", "stop-signal",
        "stop-timeout", "log-opt", "init"}


def test_the_policy_judges_every_option_by_its_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_app hands every option the app gives to its class's rule (none slips past)."""
    from lbctl.model.options import OPTIONS
    from tests.model.test_spec_options import FULL

    judged: list[tuple[str, str]] = []
    def spy(j: object) -> Callable[[object, str, object, object], None]:
        return lambda p, key, value, app: judged.append((key, str(j)))

    for judge in list(policy._RULES):
        monkeypatch.setitem(policy._RULES, judge, spy(judge))
    P.check_app(app(**FULL))
    assert judged == [(o.key, str(o.judge)) for o in OPTIONS]


@pytest.mark.parametrize("groups", [["0"], ["root"], ["docker"], ["disk"], ["shadow"],
                                    ["sudo"], ["adm"], ["audio", "00"]])
def test_a_member_adds_no_privileged_group(groups: list[str]) -> None:
    refused(P, app(**{"group-add": groups}), "group-add", "root's alone")


def test_privileged_groups_by_their_numbers_on_this_host() -> None:
    """The image's names are its own; a number is the host's too (the group owning host
    files a replica may reach): the host's numbers of those groups are refused as well."""
    import grp

    for name in policy.PRIVILEGED_GROUPS[1:]:
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            continue
        refused(P, app(**{"group-add": [str(gid)]}), f"group-add {gid}")


def test_harmless_groups_and_shm_up_to_the_replicas_memory_pass() -> None:
    """/dev/shm's pages are the replica's memory, as --tmpfs's are: members get any size up
    to the replica's memory limit (its own, else default_memory)."""
    P.check_app(app(**{"group-add": ["1234", "audio"], "shm-size": "512m"}))
    P.check_app(app(memory="8g", **{"shm-size": "8g"}, tmpfs=["/t:size=8g"],
                    mount=["type=tmpfs,target=/m,tmpfs-size=8g"]))
    refused(P, app(**{"shm-size": "8g"}), "shm-size 8g is larger than the replica's memory "
            "(default_memory 512m)")
    refused(P, app(memory="1g", tmpfs=["/t:size=2g"]), "tmpfs /t:size=2g is larger", "(1g)")
    refused(P, app(memory="1g", mount=["type=tmpfs,target=/m,tmpfs-size=2g"]), "mount")
    refused(P, app(**{"group-add": [0]}), "cannot check group-add")


@pytest.mark.parametrize(("ulimit", "words"), [
    ("memlock=-1", "more than 64m of locked memory"),
    ("memlock=1024:-1", "max_memlock"),
    ("memlock=1073741824", "max_memlock"),
    ("rtprio=99", "root's alone (a realtime"),
    ("nice=40", "raised priority"),
    ("nofile=-1", "fs.nr_open"),
    ("nofile=1024:99999999", "fs.nr_open (1048576)"),
])
def test_ulimits_that_reach_the_host_are_refused(ulimit: str, words: str) -> None:
    refused(P, app(ulimit=[ulimit]), words)


def test_harmless_ulimits_pass() -> None:
    P.check_app(app(ulimit=["nofile=1024:65536", "memlock=65536", "nproc=512", "rtprio=0",
                            "core=0", "stack=8388608"]))


def test_health_intervals_have_a_floor() -> None:
    P.check_app(app(**{"health-interval": "1s"}))
    P.check_app(app(**{"health-interval": "0"}))  # the engine's default (30s)
    refused(P, app(**{"health-interval": "1ms"}), "health-interval 1ms is shorter than 1s",
            "min_health_interval")
    p = policy.parse({"min_health_interval": "10s"})
    refused(p, app(**{"health-interval": "5s"}), "shorter than 10s")


def test_ceilings_are_shares_of_the_host_or_numbers() -> None:
    from lbctl.model.host import HostFacts

    host = HostFacts(pid_max=32768, mem_total=24 << 30)
    assert replace(P, host=host).ceilings() == (16384, 12 << 30)
    p = replace(policy.parse({"max_pids_total": 5000, "max_memory_total": "10g"}), host=host)
    assert p.ceilings() == (5000, 10 << 30)
    p = replace(policy.parse({"max_pids_total": "10%", "max_memory_total": 0}), host=host)
    assert p.ceilings() == (3276, 0)
    for bad in ({"max_pids_total": "150%"}, {"max_pids_total": "lots"},
                {"max_memory_total": -1}, {"default_memory": 512}, {"max_memlock": "x"},
                {"min_health_interval": "fast"}, {"max_networks": -1}):
        with pytest.raises(InvalidInput):
            policy.parse(bad)


def test_an_invalid_publish_is_bad_input_not_a_policy_matter() -> None:
    with pytest.raises(InvalidInput) as e:
        P.check_app(app(publish="nope"))
    assert not isinstance(e.value, Forbidden)
    AppSpec.from_json(app())  # the helper's app is valid
