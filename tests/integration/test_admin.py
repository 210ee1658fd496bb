"""consumer.admin against a real broker: topic creation, leaders, end and committed offsets."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer import admin

pytestmark = pytest.mark.integration


async def test_a_topic_is_created_once_and_already_exists_reads_one_way(kafka, topic_name):
    bootstrap = kafka.bootstrap_servers
    assert await admin.create_topic(bootstrap, topic_name, 3) is True
    assert await admin.create_topic(bootstrap, topic_name, 3, exist_ok=True) is False
    with pytest.raises(admin.AdminError, match="TopicAlreadyExistsError"):
        await admin.create_topic(bootstrap, topic_name, 3)

    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        result = await admin.create_topics(
            client,
            [
                NewTopic(topic_name, 3, 1),
                NewTopic(f"{topic_name}-new", 1, 1),
                NewTopic(f"{topic_name}-bad", 1, 1, topic_configs={"cleanup.policy": "nope"}),
            ],
        )
    finally:
        await client.close()
    assert result.created == [f"{topic_name}-new"]
    assert result.existed == [topic_name]
    assert list(result.failed) == [f"{topic_name}-bad"]
    assert result.failed[f"{topic_name}-bad"].startswith("InvalidConfigurationError")


async def test_end_and_committed_offsets(kafka, topic_name):
    bootstrap = kafka.bootstrap_servers
    await admin.create_topic(bootstrap, topic_name, 2)
    tp0, tp1 = TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)
    assert await admin.end_offsets(bootstrap, topic_name) == {tp0: 0, tp1: 0}
    assert await admin.committed_offsets(bootstrap, "nobody", topic_name) == {tp0: None, tp1: None}

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic_name, b"v", partition=i % 2)
    finally:
        await producer.stop()
    assert await admin.end_offsets(bootstrap, topic_name) == {tp0: 3, tp1: 2}

    group = f"{topic_name}-g"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign([tp0, tp1])
        await consumer.commit({tp0: 0, tp1: 2})
    finally:
        await consumer.stop()
    assert await admin.committed_offsets(bootstrap, group, topic_name) == {tp0: 0, tp1: 2}


async def test_a_missing_topic_is_an_admin_error(kafka, topic_name):
    with pytest.raises(admin.AdminError, match="does not exist"):
        await admin.end_offsets(kafka.bootstrap_servers, topic_name)
