"""What `lbctl update`/`run` wait for once their change is committed: the revision the
answer named, or a newer one made on top of it before it went live; an undo or a rollback
of it is a failure."""

from __future__ import annotations

from typing import Any

from lbctl.cli.wait import Goal, _follow, _rollout_failure


def app(state: str, target: int, previous: int | None = None) -> dict[str, Any]:
    return {"name": "web", "rollout": {"state": state, "target": target, "previous": previous,
                                       "message": f"rolling to revision {target}"}}


def test_a_newer_revision_made_on_top_of_ours_is_followed() -> None:
    goal = Goal("web", revision=3)
    a = app("progressing", 5, 4)
    _follow(a, goal)
    assert goal.revision == 5 and _rollout_failure(a, goal) is None


def test_an_undo_or_rollback_of_ours_is_not() -> None:
    for a in (app("progressing", 2, 3), app("rolled-back", 2, 3)):
        goal = Goal("web", revision=3)
        _follow(a, goal)
        assert goal.revision == 3 and _rollout_failure(a, goal) is not None
    # A held canary waits for its own revision's replicas, whatever comes after it.
    goal = Goal("web", revision=3, canary=25)
    _follow(app("progressing", 4, 3), goal)
    assert goal.revision == 3
