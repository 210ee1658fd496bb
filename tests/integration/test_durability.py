"""A state write the broker refuses stops the worker before it commits anything past it."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from harness import (
    assert_matches,
    committed,
    conversation,
    create_topic,
    expected_bodies,
    fresh,
    produce,
    wait_for,
)

from consumer import admin as kafka_admin

pytestmark = pytest.mark.integration


async def test_refused_state_write_commits_nothing_and_a_restart_recovers(
    kafka, emulator, workers, tmp_path
):
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    # A state topic made by hand with a limit too small for a conversation's state.
    await kafka_admin.create_topic(
        kafka.bootstrap_servers,
        f"{topic}.state",
        1,
        config={"cleanup.policy": "compact", "max.message.bytes": "600"},
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        events = conversation("big", 3, ended=True)
        for event in events[:-1]:
            event["request"]["messages"][-1]["content"] += " (details)" * 60
        expected = expected_bodies(events, tmp_path)
        await produce(kafka.bootstrap_servers, topic, events)

        worker = workers(kafka.bootstrap_servers, topic, emulator, group=group)
        worker.start()
        assert worker.process is not None
        code = worker.process.wait(60)
        assert code == 1
        lines = worker.logs()
        assert any(line.get("event") == "durable_write_failed" for line in lines)
        offsets = await committed(kafka.bootstrap_servers, group, topic)
        assert offsets[0] is None, f"offset {offsets[0]} committed past a state write that failed"

        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    f"{topic}.state",
                    # AlterConfigs replaces the topic's whole set: the policy goes too.
                    configs={
                        "cleanup.policy": "compact",
                        "max.message.bytes": str(16 * 1024 * 1024),
                    },
                )
            ]
        )
        worker.start()

        async def done() -> bool:
            return (await committed(kafka.bootstrap_servers, group, topic))[0] == len(events)

        await wait_for(done, 60, "the restarted worker to commit every event")
        assert_matches(emulator.conversations, expected)
        code, _ = await worker.terminate()
        assert code == 0
    finally:
        await admin.close()
