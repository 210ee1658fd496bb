"""The worker: Kafka in, the engine in the middle, the analytics API out.

The engine decides what a conversation is and when it is sent; this module only
moves bytes, keeps one lock over the engines, and hands each checkpoint to
`consumer.checkpoint`, which keeps the commit order. Everything that can fail
slowly (the API) runs in tasks whose results come back to the loop; nothing here
decides conversation contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError

from consumer import deadletter, metrics
from consumer.checkpoint import STOPPING, Checkpoints, PartitionState
from consumer.deadletter import DeadLetter
from consumer.engine import (
    Decision,
    EngineConfig,
    Flush,
    Notice,
    NoticeRefusal,
    PartitionEngine,
    Refusal,
    RefusalReason,
    Trigger,
)
from consumer.errors import ConfigError, InvalidEvent
from consumer.events import Event, decode_event
from consumer.feedback import Unresolved
from consumer.health import Health, HealthServer
from consumer.logs import configure as configure_logs
from consumer.settings import Settings
from consumer.sink import Delivery, Outcome, Sink
from consumer.store import MemoryStore, SqliteStore, Store
from consumer.topics import LARGE_RECORD_BYTES, ensure_topics, read_state

log = structlog.get_logger(__name__)

POLL_TIMEOUT_MS = 100
TICK_SECONDS = 1.0
SHUTDOWN_RESERVE_SECONDS = 5.0
"""Part of the grace period kept for writing state and committing after the last flush."""

REFUSALS = {
    RefusalReason.FEWER_MESSAGES: (
        "not sent: {d.message_count} messages, but the API already holds {d.acknowledged_count} "
        "for this conversation and an upsert would replace them"
    ),
    RefusalReason.HISTORY_EXPIRED: (
        "not sent: the conversation continued after its earlier history left the state topic "
        "(CONVERSATION_STATE_RETENTION_SECONDS); an upsert would replace the logged history"
    ),
    RefusalReason.TOO_LARGE: "not sent: cannot be cut to fit the API's body limit",
}

NOTICE_REFUSALS = {
    Unresolved.UNKNOWN_CONVERSATION: (
        "no conversation {d.conversation_id} is known in this partition"
    ),
    Unresolved.UNKNOWN_COMPLETION: (
        "no reply in conversation {d.conversation_id} has this completion_id"
    ),
    Unresolved.HISTORY_EXPIRED: (
        "the conversation's history left the state topic; its ids are unknown"
    ),
    Unresolved.MESSAGE_NOT_LOGGED: "the conversation body holding the message was not logged",
}


def _kafka_hint(exc: KafkaError) -> str:
    if isinstance(exc, UnsupportedCodecError | CorruptRecordException):
        return (
            "a batch of the input could not be decompressed or read (not a connection "
            "problem); the worker resumes from its last commit when restarted"
        )
    return (
        "check KAFKA_BOOTSTRAP_SERVERS, the security settings, the credentials and the CA "
        "file; the worker resumes from its last commit when restarted"
    )


K = TypeVar("K")


class Pause(StrEnum):
    """Why fetching is paused."""

    AUTH = "auth"
    BACKPRESSURE = "backpressure"


def pause_reason(
    *, auth_failed: bool, pending: int, limit: int, paused: Pause | None
) -> Pause | None:
    """Pause while the API refuses the key, or while `limit` flushes are in flight.

    A backpressure pause lasts until half the limit has drained, so fetching does
    not flap around the limit.
    """
    if auth_failed:
        return Pause.AUTH
    if pending >= limit or (paused is Pause.BACKPRESSURE and pending > limit // 2):
        return Pause.BACKPRESSURE
    return None


def shed_plan(open_counts: Sequence[tuple[K, int]], limit: int) -> list[tuple[K, int]]:
    """How many open conversations each partition sheds to bring the total down to `limit`.

    The partitions holding the most shed first.
    """
    excess = sum(count for _, count in open_counts) - limit
    plan: list[tuple[K, int]] = []
    for key, count in sorted(open_counts, key=lambda kc: -kc[1]):
        if excess <= 0:
            break
        shed = min(excess, count)
        plan.append((key, shed))
        excess -= shed
    return plan


class _Partition:
    """One assigned input partition: its engine, its position and its flushes in flight."""

    __slots__ = ("catch_up", "duplicates", "engine", "evicted", "position", "tasks", "tp")

    def __init__(self, tp: TopicPartition, engine: PartitionEngine) -> None:
        self.tp = tp
        self.engine = engine
        self.position: int | None = None
        self.tasks: dict[asyncio.Task[Delivery], Flush | Notice] = {}
        self.catch_up: int | None = None
        """End offset at assignment: restored flushes wait until the replay reaches it."""
        self.duplicates = 0
        self.evicted = (0, 0)
        """The engine's eviction counts (completed, markers) last added to the metric."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    # aiokafka only logs what a listener raises; a failed restore or hand-over must not
    # leave the worker running on partial state, so it stops the worker instead.
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            await self._worker.revoke(list(revoked))
        except Exception:
            log.exception("rebalance_failed", step="revoke", hint=STOPPING)
            self._worker.fail(None)
            raise

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            await self._worker.assign(list(assigned))
        except Exception:
            log.exception("rebalance_failed", step="assign", hint=STOPPING)
            self._worker.fail(None)
            raise


class Worker:
    """One consumer-group member. `run()` until `stop()`; exit code 0 on a clean stop.

    The consumer, the producer and the sink are built from `settings` unless given;
    either way the worker starts (subscribes) and closes them.
    """

    def __init__(  # noqa: PLR0913 - the clients are keyword-only and each optional.
        self,
        settings: Settings,
        *,
        health: Health | None = None,
        clock: Callable[[], float] = time.time,
        consumer: AIOKafkaConsumer | None = None,
        producer: AIOKafkaProducer | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.settings = settings
        self.health = health or Health()
        self._clock = clock
        self._options: dict[str, Any] = settings.kafka_client_options()
        self._config = EngineConfig(
            idle_timeout=settings.conversation_idle_timeout_seconds,
            max_open=settings.conversation_max_open_seconds,
            state_retention=settings.conversation_state_retention_seconds,
            whole_records=bool(settings.state_upgrade_from),
        )
        self._parts: dict[TopicPartition, _Partition] = {}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._paused: Pause | None = None
        self._broken = False
        """Something unexpected failed: the shutdown neither flushes nor commits."""
        self._activity = False
        self._next_tick = 0.0
        self._next_checkpoint = 0.0
        self._topics_ready = False
        self._consumer: AIOKafkaConsumer | None = consumer
        self._producer: AIOKafkaProducer | None = producer
        self._sink: Sink | None = sink
        self._commits: Checkpoints | None = None
        self._current: tuple[TopicPartition, int] | None = None
        """The input record being handled, named when something unexpected stops the worker."""

    def stop(self) -> None:
        """Asks the loop to stop; the shutdown sequence runs in `run()`."""
        self._stopping.set()

    async def run(self) -> int:
        """Runs until `stop()`; 0 after a clean stop, 1 when the worker failed.

        A Kafka failure (unreachable, refused credentials, a state write that
        could not be made durable) ends the process rather than limping on:
        nothing past the last durable checkpoint was committed, so the next
        start, here or on another member, replays from there. Any other
        unexpected error ends it the same way, with nothing more committed.
        """
        try:
            await self._start()
            while not self._stopping.is_set():
                await self._step()
        except ConfigError:
            raise
        except KafkaError as exc:
            s = self.settings
            log.exception(
                "kafka_failed",
                error=f"{type(exc).__name__}: {exc}",
                bootstrap_servers=s.kafka_bootstrap_servers,
                security_protocol=s.kafka_security_protocol,
                sasl_mechanism=s.kafka_sasl_mechanism,
                hint=_kafka_hint(exc),
            )
            return 1
        except Exception as exc:
            self._broken = True
            if self._commits is not None:
                self._commits.fail(None)  # Logged here, with the record being handled.
            self._stopping.set()
            tp, offset = self._current or (None, None)
            log.exception(
                "worker_failed",
                error=f"{type(exc).__name__}: {exc}",
                topic=tp.topic if tp else None,
                partition=tp.partition if tp else None,
                offset=offset,
                hint=STOPPING,
            )
            return 1
        finally:
            await self._shutdown()
        return 1 if self._commits is not None and self._commits.failed else 0

    async def _start(self) -> None:
        s = self.settings
        self._clear_state_dir()
        await ensure_topics(
            self._options,
            input_topic=s.kafka_topic,
            state_topic=s.kafka_state_topic,
            dlq_topic=s.kafka_dlq_topic,
            replication_factor=s.kafka_topic_replication_factor,
        )
        self._topics_ready = True
        if self._sink is None:
            self._sink = Sink(
                base_url=s.inkeep_api_base_url,
                api_key=s.inkeep_api_key,
                max_concurrency=s.inkeep_max_concurrency,
                rate_limit=s.inkeep_rate_limit_per_second,
                timeout=s.inkeep_request_timeout_seconds,
                max_retry_delay=s.inkeep_max_retry_delay_seconds,
                on_answer=self.health.observe_api,
            )
        await self._sink.start()
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                **self._options,
                acks="all",
                enable_idempotence=True,
                max_request_size=LARGE_RECORD_BYTES,
                # State records of many conversations go out together at each checkpoint.
                max_batch_size=1024 * 1024,
                linger_ms=5,
                # Measured on a checkpoint of 300 open conversations: lz4 cuts the batch to
                # 16% at ~1 GB/s; zstd to 10% at ~220 MB/s. Batches are compressed on the
                # event loop, so the cheap codec wins; the state topic is read back whole on
                # every restore. Release 0.1 has no lz4 codec: while it shares the group
                # (STATE_UPGRADE_FROM), batches go uncompressed, as it wrote them.
                compression_type=None if s.state_upgrade_from else "lz4",
            )
        await self._producer.start()
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                **self._options,
                group_id=s.kafka_group_id,
                enable_auto_commit=False,
                auto_offset_reset=s.kafka_auto_offset_reset,
                # A revocation flushes and writes state before it returns; the group waits
                # that long.
                rebalance_timeout_ms=int((s.shutdown_grace_seconds + 30) * 1000),
            )
        self._commits = Checkpoints(
            self._producer,
            self._consumer,
            state_topic=s.kafka_state_topic,
            dlq_topic=s.kafka_dlq_topic,
            on_fail=self._stopping.set,
        )
        self._consumer.subscribe([s.kafka_topic], listener=_Listener(self))
        await self._consumer.start()
        log.info("worker_started", topic=s.kafka_topic, group_id=s.kafka_group_id)

    async def _step(self) -> None:
        assert self._consumer is not None
        assert self._commits is not None
        batch = await self._consumer.getmany(
            timeout_ms=POLL_TIMEOUT_MS, max_records=self.settings.max_buffered_records
        )
        async with self._lock:
            now = self._clock()
            for tp, records in batch.items():
                part = self._parts.get(tp)
                if part is None:
                    continue  # Revoked since the fetch; the new owner reads these again.
                for record in records:
                    self._current = (tp, record.offset)
                    self._handle(part, record, now)
                self._current = None
                metrics.records_consumed.labels(tp.topic, str(tp.partition)).inc(len(records))
            await self._finish_catch_up(now)
            self._collect(now)
            if now >= self._next_tick:
                self._tick(now)
            await self._commits.send_dead_letters()
            self._backpressure()
            await self._commits.settle(block=False)
            # On the interval, and as soon as the input is drained, so a quiet partition's
            # offsets do not wait a whole interval; one checkpoint in flight at a time.
            due = now >= self._next_checkpoint or (not batch and self._activity)
            if due and not self._commits.pending:
                self._activity = False
                await self._checkpoint(list(self._parts.values()), wait=False)
                self._next_checkpoint = now + self.settings.commit_interval_seconds
        self.health.beat()

    async def _finish_catch_up(self, now: float) -> None:
        """Issues restored flushes of partitions whose replay reached the end seen at assignment."""
        assert self._consumer is not None
        for part in self._parts.values():
            if (
                part.catch_up is not None
                and await self._consumer.position(part.tp) >= part.catch_up
            ):
                part.catch_up = None
                self._dispatch(part, part.engine.restored(now))

    def _decode(self, value: bytes | None) -> Event:
        if value is None:
            raise InvalidEvent("empty", "the record has no value")
        if len(value) > self.settings.max_record_bytes:
            raise InvalidEvent(
                "too_large",
                f"the record is {len(value)} bytes, over {self.settings.max_record_bytes}",
            )
        return decode_event(value)

    def _handle(self, part: _Partition, record: Any, now: float) -> None:
        """One input record: into the engine, or to the dead-letter topic.

        A record is data, never a reason to stop: whatever decoding or applying
        it raises, the record is dead-lettered. Its position moves only once its
        effect is in the engine or its dead-letter record is in the outbox.
        """
        value: bytes | None = record.value
        try:
            event = self._decode(value)
            self._check_key(part, record, event)
            decisions = part.engine.apply(event, record.offset, now)
        except InvalidEvent as exc:
            self._invalid(part, record, exc.kind, exc.reason)
        except Exception as exc:  # noqa: BLE001 - see the docstring.
            reason = f"{type(exc).__name__}: {exc}"
            # No traceback: the error's text may quote the record, which is user content.
            log.error(  # noqa: TRY400
                "record_unprocessable",
                error=type(exc).__name__,
                topic=part.tp.topic,
                partition=part.tp.partition,
                offset=record.offset,
            )
            self._invalid(part, record, "unprocessable", reason)
        else:
            self._dispatch(part, decisions)
        part.position = record.offset + 1
        self._activity = True

    def _check_key(self, part: _Partition, record: Any, event: Event) -> None:
        if record.key is None or record.key != event.conversation_id.encode():
            metrics.records_mis_keyed.inc()
            log.warning(
                "record_mis_keyed",
                conversation_id=event.conversation_id,
                topic=part.tp.topic,
                partition=part.tp.partition,
                offset=record.offset,
            )

    def _invalid(self, part: _Partition, record: Any, kind: str, reason: str) -> None:
        metrics.records_invalid.labels(kind).inc()
        log.warning(
            "record_invalid",
            error=kind,
            reason=reason[:300],
            topic=part.tp.topic,
            partition=part.tp.partition,
            offset=record.offset,
        )
        self._dead_letter(
            deadletter.invalid_record(
                key=record.key,
                value=record.value,
                kind=kind,
                reason=reason,
                topic=part.tp.topic,
                partition=part.tp.partition,
                offset=record.offset,
            ),
            what="record",
            reason=kind,
        )

    def _dispatch(self, part: _Partition, decisions: Iterable[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Notice | NoticeRefusal):
                self._dispatch_notice(part, decision)
                continue
            if isinstance(decision, Refusal):
                metrics.flushes_refused.inc()
                log.error(
                    "flush_refused",
                    reason=decision.reason,
                    conversation_id=decision.conversation_id,
                    message_count=decision.message_count,
                    acknowledged_count=decision.acknowledged_count,
                    partition=part.tp.partition,
                )
                self._dead_letter(
                    deadletter.conversation(
                        conversation_id=decision.conversation_id,
                        body=decision.body,
                        kind=decision.reason,
                        reason=REFUSALS.get(decision.reason, decision.reason).format(d=decision),
                        topic=part.tp.topic,
                        partition=part.tp.partition,
                    ),
                    what="conversation",
                    reason=decision.reason,
                )
                continue
            assert self._sink is not None
            task = asyncio.create_task(self._sink.deliver(decision.conversation, decision.body))
            part.tasks[task] = decision

    def _dispatch_notice(self, part: _Partition, decision: Notice | NoticeRefusal) -> None:
        if isinstance(decision, Notice):
            assert self._sink is not None
            task = asyncio.create_task(self._sink.deliver(None, decision.body, path=decision.path))
            part.tasks[task] = decision
            return
        metrics.notices.labels(str(decision.kind), "refused").inc()
        log.warning(
            "notice_refused",
            kind=str(decision.kind),
            reason=str(decision.reason),
            conversation_id=decision.conversation_id,
            offset=decision.offset,
            partition=part.tp.partition,
        )
        reason = NOTICE_REFUSALS[decision.reason].format(d=decision)
        self._dead_letter(
            deadletter.invalid_record(
                key=decision.conversation_id.encode(),
                value=decision.body,
                kind=str(decision.reason),
                reason=reason,
                topic=part.tp.topic,
                partition=part.tp.partition,
                offset=decision.offset,
            )
            if decision.path is None
            else deadletter.conversation(
                conversation_id=decision.conversation_id,
                body=decision.body,
                kind=str(decision.reason),
                reason=reason,
                topic=part.tp.topic,
                partition=part.tp.partition,
                path=decision.path,
            ),
            what=str(decision.kind),
            reason=str(decision.reason),
        )

    def _notice_delivered(
        self, part: _Partition, notice: Notice, delivery: Delivery, now: float
    ) -> None:
        """Feeds a feedback or event request's end back; a refusal goes to the dead-letter topic."""
        self._activity = True
        context = {
            "kind": str(notice.kind),
            "conversation_id": notice.conversation_id,
            "partition": part.tp.partition,
            "offset": notice.offset,
            "status": delivery.status,
            "attempts": delivery.attempts,
        }
        metrics.notices.labels(str(notice.kind), str(delivery.status)).inc()
        engine = part.engine
        if delivery.outcome is Outcome.ACKED:
            log.info("notice_sent", **context)
            self._dispatch(
                part, engine.notice_acknowledged(notice.conversation_id, notice.offset, now)
            )
            return
        log.error(
            "notice_rejected", answer=delivery.answer[:500].decode(errors="replace"), **context
        )
        self._dead_letter_refused(
            part, delivery, notice.conversation_id, what=str(notice.kind), path=notice.path
        )
        self._dispatch(
            part, engine.notice_dead_lettered(notice.conversation_id, notice.offset, now)
        )

    def _collect(self, now: float) -> None:
        """Feeds finished deliveries back into their engines."""
        for part in list(self._parts.values()):
            for task in [t for t in part.tasks if t.done()]:
                flush = part.tasks.pop(task)
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None:
                    raise exc
                if isinstance(flush, Notice):
                    self._notice_delivered(part, flush, task.result(), now)
                else:
                    self._delivered(part, flush, task.result(), now)
        if self._sink is not None:
            self.health.set_auth_failed(self._sink.auth_failed)

    def _delivered(self, part: _Partition, flush: Flush, delivery: Delivery, now: float) -> None:
        self._activity = True  # An acknowledgement may release held offsets.
        context = {
            "conversation_id": flush.conversation_id,
            "partition": part.tp.partition,
            "trigger": str(flush.trigger),
            "status": delivery.status,
            "attempts": delivery.attempts,
        }
        if delivery.outcome is Outcome.ACKED:
            metrics.conversations_flushed.labels(str(flush.trigger)).inc()
            metrics.flush_latency_seconds.observe(max(0.0, now - flush.created))
            log.info("conversation_flushed", message_count=flush.message_count, **context)
            if flush.truncated or delivery.shrunk:
                # The API holds a cut copy; the whole conversation is kept here.
                metrics.conversations_truncated.inc()
                self._dead_letter(
                    deadletter.conversation(
                        conversation_id=flush.conversation_id,
                        body=flush.original or flush.body,
                        kind="truncated",
                        reason="logged with its largest contents cut to fit the API's body limit",
                        topic=part.tp.topic,
                        partition=part.tp.partition,
                    ),
                    what="conversation",
                    reason="truncated",
                )
            self._dispatch(part, part.engine.acknowledged(flush.conversation_id, flush.seq, now))
            return
        log.error(
            "conversation_rejected",
            answer=delivery.answer[:500].decode(errors="replace"),
            **context,
        )
        self._dead_letter_refused(part, delivery, flush.conversation_id, what="conversation")
        self._dispatch(part, part.engine.dead_lettered(flush.conversation_id, flush.seq, now))

    def _dead_letter_refused(
        self,
        part: _Partition,
        delivery: Delivery,
        conversation_id: str,
        *,
        what: str,
        path: str = deadletter.CONVERSATIONS,
    ) -> None:
        """A body the API refused for good (400/422, ...): kept with its answer."""
        self._dead_letter(
            deadletter.conversation(
                conversation_id=conversation_id,
                body=delivery.body,
                kind="rejected",
                reason=f"the API refused the {what} ({delivery.status})",
                topic=part.tp.topic,
                partition=part.tp.partition,
                status=delivery.status,
                answer=delivery.answer,
                path=path,
            ),
            what=what,
            reason="rejected",
        )

    def _dead_letter(self, record: DeadLetter, *, what: str, reason: str) -> None:
        assert self._commits is not None
        metrics.dead_lettered.labels(what, reason).inc()
        self._commits.dead_letter(record)

    def fail(self, reason: str | None = "durable_write_failed") -> None:
        """Stops the worker without committing further (`Checkpoints.fail`)."""
        assert self._commits is not None  # Made before the consumer can call a listener.
        self._commits.fail(reason)

    def _tick(self, now: float) -> None:
        """Time-driven work: idle and max-open flushes, the memory bound, gauges."""
        self._next_tick = now + TICK_SECONDS
        for part in self._parts.values():
            self._dispatch(part, part.engine.due(now))
        # Conversations already closing leave memory when their flush is answered; counting
        # them again would shed a healthy one for each, every tick, while the API is slow.
        plan = shed_plan(
            [(p, p.engine.active_count) for p in self._parts.values()],
            self.settings.max_open_conversations,
        )
        for part, count in plan:
            self._dispatch(part, part.engine.shed(count, now))
        metrics.open_conversations.set(sum(p.engine.open_count for p in self._parts.values()))
        metrics.notices_waiting.set(sum(p.engine.waiting_notices for p in self._parts.values()))
        for part in self._parts.values():
            metrics.events_duplicate.inc(part.engine.duplicates - part.duplicates)
            part.duplicates = part.engine.duplicates
        self._state_gauges()
        assert self._consumer is not None
        for part in self._parts.values():
            highwater = self._consumer.highwater(part.tp)
            if highwater is not None and part.position is not None:
                metrics.consumer_lag.labels(part.tp.topic, str(part.tp.partition)).set(
                    max(0, highwater - part.position)
                )

    def _state_gauges(self) -> None:
        stores = [p.engine.store for p in self._parts.values()]
        metrics.state_retained.labels("completed").set(sum(s.completed_count for s in stores))
        metrics.state_retained.labels("marker").set(sum(s.marker_count for s in stores))
        where = "disk" if self.settings.state_dir else "memory"
        metrics.state_retained_bytes.labels(where).set(sum(s.held for s in stores))
        metrics.state_budget_bytes.set(self._state_budget())
        for part in self._parts.values():
            engine = part.engine
            done, markers = part.evicted
            metrics.state_evicted.labels("completed").inc(engine.evicted_completed - done)
            metrics.state_evicted.labels("marker").inc(engine.evicted_markers - markers)
            part.evicted = (engine.evicted_completed, engine.evicted_markers)

    def _state_budget(self) -> int:
        s = self.settings
        return s.state_disk_bytes if s.state_dir else s.state_memory_bytes

    def _new_store(self, tp: TopicPartition, partitions: int) -> Store:
        """An empty store for a newly assigned partition, with its share of the budget."""
        budget = self._state_budget() // max(1, partitions)
        if not self.settings.state_dir:
            return MemoryStore(budget)
        path = Path(self.settings.state_dir) / f"{tp.topic}-{tp.partition}.sqlite3"
        return SqliteStore(path, budget)

    def _clear_state_dir(self) -> None:
        """Deletes the files a failed run left (no partition is ours yet; each is rebuilt)."""
        s = self.settings
        if s.state_dir:
            for stale in Path(s.state_dir).glob(f"{s.kafka_topic}-*.sqlite3"):
                stale.unlink(missing_ok=True)

    def _share_budget(self) -> None:
        """Splits the state budget evenly over the assigned partitions."""
        share = self._state_budget() // max(1, len(self._parts))
        for part in self._parts.values():
            part.engine.store.budget = share

    def _backpressure(self) -> None:
        """Pauses fetching while the API is refusing the key or too much is in flight."""
        assert self._consumer is not None
        assert self._sink is not None
        pending = sum(len(p.tasks) for p in self._parts.values())
        metrics.pending_flushes.set(pending)
        reason = pause_reason(
            auth_failed=self._sink.auth_failed,
            pending=pending,
            limit=self.settings.max_pending_flushes,
            paused=self._paused,
        )
        assigned = list(self._parts)
        if reason is not None:
            if assigned:
                self._consumer.pause(*assigned)
            if reason != self._paused:
                log.warning("fetching_paused", reason=reason, pending_flushes=pending)
                if self._paused:
                    metrics.paused.labels(self._paused).set(0)
                metrics.paused.labels(reason).set(1)
                self._paused = reason
        elif self._paused is not None:
            if assigned:
                self._consumer.resume(*assigned)
            log.info("fetching_resumed", previous_reason=self._paused)
            metrics.paused.labels(self._paused).set(0)
            self._paused = None

    async def _checkpoint(self, parts: list[_Partition], *, wait: bool) -> None:
        """Hands the partitions' state and positions to `Checkpoints.take` (the commit order)."""
        assert self._commits is not None
        if self._commits.failed:
            return
        taken = []
        for part in parts:
            checkpoint = part.engine.checkpoint()
            taken.append(
                PartitionState(part.tp, checkpoint.records, part.position, checkpoint.hold)
            )
        await self._commits.take(taken, wait=wait)

    async def _drain(self, parts: list[_Partition], deadline: float) -> None:
        """Lets the given partitions' flushes finish, feeding results back, until `deadline`."""
        loop = asyncio.get_running_loop()
        while True:
            tasks = [t for p in parts for t in p.tasks]
            remaining = deadline - loop.time()
            if not tasks or remaining <= 0:
                return
            await asyncio.wait(
                tasks, timeout=min(remaining, 0.5), return_when=asyncio.FIRST_COMPLETED
            )
            self._collect(self._clock())
            self.health.beat()  # A bounded drain is progress; liveness must not fail on it.
            assert self._commits is not None
            await self._commits.send_dead_letters()

    async def _close_partitions(
        self, parts: list[_Partition], trigger: Trigger, budget: float
    ) -> None:
        """Interim-flushes, drains, writes state and commits; then forgets the partitions.

        A flush still unanswered when the budget runs out is cancelled: its
        conversation is in the state written here as due, and whoever owns the
        partition next sends it again.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        now = self._clock()
        for part in parts:
            self._dispatch(part, part.engine.flush_open(trigger, now))
        await self._drain(parts, deadline)
        await self._checkpoint(parts, wait=True)
        for part in parts:
            for task in part.tasks:
                task.cancel()
            if part.tasks:
                log.warning(
                    "flushes_handed_over",
                    partition=part.tp.partition,
                    unanswered=len(part.tasks),
                )
            del self._parts[part.tp]
            part.engine.store.close()
            with contextlib.suppress(KeyError):  # a stale gauge would report lag nobody owns
                metrics.consumer_lag.remove(part.tp.topic, str(part.tp.partition))
        assert self._commits is not None
        self._commits.release(part.tp for part in parts)
        self._share_budget()
        metrics.open_conversations.set(sum(p.engine.open_count for p in self._parts.values()))

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            parts = [self._parts[tp] for tp in revoked if tp in self._parts]
            if parts:
                log.info("partitions_revoked", partitions=[p.tp.partition for p in parts])
                await self._close_partitions(
                    parts, Trigger.REVOKE, max(1.0, self.settings.shutdown_grace_seconds / 2)
                )
            self.health.set_assigned(True)

    async def assign(self, assigned: list[TopicPartition]) -> None:
        """Restores the assigned partitions' conversations before any of their records is read."""
        assert self._consumer is not None
        assert self._commits is not None
        async with self._lock:
            new = [tp for tp in assigned if tp not in self._parts]
            self.health.set_restoring(True)
            now = self._clock()
            total = len(self._parts) + len(new)
            engines = {
                tp.partition: PartitionEngine(self._config, self._new_store(tp, total))
                for tp in new
            }
            log.info("partitions_restoring", partitions=sorted(engines))
            started = time.monotonic()

            def restore(partition: int, key: bytes, value: bytes | None) -> None:
                self.health.beat()  # Each record read back is progress, however long it takes.
                engines[partition].restore(key, value)

            count = await read_state(
                self._options, self.settings.kafka_state_topic, sorted(engines), restore
            )
            ends = await self._consumer.end_offsets(new) if new else {}
            for tp in new:
                committed = await self._consumer.committed(tp)
                part = _Partition(tp, engines[tp.partition])
                self._parts[tp] = part
                self._commits.own(tp, committed)
                if (committed or 0) >= ends[tp]:
                    self._dispatch(part, part.engine.restored(now))
                else:
                    # Restored state may predate what a lost owner already sent; re-sending it
                    # before the replay catches up could briefly replace a longer history.
                    part.catch_up = ends[tp]
            self._share_budget()
            log.info(
                "partitions_assigned",
                partitions=sorted(tp.partition for tp in assigned),
                state_records=count,
                conversations=sum(e.conversation_count for e in engines.values()),
                restore_seconds=round(time.monotonic() - started, 3),
            )
            self.health.set_restoring(False)
            self.health.set_assigned(True)

    async def _shutdown(self) -> None:
        if not self._topics_ready:
            return  # Never got past checking the topics: nothing to flush or close.
        started = asyncio.get_running_loop().time()
        log.info("worker_stopping")
        try:
            if self._consumer is not None and self._parts and not self._broken:
                self._consumer.pause(*self._parts)
                async with self._lock:
                    await self._close_partitions(
                        list(self._parts.values()),
                        Trigger.SHUTDOWN,
                        max(1.0, self.settings.shutdown_grace_seconds - SHUTDOWN_RESERVE_SECONDS),
                    )
        except KafkaError as exc:
            # Nothing was committed past the last durable checkpoint; the next owner replays.
            log.exception("shutdown_checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if self._consumer is not None:
                await self._consumer.stop()
            if self._producer is not None:
                await self._producer.stop()
            if self._sink is not None:
                await self._sink.close()
        log.info(
            "worker_stopped",
            seconds=round(asyncio.get_running_loop().time() - started, 3),
        )


async def run(
    settings: Settings,
    *,
    worker: Worker | None = None,
    host: str = "0.0.0.0",  # noqa: S104 - probes come from outside the pod.
) -> int:
    """The `run` command (and the demo's worker): the worker, its health server, signals."""
    configure_logs(settings.log_level, settings.log_format)
    worker = worker or Worker(settings)
    server = HealthServer(worker.health)
    await server.start(host=host, port=settings.http_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        return await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await server.stop()
