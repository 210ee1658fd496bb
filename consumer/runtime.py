"""The worker: Kafka in, the engine in the middle, the analytics API out.

The engine decides what a conversation is and when it is sent; this module only
moves bytes, keeps one lock over the engines, and keeps the commit order
(`_checkpoint`). Everything that can fail slowly (the API) runs in tasks whose
results come back to the loop; nothing here decides conversation contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumer import deadletter, metrics
from consumer.deadletter import DeadLetter
from consumer.engine import (
    Decision,
    EngineConfig,
    Flush,
    Notice,
    NoticeRefusal,
    PartitionEngine,
    Refusal,
    Trigger,
)
from consumer.errors import InvalidEvent
from consumer.events import Event, decode_event
from consumer.health import Health, HealthServer
from consumer.logs import configure as configure_logs
from consumer.settings import Settings
from consumer.sink import Delivery, Outcome, Sink
from consumer.topics import LARGE_RECORD_BYTES, ensure_topics, read_state

log = structlog.get_logger(__name__)

POLL_TIMEOUT_MS = 100
TICK_SECONDS = 1.0
SHUTDOWN_RESERVE_SECONDS = 5.0
"""Part of the grace period kept for writing state and committing after the last flush."""

STOPPING = "the worker stops without committing further"

REFUSALS = {
    "fewer_messages": (
        "not sent: {d.message_count} messages, but the API already holds {d.acknowledged_count} "
        "for this conversation and an upsert would replace them"
    ),
    "history_expired": (
        "not sent: the conversation continued after its earlier history left the state topic "
        "(CONVERSATION_STATE_RETENTION_SECONDS); an upsert would replace the logged history"
    ),
    "too_large": "not sent: cannot be cut to fit the API's body limit",
}

NOTICE_REFUSALS = {
    "unknown_conversation": "no conversation {d.conversation_id} is known in this partition",
    "unknown_completion": "no reply in conversation {d.conversation_id} has this completion_id",
    "history_expired": "the conversation's history left the state topic; its ids are unknown",
    "message_not_logged": "the conversation body holding the message was not logged",
}


class _PendingCheckpoint(NamedTuple):
    """State and dead-letter records on their way to the broker, and what they make committable."""

    acks: list[asyncio.Future[Any]]
    offsets: dict[TopicPartition, int]


class _Partition:
    """One assigned input partition: its engine, its position and its flushes in flight."""

    __slots__ = ("catch_up", "committed", "duplicates", "engine", "position", "tasks", "tp")

    def __init__(self, tp: TopicPartition, engine: PartitionEngine, committed: int | None) -> None:
        self.tp = tp
        self.engine = engine
        self.position: int | None = None
        self.committed = committed
        self.tasks: dict[asyncio.Task[Delivery], Flush | Notice] = {}
        self.catch_up: int | None = None
        """End offset at assignment: restored flushes wait until the replay reaches it."""
        self.duplicates = 0


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
    """One consumer-group member. `run()` until `stop()`; exit code 0 on a clean stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        health: Health | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.health = health or Health()
        self._clock = clock
        self._options: dict[str, Any] = settings.kafka_client_options()
        self._config = EngineConfig(
            idle_timeout=settings.conversation_idle_timeout_seconds,
            max_open=settings.conversation_max_open_seconds,
            state_retention=settings.conversation_state_retention_seconds,
        )
        self._parts: dict[TopicPartition, _Partition] = {}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._outbox: list[tuple[int, DeadLetter]] = []
        self._unacked: list[asyncio.Future[Any]] = []
        self._paused: str | None = None
        self._failed = False
        self._activity = False
        self._checkpoints: deque[_PendingCheckpoint] = deque()
        self._next_tick = 0.0
        self._next_checkpoint = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._sink: Sink | None = None

    def stop(self) -> None:
        """Asks the loop to stop; the shutdown sequence runs in `run()`."""
        self._stopping.set()

    async def run(self) -> int:
        """Runs until `stop()`; 0 after a clean stop, 1 when Kafka failed the worker.

        A Kafka failure (unreachable, refused credentials, a state write that
        could not be made durable) ends the process rather than limping on:
        nothing past the last durable checkpoint was committed, so the next
        start, here or on another member, replays from there.
        """
        try:
            await self._start()
            while not self._stopping.is_set():
                await self._step()
        except KafkaError as exc:
            s = self.settings
            log.exception(
                "kafka_failed",
                error=f"{type(exc).__name__}: {exc}",
                bootstrap_servers=s.kafka_bootstrap_servers,
                security_protocol=s.kafka_security_protocol,
                sasl_mechanism=s.kafka_sasl_mechanism,
                hint="check KAFKA_BOOTSTRAP_SERVERS, the security settings, the credentials "
                "and the CA file; the worker resumes from its last commit when restarted",
            )
            return 1
        finally:
            await self._shutdown()
        return 1 if self._failed else 0

    async def _start(self) -> None:
        s = self.settings
        await ensure_topics(
            self._options,
            input_topic=s.kafka_topic,
            state_topic=s.kafka_state_topic,
            dlq_topic=s.kafka_dlq_topic,
            replication_factor=s.kafka_topic_replication_factor,
        )
        self._sink = Sink(
            base_url=s.inkeep_api_base_url,
            api_key=s.inkeep_api_key,
            max_concurrency=s.inkeep_max_concurrency,
            rate_limit=s.inkeep_rate_limit_per_second,
            timeout=s.inkeep_request_timeout_seconds,
            max_retry_delay=s.inkeep_max_retry_delay_seconds,
        )
        await self._sink.start()
        self._producer = AIOKafkaProducer(
            **self._options,
            acks="all",
            enable_idempotence=True,
            max_request_size=LARGE_RECORD_BYTES,
            # State records of many conversations go out together at each checkpoint.
            max_batch_size=1024 * 1024,
            linger_ms=5,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **self._options,
            group_id=s.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset=s.kafka_auto_offset_reset,
            # A revocation flushes and writes state before it returns; the group waits that long.
            rebalance_timeout_ms=int((s.shutdown_grace_seconds + 30) * 1000),
        )
        self._consumer.subscribe([s.kafka_topic], listener=_Listener(self))
        await self._consumer.start()
        log.info("worker_started", topic=s.kafka_topic, group_id=s.kafka_group_id)

    async def _step(self) -> None:
        assert self._consumer is not None
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
                    self._handle(part, record, now)
                metrics.records_consumed.labels(tp.topic, str(tp.partition)).inc(len(records))
            await self._finish_catch_up(now)
            self._collect(now)
            if now >= self._next_tick:
                self._tick(now)
            await self._send_dead_letters()
            self._backpressure()
            await self._settle(block=False)
            # On the interval, and as soon as the input is drained, so a quiet partition's
            # offsets do not wait a whole interval; one checkpoint in flight at a time.
            due = now >= self._next_checkpoint or (not batch and self._activity)
            if due and not self._checkpoints:
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
        """One input record: into the engine, or to the dead-letter topic. Never raises."""
        part.position = record.offset + 1
        self._activity = True
        value: bytes | None = record.value
        try:
            event = self._decode(value)
        except InvalidEvent as exc:
            metrics.records_invalid.labels(exc.kind).inc()
            log.warning(
                "record_invalid",
                error=exc.kind,
                reason=exc.reason[:300],
                topic=part.tp.topic,
                partition=part.tp.partition,
                offset=record.offset,
            )
            self._dead_letter(
                part,
                deadletter.invalid_record(
                    key=record.key,
                    value=value,
                    kind=exc.kind,
                    reason=exc.reason,
                    topic=part.tp.topic,
                    partition=part.tp.partition,
                    offset=record.offset,
                ),
                what="record",
                reason=exc.kind,
            )
            return
        if record.key is None or record.key != event.conversation_id.encode():
            metrics.records_mis_keyed.inc()
            log.warning(
                "record_mis_keyed",
                conversation_id=event.conversation_id,
                topic=part.tp.topic,
                partition=part.tp.partition,
                offset=record.offset,
            )
        self._dispatch(part, part.engine.apply(event, record.offset, now))

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
                    part,
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
        self._dead_letter(
            part,
            deadletter.conversation(
                conversation_id=decision.conversation_id,
                body=decision.body,
                kind=str(decision.reason),
                reason=NOTICE_REFUSALS[decision.reason].format(d=decision),
                topic=part.tp.topic,
                partition=part.tp.partition,
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
        self._dead_letter(
            part,
            deadletter.conversation(
                conversation_id=notice.conversation_id,
                body=delivery.body,
                kind="rejected",
                reason=f"the API refused the {notice.kind} ({delivery.status})",
                topic=part.tp.topic,
                partition=part.tp.partition,
                status=delivery.status,
                answer=delivery.answer,
            ),
            what=str(notice.kind),
            reason="rejected",
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
            self.health.set_api_reachable(self._sink.reachable)

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
                    part,
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
        self._dead_letter(
            part,
            deadletter.conversation(
                conversation_id=flush.conversation_id,
                body=delivery.body,
                kind="rejected",
                reason=f"the API refused the conversation ({delivery.status})",
                topic=part.tp.topic,
                partition=part.tp.partition,
                status=delivery.status,
                answer=delivery.answer,
            ),
            what="conversation",
            reason="rejected",
        )
        self._dispatch(part, part.engine.dead_lettered(flush.conversation_id, flush.seq, now))

    def _dead_letter(self, part: _Partition, record: DeadLetter, *, what: str, reason: str) -> None:
        metrics.dead_lettered.labels(what, reason).inc()
        self._outbox.append((part.tp.partition, record))

    async def _send_dead_letters(self) -> None:
        outbox, self._outbox = self._outbox, []
        for partition, record in outbox:
            await self._produce(
                self.settings.kafka_dlq_topic, record.key, record.value, partition, record.headers
            )

    async def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queues a state or dead-letter record; `_checkpoint` waits for the broker's ack."""
        assert self._producer is not None
        try:
            future = await self._producer.send(
                topic, value, key=key, partition=partition, headers=headers
            )
        except BaseException:
            self.fail()
            raise
        self._unacked.append(future)

    def fail(self, reason: str | None = "durable_write_failed") -> None:
        """A record that had to be durable was not, or a rebalance step failed: stop.

        The engine and the outbox have handed their records over, so a later
        checkpoint could commit offsets past what never reached the broker.
        Stopping without committing leaves the replay to the next start.
        `reason` is logged once; None when the caller logged it already.
        """
        if not self._failed and reason is not None:
            log.error(reason, hint=STOPPING)
        self._failed = True
        self._stopping.set()

    def _tick(self, now: float) -> None:
        """Time-driven work: idle and max-open flushes, the memory bound, gauges."""
        self._next_tick = now + TICK_SECONDS
        for part in self._parts.values():
            self._dispatch(part, part.engine.due(now))
        excess = sum(p.engine.open_count for p in self._parts.values()) - (
            self.settings.max_open_conversations
        )
        if excess > 0:
            for part in sorted(self._parts.values(), key=lambda p: -p.engine.open_count):
                if excess <= 0:
                    break
                count = min(excess, part.engine.open_count)
                self._dispatch(part, part.engine.shed(count, now))
                excess -= count
        metrics.open_conversations.set(sum(p.engine.open_count for p in self._parts.values()))
        metrics.notices_waiting.set(sum(p.engine.waiting_notices for p in self._parts.values()))
        for part in self._parts.values():
            metrics.events_duplicate.inc(part.engine.duplicates - part.duplicates)
            part.duplicates = part.engine.duplicates
        assert self._consumer is not None
        for part in self._parts.values():
            highwater = self._consumer.highwater(part.tp)
            if highwater is not None and part.position is not None:
                metrics.consumer_lag.labels(part.tp.topic, str(part.tp.partition)).set(
                    max(0, highwater - part.position)
                )

    def _backpressure(self) -> None:
        """Pauses fetching while the API is refusing the key or too much is in flight."""
        assert self._consumer is not None
        assert self._sink is not None
        pending = sum(len(p.tasks) for p in self._parts.values())
        metrics.pending_flushes.set(pending)
        limit = self.settings.max_pending_flushes
        reason: str | None = None
        if self._sink.auth_failed:
            reason = "auth"
        elif pending >= limit or (self._paused == "backpressure" and pending > limit // 2):
            reason = "backpressure"
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
        """Makes the handled records durable, then commits their offsets.

        The order is the whole point; do not reorder:
        1. produce the state of every conversation changed since the last
           checkpoint to the state topic, in the partition of its input;
        2. wait until the broker has every state and dead-letter record
           (acks=all) — a failure here stops the worker before anything more
           is committed, and the next owner replays from the last commit;
        3. commit each partition's position, held back to the first event of
           any conversation whose flush the API has not acknowledged yet, so
           that while the API is down offsets never pass unflushed work.
        A committed offset therefore never covers an event whose effect exists
        only in this process. Steps 2 and 3 run in `_settle`: the loop goes on
        while the broker acknowledges (`wait=False`); checkpoints settle in the
        order they were taken, so commits only move forward. A revocation or
        shutdown waits (`wait=True`).
        """
        if self._failed:
            return
        await self._send_dead_letters()
        offsets: dict[TopicPartition, int] = {}
        written = 0
        for part in parts:
            checkpoint = part.engine.checkpoint()
            for key, value in checkpoint.records:
                await self._produce(self.settings.kafka_state_topic, key, value, part.tp.partition)
            written += len(checkpoint.records)
            target = part.position
            if target is not None and checkpoint.hold is not None:
                target = min(target, checkpoint.hold)
            if target is not None:
                offsets[part.tp] = target
        metrics.state_records_written.inc(written)
        acks, self._unacked = self._unacked, []
        self._checkpoints.append(_PendingCheckpoint(acks, offsets))
        if wait:
            await self._settle(block=True)

    async def _settle(self, *, block: bool) -> None:
        """Steps 2 and 3 of `_checkpoint`, oldest checkpoint first."""
        assert self._consumer is not None
        while self._checkpoints:
            head = self._checkpoints[0]
            if not block and not all(ack.done() for ack in head.acks):
                return
            self._checkpoints.popleft()
            try:
                await asyncio.gather(*head.acks)
            except BaseException:
                self.fail()
                raise
            if self._failed:
                return
            offsets = {
                tp: offset
                for tp, offset in head.offsets.items()
                if tp in self._parts and offset > (self._parts[tp].committed or -1)
            }
            if not offsets:
                continue
            try:
                await self._consumer.commit(offsets)
            except KafkaError as exc:
                # Safe to skip: the state is durable, and whoever replays from the last
                # commit finds these events already applied.
                log.warning("commit_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            metrics.offsets_committed.inc(len(offsets))
            for tp, offset in offsets.items():
                self._parts[tp].committed = offset

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
            await self._send_dead_letters()

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
        async with self._lock:
            new = [tp for tp in assigned if tp not in self._parts]
            self.health.set_restoring(True)
            now = self._clock()
            engines = {tp.partition: PartitionEngine(self._config) for tp in new}
            started = time.monotonic()
            count = await read_state(
                self._options,
                self.settings.kafka_state_topic,
                sorted(engines),
                lambda partition, key, value: engines[partition].restore(key, value, now),
            )
            ends = await self._consumer.end_offsets(new) if new else {}
            for tp in new:
                committed = await self._consumer.committed(tp)
                part = _Partition(tp, engines[tp.partition], committed)
                self._parts[tp] = part
                if (committed or 0) >= ends[tp]:
                    self._dispatch(part, part.engine.restored(now))
                else:
                    # Restored state may predate what a lost owner already sent; re-sending it
                    # before the replay catches up could briefly replace a longer history.
                    part.catch_up = ends[tp]
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
        if self._sink is None:
            return  # Never got past checking the topics: nothing to flush or close.
        started = asyncio.get_running_loop().time()
        log.info("worker_stopping")
        try:
            if self._consumer is not None and self._parts:
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


async def run(settings: Settings) -> int:
    """The `run` command: the worker, its health server, and signal handling."""
    configure_logs(settings.log_level, settings.log_format)
    health = Health()
    server = HealthServer(health)
    await server.start(port=settings.http_port)
    worker = Worker(settings, health=health)
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
