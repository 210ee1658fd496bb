"""What the worker knows of one conversation, and how it is persisted.

The state is the only source of a flush's body: the API replaces a conversation's
whole message list on every upsert, so the state must hold the whole known history
and survive the process. It is written to the co-partitioned state topic before
the input offsets it covers are committed, and read back on assignment: open
conversations as a log of what each checkpoint appended (`consumer.changelog`),
completed ones and markers as one whole record each (`encode_record` below, the
format every release so far has written and read). How events extend a history is
`consumer.merge`; how a history becomes a request body is `consumer.upsert`.

Whole records carry a one-byte format (`P` plain, `Z` zlib) and a versioned tag
(`c1`, `m1`); an unknown format or tag raises `StateError` rather than being
skipped, because skipping state would later send a partial history. Changing the
fingerprint (`consumer.merge`) changes what the persisted fingerprints mean:
that needs a new tag.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterable
from datetime import datetime
from hashlib import blake2b
from typing import Any

import msgspec

from consumer import payload
from consumer.errors import StateError

Content = str | list[payload.ContentItem]


class Trigger(enum.StrEnum):
    """What made a flush due; persisted with a flush in flight or pending."""

    ENDED = "ended"
    IDLE = "idle"
    MAX_OPEN = "max_open"
    REVOKE = "revoke"
    SHUTDOWN = "shutdown"
    MEMORY = "memory"


class Entry(msgspec.Struct, array_like=True, gc=False):
    """One message as it will be logged; `role` is as sent (tool, function, developer too)."""

    role: str
    content: Content
    created_at: datetime
    name: str | None = None
    tool_calls: list[payload.ToolCall] | None = None
    tool_call_id: str | None = None
    properties: dict[str, Any] | None = None


class SeenKeys(set[int]):
    """The seen set, also listing the keys added since a checkpoint last took them.

    So a checkpoint writes only the new event keys, without a second copy of the set.
    """

    __slots__ = ("fresh",)

    def __init__(self, keys: Iterable[int] = ()) -> None:
        super().__init__(keys)
        self.fresh: list[int] = []

    def add(self, key: int) -> None:
        if key not in self:
            super().add(key)
            self.fresh.append(key)

    def take(self) -> list[int]:
        fresh, self.fresh = self.fresh, []
        return fresh

    def discard(self, key: object) -> None:
        """Takes back a key added since the last checkpoint (an apply rolled back)."""
        if key in self:
            super().discard(key)
            if key in self.fresh:
                self.fresh.remove(key)


class Meta(msgspec.Struct, array_like=True, gc=False):
    """The conversation metadata merged over its events."""

    external_id: str | None = None
    external_url: str | None = None
    project_id: str | None = None
    integration_id: str | None = None
    support_ticket_conversation_id: str | None = None
    properties: dict[str, Any] | None = None
    user_properties: dict[str, Any] | None = None
    tags: list[str] | None = None
    visibility: str | None = None


class Notice(msgspec.Struct, array_like=True, gc=False):
    """A feedback or interaction request about this conversation, not yet settled.

    It goes once the API has acknowledged `need` messages (so the message it names
    exists there); `sent` while the request is out. Kept in the state so that it
    survives restarts and rebalances while it waits.
    """

    offset: int
    kind: str
    body: bytes
    need: int
    sent: bool = False


class ConversationState(msgspec.Struct, array_like=True, tag="c1", gc=False):
    """A conversation with its whole history and its flush and offset bookkeeping.

    Times named `*_at` (floats) are the engine clock; `created_at`/`updated_at` are
    the events' own `occurred_at`. `fingerprints` runs parallel to `entries`.
    """

    id: str
    opened_at: float
    last_event_at: float
    entries: list[Entry] = msgspec.field(default_factory=list)
    fingerprints: list[int] = msgspec.field(default_factory=list)
    seen: set[int] = msgspec.field(default_factory=SeenKeys)
    meta: Meta = msgspec.field(default_factory=Meta)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_flush_at: float | None = None
    completed_at: float | None = None
    last_offset: int = -1
    complete: bool = False
    closing: bool = False
    dirty: bool = False
    seq: int = 0
    in_flight: int = 0
    in_flight_trigger: Trigger | None = None
    in_flight_count: int = 0
    pending: Trigger | None = None
    acked_count: int = 0
    unacked_from: int | None = None
    since_issue_from: int | None = None
    partial: bool = False
    notices: list[Notice] = msgspec.field(default_factory=list)
    """Feedback and interaction requests waiting or in flight, in input order."""


class Marker(msgspec.Struct, array_like=True, tag="m1", gc=False):
    """What is left of a completed conversation past retention: enough to refuse going back."""

    id: str
    acked_count: int
    seq: int
    last_offset: int
    marked_at: float


Record = ConversationState | Marker

_record_encoder = msgspec.msgpack.Encoder()
_record_decoder: msgspec.msgpack.Decoder[Record] = msgspec.msgpack.Decoder(Record)
_hash = blake2b(digest_size=8)
"""Copied for each 8-byte hash: cheaper than setting blake2b up anew."""


def encode_record(record: Record, *, compress: bool = False) -> bytes:
    raw = _record_encoder.encode(record)
    return b"Z" + zlib.compress(raw, 1) if compress else b"P" + raw


def decode_record(value: bytes) -> Record:
    kind, body = value[:1], value[1:]
    try:
        if kind == b"Z":
            body = zlib.decompress(body)
        elif kind != b"P":
            raise StateError(f"unknown state record format {kind!r}")
        return _record_decoder.decode(body)
    except (zlib.error, msgspec.DecodeError) as exc:
        raise StateError(f"unreadable state record: {exc}") from None


def event_key(event_id: str) -> int:
    """The seen-set key of an event id: 8 bytes of blake2b are plenty within one conversation."""
    return hash64(event_id.encode())


def message_id_prefix(conversation_id: str) -> str:
    """The prefix of a conversation's message ids; a message's id is the prefix plus its place.

    So the same message gets the same id in every flush and replay, and ids of
    different conversations differ.
    """
    return f"m_{blake2b(conversation_id.encode(), digest_size=8).hexdigest()}_"


def hash64(data: bytes) -> int:
    digest = _hash.copy()
    digest.update(data)
    return int.from_bytes(digest.digest(), "little")
