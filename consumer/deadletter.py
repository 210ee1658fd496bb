"""Dead-letter records: what could not be logged, kept whole with the reason.

An invalid input record keeps its original key and bytes; a conversation the API
refused keeps its request body. Headers name the error and where it came from,
so a person (or a replay tool) can act on it without reading the worker's logs.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_ANSWER_BYTES = 8192
"""The API's answer is kept in a header; headers should stay small."""


CONVERSATIONS = "/conversations"
"""The endpoint of a dead letter without an `api.path` header (all the previous release wrote)."""


class DeadLetter(NamedTuple):
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _source(topic: str, partition: int, offset: int | None) -> list[tuple[str, bytes]]:
    headers = [("source.topic", topic.encode()), ("source.partition", str(partition).encode())]
    if offset is not None:
        headers.append(("source.offset", str(offset).encode()))
    return headers


def invalid_record(  # noqa: PLR0913 - keyword-only: each names a header.
    *,
    key: bytes | None,
    value: bytes | None,
    kind: str,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
) -> DeadLetter:
    """An input record that breaks the contract; the value is the original bytes."""
    headers = [("error", kind.encode()), ("error.message", reason.encode()[:2048])]
    headers += _source(topic, partition, offset)
    return DeadLetter(key, value or b"", headers)


def conversation(  # noqa: PLR0913 - keyword-only: each names a header.
    *,
    conversation_id: str,
    body: bytes,
    kind: str,
    reason: str,
    topic: str,
    partition: int,
    status: int | None = None,
    answer: bytes = b"",
    path: str = CONVERSATIONS,
) -> DeadLetter:
    """A request body that was not (or not wholly) logged, with the API's answer.

    `path` names the endpoint: a conversation's, or a feedback or interaction about it.
    """
    headers = [
        ("error", kind.encode()),
        ("error.message", reason.encode()[:2048]),
        ("conversation_id", conversation_id.encode()),
        ("api.path", path.encode()),
    ]
    if status is not None:
        headers.append(("api.status", str(status).encode()))
    if answer:
        headers.append(("api.answer", answer[:MAX_ANSWER_BYTES]))
    headers += _source(topic, partition, None)
    return DeadLetter(conversation_id.encode(), body, headers)
