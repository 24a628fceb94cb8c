"""Fixtures of the end-to-end tests that more than one file uses."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ROOT
from harness.daemon import Daemon
from tests.e2e.members import Member, make_member, with_policy


@pytest.fixture
def member() -> Iterator[Member]:
    """A member of the lbctl group, a user of this run's own (tests/e2e/members.py)."""
    yield from make_member()


@pytest.fixture
def policy_daemon(daemon: Daemon, tmp_path: Path) -> Iterator[Path]:
    """The test's daemon again, with the shipped policy file given by --policy (as
    /etc/lbctl/policy.toml would be) and its socket in a directory others can traverse
    (pytest's are 0700). Yields the policy file's path."""
    policy = tmp_path / "policy.toml"
    shutil.copy(ROOT / "etc" / "policy.toml", policy)
    with with_policy(daemon, policy):
        yield policy
