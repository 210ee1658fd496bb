"""Persisted conversation state: round trips, refusing what it cannot read, stable identities."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import events, merge, payload, state
from consumer.errors import StateError


def sample() -> state.ConversationState:
    moment = datetime(2026, 11, 23, 10, 15, 2, 481000, tzinfo=UTC)
    conv = state.ConversationState(id="conv_8f2c", opened_at=1.5, last_event_at=2.5)
    conv.entries = [
        state.Entry(role="developer", content="rules", created_at=moment),
        state.Entry(
            role="user",
            created_at=moment,
            name="ann",
            content=[
                payload.ContentItem(type="text", text="look"),
                payload.ContentItem(
                    type="image_url", image_url=payload.ImageURL(url="https://x", detail="low")
                ),
            ],
        ),
        state.Entry(
            role="assistant",
            content="",
            created_at=moment,
            tool_calls=[
                payload.ToolCall(
                    id="k",
                    function=payload.ToolCallFunction(name="f", arguments="{}"),
                )
            ],
            properties={"model": "gpt-4o", "usage": {"total_tokens": 3}, "latency_ms": 1.5},
        ),
        state.Entry(role="tool", content="42", created_at=moment, tool_call_id="k"),
    ]
    conv.fingerprints = [1, 2, 2**64 - 1, 0]
    conv.seen = {state.event_key("e1"), state.event_key("e2")}
    conv.meta.tags = ["docs"]
    conv.meta.user_properties = {"id": "u1"}
    conv.created_at = conv.updated_at = moment
    conv.in_flight = conv.seq = 3
    conv.in_flight_trigger = "ended"
    conv.unacked_from = 17
    return conv


@pytest.mark.parametrize("compress", [False, True])
def test_conversation_state_round_trips(compress):
    conv = sample()
    value = state.encode_record(conv, compress=compress)
    assert value[:1] == (b"Z" if compress else b"P")
    assert state.decode_record(value) == conv


def test_marker_round_trips():
    marker = state.Marker(id="c", acked_count=12, seq=4, last_offset=99, marked_at=5.0)
    assert state.decode_record(state.encode_record(marker)) == marker


def test_a_compressed_record_is_smaller_for_a_real_history():
    conv = sample()
    conv.entries *= 20
    assert len(state.encode_record(conv, compress=True)) < len(state.encode_record(conv)) / 3


@pytest.mark.parametrize(
    "value",
    [
        b"Q" + state.encode_record(sample())[1:],  # Unknown format byte.
        b"Z" + b"not zlib",
        state.encode_record(sample())[:40],  # Cut short.
        b"P" + msgspec.msgpack.encode(["c9", "a later version"]),
        b"Z" + zlib.compress(msgspec.msgpack.encode(["m1", "c", "not a count", 0, 0, 0.0])),
        b"",
    ],
)
def test_unreadable_records_raise_state_error(value):
    with pytest.raises(StateError):
        state.decode_record(value)


def test_message_ids_and_event_keys_are_pinned():
    # Persisted and sent: changing either breaks restarts or re-logs messages under new ids.
    assert state.message_id_prefix("conv_8f2c") == "m_82fb070b86af30bb_"
    assert state.message_id_prefix("conv_8f2d") != state.message_id_prefix("conv_8f2c")
    assert state.event_key("evt_1") == 5278118921624246742


def test_fingerprint_is_pinned():
    message = events.Message(role="user", content="How do I rotate an API key?")
    assert merge.fingerprint(message) == 12897306313924542179


def message(**fields: object) -> events.Message:
    return msgspec.convert(fields, events.Message)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"role": "developer", "content": "x"}, {"role": "system", "content": "x"}),
        ({"role": "assistant", "content": None}, {"role": "assistant", "content": ""}),
        (
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "user", "content": "ab"},
        ),
        (
            {"role": "assistant", "content": "x", "refusal": "no"},
            {"role": "assistant", "content": "x"},
        ),
        (
            {
                "role": "assistant",
                "tool_calls": [{"id": "k", "type": "custom", "custom": {"b": 1, "a": 2}}],
            },
            {
                "role": "assistant",
                "tool_calls": [{"id": "k", "type": "custom", "custom": {"a": 2, "b": 1}}],
            },
        ),
        ({"role": "user", "content": "x", "tool_calls": []}, {"role": "user", "content": "x"}),
    ],
)
def test_fingerprint_treats_equivalent_forms_as_one(one, other):
    assert merge.fingerprint(message(**one)) == merge.fingerprint(message(**other))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}),
        ({"role": "user", "content": "x"}, {"role": "user", "content": "x", "name": "ann"}),
        (
            {"role": "tool", "content": "1", "tool_call_id": "a"},
            {"role": "tool", "content": "1", "tool_call_id": "b"},
        ),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
            {"role": "user", "content": "u"},
        ),
        (
            {"role": "assistant", "function_call": {"name": "f", "arguments": "1"}},
            {"role": "assistant", "function_call": {"name": "f", "arguments": "2"}},
        ),
    ],
)
def test_fingerprint_tells_different_messages_apart(one, other):
    assert merge.fingerprint(message(**one)) != merge.fingerprint(message(**other))


def test_tags_union_in_first_seen_order_and_properties_merge():
    meta = state.Meta()
    merge.merge_meta(meta, events.ConversationMeta(tags=["a", "b", "a"], properties={"x": 1}))
    first_properties = meta.properties
    merge.merge_meta(meta, events.ConversationMeta(tags=["c", "a"], properties={"y": 2}))
    assert meta.tags == ["a", "b", "c"]
    assert meta.properties == {"x": 1, "y": 2}
    assert first_properties == {"x": 1}  # A body already decided keeps what it had.


# --- Alignment against a reference that fingerprints every message ----------------------

TEXTS = st.sampled_from(["", "hi", "more"])
MOMENT = datetime(2026, 11, 23, 10, 15, 2, tzinfo=UTC)


@st.composite
def sent_message(draw: st.DrawFn, role: str | None = None) -> dict[str, Any]:
    """A message as a producer sends it, from a small pool so that repeats are common."""
    role = role or draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
    value: dict[str, Any] = {"role": role}
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        value["content"] = draw(TEXTS)
    elif kind == 3:
        value["content"] = None
    elif kind == 4:
        value["content"] = [{"type": "text", "text": draw(TEXTS)}]
    else:
        value["content"] = [{"type": "image_url", "image_url": {"url": draw(TEXTS)}}]
    if draw(st.integers(0, 9)) == 0:
        value["name"] = "ann"
    if role == "tool" or draw(st.integers(0, 19)) == 0:
        value["tool_call_id"] = draw(st.sampled_from(["k1", "k2"]))
    if role == "assistant":
        extra = draw(st.integers(0, 4))
        if extra == 0:
            value["tool_calls"] = [
                {"id": "k1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]
        elif extra == 1:
            value["refusal"] = draw(TEXTS)
        elif extra == 2:
            value["function_call"] = {"name": "f", "arguments": "{}"}
    return value


ALTERED = (
    lambda v: (
        {**v, "content": [{"type": "text", "text": v["content"]}]}
        if isinstance(v.get("content"), str)
        else v
    ),
    lambda v: {**v, "content": None} if v.get("content") == "" else {**v, "content": ""},
    lambda v: {**v, "role": {"system": "developer", "developer": "system"}.get(v["role"], "user")},
    lambda v: {**v, "content": v.get("refusal") or "", "refusal": None},
    lambda v: {**v, "refusal": None, "function_call": None, "tool_calls": None},
    lambda v: {**v, "function_call": {"name": "f", "arguments": "{}"}},
    lambda v: {**v, "name": None if v.get("name") else "ann"},
    lambda v: {**v, "tool_call_id": None if v.get("tool_call_id") else "k1"},
    lambda v: {**v, "tool_calls": [{"id": "k2", "type": "custom", "custom": {"input": "x"}}]},
)
"""Forms a message can take when sent again: some equivalent to the first, some not."""


@st.composite
def resent(draw: st.DrawFn, value: dict[str, Any]) -> dict[str, Any]:
    """A message sent again: mostly as it was, else altered."""
    if draw(st.booleans()):
        return value
    return draw(st.sampled_from(ALTERED))(value)


def chat(messages: list[dict[str, Any]], reply: dict[str, Any] | None, history: str) -> Any:
    value: dict[str, Any] = {
        "event_id": "e",
        "event_type": "chat.completion",
        "conversation_id": "c",
        "occurred_at": "2026-11-23T10:15:02Z",
        "history": history,
        "request": {"model": "m", "messages": messages},
        "latency_ms": 12,
    }
    if reply is not None:
        value["response"] = {"id": "r", "choices": [{"message": reply}]}
    event = events.decode_event(msgspec.json.encode(value))
    assert isinstance(event, events.ChatCompletion)
    return event


def reference(
    known: list[int], messages: list[events.Message], reply: events.Message | None
) -> tuple[list[int], bool]:
    """Which request messages a `full` event appends, and whether its reply is appended,
    decided by fingerprinting every message (the alignment as first written, quadratic).

    A request wholly known in order with its reply right after it is a re-sent event
    on either path."""
    marks = [merge.fingerprint(message) for message in messages]
    end = len(known)
    front = 0
    while front < len(messages) and messages[front].role in ("system", "developer"):
        front += 1
    pointer, added = 0, []
    for index, mark in enumerate(marks):
        try:
            pointer = known.index(mark, pointer, end) + 1
        except ValueError:
            added.append(index)
    resent_reply = (
        reply is not None and pointer < end and known[pointer] == merge.fingerprint(reply)
    )
    for stop in range(len(marks), 0, -1) if end else ():
        if marks[stop - 1] != known[-1]:
            continue
        for start in range(min(front, stop - 1) + 1):
            length = stop - start
            if length <= end and marks[start:stop] == known[end - length :]:
                if resent_reply and not added:
                    return [], False
                fresh = [i for i in range(start) if marks[i] not in known]
                return [*fresh, *range(stop, len(messages))], True
    return added, not resent_reply


@pytest.mark.parametrize("quick", [2, 0], ids=["quick tries first", "linear search only"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_full_history_alignment_appends_what_fingerprinting_every_message_would(
    data: st.DataObject, quick: int
):
    """Most known messages are recognised without a fingerprint, and past the first
    candidates the aligned tail comes from a linear search; the result must not change."""
    merge._QUICK_TRIES = quick
    try:
        _align_like_the_reference(data)
    finally:
        merge._QUICK_TRIES = 2


def _align_like_the_reference(data: st.DataObject) -> None:
    conv = state.ConversationState(id="c", opened_at=0.0, last_event_at=0.0)
    history: list[dict[str, Any]] = []
    for _ in range(data.draw(st.integers(1, 7), label="events")):
        kept = data.draw(st.integers(0, len(history)), label="trimmed to")
        old = [data.draw(resent(value)) for value in history[len(history) - kept :]]
        if old and data.draw(st.booleans(), label="edit"):
            old[data.draw(st.integers(0, len(old) - 1))] = data.draw(sent_message())
        front = history[:1] if history and data.draw(st.booleans(), label="front") else []
        new = data.draw(st.lists(sent_message(), max_size=2), label="new")
        messages = [*front, *old, *new]
        reply = data.draw(st.none() | sent_message("assistant"), label="reply")
        history += [*new, *([reply] if reply is not None else [])]
        if data.draw(st.integers(0, 4), label="delta") == 0:
            merge.apply_completion(conv, chat(new, reply, "delta"), MOMENT)
            continue
        event = chat(messages, reply, "full")
        choice = event.response.choices[0].message if event.response else None
        added, with_reply = reference(conv.fingerprints, event.request.messages, choice)
        expected = state.decode_record(state.encode_record(conv))
        assert isinstance(expected, state.ConversationState)
        picked = [messages[index] for index in added]
        merge.apply_completion(
            expected, chat(picked, reply if with_reply else None, "delta"), MOMENT
        )
        merge.apply_completion(conv, event, MOMENT)
        assert state.encode_record(conv) == state.encode_record(expected)
