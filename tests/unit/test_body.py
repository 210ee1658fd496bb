"""The request body built incrementally is the body built from scratch, byte for byte."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import events, payload, state, upsert
from consumer.engine import EngineConfig, Flush, PartitionEngine, Trigger
from consumer.fit import fit


# The body as it was built before it was built incrementally: the oracle.
def reference(conv: state.ConversationState) -> payload.Conversation:
    """The request body for the whole known history.

    Tool and function results have no role in the API: they go into
    `properties.tool_results` of the assistant message that asked for them, else of
    the nearest preceding assistant message, else of the nearest preceding message,
    else of a system message that names them. Each choice depends only on earlier
    messages, so a message once logged is logged the same way in every later flush.
    """
    prefix = state.message_id_prefix(conv.id)
    out: list[payload.OutMessage] = []
    by_call: dict[str, payload.OutMessage] = {}
    by_function: dict[str, payload.OutMessage] = {}
    results: dict[int, list[Any]] = {}
    last_assistant: payload.OutMessage | None = None
    for ordinal, entry in enumerate(conv.entries):
        if entry.role in ("tool", "function"):
            if entry.role == "tool":
                target = by_call.get(entry.tool_call_id or "")
                result = {"tool_call_id": entry.tool_call_id, "content": builtin(entry.content)}
                label = f"[tool result: {entry.tool_call_id}]"
            else:
                target = by_function.get(entry.name or "")
                result = {"name": entry.name, "content": builtin(entry.content)}
                label = f"[function result: {entry.name}]"
            target = target or last_assistant or (out[-1] if out else None)
            if target is None:
                target = payload.OutMessage(
                    id=f"{prefix}{ordinal}",
                    role="system",
                    content=label,
                    created_at=entry.created_at,
                )
                out.append(target)
            bucket = results.get(id(target))
            if bucket is None:
                bucket = results[id(target)] = []
                target.properties = {**(target.properties or {}), "tool_results": bucket}
            bucket.append(result)
            continue
        role = "system" if entry.role == "developer" else entry.role
        message = payload.OutMessage(
            id=f"{prefix}{ordinal}",
            role=role,  # type: ignore[arg-type]
            content=entry.content,
            created_at=entry.created_at,
            name=entry.name,
            tool_calls=entry.tool_calls,
            properties=entry.properties,
        )
        out.append(message)
        if role == "assistant":
            last_assistant = message
            for call in entry.tool_calls or ():
                by_call[call.id] = message
            legacy = (entry.properties or {}).get("function_call")
            if legacy is not None:
                by_function[legacy["name"]] = message
    meta = conv.meta
    return payload.Conversation(
        id=conv.id,
        type="openai",
        messages=out,
        created_at=conv.created_at,
        updated_at=conv.updated_at,
        external_id=meta.external_id,
        external_url=meta.external_url,
        project_id=meta.project_id,
        integration_id=meta.integration_id,
        support_ticket_conversation_id=meta.support_ticket_conversation_id,
        properties=meta.properties,
        user_properties=meta.user_properties,
        tags=meta.tags,
        visibility=meta.visibility,  # type: ignore[arg-type]
    )


def builtin(content: state.Content) -> Any:
    return content if isinstance(content, str) else msgspec.to_builtins(content)


CALL_IDS = st.sampled_from(["call_a", "call_b", "call_c"])
NAMES = st.sampled_from(["lookup", "search", None])
TEXT = st.text(alphabet='ab "\\\u00e9\n<', max_size=8)
WHEN = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
CONTENT = st.one_of(
    TEXT,
    st.lists(
        st.one_of(
            st.builds(payload.ContentItem, type=st.just("text"), text=TEXT),
            st.builds(
                payload.ContentItem,
                type=st.just("image_url"),
                image_url=st.builds(payload.ImageURL, url=TEXT),
            ),
        ),
        max_size=2,
    ),
)
PROPERTIES = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["model", "tool_results", "usage", "x"]), TEXT, max_size=3),
)


@st.composite
def entries(draw: st.DrawFn) -> state.Entry:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]))
    properties = draw(PROPERTIES)
    calls = None
    if role == "assistant":
        ids = draw(st.lists(CALL_IDS, max_size=2, unique=True))
        calls = [
            payload.ToolCall(id=i, function=payload.ToolCallFunction(name="f", arguments="{}"))
            for i in ids
        ] or None
        legacy = draw(NAMES)
        if legacy is not None:
            properties = {**(properties or {}), "function_call": {"name": legacy, "arguments": ""}}
    return state.Entry(
        role=role,
        content=draw(CONTENT),
        created_at=WHEN + timedelta(seconds=draw(st.integers(0, 10**6))),
        name=draw(NAMES),
        tool_calls=calls,
        tool_call_id=draw(st.one_of(st.none(), CALL_IDS)) if role == "tool" else None,
        properties=properties,
    )


METAS = st.builds(
    state.Meta,
    external_id=st.one_of(st.none(), TEXT),
    properties=PROPERTIES,
    tags=st.one_of(st.none(), st.lists(TEXT, max_size=2)),
    visibility=st.sampled_from([None, "private", "public"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(entries(), max_size=5), METAS), min_size=1, max_size=6))
def test_the_body_grown_flush_by_flush_is_the_body_built_at_once(steps: Any):
    """Random histories (tool and function results folded back into earlier messages,
    results with no caller, developer messages), flushed after every few entries."""
    conv = state.ConversationState(id='c "1"', opened_at=0.0, last_event_at=0.0)
    body = upsert.Body(conv.id)
    handed_out: list[tuple[payload.Conversation, bytes]] = []
    for added, meta in steps:
        conv.entries += added
        conv.meta = meta
        conv.created_at = WHEN
        whole = upsert.to_payload(conv, body)
        encoded = body.encode(whole)
        expected = reference(conv)
        assert whole == expected
        assert encoded == payload.encode(expected)
        assert body.encode(whole, keep=False) == encoded
        handed_out.append((whole, encoded))
    for whole, encoded in handed_out:
        assert payload.encode(whole) == encoded, "a body handed out earlier changed"


def chat(cid: str, messages: list[dict[str, Any]], reply: dict[str, Any], n: int) -> events.Event:
    value = {
        "event_id": f"e{n}",
        "event_type": "chat.completion",
        "conversation_id": cid,
        "occurred_at": "2026-11-23T10:15:02Z",
        "history": "full",
        "request": {"model": "gpt-4o", "messages": messages},
        "response": {"choices": [{"index": 0, "message": reply}]},
    }
    return events.decode_event(json.dumps(value).encode())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 6000), st.booleans(), st.booleans()), min_size=1, max_size=8)
)
def test_engine_flushes_match_the_body_built_at_once_including_cut_ones(turns: Any):
    """Interim flushes of a growing conversation (its body kept between them), some over
    the body limit and cut: every body is what fit() makes of the body built at once."""
    limit = 12_000
    engine = PartitionEngine(EngineConfig(max_body_bytes=limit))
    history: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for n, (size, with_tool, flush) in enumerate(turns):
        history.append({"role": "user", "content": "q" * size})
        if with_tool:
            call = {
                "id": f"call_{n}",
                "type": "function",
                "function": {"name": "f", "arguments": "{}"},
            }
            history.append({"role": "assistant", "content": None, "tool_calls": [call]})
            history.append({"role": "tool", "tool_call_id": f"call_{n}", "content": "r" * size})
        reply = {"role": "assistant", "content": f"answer {n}"}
        engine.apply(chat("c", history, reply, n), n, float(n))
        history.append(reply)
        if not flush:
            continue
        expected = reference(engine._open["c"])
        (sent,) = engine.flush_open(Trigger.REVOKE, float(n))
        assert isinstance(sent, Flush)
        cut, body, truncated = fit(expected, limit)
        assert sent.body == body
        assert sent.truncated == truncated
        assert sent.conversation == cut
        assert sent.original == (payload.encode(expected) if truncated else None)
        engine.acknowledged("c", sent.seq, float(n))
