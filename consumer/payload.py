"""The request body of `POST /conversations`: Inkeep's `CreateOpenAIConversation`.

Wire names are mixed on purpose, as the API has them: camelCase at the top and
on messages (`userProperties`, `createdAt`), but OpenAI's own `tool_calls` and
`image_url` inside a message. Unknown fields are refused on decode, so the
emulator can be as strict as the API's schema.
"""

from __future__ import annotations

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
