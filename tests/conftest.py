"""Fixtures for the whole suite (helpers live in tests/helpers.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PREFIX, Daemon, cleanup_leftovers, host_lock


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    if os.geteuid() != 0 or shutil.which("docker") is None:
        pytest.fail("integration tests need root and a Docker engine: run `make setup`")
    lock = host_lock()
    lock.__enter__()
    request_cleanup = [lambda: lock.__exit__(None, None, None)]
    d = Daemon(tmp_path)
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
            cleanup_leftovers()
            if d.log.exists():
                sys.stdout.write(d.log.read_text()[-3000:])
            for f in request_cleanup:
                f()


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
