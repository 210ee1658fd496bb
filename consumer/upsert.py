"""The request body of `POST /conversations`, built from a conversation's whole history.

Tool and function results have no role in the API: they are folded into the
assistant message that asked for them. Each message's place in the history gives
its id (`state.message_id_prefix`), so a message once logged is logged the same
way in every later flush.
"""

from __future__ import annotations

from typing import Any

import msgspec

from consumer import payload
from consumer.errors import StateError
from consumer.state import Content, ConversationState, Entry, message_id_prefix


def to_payload(state: ConversationState, body: Body | None = None) -> payload.Conversation:
    """The request body for the whole known history (see `Body`).

    Pass the conversation's `Body` from an earlier flush to fold only what was
    appended since.
    """
    if body is None:
        body = Body(state.id)
    return body.conversation(state)


class Body:
    """A conversation's request body, kept up to date as its history grows.

    Tool and function results have no role in the API: they go into
    `properties.tool_results` of the assistant message that asked for them, else of
    the nearest preceding assistant message, else of the nearest preceding message,
    else of a system message that names them. Each choice depends only on earlier
    messages, so a message once logged is logged the same way in every later flush,
    and the history is append-only: so each logged message is built and encoded
    once, and again only when a later tool result is folded into it. A message is
    never changed in place (a folded result replaces it), so a `Conversation` handed
    out earlier (a flush in flight) stays as it was.
    """

    __slots__ = (
        "_by_call",
        "_by_function",
        "_fragments",
        "_last_assistant",
        "_messages",
        "_prefix",
        "_results",
        "folded",
    )

    def __init__(self, conversation_id: str) -> None:
        self._prefix = message_id_prefix(conversation_id)
        self._messages: list[payload.OutMessage] = []
        self._fragments: list[bytes] = []
        """Each message's JSON; empty while it is to be encoded (anew)."""
        self._by_call: dict[str, int] = {}
        self._by_function: dict[str, int] = {}
        self._results: dict[int, list[Any]] = {}
        self._last_assistant: int | None = None
        self.folded = 0
        """How many entries of the history are folded in."""

    def conversation(self, state: ConversationState) -> payload.Conversation:
        """The body of the whole known history, as `payload.Conversation`."""
        entries = state.entries
        if len(entries) < self.folded:
            raise StateError(f"the history of conversation {state.id!r} shrank: it is append-only")
        for ordinal in range(self.folded, len(entries)):
            self._fold(ordinal, entries[ordinal])
        self.folded = len(entries)
        meta = state.meta
        return payload.Conversation(
            id=state.id,
            type="openai",
            messages=list(self._messages),
            created_at=state.created_at,
            updated_at=state.updated_at,
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

    def encode(self, conversation: payload.Conversation, *, keep: bool = True) -> bytes:
        """`payload.encode(conversation)`, byte for byte, for a `conversation()` of this body.

        The messages come from their cached encodings; the rest is encoded anew.
        Without `keep` (a body used once), it is encoded whole, in one call.
        """
        messages = self._messages
        fragments = self._fragments
        if len(conversation.messages) != len(messages):
            raise ValueError("the conversation is not the latest one this body built")
        if not keep:
            return _message_encoder.encode(conversation)
        for index, fragment in enumerate(fragments):
            if not fragment:
                fragments[index] = _message_encoder.encode(messages[index])
        top = _message_encoder.encode(msgspec.structs.replace(conversation, messages=[]))
        head, found, tail = top.partition(_EMPTY_MESSAGES)
        if not found:
            raise ValueError("no message list in the encoded conversation")
        return b"".join((head, b'"messages":[', b",".join(fragments), b"]", tail))

    def _fold(self, ordinal: int, entry: Entry) -> None:
        messages = self._messages
        if entry.role in ("tool", "function"):
            if entry.role == "tool":
                target = self._by_call.get(entry.tool_call_id or "")
                result = {"tool_call_id": entry.tool_call_id, "content": _builtin(entry.content)}
                label = f"[tool result: {entry.tool_call_id}]"
            else:
                target = self._by_function.get(entry.name or "")
                result = {"name": entry.name, "content": _builtin(entry.content)}
                label = f"[function result: {entry.name}]"
            if target is None:
                target = self._last_assistant
            if target is None and messages:
                target = len(messages) - 1
            if target is None:
                messages.append(
                    payload.OutMessage(
                        id=f"{self._prefix}{ordinal}",
                        role="system",
                        content=label,
                        created_at=entry.created_at,
                    )
                )
                self._fragments.append(b"")
                target = len(messages) - 1
            bucket = [*self._results.get(target, ()), result]
            self._results[target] = bucket
            current = messages[target]
            properties = {**(current.properties or {}), "tool_results": bucket}
            messages[target] = msgspec.structs.replace(current, properties=properties)
            self._fragments[target] = b""
            return
        role = "system" if entry.role == "developer" else entry.role
        messages.append(
            payload.OutMessage(
                id=f"{self._prefix}{ordinal}",
                role=role,  # type: ignore[arg-type]
                content=entry.content,
                created_at=entry.created_at,
                name=entry.name,
                tool_calls=entry.tool_calls,
                properties=entry.properties,
            )
        )
        self._fragments.append(b"")
        if role == "assistant":
            index = len(messages) - 1
            self._last_assistant = index
            for call in entry.tool_calls or ():
                self._by_call[call.id] = index
            legacy = (entry.properties or {}).get("function_call")
            if legacy is not None:
                self._by_function[legacy["name"]] = index


_message_encoder = msgspec.json.Encoder()
_EMPTY_MESSAGES = b'"messages":[]'


def _builtin(content: Content) -> Any:
    return content if isinstance(content, str) else msgspec.to_builtins(content)
