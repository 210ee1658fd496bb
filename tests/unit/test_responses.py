"""Responses API events (contract v1.2), built from the official `openai` SDK's own types.

Per input item kind and per output item kind: what each becomes in the logged
conversation. Then mixed completion/response histories under duplicates and a restart
(hypothesis), and the bodies against the official Inkeep SDK's schema.
"""

from __future__ import annotations

import io
import json
import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import (
    Response,
    ResponseCodeInterpreterToolCall,
    ResponseComputerToolCall,
    ResponseCustomToolCall,
    ResponseFileSearchToolCall,
    ResponseFunctionShellToolCall,
    ResponseFunctionToolCall,
    ResponseFunctionWebSearch,
    ResponseOutputMessage,
    ResponseOutputRefusal,
    ResponseOutputText,
    ResponseReasoningItem,
)
from openai.types.responses.response_output_item import (
    ImageGenerationCall,
    LocalShellCall,
    McpApprovalRequest,
    McpCall,
    McpListTools,
)
from openai.types.responses.response_reasoning_item import Summary

from consumer import events, render, responses
from consumer.engine import EngineConfig, Flush, PartitionEngine, Trigger
from consumer.errors import InvalidEvent
from consumer.testing import workload

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = ROOT / "tests" / "conformance"
EXAMPLES = ROOT / "docs" / "examples"


def result(output: list[Any], rid: str = "resp_1", **extra: Any) -> dict[str, Any]:
    return Response(
        id=rid,
        object="response",
        created_at=1795428902.0,
        model="gpt-5-2025-08-07",
        status=extra.pop("status", "completed"),
        output=output,
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        **extra,
    ).model_dump(mode="json")


def text(value: str, mid: str = "msg_1", **extra: Any) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=mid,
        type="message",
        role="assistant",
        status="completed",
        content=[
            ResponseOutputText(type="output_text", text=value, **{"annotations": [], **extra})
        ],
    )


def call(call_id: str = "call_1", name: str = "get_order") -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call", call_id=call_id, name=name, arguments='{"id":1}', id=f"fc_{call_id}"
    )


def event(request: dict[str, Any], response: dict[str, Any] | None = None, n: int = 1, **kw: Any):
    value = {
        "event_id": f"e{n}",
        "event_type": "response",
        "conversation_id": kw.pop("cid", "c"),
        "occurred_at": f"2026-11-23T10:00:{n:02d}Z",
        "request": {"model": "gpt-5", **request},
        **kw,
    }
    if response is not None:
        value["response"] = response
    return value


def bodies(*values: dict[str, Any]) -> list[dict[str, Any]]:
    out, errors = io.BytesIO(), io.StringIO()
    source = io.BytesIO(b"".join(json.dumps(v).encode() + b"\n" for v in values))
    assert render.render(source, out, errors) == 0, errors.getvalue()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def messages(*values: dict[str, Any]) -> list[dict[str, Any]]:
    (body,) = bodies(*values)
    return body["messages"]


# --- input -----------------------------------------------------------------------------


def test_a_string_input_with_instructions_is_a_system_and_a_user_message():
    logged = messages(event({"instructions": "Be brief.", "input": "Hi"}, result([text("Hello")])))
    assert [(m["role"], m["content"]) for m in logged] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
    ]
    assert logged[0]["properties"] == {"source": "instructions"}


def test_input_message_parts_become_chat_parts():
    item = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Look:"},
            {"type": "input_image", "image_url": "https://x/a.png", "detail": "low"},
            {"type": "input_image", "file_id": "file-img"},
            {"type": "input_file", "file_id": "file-1", "filename": "a.pdf", "file_data": "JVBE"},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        ],
    }
    (logged,) = messages(event({"input": [item]}))
    assert logged["content"] == [
        {"type": "text", "text": "Look:"},
        {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}},
        {"type": "text", "text": "[image: file-img]"},
        {"type": "text", "text": "[file: a.pdf]"},
        {"type": "text", "text": "[audio input: wav]"},
    ]
    assert "JVBE" not in json.dumps(logged)
    assert "AAAA" not in json.dumps(logged)


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant"])
def test_easy_input_messages_keep_their_role(role: str):
    (logged,) = messages(event({"input": [{"role": role, "content": "x"}]}))
    assert logged["role"] == ("system" if role == "developer" else role)
    assert logged["content"] == "x"


def test_an_assistant_input_message_with_output_text_is_its_text():
    item = text("Earlier answer").model_dump(mode="json")
    (logged,) = messages(event({"input": [item]}))
    assert (logged["role"], logged["content"]) == ("assistant", "Earlier answer")


# --- tool calls --------------------------------------------------------------------------


def test_function_calls_and_their_outputs_are_tool_calls_and_tool_results():
    first = event({"input": "Where is A-1?"}, result([call("call_a"), call("call_b", "track")]))
    outputs = [
        {"type": "function_call_output", "call_id": "call_a", "output": '{"status":"shipped"}'},
        {
            "type": "function_call_output",
            "call_id": "call_b",
            "output": [{"type": "input_text", "text": "Friday"}],
        },
    ]
    second = event(
        {"previous_response_id": "resp_1", "input": outputs},
        result([text("Shipped, arrives Friday.")], "resp_2"),
        2,
    )
    logged = messages(first, second)
    assert [m["role"] for m in logged] == ["user", "assistant", "assistant"]
    asking = logged[1]
    assert [c["id"] for c in asking["tool_calls"]] == ["call_a", "call_b"]
    assert asking["tool_calls"][0]["function"] == {"name": "get_order", "arguments": '{"id":1}'}
    assert asking["properties"]["tool_results"] == [
        {"tool_call_id": "call_a", "content": '{"status":"shipped"}'},
        {"tool_call_id": "call_b", "content": "Friday"},
    ]
    assert asking["properties"]["response_id"] == "resp_1"
    assert logged[2]["properties"]["response_id"] == "resp_2"


def test_custom_tool_calls_are_function_shaped_tool_calls():
    custom = ResponseCustomToolCall(
        type="custom_tool_call", call_id="call_c", name="sql", input="SELECT 1", id="ctc_1"
    )
    first = event({"input": "Count"}, result([custom]))
    output = {"type": "custom_tool_call_output", "call_id": "call_c", "output": "1"}
    logged = messages(first, event({"previous_response_id": "resp_1", "input": [output]}, n=2))
    (asking,) = [m for m in logged if m.get("tool_calls")]
    assert asking["tool_calls"] == [
        {"id": "call_c", "type": "function", "function": {"name": "sql", "arguments": "SELECT 1"}}
    ]
    assert asking["properties"]["tool_call_types"] == {"call_c": "custom"}
    assert asking["properties"]["tool_results"] == [{"tool_call_id": "call_c", "content": "1"}]


# --- output ------------------------------------------------------------------------------


def test_the_reply_carries_model_status_usage_response_id_and_its_time():
    usage = {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    }
    sent = result([text("Hello")])
    sent["usage"] = usage
    (reply,) = messages(event({"input": []}, sent, latency_ms=900))
    assert reply["properties"] == {
        "model": "gpt-5-2025-08-07",
        "usage": usage,
        "latency_ms": 900,
        "response_id": "resp_1",
        "status": "completed",
    }
    assert reply["createdAt"] == "2026-11-23T10:15:02Z"


def test_a_refusal_is_the_content_and_annotations_are_kept():
    refusal = ResponseOutputMessage(
        id="msg_r",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputRefusal(type="refusal", refusal="I can't.")],
    )
    cite = {"type": "url_citation", "start_index": 0, "end_index": 2, "title": "T", "url": "u"}
    cited = text("Yes", "msg_c", annotations=[cite])
    first = messages(event({"input": "a"}, result([refusal])))[-1]
    assert (first["content"], first["properties"]["refusal"]) == ("I can't.", "I can't.")
    second = messages(event({"input": "b"}, result([cited])))[-1]
    assert second["properties"]["annotations"] == [cite]


def test_reasoning_goes_to_the_next_assistant_message():
    thought = ResponseReasoningItem(
        id="rs_1",
        type="reasoning",
        summary=[
            Summary(type="summary_text", text="Look it up."),
            Summary(type="summary_text", text="Then answer."),
        ],
        encrypted_content="gAAAA-opaque",
    )
    logged = messages(event({"input": "q"}, result([thought, call()])))
    assert logged[-1]["properties"]["reasoning"] == "Look it up.\n\nThen answer."
    assert "gAAAA" not in json.dumps(logged)


BUILTINS = [
    ResponseFunctionWebSearch.model_validate(
        {
            "id": "ws_1",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": "q"},
        }
    ),
    ResponseFileSearchToolCall(
        id="fs_1", type="file_search_call", status="completed", queries=["refunds"]
    ),
    ResponseCodeInterpreterToolCall(
        id="ci_1",
        type="code_interpreter_call",
        status="completed",
        code="1+1",
        container_id="cntr",
        outputs=[{"type": "logs", "logs": "2"}],
    ),
    McpCall(id="mcp_1", type="mcp_call", server_label="crm", name="find", arguments="{}"),
    McpListTools(id="mcpl_1", type="mcp_list_tools", server_label="crm", tools=[]),
    McpApprovalRequest(
        id="mcpr_1", type="mcp_approval_request", server_label="crm", name="del", arguments="{}"
    ),
    ImageGenerationCall(id="ig_1", type="image_generation_call", status="completed", result="QUJD"),
    LocalShellCall.model_validate(
        {
            "id": "ls_1",
            "type": "local_shell_call",
            "call_id": "call_ls",
            "status": "completed",
            "action": {"type": "exec", "command": ["ls"], "env": {}},
        }
    ),
    ResponseFunctionShellToolCall.model_validate(
        {
            "id": "sh_1",
            "type": "shell_call",
            "call_id": "call_sh",
            "status": "completed",
            "action": {"commands": ["ls"], "timeout_ms": None, "max_output_length": None},
        }
    ),
    ResponseComputerToolCall.model_validate(
        {
            "id": "cu_1",
            "type": "computer_call",
            "call_id": "call_cu",
            "status": "completed",
            "pending_safety_checks": [],
            "action": {"type": "click", "button": "left", "x": 1, "y": 2},
        }
    ),
]


@pytest.mark.parametrize("item", BUILTINS, ids=lambda item: item.type)
def test_a_built_in_tool_call_is_kept_whole_named_by_type(item: Any):
    dumped = item.model_dump(mode="json")
    logged = messages(event({"input": "q"}, result([item, text("Done")])))
    reply = logged[-1]
    assert reply["content"] == "Done"
    kept = reply["properties"]["builtin_tools"][item.type]
    if item.type == "image_generation_call":
        assert kept == [{k: v for k, v in dumped.items() if k != "result"}]
    else:
        assert kept == [dumped]


def test_a_built_in_call_with_nothing_after_it_joins_the_message_before():
    logged = messages(event({"input": "q"}, result([text("Here"), BUILTINS[0]])))
    assert [m["content"] for m in logged] == ["q", "Here"]
    assert list(logged[-1]["properties"]["builtin_tools"]) == ["web_search_call"]


def test_an_output_with_several_messages_logs_each_and_the_reply_is_the_last():
    logged = messages(event({"input": "q"}, result([text("One", "m1"), text("Two", "m2")])))
    assert [m["content"] for m in logged] == ["q", "One", "Two"]
    assert "response_id" not in (logged[1].get("properties") or {})
    assert logged[2]["properties"]["response_id"] == "resp_1"


def test_a_failed_call_logs_its_input():
    logged = messages(event({"input": "q"}, result([], status="failed")))
    assert [m["content"] for m in logged] == ["q"]


# --- history -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "stated", "expected"),
    [
        ({}, None, "full"),
        ({"previous_response_id": "resp_0"}, None, "delta"),
        ({"conversation": "conv_1"}, None, "delta"),
        ({"conversation": {"id": "conv_1"}}, None, "delta"),
        ({"previous_response_id": "resp_0"}, "full", "full"),
        ({}, "delta", "delta"),
    ],
)
def test_history_is_delta_when_chained_unless_stated(request_fields, stated, expected):
    value = event({"input": "q", **request_fields})
    if stated is not None:
        value["history"] = stated
    decoded = events.decode_event(json.dumps(value).encode())
    assert isinstance(decoded, events.ResponseEvent)
    assert responses.history(decoded) == expected


def test_a_full_history_resent_with_earlier_outputs_logs_each_message_once():
    first_out = result([call("call_a")])
    second_out = result([BUILTINS[0], text("Shipped.")], "resp_2")
    user = {"role": "user", "content": [{"type": "input_text", "text": "Where?"}]}
    output = {"type": "function_call_output", "call_id": "call_a", "output": "shipped"}
    values = [
        event({"instructions": "S", "input": [user]}, first_out),
        event({"instructions": "S", "input": [user, *first_out["output"], output]}, second_out, 2),
        event(
            {
                "instructions": "S",
                "input": [
                    user,
                    *first_out["output"],
                    output,
                    *second_out["output"],
                    {"role": "user", "content": "Thanks"},
                ],
            },
            result([text("Welcome.")], "resp_3"),
            3,
        ),
    ]
    logged = messages(*values)
    assert [(m["role"], m["content"]) for m in logged] == [
        ("system", "S"),
        ("user", "Where?"),
        ("assistant", ""),
        ("assistant", "Shipped."),
        ("user", "Thanks"),
        ("assistant", "Welcome."),
    ]


def test_instructions_repeated_in_delta_calls_are_logged_once_and_again_when_changed():
    values = [
        event({"instructions": "A", "input": "1"}, result([text("r1")]), 1),
        event({"instructions": "A", "previous_response_id": "r", "input": "2"}, None, 2),
        event({"instructions": "B", "previous_response_id": "r", "input": "3"}, None, 3),
    ]
    logged = messages(*values)
    assert [m["content"] for m in logged] == ["A", "1", "r1", "2", "B", "3"]


def test_a_chat_system_prompt_counts_as_the_instructions():
    chat = {
        "event_id": "e0",
        "event_type": "chat.completion",
        "conversation_id": "c",
        "occurred_at": "2026-11-23T10:00:00Z",
        "request": {
            "messages": [{"role": "system", "content": "A"}, {"role": "user", "content": "1"}]
        },
    }
    later = event({"instructions": "A", "previous_response_id": "r", "input": "2"}, None, 2)
    assert [m["content"] for m in messages(chat, later)] == ["A", "1", "2"]


# --- invalid input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_fields",
    [
        {"input": [{"type": "function_call", "arguments": "{}", "call_id": "c"}]},
        {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        {"input": [{"type": "message", "content": "no role"}]},
        {"input": [{"role": "wizard", "content": "x"}]},
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
        {"input": [{"role": "user", "content": [{"text": "no type"}]}]},
        {"input": 5},
        {"input": ["not an object"]},
        {"instructions": ["x"]},
    ],
)
def test_malformed_items_are_invalid_input(request_fields: dict[str, Any]):
    value = event(request_fields)
    with pytest.raises(InvalidEvent) as error:
        events.decode_event(json.dumps(value).encode())
    assert error.value.kind == "schema"


@pytest.mark.parametrize("created_at", [-1, 1e400, 253402300800])
def test_a_response_time_no_timestamp_can_hold_is_invalid_input(created_at: float):
    value = json.dumps(event({"input": "q"}, {"id": "r", "output": []})).encode()
    value = value.replace(
        b'"output": []', b'"output": [], "created_at": ' + str(created_at).encode()
    )
    with pytest.raises(InvalidEvent):
        events.decode_event(value)


def test_malformed_output_items_are_invalid_input():
    value = event({"input": "q"}, {"id": "r", "output": [{"type": "custom_tool_call"}]})
    with pytest.raises(InvalidEvent):
        events.decode_event(json.dumps(value).encode())


# --- mixed histories, duplicates, restarts -----------------------------------------------

SYSTEM = "Answer briefly."


@st.composite
def mixed(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Event values of one conversation mixing both kinds, and the messages it should log."""
    history: list[tuple[str, ...]] = [("system", SYSTEM)]
    values: list[dict[str, Any]] = []
    pending: str | None = None
    for step in range(draw(st.integers(1, 6))):
        new: list[tuple[str, ...]] = []
        if pending is not None:
            new.append(("result", pending, f"out {step}"))
        new.append(("user", f"q{step}"))
        pending = None
        if draw(st.integers(0, 2)) == 0:
            pending = f"call_{step}"
            reply: tuple[str, ...] = ("call", pending)
        else:
            reply = ("assistant", f"a{step}")
        kind = draw(st.sampled_from(("chat.completion", "response")))
        mode = draw(st.sampled_from(("full", "delta")))
        sent = new if mode == "delta" else history[1:] + new
        n = len(values)
        if kind == "chat.completion":
            msgs = [_chat(m) for m in sent]
            if mode == "full" or step == 0:
                msgs.insert(0, {"role": "system", "content": SYSTEM})
            value = {
                "event_id": f"e{n}",
                "event_type": kind,
                "conversation_id": "c",
                "occurred_at": f"2026-11-23T10:{n:02d}:00Z",
                "history": mode,
                "request": {"model": "m", "messages": msgs},
                "response": {
                    "id": f"chatcmpl-{n}",
                    "created": 1795428000 + n,
                    "choices": [{"message": _chat(reply)}],
                },
            }
        else:
            out = ([_thought(n)] if draw(st.booleans()) else []) + [_item(reply, n)]
            request: dict[str, Any] = {"instructions": SYSTEM, "input": [_item(m, n) for m in sent]}
            if mode == "delta":
                request["previous_response_id"] = f"resp_{n - 1}"
            value = event(request, result(out, f"resp_{n}"), n)
            value["occurred_at"] = f"2026-11-23T10:{n:02d}:00Z"
        values.append(value)
        history += [*new, reply]
    expected = [(m[0], m[-1]) for m in history if m[0] != "result"]
    return values, [("assistant", "") if r == "call" else (r, c) for r, c in expected]


def _chat(message: tuple[str, ...]) -> dict[str, Any]:
    role = message[0]
    if role == "call":
        function = {"name": "lookup", "arguments": "{}"}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": message[1], "type": "function", "function": function}],
        }
    if role == "result":
        return {"role": "tool", "tool_call_id": message[1], "content": message[2]}
    return {"role": role, "content": message[1]}


def _item(message: tuple[str, ...], n: int) -> dict[str, Any]:
    role = message[0]
    if role == "call":
        return call(message[1], "lookup").model_copy(update={"arguments": "{}"}).model_dump()
    if role == "result":
        return {"type": "function_call_output", "call_id": message[1], "output": message[2]}
    if role == "assistant":
        return text(message[1], f"msg_{n}").model_dump(mode="json")
    return {"role": role, "content": [{"type": "input_text", "text": message[1]}]}


def _thought(n: int) -> dict[str, Any]:
    summary = [Summary(type="summary_text", text=f"thinking {n}")]
    return ResponseReasoningItem(id=f"rs_{n}", type="reasoning", summary=summary).model_dump()


def _settle(engine: PartitionEngine, decisions: list[Any], now: float) -> bytes | None:
    body = None
    while decisions:
        decision = decisions.pop(0)
        assert isinstance(decision, Flush)
        body = decision.body
        decisions += engine.acknowledged(decision.conversation_id, decision.seq, now)
    return body


def _run(engine: PartitionEngine, records: list[bytes], offsets: range) -> bytes | None:
    body = None
    for offset in offsets:
        event = events.decode_event(records[offset])
        body = _settle(engine, engine.apply(event, offset, float(offset)), float(offset)) or body
    return body


def _final(engine: PartitionEngine) -> bytes:
    body = _settle(engine, engine.flush_open(Trigger.SHUTDOWN, 1e6), 1e6)
    assert body is not None
    return body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed(), st.data())
def test_mixed_histories_with_duplicates_and_a_restart_end_with_the_same_body(script, data):
    values, expected = script
    records = [json.dumps(v).encode() for v in values]
    for _ in range(data.draw(st.integers(0, 3), label="duplicates")):
        original = data.draw(st.integers(0, len(records) - 1), label="original")
        place = data.draw(st.integers(original + 1, len(records)), label="place")
        records.insert(place, records[original])
    straight = PartitionEngine(EngineConfig())
    _run(straight, records, range(len(records)))
    reference = _final(straight)
    logged = [(m["role"], m["content"]) for m in json.loads(reference)["messages"]]
    logged = [(r, c if isinstance(c, str) else c[0]["text"]) for r, c in logged]
    assert logged == expected

    split = data.draw(st.integers(0, len(records)), label="crash after")
    before = PartitionEngine(EngineConfig())
    _run(before, records, range(split))
    point = before.checkpoint()
    after = PartitionEngine(EngineConfig())
    for key, value in point.records:
        after.restore(key, value)
    _settle(after, after.restored(float(split)), float(split))
    replay_from = data.draw(st.integers(0, split), label="replay from")
    _run(after, records, range(replay_from, len(records)))
    assert _final(after) == reference


# --- the official SDK's schema, and the checked-in example ------------------------------


def _sdk_check(bodies_ndjson: bytes, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    node = shutil.which("node")
    if node is None or not (CONFORMANCE / "node_modules" / "@inkeep").is_dir():
        pytest.skip("node or tests/conformance/node_modules (npm ci) is missing")
    path = tmp_path / "bodies.ndjson"
    path.write_bytes(bodies_ndjson)
    with path.open("rb") as stdin:
        return subprocess.run(
            [node, "check.mjs"], cwd=CONFORMANCE, stdin=stdin, capture_output=True, check=False
        )


def test_every_body_made_here_passes_the_official_sdk_schema(tmp_path: Path):
    values = [
        event({"instructions": "S", "input": "q"}, result([*BUILTINS, text("Done")]), 1, cid="a"),
        event({"input": "q"}, result([call(), BUILTINS[0]]), 1, cid="b"),
        event(
            {"input": [{"type": "function_call_output", "call_id": "call_1", "output": "x"}]},
            result([text("ok")], "resp_2"),
            2,
            cid="b",
        ),
        event(
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_image", "image_url": "https://x/a.png"},
                            {"type": "input_file", "filename": "a.pdf"},
                        ],
                    }
                ]
            },
            result([text("seen")]),
            1,
            cid="d",
        ),
    ]
    made = bodies(*values)
    assert len(made) == 3
    checked = _sdk_check(b"".join(json.dumps(b).encode() + b"\n" for b in made), tmp_path)
    assert checked.returncode == 0, checked.stdout.decode()
    assert checked.stdout.decode().strip().splitlines()[-1] == "3 passed, 0 failed"


def test_the_checked_in_examples_are_what_the_sdk_script_writes(tmp_path: Path, monkeypatch):
    script = runpy.run_path(str(EXAMPLES / "make_sdk_examples.py"))
    monkeypatch.setitem(script["main"].__globals__, "HERE", tmp_path)
    assert script["main"]() == 0
    for name in ("sdk-chat-completions.ndjson", "responses-api.ndjson"):
        assert (tmp_path / name).read_text() == (EXAMPLES / name).read_text(), name


# --- the demo producer -------------------------------------------------------------------


def test_the_workload_sends_the_same_conversations_through_either_api():
    """With every conversation as Responses API events, each logs what its chat form logs."""
    chat = list(workload.generate(60, seed=11))
    both = list(workload.generate(60, seed=11, shape=workload.Shape(responses_share=1.0)))
    kinds = {type(events.decode_event(value)) for _, value in both}
    assert kinds == {events.ResponseEvent, events.ConversationEnded}

    def logged(records: list[tuple[bytes, bytes]]) -> dict[str, list[Any]]:
        out, errors = io.BytesIO(), io.StringIO()
        source = io.BytesIO(b"".join(value + b"\n" for _, value in records))
        assert render.render(source, out, errors) == 0, errors.getvalue()
        found = {}
        for line in out.getvalue().splitlines():
            body = json.loads(line)
            found[body["id"]] = [
                (
                    m["role"],
                    m["content"],
                    m.get("tool_calls"),
                    len((m.get("properties") or {}).get("tool_results", [])),
                )
                for m in body["messages"]
            ]
        return found

    assert logged(both) == logged(chat)
    mixed = list(workload.generate(200, seed=5, shape=workload.Shape(responses_share=0.3)))
    share = sum(1 for _, v in mixed if b'"event_type":"response"' in v) / len(mixed)
    assert 0.1 < share < 0.5


def test_a_response_over_the_body_limit_is_cut_to_fit_and_the_whole_kept_for_the_dead_letters():
    huge = {"type": "code_interpreter_call", "id": "ci", "outputs": [{"logs": "x" * 2_500_000}]}
    value = event({"input": "q"}, result([text("Done")]))
    value["response"]["output"].insert(0, huge)
    engine = PartitionEngine(EngineConfig())
    engine.apply(events.decode_event(json.dumps(value).encode()), 0, 0.0)
    (flush,) = engine.flush_open(Trigger.SHUTDOWN, 0.0)
    assert isinstance(flush, Flush)
    assert len(flush.body) <= 2_000_000
    assert flush.truncated
    assert flush.original is not None
    assert b"x" * 2_500_000 in flush.original
    reply = json.loads(flush.body)["messages"][-1]
    (kept,) = reply["properties"]["builtin_tools"]["code_interpreter_call"]
    assert "truncated" in kept["outputs"][0]["logs"]
