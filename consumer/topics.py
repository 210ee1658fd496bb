"""The worker's own topics: the state changelog and the dead-letter topic.

The state topic is co-partitioned with the input: state for input partition N
lives in state partition N, so whoever owns an input partition can restore its
conversations by reading one state partition from the beginning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.admin import create_topics
from consumer.errors import ConfigError

log = structlog.get_logger(__name__)

LARGE_RECORD_BYTES = 16 * 1024 * 1024
"""State and dead-letter records hold whole conversations, which may exceed Kafka's 1 MB default."""

STATE_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(LARGE_RECORD_BYTES),
    # Compact often enough that a restore reads little more than the live state.
    "segment.ms": str(6 * 3600 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(24 * 3600 * 1000),
}
DLQ_TOPIC_CONFIG = {"max.message.bytes": str(LARGE_RECORD_BYTES)}


async def ensure_topics(
    options: dict[str, Any],
    *,
    input_topic: str,
    state_topic: str,
    dlq_topic: str,
    replication_factor: int,
) -> int:
    """Creates the state and dead-letter topics when missing; returns the input's partition count.

    A state topic with a different partition count than the input cannot be
    co-partitioned, so it stops the worker with the setting to fix.
    """
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        # Listing first: describing a missing topic could auto-create it with the wrong settings.
        existing = set(await admin.list_topics())
        if input_topic not in existing:
            raise ConfigError("KAFKA_TOPIC", f"topic {input_topic!r} does not exist on the cluster")
        described = {
            t["topic"]: t
            for t in await admin.describe_topics(
                [n for n in (input_topic, state_topic) if n in existing]
            )
        }
        partitions = len(described[input_topic]["partitions"])
        if replication_factor < 1:  # Not set: as durable as the input itself.
            replication_factor = len(described[input_topic]["partitions"][0]["replicas"])
        if state_topic in described and len(described[state_topic]["partitions"]) != partitions:
            raise ConfigError(
                "KAFKA_STATE_TOPIC",
                f"{state_topic!r} has {len(described[state_topic]['partitions'])} partitions but "
                f"{input_topic!r} has {partitions}; the two must be co-partitioned",
            )
        wanted = {state_topic: STATE_TOPIC_CONFIG, dlq_topic: DLQ_TOPIC_CONFIG}
        missing = [
            NewTopic(name, partitions, replication_factor, topic_configs=config)
            for name, config in wanted.items()
            if name not in existing
        ]
        if missing:
            result = await create_topics(admin, missing)  # Another worker may win the race.
            for topic, error in result.failed.items():
                raise ConfigError(
                    "KAFKA_STATE_TOPIC" if topic == state_topic else "KAFKA_DLQ_TOPIC",
                    f"cannot create {topic!r}: {error}",
                )
            log.info("topics_created", topics=[t.name for t in missing], partitions=partitions)
        return partitions
    finally:
        await admin.close()


async def read_state(
    options: dict[str, Any],
    state_topic: str,
    partitions: list[int],
    on_record: Callable[[int, bytes, bytes | None], None],
) -> int:
    """Reads the given state partitions from the beginning to their current end.

    `on_record(partition, key, value)` sees every record in order; the end is
    taken before reading, so records written later belong to the next owner.
    Returns the number of records read.
    """
    if not partitions:
        return 0
    reader = AIOKafkaConsumer(
        **options,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=LARGE_RECORD_BYTES,
        fetch_max_bytes=4 * LARGE_RECORD_BYTES,
    )
    await reader.start()
    count = 0
    try:
        tps = [TopicPartition(state_topic, p) for p in partitions]
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        await reader.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if not remaining:
                break
            batch = await reader.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    if record.key is not None:
                        on_record(tp.partition, record.key, record.value)
                        count += 1
        return count
    finally:
        await reader.stop()
