"""The release command (`--release`) on the real engine: it runs once per revision in a one-off
container of that revision, with the app's options (its volume here), before the revision's
first replica starts (the engine's own event times say so); a failing one refuses the rollout
in one line, and the old revision goes on serving wrk with 0 failed requests; a first `run`
whose release fails leaves nothing. Every test prints its figures."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.daemon import Daemon
from harness.engine import docker
from harness.host import free_port
from harness.wrk import Wrk

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo-release:test"
# The demo server behind a shell entrypoint that runs its arguments when given some, as the
# images of Rails or Django apps do (`docker run IMAGE bin/rails db:migrate`).
ENTRYPOINT = '#!/bin/sh\nif [ "$#" -gt 0 ]; then exec "$@"; fi\nexec /httpd\n'
# Appends its revision to the volume's log, and says so.
MIGRATE = "sh -c 'echo $LBCTL_REVISION >> /data/releases; echo migrated to $LBCTL_REVISION'"
FAILING = ("sh -c \"echo applying 0042; echo 'migrate: relation \\\"users\\\" already exists'; "
           'exit 1"')


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ctx: Path = tmp_path_factory.mktemp("release-image")
    subprocess.run(["cp", "/usr/bin/busybox", str(ctx / "busybox")], check=True)
    (ctx / "entrypoint").write_text(ENTRYPOINT)
    (ctx / "entrypoint").chmod(0o755)
    (ctx / "Dockerfile").write_text(
        "FROM lbctl/demo:latest\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "COPY entrypoint /entrypoint\nENTRYPOINT [\"/entrypoint\"]\nCMD []\n")
    subprocess.run(["docker", "build", "-q", "--label", "lbctl.test=1", "-t", IMAGE, str(ctx)],
                   check=True, capture_output=True,
                   env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"})
    yield IMAGE


@pytest.fixture
def volume(app_name: str) -> Iterator[str]:
    name = f"{app_name}-data"
    yield name
    subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True, check=False)


def events(app: str, since: float) -> list[tuple[int, str, str]]:
    """(nanoseconds, action, container name) of the app's containers' start and die
    events, as the engine recorded them."""
    out = docker("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                 "--filter", "type=container", "--filter", f"label=lbctl.app={app}",
                 "--format", "{{.TimeNano}} {{.Action}} {{.Actor.Attributes.name}}")
    rows = [line.split(" ", 2) for line in out.splitlines() if line.strip()]
    return [(int(t), a, n) for t, a, n in rows if a in ("start", "die")]


def leftovers(app: str) -> list[str]:
    return docker("ps", "-a", "--filter", f"label=lbctl.app={app}", "--filter",
                  "label=lbctl.role=release", "--format", "{{.Names}}").split()


def ids(d: Daemon, app: str) -> set[str]:
    return {r["container_id"] for r in d.status(app)["replicas"]}


def test_the_release_runs_once_per_revision_before_its_first_replica(
    daemon: Daemon, app_name: str, image: str, volume: str,
) -> None:
    port = free_port()
    since = time.time() - 1
    daemon.ok("run", app_name, "--image", image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "2", "--mode", "iptables", "-v", f"{volume}:/data",
              "-e", "FILE=/data/releases", "--release", MIGRATE, "--monitor", "1", timeout=120)
    daemon.ok("scale", f"{app_name}=3")  # a scale-up runs no release
    load = Wrk(f"http://127.0.0.1:{port}/", seconds=15)
    time.sleep(1)
    daemon.ok("update", app_name, "-e", "V=2", timeout=120)
    res = load.result()
    log = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/file"], capture_output=True,
                         text=True, check=True).stdout
    seen = events(app_name, since)
    st = daemon.status(app_name)
    print(f"\nrelease log {log.split()}; {res['requests']} requests during the update, "
          f"{res['failed']} failed; last event {st['last_event']!r}")
    for t, action, name in seen:
        print(f"  {t / 1e9:.3f} {action} {name}")
    assert log.split() == ["1", "2"]  # once per revision
    for rev in (1, 2):
        release = f"{app_name}-release-{rev}"
        ended = next(t for t, a, n in seen if n == release and a == "die")
        started = [t for t, a, n in seen if a == "start" and n.startswith(f"{app_name}-")
                   and n != release and "-release-" not in n and "-sandbox" not in n]
        first = [t for t in started if t > next(t for t, a, n in seen if n == release)]
        assert first and ended < min(first), f"revision {rev}: a replica started first"
    assert res["failed"] == 0 and res["requests"] > 1000, res
    assert st["release"]["state"] == "succeeded" and st["release"]["revision"] == 2
    assert "migrated to 2" in st["release"]["log"]
    assert leftovers(app_name) == []


def test_a_failing_release_refuses_the_rollout_and_the_old_revision_serves(
    daemon: Daemon, app_name: str, image: str,
) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "2", "--mode", "ebpf", timeout=120)
    before = ids(daemon, app_name)
    load = Wrk(f"http://127.0.0.1:{port}/", seconds=12)
    time.sleep(1)
    t0 = time.monotonic()
    r = daemon.cli("update", app_name, "-e", "V=2", "--release", FAILING, timeout=120)
    took = time.monotonic() - t0
    res = load.result()
    st = daemon.status(app_name)
    revision2 = docker("ps", "-a", "--filter", f"label=lbctl.app={app_name}", "--filter",
                       "label=lbctl.revision=2", "--format", "{{.Names}}").split()
    print(f"\nfailing release: exit {r.returncode} after {took:.1f}s: {r.stderr.strip()!r}; "
          f"{res['requests']} requests, {res['failed']} failed")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.strip() == (
        f"lbctl: {app_name}: rollout failed: release of revision 2 exited with code 1: "
        'migrate: relation "users" already exists; rolled back to 1')
    assert res["failed"] == 0 and res["requests"] > 500, res
    assert ids(daemon, app_name) == before  # untouched
    assert st["revision"] == 1 and st["rollout"]["state"] == "rolled-back"
    daemon.wait(lambda: not leftovers(app_name), 20, "the release container removed")
    assert revision2 == [] or revision2 == [f"{app_name}-release-2"]  # never a replica


def test_a_run_whose_release_fails_leaves_nothing(daemon: Daemon, app_name: str,
                                                  image: str) -> None:
    r = daemon.cli("run", app_name, "--image", image, "-p", f"127.0.0.1:{free_port()}:8080",
                   "--replicas", "2", "--mode", "ebpf", "--release", FAILING, timeout=120)
    print(f"\nrun with a failing release: exit {r.returncode}: {r.stderr.strip()!r}")
    assert r.returncode == 1 and r.stderr.strip() == (
        f"lbctl: {app_name}: release of revision 1 exited with code 1: "
        'migrate: relation "users" already exists')
    assert daemon.api("GET", "/apps")["apps"] == []
    daemon.wait(lambda: docker("ps", "-aq", "--filter", f"label=lbctl.app={app_name}") == "",
                30, "nothing left")
