"""The 2 MB rule: a conversation too large for one request is logged with its largest contents cut.

Cuts are "water-filling": every cuttable string longer than one common cap is cut
to that cap, the cap chosen so the body just fits. Each cut says so in the text,
and the conversation's `properties` say so too. The uncut body is the caller's to
keep (the engine sends it to the dead-letter topic), so nothing is lost.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from consumer import payload
from consumer.errors import CannotFit

MARK = "inkeep_consumer_truncated"
"""The conversation property that says contents were cut."""

_MARK_COST = 64
"""Bytes a cut's marker adds, a little over the longest one."""

_ATTEMPTS = 8
_MARKED = re.compile(r"…\[truncated: kept \d+ of (\d+) characters\]\Z")
_encoder = msgspec.json.Encoder()


def fit(
    conversation: payload.Conversation, max_bytes: int, body: bytes | None = None
) -> tuple[payload.Conversation, bytes, bool]:
    """Returns the conversation, its body within `max_bytes`, and whether anything was cut.

    `body` is `payload.encode(conversation)` when the caller has it already.
    Raises `CannotFit` when even cutting every cuttable string cannot fit it.
    """
    if body is None:
        body = payload.encode(conversation)
    if len(body) <= max_bytes:
        return conversation, body, False
    measure = _Cutter(None)
    measure.conversation(conversation)
    previous = (conversation.properties or {}).get(MARK)
    original = previous["original_bytes"] if isinstance(previous, dict) else len(body)
    need = len(body) - max_bytes + _MARK_COST * 2
    for _ in range(_ATTEMPTS):
        cap = _cap(measure.sizes, need)
        if cap is None:
            break
        cutter = _Cutter(cap)
        cut = cutter.conversation(conversation)
        marker = {"original_bytes": original, "max_bytes": max_bytes, "cut_items": cutter.cuts}
        cut.properties = {**(cut.properties or {}), MARK: marker}
        body = payload.encode(cut)
        if len(body) <= max_bytes:
            return cut, body, True
        need += len(body) - max_bytes + _MARK_COST
    raise CannotFit(
        f"conversation {conversation.id} cannot be cut to {max_bytes} bytes "
        f"({len(conversation.messages)} messages)"
    )


def _cap(sizes: list[int], need: int) -> int | None:
    """The largest cap that frees `need` bytes when every longer string is cut to it."""
    ordered = sorted((size for size in sizes if size > _MARK_COST), reverse=True)
    total = 0
    for count, size in enumerate(ordered, start=1):
        total += size
        following = ordered[count] if count < len(ordered) else 0
        cap = (total - count * _MARK_COST - need) // count
        if cap >= following and cap >= 0:
            return cap
    return None


class _Cutter:
    """Walks a conversation's cuttable strings: measures them (cap None) or cuts them."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.sizes: list[int] = []
        self.cuts = 0

    def conversation(self, conversation: payload.Conversation) -> payload.Conversation:
        messages = [self._message(message) for message in conversation.messages]
        return msgspec.structs.replace(conversation, messages=messages)

    def _message(self, message: payload.OutMessage) -> payload.OutMessage:
        content: str | list[payload.ContentItem]
        if isinstance(message.content, str):
            content = self._text(message.content)
        else:
            content = [self._item(item) for item in message.content]
        calls = None
        if message.tool_calls is not None:
            calls = [
                msgspec.structs.replace(
                    call,
                    function=msgspec.structs.replace(
                        call.function, arguments=self._text(call.function.arguments)
                    ),
                )
                for call in message.tool_calls
            ]
        properties = None if message.properties is None else self._value(message.properties)
        return msgspec.structs.replace(
            message, content=content, tool_calls=calls, properties=properties
        )

    def _item(self, item: payload.ContentItem) -> payload.ContentItem:
        if item.text is not None:
            return msgspec.structs.replace(item, text=self._text(item.text))
        if item.image_url is None:
            return item
        url = item.image_url.url
        size = _size(url)
        if self.cap is None:
            self.sizes.append(size)
            return item
        if size <= self.cap + _MARK_COST:
            return item
        self.cuts += 1
        head = url[: url.find(",")] if url.startswith("data:") else url[:100]
        return payload.ContentItem(
            type="text", text=f"[image removed: {head}… ({len(url)} characters)]"
        )

    def _value(self, value: Any) -> Any:
        """A copy of free-form data with its strings cut; an explicit stack, not recursion."""
        holder: list[Any] = [None]
        stack: list[tuple[Any, Any, Any]] = [(value, holder, 0)]
        while stack:
            source, parent, slot = stack.pop()
            if isinstance(source, str):
                parent[slot] = self._text(source)
            elif isinstance(source, list):
                items: list[Any] = [None] * len(source)
                parent[slot] = items
                stack.extend((item, items, index) for index, item in enumerate(source))
            elif isinstance(source, dict):
                fields: dict[Any, Any] = dict.fromkeys(source)
                parent[slot] = fields
                stack.extend((item, fields, key) for key, item in source.items())
            else:
                parent[slot] = source
        return holder[0]

    def _text(self, text: str) -> str:
        size = _size(text)
        if self.cap is None:
            self.sizes.append(size)
            return text
        if size <= self.cap + _MARK_COST:
            return text
        self.cuts += 1
        marked = _MARKED.search(text)
        whole = len(text)
        if marked is not None:
            whole = int(marked.group(1))
            text = text[: marked.start()]
        keep = len(text) * self.cap // size
        return f"{text[:keep]}…[truncated: kept {keep} of {whole} characters]"


def _size(text: str) -> int:
    """Bytes the string takes in the JSON body, escapes included."""
    return len(_encoder.encode(text)) - 2
