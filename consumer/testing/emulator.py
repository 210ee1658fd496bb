"""A local stand-in for the analytics API's conversation endpoints, with faults on demand.

It validates `POST /conversations` the way the official SDK's schema does (as
far as msgspec can say it, plus the checks msgspec cannot: dates with an
offset, at least one message, typed user properties), stores conversations
with the API's upsert rule (the message list is replaced, nothing merged),
answers errors as RFC 7807 problem documents, and can fail on purpose: 5xx,
429 with `Retry-After`, added latency, dropped connections, a refused key.
Development runs it as `inkeep-consumer emulator`; tests use `Emulator`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import msgspec
import structlog
from aiohttp import web

from consumer import logs, payload

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import TracebackType

log = structlog.get_logger(__name__)

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


@dataclass
class Faults:
    """What the emulator does wrong, changeable while it runs.

    The `*_sequence` lists and `drop_next` apply to the next `POST /conversations`
    requests, one entry per request, before the random shares are drawn.
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
    """Conversation ids answered 422."""


@dataclass(frozen=True, slots=True)
class RequestLog:
    """One request as the emulator saw it. `status` 0: dropped without an answer;
    499: the client left before the answer (its body was not taken)."""

    time: float
    status: int
    conversation_id: str | None
    body_size: int
    method: str = "POST"
    path: str = "/conversations"


class Refused(Exception):
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


def validate(body: bytes, *, lenient: bool = False) -> payload.Conversation:
    """Checks a body as the API would; raises `Refused` (400/422) with the reason."""
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise Refused(400, f"Malformed JSON: {exc}") from None
    try:
        if lenient:
            conversation = msgspec.convert(
                _known_only(raw, msgspec.inspect.type_info(payload.Conversation)),
                payload.Conversation,
            )
        else:
            conversation = payload.decode(body)
    except msgspec.ValidationError as exc:
        raise Refused(422, str(exc)) from None
    problem_found = _check_beyond_types(raw)
    if problem_found is not None:
        raise Refused(422, problem_found)
    return conversation


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


def _check_beyond_types(raw: dict[str, Any]) -> str | None:
    """The schema's rules that payload's types do not carry."""
    messages = raw["messages"]
    if not messages:
        return "The messages in the conversation must hold at least one message - at `$.messages`"
    found = _check_dates(raw, "$") or _check_user_properties(raw.get("userProperties"))
    for index, message in enumerate(messages):
        where = f"$.messages[{index}]"
        found = found or _check_dates(message, where)
        for number, call in enumerate(message.get("tool_calls") or ()):
            if "type" not in call:
                found = found or f"Required - at `{where}.tool_calls[{number}].type`"
    return found


def _check_dates(holder: dict[str, Any], where: str) -> str | None:
    for key in ("createdAt", "updatedAt"):
        value = holder.get(key)
        if value is not None and not DATETIME_WITH_OFFSET.match(value):
            return f"Invalid datetime: ISO 8601 with an offset is required - at `{where}.{key}`"
    return None


def _check_user_properties(properties: dict[str, Any] | None) -> str | None:
    if properties is None:
        return None
    for key in _USER_ID_KEYS:
        value = properties.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, str | int | float)
        ):
            return f"Expected string or number - at `$.userProperties.{key}`"
    for key in _USER_TEXT_KEYS:
        value = properties.get(key)
        if value is not None and not isinstance(value, str):
            return f"Expected string - at `$.userProperties.{key}`"
    return None


def _ndjson_line(body: bytes) -> bytes:
    if b"\n" in body or b"\r" in body:
        body = _encoder.encode(msgspec.json.decode(body))
    return body + b"\n"


class Emulator:
    """The API's conversation endpoints on a local port, with state tests can read."""

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
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_keys = tuple(api_keys)
        self.record = record
        self.lenient = lenient
        self.max_body_bytes = max_body_bytes
        self.faults = faults or Faults()
        self.conversations: dict[str, payload.Conversation] = {}
        self.accepted: list[bytes] = []
        self.requests: deque[RequestLog] = deque(maxlen=REQUEST_LOG_SIZE)
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not secrecy.
        self._runner: web.AppRunner | None = None
        self._record_file: IO[bytes] | None = None
        self._started = 0.0
        self.url = ""

    async def start(self) -> str:
        """Binds the port and returns the base URL (the port is chosen when 0)."""
        app = web.Application()
        app.router.add_post("/conversations", self._post)
        app.router.add_get("/conversations", self._list)
        app.router.add_get("/conversations/{id}", self._get)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.record is not None:
            self._record_file = self.record.open("ab")
        self._started = time.monotonic()
        self.url = f"http://{self.host}:{self.port}"
        log.info("emulator listening", url=self.url, lenient=self.lenient)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

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
        return [r for r in self.requests if r.method == "POST" and r.path == "/conversations"]

    async def _post(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body, size = await self._read_capped(request)
        faults = self.faults
        if faults.drop_next > 0 or self._chance(faults.drop_rate):
            faults.drop_next = max(faults.drop_next - 1, 0)
            self.requests.append(RequestLog(arrived, 0, None, size))
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        delay = faults.delay_sequence.pop(0) if faults.delay_sequence else faults.latency
        delay += self._random.uniform(0.0, faults.latency_jitter) if faults.latency_jitter else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
            if request.transport is None or request.transport.is_closing():
                self.requests.append(RequestLog(arrived, 499, None, size))
                return web.Response(status=499)
        try:
            conversation = self._admit(request, body, size)
        except Refused as refusal:
            self.requests.append(RequestLog(arrived, refusal.status, refusal.conversation_id, size))
            log.debug("refused", status=refusal.status, detail=refusal.detail)
            return problem(refusal.status, refusal.detail, refusal.headers)
        self._store(conversation, body or b"")
        self.requests.append(RequestLog(arrived, 200, conversation.id, size))
        return web.Response(body=payload.encode(conversation), content_type="application/json")

    def _admit(self, request: web.Request, body: bytes | None, size: int) -> payload.Conversation:
        """Applies auth, injected faults, the limit and the schema, in the API's order."""
        self._authenticate(request)
        self._injected_failure()
        if body is None:
            raise Refused(413, f"The body is {size} bytes; the limit is {self.max_body_bytes}")
        if request.content_type != "application/json":
            raise Refused(415, "Content-Type must be application/json")
        conversation = validate(body, lenient=self.lenient)
        if conversation.id in self.faults.reject_ids:
            raise Refused(
                422, f"Conversation {conversation.id} is refused on purpose", None, conversation.id
            )
        return conversation

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

    def _authenticate(self, request: web.Request) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Refused(401, "Missing bearer token in the Authorization header", challenge)
        valid = any(hmac.compare_digest(key.strip(), k) for k in self.api_keys)
        if not valid or self._auth_down():
            raise Refused(401, "Invalid API key", challenge)

    def _auth_down(self) -> bool:
        if self.faults.auth_failing:
            return True
        window = self.faults.auth_fail_window
        if window is None:
            return False
        since = time.monotonic() - self._started
        return window[0] <= since < window[1]

    def _injected_failure(self) -> None:
        faults = self.faults
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
        raise Refused(status, f"Injected {status} for testing", headers)

    def _store(self, conversation: payload.Conversation, body: bytes) -> None:
        self.conversations[conversation.id] = conversation
        self.accepted.append(body)
        if self._record_file is not None:
            self._record_file.write(_ndjson_line(body))
            self._record_file.flush()

    async def _get(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        conversation_id = request.match_info["id"]
        try:
            self._authenticate(request)
        except Refused as refusal:
            self._log_get(request, arrived, refusal.status, conversation_id)
            return problem(refusal.status, refusal.detail, refusal.headers)
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            self._log_get(request, arrived, 404, conversation_id)
            return problem(404, f"Conversation {conversation_id} not found")
        self._log_get(request, arrived, 200, conversation_id)
        return web.Response(body=payload.encode(conversation), content_type="application/json")

    async def _list(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        try:
            self._authenticate(request)
            limit = _query_int(request, "limit", 20, 1)
            offset = _query_int(request, "offset", 0, 0)
        except Refused as refusal:
            self._log_get(request, arrived, refusal.status, None)
            return problem(refusal.status, refusal.detail, refusal.headers)
        page = list(self.conversations.values())[offset : offset + limit]
        document = {
            "conversations": [msgspec.Raw(payload.encode(c)) for c in page],
            "total": len(self.conversations),
            "pageSize": limit,
            "count": len(page),
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


def _query_int(request: web.Request, name: str, default: int, minimum: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Refused(400, f"Query parameter {name} must be an integer") from None
    if value < minimum:
        raise Refused(400, f"Query parameter {name} must be at least {minimum}")
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
        description="A local analytics API (POST/GET /conversations) with fault injection.",
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
    cli.add_argument("--record", type=Path, metavar="FILE", help="append accepted bodies as NDJSON")
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
    print(f"emulator stopped; {len(emulator.accepted)} bodies accepted", file=sys.stderr)  # noqa: T201
    return 0
