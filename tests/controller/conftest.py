"""The controller's tests run on a virtual clock: looptime makes the event loop's time advance
only by what the loop waits for (sleeps, timeouts), at once, and the controller reads its
time from the loop (lbctl.controller.clock). So a test of "a dead replica is out within a
probe round" measures the controller's own scheduling, the same on a loaded CI host as on an
idle one, and a test that waits for a 30 s grace takes milliseconds."""

from __future__ import annotations

import inspect

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "function", None)
        if "tests/controller/" in str(item.path) and inspect.iscoroutinefunction(fn):
            item.add_marker(pytest.mark.looptime)
