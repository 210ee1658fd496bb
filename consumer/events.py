"""The input contract, version 1: what producers write to Kafka.

The structs decode straight from a record's bytes. Unknown fields are ignored
(forward compatibility); anything else that breaks the contract raises
`InvalidEvent`, and the record goes to the dead-letter topic.
"""

from __future__ import annotations

import re
from datetime import datetime
from itertools import accumulate
from typing import Annotated, Any, Literal

import msgspec

from consumer.errors import InvalidEvent
from consumer.payload import FeedbackType

MAX_DEPTH = 256
"""Deepest nesting of arrays and objects anywhere in a record, its top object counting 1.

Well inside what msgspec decodes without running out of stack, so the answer does
not depend on where the decoder is called from.
"""

MAX_FREE_DEPTH = 32
"""Deepest nesting inside a free-form field (`usage`, `properties`...), its value counting 1."""

MAX_MESSAGES = 100_000
"""Most messages one request may carry."""

MIN_YEAR, MAX_YEAR = 1970, 2999
"""`occurred_at` years (as written, before conversion to UTC) a record may carry."""

MAX_CREATED = 32_503_680_000
"""`response.created` is epoch seconds before 3000-01-01; a millisecond epoch is over it."""

MAX_LATENCY_MS = 86_400_000.0
"""`latency_ms` is at most a day."""

MAX_INT = 2**63
"""Integers in free-form fields lie in [-2**63, 2**63): what the state's msgpack can hold."""

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Latency = Annotated[float, msgspec.Meta(ge=0, le=MAX_LATENCY_MS)]
Created = Annotated[int, msgspec.Meta(ge=0, lt=MAX_CREATED)]
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
    messages: Annotated[list[Message], msgspec.Meta(max_length=MAX_MESSAGES)]
    model: str | None = None


class Choice(msgspec.Struct, frozen=True):
    index: int = 0
    message: Message | None = None
    finish_reason: str | None = None
    content_filter_results: dict[str, Any] | None = None


class Response(msgspec.Struct, frozen=True):
    id: str | None = None
    object: str | None = None
    created: Created | None = None
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
    latency_ms: Latency | None = None
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
    latency_ms: Latency | None = None
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

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
"""A string, or an unterminated one up to the end: every quote starts a match, so linear."""
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_DIGITS_AS_NINE = bytes.maketrans(b"012345678", b"999999999")
_LONG_NUMBER = b"9" * len(str(MAX_INT))
"""As many digits as 2**63 has: no shorter integer can leave 64 bits."""
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_OUT_OF_RANGE = re.compile(r"Expected `\w+` [<>]=? |out of range")


def decode_event(data: bytes | bytearray | memoryview) -> Event:
    """Decodes one record value, or raises `InvalidEvent` naming what is wrong.

    Every bound of the contract is checked here, once, so that nothing downstream
    (state, fit, encoding, checkpoints) meets data it cannot handle. No other
    exception leaves this function, whatever the bytes.

    The depth bound is checked before msgspec parses anything deeper than it: a
    record with few brackets cannot be deep; otherwise a cheaper scan, exact for
    valid JSON, screens it, and msgspec's answer says whether it was valid JSON.
    Should msgspec refuse it, the exact scan decides first, as if it had run
    before: so every record gets the same answer as with the exact scan alone.
    """
    raw = bytes(data)
    brackets = raw.count(b"[") + raw.count(b"{")
    exact = brackets <= MAX_DEPTH or _screen_depth(raw)
    try:
        event = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        if not exact:
            _check_depth(raw)
        raise _refused(exc) from None
    if brackets <= MAX_FREE_DEPTH + 1 and _LONG_NUMBER not in raw.translate(_DIGITS_AS_NINE):
        # Too few brackets for a free-form value to nest too deep (it sits inside the
        # top object), and no integer long enough to leave 64 bits: the walk would pass.
        _check_year(event)
    else:
        _check_values(event)
    return event


def _refused(exc: Exception) -> InvalidEvent:
    """What msgspec's refusal of a record means in the contract's words."""
    if isinstance(exc, msgspec.ValidationError):
        reason = str(exc)
        if "`$.event_type`" in reason:
            kind = "unknown_event_type"
        elif _OUT_OF_RANGE.search(reason):
            kind = "out_of_range"
        else:
            kind = "schema"
        return InvalidEvent(kind, reason)
    if isinstance(exc, UnicodeDecodeError):
        return InvalidEvent("not_utf8", f"invalid UTF-8 in a string: {exc.reason}")
    if isinstance(exc, RecursionError):
        return InvalidEvent("too_deep", "nesting too deep to decode")
    return InvalidEvent("not_json", str(exc))


def _screen_depth(raw: bytes) -> bool:
    """Refuses what is surely too deep; True when the exact answer is already known.

    False says only that the record is not too deep if it is valid JSON. Without an
    escaped quote the exact scan is as cheap, so it runs instead. For records with
    more brackets than `MAX_DEPTH` (fewer cannot be too deep).
    """
    if b'\\"' in raw and _valid_nesting(raw) <= MAX_DEPTH:
        return False
    _check_depth(raw)
    return True


def _check_depth(raw: bytes) -> None:
    """Refuses nesting deeper than `MAX_DEPTH` without recursing and before decoding."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    depth = nesting(raw)
    if depth > MAX_DEPTH:
        raise InvalidEvent("too_deep", f"nesting {depth} deep, over {MAX_DEPTH}")


def _valid_nesting(raw: bytes) -> int:
    """`nesting(raw)` when `raw` is valid JSON (a backslash only ever inside a string).

    Escape pairs go first, so every quote left delimits a string; then only quotes
    and brackets are kept, which makes the rest of the scan short.
    """
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)
    compact = raw.translate(None, _NOT_STRUCTURE)
    outside = b"".join(compact.split(b'"')[::2])
    return max(accumulate(memoryview(outside.translate(_STEP)).cast("b")), default=0)


def nesting(raw: bytes) -> int:
    """How deep arrays and objects nest in JSON text, in time linear in its length.

    Strings are dropped first (their brackets are text), then the depth is the
    largest running sum of +1 per opening and -1 per closing bracket. Without an
    escaped quote, splitting at quotes drops the strings; with one, a regex does.
    """
    outside = _STRING.sub(b"", raw) if b'\\"' in raw else b"".join(raw.split(b'"')[::2])
    steps = memoryview(outside.translate(_STEP, _NOT_BRACKETS)).cast("b")
    return max(accumulate(steps), default=0)


def _check_values(event: Event) -> None:
    """The bounds msgspec cannot state: years, and what free-form fields may hold."""
    _check_year(event)
    _check_free(_free_values(event))


def _check_year(event: Event) -> None:
    year = event.occurred_at.year
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise InvalidEvent(
            "out_of_range", f"occurred_at year {year} is outside {MIN_YEAR}..{MAX_YEAR}"
        )


def _free_values(event: Event) -> list[Any]:
    """Every free-form value the event carries, where producers may put any JSON."""
    if isinstance(event, Feedback | Interaction):
        return [event.properties, event.user_properties]
    free: list[Any] = []
    meta = event.conversation
    if meta is not None:
        free += [meta.properties, meta.user_properties]
    if isinstance(event, ResponseEvent):
        request, result = event.request, event.response
        free += [request.conversation, request.input if isinstance(request.input, list) else None]
        if result is not None:
            free += [result.output, result.usage, result.error, result.incomplete_details]
    elif isinstance(event, ChatCompletion):
        free += _completion_free(event)
    return free


def _completion_free(event: ChatCompletion) -> list[Any]:
    """The free-form values present (not None), in the order the walk has always taken them.

    A full history re-sends every message, so this loop runs over hundreds of them.
    """
    free: list[Any] = []
    add = free.append
    response = event.response
    replies: list[Message] = []
    if response is not None:
        free += [response.usage, response.prompt_filter_results]
        free += [choice.content_filter_results for choice in response.choices]
        replies = [choice.message for choice in response.choices if choice.message]
    for messages in (event.request.messages, replies):
        for message in messages:
            if message.annotations is not None:
                add(message.annotations)
            if message.reasoning is not None:
                add(message.reasoning)
            if message.content_filter_results is not None:
                add(message.content_filter_results)
            parts = message.content
            if parts.__class__ is list:
                for part in parts:
                    free += (part.input_audio, part.file)
            calls = message.tool_calls
            if calls:
                free += [call.custom for call in calls]
    return free


def _check_free(values: list[Any]) -> None:
    """Walks free-form values (an explicit stack, no recursion) for depth and 64-bit integers."""
    stack = [(value, 1) for value in values if value is not None]
    containers = (dict, list)
    while stack:
        value, depth = stack.pop()
        if isinstance(value, containers):
            if depth > MAX_FREE_DEPTH:
                raise InvalidEvent(
                    "too_deep", f"a free-form field nests over {MAX_FREE_DEPTH} deep"
                )
            items = value.values() if value.__class__ is dict else value
            depth += 1
            stack += [(item, depth) for item in items]
        elif value.__class__ is int and not -MAX_INT <= value < MAX_INT:
            raise InvalidEvent("out_of_range", f"an integer of {value.bit_length()} bits, over 64")


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of the contract, generated from the structs above."""
    return msgspec.json.schema(Event)
