"""The worker's own topics: the state changelog and the dead-letter topic.

The state topic is co-partitioned with the input: state for input partition N
lives in state partition N, so whoever owns an input partition can restore its
conversations by reading one state partition from the beginning. It must be
compacted and nothing else: with `delete` in its cleanup policy, completed
conversations vanish after the retention and a later event would upsert a
partial history over the logged one.

The dead-letter topic is written keyed and without a fixed partition, so any
partition count works. It must not be compacted: invalid records may have no
key (a compacted topic refuses them, failing every write) and a conversation
dead-lettered twice would lose its earlier record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer.admin import create_topics
from consumer.errors import ConfigError

log = structlog.get_logger(__name__)

LARGE_RECORD_BYTES = 16 * 1024 * 1024
"""State and dead-letter records hold whole conversations, which may exceed Kafka's 1 MB default."""

STATE_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(LARGE_RECORD_BYTES),
    # Compact often enough that a restore reads little more than the live state: heads are
    # rewritten at every checkpoint, and the active segment is never compacted.
    "segment.ms": str(3600 * 1000),
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

    An existing state or dead-letter topic that cannot do its job (see the
    module docstring) stops the worker with one line naming the topic and the fix.
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
                f"{input_topic!r} has {partitions}; the two must be co-partitioned: delete it "
                f"or set KAFKA_STATE_TOPIC to a new topic with {partitions} partitions",
            )
        auxiliary = {state_topic: "KAFKA_STATE_TOPIC", dlq_topic: "KAFKA_DLQ_TOPIC"}
        policies = await _cleanup_policies(
            admin, {n: setting for n, setting in auxiliary.items() if n in existing}
        )
        if state_topic in policies and policies[state_topic] != {"compact"}:
            raise ConfigError(
                "KAFKA_STATE_TOPIC",
                f"{state_topic!r} has cleanup.policy={','.join(sorted(policies[state_topic]))}; "
                "it must be compact alone, or completed conversations are lost after the "
                f"retention: run kafka-configs --alter --entity-type topics --entity-name "
                f"{state_topic} --add-config cleanup.policy=compact",
            )
        if "compact" in policies.get(dlq_topic, set()):
            raise ConfigError(
                "KAFKA_DLQ_TOPIC",
                f"{dlq_topic!r} has cleanup.policy={','.join(sorted(policies[dlq_topic]))}; "
                "dead letters must not be compacted (records without a key are refused, later "
                f"ones replace earlier): run kafka-configs --alter --entity-type topics "
                f"--entity-name {dlq_topic} --add-config cleanup.policy=delete",
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


async def _cleanup_policies(
    admin: AIOKafkaAdminClient, topics: dict[str, str]
) -> dict[str, set[str]]:
    """Each topic's effective `cleanup.policy`, as a set of words; `topics` maps name to setting."""
    if not topics:
        return {}
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, configs={"cleanup.policy": ""})
        for name in topics
    ]
    policies: dict[str, set[str]] = {}
    for response in await admin.describe_configs(resources):
        for error_code, error_message, _type, name, entries, *_ in response.resources:
            if error_code:
                raise ConfigError(
                    topics.get(name, "KAFKA_STATE_TOPIC"),
                    f"cannot read the configuration of {name!r}: error {error_code} "
                    f"{error_message or ''}".rstrip(),
                )
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    policies[name] = {w.strip() for w in (entry[1] or "").split(",") if w.strip()}
    return policies


def whole_topic_reader(options: dict[str, Any]) -> AIOKafkaConsumer:
    """A group-less consumer that reads from the beginning, sized for whole-conversation records."""
    return AIOKafkaConsumer(
        **options,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=LARGE_RECORD_BYTES,
        fetch_max_bytes=4 * LARGE_RECORD_BYTES,
    )


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
    reader = whole_topic_reader(options)
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
