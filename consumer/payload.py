"""The request body of `POST /conversations`: Inkeep's `CreateOpenAIConversation`.

Wire names are mixed on purpose, as the API has them: camelCase at the top and
on messages (`userProperties`, `createdAt`), but OpenAI's own `tool_calls` and
`image_url` inside a message. Unknown fields are refused on decode, so the
emulator can be as strict as the API's schema.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

import msgspec

MAX_BODY_BYTES = 2_000_000
"""The API's body limit, as the official checker counts it."""


class ImageURL(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ContentItem(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class ToolCallFunction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    function: ToolCallFunction
    type: Literal["function"] = "function"


class OutMessage(msgspec.Struct, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """One logged message. `id` is stable across flushes, replays and restarts."""

    id: str
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentItem]
    created_at: datetime | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = msgspec.field(default=None, name="tool_calls")
    properties: dict[str, Any] | None = None
    # Known to the API; the worker does not fill them, the emulator accepts them.
    updated_at: datetime | None = None
    external_id: str | None = None
    external_url: str | None = None
    links: list[dict[str, Any]] | None = None
    user_properties: dict[str, Any] | None = None


class Conversation(msgspec.Struct, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """`CreateOpenAIConversation`: the whole conversation, replacing what the API has."""

    id: str
    type: Literal["openai"]
    messages: list[OutMessage]
    created_at: datetime | None = None
    updated_at: datetime | None = None
    external_id: str | None = None
    external_url: str | None = None
    project_id: str | None = None
    integration_id: str | None = None
    support_ticket_conversation_id: str | None = None
    properties: dict[str, Any] | None = None
    user_properties: dict[str, Any] | None = None
    tags: list[str] | None = None
    visibility: Literal["private", "public"] | None = None


_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Conversation] = msgspec.json.Decoder(Conversation)


def encode(conversation: Conversation) -> bytes:
    return _encoder.encode(conversation)


def decode(body: bytes) -> Conversation:
    """Decodes a body strictly (raises `msgspec.ValidationError`/`DecodeError`)."""
    return _decoder.decode(body)


class FeedbackType(enum.StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class FeedbackReason(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    label: str
    details: str


class LogFeedbackRequestBody(
    msgspec.Struct, omit_defaults=True, rename="camel", forbid_unknown_fields=True
):
    """The body of `POST /feedback`: a rating of one logged message.

    The API assigns `id` when it is absent; a stable one makes a re-sent or
    changed rating replace the earlier one instead of adding another.
    """

    type: FeedbackType
    message_id: str
    id: str | msgspec.UnsetType = msgspec.UNSET
    created_at: datetime | None = None
    reasons: list[FeedbackReason] | None = None
    properties: dict[str, Any] | None = None
    user_properties: dict[str, Any] | None = None


class EventEntity(enum.StrEnum):
    """What an event is about; each names the one id field the event must carry."""

    MESSAGE = "message"
    CONVERSATION = "conversation"
    SEARCH = "search"


_EVENT_SUBJECT = {
    EventEntity.MESSAGE: "message_id",
    EventEntity.CONVERSATION: "conversation_id",
    EventEntity.SEARCH: "search_query",
}


class InsertEvent(msgspec.Struct, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """The body of `POST /events`: an interaction (`type`, say `message:copied`).

    The API's schema is a union on `entityType`; here one struct holds it, and
    decoding refuses a body whose id field does not match its `entityType`.
    """

    type: str
    entity_type: EventEntity
    message_id: str | msgspec.UnsetType = msgspec.UNSET
    conversation_id: str | msgspec.UnsetType = msgspec.UNSET
    search_query: str | msgspec.UnsetType = msgspec.UNSET
    id: str | msgspec.UnsetType = msgspec.UNSET
    created_at: datetime | None = None
    project_id: str | None = None
    integration_id: str | None = None
    properties: dict[str, Any] | None = None
    user_properties: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        wanted = _EVENT_SUBJECT[self.entity_type]
        for entity, name in _EVENT_SUBJECT.items():
            present = getattr(self, name) is not msgspec.UNSET
            if name == wanted and not present:
                raise ValueError(f"`{_camel(name)}` is required for entityType {entity.value}")
            if name != wanted and present:
                raise ValueError(
                    f"`{_camel(name)}` is not part of an event with entityType "
                    f"{self.entity_type.value}"
                )

    @property
    def subject(self) -> str:
        """The id (or search query) the event is about."""
        value = getattr(self, _EVENT_SUBJECT[self.entity_type])
        assert isinstance(value, str)
        return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
