"""What a member of the `lbctl` group may mount and hold, with a real non-root user over the
daemon's real socket, the real engine, its volumes, and the host's files.

- A member's app binds a directory under an allowed prefix; the directory is then swapped
  for a symlink to `/` and a replica is killed: the replacement's create is refused (the
  app's error in `status`, a log line), the other replica keeps serving, no container ever
  mounts `/`, and once the directory is back the replica is replaced.
- Refused with 403 and one line, leaving no network, volume, container, rule or state
  behind: a bind of `/`, of `/run/lbctl` and of the daemon's own socket directory (even
  with `allowed_bind_sources = ["/"]`), of a directory the member owns, root's volume, a
  local volume that binds /etc (`-o type=none -o o=bind -o device=/etc`), `lbctl.*`
  labels on an app, a volume or a network, a network named `lbctl`, a port below 1024,
  too many networks, and the audit's case: an apply of 64 networks and a volume whose app
  the caps refuse.
- Members' apps together stay under the policy's pids and memory ceilings, counted with a
  rollout's surge and a canary's replicas, and their replicas get the policy's default
  memory limit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import PREFIX
from harness.daemon import Daemon
from harness.engine import app_containers, docker
from harness.host import free_port, iptables_save
from harness.traffic import get
from tests.e2e.members import Member, with_policy

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"


def world(d: Daemon) -> tuple[object, ...]:
    """What a refused request must leave as it was."""
    state = d.state_dir / "state.json"
    return (iptables_save(),
            sorted(docker("ps", "-a", "--no-trunc", "--filter", "label=lbctl.app", "--format",
                          "{{.ID}} {{.Names}}").split()),
            sorted(docker("network", "ls", "--format", "{{.Name}}").split()),
            sorted(docker("volume", "ls", "-q").split()),
            state.read_bytes() if state.exists() else b"")


@pytest.fixture
def srv() -> Iterator[Path]:
    """An allowed bind prefix only root can change: /srv/lbctl-PREFIX (not under /tmp, which
    everyone may write)."""
    base = Path(f"/srv/lbctl-{PREFIX}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True, mode=0o755)
    base.chmod(0o755)
    try:
        yield base
    finally:
        for p in (base / "data",):
            if p.is_symlink():
                p.unlink()
        shutil.rmtree(base, ignore_errors=True)


def fetch(port: int, path: str) -> str:
    """GET `path` from the app (the demo serves $FILE at /file)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return resp.read().decode()
    finally:
        conn.close()


def policy_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


# ---- the swap after run ------------------------------------------------------------------


def test_a_bind_source_swapped_for_a_symlink_stops_the_next_create(
    daemon: Daemon, tmp_path: Path, member: Member, app_name: str, srv: Path,
) -> None:
    data = srv / "data"
    data.mkdir(mode=0o755)
    (data / "hello").write_text("from the member's bind\n")
    (data / "hello").chmod(0o644)
    port = free_port()
    policy = policy_file(tmp_path, f'allowed_bind_sources = ["{srv}"]\n')
    with with_policy(daemon, policy):
        r = member.lbctl(daemon.socket, "run", app_name, "--image", IMAGE, "-p",
                         f"127.0.0.1:{port}:8080", "--replicas", "2", "--mode", "iptables",
                         "-v", f"{data}:/data:ro", "-e", "FILE=/data/hello")
        assert r.returncode == 0, r.stderr
        assert fetch(port, "/file") == "from the member's bind\n"
        assert f'"owner": {member.uid}' in (daemon.state_dir / "state.json").read_text()

        # Swapped by whoever could (root here, standing for a member who could write /srv),
        # and one replica dies: its successor would mount the host's root.
        os.rename(data, srv / "data.real")
        data.symlink_to("/")
        docker("kill", f"{app_name}-2")
        want = (f"replica create refused: policy: bind mount of {data}: {data} is a symlink "
                "(a member's bind source has none, anywhere)")
        daemon.wait(lambda: daemon.status(app_name)["error"] == want, 30, "the refusal")
        st = daemon.status(app_name)
        print(f"\nafter the swap: {st['ready']}/{st['desired']} ready, error: {st['error']}")
        assert st["ready"] == 1 and st["desired"] == 2
        table = member.lbctl(daemon.socket, "status", app_name).stdout
        assert f"  error: {want}" in table, table
        assert want in daemon.log.read_text()
        time.sleep(3)  # retried with backoff meanwhile: never created
        mounts = [m["Source"] for c in app_containers(app_name) for m in c["Mounts"]]
        assert "/" not in mounts and mounts == [str(data)], mounts
        assert {get(port) for _ in range(10)} == {f"{app_name}-1"}

        # Put back: the next retry creates the replica, and the error goes.
        data.unlink()
        os.rename(srv / "data.real", data)
        daemon.wait(lambda: daemon.status(app_name)["ready"] == 2, 60, "the replacement")
        assert daemon.status(app_name)["error"] is None
        assert fetch(port, "/file") == "from the member's bind\n"
        r = member.lbctl(daemon.socket, "rm", app_name)
        assert r.returncode == 0, r.stderr


# ---- refusals that leave nothing behind ----------------------------------------------------


@pytest.fixture
def volumes(member: Member) -> Iterator[dict[str, str]]:
    """Root's data volume, and a local volume that binds /etc (labelled as the member's, so
    that only its options refuse it)."""
    made = {"root": f"{PREFIX}-rootdata", "etc": f"{PREFIX}-etcbind"}
    docker("volume", "create", made["root"])
    docker("volume", "create", "-o", "type=none", "-o", "o=bind", "-o", "device=/etc",
           "--label", f"lbctl.owner={member.uid}", made["etc"])
    try:
        yield made
    finally:
        for v in made.values():
            docker("volume", "rm", v, check=False)


def test_what_a_member_may_not_have_is_refused_and_leaves_nothing(
    daemon: Daemon, tmp_path: Path, member: Member, app_name: str, srv: Path,
    volumes: dict[str, str],
) -> None:
    mine = srv / "mine"
    mine.mkdir()
    os.chown(mine, member.uid, member.gid)
    port = free_port()
    base = {"name": app_name, "image": IMAGE, "publish": f"127.0.0.1:{port}:8080",
            "replicas": 1, "mode": "iptables"}
    nets: dict[str, dict[str, str]] = {f"{PREFIX}-n{i}": {} for i in range(64)}
    # "/" is allowed by the file: what is refused below is refused whatever it says.
    policy = policy_file(tmp_path, 'allowed_bind_sources = ["/"]\n')
    with with_policy(daemon, policy):
        sock_dir = daemon.socket.parent
        asks: list[tuple[str, str, Any, str]] = [
            ("POST", "/apps", {**base, "volume": ["/:/host:ro"]},
             "policy: bind mount of / is never a member's: it is /, which gives the host "
             "away (volume /:/host:ro)"),
            ("POST", "/apps", {**base, "volume": ["/run/lbctl:/x"]},
             "policy: bind mount of /run/lbctl is never a member's: it is /run/lbctl"),
            ("POST", "/apps", {**base, "mount": [f"type=bind,source={sock_dir},target=/s"]},
             f"policy: bind mount of {sock_dir} is never a member's: it is {sock_dir}"),
            ("POST", "/apps", {**base, "volume": ["/run:/r"]},
             "policy: bind mount of /run is never a member's: it holds /run/lbctl"),
            ("POST", "/apps", {**base, "volume": [f"{daemon.state_dir}:/s"]},
             f"is never a member's: it is {daemon.state_dir}"),
            ("POST", "/apps", {**base, "volume": [f"{mine}:/m"]},
             f"policy: bind mount of {mine}: {mine} is the caller's own, so it could be "
             "swapped after it was judged"),
            ("POST", "/apps", {**base, "volume": [f"{volumes['root']}:/d"]},
             f"policy: volume {volumes['root']} is not the caller's"),
            ("POST", "/apps", {**base, "mount": [
                f"type=volume,source={volumes['etc']},target=/e"]},
             f"policy: volume {volumes['etc']} has a driver or driver options"),
            ("POST", "/apps", {**base, "label": {"lbctl.managed": "true"}},
             "label 'lbctl.managed': keys starting with lbctl. are lbctl's own"),
            ("POST", "/apply", {"apps": [base], "volumes": {
                f"{PREFIX}-lv": {"lbctl.managed": "true"}}},
             f"volume {PREFIX}-lv: label 'lbctl.managed': keys starting with lbctl. are "
             "lbctl's own"),
            ("POST", "/apply", {"apps": [base], "networks": {"lbctl": {}}},
             "network lbctl: the name is lbctl's own network's, never created through "
             "lbctl's API"),
            ("POST", "/apps", {**base, "publish": "127.0.0.1:80:8080"},
             "policy: host port 80 is below 1024"),
            ("POST", "/apply", {"apps": [base], "networks": {
                f"{PREFIX}-x{i}": {} for i in range(5)}},
             "policy: this would make 5 networks lbctl created for uid "
             f"{member.uid}, more than 4 (max_networks in {policy}"),
            # The audit's case: refused for its app's replicas, after it used to create
            # 64 networks and a volume.
            ("POST", "/apply", {"apps": [{**base, "replicas": 17}], "networks": nets,
                                "volumes": {f"{PREFIX}-av": {}}},
             f"policy: 17 replicas are more than 16 (max_replicas in {policy})"),
        ]
        before = world(daemon)
        for method, path, body, words in asks:
            status, answer = member.request(daemon.socket, method, path, body)
            print(f"member {method} {path}: {status} {answer}")
            assert status == 403, (status, answer)
            assert words in answer["error"] and "\n" not in answer["error"], (words, answer)
        r = member.lbctl(daemon.socket, "run", app_name, "--image", IMAGE, "-p",
                         f"127.0.0.1:{port}:8080", "-v", "/:/host:ro")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r
        assert r.stderr.startswith("lbctl: policy: bind mount of / is never a member's"), r
        assert world(daemon) == before, "a refused request left something behind"

        # What they may have: a volume and a network of their own, made at the commit and
        # labelled as theirs.
        status, answer = member.request(daemon.socket, "POST", "/apply", {
            "apps": [{**base, "volume": [f"{PREFIX}-mv:/data"]}],
            "networks": {f"{PREFIX}-mn": {}}})
        try:
            assert status == 200, answer
            labels = docker("volume", "inspect", "-f", "{{json .Labels}}", f"{PREFIX}-mv")
            assert f'"lbctl.owner":"{member.uid}"' in labels, labels
            labels = docker("network", "inspect", "-f", "{{json .Labels}}", f"{PREFIX}-mn")
            assert f'"lbctl.owner":"{member.uid}"' in labels, labels
            daemon.wait(lambda: daemon.status(app_name)["ready"] == 1, 60, "the app")
            assert member.lbctl(daemon.socket, "rm", app_name).returncode == 0
        finally:
            docker("volume", "rm", f"{PREFIX}-mv", check=False)
            docker("network", "rm", f"{PREFIX}-mn", check=False)


# ---- members' apps together ----------------------------------------------------------------


def test_members_apps_stay_under_the_ceilings_counted_at_their_peak(
    daemon: Daemon, tmp_path: Path, member: Member, app_name: str,
) -> None:
    a, b = f"{app_name}a", f"{app_name}b"
    pa, pb = free_port(), free_port()
    policy = policy_file(tmp_path, 'max_pids_total = 5000\nmax_memory_total = "600m"\n'
                                   'default_memory = "256m"\n')
    rule = f"in {policy})"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return member.lbctl(daemon.socket, *args)

    with with_policy(daemon, policy):
        r = run("run", a, "--image", IMAGE, "-p", f"127.0.0.1:{pa}:8080", "--replicas", "2",
                "--mode", "iptables")
        assert r.returncode == 0, r.stderr
        hc = [c["HostConfig"] for c in app_containers(a)]
        assert [(h["Memory"], h["PidsLimit"]) for h in hc] == [(256 << 20, 2048)] * 2, hc
        # 2 x 2048 + 2048 > 5000.
        r = run("run", b, "--image", IMAGE, "-p", f"127.0.0.1:{pb}:8080", "--mode",
                "iptables")
        assert r.returncode == 2 and r.stderr == (
            "lbctl: policy: the pids limits of members' apps would add up to 6144 at their "
            f"peak, more than 5000 (max_pids_total {rule}\n"), r.stderr
        r = run("run", b, "--image", IMAGE, "-p", f"127.0.0.1:{pb}:8080", "--mode",
                "iptables", "--pids-limit", "256")
        assert r.returncode == 2 and "the memory limits of members' apps would add up to " \
            f"768 MiB at their peak, more than 600 MiB (max_memory_total {rule}" in r.stderr
        r = run("run", b, "--image", IMAGE, "-p", f"127.0.0.1:{pb}:8080", "--mode",
                "iptables", "--pids-limit", "256", "-m", "64m")
        assert r.returncode == 0, r.stderr
        before = world(daemon)
        # A rollout's surge and a canary's new replica are a third replica of a's.
        for extra in ([], ["--canary", "50"]):
            r = run("update", a, "-e", "V=2", *extra)
            print(f"member update {a} {' '.join(extra)}: {r.stderr.strip()}")
            assert r.returncode == 2 and r.stderr == (
                "lbctl: policy: the pids limits of members' apps would add up to 6400 at "
                f"their peak, more than 5000 (max_pids_total {rule}\n"), r.stderr
        assert world(daemon) == before
        r = run("update", a, "-e", "V=2", "--update-order", "stop-first")
        assert r.returncode == 0, r.stderr
        # Root is bound by the daemon's caps alone.
        daemon.ok("update", a, "-e", "V=3", "--replicas", "3")
        for name in (a, b):
            with contextlib.suppress(AssertionError):
                daemon.ok("rm", name)
