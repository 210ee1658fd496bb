"""Hostile records at the boundary: whatever the bytes, the worker gets an event or an
`InvalidEvent`, an event applies whole or not at all, and what state holds can always
be flushed, encoded, checkpointed and restored.

Every record goes the whole way: decode, `apply`, an interim flush (payload, fit,
encode, the API's strict decoder), acknowledgement, checkpoint, and a restore into a
fresh engine. The only exception allowed anywhere is `InvalidEvent`, and when `apply`
raises one the conversation is as it was.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import events, merge, payload, state, upsert
from consumer.engine import EngineConfig, Flush, PartitionEngine, Trigger
from consumer.errors import InvalidEvent

CONFIG = EngineConfig(idle_timeout=60, max_open=600, state_retention=1e9)
DECODE_KINDS = {"not_json", "not_utf8", "too_deep", "schema", "out_of_range", "unknown_event_type"}

BASE: dict[str, Any] = {
    "event_id": "e1",
    "event_type": "chat.completion",
    "conversation_id": "c",
    "occurred_at": "2026-11-23T10:15:02.481Z",
    "history": "full",
    "latency_ms": 1840,
    "request": {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "input_audio", "input_audio": {"format": "wav", "data": "AAAA"}},
                    {"type": "file", "file": {"filename": "a.pdf"}},
                ],
            },
        ],
    },
    "response": {
        "id": "cmpl-1",
        "created": 1795428900,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "k1", "type": "custom", "custom": {"name": "x", "input": {"q": 1}}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3},
    },
    "conversation": {
        "properties": {"plan": "pro"},
        "user_properties": {"id": "u1"},
        "tags": ["a"],
    },
}

FREE_FORM_PATHS: list[tuple[Any, ...]] = [
    ("response", "usage"),
    ("conversation", "properties"),
    ("conversation", "user_properties"),
    ("request", "messages", 1, "content", 1, "input_audio"),
    ("request", "messages", 1, "content", 2, "file"),
    ("response", "choices", 0, "message", "tool_calls", 0, "custom"),
    ("response", "choices", 0, "message", "reasoning"),
    ("response", "choices", 0, "message", "content_filter_results"),
    ("response", "choices", 0, "content_filter_results"),
]
"""Where producers may put any JSON at all."""

RESPONSE_BASE: dict[str, Any] = {
    "event_id": "r1",
    "event_type": "response",
    "conversation_id": "c",
    "occurred_at": "2026-11-23T10:15:02.481Z",
    "request": {"model": "gpt-4.1", "input": [{"role": "user", "content": "hi"}]},
    "response": {
        "id": "resp_1",
        "created_at": 1795428900,
        "status": "completed",
        "output": [
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {}},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hello", "annotations": []}],
            },
        ],
        "usage": {"input_tokens": 3},
    },
}
"""A Responses API event: its items and results are free-form too."""


def encoded(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def put(value: dict[str, Any], path: tuple[Any, ...], item: Any) -> dict[str, Any]:
    """A copy with `item` at `path`; unchanged when an earlier change removed the path."""
    changed = copy.deepcopy(value)
    target: Any = changed
    try:
        for step in path[:-1]:
            target = target[step]
        if not isinstance(target, dict | list):
            return changed
        target[path[-1]] = item
    except (KeyError, IndexError, TypeError):
        pass
    return changed


def put_raw(value: dict[str, Any], path: tuple[Any, ...], raw: bytes) -> bytes:
    """The record with raw JSON at `path`: nesting deeper than Python's json can write."""
    return encoded(put(value, path, "@@raw@@")).replace(b'"@@raw@@"', raw, 1)


def nested(depth: int, *, as_list: bool) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


def conversation_record(engine: PartitionEngine, cid: str) -> bytes | None:
    """The conversation as state would persist it, wherever the engine holds it."""
    conv = engine._open.get(cid)
    if conv is not None:
        return state.encode_record(conv)
    kept = engine.store.get(cid)
    return kept.blob if kept is not None else None


def through(
    engine: PartitionEngine,
    raw: bytes,
    offset: int,
    now: float,
    written: list[tuple[bytes, bytes | None]] | None = None,
) -> str:
    """One record the whole way; returns what became of it.

    `written` collects the state records of every checkpoint so far: a restore reads
    them all, as a new owner reads the state topic.
    """
    if written is None:
        written = []
    try:
        event = events.decode_event(raw)
    except InvalidEvent as exc:
        refused = exc.kind
    else:
        refused = None
    if refused is not None:
        assert refused in DECODE_KINDS
        return refused
    cid = event.conversation_id
    before = conversation_record(engine, cid)
    try:
        decisions = engine.apply(event, offset, now)
    except InvalidEvent as exc:
        refused = exc.kind
    if refused is not None:
        assert refused == "unprocessable"
        assert conversation_record(engine, cid) == before
        return refused
    decisions += engine.flush_open(Trigger.SHUTDOWN, now)
    for decision in decisions:
        payload.decode(decision.body)
        if isinstance(decision, Flush):
            engine.acknowledged(decision.conversation_id, decision.seq, now)
    written += engine.checkpoint().records
    restored = PartitionEngine(CONFIG)
    for key, value in written:
        restored.restore(key, value)
    for decision in restored.restored(now):
        payload.decode(decision.body)
    return "applied"


# Today's failures, one by one.

REPRODUCED = [
    ("invalid UTF-8 in a string", encoded(BASE).replace(b"what is this?", b"h\xff i"), "not_utf8"),
    (
        "1,000 deep in an ignored field",
        put_raw(BASE, ("x",), b"[" * 1000 + b"1" + b"]" * 1000),
        "too_deep",
    ),
    (
        "created in milliseconds",
        encoded(put(BASE, ("response", "created"), 1795428900000)),
        "out_of_range",
    ),
    (
        "year 1 with an offset",
        encoded({**BASE, "occurred_at": "0001-01-01T00:00:00+01:00"}),
        "out_of_range",
    ),
    (
        "year 9999 with an offset",
        encoded({**BASE, "occurred_at": "9999-12-31T23:59:59-01:00"}),
        "out_of_range",
    ),
    (
        "an integer over 64 bits in usage",
        encoded(put(BASE, ("response", "usage"), {"n": 2**70})),
        "out_of_range",
    ),
    ("latency_ms over a day", encoded({**BASE, "latency_ms": 1e12}), "out_of_range"),
    (
        "a float over double range",
        encoded(BASE).replace(b'"plan": "pro"', b'"plan": 1e999'),
        "out_of_range",
    ),
    ("a lone surrogate escape", encoded(BASE).replace(b"what is this?", b"\\ud800"), "not_json"),
    *[
        (
            f"{events.MAX_FREE_DEPTH + 1} deep in {'.'.join(map(str, path))}",
            encoded(put(BASE, path, nested(events.MAX_FREE_DEPTH + 1, as_list=False))),
            "too_deep",
        )
        for path in FREE_FORM_PATHS
    ],
    *[
        (
            f"response event: {label}",
            encoded(put(RESPONSE_BASE, path, value)),
            kind,
        )
        for label, path, value, kind in (
            (
                "deep built-in call",
                ("response", "output", 0, "action"),
                nested(events.MAX_FREE_DEPTH + 1, as_list=False),
                "too_deep",
            ),
            ("huge integer in usage", ("response", "usage"), {"n": 2**70}, "out_of_range"),
            (
                "huge integer in an input item",
                ("request", "input", 0, "x"),
                2**70,
                "out_of_range",
            ),
            ("deep error", ("response", "error"), nested(40, as_list=False), "too_deep"),
        )
    ],
]


@pytest.mark.parametrize(("raw", "kind"), [pytest.param(r, k, id=n) for n, r, k in REPRODUCED])
def test_each_known_hostile_record_gets_its_kind(raw: bytes, kind: str):
    with pytest.raises(InvalidEvent) as caught:
        events.decode_event(raw)
    assert caught.value.kind == kind


def test_free_form_nesting_up_to_its_bound_is_accepted_and_flushes():
    """At the bound a free-form value goes through state, fit (cutting) and encoding."""
    inner = nested(events.MAX_FREE_DEPTH - 1, as_list=True)
    raw = encoded(put(BASE, ("response", "usage"), {"deep": inner, "text": "x" * 2000}))
    assert through(PartitionEngine(EngineConfig(max_body_bytes=1500)), raw, 0, 1.0) == "applied"
    over = encoded(put(BASE, ("response", "usage"), {"deep": [inner]}))
    with pytest.raises(InvalidEvent, match="free-form") as caught:
        events.decode_event(over)
    assert caught.value.kind == "too_deep"


def test_record_nesting_is_bounded_anywhere_even_in_ignored_fields():
    """The top object counts 1; an ignored field at the bound is dropped, past it refused."""
    depth = events.MAX_DEPTH - 1
    at = put_raw(BASE, ("ignored",), b"[" * depth + b"]" * depth)
    assert isinstance(events.decode_event(at), events.ChatCompletion)
    over = put_raw(BASE, ("ignored",), b"[" * (depth + 1) + b"]" * (depth + 1))
    with pytest.raises(InvalidEvent, match="nesting") as caught:
        events.decode_event(over)
    assert caught.value.kind == "too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = '[{"' * 300 + '\\"' + "]}" * 50
    raw = encoded(put(BASE, ("conversation", "properties"), {"text": text}))
    assert isinstance(events.decode_event(raw), events.ChatCompletion)


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet='[]{}"\\ ab\u00e9', max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_the_nesting_scan_agrees_with_the_parsed_value(value: Any, ascii_only: bool):
    """Brackets, quotes and backslashes inside strings never count."""
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert events.nesting(raw) == depth_of(value)


def test_the_nesting_scan_is_linear_on_escaped_quotes_that_never_close():
    """A regex that retries from every quote would be quadratic here."""
    size = 400_000
    plain = b'{"a":[' + b"[]" * 300 + b'],"b":"' + b"x" * size * 2 + b'"}'
    hostile = b'{"a":[' + b"[]" * 300 + b'],"b":"' + b'\\"' * size

    def best(raw: bytes) -> float:
        timings = []
        for _ in range(3):
            began = time.perf_counter()
            with pytest.raises(InvalidEvent):
                events.decode_event(raw + b"[" * 300)
            timings.append(time.perf_counter() - began)
        return min(timings)

    assert best(hostile) <= 20 * best(plain) + 0.01


# Fuzzing.

TIMESTAMPS = st.builds(
    lambda year, month, offset: f"{year:04d}-{month:02d}-01T00:00:00{offset}",
    st.integers(1, 9999),
    st.integers(1, 12),
    st.sampled_from(["Z", "+01:00", "-01:00", "+23:59", "-23:59", "+14:00"]),
)
NUMBERS = st.one_of(
    st.sampled_from([1795428900000, 2**63, -(2**63) - 1, 2**64, 2**70, 1e308, -0.0]),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False),
)
NUMBER_PATHS: list[tuple[Any, ...]] = [
    ("response", "created"),
    ("latency_ms",),
    ("response", "usage", "prompt_tokens"),
    ("response", "choices", 0, "index"),
    ("conversation", "properties", "plan"),
]


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """A valid event, then one or more ways of breaking it."""
    value = copy.deepcopy(BASE)
    value["event_id"] = draw(st.sampled_from(["e1", "e2", "e3", "e4", "e5"]))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.integers(0, 6))
        if how == 0:
            path = draw(st.sampled_from(FREE_FORM_PATHS))
            depth = draw(st.integers(1, 200))
            value = put(value, path, nested(depth, as_list=draw(st.booleans())))
        elif how == 1:
            value = put(value, draw(st.sampled_from(NUMBER_PATHS)), draw(NUMBERS))
        elif how == 2:
            value["occurred_at"] = draw(TIMESTAMPS)
        elif how == 3:
            size = draw(st.sampled_from([10, 1000, 100_000]))
            value = put(value, ("request", "messages", 0, "content"), "x" * size)
        elif how == 4:
            count = draw(st.integers(0, 300))
            turn = {"role": draw(st.sampled_from(["user", "system"])), "content": "hi"}
            value["request"]["messages"] = value["request"]["messages"] + [turn] * count
        elif how == 5:
            value = put(value, draw(st.sampled_from(FREE_FORM_PATHS)), draw(st.text()))
        else:
            value["history"] = draw(st.sampled_from(["full", "delta"]))
    return draw(damaged(encoded(value)))


@st.composite
def damaged(draw: st.DrawFn, record: bytes) -> bytes:
    """The record, mostly as it is, else with bits flipped, cut, or bytes inserted."""
    raw = bytearray(record)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        how = draw(st.integers(0, 3))
        at = draw(st.integers(0, len(raw) - 1))
        if how == 0:
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif how == 1:
            del raw[at:]
            if not raw:
                break
        elif how == 2:
            raw[at:at] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800"]))
        else:
            raw[at:at] = draw(st.sampled_from([b"[" * 100, b"{" * 100, b'"', b"\\"]))
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_an_event_or_an_invalid_event(raw: bytes):
    through(PartitionEngine(CONFIG), raw, 0, 1.0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile(), min_size=1, max_size=4))
def test_mutated_events_never_crash_nor_apply_in_part(records: list[bytes]):
    engine = PartitionEngine(EngineConfig(max_body_bytes=20_000))
    written: list[tuple[bytes, bytes | None]] = []
    through(engine, encoded(BASE), 0, 1.0, written)
    for offset, raw in enumerate(records, start=1):
        through(engine, raw, offset, 1.0 + offset, written)


# All or nothing.


def completion(event_id: str, messages: list[dict[str, Any]], reply: str) -> events.Event:
    value = {
        **BASE,
        "event_id": event_id,
        "request": {"messages": messages},
        "response": {"choices": [{"message": {"role": "assistant", "content": reply}}]},
    }
    return events.decode_event(encoded(value))


def ended(event_id: str) -> events.Event:
    return events.decode_event(
        encoded(
            {
                "event_id": event_id,
                "event_type": "conversation.ended",
                "conversation_id": "c",
                "occurred_at": "2026-11-23T10:20:00Z",
                "conversation": {"tags": ["late"], "properties": {"x": 1}},
            }
        )
    )


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def test_a_failure_while_planning_leaves_the_conversation_as_it_was(monkeypatch):
    engine = PartitionEngine(CONFIG)
    engine.apply(completion("e1", [user("hi")], "hello"), 0, 1.0)
    before = conversation_record(engine, "c")

    def broken(*_: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(merge, "_reply_properties", broken)
    with pytest.raises(InvalidEvent) as caught:
        engine.apply(
            completion("e2", [user("hi"), assistant("hello"), user("more")], "sure"), 1, 2.0
        )
    assert caught.value.kind == "unprocessable"
    assert "ValueError" in caught.value.reason
    assert conversation_record(engine, "c") == before
    monkeypatch.undo()
    engine.apply(completion("e2", [user("hi"), assistant("hello"), user("more")], "sure"), 1, 2.0)
    assert len(engine._open["c"].entries) == 4


def test_a_failure_after_the_change_began_puts_everything_back(monkeypatch):
    """A `conversation.ended` that fails while its flush is built: the seen set, offsets,
    metadata and engine bookkeeping are as before, and the same event applies later."""
    engine = PartitionEngine(CONFIG)
    engine.apply(completion("e1", [user("hi")], "hello"), 0, 1.0)
    engine.checkpoint()
    before = conversation_record(engine, "c")

    def broken(*_: object) -> None:
        raise OverflowError("boom")

    monkeypatch.setattr(upsert, "to_payload", broken)
    with pytest.raises(InvalidEvent, match="OverflowError"):
        engine.apply(ended("end"), 1, 2.0)
    assert conversation_record(engine, "c") == before
    assert engine.checkpoint().records == []
    assert engine.open_count == 1
    monkeypatch.undo()
    (idle,) = engine.due(1.0 + CONFIG.idle_timeout)
    assert isinstance(idle, Flush)
    assert idle.trigger is Trigger.IDLE


def test_a_failed_continuation_leaves_the_completed_conversation_completed(monkeypatch):
    engine = PartitionEngine(CONFIG)
    engine.apply(completion("e1", [user("hi")], "hello"), 0, 1.0)
    (flush,) = engine.apply(ended("end"), 1, 2.0)
    engine.acknowledged("c", flush.seq, 3.0)
    assert engine.open_count == 0
    blob = conversation_record(engine, "c")

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(merge, "merge_meta", broken)
    with pytest.raises(InvalidEvent):
        engine.apply(completion("e2", [user("hi"), assistant("hello"), user("more")], "ok"), 2, 4.0)
    assert engine.open_count == 0
    assert conversation_record(engine, "c") == blob


# A re-sent completion.


def test_a_completion_resent_under_a_new_event_id_is_not_doubled():
    """The request `[hi, hello, hi]` also aligns as a trimmed history ending in
    `hello`; its reply sitting right after the wholly known request makes it a re-send."""
    engine = PartitionEngine(CONFIG)
    messages = [user("hi"), assistant("hello"), user("hi")]
    engine.apply(completion("e1", messages, "hello"), 0, 1.0)
    engine.apply(completion("e1-retry", messages, "hello"), 1, 2.0)
    (flush,) = engine.flush_open(Trigger.SHUTDOWN, 3.0)
    assert flush.message_count == 4


# Work per record: near-linear whatever the shape.

SIZE = 20_000
MOMENT = events.decode_event(encoded(BASE)).occurred_at


def chat(
    messages: list[dict[str, Any]], history: str, reply: str = "new reply"
) -> events.ChatCompletion:
    value = {
        **BASE,
        "history": history,
        "request": {"messages": messages},
        "response": {"choices": [{"message": assistant(reply)}]},
    }
    event = events.decode_event(msgspec.json.encode(value))
    assert isinstance(event, events.ChatCompletion)
    return event


def seconds(known: list[dict[str, Any]], request: list[dict[str, Any]]) -> float:
    """The best of three timings of one `full` event against a history of `known`."""
    conv = state.ConversationState(id="c", opened_at=0.0, last_event_at=0.0)
    merge.apply_completion(conv, chat(known, "delta"), MOMENT)
    del conv.entries[-1], conv.fingerprints[-1]
    record = state.encode_record(conv)
    event = chat(request, "full")
    best = float("inf")
    for _ in range(3):
        fresh = state.decode_record(record)
        assert isinstance(fresh, state.ConversationState)
        began = time.perf_counter()
        merge.apply_completion(fresh, event, MOMENT)
        best = min(best, time.perf_counter() - began)
    return best


def turns(count: int, label: str) -> list[dict[str, Any]]:
    return [user(f"{label} {i}") if i % 2 == 0 else assistant(f"{label} {i}") for i in range(count)]


PERIODIC = [user("hi") if i % 2 == 0 else assistant("hello") for i in range(SIZE)]
SHAPES = {
    "periodic history with an edited first message": (
        PERIODIC,
        [user("hi, edited"), *PERIODIC[1:]],
    ),
    "all new messages": (turns(SIZE, "old"), turns(SIZE, "new")),
    "many leading system messages": (
        turns(SIZE, "old"),
        [{"role": "system", "content": f"rule {i}"} for i in range(SIZE)] + [user("q")],
    ),
    "many equal messages": ([user("hi")] * SIZE, [user("hi")] * (SIZE + 1)),
    "many equal messages after an edit": ([user("hi")] * SIZE, [user("ho")] + [user("hi")] * SIZE),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_adversarial_histories_cost_about_what_a_growing_one_does(shape: str):
    """Bounded relative to a plain growing history of the same size, measured here."""
    plain = turns(SIZE, "turn")
    baseline = seconds(plain, [*plain, user("next")])
    known, request = SHAPES[shape]
    took = seconds(known, request)
    assert took <= 20 * baseline, f"{shape}: {took:.3f}s against {baseline:.3f}s"
