"""Delivers conversation bodies to the analytics API's `POST /conversations`.

The sink never drops a body: `deliver()` ends only when the API has taken it
(ACKED) or has refused it for good (REJECTED, for the dead-letter topic), or
when the caller cancels it. Everything in between (rate limits, outages,
timeouts, a refused key, a body too large) is waited out or repaired here,
with backoff that spares an API in trouble.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Self

import aiohttp
import structlog
from prometheus_client import Counter

from consumer import errors, metrics, payload
from consumer.fit import fit

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

log = structlog.get_logger(__name__)

MAX_RETRY_AFTER = 300.0
"""The longest wait a `Retry-After` answer can impose; a larger value is read as this."""

AUTH_PROBE_CAP = 30.0
"""While the key is refused, requests are retried at least this often."""

ANSWER_KEEP_BYTES = 65_536
"""How much of an answer body is kept for the dead-letter record and logs."""

MAX_CONFLICTS = 5
"""409 answers one delivery takes before the body is rejected: a conflict that outlasts
this many backed-off retries is about the body, not the moment."""

_BACKOFF_EXPONENT_CAP = 32

_TRANSIENT_4XX = frozenset({404, 405, 408, 409, 425})
"""4xx answers about the endpoint or the moment, not the body: retried (409 only
`MAX_CONFLICTS` times)."""


class Outcome(enum.StrEnum):
    ACKED = "acked"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a delivery ended. `body` is what was last sent; `shrunk` says a 413
    made the sink cut it further, so the caller keeps the uncut original."""

    outcome: Outcome
    status: int
    answer: bytes
    attempts: int
    body: bytes
    shrunk: bool = False


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int | None
    answer: bytes
    retry_after: float | None
    label: str
    sent: float


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Reads `Retry-After` as delta-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def classify(status: int, answer: bytes, retry_after: float | None) -> errors.SinkError | None:
    """Maps an HTTP answer to the error it means; None for success."""
    if 200 <= status < 300:
        return None
    if status in (401, 403):
        return errors.AuthFailed(
            f"the API key was refused ({status})", status=status, answer=answer
        )
    if status == 413:
        return errors.BodyTooLarge("the body is too large (413)", status=status, answer=answer)
    if status == 429 or (retry_after is not None and (status >= 500 or status == 408)):
        return errors.RateLimited(
            f"the API asked to wait ({status})", wait=retry_after, status=status, answer=answer
        )
    if 400 <= status < 500 and status not in _TRANSIENT_4XX:
        return errors.Rejected(f"the API refused the body ({status})", status=status, answer=answer)
    return errors.TransientError(
        f"the API did not take the body ({status})", status=status, answer=answer
    )


def _retry_reason(error: errors.SinkError, label: str) -> str:
    if isinstance(error, errors.AuthFailed):
        return "auth"
    if isinstance(error, errors.BodyTooLarge):
        return "too_large"
    if error.status is None:
        return label
    if error.status == 429:
        return "rate_limited"
    if error.status >= 500:
        return "server_error"
    return f"http_{error.status}"


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The first `limit` bytes of a body; an answer of any size costs at most that much."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _Pacer:
    """A global rate limit: requests start at least `1/rate` seconds apart, with no burst.

    Waiters queue in order, and the next start is counted from when the previous
    one really happened, so a late wake-up never lets two starts come closer.
    """

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            delay = self._next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = loop.time() + self._interval


class Sink:
    """One pooled HTTP client for the API, shared by every delivery in the process."""

    def __init__(  # noqa: PLR0913 - each knob is a documented setting.
        self,
        *,
        base_url: str,
        api_key: str,
        max_concurrency: int = 16,
        rate_limit: float = 0.0,
        timeout: float = 30.0,
        max_retry_delay: float = 60.0,
        base_retry_delay: float = 0.5,
        max_body_bytes: int = payload.MAX_BODY_BYTES,
        user_agent: str = "inkeep-conversation-consumer",
        on_answer: Callable[[bool, str], None] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._base = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
        self._max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._pacer = _Pacer(rate_limit) if rate_limit > 0 else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_retry_delay = max_retry_delay
        self._base_retry_delay = base_retry_delay
        self._max_body_bytes = max_body_bytes
        self._random = random.Random()  # noqa: S311 - jitter, not secrecy.
        self._session: aiohttp.ClientSession | None = None
        self._on_answer = on_answer
        self._answers: dict[str, Counter] = {}
        """`api_requests` by answer label, looked up once per label rather than per answer."""
        self._auth_ok = asyncio.Event()
        self._auth_ok.set()
        self._auth_changed = 0.0
        self.reachable = True
        """False while the latest request got no answer, or a 5xx."""

    @property
    def auth_failed(self) -> bool:
        return not self._auth_ok.is_set()

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_concurrency,
            limit_per_host=self._max_concurrency,
            ttl_dns_cache=300,
            keepalive_timeout=60.0,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, raise_for_status=False
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def deliver(
        self,
        conversation: payload.Conversation | None,
        body: bytes,
        *,
        path: str = "/conversations",
    ) -> Delivery:
        """Sends `body` to `path` until the API takes it or refuses it for good.

        `conversation` is the body decoded, for cutting a body found too large;
        None for bodies that cannot be cut (feedback and events).
        """
        await self.start()
        url = f"{self._base}{path}"
        # Keyword context, not log.bind(): binding costs on every delivery, even when
        # the debug lines below are filtered out.
        about = {"conversation_id": conversation.id if conversation else None, "path": path}
        shrunk = False
        if len(body) > self._max_body_bytes:
            refit = self._refit(conversation, self._max_body_bytes)
            if refit is None:
                return Delivery(Outcome.REJECTED, 413, b"", 0, body)
            conversation, body = refit
            shrunk = True
        attempts = 0
        failures = 0
        conflicts = 0
        while True:
            attempts += 1
            answer = await self._send(url, body)
            error = self._judge(answer)
            if error is None:
                log.debug("delivered", **about, attempts=attempts, bytes=len(body))
                status = answer.status or 0
                return Delivery(Outcome.ACKED, status, answer.answer, attempts, body, shrunk)
            if error.status == 409:
                conflicts += 1
            if not error.retriable or conflicts >= MAX_CONFLICTS:
                log.debug("api_refused_body", **about, status=error.status, attempts=attempts)
                log.debug("api_refusal_answer", **about, answer=answer.answer[:2000])
                status = error.status or 0
                return Delivery(Outcome.REJECTED, status, answer.answer, attempts, body, shrunk)
            metrics.api_retries.labels(reason=_retry_reason(error, answer.label)).inc()
            if isinstance(error, errors.BodyTooLarge):
                refit = self._refit(conversation, min(self._max_body_bytes, len(body) * 3 // 4))
                if refit is None:
                    log.warning("the body cannot be cut small enough", **about, bytes=len(body))
                    return Delivery(Outcome.REJECTED, 413, answer.answer, attempts, body, shrunk)
                conversation, body = refit
                shrunk = True
                log.info("the API found the body too large; cut further", **about, bytes=len(body))
                continue
            auth = isinstance(error, errors.AuthFailed)
            delay = self._backoff(failures, auth=auth)
            if isinstance(error, errors.RateLimited) and error.wait is not None:
                delay = max(delay, error.wait)
            failures += 1
            log.debug("retrying", **about, status=error.status, reason=answer.label, delay=delay)
            await self._pause(delay, auth=auth)

    async def _pause(self, delay: float, *, auth: bool) -> None:
        """Waits before the next try; while the key is refused, the wait ends early
        as soon as another request finds it accepted again."""
        if not auth:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._auth_ok.wait()

    def _refit(
        self, conversation: payload.Conversation | None, budget: int
    ) -> tuple[payload.Conversation, bytes] | None:
        if conversation is None:
            return None
        try:
            smaller, body, _ = fit(conversation, budget)
        except errors.CannotFit:
            return None
        return smaller, body

    def _backoff(self, failures: int, *, auth: bool) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**failures))."""
        cap = min(self._max_retry_delay, AUTH_PROBE_CAP) if auth else self._max_retry_delay
        ceiling = min(cap, self._base_retry_delay * 2 ** min(failures, _BACKOFF_EXPONENT_CAP))
        return self._random.uniform(0.0, ceiling)

    async def _send(self, url: str, body: bytes) -> _Answer:
        session = self._session
        if session is None:
            raise RuntimeError("the sink is closed")
        async with self._slots:
            if self._pacer is not None:
                await self._pacer.wait()
            sent = time.monotonic()
            try:
                async with session.post(
                    url, data=body, timeout=self._timeout, allow_redirects=False
                ) as response:
                    answer = await _read_at_most(response.content, ANSWER_KEEP_BYTES)
                    if 200 <= response.status < 300:
                        # Read to the end, unkept, so the connection can be reused.
                        while await response.content.readany():
                            pass
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    status = response.status
            except TimeoutError:
                return _Answer(None, b"", None, "timeout", sent)
            except aiohttp.ClientError:
                return _Answer(None, b"", None, "connection_error", sent)
        return _Answer(status, answer, retry_after, str(status), sent)

    def _judge(self, answer: _Answer) -> errors.SinkError | None:
        """Classifies an answer, counts it, and tracks reachability and auth (logged on change)."""
        if answer.status is None:
            error: errors.SinkError | None = errors.TransientError(answer.label)
        else:
            error = classify(answer.status, answer.answer, answer.retry_after)
        counter = self._answers.get(answer.label)
        if counter is None:
            counter = self._answers[answer.label] = metrics.api_requests.labels(status=answer.label)
        counter.inc()
        # Per answer; readiness judges it over a window (health.Reachability), which logs.
        self.reachable = answer.status is not None and answer.status < 500
        if self._on_answer is not None:
            self._on_answer(self.reachable, answer.label)
        # An answer to a request sent before the last change of state is stale: it says
        # nothing about the key now, so it does not flip the state back.
        if answer.sent < self._auth_changed:
            return error
        if isinstance(error, errors.AuthFailed) and self._auth_ok.is_set():
            self._auth_ok.clear()
            self._auth_changed = time.monotonic()
            metrics.auth_failing.set(1)
            log.error(
                "api_key_refused",
                detail=str(error),
                status=error.status,
                hint="check INKEEP_API_KEY; fetching is paused until the API accepts the key",
            )
        elif error is None and not self._auth_ok.is_set():
            self._auth_ok.set()
            self._auth_changed = time.monotonic()
            metrics.auth_failing.set(0)
            log.info("api_key_accepted", status=answer.status)
        return error
