"""The input contract, version 1: what producers write to Kafka.

The structs decode straight from a record's bytes. Unknown fields are ignored
(forward compatibility); anything else that breaks the contract raises
`InvalidEvent`, and the record goes to the dead-letter topic.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from consumer.errors import InvalidEvent
from consumer.payload import FeedbackType

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ImageURL(msgspec.Struct, frozen=True):
    url: str
    detail: str | None = None


class ContentPart(msgspec.Struct, frozen=True):
    """One part of a message's content; kinds the API cannot take are kept as data."""

    type: str
    text: str | None = None
    image_url: ImageURL | None = None
    refusal: str | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None


class FunctionCall(msgspec.Struct, frozen=True):
    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    type: str = "function"
    function: FunctionCall | None = None
    custom: dict[str, Any] | None = None


class MessageAudio(msgspec.Struct, frozen=True):
    """An audio reply: its transcript is kept, its data is not."""

    id: str | None = None
    transcript: str | None = None


class Message(msgspec.Struct, frozen=True):
    """An OpenAI Chat Completions message, as producers send it."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None
    refusal: str | None = None
    audio: MessageAudio | None = None
    annotations: list[dict[str, Any]] | None = None
    reasoning_content: str | None = None
    reasoning: Any = None
    """OpenAI-compatible providers send a string or an object here."""
    content_filter_results: dict[str, Any] | None = None


class ItemMessage(Message, frozen=True):
    """A message made by `consumer.responses` from Responses API items; never decoded.

    `properties` go into the logged message's properties and take no part in its
    fingerprint, so a message matches its re-sent copy whatever they hold.
    """

    properties: dict[str, Any] | None = None


class Request(msgspec.Struct, frozen=True):
    messages: list[Message]
    model: str | None = None


class Choice(msgspec.Struct, frozen=True):
    index: int = 0
    message: Message | None = None
    finish_reason: str | None = None
    content_filter_results: dict[str, Any] | None = None


class Response(msgspec.Struct, frozen=True):
    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[Choice] = []
    usage: dict[str, Any] | None = None
    prompt_filter_results: list[dict[str, Any]] | None = None


class ConversationMeta(msgspec.Struct, frozen=True):
    """Metadata for the logged conversation; later events refine earlier ones."""

    external_id: str | None = None
    external_url: str | None = None
    project_id: str | None = None
    integration_id: str | None = None
    support_ticket_conversation_id: str | None = None
    properties: dict[str, Any] | None = None
    user_properties: dict[str, Any] | None = None
    tags: list[str] | None = None
    visibility: Literal["private", "public"] | None = None


class ChatCompletion(msgspec.Struct, frozen=True, tag_field="event_type", tag="chat.completion"):
    """One finished (or failed) chat completion call."""

    event_id: Id
    conversation_id: Id
    occurred_at: Timestamp
    request: Request
    history: Literal["full", "delta"] = "full"
    response: Response | None = None
    latency_ms: NonNegative | None = None
    conversation: ConversationMeta | None = None


class ConversationEnded(
    msgspec.Struct, frozen=True, tag_field="event_type", tag="conversation.ended"
):
    """The application says the conversation is complete: flush it now."""

    event_id: Id
    conversation_id: Id
    occurred_at: Timestamp
    conversation: ConversationMeta | None = None


class ResponsePart(msgspec.Struct, frozen=True):
    """One part of a Responses API message's content, or of a reasoning summary."""

    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    filename: str | None = None
    file_url: str | None = None
    detail: str | None = None
    annotations: list[dict[str, Any]] | None = None
    input_audio: dict[str, Any] | None = None


class ResponseItem(msgspec.Struct, frozen=True):
    """The fields of a Responses API item that the mapping reads; checks each item's shape.

    Items travel as objects so that built-in tool calls are kept whole.
    """

    type: str | None = None
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: str | list[ResponsePart] | None = None
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    input: str | None = None
    output: Any = None
    summary: list[ResponsePart] | None = None
    status: str | None = None


def _check_items(items: list[dict[str, Any]]) -> None:
    for index, item in enumerate(items):
        try:
            parsed = msgspec.convert(item, ResponseItem)
        except msgspec.ValidationError as exc:
            raise ValueError(f"item {index}: {exc}") from None
        kind = parsed.type or "message"
        if kind == "message" and parsed.role is None:
            raise ValueError(f"item {index}: a message item needs a `role`")
        if kind in ("function_call", "custom_tool_call") and (
            parsed.name is None or (parsed.call_id or parsed.id) is None
        ):
            raise ValueError(f"item {index}: a {kind} needs a `name` and a `call_id`")


_ITEMS = (
    "Responses API items: objects with a `type` (`message` when left out; a message needs"
    " a `role`); `function_call` and `custom_tool_call` need `name` and `call_id`;"
    " `*_output` items carry `call_id` and `output`; other types (built-in tool calls)"
    " are kept whole."
)


class ResponseRequest(msgspec.Struct, frozen=True):
    """The parameters of a Responses API create call."""

    input: str | Annotated[list[dict[str, Any]], msgspec.Meta(description=_ITEMS)] = []
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.input, str):
            _check_items(self.input)


class ResponseResult(msgspec.Struct, frozen=True):
    """The `Response` object a Responses API call returned."""

    id: str | None = None
    object: str | None = None
    created_at: Annotated[float, msgspec.Meta(ge=0, le=253402300799)] | None = None
    """Unix seconds, up to the end of year 9999 (what a timestamp can hold)."""
    model: str | None = None
    status: str | None = None
    output: Annotated[list[dict[str, Any]], msgspec.Meta(description=_ITEMS)] = []
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_items(self.output)


class ResponseEvent(msgspec.Struct, frozen=True, tag_field="event_type", tag="response"):
    """One Responses API call; `history` defaults to delta when the call chains to earlier state."""

    event_id: Id
    conversation_id: Id
    occurred_at: Timestamp
    request: ResponseRequest
    history: Literal["full", "delta"] | None = None
    response: ResponseResult | None = None
    latency_ms: NonNegative | None = None
    conversation: ConversationMeta | None = None


Label = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Details = Annotated[str, msgspec.Meta(max_length=4096)]
MAX_REASONS = 32


class Reason(msgspec.Struct, frozen=True):
    """Why a user rated a reply so: a short label, and what they wrote."""

    label: Label
    details: Details = ""


class Feedback(msgspec.Struct, frozen=True, tag_field="event_type", tag="feedback"):
    """A user's rating of one reply (contract v1.1); logged at `POST /feedback`.

    `completion_id` is the reply's `response.id` (a Responses API call's id counts
    too). A later rating by the same user of the same reply replaces the earlier one.
    """

    event_id: Id
    conversation_id: Id
    occurred_at: Timestamp
    completion_id: Id
    rating: FeedbackType
    reasons: Annotated[list[Reason], msgspec.Meta(max_length=MAX_REASONS)] | None = None
    properties: dict[str, Any] | None = None
    user_properties: dict[str, Any] | None = None


class Interaction(msgspec.Struct, frozen=True, tag_field="event_type", tag="interaction"):
    """Something a user did with a reply, or with the conversation when `completion_id` is
    absent (contract v1.1); logged at `POST /events` with `name` as its type."""

    event_id: Id
    conversation_id: Id
    occurred_at: Timestamp
    name: Label
    completion_id: Id | None = None
    properties: dict[str, Any] | None = None
    user_properties: dict[str, Any] | None = None


Event = ChatCompletion | ConversationEnded | ResponseEvent | Feedback | Interaction

_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def decode_event(data: bytes | bytearray | memoryview) -> Event:
    """Decodes one record value, or raises `InvalidEvent` naming what is wrong."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        reason = str(exc)
        kind = "unknown_event_type" if "`$.event_type`" in reason else "schema"
        raise InvalidEvent(kind, reason) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent("not_json", str(exc)) from None


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of the contract, generated from the structs above."""
    return msgspec.json.schema(Event)
