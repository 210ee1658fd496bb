"""The state topic's layout: an append-only log per open conversation, one record once complete.

Rewriting a conversation whole at every checkpoint costs bytes and CPU that grow
with the square of its length. So an open conversation is a log:

- segment records, key `<id>\\xff<n>` (`n` in decimal from 0), each holding only
  the entries, fingerprints and seen event keys added since the previous one;
- one head record, key `<id>`, holding the bookkeeping and the merged metadata (a
  `ConversationState` with the three growing lists left empty), and how many
  segments, entries and seen keys the log has. It is rewritten whenever the
  conversation changes, after its new segment.

A completed conversation is consolidated once: its whole state (`c1`, zlib) goes to
the head key, then its segments are tombstoned. A marker (`m1`) also lives at the
head key. Conversation ids are UTF-8, which never holds the byte 0xff, so no id is
ever a segment key, and a conversation's keys all start with its id.

Whatever prefix of a checkpoint reached the topic, what is there reads back as a
whole conversation: a segment counts only once a head names it, and segments go
only after the head key stops naming them. A head naming a segment that is not
there (or one of another log, by `epoch`) raises `StateError`: never a partial
history. Values start with a format byte: `L` for log records (plain msgpack,
tags `h1`/`s1`); `P`/`Z` are `state.encode_record`'s (today's format, still read).
"""

from __future__ import annotations

import msgspec

from consumer import state
from consumer.errors import StateError

SEPARATOR = b"\xff"


class Head(msgspec.Struct, array_like=True, tag="h1", gc=False):
    """An open conversation's bookkeeping and how much its log holds.

    Its segments are `first` to `first + segments - 1`. `epoch` is the input offset
    the log started at: segments of an earlier log of the same conversation never
    pass for this one's. A log started while an earlier one is still named by the
    head key numbers its segments after the earlier one's, so writing them never
    overwrites a segment the head in the topic still names.
    """

    epoch: int
    first: int
    segments: int
    entries: int
    seen: int
    state: state.ConversationState


class Segment(msgspec.Struct, array_like=True, tag="s1", gc=False):
    """What one checkpoint appended to an open conversation's log."""

    epoch: int
    index: int
    start: int
    entries: list[state.Entry]
    fingerprints: list[int]
    seen: list[int]


LogRecord = Head | Segment

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[LogRecord] = msgspec.msgpack.Decoder(LogRecord)


def head_key(conversation_id: str) -> bytes:
    return conversation_id.encode()


def segment_key(conversation_id: str, index: int) -> bytes:
    return conversation_id.encode() + SEPARATOR + str(index).encode()


def parse_key(key: bytes) -> tuple[str, int | None]:
    """`(conversation id, segment index)`, the index None for a head key."""
    cid, separator, index = key.partition(SEPARATOR)
    try:
        return cid.decode(), int(index) if separator else None
    except (UnicodeDecodeError, ValueError):
        raise StateError(f"unreadable state record key {key!r}") from None


def encode(record: LogRecord) -> bytes:
    return b"L" + _encoder.encode(record)


def decode(value: bytes) -> LogRecord | state.Record:
    if value[:1] != b"L":
        return state.decode_record(value)
    try:
        return _decoder.decode(value[1:])
    except msgspec.DecodeError as exc:
        raise StateError(f"unreadable state record: {exc}") from None


def head(conv: state.ConversationState, epoch: int, first: int, segments: int, seen: int) -> bytes:
    bare = msgspec.structs.replace(conv, entries=[], fingerprints=[], seen=set())
    return encode(Head(epoch, first, segments, len(conv.entries), seen, bare))


def assemble(head: Head, segments: dict[int, Segment]) -> state.ConversationState:
    """The conversation a head and its segments describe; `StateError` unless all are there."""
    conv = msgspec.structs.replace(head.state, entries=[], fingerprints=[], seen=state.SeenKeys())
    cid = conv.id
    for index in range(head.first, head.first + head.segments):
        segment = segments.get(index)
        if segment is None or segment.epoch != head.epoch or segment.index != index:
            raise StateError(
                f"state of conversation {cid!r} lacks segment {index} "
                f"of {head.first}-{head.first + head.segments - 1}"
            )
        if segment.start != len(conv.entries) or len(segment.fingerprints) != len(segment.entries):
            raise StateError(f"state of conversation {cid!r}: segment {index} does not follow")
        conv.entries += segment.entries
        conv.fingerprints += segment.fingerprints
        conv.seen.update(segment.seen)
    if len(conv.entries) != head.entries or len(conv.seen) != head.seen:
        raise StateError(
            f"state of conversation {cid!r} holds {len(conv.entries)} entries and "
            f"{len(conv.seen)} event keys, its head names {head.entries} and {head.seen}"
        )
    return conv
