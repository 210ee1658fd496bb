"""`inkeep-consumer dlq inspect|replay`: read the dead-letter topic and re-drive what can be.

Two kinds of dead letter (see consumer/deadletter.py): an invalid input record (the
producer's key and bytes) and a conversation body the worker did not log whole.
Replay puts records that now decode back on the input topic with their key, and
sends conversation bodies to the API through the worker's own `Sink`, but only after
reading the conversation back: the API replaces the whole message list, so a body is
sent only when it extends what the API holds. What was replayed is written to a
compacted ledger topic (`<dlq>.replayed`, keyed by the dead letter's partition and
offset) after the effect is acknowledged, so a second run does not repeat it.
Nothing is ever deleted. The pure parts (reading headers, filters, the summary, the
guard) have no Kafka or HTTP in them, for unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from consumer import deadletter, payload
from consumer.errors import ConfigError, InvalidEvent
from consumer.events import decode_event

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import aiohttp
    from aiokafka import AIOKafkaProducer

    from consumer.settings import Settings
    from consumer.sink import Sink

log = structlog.get_logger(__name__)

LEDGER_SUFFIX = ".replayed"
LEDGER_TOPIC_CONFIG = {"cleanup.policy": "compact"}
REPLAY_HEADER = "dlq.replayed_from"
"""Added to a re-produced input record: `<dlq topic>:<partition>:<offset>`."""

_json = msgspec.json.Encoder()


class Kind(enum.StrEnum):
    RECORD = "record"
    CONVERSATION = "conversation"


class Action(enum.StrEnum):
    """What replay did (or, in a dry run, would do) with one dead letter."""

    PRODUCE = "produce"
    SEND = "send"
    ALREADY_REPLAYED = "already_replayed"
    SKIP_STILL_INVALID = "skip_still_invalid"
    SKIP_API_HOLDS_AS_MANY = "skip_api_holds_as_many"
    SKIP_API_HOLDS_NEWER = "skip_api_holds_newer"
    SKIP_API_HOLDS_OTHER = "skip_api_holds_other"
    SKIP_UNREADABLE = "skip_unreadable"
    FAILED = "failed"


class Dead(msgspec.Struct, frozen=True):
    """One dead letter as read back, headers decoded."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def reason(self) -> str:
        return self._text("error") or "unknown"

    @property
    def kind(self) -> Kind:
        return Kind.CONVERSATION if "conversation_id" in self.headers else Kind.RECORD

    @property
    def conversation_id(self) -> str | None:
        return self._text("conversation_id")

    @property
    def path(self) -> str:
        """The endpoint a request body was for; the previous release wrote conversations only."""
        return self._text("api.path") or deadletter.CONVERSATIONS

    @property
    def source_topic(self) -> str | None:
        return self._text("source.topic")

    @property
    def source_partition(self) -> int | None:
        return _int(self._text("source.partition"))

    @property
    def ledger_key(self) -> bytes:
        return f"{self.partition}:{self.offset}".encode()

    def _text(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return None if raw is None else raw.decode(errors="replace")

    def describe(self, *, show_content: bool, replayed: bool = False) -> dict[str, Any]:
        """The record for `inspect`: headers decoded; the value and API answer only on request."""
        out: dict[str, Any] = {
            "partition": self.partition,
            "offset": self.offset,
            "time": _iso(self.timestamp_ms),
            "kind": str(self.kind),
            "reason": self.reason,
            "key": None if self.key is None else self.key.decode(errors="replace"),
            "value_bytes": len(self.value),
            "replayed": replayed,
        }
        for name, raw in self.headers.items():
            if name == "api.answer" and not show_content:
                continue
            out[name] = raw.decode(errors="replace")
        if show_content:
            out["value"] = self.value.decode(errors="replace")
        return out


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def from_kafka(record: Any) -> Dead:
    """A `Dead` from an aiokafka `ConsumerRecord` (last header of a name wins)."""
    return Dead(
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value or b"",
        headers={name: bytes(value or b"") for name, value in record.headers or ()},
    )


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command acts on; every given condition must hold."""

    reasons: frozenset[str] = frozenset()
    kind: Kind | None = None
    partitions: frozenset[int] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    from_offset: int | None = None
    until_offset: int | None = None
    """Offsets in the dead-letter topic: `from_offset` inclusive, `until_offset` exclusive."""

    def __call__(self, dead: Dead) -> bool:
        return (
            (not self.reasons or dead.reason in self.reasons)
            and (self.kind is None or dead.kind is self.kind)
            and (not self.partitions or dead.partition in self.partitions)
            and (self.since_ms is None or dead.timestamp_ms >= self.since_ms)
            and (self.until_ms is None or dead.timestamp_ms < self.until_ms)
            and (self.from_offset is None or dead.offset >= self.from_offset)
            and (self.until_offset is None or dead.offset < self.until_offset)
        )


@dataclass(slots=True)
class Summary:
    """Counts by reason, kind and source, and the time range, of the chosen dead letters."""

    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    first_ms: int | None = None
    last_ms: int | None = None
    replayed: int = 0

    def add(self, dead: Dead, *, replayed: bool = False) -> None:
        self.total += 1
        self.by_reason[dead.reason] += 1
        self.by_kind[str(dead.kind)] += 1
        self.by_source[f"{dead.source_topic or '?'}/{dead.source_partition}"] += 1
        if self.first_ms is None or dead.timestamp_ms < self.first_ms:
            self.first_ms = dead.timestamp_ms
        if self.last_ms is None or dead.timestamp_ms > self.last_ms:
            self.last_ms = dead.timestamp_ms
        self.replayed += replayed

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "replayed": self.replayed,
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_source": dict(sorted(self.by_source.items())),
            "first": None if self.first_ms is None else _iso(self.first_ms),
            "last": None if self.last_ms is None else _iso(self.last_ms),
        }


def summarize(dead: Iterable[Dead], replayed: frozenset[bytes] = frozenset()) -> Summary:
    summary = Summary()
    for d in dead:
        summary.add(d, replayed=d.ledger_key in replayed)
    return summary


class HeldMessage(msgspec.Struct, frozen=True, rename="camel"):
    id: str = ""
    created_at: datetime | None = None


class Held(msgspec.Struct, frozen=True):
    """What the guard needs of a conversation: its message ids and times (other fields ignored)."""

    messages: list[HeldMessage] = []


_held_decoder = msgspec.json.Decoder(Held)


def held_of(conversation: payload.Conversation) -> Held:
    return Held([HeldMessage(m.id, m.created_at) for m in conversation.messages])


def guard(body: Held, held: Held | None) -> Action:
    """May `body` replace what the API holds? The worker's own rule, checked against the API.

    Sent only when the API holds nothing, or holds a prefix of the body's messages
    (same ids, in order) that is shorter and no more recent than the body's.
    """
    if held is None:
        return Action.SEND
    if len(held.messages) >= len(body.messages):
        return Action.SKIP_API_HOLDS_AS_MANY
    if _latest(held) > _latest(body):
        return Action.SKIP_API_HOLDS_NEWER
    ids = [m.id for m in body.messages]
    if [m.id for m in held.messages] != ids[: len(held.messages)]:
        return Action.SKIP_API_HOLDS_OTHER
    return Action.SEND


_NEVER = datetime.min.replace(tzinfo=UTC)


def _latest(conversation: Held) -> datetime:
    times = [
        t if t.tzinfo is not None else t.replace(tzinfo=UTC)
        for t in (m.created_at for m in conversation.messages)
        if t is not None
    ]
    return max(times, default=_NEVER)


def still_invalid(dead: Dead, max_record_bytes: int) -> str | None:
    """Why an invalid record would be dead-lettered again by the current code, or None."""
    if not dead.value:
        return "the record has no value"
    if len(dead.value) > max_record_bytes:
        return f"the record is {len(dead.value)} bytes, over {max_record_bytes}"
    try:
        decode_event(dead.value)
    except InvalidEvent as exc:
        return f"{exc.kind}: {exc.reason[:200]}"
    return None


# --- Kafka and the API -------------------------------------------------------------------


async def read_topic(options: dict[str, Any], topic: str, *, missing_ok: bool = False) -> list[Any]:
    """Every record now in `topic`, up to the ends taken before reading."""
    from aiokafka import TopicPartition  # noqa: PLC0415

    from consumer.topics import whole_topic_reader  # noqa: PLC0415

    reader = whole_topic_reader(options)
    await reader.start()
    try:
        await reader._client.force_metadata_update()  # noqa: SLF001 - no public refresh.
        partitions = reader.partitions_for_topic(topic)
        if not partitions:
            if missing_ok:
                return []
            raise ConfigError("KAFKA_DLQ_TOPIC", f"topic {topic!r} does not exist on the cluster")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        await reader.seek_to_beginning(*tps)
        out: list[Any] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if not remaining:
                break
            batch = await reader.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
        return out
    finally:
        await reader.stop()


async def read_ledger(options: dict[str, Any], ledger_topic: str) -> frozenset[bytes]:
    """The keys (`partition:offset`) of the dead letters already replayed."""
    return frozenset(
        r.key for r in await read_topic(options, ledger_topic, missing_ok=True) if r.key
    )


async def load(settings: Settings, selection: Selection) -> tuple[list[Dead], frozenset[bytes]]:
    """The chosen dead letters, in topic order, and the ledger's keys."""
    options = settings.kafka_client_options()
    records = await read_topic(options, settings.kafka_dlq_topic)
    chosen = [d for d in map(from_kafka, records) if selection(d)]
    chosen.sort(key=lambda d: (d.partition, d.offset))
    return chosen, await read_ledger(options, ledger_topic(settings))


def ledger_topic(settings: Settings) -> str:
    return settings.kafka_dlq_topic + LEDGER_SUFFIX


async def inspect(
    settings: Settings, selection: Selection, *, show_content: bool, summary_only: bool
) -> int:
    """Writes a summary line, then one line per chosen dead letter, as JSON on stdout."""
    chosen, replayed = await load(settings, selection)
    lines = [_json.encode({"summary": summarize(chosen, replayed).as_dict()})]
    if not summary_only:
        lines += [
            _json.encode(d.describe(show_content=show_content, replayed=d.ledger_key in replayed))
            for d in chosen
        ]
    sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
    sys.stdout.flush()
    return 0


class Result(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of the replay report."""

    partition: int
    offset: int
    kind: str
    reason: str
    action: Action
    executed: bool
    conversation_id: str | None = None
    detail: str | None = None


class LedgerEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """The value of a ledger record; its key is the dead letter's `partition:offset`."""

    action: Action
    at: str
    dlq_topic: str
    conversation_id: str | None = None
    status: int | None = None


class ApiUnavailable(Exception):
    """Reading a conversation back failed after retries; the dead letter is left for later."""


class Replayer:
    """Re-drives dead letters one at a time, in topic order; `execute=False` only reports."""

    GET_ATTEMPTS = 5

    def __init__(
        self, settings: Settings, *, execute: bool, include_still_invalid: bool = False
    ) -> None:
        self.settings = settings
        self.execute = execute
        self.include_still_invalid = include_still_invalid
        self._producer: AIOKafkaProducer | None = None
        self._sink: Sink | None = None
        self._http: aiohttp.ClientSession | None = None

    async def run(self, selection: Selection) -> list[Result]:
        from consumer.sink import Sink  # noqa: PLC0415 - only replay needs HTTP.

        chosen, replayed = await load(self.settings, selection)
        s = self.settings
        self._sink = Sink(
            base_url=s.inkeep_api_base_url,
            api_key=s.inkeep_api_key,
            max_concurrency=1,
            rate_limit=s.inkeep_rate_limit_per_second,
            timeout=s.inkeep_request_timeout_seconds,
            max_retry_delay=s.inkeep_max_retry_delay_seconds,
        )
        results: list[Result] = []
        try:
            if self.execute and chosen:
                await self._start_producer()
            for dead in chosen:
                if dead.ledger_key in replayed:
                    result = self._result(dead, Action.ALREADY_REPLAYED, executed=False)
                else:
                    result = await self._one(dead)
                results.append(result)
                _emit(result)
        finally:
            await self._close()
        return results

    async def _one(self, dead: Dead) -> Result:
        if dead.kind is Kind.RECORD:
            return await self._record(dead)
        if dead.path != deadletter.CONVERSATIONS:
            return await self._notice(dead)
        return await self._conversation(dead)

    async def _notice(self, dead: Dead) -> Result:
        """A feedback or interaction request: its stable id makes sending it again harmless."""
        if not self.execute:
            return self._result(dead, Action.SEND, executed=False, detail=dead.path)
        assert self._sink is not None
        delivery = await self._sink.deliver(None, dead.value, path=dead.path)
        if delivery.outcome != "acked":
            return self._result(
                dead,
                Action.FAILED,
                executed=False,
                detail=f"the API refused it again at {dead.path} ({delivery.status})",
            )
        log.info(
            "dlq_replayed",
            action=str(Action.SEND),
            conversation_id=dead.conversation_id,
            path=dead.path,
            partition=dead.partition,
            offset=dead.offset,
            status=delivery.status,
        )
        await self._write_ledger(dead, Action.SEND, status=delivery.status)
        return self._result(dead, Action.SEND, executed=True, detail=dead.path)

    async def _record(self, dead: Dead) -> Result:
        why = still_invalid(dead, self.settings.max_record_bytes)
        if why is not None and not self.include_still_invalid:
            return self._result(dead, Action.SKIP_STILL_INVALID, executed=False, detail=why)
        if not self.execute:
            return self._result(dead, Action.PRODUCE, executed=False)
        assert self._producer is not None
        source = f"{self.settings.kafka_dlq_topic}:{dead.partition}:{dead.offset}"
        partition = None if dead.key is not None else dead.source_partition
        await self._producer.send_and_wait(
            self.settings.kafka_topic,
            dead.value,
            key=dead.key,
            partition=partition,
            headers=[(REPLAY_HEADER, source.encode())],
        )
        log.info(
            "dlq_replayed",
            action=str(Action.PRODUCE),
            partition=dead.partition,
            offset=dead.offset,
            topic=self.settings.kafka_topic,
        )
        await self._write_ledger(dead, Action.PRODUCE)
        return self._result(dead, Action.PRODUCE, executed=True)

    async def _conversation(self, dead: Dead) -> Result:
        try:
            body = payload.decode(dead.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._result(dead, Action.SKIP_UNREADABLE, executed=False, detail=str(exc))
        try:
            held = await self._fetch(body.id)
        except ApiUnavailable as exc:
            return self._result(dead, Action.FAILED, executed=False, detail=str(exc))
        action = guard(held_of(body), held)
        detail = None if held is None else f"the API holds {len(held.messages)} messages"
        if action is not Action.SEND or not self.execute:
            if action is not Action.SEND:
                log.warning(
                    "dlq_replay_skipped",
                    action=str(action),
                    conversation_id=body.id,
                    partition=dead.partition,
                    offset=dead.offset,
                    body_messages=len(body.messages),
                    api_messages=None if held is None else len(held.messages),
                )
            return self._result(dead, action, executed=False, detail=detail)
        assert self._sink is not None
        delivery = await self._sink.deliver(body, dead.value)
        if delivery.outcome != "acked":
            return self._result(
                dead,
                Action.FAILED,
                executed=False,
                detail=f"the API refused the body again ({delivery.status})",
            )
        log.info(
            "dlq_replayed",
            action=str(Action.SEND),
            conversation_id=body.id,
            partition=dead.partition,
            offset=dead.offset,
            message_count=len(body.messages),
            status=delivery.status,
        )
        await self._write_ledger(dead, Action.SEND, status=delivery.status)
        return self._result(dead, Action.SEND, executed=True, detail=detail)

    async def _fetch(self, conversation_id: str) -> Held | None:
        """The conversation as the API holds it now, None if it has none (404)."""
        import aiohttp  # noqa: PLC0415

        from consumer.sink import retry_after_seconds  # noqa: PLC0415

        http = self._http
        if http is None:
            http = self._http = aiohttp.ClientSession(
                headers={
                    "Authorization": f"Bearer {self.settings.inkeep_api_key}",
                    "Accept": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=self.settings.inkeep_request_timeout_seconds),
            )
        url = f"{self.settings.inkeep_api_base_url.rstrip('/')}/conversations/"
        url += _quote(conversation_id)
        problem = ""
        for attempt in range(self.GET_ATTEMPTS):
            wait = min(self.settings.inkeep_max_retry_delay_seconds, 0.5 * 2**attempt)
            try:
                async with http.get(url, allow_redirects=False) as response:
                    text = await response.read()
                    status = response.status
                    after = retry_after_seconds(response.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = f"no answer ({type(exc).__name__})"
            else:
                if status == 404:
                    return None
                if 200 <= status < 300:
                    try:
                        return _held_decoder.decode(text)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        raise ApiUnavailable(f"unreadable conversation: {exc}") from None
                if status in (401, 403):
                    raise ApiUnavailable(f"the API key was refused ({status})")
                problem = f"answer {status}"
                wait = max(wait, after or 0.0)
            if attempt + 1 < self.GET_ATTEMPTS:
                await asyncio.sleep(wait)
        raise ApiUnavailable(f"cannot read the conversation back: {problem}")

    async def _start_producer(self) -> None:
        from aiokafka import AIOKafkaProducer  # noqa: PLC0415

        from consumer.topics import LARGE_RECORD_BYTES  # noqa: PLC0415

        await self._ensure_ledger()
        self._producer = AIOKafkaProducer(
            **self.settings.kafka_client_options(),
            acks="all",
            enable_idempotence=True,
            max_request_size=LARGE_RECORD_BYTES,
        )
        await self._producer.start()

    async def _ensure_ledger(self) -> None:
        """Creates the compacted ledger topic (one partition, the DLQ's replication) if missing."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

        from consumer import admin as kafka_admin  # noqa: PLC0415

        name = ledger_topic(self.settings)
        admin = AIOKafkaAdminClient(**self.settings.kafka_client_options())
        await admin.start()
        try:
            if name in set(await admin.list_topics()):
                return
            described = await admin.describe_topics([self.settings.kafka_dlq_topic])
            replicas = len(described[0]["partitions"][0]["replicas"])
            result = await kafka_admin.create_topics(
                admin, [NewTopic(name, 1, replicas, topic_configs=LEDGER_TOPIC_CONFIG)]
            )
            for topic, error in result.failed.items():
                raise ConfigError("KAFKA_DLQ_TOPIC", f"cannot create {topic!r}: {error}")
        finally:
            await admin.close()

    async def _write_ledger(self, dead: Dead, action: Action, status: int | None = None) -> None:
        entry = LedgerEntry(
            action=action,
            at=datetime.now(UTC).isoformat(),
            dlq_topic=self.settings.kafka_dlq_topic,
            conversation_id=dead.conversation_id,
            status=status,
        )
        assert self._producer is not None
        await self._producer.send_and_wait(
            ledger_topic(self.settings), _json.encode(entry), key=dead.ledger_key
        )

    def _result(
        self, dead: Dead, action: Action, *, executed: bool, detail: str | None = None
    ) -> Result:
        return Result(
            partition=dead.partition,
            offset=dead.offset,
            kind=str(dead.kind),
            reason=dead.reason,
            action=action,
            executed=executed,
            conversation_id=dead.conversation_id,
            detail=detail,
        )

    async def _close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._sink is not None:
            await self._sink.close()
        if self._http is not None:
            await self._http.close()


def _quote(text: str) -> str:
    from urllib.parse import quote  # noqa: PLC0415

    return quote(text, safe="")


def _emit(result: Result) -> None:
    sys.stdout.buffer.write(_json.encode(result) + b"\n")
    sys.stdout.flush()


def tally(results: Sequence[Result]) -> dict[str, int]:
    return dict(sorted(Counter(str(r.action) for r in results).items()))


# --- command line -------------------------------------------------------------------------


def _when(text: str) -> int:
    """An ISO 8601 time (UTC when no offset is given) as epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parser(overrides: dict[str, str]) -> argparse.ArgumentParser:
    """`dlq inspect|replay`; `overrides` are the worker's flag -> setting pairs."""
    top = argparse.ArgumentParser(
        prog="inkeep-consumer dlq",
        description="Inspect the dead-letter topic, or replay chosen dead letters.",
    )
    commands = top.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect_cmd = commands.add_parser(
        "inspect", help="summary and records (content hidden unless --show-content)"
    )
    inspect_cmd.add_argument("--show-content", action="store_true")
    inspect_cmd.add_argument("--summary-only", action="store_true")
    replay_cmd = commands.add_parser(
        "replay", help="re-drive chosen dead letters (a dry run unless --execute)"
    )
    replay_cmd.add_argument("--execute", action="store_true", help="act; without it, only report")
    replay_cmd.add_argument(
        "--include-still-invalid",
        action="store_true",
        help="re-produce invalid records even when the current code still refuses them",
    )
    for command in (inspect_cmd, replay_cmd):
        chosen = command.add_argument_group("selection (every given condition must hold)")
        chosen.add_argument("--reason", action="append", default=[], help="the `error` header")
        chosen.add_argument("--kind", choices=[str(k) for k in Kind])
        chosen.add_argument("--partition", type=int, action="append", default=[])
        chosen.add_argument("--since", type=_when, help="ISO time, inclusive")
        chosen.add_argument("--until", type=_when, help="ISO time, exclusive")
        chosen.add_argument("--from-offset", type=int, help="dead-letter offset, inclusive")
        chosen.add_argument("--until-offset", type=int, help="dead-letter offset, exclusive")
        group = command.add_argument_group("overrides (win over environment variables)")
        for flag, name in overrides.items():
            group.add_argument(flag, dest=name, metavar="VALUE", help=f"overrides {name.upper()}")
    return top


def selection_of(args: argparse.Namespace) -> Selection:
    return Selection(
        reasons=frozenset(args.reason),
        kind=None if args.kind is None else Kind(args.kind),
        partitions=frozenset(args.partition),
        since_ms=args.since,
        until_ms=args.until,
        from_offset=args.from_offset,
        until_offset=args.until_offset,
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Runs a parsed `dlq` command; 1 when a replay left some dead letters failed."""
    from consumer import logs  # noqa: PLC0415

    logs.configure(settings.log_level, settings.log_format)
    selection = selection_of(args)
    if args.action == "inspect":
        return asyncio.run(
            inspect(
                settings,
                selection,
                show_content=args.show_content,
                summary_only=args.summary_only,
            )
        )
    started = time.monotonic()
    replayer = Replayer(
        settings, execute=args.execute, include_still_invalid=args.include_still_invalid
    )
    results = asyncio.run(replayer.run(selection))
    counts = tally(results)
    log.info(
        "dlq_replay_done",
        dry_run=not args.execute,
        seconds=round(time.monotonic() - started, 3),
        **counts,
    )
    sys.stdout.buffer.write(
        _json.encode({"summary": {"dry_run": not args.execute, "actions": counts}}) + b"\n"
    )
    return 1 if counts.get(str(Action.FAILED)) else 0
