"""The commit order: records made durable first, offsets committed after, oldest first.

A checkpoint is taken, then settled:
1. take: the dead-letter outbox and the state of every conversation changed since
   the last checkpoint go to the producer (state in the partition of its input);
2. settle: once the broker has acknowledged every record of the checkpoint
   (acks=all), commit each partition's position, held back to the first event of
   any conversation whose flush the API has not acknowledged yet.
A committed offset therefore never covers an event whose effect exists only in this
process. Checkpoints settle in the order they were taken, so commits only move
forward; a write that fails stops every later commit for good, and the next owner
replays from the last commit.

The producer and the consumer are passed in (as Quix Streams' `Checkpoint` and arq's
`Worker(redis_pool=...)` take theirs), so the order is tested in-process with fakes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from consumer import metrics
from consumer.deadletter import DeadLetter

log = structlog.get_logger(__name__)

STOPPING = "the worker stops without committing further"


class Producer(Protocol):
    """What a checkpoint needs of `AIOKafkaProducer`: `send` returns the ack's future."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]: ...


class Committer(Protocol):
    """What a checkpoint needs of `AIOKafkaConsumer`."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


def commit_target(position: int | None, hold: int | None) -> int | None:
    """The offset a partition may commit: its position, or the hold when that is earlier.

    The hold is the first offset of a conversation whose flush the API has not
    acknowledged; committing past it would lose that conversation if this process died.
    """
    if position is None or hold is None:
        return position
    return min(position, hold)


def _floor(committed: int | None) -> int:
    return -1 if committed is None else committed


class PartitionState(NamedTuple):
    """One partition's part of a checkpoint: its state records, position and hold."""

    tp: TopicPartition
    records: Sequence[tuple[bytes, bytes | None]]
    position: int | None
    hold: int | None


class _Taken(NamedTuple):
    """Records on their way to the broker, and the offsets their acknowledgement makes safe."""

    acks: list[asyncio.Future[Any]]
    offsets: dict[TopicPartition, int]


class Checkpoints:
    """The dead-letter outbox, the state writes and the commits of one consumer-group member."""

    def __init__(
        self,
        producer: Producer,
        consumer: Committer,
        *,
        state_topic: str,
        dlq_topic: str,
        on_fail: Callable[[], None] = lambda: None,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._state_topic = state_topic
        self._dlq_topic = dlq_topic
        self._on_fail = on_fail
        self._outbox: list[DeadLetter] = []
        self._unacked: list[asyncio.Future[Any]] = []
        self._taken: deque[_Taken] = deque()
        self._committed: dict[TopicPartition, int | None] = {}
        self.failed = False

    @property
    def pending(self) -> bool:
        """A checkpoint was taken and has not settled yet."""
        return bool(self._taken)

    def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def own(self, tp: TopicPartition, committed: int | None) -> None:
        """Starts committing for an assigned partition, from its group-committed offset."""
        self._committed[tp] = committed

    def release(self, tps: Iterable[TopicPartition]) -> None:
        """Stops committing for revoked partitions: their new owner commits from now on."""
        for tp in tps:
            self._committed.pop(tp, None)

    def dead_letter(self, record: DeadLetter) -> None:
        """Queues a dead-letter record; it is sent before the next checkpoint is taken."""
        self._outbox.append(record)

    async def send_dead_letters(self) -> None:
        outbox, self._outbox = self._outbox, []
        # Keyed, on any partition: the dead-letter topic's partition count is its owner's choice.
        for record in outbox:
            await self._produce(self._dlq_topic, record.key, record.value, None, record.headers)

    async def take(self, parts: Iterable[PartitionState], *, wait: bool) -> None:
        """Step 1: writes the outbox and the state records; settles now when `wait`.

        A revocation or shutdown waits (`wait=True`); the loop does not, and settles
        as the acknowledgements arrive.
        """
        if self.failed:
            return
        await self.send_dead_letters()
        offsets: dict[TopicPartition, int] = {}
        written = 0
        for part in parts:
            for key, value in part.records:
                await self._produce(self._state_topic, key, value, part.tp.partition)
            written += len(part.records)
            target = commit_target(part.position, part.hold)
            if target is not None:
                offsets[part.tp] = target
        metrics.state_records_written.inc(written)
        acks, self._unacked = self._unacked, []
        self._taken.append(_Taken(acks, offsets))
        if wait:
            await self.settle(block=True)

    async def settle(self, *, block: bool) -> None:
        """Step 2, oldest checkpoint first; without `block`, only those fully acknowledged."""
        while self._taken:
            head = self._taken[0]
            if not block and not all(ack.done() for ack in head.acks):
                return
            self._taken.popleft()
            try:
                await asyncio.gather(*head.acks)
            except BaseException:
                self.fail()
                raise
            if self.failed:
                return
            offsets = {
                tp: offset
                for tp, offset in head.offsets.items()
                if tp in self._committed and offset > _floor(self._committed[tp])
            }
            if not offsets:
                continue
            try:
                await self._consumer.commit(offsets)
            except KafkaError as exc:
                # Safe to skip: the state is durable, and whoever replays from the last
                # commit finds these events already applied.
                log.warning("commit_failed", error=f"{type(exc).__name__}: {exc}")
                metrics.offset_commits_failed.inc()
                continue
            metrics.offsets_committed.inc(len(offsets))
            self._committed.update(offsets)

    def fail(self, reason: str | None = "durable_write_failed") -> None:
        """A record that had to be durable was not, or a rebalance step failed: stop.

        The engine and the outbox have handed their records over, so a later
        checkpoint could commit offsets past what never reached the broker.
        Nothing is committed from here on; the replay is left to the next start.
        `reason` is logged once; None when the caller logged it already.
        """
        if not self.failed and reason == "durable_write_failed":
            metrics.durable_writes_failed.inc()
        if not self.failed and reason is not None:
            log.error(reason, hint=STOPPING)
        self.failed = True
        self._on_fail()

    async def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        try:
            future = await self._producer.send(
                topic, value, key=key, partition=partition, headers=headers
            )
        except BaseException:
            self.fail()
            raise
        self._unacked.append(future)
