"""Fixtures of the end-to-end tests that more than one file uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.members import Member, make_member


@pytest.fixture
def member() -> Iterator[Member]:
    """A member of the lbctl group, a user of this run's own (tests/e2e/members.py)."""
    yield from make_member()
