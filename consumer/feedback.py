"""Feedback and interaction events (contract v1.1): the request each becomes.

Pure. Inkeep takes a rating at `POST /feedback` and an interaction at `POST /events`,
both naming a message by its id as logged, which only this worker knows (ids come from
history positions: `state.message_id_prefix`). `prepare` resolves the event's
`completion_id` to that id and builds the body, with the message count the API must
hold before the body may go (`need`); the engine keeps the result until then.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

import msgspec

from consumer import events, payload, state, upsert


class NoticeKind(enum.StrEnum):
    FEEDBACK = "feedback"
    EVENT = "event"


PATHS = {NoticeKind.FEEDBACK: "/feedback", NoticeKind.EVENT: "/events"}


class Unresolved(enum.StrEnum):
    """Why an event cannot become a request; each is final (see docs/design.md)."""

    UNKNOWN_CONVERSATION = "unknown_conversation"
    UNKNOWN_COMPLETION = "unknown_completion"
    HISTORY_EXPIRED = "history_expired"
    MESSAGE_NOT_LOGGED = "message_not_logged"


_NAMESPACE = uuid.UUID("5b0f3c52-7d4e-4f43-9a51-1f6f0c7e2a90")
"""Fixed forever: it makes the ids below the same on every worker and every release."""

_encoder = msgspec.json.Encoder()

Note = events.Feedback | events.Interaction


def user_of(user_properties: dict[str, Any] | None) -> str:
    """Who rated, as far as the event says: `id`, else `userId`, else anyone."""
    props = user_properties or {}
    for field in ("id", "userId", "user_id"):
        value = props.get(field)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return ""


def feedback_id(conversation_id: str, completion_id: str, user: str) -> str:
    """Stable for (conversation, completion, user): a changed rating replaces the earlier one."""
    return str(uuid.uuid5(_NAMESPACE, f"feedback\0{conversation_id}\0{completion_id}\0{user}"))


def event_id(conversation_id: str, source_event_id: str) -> str:
    """Stable for the producer's event: a re-sent event replaces itself."""
    return str(uuid.uuid5(_NAMESPACE, f"event\0{conversation_id}\0{source_event_id}"))


def resolve(conv: state.ConversationState, completion_id: str) -> tuple[str, int] | None:
    """The logged id of the reply `completion_id` and the message count that includes it.

    Replies keep `properties.completion_id` (chat completions) or `response_id`
    (Responses API). The first match wins, so the answer never changes as the
    history grows.
    """
    for position, message in enumerate(upsert.to_payload(conv).messages):
        props = message.properties
        if (
            message.role == "assistant"
            and props is not None
            and completion_id in (props.get("completion_id"), props.get("response_id"))
        ):
            return message.id, position + 1
    return None


def prepare(conv: state.ConversationState, event: Note, offset: int) -> state.Notice | Unresolved:
    """The request `event` becomes, or why it cannot become one."""
    if conv.partial:
        return Unresolved.HISTORY_EXPIRED
    created = event.occurred_at
    if event.completion_id is None:
        assert isinstance(event, events.Interaction)
        body = payload.InsertEvent(
            type=event.name,
            entity_type=payload.EventEntity.CONVERSATION,
            conversation_id=conv.id,
            id=event_id(conv.id, event.event_id),
            created_at=created,
            properties=event.properties,
            user_properties=event.user_properties,
        )
        return state.Notice(offset, NoticeKind.EVENT, _encoder.encode(body), 1)
    found = resolve(conv, event.completion_id)
    if found is None:
        return Unresolved.UNKNOWN_COMPLETION
    message_id, need = found
    if isinstance(event, events.Interaction):
        body = payload.InsertEvent(
            type=event.name,
            entity_type=payload.EventEntity.MESSAGE,
            message_id=message_id,
            id=event_id(conv.id, event.event_id),
            created_at=created,
            properties=event.properties,
            user_properties=event.user_properties,
        )
        return state.Notice(offset, NoticeKind.EVENT, _encoder.encode(body), need)
    rating = payload.LogFeedbackRequestBody(
        type=event.rating,
        message_id=message_id,
        id=feedback_id(conv.id, event.completion_id, user_of(event.user_properties)),
        created_at=created,
        reasons=[payload.FeedbackReason(r.label, r.details) for r in event.reasons]
        if event.reasons
        else None,
        properties=event.properties,
        user_properties=event.user_properties,
    )
    return state.Notice(offset, NoticeKind.FEEDBACK, _encoder.encode(rating), need)


def encode_event(event: Note) -> bytes:
    """The event as JSON, for the dead-letter topic when no request could be built."""
    return _encoder.encode(event)
