"""Chat completions as the official `openai` SDK dumps them: nothing a reply carries is lost.

Replies are built with the SDK's own models and dumped whole (`model_dump(mode="json")`,
every field present, most of them null), as producers do.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_audio import ChatCompletionAudio
from openai.types.chat.chat_completion_message import Annotation, AnnotationURLCitation
from openai.types.completion_usage import CompletionUsage

from consumer import events, merge, render, state

ROOT = Path(__file__).resolve().parents[2]


def dump(message: ChatCompletionMessage, **choice_extra: Any) -> dict[str, Any]:
    return ChatCompletion(
        id="chatcmpl-1",
        object="chat.completion",
        created=1795428902,
        model="gpt-4o-2024-08-06",
        choices=[Choice(index=0, finish_reason="stop", message=message, **choice_extra)],
        usage=CompletionUsage(prompt_tokens=3, completion_tokens=5, total_tokens=8),
    ).model_dump(mode="json")


def event(response: dict[str, Any], messages: list[dict[str, Any]] | None = None, n: int = 1):
    return {
        "event_id": f"e{n}",
        "event_type": "chat.completion",
        "conversation_id": "c",
        "occurred_at": f"2026-11-23T10:00:0{n}Z",
        "request": {"model": "gpt-4o", "messages": messages or [{"role": "user", "content": "q"}]},
        "response": response,
    }


def bodies(*values: dict[str, Any]) -> list[dict[str, Any]]:
    out, errors = io.BytesIO(), io.StringIO()
    source = io.BytesIO(b"".join(json.dumps(v).encode() + b"\n" for v in values))
    assert render.render(source, out, errors) == 0, errors.getvalue()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def reply(*values: dict[str, Any]) -> dict[str, Any]:
    (body,) = bodies(*values)
    return body["messages"][-1]


def test_a_whole_sdk_dump_with_every_field_null_decodes_and_logs_its_content():
    sent = dump(ChatCompletionMessage(role="assistant", content="Hello"))
    assert sent["choices"][0]["message"]["audio"] is None  # Every field is there.
    logged = reply(event(sent))
    assert logged["content"] == "Hello"
    assert logged["properties"] == {
        "model": "gpt-4o-2024-08-06",
        "finish_reason": "stop",
        "usage": sent["usage"],
        "completion_id": "chatcmpl-1",
    }


def test_an_audio_reply_logs_its_transcript_not_its_data():
    audio = ChatCompletionAudio(
        id="audio_1", data="UklGRg" * 100, expires_at=1795432502, transcript="Nine."
    )
    logged = reply(event(dump(ChatCompletionMessage(role="assistant", audio=audio))))
    assert logged["content"] == "Nine."
    assert logged["properties"]["audio"] == {"id": "audio_1", "transcript": "Nine."}
    assert "UklGRg" not in json.dumps(logged)


def test_text_content_stays_the_content_beside_a_transcript():
    audio = ChatCompletionAudio(id="a", data="", expires_at=1, transcript="spoken")
    message = ChatCompletionMessage(role="assistant", content="written", audio=audio)
    assert reply(event(dump(message)))["content"] == "written"


def test_an_audio_reply_resent_by_its_id_is_logged_once():
    audio = ChatCompletionAudio(id="audio_1", data="", expires_at=1, transcript="Nine.")
    first = event(dump(ChatCompletionMessage(role="assistant", audio=audio)))
    history = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "audio": {"id": "audio_1"}},
        {"role": "user", "content": "and?"},
    ]
    second = event(dump(ChatCompletionMessage(role="assistant", content="Ten.")), history, 2)
    (body,) = bodies(first, second)
    assert [m["content"] for m in body["messages"]] == ["q", "Nine.", "and?", "Ten."]


def test_an_assistant_turn_equal_to_a_transcript_is_not_taken_for_the_audio_reply():
    """The cheap alignment test must not match text against a transcript standing in for none."""
    audio = ChatCompletionAudio(id="audio_1", data="", expires_at=1, transcript="Nine.")
    first = event(dump(ChatCompletionMessage(role="assistant", audio=audio)))
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Nine."}]
    conv = state.ConversationState(id="c", opened_at=0, last_event_at=0)
    decoded = events.decode_event(json.dumps(first).encode())
    assert isinstance(decoded, events.ChatCompletion)
    merge.apply_completion(conv, decoded, decoded.occurred_at)
    message = msgspec.convert(history[1], events.Message)
    assert not merge._same(message, conv.entries[-1])


def test_url_citations_are_kept_in_properties():
    citation = Annotation(
        type="url_citation",
        url_citation=AnnotationURLCitation(start_index=0, end_index=4, title="T", url="https://x"),
    )
    message = ChatCompletionMessage(role="assistant", content="Docs", annotations=[citation])
    logged = reply(event(dump(message)))
    assert logged["properties"]["annotations"] == [citation.model_dump(mode="json")]


def test_a_refusal_is_the_content_when_there_is_none():
    message = ChatCompletionMessage(role="assistant", content=None, refusal="I can't.")
    logged = reply(event(dump(message)))
    assert logged["content"] == "I can't."
    assert logged["properties"]["refusal"] == "I can't."


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reasoning_content", "Monday comes first."),
        ("reasoning", "Counted."),
        ("reasoning", {"effort": "low", "summary": "Counted."}),
        ("content_filter_results", {"hate": {"filtered": False, "severity": "safe"}}),
    ],
)
def test_provider_fields_on_the_message_are_kept(field: str, value: Any):
    message = ChatCompletionMessage.model_validate(
        {"role": "assistant", "content": "Tuesday.", field: value}
    )
    assert reply(event(dump(message)))["properties"][field] == value


def test_azure_filter_results_on_the_choice_and_the_prompt_are_kept():
    filters = {"violence": {"filtered": False, "severity": "safe"}}
    sent = dump(
        ChatCompletionMessage(role="assistant", content="ok"), content_filter_results=filters
    )
    sent["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": filters}]
    properties = reply(event(sent))["properties"]
    assert properties["content_filter_results"] == filters
    assert properties["prompt_filter_results"] == sent["prompt_filter_results"]


def test_unknown_reply_fields_stay_ignored():
    message = ChatCompletionMessage.model_validate(
        {"role": "assistant", "content": "ok", "x_future": {"a": 1}}
    )
    assert "x_future" not in json.dumps(reply(event(dump(message))))


@pytest.mark.parametrize(
    ("message", "persisted"),
    [
        ({"role": "user", "content": "hi"}, 1398427953657225997),
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            11591927353980552861,
        ),
        ({"role": "assistant", "content": None, "refusal": "no"}, 17850893254494663879),
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "u"}},
                ],
            },
            9304175233843050699,
        ),
    ],
)
def test_fingerprints_of_messages_without_the_new_fields_are_unchanged(message, persisted):
    """Values computed by the worker before contract v1.2: state written then still aligns."""
    assert merge.fingerprint(msgspec.convert(message, events.Message)) == persisted


def test_the_new_fields_leave_a_message_fingerprint_alone():
    """A reply re-sent without them (as the SDK's request types do) still aligns with it."""
    plain = {"role": "assistant", "content": "Tuesday."}
    rich = {
        **plain,
        "annotations": [{"type": "url_citation"}],
        "reasoning_content": "r",
        "content_filter_results": {},
        "audio": {"id": "a", "transcript": "t"},
    }
    assert merge.fingerprint(msgspec.convert(rich, events.Message)) == merge.fingerprint(
        msgspec.convert(plain, events.Message)
    )


def test_the_sdk_example_file_logs_every_reply_field():
    path = ROOT / "docs" / "examples" / "sdk-chat-completions.ndjson"
    values = [json.loads(line) for line in path.read_text().splitlines()]
    (body,) = bodies(*values)
    keys = set().union(*((m.get("properties") or {}).keys() for m in body["messages"]))
    assert keys >= {
        "audio",
        "annotations",
        "refusal",
        "reasoning",
        "reasoning_content",
        "content_filter_results",
        "prompt_filter_results",
    }
    contents = [m["content"] for m in body["messages"]]
    assert len(contents) == len(set(contents)) == 8
