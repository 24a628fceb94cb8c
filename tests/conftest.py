"""Fixtures for the whole suite (helpers live in tests/helpers.py)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PREFIX, Daemon, cleanup_leftovers

E2E_LOCK = "/run/lock/lbctl-e2e.lock"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    if os.geteuid() != 0 or shutil.which("docker") is None:
        pytest.fail("integration tests need root and a Docker engine: run `make setup`")
    # One lbctl daemon owns the host's LBCTL- chains: test runs (and benchmarks) that start
    # one take this lock, so two checkouts on one machine wait for each other.
    os.makedirs(os.path.dirname(E2E_LOCK), exist_ok=True)
    lock = open(E2E_LOCK, "w")  # noqa: SIM115 - held for the whole fixture
    fcntl.flock(lock, fcntl.LOCK_EX)
    request_cleanup = [lock.close]
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
