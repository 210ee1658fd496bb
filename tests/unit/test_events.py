"""The input contract, field by field, and the shipped examples decoded as the worker does."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from consumer import events
from consumer.errors import ConsumerError, InvalidEvent

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
INVALID = EXAMPLES / "invalid.ndjson"
EVENTS_DOC = ROOT / "docs" / "events.md"

# What each line of invalid.ndjson breaks, in file order; docs/events.md explains each one.
INVALID_KINDS = [
    "not_json",  # cut off mid-write
    "schema",  # an array, not an object
    "schema",  # no event_type
    "unknown_event_type",  # a streaming chunk
    "schema",  # chat.completion without request
    "schema",  # conversation.ended without conversation_id
    "schema",  # messages is a string
    "schema",  # timestamp without offset
    "schema",  # timestamp as epoch seconds
    "schema",  # empty event_id
    "schema",  # conversation_id of 257 characters
    "out_of_range",  # negative latency_ms
    "schema",  # unknown history mode
    "schema",  # unknown role
    "schema",  # unknown visibility
    "schema",  # tags as one string
]

# Keys whose values are free-form data: whatever is inside them is kept as sent.
FREE_FORM = {"properties", "user_properties", "usage", "input_audio", "file", "custom"} | {
    # Kept as given (contract v1.2); Responses API items are kept whole for built-in tools.
    "annotations",
    "content_filter_results",
    "prompt_filter_results",
    "reasoning",
    "input",
    "output",
    "error",
    "incomplete_details",
}

BASE: dict[str, Any] = {
    "event_id": "evt_01JD5K8Z3Q7M",
    "event_type": "chat.completion",
    "conversation_id": "conv_8f2c",
    "occurred_at": "2026-11-23T10:15:02.481Z",
    "request": {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "How do I rotate a key?"}],
    },
}
ENDED: dict[str, Any] = {
    "event_id": "evt_01JD5KC0ENDD",
    "event_type": "conversation.ended",
    "conversation_id": "conv_8f2c",
    "occurred_at": "2026-11-23T10:25:00Z",
}


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.ndjson") if p != INVALID)


def example_lines() -> list[tuple[str, bytes]]:
    return [
        (f"{path.name}:{number}", line)
        for path in example_files()
        for number, line in enumerate(path.read_bytes().splitlines(), 1)
        if line.strip()
    ]


def valid_lines() -> list[Any]:
    return [pytest.param(line, id=where) for where, line in example_lines()]


def invalid_lines() -> list[bytes]:
    return [line for line in INVALID.read_bytes().splitlines() if line.strip()]


def decoded_examples() -> list[tuple[dict[str, Any], events.Event]]:
    return [(json.loads(line), events.decode_event(line)) for _, line in example_lines()]


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `base` with top-level keys replaced; `...` removes a key."""
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def decode(value: Any) -> events.Event:
    return events.decode_event(json.dumps(value).encode())


def refused(value: Any) -> InvalidEvent:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    with pytest.raises(InvalidEvent) as caught:
        events.decode_event(data)
    return caught.value


def message_event(message: dict[str, Any]) -> dict[str, Any]:
    return with_(BASE, request={"messages": [message]})


# --- the shipped examples -------------------------------------------------------------


def assert_kept(sent: Any, decoded: Any, path: str = "$") -> None:
    """Every field the contract knows arrives with the value that was sent."""
    if isinstance(sent, dict) and isinstance(decoded, dict):
        for key, value in sent.items():
            if key in decoded:
                assert_kept(value, decoded[key], f"{path}.{key}")
    elif isinstance(sent, list) and isinstance(decoded, list):
        assert len(sent) == len(decoded), path
        for index, (a, b) in enumerate(zip(sent, decoded, strict=True)):
            assert_kept(a, b, f"{path}[{index}]")
    elif path.endswith(".occurred_at"):
        assert datetime.fromisoformat(decoded) == datetime.fromisoformat(sent), path
    else:
        assert decoded == sent, path


@pytest.mark.parametrize("line", valid_lines())
def test_every_example_line_decodes_with_its_values(line: bytes):
    event = events.decode_event(line)
    sent = json.loads(line)
    assert isinstance(
        event,
        events.ChatCompletion
        | events.ConversationEnded
        | events.ResponseEvent
        | events.Feedback
        | events.Interaction,
    )
    assert event.event_id == sent["event_id"]
    assert_kept(sent, msgspec.to_builtins(event))


def test_the_examples_hold_both_event_types_in_several_files():
    kinds = {type(event) for _, event in decoded_examples()}
    assert kinds == {
        events.ChatCompletion,
        events.ConversationEnded,
        events.ResponseEvent,
        events.Feedback,
        events.Interaction,
    }
    assert len(example_files()) >= 4


def _full_events(
    examples: list[tuple[dict[str, Any], events.Event]],
) -> list[events.ChatCompletion]:
    return [e for _, e in examples if isinstance(e, events.ChatCompletion) and e.history == "full"]


def _duplicate(examples):
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for raw, event in examples:
        key = (event.conversation_id, event.event_id)
        if key in seen and seen[key] == raw:
            return True
        seen[key] = raw
    return False


def _continuation(examples):
    ended: set[str] = set()
    for _, event in examples:
        if isinstance(event, events.ConversationEnded):
            ended.add(event.conversation_id)
        elif event.conversation_id in ended:
            return True
    return False


def _trimmed(examples):
    by_conversation: dict[str, list[list[events.Message]]] = {}
    for event in _full_events(examples):
        by_conversation.setdefault(event.conversation_id, []).append(event.request.messages)
    for histories in by_conversation.values():
        for earlier, later in itertools.pairwise(histories):
            kept_system = later[0] == earlier[0] and later[0].role == "system"
            if kept_system and later[1] != earlier[1] and earlier[-1] in later:
                return True
    return False


def _tool_round_trip(examples):
    called = set()
    answered = set()
    for _, event in examples:
        if not isinstance(event, events.ChatCompletion):
            continue
        for message in event.request.messages:
            called.update(call.id for call in message.tool_calls or ())
            if message.role == "tool" and message.tool_call_id:
                answered.add(message.tool_call_id)
    return bool(called & answered)


def _parts(examples) -> set[str]:
    return {
        part.type
        for _, event in examples
        if isinstance(event, events.ChatCompletion)
        for message in event.request.messages
        if isinstance(message.content, list)
        for part in message.content
    }


def _replies(examples) -> list[events.Message]:
    return [
        choice.message
        for _, event in examples
        if isinstance(event, events.ChatCompletion) and event.response
        for choice in event.response.choices
        if choice.message
    ]


CASES = {
    "a duplicate (the same event re-sent)": _duplicate,
    "a continuation after conversation.ended": _continuation,
    "a full history trimmed at the front, system prompt kept": _trimmed,
    "a delta history": lambda ex: any(
        isinstance(e, events.ChatCompletion) and e.history == "delta" for _, e in ex
    ),
    "an event that leaves history out (default full)": lambda ex: any(
        r["event_type"] == "chat.completion" and "history" not in r for r, _ in ex
    ),
    "a tool call answered by a tool result": _tool_round_trip,
    "a legacy function call and its result": lambda ex: any(
        m.role == "function"
        for _, e in ex
        if isinstance(e, events.ChatCompletion)
        for m in e.request.messages
    ),
    "text, image, audio, file and refusal parts": lambda ex: (
        {"text", "image_url", "input_audio", "file", "refusal"} <= _parts(ex)
    ),
    "a refused reply": lambda ex: any(m.refusal for m in _replies(ex)),
    "a developer message": lambda ex: any(
        m.role == "developer"
        for _, e in ex
        if isinstance(e, events.ChatCompletion)
        for m in e.request.messages
    ),
    "a failed call (no response)": lambda ex: any(
        isinstance(e, events.ChatCompletion) and e.response is None for _, e in ex
    ),
    "an unknown extra field": lambda ex: any(
        set(r) - set(type(e).__struct_fields__) - {"event_type"} for r, e in ex
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_examples_show(case: str):
    assert CASES[case](decoded_examples()), f"no example shows {case}"


def test_each_invalid_example_has_an_expected_kind():
    assert len(invalid_lines()) == len(INVALID_KINDS)


@pytest.mark.parametrize(
    ("number", "kind"), [pytest.param(n, k, id=f"line {n}") for n, k in enumerate(INVALID_KINDS, 1)]
)
def test_every_invalid_example_is_refused_with_its_kind(number: int, kind: str):
    error = refused(invalid_lines()[number - 1])
    assert error.kind == kind, error.reason
    assert error.reason


def test_the_docs_explain_every_invalid_example_with_its_kind():
    row = re.compile(r"^\|\s*(\d+)\s*\|\s*`([a-z_]+)`\s*\|(.+)\|\s*$", re.MULTILINE)
    rows = row.findall(EVENTS_DOC.read_text("utf-8"))
    documented = {int(number): (kind, why.strip()) for number, kind, why in rows}
    for number, kind in enumerate(INVALID_KINDS, 1):
        assert number in documented, f"docs/events.md does not explain invalid.ndjson line {number}"
        assert documented[number][0] == kind, number
        assert documented[number][1], number


# --- field by field -------------------------------------------------------------------


def test_a_minimal_chat_completion_takes_its_defaults():
    event = decode(BASE)
    assert isinstance(event, events.ChatCompletion)
    assert event.history == "full"
    assert event.response is None
    assert event.latency_ms is None
    assert event.conversation is None
    assert event.request.model == "gpt-4o"
    assert event.request.messages == [events.Message(role="user", content="How do I rotate a key?")]


def test_a_minimal_conversation_ended_decodes():
    event = decode(ENDED)
    assert isinstance(event, events.ConversationEnded)
    assert event.conversation_id == "conv_8f2c"
    assert event.conversation is None


@pytest.mark.parametrize("field", ["event_id", "conversation_id"])
@pytest.mark.parametrize(
    "value", ["x", "x" * 256, "é" * 256, "😀" * 256], ids=lambda v: f"{v[0]}*{len(v)}"
)
def test_ids_take_1_to_256_characters(field: str, value: str):
    assert getattr(decode(with_(BASE, **{field: value})), field) == value
    assert getattr(decode(with_(ENDED, **{field: value})), field) == value


@pytest.mark.parametrize("field", ["event_id", "conversation_id"])
@pytest.mark.parametrize("value", ["", "x" * 257, 42, None, ...], ids=repr)
def test_ids_outside_the_rule_are_refused(field: str, value: Any):
    for base in (BASE, ENDED):
        error = refused(with_(base, **{field: value}))
        assert error.kind == "schema"
        assert field in error.reason


@pytest.mark.parametrize(
    ("value", "offset", "micros"),
    [
        ("2026-11-23T10:15:02.481Z", timedelta(0), 481000),
        ("2026-11-23T10:15:02Z", timedelta(0), 0),
        ("2026-11-23T11:15:02.481+01:00", timedelta(hours=1), 481000),
        ("2026-11-23T05:15:02.481-05:00", timedelta(hours=-5), 481000),
        ("2026-11-23T10:15:02.123456789Z", timedelta(0), 123457),
    ],
)
def test_timestamps_keep_their_instant_and_offset(value: str, offset: timedelta, micros: int):
    event = decode(with_(BASE, occurred_at=value))
    assert event.occurred_at.utcoffset() == offset
    assert event.occurred_at == datetime(2026, 11, 23, 10, 15, 2, micros, UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-23T10:15:02.481",
        "2026-11-23T10:15:02",
        "2026-11-23",
        "10:15:02Z",
        "23/11/2026 10:15",
        "yesterday",
        "",
        1795428902,
        1795428902.481,
        None,
        ...,
    ],
    ids=repr,
)
def test_timestamps_need_a_date_a_time_and_an_offset(value: Any):
    for base in (BASE, ENDED):
        error = refused(with_(base, occurred_at=value))
        assert error.kind == "schema"
        assert "occurred_at" in error.reason


@pytest.mark.parametrize("value", [0, 0.0, 1840, 1422.5, None], ids=repr)
def test_latency_is_a_number_of_at_least_zero(value: Any):
    assert decode(with_(BASE, latency_ms=value)).latency_ms == value


@pytest.mark.parametrize("value", ["1840", True, [1840]], ids=repr)
def test_latency_not_a_number_is_refused(value: Any):
    error = refused(with_(BASE, latency_ms=value))
    assert error.kind == "schema"
    assert "latency_ms" in error.reason


@pytest.mark.parametrize("value", [-1, -0.001, 86_400_001, 1e300], ids=repr)
def test_latency_below_zero_or_over_a_day_is_out_of_range(value: Any):
    error = refused(with_(BASE, latency_ms=value))
    assert error.kind == "out_of_range"
    assert "latency_ms" in error.reason


@pytest.mark.parametrize(
    "value", ["chat.completion.chunk", "Chat.Completion", "conversation.started", "completion", ""]
)
def test_an_unknown_event_type_is_its_own_kind(value: str):
    error = refused(with_(BASE, event_type=value))
    assert error.kind == "unknown_event_type"
    assert "event_type" in error.reason


def test_a_missing_event_type_is_a_schema_error():
    error = refused(with_(BASE, event_type=...))
    assert error.kind == "schema"
    assert "event_type" in error.reason


@pytest.mark.parametrize("value", ["full", "delta"])
def test_history_is_full_or_delta(value: str):
    assert decode(with_(BASE, history=value)).history == value


@pytest.mark.parametrize("value", ["append", "FULL", "", None, 1], ids=repr)
def test_any_other_history_is_refused(value: Any):
    error = refused(with_(BASE, history=value))
    assert error.kind == "schema"
    assert "history" in error.reason


@pytest.mark.parametrize(
    "request_",
    [..., None, {}, {"model": "gpt-4o"}, {"messages": "hi"}, {"messages": None}, "hi"],
    ids=repr,
)
def test_a_chat_completion_needs_a_request_with_messages(request_: Any):
    error = refused(with_(BASE, request=request_))
    assert error.kind == "schema"
    assert "request" in error.reason or "messages" in error.reason


def test_a_request_may_carry_no_new_messages():
    assert decode(with_(BASE, request={"messages": []})).request.messages == []


def test_conversation_ended_needs_no_request_and_ignores_one():
    event = decode(with_(ENDED, request={"messages": "not even valid"}))
    assert isinstance(event, events.ConversationEnded)


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool", "function"])
def test_every_openai_role_is_accepted(role: str):
    event = decode(message_event({"role": role, "content": "x"}))
    assert isinstance(event, events.ChatCompletion)
    assert event.request.messages[0].role == role


@pytest.mark.parametrize("role", ["bot", "Tool", "", None, ...], ids=repr)
def test_any_other_role_is_refused(role: Any):
    message = {"role": role, "content": "x"} if role is not ... else {"content": "x"}
    error = refused(message_event(message))
    assert error.kind == "schema"
    assert "messages[0]" in error.reason


def test_content_is_a_string_parts_or_null():
    parts = [
        {"type": "text", "text": "What is on this invoice?"},
        {"type": "image_url", "image_url": {"url": "https://files.example/i.png", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
        {"type": "refusal", "refusal": "I can't help with that."},
    ]
    for content in ("hello", None):
        event = decode(message_event({"role": "user", "content": content}))
        assert isinstance(event, events.ChatCompletion)
        assert event.request.messages[0].content == content
    event = decode(message_event({"role": "user", "content": parts}))
    assert isinstance(event, events.ChatCompletion)
    got = event.request.messages[0].content
    assert isinstance(got, list)
    assert [p.type for p in got] == ["text", "image_url", "input_audio", "file", "refusal"]
    assert got[1].image_url == events.ImageURL(url="https://files.example/i.png", detail="low")
    assert got[2].input_audio == {"data": "UklGRg==", "format": "wav"}
    assert got[3].file == {"file_id": "file-1", "filename": "a.pdf"}
    assert got[4].refusal == "I can't help with that."


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": 42},
        {"role": "user", "content": {"type": "text", "text": "x"}},
        {"role": "user", "content": [{"text": "no type"}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "high"}}]},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"arguments": "{}"}}]},
        {"role": "assistant", "tool_calls": {"id": "call_1"}},
        {"role": "assistant", "function_call": {"arguments": "{}"}},
        {"role": "tool", "content": "42", "tool_call_id": 7},
        {"role": "user", "content": "x", "name": ["dana"]},
    ],
    ids=lambda m: json.dumps(m)[:60],
)
def test_malformed_messages_are_refused(message: dict[str, Any]):
    error = refused(message_event(message))
    assert error.kind == "schema"
    assert "messages[0]" in error.reason


def test_tool_calls_and_results_decode():
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    custom = {"id": "call_2", "type": "custom", "custom": {"name": "ticket", "input": "late order"}}
    event = decode(
        with_(
            BASE,
            request={
                "messages": [
                    {"role": "assistant", "content": None, "tool_calls": [call, custom]},
                    {"role": "tool", "tool_call_id": "call_1", "content": '{"ok":true}'},
                    {"role": "assistant", "function_call": {"name": "calc"}},
                    {"role": "function", "name": "calc", "content": "4"},
                ]
            },
        )
    )
    assert isinstance(event, events.ChatCompletion)
    calls, result, legacy, legacy_result = event.request.messages
    assert calls.tool_calls == [
        events.ToolCall(id="call_1", function=events.FunctionCall(name="lookup", arguments="{}")),
        events.ToolCall(id="call_2", type="custom", custom=custom["custom"]),
    ]
    assert result.tool_call_id == "call_1"
    assert legacy.function_call == events.FunctionCall(name="calc", arguments="")
    assert legacy_result.name == "calc"


def test_the_reply_is_the_first_choice_message():
    reply = {"role": "assistant", "content": "Open Settings.", "refusal": None}
    event = decode(
        with_(
            BASE,
            response={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1795428900,
                "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "finish_reason": "stop", "message": reply}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            },
        )
    )
    assert isinstance(event, events.ChatCompletion)
    assert event.response is not None
    assert event.response.choices[0].message == events.Message(
        role="assistant", content="Open Settings."
    )
    assert event.response.choices[0].finish_reason == "stop"
    assert event.response.created == 1795428900
    assert event.response.usage == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


@pytest.mark.parametrize(
    "response",
    [None, {}, {"choices": []}, {"id": "chatcmpl-1", "choices": [{"index": 0}]}],
    ids=repr,
)
def test_a_response_is_optional_and_may_be_empty(response: Any):
    event = decode(with_(BASE, response=response))
    assert isinstance(event, events.ChatCompletion)
    choices = event.response.choices if event.response else []
    assert all(choice.message is None for choice in choices)


@pytest.mark.parametrize(
    "response",
    ["ok", {"choices": {"index": 0}}, {"created": "yesterday"}, {"usage": [1, 2]}],
    ids=repr,
)
def test_a_malformed_response_is_refused(response: Any):
    error = refused(with_(BASE, response=response))
    assert error.kind == "schema"
    assert "response" in error.reason


def test_conversation_metadata_decodes_every_field():
    meta = {
        "external_id": "widget-session-5521",
        "external_url": "https://app.example/sessions/5521",
        "project_id": "proj_docs",
        "integration_id": "int_widget",
        "support_ticket_conversation_id": "ZD-48213",
        "properties": {"app": "docs-widget", "nested": {"a": [1, 2]}},
        "user_properties": {"id": "user_42", "identificationType": "COOKIED"},
        "tags": ["docs", "api-keys"],
        "visibility": "private",
    }
    for base in (BASE, ENDED):
        event = decode(with_(base, conversation=meta))
        assert msgspec.to_builtins(event.conversation) == meta


@pytest.mark.parametrize(
    "meta",
    [
        {"visibility": "internal"},
        {"visibility": "PUBLIC"},
        {"tags": "docs"},
        {"tags": ["docs", 7]},
        {"properties": "docs-widget"},
        {"user_properties": ["user_42"]},
        {"external_id": 5521},
        "conv",
    ],
    ids=repr,
)
def test_malformed_metadata_is_refused(meta: Any):
    for base in (BASE, ENDED):
        error = refused(with_(base, conversation=meta))
        assert error.kind == "schema"
        assert "conversation" in error.reason


def _with_unknown_fields(value: Any, counter: list[int]) -> Any:
    if isinstance(value, list):
        return [_with_unknown_fields(item, counter) for item in value]
    if not isinstance(value, dict):
        return value
    out = {
        key: item if key in FREE_FORM else _with_unknown_fields(item, counter)
        for key, item in value.items()
    }
    out["x_added_in_v2"] = {"nested": ["anything", 1, None]}
    counter.append(1)
    return out


@pytest.mark.parametrize("line", valid_lines())
def test_unknown_fields_are_ignored_at_every_level(line: bytes):
    sent = json.loads(line)
    counter: list[int] = []
    extended = json.dumps(_with_unknown_fields(sent, counter)).encode()
    levels = 3 if sent["event_type"] == "chat.completion" else 1
    assert extended.count(b"x_added_in_v2") == len(counter) >= levels
    assert events.decode_event(extended) == events.decode_event(line)


@pytest.mark.parametrize(
    "data",
    [b"", b"nope", b"{", b'{"event_id": "a",}', b"\xff\xfe{}", b"{'event_id': 'a'}"],
    ids=repr,
)
def test_bytes_that_are_not_json_are_their_own_kind(data: bytes):
    assert refused(data).kind == "not_json"


@pytest.mark.parametrize("data", [b"[]", b"null", b'"chat.completion"', b"42", b"true"], ids=repr)
def test_json_that_is_not_an_object_is_a_schema_error(data: bytes):
    error = refused(data)
    assert error.kind == "schema"
    assert "object" in error.reason


def test_an_invalid_event_is_final_not_retriable():
    error = refused(b"nope")
    assert isinstance(error, ConsumerError)
    assert error.retriable is False
