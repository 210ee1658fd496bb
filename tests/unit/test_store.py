"""Completed conversations and markers in a store: its contract, and the engine through it.

Both stores run every contract test; the engine scenarios run on the SQLite store
(the runtime's disk tier) and on the in-memory one, and a property checks that
the engine decides and writes exactly the same with either, for any script.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import changelog, events, state
from consumer.engine import (
    MARKER_LIFETIME,
    EngineConfig,
    Flush,
    Notice,
    NoticeRefusal,
    PartitionEngine,
    Refusal,
)
from consumer.errors import ConfigError, StoreError
from consumer.feedback import Unresolved
from consumer.runtime import Worker
from consumer.settings import Settings
from consumer.store import MemoryStore, Retained, SqliteStore, Store

RETENTION = 100.0
CONFIG = EngineConfig(idle_timeout=10, max_open=1000, state_retention=RETENTION)
_ids = count()

Factory = Callable[..., Store]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Makes stores of the parametrized kind; closes them after the test."""
    made: list[Store] = []

    def make(budget: int | None = None) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(budget)
        else:
            store = SqliteStore(tmp_path / f"p{len(made)}.sqlite3", budget)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def completion(
    cid: str, text: str, *, event_id: str | None = None, response_id: str | None = None
) -> events.Event:
    value: dict[str, Any] = {
        "event_id": event_id or f"evt_{next(_ids)}",
        "event_type": "chat.completion",
        "conversation_id": cid,
        "occurred_at": "2026-11-23T10:15:02Z",
        "history": "delta",
        "request": {"model": "m", "messages": [{"role": "user", "content": text}]},
        "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]},
    }
    if response_id is not None:
        value["response"]["id"] = response_id
    return events.decode_event(json.dumps(value).encode())


def rating(cid: str, completion_id: str, value: str) -> events.Event:
    event = {
        "event_id": f"evt_{next(_ids)}",
        "event_type": "feedback",
        "conversation_id": cid,
        "occurred_at": "2026-11-23T10:16:00Z",
        "completion_id": completion_id,
        "rating": value,
        "user_properties": {"id": "user_42", "identificationType": "COOKIED"},
    }
    return events.decode_event(json.dumps(event).encode())


def ended(cid: str) -> events.Event:
    value = {
        "event_id": f"evt_{next(_ids)}",
        "event_type": "conversation.ended",
        "conversation_id": cid,
        "occurred_at": "2026-11-23T10:30:00Z",
    }
    return events.decode_event(json.dumps(value).encode())


class Run:
    """One engine fed at increasing offsets; every flush is acknowledged at once."""

    def __init__(self, store: Store) -> None:
        self.engine = PartitionEngine(CONFIG, store)
        self.offset = 0

    def apply(self, event: events.Event, now: float) -> list[Flush | Refusal]:
        decisions = self.engine.apply(event, self.offset, now)
        self.offset += 1
        for decision in decisions:
            if isinstance(decision, Flush):
                self.engine.acknowledged(decision.conversation_id, decision.seq, now)
        return decisions

    def conversation(self, cid: str, turns: int, now: float) -> None:
        """`turns` user/assistant pairs, then an end: completed (acknowledged) at `now`."""
        for turn in range(turns):
            assert self.apply(completion(cid, f"{cid} question {turn}"), now) == []
        (flush,) = self.apply(ended(cid), now)
        assert isinstance(flush, Flush)
        assert flush.message_count == 2 * turns


def user_texts(decision: Flush | Refusal) -> list[str]:
    messages = json.loads(decision.body)["messages"]
    return [m["content"] for m in messages if m["role"] == "user"]


# --- The store contract -----------------------------------------------------------------


def test_put_get_pop_and_the_bytes_held(make_store: Factory) -> None:
    store = make_store()
    assert store.get("a") is None
    assert store.pop("a") is None
    done = Retained(5.0, 7, 2, 3, b"Zblob")
    store.put("a", done)
    store.put("b", Retained(1.0, 9, 4, 5))
    assert store.get("a") == done
    assert (store.completed_count, store.marker_count) == (1, 1)
    assert store.held > store.marker_held > 0
    store.put("a", Retained(6.0, 7, 2, 3))  # Replaced whole: now a marker.
    assert (store.completed_count, store.marker_count) == (0, 2)
    assert store.held == store.marker_held
    assert store.pop("a") == Retained(6.0, 7, 2, 3)
    assert store.pop("b") is not None
    assert (store.held, store.marker_held, store.completed_count, store.marker_count) == (
        0,
        0,
        0,
        0,
    )


def test_oldest_is_by_time_per_kind_and_ignores_replaced_entries(make_store: Factory) -> None:
    store = make_store()
    for cid, at in (("c", 30.0), ("a", 10.0), ("b", 20.0)):
        store.put(cid, Retained(at, 0, 0, 0, cid.encode()))
    store.put("m", Retained(5.0, 0, 0, 0))
    assert store.oldest(completed=True) == ("a", Retained(10.0, 0, 0, 0, b"a"))
    assert store.oldest(completed=False) == ("m", Retained(5.0, 0, 0, 0))
    store.put("a", Retained(40.0, 0, 0, 0))  # Made a marker later: not the oldest of either.
    assert store.oldest(completed=True) == ("b", Retained(20.0, 0, 0, 0, b"b"))
    assert store.oldest(completed=False) == ("m", Retained(5.0, 0, 0, 0))
    store.pop("m")
    assert store.oldest(completed=False) == ("a", Retained(40.0, 0, 0, 0))


def test_sqlite_store_starts_empty_and_its_file_goes_on_close(tmp_path: Path) -> None:
    path = tmp_path / "state" / "p0.sqlite3"
    first = SqliteStore(path)
    first.put("a", Retained(1.0, 0, 0, 0, b"x"))
    first._db.close()  # A crash: the file stays behind.
    second = SqliteStore(path)
    assert second.get("a") is None
    assert second.held == 0
    second.close()
    assert not path.exists()


# --- The engine through the store -------------------------------------------------------


def test_expiry_makes_the_oldest_completed_markers_first_then_deletes_markers(
    make_store: Factory,
) -> None:
    store = make_store()
    run = Run(store)
    for index, cid in enumerate(("a", "b", "c")):
        run.conversation(cid, 1, now=10.0 * index)
    run.engine.checkpoint()
    run.engine.due(RETENTION + 15.0)
    assert [cid for cid, kept in sorted(store.items()) if kept.blob is None] == ["a", "b"]
    records = dict(run.engine.checkpoint().records)
    for cid in ("a", "b"):
        marker = changelog.decode(records[changelog.head_key(cid)])
        assert isinstance(marker, state.Marker)
        assert (marker.id, marker.marked_at, marker.acked_count) == (cid, RETENTION + 15.0, 2)
    assert changelog.head_key("c") not in records
    run.engine.due(RETENTION + 15.0 + RETENTION * MARKER_LIFETIME)
    assert {cid for cid, _ in store.items()} == {"c"}
    records = dict(run.engine.checkpoint().records)
    assert records[changelog.head_key("a")] is None
    assert records[changelog.head_key("b")] is None


def test_a_continuation_from_the_tier_carries_the_whole_history(make_store: Factory) -> None:
    store = make_store()
    run = Run(store)
    run.conversation("c", 3, now=0.0)
    run.engine.checkpoint()
    assert run.engine.open_count == 0
    assert store.completed_count == 1
    assert run.apply(completion("c", "c question 3"), 50.0) == []
    (flush,) = run.apply(ended("c"), 50.0)
    assert isinstance(flush, Flush)
    assert user_texts(flush) == [f"c question {turn}" for turn in range(4)]
    assert store.get("c") is not None
    assert store.completed_count == 1  # Completed again, with the longer history.


def test_a_late_duplicate_by_event_id_is_found_in_the_tier(make_store: Factory) -> None:
    store = make_store()
    run = Run(store)
    first = completion("c", "hello", event_id="evt_retried")
    assert run.apply(first, 0.0) == []
    run.apply(ended("c"), 0.0)
    run.engine.checkpoint()
    assert run.engine.open_count == 0
    late = completion("c", "hello", event_id="evt_retried")  # A producer retry, a later offset.
    assert run.engine.is_duplicate(late, run.offset)
    assert run.apply(late, 5.0) == []
    assert run.engine.duplicates == 1
    assert run.engine.open_count == 0
    assert run.engine.checkpoint().records == []


def test_the_budget_makes_the_oldest_completed_markers_and_refuses_their_continuation(
    make_store: Factory,
) -> None:
    probe = make_store()
    Run(probe).conversation("p", 20, now=0.0)
    one = probe.held  # What one completed conversation of this shape costs.
    store = make_store(budget=3 * one)
    run = Run(store)
    for index, cid in enumerate(("a", "b", "c", "d", "e")):
        run.conversation(cid, 20, now=float(index))
    run.engine.due(10.0)
    assert store.held <= 3 * one
    order = ("a", "b", "c", "d", "e")
    kept = {cid: kept.blob is not None for cid, kept in store.items()}
    completed = [cid for cid in order if kept.get(cid)]
    assert completed == list(order[len(order) - len(completed) :])  # The newest stay whole.
    assert 1 <= len(completed) < len(order)
    assert kept["a"] is False  # The oldest: a marker now (deleted only past the markers' share).
    assert run.engine.evicted_completed == len(order) - len(completed)
    refused = run.apply(completion("a", "a question 20"), 20.0)
    assert refused == []
    (refusal,) = run.apply(ended("a"), 20.0)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "history_expired"
    assert run.apply(completion("e", "e question 20"), 20.0) == []
    (flush,) = run.apply(ended("e"), 20.0)
    assert isinstance(flush, Flush)
    assert user_texts(flush) == [f"e question {turn}" for turn in range(21)]


def test_a_waiting_feedback_is_dead_lettered_when_the_budget_makes_its_conversation_a_marker(
    make_store: Factory,
) -> None:
    store = make_store()
    run = Run(store)
    assert run.apply(completion("c", "hello", response_id="cmpl_1"), 0.0) == []
    run.apply(ended("c"), 0.0)
    (out,) = run.apply(rating("c", "cmpl_1", "positive"), 1.0)
    assert isinstance(out, Notice)
    assert run.apply(rating("c", "cmpl_1", "negative"), 1.0) == []  # Waits for the first.
    store.budget = 1
    decisions = run.engine.due(2.0)
    assert [(type(d), getattr(d, "reason", None), d.offset) for d in decisions] == [
        (NoticeRefusal, Unresolved.HISTORY_EXPIRED, run.offset - 1)
    ]
    assert run.engine.evicted_completed == 1
    assert run.engine.waiting_notices == 0


def test_markers_past_their_share_of_the_budget_go_oldest_first(make_store: Factory) -> None:
    store = make_store()
    run = Run(store)
    for index in range(400):
        store.put(f"m{index:03d}", Retained(float(index), index, 1, 1))
    store.budget = store.held // 4
    run.engine.due(500.0)
    assert store.held <= store.budget
    left = sorted(cid for cid, _ in store.items())
    assert left == [f"m{index:03d}" for index in range(400 - len(left), 400)]
    assert 95 <= len(left) <= 100
    assert run.engine.evicted_markers == 400 - len(left)
    records = dict(run.engine.checkpoint().records)
    assert records[changelog.head_key("m000")] is None


def test_restore_rebuilds_the_tier_from_the_state_topic(make_store: Factory) -> None:
    run = Run(make_store())
    run.conversation("old", 1, now=0.0)
    run.engine.checkpoint()
    run.conversation("done", 2, now=RETENTION)
    run.engine.due(RETENTION)  # "old" becomes a marker.
    assert run.apply(completion("open", "still going"), RETENTION) == []
    records = run.engine.checkpoint().records
    tier = make_store()
    fresh = PartitionEngine(CONFIG, tier)
    for key, value in records:
        fresh.restore(key, value, RETENTION)
    assert fresh.restored(RETENTION) == []
    assert dict(tier.items()) == dict(run.engine.store.items())
    assert (tier.completed_count, tier.marker_count, fresh.open_count) == (1, 1, 1)
    assert fresh.apply(completion("done", "again"), 100, RETENTION) == []
    (flush,) = fresh.apply(ended("done"), 101, RETENTION)
    assert isinstance(flush, Flush)
    assert user_texts(flush) == ["done question 0", "done question 1", "again"]
    fresh.apply(completion("old", "again"), 102, RETENTION)
    (refusal,) = fresh.apply(ended("old"), 103, RETENTION)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "history_expired"


# --- The tier changes nothing the engine decides ----------------------------------------

CIDS = ("a", "b", "c")

step = st.one_of(
    st.tuples(st.just("event"), st.sampled_from(CIDS), st.integers(0, 5)),
    st.tuples(st.just("end"), st.sampled_from(CIDS), st.just(0)),
    st.tuples(st.just("wait"), st.just(""), st.sampled_from((1, 20, 150, 4000))),
    st.tuples(st.just("ack"), st.just(""), st.just(0)),
    st.tuples(st.just("restart"), st.just(""), st.just(0)),
)


def _engines(tmp_path: Path, generation: int) -> list[PartitionEngine]:
    return [
        PartitionEngine(CONFIG, MemoryStore()),
        PartitionEngine(CONFIG, SqliteStore(tmp_path / f"g{generation}.sqlite3", budget=10**9)),
        PartitionEngine(CONFIG, MemoryStore(budget=10**9)),
    ]


def _same(outputs: list[Any]) -> None:
    first = msgspec.to_builtins(outputs[0])
    for other in outputs[1:]:
        assert msgspec.to_builtins(other) == first


def _restart(engines: list[PartitionEngine], fresh: list[PartitionEngine], now: float) -> list[Any]:
    outputs = []
    for old, new in zip(engines, fresh, strict=True):
        checkpoint = old.checkpoint()
        for key, value in checkpoint.records:
            new.restore(key, value, now)
        old.store.close()
        outputs.append((checkpoint, new.restored(now)))
    return outputs


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, max_size=40))
def test_the_engine_decides_the_same_with_the_tier_as_all_in_memory(
    tmp_path: Path, steps: list[tuple[str, str, int]]
) -> None:
    """Whatever the script: the same decisions, checkpoints and retained entries."""
    generation = count()
    engines = _engines(tmp_path, next(generation))
    now, offset = 0.0, 0
    flying: dict[str, int] = {}
    try:
        for kind, cid, arg in steps:
            decisions: list[list[Flush | Refusal]]
            if kind == "wait":
                now += arg
                decisions = [engine.due(now) for engine in engines]
                _same(decisions)
            elif kind == "ack":
                decisions = [
                    [d for fcid, seq in flying.items() for d in engine.acknowledged(fcid, seq, now)]
                    for engine in engines
                ]
                flying = {}
                _same(decisions)
            elif kind == "restart":
                fresh = _engines(tmp_path, next(generation))
                outputs = _restart(engines, fresh, now)
                engines = fresh
                _same(outputs)
                decisions = [restored for _, restored in outputs]
                flying = {}
            else:
                event = completion(cid, f"turn {arg}", event_id=f"{cid}-{arg}")
                if kind == "end":
                    event = ended(cid)
                _same([engine.is_duplicate(event, offset) for engine in engines])
                decisions = [engine.apply(event, offset, now) for engine in engines]
                _same(decisions)
                offset += 1
            for decision in decisions[0]:
                if isinstance(decision, Flush):
                    flying[decision.conversation_id] = decision.seq
            _same([engine.checkpoint() for engine in engines])
            _same([sorted(engine.store.items()) for engine in engines])
    finally:
        for engine in engines:
            engine.store.close()


# --- Settings and the runtime's stores --------------------------------------------------


def test_state_settings_refuse_a_file_as_directory_and_tiny_budgets(tmp_path: Path) -> None:
    env = {"INKEEP_API_KEY": "k"}
    a_file = tmp_path / "f"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"^STATE_DIR: .*not a directory"):
        Settings.from_env({**env, "STATE_DIR": str(a_file)})
    for name in ("STATE_MEMORY_BYTES", "STATE_DISK_BYTES"):
        with pytest.raises(ConfigError, match=rf"^{name}: "):
            Settings.from_env({**env, name: "1000"})
    assert Settings.from_env({**env, "STATE_DIR": str(tmp_path / "new")}).state_dir


def test_each_partition_gets_a_store_and_an_even_share_of_the_budget(tmp_path: Path) -> None:
    on_disk = Worker(Settings(inkeep_api_key="k", state_dir=str(tmp_path), state_disk_bytes=9000))
    store = on_disk._new_store(TopicPartition("chat", 3), 3)
    assert isinstance(store, SqliteStore)
    assert (store.path, store.budget) == (tmp_path / "chat-3.sqlite3", 3000)
    store.close()
    in_memory = Worker(Settings(inkeep_api_key="k", state_memory_bytes=2**21))
    kept = in_memory._new_store(TopicPartition("chat", 0), 2)
    assert isinstance(kept, MemoryStore)
    assert kept.budget == 2**20


def test_a_full_disk_stops_the_worker(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "full.sqlite3")
    run = Run(store)
    assert run.apply(completion("c", os.urandom(20_000).hex()), 0.0) == []  # Pages of its own.
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # As if the emptyDir were full.
    try:
        with pytest.raises(StoreError, match="full"):
            run.apply(ended("c"), 1.0)  # Acknowledged: completing writes the record.
    finally:
        store.close()


class FailingPop(MemoryStore):
    """Its next `pop` fails once `failing` is set; later ones work again."""

    failing = False

    def pop(self, cid: str) -> Retained | None:
        if self.failing:
            self.failing = False
            raise StoreError(f"{cid}: disk I/O error")
        return super().pop(cid)


def test_a_store_failure_while_applying_is_not_blamed_on_the_event() -> None:
    store = FailingPop()
    run = Run(store)
    store.put("c", Retained(0.0, -1, 0, 0))  # A marker: the event reopens it.
    store.failing = True
    with pytest.raises(StoreError):  # Not InvalidEvent: the record must not be dead-lettered.
        run.apply(completion("c", "hello"), 1.0)
