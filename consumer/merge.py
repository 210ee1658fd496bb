"""How events extend a conversation's history: alignment of `full` histories and new entries.

Pure: it reads the history known so far and returns the entries an event adds
(`plan_completion`), so the engine can apply an event all or nothing. A message's
fingerprint is its identity for alignment; it is persisted beside each entry, so
changing `fingerprint` needs a new state tag (`consumer.state`).
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

import msgspec

from consumer import events, payload
from consumer.state import Content, ConversationState, Entry, Meta

_fingerprint_encoder = msgspec.msgpack.Encoder(order="sorted")
_json_encoder = msgspec.json.Encoder(order="sorted")
_hash = blake2b(digest_size=8)
"""`state.hash64`, inlined: two or three fingerprints are taken per event."""


def fingerprint(message: events.Message) -> int:
    """Identity of a message for aligning `full` histories.

    Normalised so that a reply matches its re-sent copy in the next request:
    developer is system, no content is "", text-only parts are their joined text.
    """
    content: Any = message.content
    if content is None:
        content = ""
    elif not isinstance(content, str):
        if all(part.type == "text" for part in content):
            content = "".join(part.text or "" for part in content)
        else:
            content = [
                (
                    p.type,
                    p.text,
                    p.image_url and (p.image_url.url, p.image_url.detail),
                    p.refusal,
                    p.input_audio,
                    p.file,
                )
                for p in content
            ]
    role = message.role
    calls = message.tool_calls
    legacy = message.function_call
    key = (
        "system" if role == "developer" else role,
        content,
        message.name,
        [
            (c.id, c.type, c.function and (c.function.name, c.function.arguments), c.custom)
            for c in calls
        ]
        if calls
        else None,
        message.tool_call_id,
        (legacy.name, legacy.arguments) if legacy is not None else None,
    )
    digest = _hash.copy()
    digest.update(_fingerprint_encoder.encode(key))
    return int.from_bytes(digest.digest(), "little")


def apply_completion(
    state: ConversationState, event: events.ChatCompletion, occurred: datetime
) -> None:
    """Adds what the event carries that the state does not have yet, then the reply."""
    for entry, mark in plan_completion(state, event, occurred):
        state.entries.append(entry)
        state.fingerprints.append(mark)


def plan_completion(
    state: ConversationState, event: events.ChatCompletion, occurred: datetime
) -> list[tuple[Entry, int]]:
    """The entries (with fingerprints) the event adds, computed without changing the state.

    So the engine can apply an event all at once or not at all. `delta` appends.
    `full` first looks for the usual shape, a history whose older part is the end
    of what is known (after system messages kept at the front), and appends what
    follows it. Otherwise it walks the request against the history known before
    this event: a message found at or after the pointer is known and moves the
    pointer; one not found is appended (an edited turn: both branches). Only
    messages known before the event are matched, so two identical turns in one
    request stay two. The reply is known when it sits right at the pointer (a
    re-sent event); otherwise it is appended. A re-sent event is recognised on
    either path: a request wholly known, in order, with its reply right after it.
    """
    messages = event.request.messages
    response = event.response
    reply = response.choices[0] if response is not None and response.choices else None
    answer = reply.message if reply is not None else None
    pointer: int | None = None
    request: _Request | None = None
    if event.history == "delta":
        planned = [(_entry(message, occurred), fingerprint(message)) for message in messages]
    else:
        request = _Request(messages, state.entries, state.fingerprints)
        added, pointer = request.plan(answer)
        planned = [(_entry(messages[i], occurred), request.mark(i)) for i in added]
    if response is None or reply is None or answer is None:
        return planned
    if pointer is not None and _same(answer, state.entries[pointer]):
        return planned
    mark = fingerprint(answer) if request is None else request.reply_mark(answer)
    if pointer is not None and state.fingerprints[pointer] == mark:
        return planned
    created = (
        datetime.fromtimestamp(response.created, UTC) if response.created is not None else occurred
    )
    planned.append((_entry(answer, created, _reply_properties(event, response, reply)), mark))
    return planned


def _reply_properties(
    event: events.ChatCompletion, response: events.Response, reply: events.Choice
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    model = response.model or event.request.model
    if model is not None:
        found["model"] = model
    if reply.finish_reason is not None:
        found["finish_reason"] = reply.finish_reason
    if response.usage is not None:
        found["usage"] = response.usage
    if response.id is not None:
        found["completion_id"] = response.id
    if event.latency_ms is not None:
        found["latency_ms"] = event.latency_ms
    if reply.content_filter_results is not None:
        found["content_filter_results"] = reply.content_filter_results
    if response.prompt_filter_results is not None:
        found["prompt_filter_results"] = response.prompt_filter_results
    return found


_QUICK_TRIES = 2
"""Candidate ends tried by direct comparison before the linear search takes over."""


class _Request:
    """A `full` request's messages against the known history, fingerprinted only where needed.

    Most of a request is history already known, and a message is usually compared
    with the very entry it was made from, which `_same` confirms cheaply; so
    fingerprints are computed for the new messages (which need one to be stored)
    and where `_same` cannot decide. Every answer is the one fingerprints give.
    Every search is linear or n log n in the request and the known history, whatever
    their shape: indexes of the known fingerprints are built once, when first needed.
    """

    __slots__ = ("_positions", "_reply_mark", "_set", "entries", "known", "marks", "messages")

    def __init__(
        self, messages: list[events.Message], entries: list[Entry], known: list[int]
    ) -> None:
        self.messages = messages
        self.entries = entries
        self.known = known
        self.marks: list[int | None] = [None] * len(messages)
        self._set: set[int] | None = None
        self._positions: dict[int, list[int]] | None = None
        self._reply_mark: int | None = None

    def plan(self, reply: events.Message | None) -> tuple[list[int], int | None]:
        """Indexes of the messages to append, and where the walk stopped if inside the history."""
        tail = self.aligned_tail()
        if tail is None:
            return self.walk()
        if reply is not None and self.reply_mark(reply) in self.known:
            added, pointer = self.walk()
            if not added and pointer is not None and self._resent(reply, pointer):
                return [], pointer
        start, stop = tail
        fresh = [i for i in range(start) if not self.is_known(i)]
        return [*fresh, *range(stop, len(self.messages))], None

    def _resent(self, reply: events.Message, pointer: int) -> bool:
        return _same(reply, self.entries[pointer]) or self.known[pointer] == self.reply_mark(reply)

    def reply_mark(self, reply: events.Message) -> int:
        """The reply's fingerprint, computed once whichever step needs it first."""
        if self._reply_mark is None:
            self._reply_mark = fingerprint(reply)
        return self._reply_mark

    def walk(self) -> tuple[list[int], int | None]:
        """The general alignment: each message is found at or after the pointer, or is new."""
        end = len(self.known)
        pointer = 0
        added: list[int] = []
        for i in range(len(self.messages)):
            if pointer < end:
                if self.matches(i, pointer):
                    pointer += 1
                    continue
                found = self.find(self.mark(i), pointer)
                if found is not None:
                    pointer = found + 1
                    continue
            added.append(i)
        return added, pointer if pointer < end else None

    def mark(self, index: int) -> int:
        mark = self.marks[index]
        if mark is None:
            mark = self.marks[index] = fingerprint(self.messages[index])
        return mark

    def matches(self, index: int, position: int) -> bool:
        """Whether message `index` has the fingerprint of known entry `position`.

        Called for most messages of every request, so `_same` is inlined here too.
        """
        mark = self.marks[index]
        if mark is None:
            message = self.messages[index]
            entry = self.entries[position]
            content = message.content
            properties = entry.properties
            if (
                isinstance(content, str)
                and content == entry.content
                and message.role == entry.role
                and message.tool_call_id == entry.tool_call_id
                and message.name == entry.name
                and not message.tool_calls
                and entry.tool_calls is None
                and message.function_call is None
                and (properties is None or _NOT_PLAIN.isdisjoint(properties))
            ):
                return True
            mark = self.marks[index] = fingerprint(message)
        return mark == self.known[position]

    def known_set(self) -> set[int]:
        if self._set is None:
            self._set = set(self.known)
        return self._set

    def find(self, mark: int, start: int) -> int | None:
        """The first known position at or after `start` with fingerprint `mark`."""
        if self._positions is None:
            self._positions = {}
            for position, known in enumerate(self.known):
                self._positions.setdefault(known, []).append(position)
        positions = self._positions.get(mark)
        if positions is None:
            return None
        at = bisect_left(positions, start)
        return positions[at] if at < len(positions) else None

    def is_known(self, index: int) -> bool:
        """Whether message `index` has the fingerprint of any known entry.

        The entry at the same place is tried first: a system prompt kept at the front.
        """
        if self.marks[index] is None and index < len(self.known) and self.matches(index, index):
            return True
        return self.mark(index) in self.known_set()

    def aligned_tail(self) -> tuple[int, int] | None:
        """`(start, stop)` when messages `start:stop` are the end of the known history, or None.

        `stop` is the largest such, and `start` the smallest, skipping at most the
        system messages at the front. Anchoring on the end of the known history, not
        on the first equal message, keeps a repeated turn ("hi" again) from being
        taken for an old one when the history is trimmed.

        The usual shapes are settled by comparing the first candidate ends directly;
        past that, the largest end comes from a prefix-function (KMP) search of the
        request's non-system part against the end of the known history.
        """
        end = len(self.known)
        if not end:
            return None
        messages = self.messages
        front = 0
        while front < len(messages) and messages[front].role in ("system", "developer"):
            front += 1
        tries = 0
        for stop in range(len(messages), 0, -1):
            if not self.matches(stop - 1, end - 1):
                continue
            start = self._start(stop, stop - 1)
            if start <= front:
                return start, stop
            tries += 1
            if tries >= _QUICK_TRIES:
                break
        else:
            return None
        length = self._longest_known_suffix(front)
        if length:
            stop = front + length
            return self._start(stop, front), stop
        for stop in range(min(front, len(messages)), 0, -1):
            if self.matches(stop - 1, end - 1):
                return self._start(stop, stop - 1), stop
        return None

    def _start(self, stop: int, start: int) -> int:
        """Extends a match of messages `start:stop` with the end of the known history backwards.

        The whole known part of a growing history is walked here at every event, so
        `_same` is inlined: the same test, without two calls per message.
        """
        shift = len(self.known) - stop
        lowest = max(0, -shift)
        messages, entries = self.messages, self.entries
        while start > lowest:
            message = messages[start - 1]
            entry = entries[start - 1 + shift]
            content = message.content
            properties = entry.properties
            if not (
                isinstance(content, str)
                and content == entry.content
                and message.role == entry.role
                and message.tool_call_id == entry.tool_call_id
                and message.name == entry.name
                and not message.tool_calls
                and entry.tool_calls is None
                and message.function_call is None
                and (properties is None or _NOT_PLAIN.isdisjoint(properties))
            ) and not self.matches(start - 1, start - 1 + shift):
                break
            start -= 1
        return start

    def _longest_known_suffix(self, front: int) -> int:
        """The largest k such that messages `front:front+k` are the last k known entries."""
        pattern = [self.mark(i) for i in range(front, len(self.messages))]
        if not pattern:
            return 0
        fallback = [0] * len(pattern)
        k = 0
        for i in range(1, len(pattern)):
            while k and pattern[i] != pattern[k]:
                k = fallback[k - 1]
            if pattern[i] == pattern[k]:
                k += 1
            fallback[i] = k
        k = 0
        known = self.known
        for mark in known[max(0, len(known) - len(pattern)) :]:
            while k and (k == len(pattern) or mark != pattern[k]):
                k = fallback[k - 1]
            if mark == pattern[k]:
                k += 1
        return k


_NOT_PLAIN = frozenset(("refusal", "function_call", "audio"))
"""Properties whose entry `_same` leaves to the fingerprint."""


def _same(message: events.Message, entry: Entry) -> bool:
    """True only if `entry` was made from a message with the fingerprint of `message`.

    A cheap test for plain text messages; False says nothing. An entry keeps the
    role, name, tool call id and text it was made from (no content as ""), except
    that a refusal or an audio transcript may stand in for an empty text; tool calls
    and legacy function calls are left to the fingerprint.
    """
    content = message.content
    properties = entry.properties
    return (
        isinstance(content, str)
        and content == entry.content
        and message.role == entry.role
        and message.tool_call_id == entry.tool_call_id
        and message.name == entry.name
        and not message.tool_calls
        and entry.tool_calls is None
        and message.function_call is None
        and (properties is None or _NOT_PLAIN.isdisjoint(properties))
    )


def merge_meta(meta: Meta, update: events.ConversationMeta) -> None:
    """Later values replace earlier ones; properties merge key by key; tags are a union."""
    for field in (
        "external_id",
        "external_url",
        "project_id",
        "integration_id",
        "support_ticket_conversation_id",
        "visibility",
    ):
        value = getattr(update, field)
        if value is not None:
            setattr(meta, field, value)
    if update.properties:
        meta.properties = {**(meta.properties or {}), **update.properties}
    if update.user_properties:
        meta.user_properties = {**(meta.user_properties or {}), **update.user_properties}
    if update.tags:
        known = meta.tags or []
        new = [tag for tag in dict.fromkeys(update.tags) if tag not in known]
        if new:
            meta.tags = known + new


def _entry(
    message: events.Message,
    created: datetime,
    extra: dict[str, Any] | None = None,
) -> Entry:
    """The entry a message becomes; `extra` is a fresh dict the entry's properties grow from."""
    properties = extra if extra is not None else {}
    if message.role == "developer":
        properties["openai_role"] = "developer"
    content = _content(message.content)
    if message.refusal is not None:
        properties["refusal"] = message.refusal
        if content in ("", []):
            content = message.refusal
    _reply_fields(message, properties)
    if content in ("", []) and message.audio is not None and message.audio.transcript:
        content = message.audio.transcript
    if message.function_call is not None:
        properties["function_call"] = {
            "name": message.function_call.name,
            "arguments": message.function_call.arguments,
        }
    calls: list[payload.ToolCall] | None = None
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            calls.append(_tool_call(call))
            if call.function is None or call.type != "function":
                properties.setdefault("tool_call_types", {})[call.id] = call.type
    return Entry(
        role=message.role,
        content=content,
        created_at=created,
        name=message.name,
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
        properties=properties or None,
    )


def _reply_fields(message: events.Message, properties: dict[str, Any]) -> None:
    """What else a message carries, into its properties: nothing a reply carries is lost."""
    if message.audio is not None:
        audio = {"id": message.audio.id, "transcript": message.audio.transcript}
        properties["audio"] = {k: v for k, v in audio.items() if v is not None}
    if message.annotations is not None:
        properties["annotations"] = message.annotations
    if message.reasoning_content is not None:
        properties["reasoning_content"] = message.reasoning_content
    if message.reasoning is not None:
        properties["reasoning"] = message.reasoning
    if message.content_filter_results is not None:
        properties["content_filter_results"] = message.content_filter_results
    if isinstance(message, events.ItemMessage) and message.properties:
        properties.update(message.properties)


def _content(content: str | list[events.ContentPart] | None) -> Content:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return [_part(part) for part in content]


_DETAILS = frozenset(("auto", "low", "high"))


def _part(part: events.ContentPart) -> payload.ContentItem:
    """A content part as the API takes it; a kind it cannot take becomes text naming it."""
    if part.type == "text":
        return payload.ContentItem(type="text", text=part.text or "")
    if part.type == "image_url" and part.image_url is not None:
        detail = part.image_url.detail if part.image_url.detail in _DETAILS else "auto"
        image = payload.ImageURL(url=part.image_url.url, detail=detail)  # type: ignore[arg-type]
        return payload.ContentItem(type="image_url", image_url=image)
    if part.type == "input_audio":
        audio_format = (part.input_audio or {}).get("format")
        text = f"[audio input: {audio_format}]" if audio_format else "[audio input]"
    elif part.type == "file":
        file = part.file or {}
        label = file.get("filename") or file.get("file_id")
        text = f"[file: {label}]" if label else "[file]"
    elif part.type == "refusal":
        text = f"[refusal] {part.refusal or part.text or ''}".rstrip()
    else:
        text = f"[{part.type} part]" + (f" {part.text}" if part.text else "")
    return payload.ContentItem(type="text", text=text)


def _tool_call(call: events.ToolCall) -> payload.ToolCall:
    """A tool call as the API takes it: non-function calls become function-shaped."""
    if call.function is not None:
        function = payload.ToolCallFunction(
            name=call.function.name, arguments=call.function.arguments
        )
    else:
        custom = call.custom or {}
        name = custom.get("name", call.type)
        given = custom.get("input", "")
        arguments = given if isinstance(given, str) else _json_encoder.encode(given).decode()
        function = payload.ToolCallFunction(name=str(name), arguments=arguments)
    return payload.ToolCall(id=call.id, function=function)
