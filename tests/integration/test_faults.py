"""Nothing lost, doubled or shortened while the brokers fail: a restart, a lost cluster member.

The worker runs as a real process against brokers the test owns; the API's final
state must equal the same events rendered offline: every conversation present,
every message once, no flush that carried a shorter history than the last.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from harness import (
    Worker,
    all_logged,
    assert_matches,
    committed_to_the_end,
    conversation,
    expected_bodies,
    fresh,
    history_only_grows,
    interleave,
    metrics_text,
    produce,
    topic_names,
    wait_for,
)
from kafka_fixtures import make_topic

from consumer import payload
from consumer.testing.emulator import Emulator

pytestmark = pytest.mark.integration


def stream(prefix: str, count: int) -> list[dict[str, Any]]:
    """Interleaved conversations: full and delta history, ended and left to go idle."""
    return interleave(
        conversation(
            f"{prefix}{i}", 3 + i % 4, ended=i % 3 != 0, history="delta" if i % 4 == 1 else "full"
        )
        for i in range(count)
    )


def split(events: list[dict[str, Any]], count: int) -> list[list[dict[str, Any]]]:
    return [events[k * len(events) // count : (k + 1) * len(events) // count] for k in range(count)]


async def produce_while(
    bootstrap: str, topic: str, events: list[dict[str, Any]], fault: Any
) -> None:
    """Runs the blocking `fault` in a thread while a producer started before it sends `events`.

    The producer must be connected first: a new client cannot bootstrap from a stopped broker,
    while a started one keeps its batches and retries until a leader answers.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        task = asyncio.create_task(asyncio.to_thread(fault))
        await asyncio.sleep(0.5)
        futures = [
            await producer.send(topic, json.dumps(e).encode(), key=e["conversation_id"].encode())
            for e in events
        ]
        await asyncio.gather(*futures)
        await task
    finally:
        await producer.stop()


async def settle(
    emulator: Emulator, expected: dict[str, payload.Conversation], within: float
) -> None:
    """Waits until the API holds every expected body; on timeout, says what differs."""
    try:
        await wait_for(lambda: all_logged(emulator, expected), within, "every conversation logged")
    except AssertionError:
        assert_matches(emulator.conversations, expected)
        raise


async def consumed(worker: Worker) -> float:
    """The worker's `records_consumed` total, or -1 while /metrics does not answer."""
    text = await metrics_text(worker)
    if text is None:
        return -1
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("inkeep_consumer_records_consumed_total{")
    )


async def wait_consumed(worker: Worker, count: int) -> bool:
    return await consumed(worker) >= count


async def partitions(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions as the cluster describes them (leader, replicas, isr)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0, f"{topic}: error {described['error_code']}"
    return list(described["partitions"])


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> id of the node leading it."""
    return {p["partition"]: p["leader"] for p in await partitions(bootstrap, topic)}


async def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    kafka_private, emulator, workers, tmp_path
):
    """The worker rides out a broker restart; the state it wrote across it restores later.

    Observed and required: the worker keeps running while its only broker is down
    (aiokafka retries the fetches, state writes and commits), then finishes the stream.
    """
    bootstrap = kafka_private.bootstrap_servers
    topic, group = fresh("chat"), fresh("g")
    await make_topic(bootstrap, 3, name=topic)
    events = stream("b", 24)
    first, during, last = split(events, 3)
    expected = expected_bodies(events, tmp_path)
    worker = workers(
        bootstrap, topic, emulator, group=group, extra={"CONVERSATION_IDLE_TIMEOUT_SECONDS": "5"}
    ).start()

    await produce(bootstrap, topic, first)
    await wait_for(
        lambda: wait_consumed(worker, len(first)), 30, "the first third consumed", interval=0.1
    )
    # Conversations are open in the worker (not yet idle) when the broker goes away; more
    # events are produced while it is down and wait in the producer until it is back.
    await produce_while(bootstrap, topic, during, kafka_private.restart)
    await wait_for(
        lambda: committed_to_the_end(bootstrap, group, topic), 60, "offsets committed after restart"
    )
    assert worker.alive(), "the worker exited during the broker restart"
    assert {topic, f"{topic}.state", f"{topic}.dlq"} <= await topic_names(bootstrap)
    broker_gone = [
        line
        for line in worker.logs()
        if str(line.get("logger", "")).startswith("aiokafka") and line.get("level") == "error"
    ]
    assert broker_gone, "the worker never noticed the broker going away: nothing was tested"

    # A new process must find the conversations in the state topic written across the restart.
    worker.kill()
    worker.start()
    await produce(bootstrap, topic, last)
    await settle(emulator, expected, 60)
    await wait_for(
        lambda: committed_to_the_end(bootstrap, group, topic), 20, "offsets committed to the end"
    )
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    restored = [
        line
        for line in worker.logs()
        if line.get("event") == "partitions_assigned" and line.get("state_records")
    ]
    assert restored, "the restarted worker read no state back"
    code, _ = await worker.terminate()
    assert code == 0


@pytest.mark.cluster
async def test_one_of_three_brokers_stopped_mid_stream(kafka_cluster, emulator, workers, tmp_path):
    """With replication factor 3 and min.insync.replicas 2, losing a leader loses nothing."""
    bootstrap = kafka_cluster.bootstrap_servers
    topic, group = fresh("chat"), fresh("g")
    await make_topic(bootstrap, 3, name=topic, replication_factor=3)
    events = stream("n", 24)
    parts = split(events, 4)
    expected = expected_bodies(events, tmp_path)
    worker = workers(
        bootstrap,
        topic,
        emulator,
        group=group,
        extra={"KAFKA_TOPIC_REPLICATION_FACTOR": "3", "CONVERSATION_IDLE_TIMEOUT_SECONDS": "5"},
    ).start()

    await produce(bootstrap, topic, parts[0])
    await wait_for(
        lambda: wait_consumed(worker, len(parts[0])), 60, "the first quarter consumed", interval=0.1
    )
    led = await leaders(bootstrap, topic)
    victim = max(set(led.values()), key=list(led.values()).count)
    index = next(i for i, node in enumerate(kafka_cluster.nodes) if node.node_id == victim)
    await produce_while(bootstrap, topic, parts[1], lambda: kafka_cluster.stop_node(index))
    moved = await leaders(bootstrap, topic)
    assert victim not in moved.values(), f"node {victim} still leads after stopping: {moved}"
    await produce(bootstrap, topic, parts[2])
    await wait_for(
        lambda: committed_to_the_end(bootstrap, group, topic), 60, "offsets committed, node down"
    )
    assert worker.alive(), "the worker exited when one broker of three stopped"

    await asyncio.to_thread(kafka_cluster.start_node, index)
    await produce(bootstrap, topic, parts[3])
    await settle(emulator, expected, 60)
    await wait_for(
        lambda: committed_to_the_end(bootstrap, group, topic), 30, "offsets committed to the end"
    )
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    for own in (f"{topic}.state", f"{topic}.dlq"):
        replicas = [len(p["replicas"]) for p in await partitions(bootstrap, own)]
        assert replicas == [3, 3, 3], f"{own}: replicas per partition {replicas}"
    assert worker.alive()
    code, _ = await worker.terminate()
    assert code == 0
