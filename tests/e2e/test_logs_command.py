"""`lbctl logs` with the real daemon and engine: every replica's output, prefixed with the
replica that wrote it and in time order; --tail, --since, --replica and bad input; `-f`
following a scale and a rollout (the new replicas' lines, the old ones' last lines) until the
app is removed, on Docker and Podman; Ctrl-C; and a member of the lbctl group reading logs
through the daemon.

The demo server (this checkout's, LOG_REQUESTS=1) writes a line per request to stdout before
it answers, and its start and stop lines to stderr: a client that asks /seq/1, /seq/2, ... in
turn, on new connections the kernel spreads over the replicas, knows which replica wrote
each request line and in which order.
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.daemon import LBCTL, Daemon
from harness.engine import ENGINES, app_containers
from harness.host import free_port
from tests.e2e.members import Member

pytestmark = pytest.mark.engine

STAMP = re.compile(r"^(\S+) +\| (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)$")


def ask(port: int, path: str) -> str:
    """One request on a new connection: the replica that answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return resp.read().decode().strip()
    finally:
        conn.close()


def prefixed(out: str) -> list[tuple[str, str]]:
    """(replica, text) of each line `lbctl logs` printed: `NAME | text`, names aligned."""
    rows = []
    for line in out.splitlines():
        name, sep, text = line.partition(" | ")
        assert sep, f"a line without a prefix: {line!r}"
        rows.append((name.strip(), text))
    return rows


def test_every_replica_prefixed_in_time_order_and_the_flags(
        daemon: Daemon, app_name: str, demo_image: str) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "3", "--mode", "ebpf", "-e", "LOG_REQUESTS=1", timeout=90)
    replicas = [f"{app_name}-{i}" for i in (1, 2, 3)]
    answered = []
    for i in range(1, 31):
        answered.append(ask(port, f"/seq/{i}"))
        time.sleep(0.03)
    assert set(answered) == set(replicas), Counter(answered)

    out = daemon.ok("logs", app_name, "-t")
    rows = [STAMP.match(line) for line in out.splitlines()]
    assert all(rows), out
    stamps = [m.group(2) for m in rows if m]
    assert stamps == sorted(stamps), "lines out of time order"
    got = [(m.group(1), m.group(3)) for m in rows if m]
    # Every replica's start line (stderr), each under its own name; never the sandbox's.
    for r in replicas:
        assert any(name == r and re.match(rf"httpd: {r} listening on", text)
                   for name, text in got), out
    assert not any("sandbox" in name for name, _ in got)
    # Every request's line (stdout), under the replica that answered it, in the order asked.
    requests = [(name, text) for name, text in got if " GET /seq/" in text]
    assert requests == [(who, f"{who} GET /seq/{i} HTTP/1.1")
                        for i, who in enumerate(answered, 1)], out

    tail = prefixed(daemon.ok("logs", app_name, "--tail", "2"))
    assert Counter(name for name, _ in tail) == dict.fromkeys(replicas, 2)
    assert {text for _, text in tail} <= {text for _, text in got}

    one = daemon.ok("logs", app_name, "--replica", "2")
    assert one == daemon.ok("logs", app_name, "--replica", f"{app_name}-2")
    assert {name for name, _ in prefixed(one)} == {f"{app_name}-2"}
    assert len(prefixed(one)) == 1 + answered.count(f"{app_name}-2")

    since = next(m.group(2) for m in rows if m and m.group(3).endswith("/seq/15 HTTP/1.1"))
    later = prefixed(daemon.ok("logs", app_name, "--since", since))
    assert [text.split()[2] for _, text in later] == [f"/seq/{i}" for i in range(15, 31)]

    for argv, line in (
        (["logs", "nope"], "lbctl: no app named nope"),
        (["logs", app_name, "--replica", "9"],
         f"lbctl: {app_name} has no replica {app_name}-9 (its containers: "
         f"{', '.join(replicas)})"),
        (["logs", app_name, "--tail", "-1"],
         "lbctl: tail must be a number of lines (0 or more) or all, not '-1'"),
        (["logs", app_name, "--since", "soon"], "lbctl: invalid since 'soon'"),
    ):
        bad = daemon.cli(*argv)
        assert bad.returncode == 2 and bad.stdout == "", bad
        assert bad.stderr.startswith(line) and bad.stderr.count("\n") == 1, bad.stderr


Printed = Callable[[list[tuple[str, str]]], bool]


class Follow:
    """`lbctl logs -f` running in the background; every line it prints is kept."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen([*LBCTL, "logs", "-f", *args], env=daemon.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[str, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines += prefixed(line)

    def wait_for(self, what: str, pred: Printed, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.lines):
                return
            assert self.proc.poll() is None, f"the follow ended: {self.end()}"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; printed: {self.lines}")

    def end(self, timeout: float = 60) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        return self.proc.returncode, err


def has(name: str, pattern: str) -> Printed:
    return lambda lines: any(n == name and re.search(pattern, t) for n, t in lines)


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_follow_across_a_scale_and_a_rollout_until_the_app_is_removed(
        daemon: Daemon, app_name: str, engine: str) -> None:
    cli = ENGINES[engine][0]
    name = f"{app_name}{engine[0]}"
    port = free_port()
    # lbctl/demo: this checkout's image exists on Docker only; start and stop lines suffice.
    daemon.ok("run", name, "--image", "lbctl/demo:latest", "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "2", "--mode", "ebpf", timeout=90)
    follow = Follow(daemon, name, "--tail", "1")
    interrupted = Follow(daemon, name)
    for r in (f"{name}-1", f"{name}-2"):  # --tail 1: each one's last line so far
        follow.wait_for(f"{r}'s start line", has(r, rf"httpd: {r} listening on"))

    daemon.ok("scale", f"{name}=3", timeout=90)
    follow.wait_for("the new replica's start line",
                    has(f"{name}-3", rf"httpd: {name}-3 listening on"))

    old = {c["Id"]: c["Name"].lstrip("/") for c in app_containers(name, cli=cli)
           if c["Config"]["Labels"].get("lbctl.role") == "replica"}
    assert len(old) == 3
    daemon.ok("update", name, "-e", "REVISION=2", "--monitor", "1", timeout=180)
    new = {c["Id"]: c["Name"].lstrip("/") for c in app_containers(name, cli=cli)
           if c["Config"]["Labels"].get("lbctl.role") == "replica"}
    assert len(new) == 3 and not set(new) & set(old)
    for r in old.values():  # the old ones' last lines, after their drain
        follow.wait_for(f"{r}'s last line", has(r, rf"httpd: {r}: bye"))
    for r in new.values():
        follow.wait_for(f"{r}'s start line", has(r, rf"httpd: {r} listening on"))
    assert not any(n.endswith("sandbox") for n, _ in follow.lines)

    interrupted.proc.send_signal(signal.SIGINT)
    code, err = interrupted.end(30)
    assert (code, err) == (0, ""), err  # Ctrl-C: exit 0, nothing said
    assert interrupted.lines, "the interrupted follow printed nothing"

    daemon.ok("rm", name, timeout=120)
    code, err = follow.end(60)
    assert (code, err) == (0, f"{name}: removed\n"), err


def test_a_member_of_the_lbctl_group_reads_logs_through_the_daemon(
        daemon: Daemon, policy_daemon: Path, member: Member, app_name: str,
        demo_image: str) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "2", "--mode", "iptables", "-e", "LOG_REQUESTS=1", timeout=90)
    who = ask(port, "/from-root")
    engine_socket = Path("/var/run/docker.sock")
    assert member.run("test", "-r", str(engine_socket), "-a", "-w",
                      str(engine_socket)).returncode != 0, "the member can use the engine"
    r = member.lbctl(daemon.socket, "logs", app_name)
    assert r.returncode == 0, r.stderr
    rows = prefixed(r.stdout)
    assert (who, f"{who} GET /from-root HTTP/1.1") in rows
    assert {n for n, _ in rows} == {f"{app_name}-1", f"{app_name}-2"}
    r = member.lbctl(daemon.socket, "logs", app_name, "--replica", "5")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
