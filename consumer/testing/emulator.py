"""A local stand-in for the analytics API, with faults on demand.

It takes `POST /conversations`, `POST /feedback` and `POST /events` the way the
official SDK's request schemas do (as far as msgspec can say it, plus the checks
msgspec cannot: dates with an offset, at least one message, typed user
properties, link objects), assigns the ids the API assigns, stores conversations
with the API's upsert rule (the message list is replaced, nothing merged), and
answers with the API's response models (`Conversation`, `Feedback`, the event),
every field present, the empty ones as null, so the SDK can read every answer.
Errors are RFC 7807 problem documents, and it can fail on purpose, per
endpoint: 5xx, 429 with `Retry-After`, added latency, dropped connections, a
refused key. Development runs it as `inkeep-consumer emulator`; tests use
`Emulator`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import hmac
import http
import random
import re
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Self, TypeAlias, TypeVar

import msgspec
import structlog
from aiohttp import web

from consumer import logs, payload

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from types import TracebackType

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

_DATE = (
    r"((\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|[13579][26]00)-02-29"
    r"|\d{4}-((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)"
    r"|(02)-(0[1-9]|1\d|2[0-8])))"
)
_TIME = r"([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?"
DATETIME_WITH_OFFSET = re.compile(rf"^{_DATE}T{_TIME}(Z|([+-]\d{{2}}:?\d{{2}}))$", re.ASCII)
"""The SDK's `z.string().datetime({ offset: true })`, character for character."""

_USER_ID_KEYS = ("id", "userId")
_USER_TEXT_KEYS = ("identificationType", "supportAgentName", "userType")
_CHUNK = 65_536
SHUTDOWN_TIMEOUT = 0.5
"""Seconds `stop()` lets unanswered requests (say, in injected latency) finish."""
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    413: "payload_too_large",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "internal_server_error",
}
"""The `code` values the SDK's error models name; other statuses derive theirs from the phrase."""
_encoder = msgspec.json.Encoder()

REQUEST_LOG_SIZE = 100_000
"""The request log is for tests and inspection; a long-running emulator keeps the latest."""


class Endpoint(enum.StrEnum):
    """The endpoints that take bodies; each has its own faults, recording and store."""

    CONVERSATIONS = "conversations"
    FEEDBACK = "feedback"
    EVENTS = "events"

    @property
    def path(self) -> str:
        return f"/{self.value}"


@dataclass
class Faults:
    """What the emulator does wrong, changeable while it runs.

    The `*_sequence` lists and `drop_next` apply to the next requests to the
    endpoints in `endpoints` (by default `POST /conversations` only), one entry
    per request, before the random shares are drawn. `Emulator.endpoint_faults`
    gives an endpoint faults of its own instead.
    """

    fail_rate: float = 0.0
    """Share of requests answered 500 or 503."""
    rate_limit_rate: float = 0.0
    """Share of requests answered 429."""
    retry_after: float | None = 1.0
    """`Retry-After` seconds sent with 429 answers (None: no header)."""
    latency: float = 0.0
    """Seconds added before each answer."""
    latency_jitter: float = 0.0
    """Up to this many more seconds, drawn uniformly per request."""
    drop_rate: float = 0.0
    """Share of requests whose connection is closed without an answer."""
    drop_next: int = 0
    status_sequence: list[int] = field(default_factory=list)
    """Statuses for the next requests (a 2xx entry means: serve that one normally)."""
    delay_sequence: list[float] = field(default_factory=list)
    """Seconds of latency for the next requests, instead of `latency`."""
    auth_failing: bool = False
    """Every authenticated request gets 401 while this is set."""
    auth_fail_window: tuple[float, float] | None = None
    """(start, end) seconds since the emulator started during which every request gets 401."""
    reject_ids: set[str] = field(default_factory=set)
    """Ids answered 422: a conversation's id; for feedback and events, the body's `id`
    or the id it is about (`messageId`, `conversationId`)."""
    endpoints: frozenset[Endpoint] = frozenset({Endpoint.CONVERSATIONS})
    """The POST endpoints these faults apply to (set `frozenset(Endpoint)` for all)."""


@dataclass(frozen=True, slots=True)
class RequestLog:
    """One request as the emulator saw it. `status` 0: dropped without an answer;
    499: the client left before the answer (its body was not taken).
    `conversation_id` is the conversation the request was about, when known."""

    time: float
    status: int
    conversation_id: str | None
    body_size: int
    method: str = "POST"
    path: str = "/conversations"


class InvalidBody(Exception):
    """A request the emulator does not take: the status and reason it answers with."""

    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        conversation_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.conversation_id = conversation_id


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """An RFC 7807 answer shaped like the API's (title, status, detail, code, legacy error)."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    code = _CODES.get(status) or phrase.lower().replace(" ", "_").replace("-", "_")
    document = {
        "title": phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "requestId": uuid.uuid4().hex,
        "error": {"code": code, "message": detail[:500]},
    }
    return web.Response(
        status=status,
        body=_encoder.encode(document),
        content_type="application/problem+json",
        headers=headers,
    )


# --- What the API answers: the SDK's response models, every field present. ---


class Link(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A message's link, as the SDK's `Links` schema has it (only `url` required)."""

    url: str
    label: str | None = None
    title: str | None = None
    description: str | None = None
    type: str | None = None
    breadcrumbs: list[str] | None = None


class ChatMessage(msgspec.Struct, frozen=True):
    """`OpenAIChatCompletionMessage`: a message as OpenAI would take it back."""

    role: str
    name: str | None
    content: str | list[payload.ContentItem]
    tool_calls: list[payload.ToolCall] | None


class ApiMessage(msgspec.Struct, frozen=True, rename="camel"):
    """`OpenAIExtendedMessage`: a stored message as the API answers it."""

    id: str
    type: Literal["openai"]
    external_id: str | None
    external_url: str | None
    conversation_id: str
    created_at: datetime
    updated_at: datetime
    role: str
    content: str | list[payload.ContentItem]
    name: str | None
    links: list[dict[str, Any]] | None
    properties: dict[str, Any] | None
    user_properties: dict[str, Any] | None
    tool_calls: list[payload.ToolCall] | None = msgspec.field(name="tool_calls")


class ApiConversation(msgspec.Struct, frozen=True, rename="camel"):
    """`OpenAIConversation`: a stored conversation as the API answers it."""

    id: str
    external_id: str | None
    external_url: str | None
    type: Literal["openai"]
    support_ticket_conversation_id: str | None
    created_at: datetime
    updated_at: datetime
    project_id: str | None
    integration_id: str | None
    properties: dict[str, Any] | None
    user_properties: dict[str, Any] | None
    tags: list[str] | None
    visibility: str | None
    messages: list[ApiMessage]
    messages_open_ai_format: list[ChatMessage] = msgspec.field(name="messagesOpenAIFormat")


class ApiFeedback(msgspec.Struct, frozen=True, rename="camel"):
    """The answer to `POST /feedback`."""

    id: str
    type: payload.FeedbackType
    message_id: str
    created_at: datetime
    reasons: list[payload.FeedbackReason] | None
    properties: dict[str, Any] | None
    user_properties: dict[str, Any] | None


class ApiFeedbackDetail(ApiFeedback, frozen=True, rename="camel"):
    """Feedback with the conversation and message it is about (get and list)."""

    conversation: ApiConversation
    message: ApiMessage


class ApiEvent(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """`SelectEvent`: the answer to `POST /events`; only the subject id of its kind is present."""

    id: str
    type: str
    created_at: datetime
    project_id: str | None
    integration_id: str | None
    properties: dict[str, Any] | None
    user_properties: dict[str, Any] | None
    entity_type: payload.EventEntity
    message_id: str | None = None
    conversation_id: str | None = None
    search_query: str | None = None


# --- What the API takes: the SDK's request schemas. ---


def validate(body: bytes, *, lenient: bool = False) -> payload.Conversation:
    """Checks a `POST /conversations` body as the API would; raises `InvalidBody` (400/422).

    Ids the SDK's schema lets a client leave out (the conversation's, a
    message's) are assigned here, as the API assigns them.
    """
    raw = _decode_json(body)
    if isinstance(raw, dict):
        _assign_ids(raw, lenient=lenient)
    conversation = _convert(raw, payload.Conversation, lenient=lenient)
    problem_found = _check_conversation(raw)
    if problem_found is not None:
        raise InvalidBody(422, problem_found)
    return conversation


def validate_feedback(body: bytes, *, lenient: bool = False) -> payload.LogFeedbackRequestBody:
    """Checks a `POST /feedback` body as the API would; raises `InvalidBody` (400/422)."""
    raw = _decode_json(body)
    feedback = _convert(raw, payload.LogFeedbackRequestBody, lenient=lenient)
    found = _check_dates(raw, "$") or _check_user_properties(raw.get("userProperties"), "$")
    if found is not None:
        raise InvalidBody(422, found)
    return feedback


_EVENT_SUBJECTS = {
    "message": "messageId",
    "conversation": "conversationId",
    "search": "searchQuery",
}
"""Each `entityType`'s id field; the API's union drops the others (lenient does too)."""


def validate_event(body: bytes, *, lenient: bool = False) -> payload.InsertEvent:
    """Checks a `POST /events` body as the API would; raises `InvalidBody` (400/422)."""
    raw = _decode_json(body)
    if lenient and isinstance(raw, dict) and raw.get("entityType") in _EVENT_SUBJECTS:
        keep = _EVENT_SUBJECTS[raw["entityType"]]
        raw = {k: v for k, v in raw.items() if k == keep or k not in _EVENT_SUBJECTS.values()}
    event = _convert(raw, payload.InsertEvent, lenient=lenient)
    found = _check_dates(raw, "$") or _check_user_properties(raw.get("userProperties"), "$")
    if found is not None:
        raise InvalidBody(422, found)
    return event


def _decode_json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidBody(400, f"Malformed JSON: {exc}") from None


def _convert(raw: Any, kind: type[_T], *, lenient: bool) -> _T:
    """Refuses a key the schema does not know, as the SDK would drop it (lenient: drops it)."""
    if lenient:
        raw = _known_only(raw, msgspec.inspect.type_info(kind))
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise InvalidBody(422, str(exc)) from None


def _assign_ids(raw: dict[str, Any], *, lenient: bool) -> None:
    """Fills the ids the API assigns (lenient: also strips unknown keys of links,
    which payload keeps as plain objects)."""
    if "id" not in raw:
        raw["id"] = _new_id()
    messages = raw.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        if "id" not in message:
            message["id"] = _new_id()
        links = message.get("links")
        if lenient and isinstance(links, list):
            message["links"] = [_known_only(link, _LINK_INFO) for link in links]


def _new_id() -> str:
    return str(uuid.uuid4())


def _known_only(value: Any, info: msgspec.inspect.Type) -> Any:
    """Drops the keys a struct does not know, at every depth, as the API's schema strips them."""
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            if _same_shape(value, member):
                return _known_only(value, member)
        return value
    if isinstance(info, msgspec.inspect.StructType) and isinstance(value, dict):
        known = {f.encode_name: f.type for f in info.fields}
        return {k: _known_only(v, known[k]) for k, v in value.items() if k in known}
    if isinstance(info, msgspec.inspect.ListType) and isinstance(value, list):
        return [_known_only(v, info.item_type) for v in value]
    return value


def _same_shape(value: Any, info: msgspec.inspect.Type) -> bool:
    if isinstance(value, dict):
        return isinstance(info, msgspec.inspect.StructType | msgspec.inspect.DictType)
    if isinstance(value, list):
        return isinstance(info, msgspec.inspect.ListType)
    return False


_LINK_INFO = msgspec.inspect.type_info(Link)


def _check_conversation(raw: dict[str, Any]) -> str | None:
    """The schema's rules that payload's types do not carry."""
    messages = raw["messages"]
    if not messages:
        return "The messages in the conversation must hold at least one message - at `$.messages`"
    found = _check_dates(raw, "$") or _check_user_properties(raw.get("userProperties"), "$")
    for index, message in enumerate(messages):
        where = f"$.messages[{index}]"
        found = (
            found
            or _check_dates(message, where)
            or _check_user_properties(message.get("userProperties"), where)
        )
        for number, call in enumerate(message.get("tool_calls") or ()):
            if "type" not in call:
                found = found or f"Required - at `{where}.tool_calls[{number}].type`"
        links = message.get("links") or ()
        for number, link in enumerate(links):
            found = found or _check_link(link, f"{where}.links[{number}]")
    return found


def _check_link(link: Any, where: str) -> str | None:
    try:
        msgspec.convert(link, Link)
    except msgspec.ValidationError as exc:
        reason, at, path = str(exc).partition(" - at `$")
        return f"{reason} - at `{where}{path}" if at else f"{reason} - at `{where}`"
    return None


def _check_dates(holder: dict[str, Any], where: str) -> str | None:
    for key in ("createdAt", "updatedAt"):
        value = holder.get(key)
        if value is not None and not DATETIME_WITH_OFFSET.match(value):
            return f"Invalid datetime: ISO 8601 with an offset is required - at `{where}.{key}`"
    return None


def _check_user_properties(properties: dict[str, Any] | None, where: str) -> str | None:
    if properties is None:
        return None
    for key in _USER_ID_KEYS:
        value = properties.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, str | int | float)
        ):
            return f"Expected string or number - at `{where}.userProperties.{key}`"
    for key in _USER_TEXT_KEYS:
        value = properties.get(key)
        if value is not None and not isinstance(value, str):
            return f"Expected string - at `{where}.userProperties.{key}`"
    return None


def _ndjson_line(body: bytes) -> bytes:
    if b"\n" in body or b"\r" in body:
        body = _encoder.encode(msgspec.json.decode(body))
    return body + b"\n"


def recording_path(record: Path, endpoint: Endpoint) -> Path:
    """Where accepted bodies of `endpoint` are written: `record` itself for conversations,
    `NAME.feedback.ndjson` and `NAME.events.ndjson` beside it for the others."""
    if endpoint is Endpoint.CONVERSATIONS:
        return record
    return record.with_name(f"{record.stem}.{endpoint.value}{record.suffix}")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Feedback:
    answer: ApiFeedback
    conversation_id: str
    message: ApiMessage
    """The message as it was when the feedback came, in case a later upsert drops it."""


_Admitted: TypeAlias = payload.Conversation | payload.LogFeedbackRequestBody | payload.InsertEvent


class Emulator:
    """The API's conversation, feedback and event endpoints on a local port, with
    state tests can read."""

    def __init__(  # noqa: PLR0913 - each knob is a command-line flag.
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] = ("demo-key",),
        record: Path | None = None,
        lenient: bool = False,
        max_body_bytes: int = payload.MAX_BODY_BYTES,
        faults: Faults | None = None,
        endpoint_faults: Mapping[Endpoint, Faults] | None = None,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_keys = tuple(api_keys)
        self.record = record
        self.lenient = lenient
        self.max_body_bytes = max_body_bytes
        self.faults = faults or Faults()
        self.endpoint_faults: dict[Endpoint, Faults] = dict(endpoint_faults or {})
        self.conversations: dict[str, payload.Conversation] = {}
        """Each conversation as last accepted (ids the API assigned filled in)."""
        self.stored: dict[str, ApiConversation] = {}
        """Each conversation as the API answers it."""
        self.feedback: dict[str, ApiFeedback] = {}
        self.events: dict[str, ApiEvent] = {}
        self.accepted: list[bytes] = []
        """The accepted `POST /conversations` bodies, as sent."""
        self.accepted_feedback: list[bytes] = []
        self.accepted_events: list[bytes] = []
        self.requests: deque[RequestLog] = deque(maxlen=REQUEST_LOG_SIZE)
        self._feedback: dict[str, _Feedback] = {}
        self._message_owner: dict[str, str] = {}
        self._event_owner: dict[str, str] = {}
        self._no_faults = Faults(endpoints=frozenset())
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not secrecy.
        self._runner: web.AppRunner | None = None
        self._record_files: dict[Endpoint, IO[bytes]] = {}
        self._started = 0.0
        self.url = ""

    async def start(self) -> str:
        """Binds the port and returns the base URL (the port is chosen when 0)."""
        app = web.Application()
        for endpoint in Endpoint:
            app.router.add_post(endpoint.path, self._poster(endpoint))
        app.router.add_get("/conversations", self._list)
        app.router.add_get("/conversations/external/{external_id}", self._get_external)
        app.router.add_get("/conversations/{id}", self._get)
        app.router.add_delete("/conversations/{id}", self._delete)
        app.router.add_get("/feedback", self._list_feedback)
        app.router.add_get("/feedback/{id}", self._get_feedback)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._started = time.monotonic()
        self.url = f"http://{self.host}:{self.port}"
        log.info("emulator listening", url=self.url, lenient=self.lenient)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        for file in self._record_files.values():
            file.close()
        self._record_files.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def posts(self) -> list[RequestLog]:
        """The `POST /conversations` requests, in arrival order."""
        return self.posts_to(Endpoint.CONVERSATIONS)

    def posts_to(self, endpoint: Endpoint) -> list[RequestLog]:
        """The POST requests to `endpoint`, in arrival order."""
        return [r for r in self.requests if r.method == "POST" and r.path == endpoint.path]

    def faults_for(self, endpoint: Endpoint) -> Faults:
        """The faults a POST to `endpoint` gets: its own, else the shared ones if they apply."""
        own = self.endpoint_faults.get(endpoint)
        if own is not None:
            return own
        return self.faults if endpoint in self.faults.endpoints else self._no_faults

    def _poster(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._post(request, endpoint)

        return handle

    async def _post(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        arrived = time.monotonic()
        body, size = await self._read_capped(request)
        faults = self.faults_for(endpoint)
        path = endpoint.path
        if faults.drop_next > 0 or self._chance(faults.drop_rate):
            faults.drop_next = max(faults.drop_next - 1, 0)
            self.requests.append(RequestLog(arrived, 0, None, size, path=path))
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        delay = faults.delay_sequence.pop(0) if faults.delay_sequence else faults.latency
        delay += self._random.uniform(0.0, faults.latency_jitter) if faults.latency_jitter else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
            if request.transport is None or request.transport.is_closing():
                self.requests.append(RequestLog(arrived, 499, None, size, path=path))
                return web.Response(status=499)
        try:
            admitted = self._admit(request, body, size, endpoint, faults)
            answer, conversation_id = self._take(admitted, body or b"", endpoint)
        except InvalidBody as refusal:
            self.requests.append(
                RequestLog(arrived, refusal.status, refusal.conversation_id, size, path=path)
            )
            log.debug("refused", path=path, status=refusal.status, detail=refusal.detail)
            return problem(refusal.status, refusal.detail, refusal.headers)
        self.requests.append(RequestLog(arrived, 200, conversation_id, size, path=path))
        return web.Response(body=answer, content_type="application/json")

    def _admit(
        self,
        request: web.Request,
        body: bytes | None,
        size: int,
        endpoint: Endpoint,
        faults: Faults,
    ) -> _Admitted:
        """Applies auth, injected faults, the limit and the schema, in the API's order."""
        self._authenticate(request, faults)
        self._injected_failure(faults)
        if body is None:
            raise InvalidBody(413, f"The body is {size} bytes; the limit is {self.max_body_bytes}")
        if request.content_type != "application/json":
            raise InvalidBody(415, "Content-Type must be application/json")
        admitted: _Admitted
        if endpoint is Endpoint.CONVERSATIONS:
            admitted = validate(body, lenient=self.lenient)
            about = {admitted.id}
            conversation_id: str | None = admitted.id
        elif endpoint is Endpoint.FEEDBACK:
            admitted = validate_feedback(body, lenient=self.lenient)
            about = {admitted.message_id, *_given(admitted.id)}
            conversation_id = self._message_owner.get(admitted.message_id)
        else:
            admitted = validate_event(body, lenient=self.lenient)
            about = {admitted.subject, *_given(admitted.id)}
            conversation_id = self._event_conversation(admitted)
        rejected = sorted(about & faults.reject_ids)
        if rejected:
            raise InvalidBody(422, f"{rejected[0]} is refused on purpose", None, conversation_id)
        return admitted

    async def _read_capped(self, request: web.Request) -> tuple[bytes | None, int]:
        """Reads the whole body, keeping it only within the limit (None beyond)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size <= self.max_body_bytes:
                chunks.append(chunk)
        return (b"".join(chunks) if size <= self.max_body_bytes else None), size

    def _chance(self, share: float) -> bool:
        return share > 0 and self._random.random() < share

    def _authenticate(self, request: web.Request, faults: Faults | None = None) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise InvalidBody(401, "Missing bearer token in the Authorization header", challenge)
        valid = any(hmac.compare_digest(key.strip(), k) for k in self.api_keys)
        if not valid or self._auth_down(faults or self.faults):
            raise InvalidBody(401, "Invalid API key", challenge)

    def _auth_down(self, faults: Faults) -> bool:
        if faults.auth_failing:
            return True
        window = faults.auth_fail_window
        if window is None:
            return False
        since = time.monotonic() - self._started
        return window[0] <= since < window[1]

    def _injected_failure(self, faults: Faults) -> None:
        status: int | None = None
        if faults.status_sequence:
            status = faults.status_sequence.pop(0)
        elif self._chance(faults.fail_rate):
            status = self._random.choice((500, 503))
        elif self._chance(faults.rate_limit_rate):
            status = 429
        if status is None or status < 300:
            return
        headers = {}
        if status == 429 and faults.retry_after is not None:
            headers["Retry-After"] = f"{faults.retry_after:g}"
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        raise InvalidBody(status, f"Injected {status} for testing", headers)

    def _take(
        self, admitted: _Admitted, body: bytes, endpoint: Endpoint
    ) -> tuple[bytes, str | None]:
        """Stores what was admitted and records its body; returns the answer and conversation."""
        if isinstance(admitted, payload.Conversation):
            answer = self._store(admitted)
            self.accepted.append(body)
            conversation_id: str | None = admitted.id
            encoded = _encoder.encode(answer)
        elif isinstance(admitted, payload.LogFeedbackRequestBody):
            feedback = self._store_feedback(admitted)
            self.accepted_feedback.append(body)
            conversation_id = self._feedback[feedback.id].conversation_id
            encoded = _encoder.encode(feedback)
        else:
            event = self._store_event(admitted)
            self.accepted_events.append(body)
            conversation_id = self._event_owner.get(event.id)
            encoded = _encoder.encode(event)
        self._write_record(endpoint, body)
        return encoded, conversation_id

    def _write_record(self, endpoint: Endpoint, body: bytes) -> None:
        if self.record is None:
            return
        file = self._record_files.get(endpoint)
        if file is None:
            file = recording_path(self.record, endpoint).open("ab")
            self._record_files[endpoint] = file
        file.write(_ndjson_line(body))
        file.flush()

    def _store(self, conversation: payload.Conversation) -> ApiConversation:
        now = _now()
        previous = self.stored.get(conversation.id)
        if previous is not None:
            for message in previous.messages:
                self._message_owner.pop(message.id, None)
        answer = _api_conversation(conversation, previous, now)
        self.conversations[conversation.id] = conversation
        self.stored[conversation.id] = answer
        for message in answer.messages:
            self._message_owner[message.id] = conversation.id
        return answer

    def _store_feedback(self, body: payload.LogFeedbackRequestBody) -> ApiFeedback:
        conversation_id = self._message_owner.get(body.message_id)
        if conversation_id is None:
            raise InvalidBody(422, f"Message {body.message_id} not found - at `$.messageId`")
        message = next(m for m in self.stored[conversation_id].messages if m.id == body.message_id)
        feedback = ApiFeedback(
            id=body.id if isinstance(body.id, str) else _new_id(),
            type=body.type,
            message_id=body.message_id,
            created_at=body.created_at or _now(),
            reasons=body.reasons,
            properties=body.properties,
            user_properties=body.user_properties,
        )
        self.feedback[feedback.id] = feedback
        self._feedback[feedback.id] = _Feedback(feedback, conversation_id, message)
        return feedback

    def _event_conversation(self, event: payload.InsertEvent) -> str | None:
        if event.entity_type is payload.EventEntity.MESSAGE:
            return self._message_owner.get(event.subject)
        if event.entity_type is payload.EventEntity.CONVERSATION:
            return event.subject
        return None

    def _store_event(self, body: payload.InsertEvent) -> ApiEvent:
        entity = body.entity_type
        conversation_id = self._event_conversation(body)
        if entity is payload.EventEntity.MESSAGE and conversation_id is None:
            raise InvalidBody(422, f"Message {body.subject} not found - at `$.messageId`")
        if entity is payload.EventEntity.CONVERSATION and body.subject not in self.stored:
            raise InvalidBody(422, f"Conversation {body.subject} not found - at `$.conversationId`")
        event = ApiEvent(
            id=body.id if isinstance(body.id, str) else _new_id(),
            type=body.type,
            created_at=body.created_at or _now(),
            project_id=body.project_id,
            integration_id=body.integration_id,
            properties=body.properties,
            user_properties=body.user_properties,
            entity_type=entity,
            message_id=_given_or_none(body.message_id),
            conversation_id=_given_or_none(body.conversation_id),
            search_query=_given_or_none(body.search_query),
        )
        self.events[event.id] = event
        if conversation_id is not None:
            self._event_owner[event.id] = conversation_id
        return event

    def _forget(self, conversation_id: str) -> None:
        """Drops a conversation and the feedback and events about it."""
        answer = self.stored.pop(conversation_id)
        self.conversations.pop(conversation_id, None)
        for message in answer.messages:
            self._message_owner.pop(message.id, None)
        for feedback_id in [
            k for k, v in self._feedback.items() if v.conversation_id == conversation_id
        ]:
            del self._feedback[feedback_id]
            del self.feedback[feedback_id]
        for event_id in [k for k, v in self._event_owner.items() if v == conversation_id]:
            del self._event_owner[event_id]
            del self.events[event_id]

    async def _get(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["id"]
        return self._read(request, conversation_id, lambda: self.stored.get(conversation_id))

    async def _get_external(self, request: web.Request) -> web.StreamResponse:
        external_id = request.match_info["external_id"]
        return self._read(
            request,
            None,
            lambda: next((c for c in self.stored.values() if c.external_id == external_id), None),
            f"Conversation with externalId {external_id}",
        )

    def _read(
        self,
        request: web.Request,
        conversation_id: str | None,
        find: Callable[[], ApiConversation | ApiFeedbackDetail | None],
        what: str | None = None,
    ) -> web.StreamResponse:
        arrived = time.monotonic()
        try:
            self._authenticate(request)
        except InvalidBody as refusal:
            self._log_get(request, arrived, refusal.status, conversation_id)
            return problem(refusal.status, refusal.detail, refusal.headers)
        found = find()
        if found is None:
            self._log_get(request, arrived, 404, conversation_id)
            return problem(404, f"{what or f'Conversation {conversation_id}'} not found")
        self._log_get(request, arrived, 200, conversation_id)
        return web.Response(body=_encoder.encode(found), content_type="application/json")

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        conversation_id = request.match_info["id"]
        try:
            self._authenticate(request)
        except InvalidBody as refusal:
            self._log_get(request, arrived, refusal.status, conversation_id)
            return problem(refusal.status, refusal.detail, refusal.headers)
        if conversation_id not in self.stored:
            self._log_get(request, arrived, 404, conversation_id)
            return problem(404, f"Conversation {conversation_id} not found")
        self._forget(conversation_id)
        self._log_get(request, arrived, 200, conversation_id)
        document = {"success": True, "message": f"Conversation {conversation_id} deleted"}
        return web.Response(body=_encoder.encode(document), content_type="application/json")

    async def _list(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        try:
            self._authenticate(request)
            limit = _query_int(request, "limit", 20, 1)
            offset = _query_int(request, "offset", 0, 0)
        except InvalidBody as refusal:
            self._log_get(request, arrived, refusal.status, None)
            return problem(refusal.status, refusal.detail, refusal.headers)
        page = list(self.stored.values())[offset : offset + limit]
        document = {
            "conversations": page,
            "total": len(self.stored),
            "pageSize": limit,
            "count": len(page),
        }
        self._log_get(request, arrived, 200, None)
        return web.Response(body=_encoder.encode(document), content_type="application/json")

    def _feedback_detail(self, feedback_id: str) -> ApiFeedbackDetail | None:
        held = self._feedback.get(feedback_id)
        if held is None:
            return None
        conversation = self.stored[held.conversation_id]
        message = next(
            (m for m in conversation.messages if m.id == held.answer.message_id), held.message
        )
        fields = msgspec.structs.asdict(held.answer)
        return ApiFeedbackDetail(**fields, conversation=conversation, message=message)

    async def _get_feedback(self, request: web.Request) -> web.StreamResponse:
        feedback_id = request.match_info["id"]
        held = self._feedback.get(feedback_id)
        return self._read(
            request,
            held.conversation_id if held else None,
            lambda: self._feedback_detail(feedback_id),
            f"Feedback {feedback_id}",
        )

    async def _list_feedback(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        try:
            self._authenticate(request)
            limit = _query_int(request, "limit", 10, 1)
            offset = _query_int(request, "offset", 0, 0)
        except InvalidBody as refusal:
            self._log_get(request, arrived, refusal.status, None)
            return problem(refusal.status, refusal.detail, refusal.headers)
        rated: dict[payload.FeedbackType, list[str]] = {kind: [] for kind in payload.FeedbackType}
        for feedback in self.feedback.values():
            rated[feedback.type].append(feedback.id)
        positive = rated[payload.FeedbackType.POSITIVE]
        negative = rated[payload.FeedbackType.NEGATIVE]
        document = {
            "positiveFeedbackCount": len(positive),
            "negativeFeedbackCount": len(negative),
            "positiveFeedback": [
                self._feedback_detail(i) for i in positive[offset : offset + limit]
            ],
            "negativeFeedback": [
                self._feedback_detail(i) for i in negative[offset : offset + limit]
            ],
        }
        self._log_get(request, arrived, 200, None)
        return web.Response(body=_encoder.encode(document), content_type="application/json")

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    def _log_get(
        self, request: web.Request, arrived: float, status: int, conversation_id: str | None
    ) -> None:
        self.requests.append(
            RequestLog(arrived, status, conversation_id, 0, request.method, request.path)
        )


def _given(value: str | msgspec.UnsetType | None) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else ()


def _given_or_none(value: str | msgspec.UnsetType | None) -> str | None:
    return value if isinstance(value, str) else None


def _api_conversation(
    conversation: payload.Conversation, previous: ApiConversation | None, now: datetime
) -> ApiConversation:
    """The conversation as the API answers it: times it assigns filled in, a message
    already stored keeping the time it was first stored."""
    first_seen = {m.id: m.created_at for m in previous.messages} if previous else {}
    created = [m.created_at or first_seen.get(m.id) or now for m in conversation.messages]
    messages = [
        ApiMessage(
            id=m.id,
            type="openai",
            external_id=m.external_id,
            external_url=m.external_url,
            conversation_id=conversation.id,
            created_at=created_at,
            updated_at=m.updated_at or created_at,
            role=m.role,
            content=m.content,
            name=m.name,
            links=m.links,
            properties=m.properties,
            user_properties=m.user_properties,
            tool_calls=m.tool_calls,
        )
        for m, created_at in zip(conversation.messages, created, strict=True)
    ]
    return ApiConversation(
        id=conversation.id,
        external_id=conversation.external_id,
        external_url=conversation.external_url,
        type="openai",
        support_ticket_conversation_id=conversation.support_ticket_conversation_id,
        created_at=conversation.created_at or (previous.created_at if previous else now),
        updated_at=conversation.updated_at or now,
        project_id=conversation.project_id,
        integration_id=conversation.integration_id,
        properties=conversation.properties,
        user_properties=conversation.user_properties,
        tags=conversation.tags,
        visibility=conversation.visibility,
        messages=messages,
        messages_open_ai_format=[
            ChatMessage(role=m.role, name=m.name, content=m.content, tool_calls=m.tool_calls)
            for m in conversation.messages
        ],
    )


def _query_int(request: web.Request, name: str, default: int, minimum: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidBody(400, f"Query parameter {name} must be an integer") from None
    if value < minimum:
        raise InvalidBody(400, f"Query parameter {name} must be at least {minimum}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _window(text: str) -> tuple[float, float]:
    start, sep, end = text.partition(":")
    try:
        window = (float(start), float(end))
    except ValueError:
        window = (0.0, -1.0)
    if not sep or window[1] < window[0]:
        raise argparse.ArgumentTypeError("must be START:END seconds, START <= END")
    return window


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="inkeep-consumer emulator",
        description="A local analytics API (conversations, feedback, events) with fault injection.",
    )
    cli.add_argument("--host", default="127.0.0.1")
    cli.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    cli.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accepted bearer key; repeat for several (default: demo-key)",
    )
    cli.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="append accepted conversation bodies as NDJSON (feedback and events beside it)",
    )
    cli.add_argument("--lenient", action="store_true", help="ignore unknown fields")
    cli.add_argument("--max-body-bytes", type=int, default=payload.MAX_BODY_BYTES)
    cli.add_argument("--fail-rate", type=_share, default=0.0, metavar="P", help="share of 500/503")
    cli.add_argument(
        "--rate-limit-rate", type=_share, default=0.0, metavar="P", help="share of 429"
    )
    cli.add_argument("--retry-after", type=float, default=1.0, metavar="SECONDS")
    cli.add_argument("--latency-ms", type=float, default=0.0, metavar="N")
    cli.add_argument("--latency-jitter-ms", type=float, default=0.0, metavar="N")
    cli.add_argument("--drop-rate", type=_share, default=0.0, metavar="P")
    cli.add_argument("--auth-fail-window", type=_window, metavar="START:END")
    cli.add_argument(
        "--fault-endpoint",
        action="append",
        dest="fault_endpoints",
        type=Endpoint,
        choices=list(Endpoint),
        help="POST endpoint the faults apply to; repeat for several (default: conversations)",
    )
    cli.add_argument("--seed", type=int)
    cli.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error", "critical")
    )
    cli.add_argument("--log-format", default="json", choices=("json", "console"))
    return cli


def from_args(args: argparse.Namespace) -> Emulator:
    faults = Faults(
        fail_rate=args.fail_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after=args.retry_after,
        latency=args.latency_ms / 1000,
        latency_jitter=args.latency_jitter_ms / 1000,
        drop_rate=args.drop_rate,
        auth_fail_window=args.auth_fail_window,
        endpoints=frozenset(args.fault_endpoints or (Endpoint.CONVERSATIONS,)),
    )
    return Emulator(
        host=args.host,
        port=args.port,
        api_keys=args.api_keys or ("demo-key",),
        record=args.record,
        lenient=args.lenient,
        max_body_bytes=args.max_body_bytes,
        faults=faults,
        seed=args.seed,
    )


async def serve(emulator: Emulator) -> None:
    """Runs until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = await emulator.start()
    print(url, flush=True)  # noqa: T201 - scripts read the bound URL from stdout.
    try:
        await stop.wait()
    finally:
        await emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    emulator = from_args(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(emulator))
    accepted = (
        f"{len(emulator.accepted)} conversation, {len(emulator.accepted_feedback)} feedback "
        f"and {len(emulator.accepted_events)} event bodies accepted"
    )
    print(f"emulator stopped; {accepted}", file=sys.stderr)  # noqa: T201
    return 0
