"""The Responses API (contract v1.2): a `response` event becomes the chat completion it amounts to.

The engine applies one shape of event. A Responses API call is turned into the
messages its input adds and the reply its output makes, so alignment of `full`
histories, duplicates, stable message ids, the last guard and the fit hold for
it unchanged, and a conversation may mix both kinds of event.

Items map onto messages by a rule that depends only on the items and their
order, so the output of one call, re-sent as input of the next (a `full`
history), makes the same messages and aligns with them: assistant-side items
(output messages, function and custom tool calls, reasoning, built-in tool
calls) gather into one assistant message; a user, system or developer message,
or a `*_output` item (a tool result), ends it. A reasoning item or a built-in
call after text or tool calls starts the next assistant message, since it
belongs to what follows; one with nothing after it joins the message before it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from consumer import events, merge, state

INSTRUCTIONS = "instructions"
"""The `source` property of a system message made from a call's `instructions`."""

_TEXT = frozenset(("input_text", "output_text", "text", "summary_text", "reasoning_text"))
_CALLS = frozenset(("function_call", "custom_tool_call"))
_DATA = {"image_generation_call": "result"}
"""Built-in calls' fields that hold data rather than meaning (base64 images): not kept."""
_json = msgspec.json.Encoder(order="sorted")


def apply(conv: state.ConversationState, event: events.ResponseEvent, occurred: datetime) -> None:
    """Applies a Responses API call as the chat completion it amounts to."""
    merge.apply_completion(conv, to_completion(event, last_instructions(conv)), occurred)


def history(event: events.ResponseEvent) -> Literal["full", "delta"]:
    """As stated; else `delta` when the call chains to state the API keeps, `full` otherwise."""
    if event.history is not None:
        return event.history
    request = event.request
    chained = request.previous_response_id is not None or request.conversation is not None
    return "delta" if chained else "full"


def last_instructions(conv: state.ConversationState) -> str | None:
    """The latest system prompt logged (instructions, or a chat completion's system message)."""
    for entry in reversed(conv.entries):
        if entry.role in ("system", "developer"):
            return entry.content if isinstance(entry.content, str) else None
    return None


def to_completion(
    event: events.ResponseEvent, known_instructions: str | None = None
) -> events.ChatCompletion:
    """The chat completion event a Responses API call amounts to.

    `instructions` become a system message in front of the input; a `delta` call
    that repeats the instructions already logged does not add them again. The
    last assistant message of the output is the reply; any before it are
    appended with the input.
    """
    request = event.request
    mode = history(event)
    messages: list[events.Message] = []
    given = request.instructions
    if given is not None and (mode == "full" or given != known_instructions):
        messages.append(
            events.ItemMessage(role="system", content=given, properties={"source": INSTRUCTIONS})
        )
    if isinstance(request.input, str):
        messages.append(events.Message(role="user", content=request.input))
    else:
        messages += to_messages(request.input)
    result = event.response
    response: events.Response | None = None
    if result is not None:
        choices: list[events.Choice] = []
        output = to_messages(result.output)
        if output:
            messages += output[:-1]
            last = output[-1]
            extra = {**(last.properties or {}), **_reply_properties(result)}
            choices.append(events.Choice(message=msgspec.structs.replace(last, properties=extra)))
        response = events.Response(
            object="response",
            created=int(result.created_at) if result.created_at is not None else None,
            model=result.model,
            choices=choices,
            usage=result.usage,
        )
    return events.ChatCompletion(
        event_id=event.event_id,
        conversation_id=event.conversation_id,
        occurred_at=event.occurred_at,
        request=events.Request(messages=messages, model=request.model),
        history=mode,
        response=response,
        latency_ms=event.latency_ms,
        conversation=event.conversation,
    )


def _reply_properties(result: events.ResponseResult) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if result.id is not None:
        found["response_id"] = result.id
    if result.status is not None:
        found["status"] = result.status
    if result.error is not None:
        found["error"] = result.error
    if result.incomplete_details is not None:
        found["incomplete_details"] = result.incomplete_details
    return found


def to_messages(items: list[dict[str, Any]]) -> list[events.ItemMessage]:
    """The messages a list of Responses API items makes, by the rule in the module's docstring."""
    builder = _Builder()
    for raw in items:
        item = msgspec.convert(raw, events.ResponseItem)
        kind = item.type or "message"
        if kind == "message" and item.role != "assistant":
            builder.close()
            builder.boundary(_input_message(item))
        elif kind == "message":
            builder.turn(fresh=True).add_message(item)
        elif kind in _CALLS:
            builder.turn(fresh=False).add_call(kind, item)
        elif kind.endswith("_output"):
            builder.close()
            builder.boundary(_tool_result(item))
        elif kind == "reasoning":
            builder.turn(fresh=True).add_reasoning(item)
        else:
            builder.turn(fresh=True).add_builtin(kind, raw)
    builder.close()
    return builder.out


class _Turn:
    """An assistant message being gathered from consecutive assistant-side items."""

    def __init__(self) -> None:
        self.parts: list[events.ContentPart] = []
        self.refusals: list[str] = []
        self.annotations: list[dict[str, Any]] = []
        self.calls: list[events.ToolCall] = []
        self.reasoning: list[str] = []
        self.builtins: dict[str, list[Any]] = {}

    @property
    def has_body(self) -> bool:
        return bool(self.parts or self.refusals or self.calls)

    def add_message(self, item: events.ResponseItem) -> None:
        content, refusals, annotations = _content(item.content)
        self.parts += content
        self.refusals += refusals
        self.annotations += annotations

    def add_call(self, kind: str, item: events.ResponseItem) -> None:
        call_id = item.call_id or item.id or ""
        if kind == "function_call":
            function = events.FunctionCall(name=item.name or "", arguments=item.arguments or "")
            self.calls.append(events.ToolCall(id=call_id, function=function))
        else:
            custom = {"name": item.name, "input": item.input or ""}
            self.calls.append(events.ToolCall(id=call_id, type="custom", custom=custom))

    def add_reasoning(self, item: events.ResponseItem) -> None:
        parts = item.summary or [
            part for part in item.content or () if isinstance(part, events.ResponsePart)
        ]
        text = "\n\n".join(part.text for part in parts if part.text)
        if text:
            self.reasoning.append(text)

    def add_builtin(self, kind: str, raw: dict[str, Any]) -> None:
        dropped = _DATA.get(kind)
        kept = {k: v for k, v in raw.items() if k != dropped}
        self.builtins.setdefault(kind, []).append(kept)

    def properties(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.reasoning:
            found["reasoning"] = "\n\n".join(self.reasoning)
        if self.builtins:
            found["builtin_tools"] = self.builtins
        return found

    def message(self) -> events.ItemMessage:
        return events.ItemMessage(
            role="assistant",
            content=_join(self.parts),
            tool_calls=self.calls or None,
            refusal="\n".join(self.refusals) if self.refusals else None,
            annotations=self.annotations or None,
            properties=self.properties() or None,
        )


class _Builder:
    def __init__(self) -> None:
        self.out: list[events.ItemMessage] = []
        self.current: _Turn | None = None
        self.adjacent = False
        """Whether the last message out is an assistant message with no boundary after it."""

    def turn(self, *, fresh: bool) -> _Turn:
        """The turn to add to; `fresh` items start a new one after text or tool calls."""
        if self.current is not None and fresh and self.current.has_body:
            self.close()
        if self.current is None:
            self.current = _Turn()
        return self.current

    def close(self) -> None:
        turn, self.current = self.current, None
        if turn is None:
            return
        if not turn.has_body and self.adjacent:
            previous = self.out[-1]
            merged = _merge(previous.properties or {}, turn.properties())
            self.out[-1] = msgspec.structs.replace(previous, properties=merged)
        else:
            self.out.append(turn.message())
        self.adjacent = True

    def boundary(self, message: events.ItemMessage) -> None:
        self.out.append(message)
        self.adjacent = False


def _merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    merged = dict(into)
    if "reasoning" in more:
        merged["reasoning"] = "\n\n".join(filter(None, (into.get("reasoning"), more["reasoning"])))
    builtins = {kind: list(calls) for kind, calls in into.get("builtin_tools", {}).items()}
    for kind, calls in more.get("builtin_tools", {}).items():
        builtins.setdefault(kind, []).extend(calls)
    if builtins:
        merged["builtin_tools"] = builtins
    return merged


def _input_message(item: events.ResponseItem) -> events.ItemMessage:
    content, refusals, annotations = _content(item.content)
    return events.ItemMessage(
        role=item.role or "user",
        content=_join(content),
        refusal="\n".join(refusals) if refusals else None,
        annotations=annotations or None,
    )


def _tool_result(item: events.ResponseItem) -> events.ItemMessage:
    output = item.output
    if not isinstance(output, str):
        texts = (
            [part.get("text") for part in output if isinstance(part, dict)]
            if isinstance(output, list)
            else []
        )
        if texts and all(isinstance(text, str) for text in texts) and len(texts) == len(output):
            output = "".join(texts)  # type: ignore[arg-type]
        else:
            output = _json.encode(output).decode()
    return events.ItemMessage(role="tool", content=output, tool_call_id=item.call_id or item.id)


def _content(
    content: str | list[events.ResponsePart] | None,
) -> tuple[list[events.ContentPart], list[str], list[dict[str, Any]]]:
    """A message item's content as chat parts, its refusals, and its annotations."""
    if content is None:
        return [], [], []
    if isinstance(content, str):
        return [events.ContentPart(type="text", text=content)], [], []
    parts: list[events.ContentPart] = []
    refusals: list[str] = []
    annotations: list[dict[str, Any]] = []
    for part in content:
        kind = part.type
        if kind in _TEXT:
            parts.append(events.ContentPart(type="text", text=part.text or ""))
            annotations += part.annotations or ()
        elif kind == "refusal":
            refusals.append(part.refusal or part.text or "")
        elif kind == "input_image" and part.image_url:
            image = events.ImageURL(url=part.image_url, detail=part.detail)
            parts.append(events.ContentPart(type="image_url", image_url=image))
        elif kind == "input_image":
            label = f"[image: {part.file_id}]" if part.file_id else "[image]"
            parts.append(events.ContentPart(type="text", text=label))
        elif kind == "input_file":
            file = {"filename": part.filename or part.file_url, "file_id": part.file_id}
            kept = {k: v for k, v in file.items() if v is not None}
            parts.append(events.ContentPart(type="file", file=kept))
        elif kind == "input_audio":
            audio = {"format": (part.input_audio or {}).get("format")}
            parts.append(events.ContentPart(type="input_audio", input_audio=audio))
        else:
            parts.append(events.ContentPart(type=kind, text=part.text))
    return parts, refusals, annotations


def _join(parts: list[events.ContentPart]) -> str | list[events.ContentPart] | None:
    """One text part is its text, as a chat message would carry it; none is no content."""
    if not parts:
        return None
    if len(parts) == 1 and parts[0].type == "text":
        return parts[0].text or ""
    return parts
