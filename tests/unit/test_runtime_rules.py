"""The worker's pure rules: when fetching pauses, which partitions shed over the bound."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.runtime import Pause, pause_reason, shed_plan


def test_a_refused_key_pauses_whatever_is_in_flight():
    for pending in (0, 5, 500):
        for paused in (None, Pause.AUTH, Pause.BACKPRESSURE):
            assert pause_reason(auth_failed=True, pending=pending, limit=10, paused=paused) is (
                Pause.AUTH
            )


def test_backpressure_pauses_at_the_limit_and_resumes_at_half():
    def reason(pending, paused):
        return pause_reason(auth_failed=False, pending=pending, limit=10, paused=paused)

    assert reason(9, None) is None
    assert reason(10, None) is Pause.BACKPRESSURE
    assert reason(9, Pause.BACKPRESSURE) is Pause.BACKPRESSURE
    assert reason(6, Pause.BACKPRESSURE) is Pause.BACKPRESSURE
    assert reason(5, Pause.BACKPRESSURE) is None
    # Paused for auth, once the key works again only the limit counts.
    assert reason(7, Pause.AUTH) is None


@given(
    pending=st.integers(0, 1000),
    limit=st.integers(1, 500),
    paused=st.sampled_from([None, Pause.AUTH, Pause.BACKPRESSURE]),
)
def test_backpressure_only_between_half_the_limit_and_above(pending, limit, paused):
    reason = pause_reason(auth_failed=False, pending=pending, limit=limit, paused=paused)
    if pending >= limit:
        assert reason is Pause.BACKPRESSURE
    elif pending <= limit // 2:
        assert reason is None
    else:
        assert reason is (Pause.BACKPRESSURE if paused is Pause.BACKPRESSURE else None)


def test_nothing_is_shed_under_the_bound():
    assert shed_plan([("a", 3), ("b", 4)], 7) == []
    assert shed_plan([], 0) == []


def test_the_fullest_partitions_shed_first():
    assert shed_plan([("a", 3), ("b", 10), ("c", 6)], 12) == [("b", 7)]
    assert shed_plan([("a", 3), ("b", 10), ("c", 6)], 4) == [("b", 10), ("c", 5)]


@given(
    counts=st.lists(st.integers(0, 100), max_size=8),
    limit=st.integers(0, 400),
)
def test_the_plan_sheds_exactly_the_excess(counts, limit):
    opened = list(enumerate(counts))
    plan = shed_plan(opened, limit)
    assert sum(n for _, n in plan) == max(0, sum(counts) - limit)
    assert all(0 < n <= counts[key] for key, n in plan)
    assert len({key for key, _ in plan}) == len(plan)
    # Every partition but the last in the plan sheds all it holds, and none left out holds more.
    shed_keys = [key for key, _ in plan]
    for key, n in plan[:-1]:
        assert n == counts[key]
    if plan:
        smallest = min(counts[key] for key in shed_keys)
        assert all(counts[key] <= smallest for key, _ in opened if key not in shed_keys)
