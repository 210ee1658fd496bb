# ruff: noqa: INP001 - a standalone script, not a package module.
"""Writes the examples of what real producers send, built from the official `openai` SDK's types.

    .venv/bin/python docs/examples/make_sdk_examples.py

`sdk-chat-completions.ndjson`: `ChatCompletion`s dumped whole (`model_dump(mode="json")`),
with an audio reply, URL citations, a refusal, and the fields OpenAI-compatible
providers add (reasoning, Azure's content filter results). `responses-api.ndjson`: a
Responses API conversation with instructions, a function call and its output, reasoning,
built-in tool calls and a cited answer, chained by `previous_response_id` (delta), and one
re-sending its whole input (full). tests/unit/test_openai_shapes.py checks the files are
what this script writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_audio import ChatCompletionAudio
from openai.types.chat.chat_completion_message import Annotation, AnnotationURLCitation
from openai.types.completion_usage import CompletionUsage
from openai.types.responses import (
    Response,
    ResponseCodeInterpreterToolCall,
    ResponseFileSearchToolCall,
    ResponseFunctionToolCall,
    ResponseFunctionWebSearch,
    ResponseOutputMessage,
    ResponseOutputRefusal,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseUsage,
)
from openai.types.responses.response_output_item import ImageGenerationCall, McpCall
from openai.types.responses.response_reasoning_item import Summary
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

HERE = Path(__file__).resolve().parent


def completion(cid: str, created: int, message: ChatCompletionMessage, **extra: Any) -> dict:
    """A ChatCompletion as the SDK returns it, dumped whole; `extra` as a provider adds it."""
    choice_extra = extra.pop("choice_extra", {})
    return ChatCompletion(
        id=cid,
        object="chat.completion",
        created=created,
        model="gpt-4o-audio-preview-2025-06-03",
        choices=[Choice(index=0, finish_reason="stop", message=message, **choice_extra)],
        usage=CompletionUsage(prompt_tokens=30, completion_tokens=20, total_tokens=50),
        **extra,
    ).model_dump(mode="json")


def chat_events() -> list[dict[str, Any]]:
    conv = "conv_sdk_chat_4a1e"
    audio = ChatCompletionMessage(
        role="assistant",
        content=None,
        audio=ChatCompletionAudio(
            id="audio_01", data="UklGRg==", expires_at=1795432502, transcript="It opens at nine."
        ),
    )
    cited = ChatCompletionMessage(
        role="assistant",
        content="The store page lists the hours.",
        annotations=[
            Annotation(
                type="url_citation",
                url_citation=AnnotationURLCitation(
                    start_index=4, end_index=14, title="Hours", url="https://acme.example/hours"
                ),
            )
        ],
    )
    refused = ChatCompletionMessage(
        role="assistant", content=None, refusal="I can't help with that."
    )
    reasoned = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": "Tuesday.",
            "reasoning_content": "The week starts on Monday, so the second day is Tuesday.",
            "reasoning": "Counted from Monday.",
            "content_filter_results": {"self_harm": {"filtered": False, "severity": "safe"}},
        }
    )
    filters = {"hate": {"filtered": False, "severity": "safe"}}
    history = [{"role": "user", "content": "When does the store open?"}]
    events = [
        _chat(
            conv,
            "evt_sdk_chat_1",
            "10:00:01",
            history,
            completion("chatcmpl-a1", 1795428001, audio),
        ),
    ]
    history += [
        {"role": "assistant", "audio": {"id": "audio_01"}},
        {"role": "user", "content": "Source?"},
    ]
    events.append(
        _chat(
            conv,
            "evt_sdk_chat_2",
            "10:00:09",
            history,
            completion("chatcmpl-a2", 1795428009, cited),
        )
    )
    history += [
        {"role": "assistant", "content": "The store page lists the hours."},
        {"role": "user", "content": "Tell me how to pick its lock."},
    ]
    events.append(
        _chat(
            conv,
            "evt_sdk_chat_3",
            "10:00:15",
            history,
            completion("chatcmpl-a3", 1795428015, refused),
        )
    )
    history += [
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "user", "content": "Which day comes after Monday?"},
    ]
    events.append(
        _chat(
            conv,
            "evt_sdk_chat_4",
            "10:00:21",
            history,
            completion(
                "chatcmpl-a4",
                1795428021,
                reasoned,
                prompt_filter_results=[{"prompt_index": 0, "content_filter_results": filters}],
                choice_extra={"content_filter_results": filters},
            ),
        )
    )
    return events


def _chat(conv: str, eid: str, at: str, history: list[dict], response: dict) -> dict[str, Any]:
    return {
        "event_id": eid,
        "event_type": "chat.completion",
        "conversation_id": conv,
        "occurred_at": f"2026-11-23T{at}.000Z",
        "history": "full",
        "request": {"model": "gpt-4o-audio-preview", "messages": list(history)},
        "response": response,
    }


def response(rid: str, created: float, output: list[Any], status: str = "completed") -> dict:
    """A Response as the SDK returns it, dumped whole."""
    return Response(
        id=rid,
        object="response",
        created_at=created,
        model="gpt-5-2025-08-07",
        status=status,
        output=output,
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        usage=ResponseUsage(
            input_tokens=120,
            input_tokens_details=InputTokensDetails.model_construct(cached_tokens=0),
            output_tokens=40,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=16),
            total_tokens=160,
        ),
    ).model_dump(mode="json")


def response_events() -> list[dict[str, Any]]:
    conv = "conv_sdk_responses_8b2d"
    instructions = "You are Acme's order assistant. Use the tools."
    reasoning = ResponseReasoningItem(
        id="rs_1",
        type="reasoning",
        summary=[Summary(type="summary_text", text="The user wants an order's status.")],
    )
    call = ResponseFunctionToolCall(
        id="fc_1",
        type="function_call",
        call_id="call_order_1",
        name="get_order",
        arguments='{"order_id":"A-1001"}',
        status="completed",
    )
    first = response("resp_01", 1795428100.0, [reasoning, call])
    search = ResponseFunctionWebSearch.model_validate(
        {
            "id": "ws_1",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": "acme carrier tracking"},
        }
    )
    files = ResponseFileSearchToolCall(
        id="fs_1", type="file_search_call", status="completed", queries=["delivery times"]
    )
    answer = ResponseOutputMessage(
        id="msg_1",
        type="message",
        role="assistant",
        status="completed",
        content=[
            ResponseOutputText(
                type="output_text",
                text="Order A-1001 shipped yesterday; the carrier says it arrives Friday.",
                annotations=[
                    {
                        "type": "url_citation",
                        "start_index": 32,
                        "end_index": 43,
                        "title": "Tracking",
                        "url": "https://carrier.example/track/A-1001",
                    }
                ],
            )
        ],
    )
    second = response("resp_02", 1795428106.0, [search, files, answer])
    code = ResponseCodeInterpreterToolCall(
        id="ci_1",
        type="code_interpreter_call",
        status="completed",
        code="print(3 * 19.99)",
        container_id="cntr_1",
        outputs=[{"type": "logs", "logs": "59.97"}],
    )
    mcp = McpCall(
        id="mcp_1",
        type="mcp_call",
        server_label="billing",
        name="invoice_total",
        arguments='{"order":"A-1001"}',
        output="59.97",
    )
    image = ImageGenerationCall(
        id="ig_1", type="image_generation_call", status="completed", result="iVBORw0KGgo="
    )
    total = ResponseOutputMessage(
        id="msg_2",
        type="message",
        role="assistant",
        status="completed",
        content=[
            ResponseOutputText(type="output_text", text="Three of them cost 59.97.", annotations=[])
        ],
    )
    third = response("resp_03", 1795428130.0, [code, mcp, image, total])
    refusal = ResponseOutputMessage(
        id="msg_3",
        type="message",
        role="assistant",
        status="completed",
        content=[
            ResponseOutputRefusal(type="refusal", refusal="I can't share other customers' orders.")
        ],
    )
    fourth = response("resp_04", 1795428150.0, [refusal])
    user = {"role": "user", "content": [{"type": "input_text", "text": "Where is order A-1001?"}]}
    result = {
        "type": "function_call_output",
        "call_id": "call_order_1",
        "output": '{"status":"shipped"}',
    }
    later = {"role": "user", "content": "What do three of them cost?"}
    other = {"role": "user", "content": "And order B-2002 of my neighbour?"}
    base = {"conversation_id": conv, "event_type": "response"}
    return [
        {
            **base,
            "event_id": "evt_sdk_resp_1",
            "occurred_at": "2026-11-23T10:01:40.000Z",
            "request": {"model": "gpt-5", "instructions": instructions, "input": [user]},
            "response": first,
            "latency_ms": 2100,
            "conversation": {"user_properties": {"id": "user_77"}, "tags": ["orders"]},
        },
        {
            **base,
            "event_id": "evt_sdk_resp_2",
            "occurred_at": "2026-11-23T10:01:46.000Z",
            "request": {
                "model": "gpt-5",
                "instructions": instructions,
                "previous_response_id": "resp_01",
                "input": [result],
            },
            "response": second,
        },
        {
            **base,
            "event_id": "evt_sdk_resp_3",
            "occurred_at": "2026-11-23T10:02:10.000Z",
            "history": "delta",
            "request": {
                "model": "gpt-5",
                "instructions": instructions,
                "conversation": "conv_68a1",
                "input": later["content"],
            },
            "response": third,
        },
        {
            **base,
            "event_id": "evt_sdk_resp_4",
            "occurred_at": "2026-11-23T10:02:30.000Z",
            "history": "full",
            "request": {
                "model": "gpt-5",
                "instructions": instructions,
                "input": [
                    user,
                    *first["output"],
                    result,
                    *second["output"],
                    later,
                    *third["output"],
                    other,
                ],
            },
            "response": fourth,
        },
    ]


def write(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))


def main() -> int:
    write(HERE / "sdk-chat-completions.ndjson", chat_events())
    write(HERE / "responses-api.ndjson", response_events())
    return 0


if __name__ == "__main__":
    sys.exit(main())
