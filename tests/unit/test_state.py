"""Persisted conversation state: round trips, refusing what it cannot read, stable identities."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import msgspec
import pytest

from consumer import events, payload, state
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
    assert state.fingerprint(message) == 12897306313924542179


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
    assert state.fingerprint(message(**one)) == state.fingerprint(message(**other))


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
    assert state.fingerprint(message(**one)) != state.fingerprint(message(**other))


def test_tags_union_in_first_seen_order_and_properties_merge():
    meta = state.Meta()
    state.merge_meta(meta, events.ConversationMeta(tags=["a", "b", "a"], properties={"x": 1}))
    first_properties = meta.properties
    state.merge_meta(meta, events.ConversationMeta(tags=["c", "a"], properties={"y": 2}))
    assert meta.tags == ["a", "b", "c"]
    assert meta.properties == {"x": 1, "y": 2}
    assert first_properties == {"x": 1}  # A body already decided keeps what it had.
