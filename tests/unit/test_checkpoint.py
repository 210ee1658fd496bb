"""The commit order, driven by hand: a fake producer whose acks resolve or fail on request,
a fake consumer that records commits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer.checkpoint import Checkpoints, PartitionState, commit_target
from consumer.deadletter import DeadLetter

STATE = "in.state"
DLQ = "in.dlq"
TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]] | None
    ack: asyncio.Future[Any]


@dataclass
class FakeProducer:
    sent: list[Sent] = field(default_factory=list)
    refuse: BaseException | None = None

    async def send(self, topic, value=None, *, key=None, partition=None, headers=None):
        if self.refuse is not None:
            raise self.refuse
        ack = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(topic, key, value, partition, headers, ack))
        return ack

    def ack(self, *indexes):
        for i in indexes or range(len(self.sent)):
            if not self.sent[i].ack.done():
                self.sent[i].ack.set_result(None)


@dataclass
class FakeConsumer:
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    refuse: BaseException | None = None

    async def commit(self, offsets):
        if self.refuse is not None:
            raise self.refuse
        self.commits.append(dict(offsets))


@dataclass
class Rig:
    producer: FakeProducer
    consumer: FakeConsumer
    checkpoints: Checkpoints
    stops: list[bool]


def rig(*tps: TopicPartition, committed: int | None = None) -> Rig:
    producer, consumer, stops = FakeProducer(), FakeConsumer(), []
    checkpoints = Checkpoints(
        producer, consumer, state_topic=STATE, dlq_topic=DLQ, on_fail=lambda: stops.append(True)
    )
    for tp in tps or (TP0,):
        checkpoints.own(tp, committed)
    return Rig(producer, consumer, checkpoints, stops)


def state(tp=TP0, position=None, hold=None, records=((b"c1", b"s1"),)):
    return PartitionState(tp, list(records), position, hold)


async def spin(times=5):
    for _ in range(times):
        await asyncio.sleep(0)


async def test_nothing_is_committed_before_the_broker_has_the_state():
    r = rig()
    rows = [(b"c1", b"s1"), (b"c2", None)]
    await r.checkpoints.take([state(position=10, records=rows)], wait=False)
    assert [(s.topic, s.key, s.value, s.partition) for s in r.producer.sent] == [
        (STATE, b"c1", b"s1", 0),
        (STATE, b"c2", None, 0),
    ]
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == []
    r.producer.ack(0)
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == []
    assert r.checkpoints.pending
    r.producer.ack(1)
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == [{TP0: 10}]
    assert r.checkpoints.committed(TP0) == 10
    assert not r.checkpoints.pending


async def test_dead_letters_go_first_and_their_acks_hold_the_commit_too():
    r = rig()
    r.checkpoints.dead_letter(DeadLetter(b"k", b"bad", [("error", b"x")]))
    await r.checkpoints.take([state(position=3)], wait=False)
    # Dead letters are keyed, on any partition; state goes to its input's partition.
    assert [(s.topic, s.partition) for s in r.producer.sent] == [(DLQ, None), (STATE, 0)]
    assert r.producer.sent[0].headers == [("error", b"x")]
    r.producer.ack(1)  # The state is durable, the dead letter not yet.
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == []
    r.producer.ack(0)
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == [{TP0: 3}]


@pytest.mark.parametrize("how", ["ack_fails", "send_raises"])
async def test_after_a_failed_write_nothing_more_is_committed_ever(how):
    r = rig(TP0, TP1)
    await r.checkpoints.take([state(TP0, position=5)], wait=False)
    r.producer.ack()
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == [{TP0: 5}]

    if how == "ack_fails":
        await r.checkpoints.take([state(TP0, position=8)], wait=False)
        await r.checkpoints.take([state(TP1, position=9)], wait=False)  # Queued behind it.
        r.producer.sent[1].ack.set_exception(KafkaTimeoutError())
        r.producer.ack(2)
        with pytest.raises(KafkaTimeoutError), capture_logs() as logs:
            await r.checkpoints.settle(block=False)
    else:
        r.producer.refuse = KafkaConnectionError()
        with pytest.raises(KafkaConnectionError), capture_logs() as logs:
            await r.checkpoints.take([state(TP0, position=8)], wait=False)
    assert r.checkpoints.failed
    assert r.stops == [True]
    assert [e["event"] for e in logs] == ["durable_write_failed"]

    r.producer.refuse = None
    sent = len(r.producer.sent)
    await r.checkpoints.take([state(TP0, position=20), state(TP1, position=20)], wait=False)
    r.producer.ack()
    await r.checkpoints.settle(block=True)
    # Were anything sent here, its ack would never come: wait_for turns that into a failure.
    await asyncio.wait_for(r.checkpoints.take([state(TP0, position=30)], wait=True), 1)
    assert len(r.producer.sent) == sent  # Nothing more written either.
    assert r.consumer.commits == [{TP0: 5}]


async def test_a_commit_is_held_behind_an_unacknowledged_flush():
    r = rig()
    await r.checkpoints.take([state(position=10, hold=4)], wait=False)
    r.producer.ack()
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == [{TP0: 4}]
    # Still held at 4: nothing new to commit.
    await r.checkpoints.take([state(position=12, hold=4)], wait=False)
    r.producer.ack()
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == [{TP0: 4}]
    # The API acknowledged the flush: the hold is gone.
    await r.checkpoints.take([state(position=12)], wait=False)
    r.producer.ack()
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == [{TP0: 4}, {TP0: 12}]


async def test_checkpoints_settle_in_the_order_they_were_taken():
    r = rig(TP0, TP1)
    await r.checkpoints.take([state(TP0, position=5), state(TP1, position=2)], wait=False)
    await r.checkpoints.take([state(TP0, position=9), state(TP1, position=7)], wait=False)
    r.producer.ack(2, 3)  # The later checkpoint's acks arrive first.
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == []
    r.producer.ack(0, 1)
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits == [{TP0: 5, TP1: 2}, {TP0: 9, TP1: 7}]


async def test_a_revocation_waits_for_its_checkpoint_and_the_ones_before():
    r = rig(TP0, TP1)
    await r.checkpoints.take([state(TP0, position=5)], wait=False)
    revoking = asyncio.create_task(
        r.checkpoints.take([state(TP0, position=9), state(TP1, position=4)], wait=True)
    )
    await spin()
    assert not revoking.done()
    r.producer.ack(1, 2)
    await spin()
    assert not revoking.done()  # The earlier checkpoint is not durable yet.
    assert r.consumer.commits == []
    r.producer.ack(0)
    await asyncio.wait_for(revoking, 1)
    assert r.consumer.commits == [{TP0: 5}, {TP0: 9, TP1: 4}]
    r.checkpoints.release([TP1])
    await r.checkpoints.take([state(TP0, position=11), state(TP1, position=8)], wait=False)
    r.producer.ack()
    await r.checkpoints.settle(block=False)
    assert r.consumer.commits[-1] == {TP0: 11}  # TP1 belongs to its new owner now.


async def test_commits_only_move_forward():
    r = rig(committed=10)
    await r.checkpoints.take([state(position=8, records=())], wait=True)
    await r.checkpoints.take([state(position=10, records=())], wait=True)
    assert r.consumer.commits == []
    await r.checkpoints.take([state(position=11, records=())], wait=True)
    assert r.consumer.commits == [{TP0: 11}]


async def test_a_refused_commit_is_skipped_and_the_next_one_made():
    r = rig()
    r.consumer.refuse = KafkaConnectionError()
    with capture_logs() as logs:
        await r.checkpoints.take([state(position=3, records=())], wait=True)
    assert [e["event"] for e in logs] == ["commit_failed"]
    assert not r.checkpoints.failed
    r.consumer.refuse = None
    await r.checkpoints.take([state(position=6, records=())], wait=True)
    assert r.consumer.commits == [{TP0: 6}]


def test_commit_target_is_the_position_held_back_to_the_hold():
    assert commit_target(None, None) is None
    assert commit_target(None, 3) is None
    assert commit_target(10, None) == 10
    assert commit_target(10, 4) == 4
    assert commit_target(4, 10) == 4


@settings(max_examples=150, deadline=None)
@given(
    positions=st.lists(st.integers(0, 50), min_size=1, max_size=6),
    records=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_any_ack_order_commits_only_durable_checkpoints_in_order(positions, records, order):
    """Whatever order acks arrive in, each commit follows every ack of its checkpoint and of
    all checkpoints before it, and the committed offset never goes back."""

    async def scenario():
        r = rig()
        owner: list[int] = []  # Checkpoint index of each record sent.
        for i, position in enumerate(positions):
            rows = [(f"c{j}".encode(), b"s") for j in range(records[i])]
            await r.checkpoints.take([state(position=position, records=rows)], wait=False)
            owner += [i] * (len(r.producer.sent) - len(owner))
        pending = list(range(len(r.producer.sent)))
        order.shuffle(pending)
        committed_after: list[tuple[int, set[int]]] = []
        acked: set[int] = set()
        while True:
            before = len(r.consumer.commits)
            await r.checkpoints.settle(block=False)
            committed_after += [(c[TP0], set(acked)) for c in r.consumer.commits[before:]]
            if not pending:
                break
            index = pending.pop()
            r.producer.ack(index)
            acked.add(index)
        offsets = [offset for offset, _ in committed_after]
        assert offsets == sorted(set(offsets))
        for offset, acked_then in committed_after:
            first = positions.index(offset)
            needed = {i for i, c in enumerate(owner) if c <= first}
            assert needed <= acked_then
        expected = max(positions)
        assert not r.checkpoints.pending
        assert r.checkpoints.committed(TP0) == expected

    asyncio.run(scenario())
