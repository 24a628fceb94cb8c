"""Fixtures for the whole suite (the daemon, engine and traffic helpers live in harness/)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import PREFIX, images
from harness.daemon import Daemon
from harness.engine import ENGINES, checkout_image, cleanup_leftovers
from harness.host import host_lock


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background of a shell without job control (`make test &` in a
    script) has SIGINT ignored, and so would every `lbctl logs -f` and `status -w` the tests
    end with Ctrl-C as a user does (an ignored signal stays ignored across exec; a handled
    one is reset to the default)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def engine() -> str:
    """The engine the `daemon` fixture's daemon talks to: "docker" unless a test parametrizes
    it (tests/e2e/test_podman.py runs its scenarios with "docker" and "podman")."""
    return "docker"


@pytest.fixture
def daemon(tmp_path: Path, engine: str) -> Iterator[Daemon]:
    cli, docker_host = ENGINES[engine]
    if os.geteuid() != 0 or shutil.which(cli) is None:
        pytest.fail(f"integration tests need root and {cli}: run `make setup ENGINE={engine}`")
    if docker_host is not None:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(docker_host.removeprefix("unix://"))
            except OSError as e:
                pytest.fail(f"{engine} does not answer on {docker_host} ({e.strerror}): "
                            f"run `make setup ENGINE={engine}`")
    lock = host_lock()
    lock.__enter__()
    request_cleanup: list[Callable[[], object]] = [lambda: lock.__exit__(None, None, None)]
    d = Daemon(tmp_path)
    d.docker_host = docker_host
    d.start()
    try:
        yield d
    finally:
        try:
            if d.proc is None or d.proc.poll() is not None:
                d.start()
            for a in d.api("GET", "/apps")["apps"]:
                with contextlib.suppress(Exception):
                    d.api("DELETE", f"/apps/{a['name']}")
        finally:
            d.kill(signal.SIGTERM)
            cleanup_leftovers(cli)
            if d.log.exists():
                sys.stdout.write(d.log.read_text()[-3000:])
            leaked = _sweep(d)
            for f in request_cleanup:
                f()
    # Deleting every app must leave no rule and no eBPF object behind; the sweep above keeps
    # the next test clean either way, and this makes the leak this test's failure.
    assert not leaked, f"left behind after every app was deleted: {leaked}"


def _sweep(d: Daemon) -> list[str]:
    import asyncio

    from lbctl.dataplane.iptables import IptablesDataplane
    from lbctl.dataplane.iptables.family import IPV4, IPV6

    leaked: list[str] = []
    for family in (IPV4, IPV6):
        save = subprocess.run([f"{family.tool}-save"], capture_output=True, text=True).stdout
        if "LBCTL-" in save:
            leaked.append(f"LBCTL- {family.tool} chains")
            asyncio.run(IptablesDataplane(d.state_dir, family).sync([]))
    if d.pin_root.exists() and any(d.pin_root.iterdir()):
        leaked.append(f"pins under {d.pin_root}")
    if d.pin_root.exists():
        subprocess.run(["rm", "-rf", str(d.pin_root)], check=False)
    return leaked


@pytest.fixture(scope="session")
def demo_image() -> str:
    """lbctl/demo built from THIS checkout's images/demo (harness.images): `lbctl/demo:latest`
    is shared with other builds; a test that needs a feature of the demo server it ships with
    uses this one instead."""
    return images.demo_image()


@pytest.fixture(scope="session")
def pause_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """lbctl/pause built from THIS checkout's images/pause (its `hold` mode is the traffic
    hold's), as demo_image is: a daemon that holds runs with `--sandbox-image` set to it."""
    return checkout_image("pause", "pause", tmp_path_factory.mktemp("pause-image"))


@pytest.fixture
def app_name(request: pytest.FixtureRequest) -> str:
    short = "".join(ch for ch in request.node.name[5:].lower() if ch.isalnum())[:9]
    return f"{PREFIX}-{short}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is not a passed one: a run that skipped anything fails."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        print(f"\n{skipped} test(s) skipped: the suite needs everything `make setup` installs")
        session.exitstatus = 1
