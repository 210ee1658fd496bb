"""The cheaper screens in `decode_event` answer every record as the exact checks do."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import events
from consumer.errors import InvalidEvent

TRICKY_TEXT = st.text(alphabet='[]{}"\\ ab\u00e9\n', max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_the_screen_agrees_with_the_exact_scan_on_valid_json(value: Any, ascii_only: bool):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert events._valid_nesting(raw) == events.nesting(raw)


def reference(raw: bytes) -> object:
    """`decode_event` as it was: the exact scan before msgspec, then msgspec's answer."""
    events._check_depth(raw)
    try:
        event = events._decoder.decode(raw)
    except msgspec.ValidationError as exc:
        reason = str(exc)
        if "`$.event_type`" in reason:
            kind = "unknown_event_type"
        elif events._OUT_OF_RANGE.search(reason):
            kind = "out_of_range"
        else:
            kind = "schema"
        raise InvalidEvent(kind, reason) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent("not_json", str(exc)) from None
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", f"invalid UTF-8 in a string: {exc.reason}") from None
    except RecursionError:
        raise InvalidEvent("too_deep", "nesting too deep to decode") from None
    events._check_values(event)
    return event


def outcome(decode: Any, raw: bytes) -> object:
    try:
        return decode(raw)
    except InvalidEvent as exc:
        return (exc.kind, str(exc))


def record(messages: list[Any], extra: Any, free: Any) -> bytes:
    return json.dumps(
        {
            "event_type": "chat.completion",
            "event_id": "e1",
            "conversation_id": "c1",
            "occurred_at": "2026-01-05T09:40:43Z",
            "history": "full",
            "request": {"messages": messages},
            "conversation": {"properties": {"free": free}},
            "ignored": extra,
        }
    ).encode()


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


EDGES = st.sampled_from([0, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30])
FREE = st.one_of(JSON_VALUES, EDGES, st.builds(nested, st.integers(0, 40), EDGES))


MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": TRICKY_TEXT}
)
DAMAGE = st.sampled_from(
    [b"[" * 300, b"{" * 120, b'"', b"\\", b'\\"', b"\\\\", b"]", b"}", b"\xff", b'"]}"']
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(MESSAGE, min_size=0, max_size=300),
    JSON_VALUES,
    FREE,
    st.lists(st.tuples(st.integers(0, 10**6), DAMAGE), max_size=3),
    st.booleans(),
)
def test_every_record_gets_the_answer_the_exact_scan_gives(
    messages: list[Any], extra: Any, free: Any, damage: list[tuple[int, bytes]], cut: bool
):
    """Valid, deep, and broken records (stray quotes and backslashes outside strings),
    free-form values near their depth and integer bounds."""
    raw = bytearray(record(messages, extra, free))
    for at, inserted in damage:
        where = at % (len(raw) + 1)
        raw[where:where] = inserted
    if cut and damage:
        del raw[damage[0][0] % (len(raw) + 1) :]
    data = bytes(raw)
    assert outcome(events.decode_event, data) == outcome(reference, data)


@pytest.mark.parametrize(
    "raw",
    [
        # A backslash outside any string: the screen takes it and the quote after it
        # for an escaped quote, so the brackets after `x"` look like string text to
        # it; they are not.
        b'{"a":1,\\"x"' + b"[" * 300,
        b'{"a":[' + b"[" * 10 + b'\\"x"' + b"[" * 300,
        b'{"ignored":[' + b"[" * 254 + b"]" * 255 + b"}",
        b'{"ignored":[' + b"[" * 255 + b"]" * 256 + b"}",
    ],
)
def test_stray_escapes_outside_strings_keep_their_answer(raw: bytes):
    if b"\\" in raw:
        assert events._valid_nesting(raw) < events.nesting(raw)
    assert outcome(events.decode_event, raw) == outcome(reference, raw)
