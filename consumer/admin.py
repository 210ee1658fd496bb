"""Kafka administration shared by the worker, its tooling, the tests and the benchmark.

Creating topics (with one reading of "already exists"), waiting for their leaders, and
reading end and committed offsets. `client` is a bootstrap string, or the keyword
options of a secured client (`Settings.kafka_client_options()`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from consumer.errors import ConsumerError

Client = str | Mapping[str, Any]


class AdminError(ConsumerError):
    """The cluster refused or did not finish an administrative request."""


class Created(NamedTuple):
    """What `create_topics` did with each topic asked for."""

    created: list[str]
    existed: list[str]
    failed: dict[str, str]
    """Topic → the broker's error, as `ErrorName: message`."""


def options(client: Client) -> dict[str, Any]:
    if isinstance(client, str):
        return {"bootstrap_servers": client}
    return dict(client)


async def create_topics(
    admin: AIOKafkaAdminClient, topics: Sequence[NewTopic], *, timeout_ms: int = 30_000
) -> Created:
    """Asks for the topics; a topic that exists already (another member won the race) is fine."""
    response = await admin.create_topics(list(topics), timeout_ms=timeout_ms)
    result = Created([], [], {})
    for name, code, *rest in response.topic_errors:
        if code == 0:
            result.created.append(name)
        elif code == TopicAlreadyExistsError.errno:
            result.existed.append(name)
        else:
            message = rest[0] if rest and rest[0] else ""
            result.failed[name] = f"{for_code(code).__name__}: {message}".rstrip(": ")
    return result


async def create_topic(  # noqa: PLR0913 - the knobs of a Kafka topic.
    client: Client,
    name: str,
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
    exist_ok: bool = False,
    within: float = 30.0,
) -> bool:
    """Creates a topic and waits until every partition has a leader; whether it was created."""
    admin = AIOKafkaAdminClient(**options(client))
    await admin.start()
    try:
        topic = NewTopic(name, partitions, replication_factor, topic_configs=dict(config or {}))
        result = await create_topics(admin, [topic], timeout_ms=int(within * 1000))
        if result.failed or (result.existed and not exist_ok):
            error = result.failed.get(name, "TopicAlreadyExistsError")
            raise AdminError(f"creating topic {name!r} failed: {error}")
        await wait_for_leaders(admin, name, within=within)
    finally:
        await admin.close()
    return bool(result.created)


async def wait_for_leaders(admin: AIOKafkaAdminClient, name: str, *, within: float = 30.0) -> None:
    """Until every partition of the topic has a leader; `AdminError` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await _led(admin, name):
        if time.monotonic() > deadline:
            raise AdminError(f"topic {name!r} has no leader for every partition yet")
        await asyncio.sleep(0.1)


async def _led(admin: AIOKafkaAdminClient, name: str) -> bool:
    described: list[dict[str, Any]] = await admin.describe_topics([name])
    for topic in described:
        if topic["topic"] == name and topic["error_code"] == 0 and topic["partitions"]:
            return all(p["error_code"] == 0 and p["leader"] >= 0 for p in topic["partitions"])
    return False


async def partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    described: list[dict[str, Any]] = await admin.describe_topics([topic])
    for found in described:
        if found["topic"] == topic and found["error_code"] == 0 and found["partitions"]:
            return sorted(TopicPartition(topic, p["partition"]) for p in found["partitions"])
    raise AdminError(f"topic {topic!r} does not exist or has no partitions")


async def end_offsets(client: Client, topic: str) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition."""
    admin = AIOKafkaAdminClient(**options(client))
    await admin.start()
    try:
        tps = await partitions(admin, topic)
    finally:
        await admin.close()
    reader = AIOKafkaConsumer(**options(client), group_id=None, enable_auto_commit=False)
    await reader.start()
    try:
        return dict(await reader.end_offsets(tps))
    finally:
        await reader.stop()


async def committed_offsets(
    client: Client, group: str, topic: str
) -> dict[TopicPartition, int | None]:
    """The group's committed offset of each partition of `topic`; None where it has none."""
    admin = AIOKafkaAdminClient(**options(client))
    await admin.start()
    try:
        return await group_offsets(admin, group, await partitions(admin, topic))
    finally:
        await admin.close()


async def group_offsets(
    admin: AIOKafkaAdminClient,
    group: str,
    tps: Sequence[TopicPartition],
    *,
    within: float = 30.0,
) -> dict[TopicPartition, int | None]:
    """`committed_offsets` on a client already started, for callers that ask often.

    Retries while the group's coordinator is not ready (a fresh cluster creates the
    offsets topic on first use), up to `within` seconds.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            answer = await admin.list_consumer_group_offsets(group, partitions=list(tps))
            break
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    offsets: dict[TopicPartition, int | None] = dict.fromkeys(tps)
    for tp, meta in answer.items():
        if tp in offsets and meta.offset >= 0:
            offsets[tp] = meta.offset
    return offsets
