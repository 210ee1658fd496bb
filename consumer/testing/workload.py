"""Realistic chat-completion traffic, for the demo and the benchmark.

`generate` builds a seeded stream of events that keeps the input contract (the
tests decode every one): many conversations interleaved, each a few turns of a
system prompt, user questions and assistant answers, some tool calls with their
results, mostly full history (trimmed at the front like a context window) and
some delta history, a share ending with `conversation.ended`. `produce` writes
such a stream to Kafka, as fast as the broker takes it or paced like live
traffic. `main` is `inkeep-consumer produce`.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from consumer import admin
from consumer.errors import ConsumerError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    Event = dict[str, Any]
    Record = tuple[bytes, bytes]
    Delivered = Callable[[bytes, bytes, float], None]

DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ENDED_PREFIX = b'{"event_type":"conversation.ended"'
"""Every ended event this module writes starts so; `is_ended` relies on it."""
RESOLUTION = "resolution"
"""The `conversation.properties` key that only `conversation.ended` events carry.

The benchmark's sink looks for it to tell the flush that follows the end.
"""

_encoder = msgspec.json.Encoder()


class WorkloadError(ConsumerError):
    """The workload could not be written to Kafka."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What a generated conversation looks like, as shares and ranges."""

    turns: tuple[int, int] = (3, 12)
    ended_share: float = 0.8
    delta_share: float = 0.2
    tool_share: float = 0.25
    """Share of turns where the assistant calls a tool before answering."""
    failed_share: float = 0.02
    """Share of full-history calls that failed (no response) and were retried."""
    image_share: float = 0.03
    duplicate_share: float = 0.0
    """Share of events sent twice, as a producer retry does."""
    active: int = 500
    """Conversations in progress at once: how many are interleaved."""
    context_chars: int = 500
    """Full history after the system prompt is trimmed, whole turns from the front, to this."""
    think_seconds: tuple[float, float] = (4.0, 40.0)
    feedback_share: float = 0.0
    """Share of replies the user rates (contract v1.1 `feedback`); a third of those are
    copied too (`interaction` `message:copied`).

    Drawn from a generator of the conversation's own, so a share of 0 leaves the
    stream byte for byte as before.
    """
    responses_share: float = 0.0
    """Share of conversations made through the Responses API (`response` events).

    Chosen from the conversation's id, not the stream's generator, so the same seed
    gives the same conversations whatever the share: only their wire form differs.
    """


_PRODUCTS = ("Acme Cloud", "the Acme CLI", "Acme Pipelines", "the Acme dashboard", "Acme Vault")
_OBJECTS = (
    "an API key",
    "a webhook",
    "a service account",
    "the billing plan",
    "a custom domain",
    "a deployment",
    "an environment variable",
    "the audit log",
    "a team invite",
    "SSO",
    "a rate limit",
    "a backup",
    "the staging workspace",
    "a build cache",
    "an access token",
)
_ACTIONS = ("rotate", "delete", "configure", "export", "restore", "share", "debug", "migrate")
_PLACES = ("Settings", "the project page", "the CLI", "the REST API", "Terraform", "the SDK")
_ERRORS = ("403 Forbidden", "a timeout", "quota exceeded", "invalid signature", "409 Conflict")
_CAUSES = (
    "the token was created before the role change",
    "the workspace is on the free plan",
    "the region does not match the bucket",
    "the webhook secret was regenerated",
    "a proxy strips the Authorization header",
    "the clock on the build runner is skewed",
)
_USER = (
    "How do I {a} {o}?",
    "How can I {a} {o} from {p}?",
    "Why does {o} fail with {e}?",
    "Is it possible to {a} {o} for a whole team?",
    "What is the difference between {o} and {o2}?",
    "I tried to {a} {o} and got {e}. What now?",
    "Can you show me how to {a} {o} in {p}?",
    "Thanks. And how do I {a} {o2} afterwards?",
)
_ANSWER = (
    "Open {p} and choose {o}, then select {A}.",
    "You can {a} {o} with the {cmd} command.",
    "This usually means {c}.",
    "Check that {c_neg}.",
    "In {P}, {o} belongs to the project, so every member with the admin role can {a} it.",
    "See the page on {o} in the docs for the full list of options.",
    "After you {a} {o}, allow a minute for the change to reach every region.",
    "If {e} persists, collect the request id from the response headers and contact support.",
)
_SYSTEM = (
    (
        "You are the documentation assistant for {P}. Answer only from the docs; when unsure, "
        "say so and link the closest page. Keep answers short and give exact menu paths."
    ),
    (
        "You help customers of {P} with setup and troubleshooting. Be concise, cite the docs, "
        "never invent settings, and ask one clarifying question when the request is ambiguous."
    ),
)
_MODELS = (
    ("gpt-4o", "gpt-4o-2024-08-06"),
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("gpt-4.1", "gpt-4.1-2025-04-14"),
    ("o3-mini", "o3-mini-2025-01-31"),
)
_TOOLS = ("search_docs", "get_account", "list_deployments", "create_ticket")
_APPS = ("docs-widget", "support-bot", "slack-app", "cli-assistant")
_LOCALES = ("en", "en", "en", "de", "fr", "ja")
_RESOLUTIONS = ("resolved", "resolved", "abandoned", "escalated")


_REASONS = ("inaccurate", "outdated", "unhelpful", "too_long")


def _user_text(rng: random.Random, *, follow_up: bool = True) -> str:
    o, o2 = rng.sample(_OBJECTS, 2)
    templates = _USER if follow_up else _USER[:-1]
    text = rng.choice(templates).format(
        a=rng.choice(_ACTIONS), o=o, o2=o2, p=rng.choice(_PLACES), e=rng.choice(_ERRORS)
    )
    return text[0].upper() + text[1:]


def _answer_text(rng: random.Random, sentences: int) -> str:
    parts = []
    for template in rng.sample(_ANSWER, sentences):
        cause = rng.choice(_CAUSES)
        text = template.format(
            a=rng.choice(_ACTIONS),
            A=rng.choice(_ACTIONS).capitalize(),
            o=rng.choice(_OBJECTS),
            p=rng.choice(_PLACES),
            P=rng.choice(_PRODUCTS),
            e=rng.choice(_ERRORS),
            c=cause,
            c_neg=cause.replace(" was ", " was not ").replace(" is ", " is not "),
            cmd=f"acme {rng.choice(_ACTIONS)}",
        )
        parts.append(text[0].upper() + text[1:])
    return " ".join(parts)


def _hex(rng: random.Random, bits: int = 64) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _tool_call(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """An assistant's call and the tool's answer to it."""
    name = rng.choice(_TOOLS)
    call_id = f"call_{_hex(rng, 96)}"
    if name == "search_docs":
        arguments: dict[str, Any] = {"query": f"{rng.choice(_ACTIONS)} {rng.choice(_OBJECTS)}"}
        result: Any = [
            {"title": rng.choice(_OBJECTS).capitalize(), "path": f"/docs/{_hex(rng, 16)}"}
            for _ in range(rng.randint(1, 3))
        ]
    elif name == "get_account":
        arguments = {"account_id": f"acct_{_hex(rng, 32)}"}
        result = {"plan": rng.choice(("free", "team", "enterprise")), "seats": rng.randint(1, 80)}
    elif name == "list_deployments":
        arguments = {"project": f"prj_{_hex(rng, 32)}", "limit": 3}
        result = [{"id": f"dpl_{_hex(rng, 32)}", "state": "READY"} for _ in range(2)]
    else:
        arguments = {"summary": _user_text(rng), "priority": rng.choice(("low", "normal"))}
        result = {"ticket": f"T-{rng.randint(1000, 99999)}", "status": "open"}
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    answer = {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}
    return call, answer


def _trimmed(history: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The newest whole turns (each starts with a user message) that fit in `budget` chars."""
    size = 0
    start = len(history)
    for index in range(len(history) - 1, -1, -1):
        size += _size(history[index])
        if history[index]["role"] == "user":
            if size > budget and start < len(history):
                break
            start = index
    return history[start:]


def _size(message: dict[str, Any]) -> int:
    content = message.get("content")
    size = len(content) if isinstance(content, str) else 120
    return size + 200 * len(message.get("tool_calls") or ())


class _Conversation:
    """One conversation's script: yields (seconds since its previous event, event)."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        self.rng = rng
        self.shape = shape
        self.id = f"conv_{_hex(rng, 80)}"
        self.model, self.model_version = rng.choice(_MODELS)
        self.delta = rng.random() < shape.delta_share
        self.say_full = rng.random() < 0.5
        role = "developer" if self.model.startswith("o") else "system"
        self.system = {"role": role, "content": rng.choice(_SYSTEM).format(P=rng.choice(_PRODUCTS))}
        self.history: list[dict[str, Any]] = []
        self.unsent: list[dict[str, Any]] = [self.system]
        self.meta = self._meta()
        share = shape.responses_share
        self.responses = share > 0 and random.Random(self.id).random() < share  # noqa: S311
        self.previous_response: str | None = None
        self.reactions = (
            random.Random(f"{self.id}/feedback")  # noqa: S311
            if shape.feedback_share > 0
            else None
        )

    def _meta(self) -> dict[str, Any]:
        rng = self.rng
        meta: dict[str, Any] = {
            "user_properties": {
                "id": f"user_{rng.randint(1, 50_000)}",
                "identificationType": "COOKIED",
            },
            "properties": {"app": rng.choice(_APPS), "locale": rng.choice(_LOCALES)},
            "tags": rng.sample(("docs", "billing", "auth", "deploy", "api"), rng.randint(1, 2)),
        }
        if rng.random() < 0.3:
            meta["external_url"] = f"https://support.acme.test/chats/{_hex(rng, 32)}"
        return meta

    def events(self) -> Iterator[tuple[float, Event]]:
        rng, shape = self.rng, self.shape
        delay = 0.0
        for turn in range(rng.randint(*shape.turns)):
            self._add(self._user_message(follow_up=turn > 0))
            if rng.random() < shape.tool_share:
                calls = [_tool_call(rng) for _ in range(1 if rng.random() < 0.8 else 2)]
                asking = {"role": "assistant", "content": None, "tool_calls": [c for c, _ in calls]}
                yield delay, self._completion(asking, "tool_calls", meta=turn == 0)
                self.history.append(asking)
                for _, result in calls:
                    self._add(result)
                delay = rng.uniform(0.2, 2.0)
            answer = {"role": "assistant", "content": _answer_text(rng, rng.randint(1, 3))}
            if not self.delta and rng.random() < shape.failed_share:
                yield delay, self._completion(None, None, meta=turn == 0, keep=True)
                delay = rng.uniform(0.5, 3.0)
            done = self._completion(answer, "stop", meta=turn == 0)
            yield delay, done
            self.history.append(answer)
            delay = rng.uniform(*shape.think_seconds)
            yield from self._react(done)
        if rng.random() < shape.ended_share:
            yield delay, self._ended()

    def _react(self, completion: Event) -> Iterator[tuple[float, Event]]:
        """What the user does with a reply: sometimes a rating, sometimes a copy too."""
        rng = self.reactions
        reply = completion.get("response")
        if rng is None or reply is None or rng.random() >= self.shape.feedback_share:
            return
        about = {
            "conversation_id": self.id,
            "occurred_at": None,
            "completion_id": reply["id"],
            "user_properties": {"id": self.meta["user_properties"]["id"]},
        }
        if rng.random() < 1 / 3:
            copied = {"event_type": "interaction", "event_id": f"evt_{_hex(rng)}", **about}
            yield rng.uniform(0.5, 3.0), {**copied, "name": "message:copied"}
        rating: Event = {"event_type": "feedback", "event_id": f"evt_{_hex(rng)}", **about}
        rating["rating"] = "positive" if rng.random() < 0.75 else "negative"
        if rating["rating"] == "negative":
            rating["reasons"] = [{"label": rng.choice(_REASONS), "details": ""}]
        yield rng.uniform(0.5, 3.0), rating

    def _user_message(self, *, follow_up: bool) -> dict[str, Any]:
        text = _user_text(self.rng, follow_up=follow_up)
        if self.rng.random() >= self.shape.image_share:
            return {"role": "user", "content": text}
        url = f"https://uploads.acme.test/{_hex(self.rng, 64)}.png"
        parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
        return {"role": "user", "content": parts}

    def _add(self, message: dict[str, Any]) -> None:
        self.history.append(message)
        self.unsent.append(message)

    def _request_messages(self) -> list[dict[str, Any]]:
        if self.delta:
            return self.unsent
        return [self.system, *_trimmed(self.history, self.shape.context_chars)]

    def _completion(
        self,
        reply: dict[str, Any] | None,
        finish_reason: str | None,
        *,
        meta: bool,
        keep: bool = False,
    ) -> Event:
        rng = self.rng
        event: Event = {
            "event_type": "chat.completion",
            "event_id": f"evt_{_hex(rng)}",
            "conversation_id": self.id,
            "occurred_at": None,
        }
        if self.delta:
            event["history"] = "delta"
        elif self.say_full:
            event["history"] = "full"
        messages = self._request_messages()
        event["request"] = {"model": self.model, "messages": messages, "temperature": 0.2}
        if not keep:
            self.unsent = []
        if reply is not None:
            prompt = sum(_size(m) for m in messages) // 4
            completion = _size(reply) // 4 + 1
            event["response"] = {
                "id": f"chatcmpl-{_hex(rng, 96)}",
                "object": "chat.completion",
                "created": None,
                "model": self.model_version,
                "choices": [{"index": 0, "finish_reason": finish_reason, "message": reply}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        event["latency_ms"] = rng.randint(300, 6000)
        if meta:
            event["conversation"] = self.meta
        return self._as_response(event) if self.responses else event

    def _as_response(self, event: Event) -> Event:
        """The same call made through the Responses API: instructions, input items, output."""
        chat = event.pop("request")
        request: dict[str, Any] = {
            "model": chat["model"],
            "instructions": self.system["content"],
            "input": [item for m in chat["messages"] if m is not self.system for item in _items(m)],
        }
        event.pop("history", None)
        if self.delta and self.previous_response is not None:
            request["previous_response_id"] = self.previous_response
        elif self.delta:
            event["history"] = "delta"
        event["event_type"] = "response"
        event["request"] = request
        completion = event.pop("response", None)
        if completion is not None:
            usage = completion["usage"]
            rid = "resp_" + completion["id"].removeprefix("chatcmpl-")
            event["response"] = {
                "id": rid,
                "object": "response",
                "created_at": None,
                "model": completion["model"],
                "status": "completed",
                "output": _items(completion["choices"][0]["message"]),
                "usage": {
                    "input_tokens": usage["prompt_tokens"],
                    "output_tokens": usage["completion_tokens"],
                    "total_tokens": usage["total_tokens"],
                },
            }
            self.previous_response = rid
        return {"event_type": event.pop("event_type"), **event}

    def _ended(self) -> Event:
        return {
            "event_type": "conversation.ended",
            "event_id": f"evt_{_hex(self.rng)}",
            "conversation_id": self.id,
            "occurred_at": None,
            "conversation": {"properties": {RESOLUTION: self.rng.choice(_RESOLUTIONS)}},
        }


def _items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat message as Responses API items."""
    role, content = message["role"], message.get("content")
    if role == "tool":
        return [
            {
                "type": "function_call_output",
                "call_id": message["tool_call_id"],
                "output": content,
            }
        ]
    if role == "assistant":
        items: list[dict[str, Any]] = []
        if content:
            text = {"type": "output_text", "text": content, "annotations": []}
            items.append({"type": "message", "role": "assistant", "content": [text]})
        items += [
            {
                "type": "function_call",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
            for call in message.get("tool_calls") or ()
        ]
        return items
    if isinstance(content, list):
        content = [
            {"type": "input_image", "image_url": part["image_url"]["url"]}
            if part["type"] == "image_url"
            else {"type": "input_text", "text": part["text"]}
            for part in content
        ]
    return [{"role": role, "content": content}]


def generate(
    n_conversations: int,
    seed: int,
    *,
    shape: Shape | None = None,
    start: datetime = DEFAULT_START,
    clock: Callable[[], datetime] | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) records of `n_conversations` conversations, interleaved in time order.

    The same seed and shape give the same bytes. Timestamps follow a simulated
    timeline from `start`, or read `clock` as each event is made (live traffic).
    """
    shape = shape or Shape()
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets.
    order = itertools.count()
    queue: list[tuple[float, int, Iterator[tuple[float, Event]] | None, Event | Record]] = []
    started = 0

    def begin(at: float) -> None:
        nonlocal started
        while started < n_conversations:
            started += 1
            script = _Conversation(rng, shape).events()
            first = next(script, None)
            if first is not None:
                heapq.heappush(queue, (at, next(order), script, first[1]))
                return

    spread = shape.think_seconds[1]
    for _ in range(min(shape.active, n_conversations)):
        begin(rng.uniform(0.0, spread))
    while queue:
        at, _, script, item = heapq.heappop(queue)
        if isinstance(item, tuple):
            yield item
            continue
        when = clock() if clock is not None else start + timedelta(seconds=at)
        item["occurred_at"] = when
        response = item.get("response")
        if response is not None:
            response["created_at" if "created_at" in response else "created"] = int(
                when.timestamp()
            )
        value = _encoder.encode(item)
        key = item["conversation_id"].encode()
        yield key, value
        if rng.random() < shape.duplicate_share:
            heapq.heappush(queue, (at + rng.uniform(0.05, 3.0), next(order), None, (key, value)))
        assert script is not None
        following = next(script, None)
        if following is None:
            begin(at + rng.uniform(0.0, 2.0))
        else:
            heapq.heappush(queue, (at + following[0], next(order), script, following[1]))


def is_ended(value: bytes) -> bool:
    """Whether a record made by `generate` is a `conversation.ended` event."""
    return value.startswith(ENDED_PREFIX)


class _Tally:
    """The broker's answers to sends: acknowledged count and the first failure."""

    def __init__(self, on_delivered: Delivered | None) -> None:
        self.on_delivered = on_delivered
        self.acknowledged = 0
        self.failure: BaseException | None = None

    def watch(self, future: asyncio.Future[Any], key: bytes, value: bytes) -> None:
        future.add_done_callback(lambda done: self._settled(done, key, value))

    def _settled(self, future: asyncio.Future[Any], key: bytes, value: bytes) -> None:
        if future.cancelled():
            self.failure = self.failure or WorkloadError("a send was cancelled")
        elif (error := future.exception()) is not None:
            self.failure = self.failure or error
        else:
            self.acknowledged += 1
            if self.on_delivered is not None:
                self.on_delivered(key, value, time.monotonic())

    def check(self) -> None:
        if self.failure is not None:
            raise WorkloadError(f"the broker refused a record: {self.failure!r}")


async def produce(  # noqa: PLR0913 - the knobs of a producer run, each with a default.
    bootstrap_servers: str,
    topic: str,
    events: Iterable[tuple[bytes, bytes]],
    *,
    rate: float = 0.0,
    linger_ms: int | None = None,
    progress: Callable[[int, float], None] | None = None,
    progress_every: float = 2.0,
    on_delivered: Delivered | None = None,
) -> int:
    """Write `events` to `topic`, keyed; returns how many the broker acknowledged.

    With `rate` (events/s) the records are paced evenly, as live traffic; without,
    they go as fast as batching allows. `on_delivered(key, value, monotonic_time)`
    is called as the broker acknowledges each record.
    """
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415 - Kafka only when producing.

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=linger_ms if linger_ms is not None else (5 if rate else 50),
        max_batch_size=512 * 1024,
        max_request_size=2 * 1024 * 1024,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    tally = _Tally(on_delivered)
    loop = asyncio.get_running_loop()
    began = loop.time()
    next_report = began + progress_every
    try:
        for sent, (key, value) in enumerate(events):
            now = loop.time()
            if rate > 0 and (wait := began + sent / rate - now) > 0.002:
                await asyncio.sleep(wait)
            tally.watch(await producer.send(topic, value, key=key), key, value)
            tally.check()
            if progress is not None and now >= next_report:
                progress(sent, now - began)
                next_report = now + progress_every
        await producer.flush()
    finally:
        await producer.stop()
    tally.check()
    if progress is not None:
        progress(tally.acknowledged, loop.time() - began)
    return tally.acknowledged


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inkeep-consumer produce",
        description="Write realistic generated chat-completion events to a Kafka topic.",
    )
    add = parser.add_argument
    add("--bootstrap-servers", default="localhost:9092", help="Kafka bootstrap servers")
    add("--topic", default="chat-completions", help="topic to write to")
    add("--conversations", type=int, default=1000, help="how many conversations")
    add("--rate", type=float, default=0.0, help="events/s, paced like live traffic; 0 = max")
    add("--seed", type=int, default=None, help="random seed (default: a fresh one)")
    add("--partitions", type=int, default=None, help="create the topic with this many if missing")
    add("--replication-factor", type=int, default=1, help="for a topic this command creates")
    add("--ended-share", type=float, default=Shape().ended_share, help="share ending explicitly")
    add("--active", type=int, default=None, help="conversations in progress at once")
    add(
        "--feedback-share",
        type=float,
        default=0.2,
        help="share of replies rated by their user (a third of those also copied)",
    )
    add(
        "--responses-share",
        type=float,
        default=0.2,
        help="share of conversations sent as Responses API events",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shares = (args.ended_share, args.responses_share, args.feedback_share)
    if args.conversations < 1 or args.rate < 0 or not all(0.0 <= s <= 1.0 for s in shares):
        _say(
            "error: --conversations must be >= 1, --rate >= 0, "
            "--ended-share, --responses-share and --feedback-share in [0, 1]"
        )
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    active = args.active or (max(1, int(args.rate * 5)) if args.rate else Shape().active)
    shape = Shape(
        ended_share=args.ended_share,
        active=active,
        responses_share=args.responses_share,
        feedback_share=args.feedback_share,
    )
    live = args.rate > 0
    events = generate(
        args.conversations,
        seed,
        shape=shape,
        start=datetime.now(UTC),
        clock=(lambda: datetime.now(UTC)) if live else None,
    )
    try:
        return asyncio.run(_produce_command(args, events, seed))
    except (WorkloadError, OSError) as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("stopped")
        return 130


async def _produce_command(
    args: argparse.Namespace, events: Iterator[tuple[bytes, bytes]], seed: int
) -> int:
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    try:
        if args.partitions is not None:
            created = await admin.create_topic(
                args.bootstrap_servers,
                args.topic,
                args.partitions,
                replication_factor=args.replication_factor,
                exist_ok=True,
            )
            if created:
                _say(f"created topic {args.topic} with {args.partitions} partitions")
        pace = f"{args.rate:g} events/s" if args.rate else "as fast as possible"
        _say(f"producing {args.conversations} conversations to {args.topic} ({pace}, seed {seed})")

        def report(count: int, elapsed: float) -> None:
            speed = count / elapsed if elapsed > 0 else 0.0
            _say(f"produced {count:,} events in {elapsed:.1f}s ({speed:,.0f} events/s)")

        await produce(args.bootstrap_servers, args.topic, events, rate=args.rate, progress=report)
    except (KafkaError, admin.AdminError) as exc:
        raise WorkloadError(f"Kafka at {args.bootstrap_servers}: {exc}") from exc
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201 - the command talks to its user.
