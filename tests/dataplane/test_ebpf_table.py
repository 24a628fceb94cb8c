"""The selection table's shares (build_table, pure): exact where the weights fit, and for
weights that do not (a canary's, over many replicas) every weight class's share of the
table within 1/TABLE_LEN of its weight's share, at the extremes of what the planner asks
for (1% and 99% canaries beside up to 64 old replicas)."""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbctl.dataplane.ebpf.table import TABLE_LEN, build_table
from lbctl.model import MAX_REPLICAS


def canary(pct: int, new: int, old: int) -> list[tuple[int, int]]:
    """The planner's weights (controller.planner._weights) for `new` replicas at `pct`
    beside `old` ones, on slots 0.. (new) and 1000.. (old)."""
    g = math.gcd(pct * old, (100 - pct) * new)
    w_new, w_old = pct * old // g, (100 - pct) * new // g
    return [(i, w_new) for i in range(new)] + [(1000 + i, w_old) for i in range(old)]


def share(table: Sequence[int], slots: set[int]) -> float:
    return sum(1 for s in table if s in slots) / len(table)


def test_a_99_percent_canary_beside_63_old_replicas_gets_99_percent() -> None:
    """The case found by hand: one entry per member at least gave the new ones 75%."""
    t = build_table(canary(99, 63, 63))
    got = share(t, set(range(63)))
    print(f"\n99% canary, 63 new beside 63 old: table of {len(t)}, new share {got:.4f}")
    assert got == pytest.approx(0.99)
    assert len(t) <= TABLE_LEN


@pytest.mark.parametrize("pct", [1, 2, 5, 10, 25, 33, 50, 67, 90, 98, 99])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 63, MAX_REPLICAS])
def test_every_canary_the_planner_asks_for_is_within_the_bound(pct: int, n: int) -> None:
    k = min(n, max(1, math.ceil(n * pct / 100)))  # the planner's count of new replicas
    t = build_table(canary(pct, k, n))
    got = share(t, set(range(k)))
    assert len(t) <= TABLE_LEN and set(t) <= set(range(k)) | {1000 + i for i in range(n)}
    assert abs(got - pct / 100) < 1 / TABLE_LEN, (pct, n, k, len(t), got)
    # A percentage is a fraction of 100, and 200 entries are a choice: exact.
    assert got == pytest.approx(pct / 100), (pct, n, len(t), got)


def test_members_of_one_weight_differ_by_at_most_one_entry() -> None:
    t = build_table(canary(99, 64, 64))
    counts = collections.Counter(t)
    new = [counts[i] for i in range(64)]
    old = [counts[1000 + i] for i in range(64)]
    assert max(new) - min(new) <= 1 and max(old) - min(old) <= 1, (new, old)
    assert sum(old) >= 1  # 1% is some entries, not none


def test_equal_weights_keep_every_member_and_small_weights_are_exact() -> None:
    assert build_table([]) == [] and build_table([(3, 0)]) == []
    assert sorted(build_table([(0, 3), (1, 1)])) == [0, 0, 0, 1]
    big = build_table([(i, 10) for i in range(MAX_REPLICAS * 2)])
    assert len(big) == TABLE_LEN and set(big) == set(range(MAX_REPLICAS * 2))
    t = build_table([(0, 200), (1, 56)])  # 256 in all: exact as given
    assert collections.Counter(t) == {0: 200, 1: 56}


@settings(max_examples=500, database=None)
@given(st.lists(st.tuples(st.integers(0, 1023), st.integers(1, 10 ** 6)), min_size=1,
                max_size=130, unique_by=lambda m: m[0]))
def test_any_weights_give_each_class_its_share_within_the_bound(
    members: list[tuple[int, int]],
) -> None:
    t = build_table(members)
    total = sum(w for _, w in members)
    assert 0 < len(t) <= TABLE_LEN
    by_weight: dict[int, set[int]] = {}
    for s, w in members:
        by_weight.setdefault(w, set()).add(s)
    if total <= TABLE_LEN:
        assert collections.Counter(t) == dict(members)
        return
    for w, slots in by_weight.items():
        assert abs(share(t, slots) - w * len(slots) / total) < 1 / TABLE_LEN + 1e-12
