"""The Debian package on a machine with a real systemd as PID 1 (harness.machine): installed
with apt-get, driven with systemctl, read with journalctl, as an operator would.

One machine and one build of the package for the module; the tests run in order on it
(install, apps, faults, upgrade, removal). Every figure (restart gap, requests, failures,
exposure score) is printed, so `pytest -s` and CI logs show them.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness import ROOT
from harness.host import host_lock
from harness.machine import Machine, assert_no_leftovers, machine
from harness.wrk import finish
from lbctl.dataplane import netns

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"
WEB, API = 8080, 8081  # web: ebpf, replicas as uid 1000 (root's app); api: iptables (alice's)
WARMUP = 2  # seconds web's replicas answer 503 on /ready after they start listening
# systemd's own message when a unit's start job finished (for Type=notify: READY=1 came).
STARTED = "39f53479d3a045ac8e11786248231fbf"
# What `make setup` installs for development and tests, never what the daemon needs.
DEV_SET = {"wrk", "nginx", "nginx-light", "haproxy", "prometheus", "gcc", "libc6-dev",
           "busybox-static", "lintian", "python3-pytest", "curl", "docker-compose"}


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make deb`'s package, built once for the module."""
    out = tmp_path_factory.mktemp("deb")
    subprocess.run(["bash", str(ROOT / "scripts" / "build-deb.sh"), str(out)], check=True,
                   capture_output=True, timeout=600)
    (pkg,) = out.glob("lbctl_*.deb")
    return pkg


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    # The machine has its own engine, network namespace and bpffs; the lock still keeps a
    # test that restarts the host's dockerd (test_faults) from taking the machine with it.
    with host_lock():
        with machine(tmp_path_factory.mktemp("machine"), (IMAGE,)) as mach:
            yield mach
        assert_no_leftovers()


def lbctl(m: Machine, *args: str, user: str | None = None,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    return m.sh("lbctl", *args, user=user, check=check)


def main_pid(m: Machine) -> int:
    return int(m.show("lbctl", "MainPID")["MainPID"])


def restarts(m: Machine) -> int:
    return int(m.show("lbctl", "NRestarts")["NRestarts"])


def serves(m: Machine, port: int, replicas: int = 2, tries: int = 30) -> bool:
    """`replicas` replicas answered, and no request failed, in `tries` new connections."""
    seen = [m.curl(port) for _ in range(tries)]
    return "" not in seen and len(set(seen)) == replicas


def container_ids(m: Machine) -> set[str]:
    return set(m.sh("docker", "ps", "-q", "--no-trunc").stdout.split())


def mark(m: Machine) -> str:
    """The journal's position now (a cursor), for `since`."""
    return str(m.journal("-n", "1")[-1]["__CURSOR"])


def since(m: Machine, cursor: str, *args: str) -> list[dict[str, Any]]:
    """lbctl.service's journal entries (the daemon's and systemd's about it) after `cursor`,
    oldest first."""
    return m.journal("-u", "lbctl", f"--after-cursor={cursor}", *args)


def ready_after_sync(entries: list[dict[str, Any]]) -> bool:
    """Whether the last start in `entries` (systemd's "Started", i.e. READY=1 for a notify
    unit) came after the daemon's "first sync done"."""
    synced = [i for i, e in enumerate(entries) if "first sync done" in e.get("MESSAGE", "")]
    started = [i for i, e in enumerate(entries) if e.get("MESSAGE_ID") == STARTED]
    assert synced and started, "no first sync or no start in the journal"
    return synced[-1] < started[-1]


def gap_seconds(entries: list[dict[str, Any]]) -> float:
    """From the daemon's death (systemd's "Main process exited") to systemd's "Started"."""
    died = next(int(e["__MONOTONIC_TIMESTAMP"]) for e in entries
                if "Main process exited" in e.get("MESSAGE", ""))
    ready = [int(e["__MONOTONIC_TIMESTAMP"]) for e in entries
             if e.get("MESSAGE_ID") == STARTED]
    return (ready[-1] - died) / 1e6


def keepalive(m: Machine, port: int) -> http.client.HTTPConnection:
    """An HTTP/1.1 connection to the machine's 127.0.0.1:`port`, made in its network
    namespace (a socket stays in the namespace it was made in), kept open between requests."""
    def connect() -> socket.socket:
        with netns.inside(m.pid):
            return socket.create_connection(("127.0.0.1", port), timeout=5)

    with ThreadPoolExecutor(1) as pool:  # setns moves only the calling thread
        sock = pool.submit(connect).result()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.sock = sock
    return conn


def ask(conn: http.client.HTTPConnection) -> str:
    """GET / on the held connection: the replica that answered (the demo says its name)."""
    conn.request("GET", "/")
    r = conn.getresponse()
    body = r.read().decode()
    assert r.status == 200 and r.getheader("Connection", "").lower() != "close", (r.status,
                                                                                 body)
    return body.strip()


def ready_count(m: Machine, app: str) -> int:
    return int(json.loads(lbctl(m, "status", app, "-o", "json").stdout)["apps"][0]["ready"])


# ---- the package ----------------------------------------------------------------------------


def test_package_is_lintian_clean_and_holds_only_what_runs(deb: Path) -> None:
    lint = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                          capture_output=True, text=True, check=False, timeout=300)
    findings = [ln for ln in lint.stdout.splitlines() if re.match(r"[EW]: ", ln)]
    assert lint.returncode == 0 and not findings, lint.stdout + lint.stderr
    field = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends", "Version"],
                           capture_output=True, text=True, check=True).stdout
    depends = field.split("\n")[0]
    for need in ("python3 (>= 3.11)", "python3-bpfcc", "iptables", "conntrack",
                 "docker.io | docker-ce | podman", "linux-headers-"):
        assert need in depends, f"{need} not in Depends: {depends}"
    names = set(re.findall(r"(?:^|[,|:]\s*)([a-z0-9][a-z0-9+.-]+)", depends))
    assert not names & DEV_SET, depends
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                           check=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in files.splitlines()}
    for want in ("/usr/bin/lbctl", "/lib/systemd/system/lbctl.service",
                 "/etc/lbctl/policy.toml",
                 *(f"/usr/share/lbctl/bpf/{f.name}" for f in (ROOT / "bpf").iterdir()),
                 "/usr/share/lbctl/images/pause.tar", "/usr/share/man/man1/lbctl.1.gz",
                 "/usr/lib/lbctl/activate"):
        assert want in paths, f"{want} missing from the package"
    assert not [p for p in paths if re.search(r"/(tests|bench|harness|pytest|_pytest)/", p)]
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    listing = subprocess.run(["tar", "-xOf", "-", "./conffiles"], input=control,
                             capture_output=True, check=True).stdout.decode()
    assert listing.split() == ["/etc/lbctl/policy.toml"]
    print(f"\npackage: {deb.name}, {deb.stat().st_size / 1e6:.1f} MB; lintian clean")


# ---- install, run, fail, recover --------------------------------------------------------


def test_install_starts_the_daemon_ready_only_after_its_first_sync(m: Machine, deb: Path) -> None:
    kver = m.sh("uname", "-r").stdout.strip()
    # As on a kernel that ships no headers: postinst must link Debian's tree for bcc.
    m.sh("rm", "-f", f"/usr/lib/modules/{kver}/build", f"/usr/lib/modules/{kver}/source")
    m.copy_in(deb, "/root/lbctl.deb")
    t0 = time.monotonic()
    out = m.sh("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
               "/root/lbctl.deb", timeout=300).stdout
    took = time.monotonic() - t0
    assert f"linked /lib/modules/{kver}/build" in out, out[-2000:]
    assert m.sh("systemctl", "is-enabled", "lbctl").stdout.strip() == "enabled"
    assert m.sh("systemctl", "is-active", "lbctl").stdout.strip() == "active"
    assert m.sh("getent", "group", "lbctl").returncode == 0
    assert m.sh("stat", "-c", "%a %U", "/var/lib/lbctl").stdout.split() == ["700", "root"]
    assert m.sh("stat", "-c", "%a %U %G", "/run/lbctl/lbctl.sock").stdout.split() == \
        ["660", "root", "lbctl"]
    assert ready_after_sync(m.journal("-u", "lbctl")), \
        "READY=1 (systemd's Started) came before the first sync"
    # Ready means the API answers and the sandbox image is in the machine's engine.
    assert "no apps" in lbctl(m, "status").stdout
    assert m.sh("docker", "image", "inspect", "lbctl/pause:latest", check=False).returncode == 0
    print(f"\napt-get install: {took:.1f}s to a running, synced daemon")


def test_root_and_a_group_member_run_apps_within_the_policy(m: Machine) -> None:
    # Root's app in ebpf mode; its replicas run as another user (their /proc/PID/fd is theirs)
    # and, as a real service, listen 2 s before they are ready (503 on /ready until then):
    # `run` returns once both passed the probe, and every later fault test restarts the
    # daemon over probed replicas.
    t0 = time.monotonic()
    lbctl(m, "run", "web", "--image", IMAGE, "-p", f"127.0.0.1:{WEB}:8080", "--replicas", "2",
          "--mode", "ebpf", "--user", "1000:1000", "-e", f"WARMUP={WARMUP}",
          "--ready-path", "/ready")
    assert time.monotonic() - t0 >= WARMUP and ready_count(m, "web") == 2
    m.sh("useradd", "-m", "-G", "lbctl", "alice")
    m.sh("useradd", "-m", "bob")
    refused = lbctl(m, "run", "api", "--image", IMAGE, "-p", "127.0.0.1:80:8080",
                    user="alice", check=False)
    assert refused.returncode == 2 and "policy: host port 80" in refused.stderr, refused.stderr
    lbctl(m, "run", "api", "--image", IMAGE, "-p", f"127.0.0.1:{API}:8080", "--replicas", "2",
          "--mode", "iptables", user="alice")
    outsider = lbctl(m, "status", user="bob", check=False)
    assert outsider.returncode == 1 and "permission" in outsider.stderr.lower(), outsider.stderr
    assert serves(m, WEB) and serves(m, API)
    # Under every hardening directive: the program pinned on the host's bpffs (the unit
    # mounts it in PID 1's namespace), the DNAT in iptables.
    assert "web" in m.sh("ls", "/sys/fs/bpf/lbctl").stdout.split()
    assert "LBCTL-" in m.sh("iptables-save", "-t", "nat").stdout


def test_every_hardening_directive_is_in_effect_and_scored(m: Machine) -> None:
    unit = (ROOT / "systemd" / "lbctl.service").read_text()
    wanted = dict(line.split("=", 1) for line in unit.splitlines()
                  if re.match(r"(Protect|Private|Restrict|NoNew|Lock|Memory|SystemCallArch)\w*=",
                              line))
    shown = m.show("lbctl", *wanted)
    for key, value in wanted.items():
        got = shown.get(key, "")
        assert set(got.split()) == set(value.split()), f"{key}: unit says {value}, systemd {got}"
    verify = m.sh("systemd-analyze", "verify", "lbctl.service", check=False)
    assert verify.returncode == 0 and "lbctl" not in verify.stderr, verify.stderr  # man page too
    bounding = m.show("lbctl", "CapabilityBoundingSet")["CapabilityBoundingSet"].split()
    assert "cap_dac_override" not in bounding and "cap_sys_ptrace" in bounding
    out = m.sh("systemd-analyze", "security", "lbctl", "--no-pager").stdout
    score = re.search(r"Overall exposure level for lbctl.service: ([\d.]+) (\w+)", out)
    assert score, out[-500:]
    print(f"\nsystemd-analyze security lbctl: {score[1]} {score[2]}")
    assert score[2] in ("OK", "SAFE", "PERFECT"), out


def test_kill_restarts_the_daemon_with_no_failed_request(m: Machine) -> None:
    ids, pid, n, cursor = container_ids(m), main_pid(m), restarts(m), mark(m)
    loads = [m.wrk(port, 8) for port in (WEB, API)]
    time.sleep(2)
    m.sh("systemctl", "kill", "-s", "KILL", "lbctl")
    m.wait(lambda: restarts(m) == n + 1 and m.show("lbctl", "ActiveState")["ActiveState"]
           == "active", 30, "systemd to restart lbctl")
    results = [finish(p, 8) for p in loads]
    entries = since(m, cursor)
    gap = gap_seconds(entries)
    print(f"\nsystemctl kill -s KILL: restarted and READY {gap:.2f}s after the kill "
          f"(RestartSec=1s); under wrk: " + ", ".join(
              f"{mode} {r.requests} requests, {r.failed} failed"
              for mode, r in zip(("ebpf", "iptables"), results, strict=True)))
    assert main_pid(m) != pid and ready_after_sync(entries)
    assert all(r.requests > 0 and r.failed == 0 for r in results), results
    assert container_ids(m) == ids, "the restarted daemon replaced containers"


def test_wedged_daemon_is_killed_by_the_watchdog_and_restarted(m: Machine) -> None:
    # The unit's watchdog is 30 s and its abort timeout 10 s; the mechanism is the same with
    # shorter ones, and this test does not wait 40 s.
    dropin = "/etc/systemd/system/lbctl.service.d"
    m.sh("mkdir", "-p", dropin)
    m.sh("sh", "-c", f"printf '[Service]\\nWatchdogSec=4s\\nTimeoutAbortSec=2s\\n' "
                     f">{dropin}/test-watchdog.conf")
    m.sh("systemctl", "daemon-reload")
    m.sh("systemctl", "restart", "lbctl")
    try:
        time.sleep(5)  # a watchdog period and more: the daemon is feeding it
        assert m.show("lbctl", "ActiveState")["ActiveState"] == "active"
        pid, n, cursor = main_pid(m), restarts(m), mark(m)
        m.sh("systemctl", "kill", "-s", "STOP", "--kill-who=main", "lbctl")
        t0 = time.monotonic()
        m.wait(lambda: restarts(m) == n + 1 and main_pid(m) not in (0, pid)
               and m.show("lbctl", "ActiveState")["ActiveState"] == "active",
               30, "the watchdog to restart the stopped daemon")
        took = time.monotonic() - t0
        assert serves(m, WEB) and serves(m, API)
        log = [e.get("MESSAGE", "") for e in since(m, cursor)]
        assert any("Watchdog timeout" in x for x in log), log[-20:]
        # faulthandler: the stack of the wedged daemon is in the journal
        assert any("Fatal Python error: Aborted" in x for x in log), log[-20:]
        print(f"\nSIGSTOP: watchdog (4s) killed and restarted the daemon, ready {took:.1f}s "
              "after the stop")
    finally:
        m.sh("rm", "-rf", dropin)
        m.sh("systemctl", "daemon-reload")


def test_scale_down_under_load_with_conntrack_and_no_error(m: Machine) -> None:
    cursor = mark(m)
    load = m.wrk(API, 6)
    time.sleep(1)
    lbctl(m, "scale", "api=1")
    r = finish(load, 6)
    errors = [e["MESSAGE"] for e in since(m, cursor, "-p", "err")]
    print(f"\nscale api 2 -> 1 under wrk: {r.requests} requests, {r.failed} failed")
    assert r.requests > 0 and r.failed == 0 and not errors, (r, errors)
    lbctl(m, "scale", "api=2")


def test_stop_leaves_the_data_plane_serving(m: Machine) -> None:
    m.sh("systemctl", "stop", "lbctl")
    assert m.show("lbctl", "ActiveState")["ActiveState"] == "inactive"
    assert serves(m, WEB) and serves(m, API)
    m.sh("systemctl", "start", "lbctl")
    m.wait(lambda: ready_count(m, "web") == 2, 30, "web to be ready again")


def test_journal_has_one_entry_per_event_with_the_app_in_a_field(m: Machine) -> None:
    entries = m.journal("-u", "lbctl")
    started = [e for e in entries if e.get("APP") == "web" and e.get("REPLICA") == "web-1"
               and "replica started" in e.get("MESSAGE", "")]
    assert started and started[0]["PRIORITY"] == "6" and started[0]["SYSLOG_IDENTIFIER"] == "lbctl"
    assert all("\n" not in e.get("MESSAGE", "") for e in entries if "APP" in e)
    alice = m.journal("-u", "lbctl", "APP=api")
    assert alice and all(e["APP"] == "api" for e in alice)
    refused = [e for e in entries if "refused" in e.get("MESSAGE", "")]
    assert refused and refused[0]["PRIORITY"] == "4" and refused[0].get("UID") == \
        m.sh("id", "-u", "alice").stdout.strip()


def test_upgrade_restarts_the_daemon_with_the_data_plane_serving(
    m: Machine, deb: Path, tmp_path: Path
) -> None:
    newer = _with_version(deb, tmp_path, "+upgrade1")
    m.copy_in(newer, "/root/lbctl-newer.deb")
    ids, pid = container_ids(m), main_pid(m)
    loads = [m.wrk(port, 10) for port in (WEB, API)]
    time.sleep(1)
    m.sh("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
         "/root/lbctl-newer.deb", timeout=300)
    results = [finish(p, 10) for p in loads]
    version = m.sh("dpkg-query", "-W", "-f", "${Version}", "lbctl").stdout
    print(f"\nupgrade to {version} under wrk: " + ", ".join(
        f"{mode} {r.requests} requests, {r.failed} failed"
        for mode, r in zip(("ebpf", "iptables"), results, strict=True)))
    assert version.endswith("+upgrade1") and main_pid(m) not in (0, pid)
    assert all(r.requests > 0 and r.failed == 0 for r in results), results
    assert container_ids(m) == ids
    m.wait(lambda: ready_count(m, "api") == 2, 30, "api to be ready")


def test_remove_leaves_apps_serving_and_purge_says_what_it_leaves(m: Machine) -> None:
    kver = m.sh("uname", "-r").stdout.strip()
    env = ("env", "DEBIAN_FRONTEND=noninteractive")
    # A client that holds its keep-alive connections through the removal, one per mode.
    held = {port: keepalive(m, port) for port in (WEB, API)}
    before = {port: ask(conn) for port, conn in held.items()}
    m.sh(*env, "apt-get", "remove", "-y", "lbctl", timeout=300)
    # the same connections, the same replicas, after the daemon and its package went
    assert {port: ask(conn) for port, conn in held.items()} == before
    assert m.show("lbctl", "ActiveState")["ActiveState"] == "inactive"
    assert m.sh("test", "-e", "/usr/bin/lbctl", check=False).returncode != 0
    assert m.sh("test", "-f", "/etc/lbctl/policy.toml", check=False).returncode == 0
    assert m.sh("test", "-f", "/var/lib/lbctl/state.json", check=False).returncode == 0
    assert serves(m, WEB) and serves(m, API)
    out = m.sh(*env, "apt-get", "purge", "-y", "lbctl", timeout=300).stdout
    assert "left in place" in out and "Apps: api web." in out, out[-2000:]
    for gone in ("/var/lib/lbctl", "/etc/lbctl", f"/usr/lib/modules/{kver}/build"):
        assert m.sh("test", "-e", gone, check=False).returncode != 0, f"{gone} survived purge"
    assert serves(m, WEB) and serves(m, API)
    assert {port: ask(conn) for port, conn in held.items()} == before
    for conn in held.values():
        conn.close()


def _with_version(deb: Path, tmp: Path, suffix: str) -> Path:
    """The same package under a later version: what an upgrade installs."""
    tree = tmp / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (.+)$", text, re.M)
    assert version
    control.write_text(text.replace(version[0], f"Version: {version[1]}{suffix}"))
    out = tmp / f"lbctl_{version[1]}{suffix}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-z1", "--build", str(tree),
                    str(out)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return out
