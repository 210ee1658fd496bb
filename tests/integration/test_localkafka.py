"""The local Kafka serves aiokafka as the worker uses it and survives what tests do to it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from harness import REPO
from kafka_fixtures import make_topic

from consumer.testing import localkafka
from consumer.testing.localkafka import KafkaCluster, LocalKafkaError

pytestmark = pytest.mark.integration


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value, key=value[-1:])
        await producer.flush()
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, expected: int, within: float = 30.0) -> list[bytes]:
    """Every value in `topic` from the start, without a group."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await reader.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(within):
            while len(values) < expected:
                batches = await reader.getmany(timeout_ms=500)
                values += [record.value for records in batches.values() for record in records]
    finally:
        await reader.stop()
    return values


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def group_member(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    """A member of `group` that commits by hand and starts from the beginning without a commit."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def consume_in_group(
    consumer: AIOKafkaConsumer, expected: int, within: float = 30.0
) -> list[bytes]:
    values: list[bytes] = []
    async with asyncio.timeout(within):
        while len(values) < expected:
            batches = await consumer.getmany(timeout_ms=500)
            values += [record.value for records in batches.values() for record in records]
            if batches:
                await consumer.commit()
    return values


def values(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(count)]


async def test_produce_consume_and_commit_in_a_group(kafka, topic_name):
    await make_topic(kafka.bootstrap_servers, 3, name=topic_name)
    first = values("first", 30)
    await produce(kafka.bootstrap_servers, topic_name, first)

    group = f"group-{topic_name}"
    consumer = group_member(kafka.bootstrap_servers, topic_name, group)
    await consumer.start()
    try:
        got = await consume_in_group(consumer, len(first))
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(first)
    offsets = await committed(kafka.bootstrap_servers, group, topic_name)
    assert set(offsets) == {0, 1, 2}
    assert sum(offsets.values()) == len(first)

    # A new member of the same group starts from the commits, not from the beginning.
    later = values("later", 9)
    await produce(kafka.bootstrap_servers, topic_name, later)
    again = group_member(kafka.bootstrap_servers, topic_name, group)
    await again.start()
    try:
        resumed = await consume_in_group(again, len(later))
        assert sorted(resumed) == sorted(later)
    finally:
        await again.stop()


async def test_private_broker_restart_keeps_data_and_clients_reconnect(kafka_private, topic_name):
    bootstrap = kafka_private.bootstrap_servers
    await make_topic(bootstrap, 2, name=topic_name)
    group = f"group-{topic_name}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = group_member(bootstrap, topic_name, group)
    await producer.start()
    await consumer.start()
    try:
        before = values("before", 10)
        for value in before:
            await producer.send_and_wait(topic_name, value)
        assert sorted(await consume_in_group(consumer, len(before))) == sorted(before)

        pid = kafka_private.nodes[0].process.pid
        await asyncio.to_thread(kafka_private.restart)
        assert kafka_private.nodes[0].process.pid != pid
        assert kafka_private.bootstrap_servers == bootstrap

        # The same client objects carry on against the restarted broker.
        after = values("after", 10)
        for value in after:
            await producer.send_and_wait(topic_name, value)
        assert sorted(await consume_in_group(consumer, len(after), within=60)) == sorted(after)
    finally:
        await consumer.stop()
        await producer.stop()

    everything = await read_all(bootstrap, topic_name, 20)
    assert sorted(everything) == sorted(before + after)
    assert sum((await committed(bootstrap, group, topic_name)).values()) == 20


@pytest.mark.cluster
async def test_cluster_keeps_taking_acks_all_writes_with_one_node_down(kafka_cluster):
    bootstrap = kafka_cluster.bootstrap_servers
    topic = await make_topic(bootstrap, 3, replication_factor=3)
    before = values("before", 15)
    await produce(bootstrap, topic, before)

    await asyncio.to_thread(kafka_cluster.stop_node, 0)
    assert not kafka_cluster.nodes[0].running

    # min.insync.replicas is 2, so acks=all still succeeds with two of three replicas.
    after = values("after", 15)
    await produce(bootstrap, topic, after)
    group = f"group-{topic}"
    consumer = group_member(bootstrap, topic, group)
    await consumer.start()
    try:
        got = await consume_in_group(consumer, 30, within=60)
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(before + after)

    # The stopped node comes back on its old port and catches up.
    await asyncio.to_thread(kafka_cluster.start_node, 0)
    node0 = kafka_cluster.nodes[0].address
    assert sorted(await read_all(node0, topic, 30)) == sorted(before + after)


async def test_a_broker_that_cannot_start_says_why():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = KafkaCluster(1, ports=[port], start_timeout=60)
        with pytest.raises(LocalKafkaError) as failure:
            cluster.start()
        cluster.stop()
    message = str(failure.value)
    assert "server.log" in message
    assert "Address already in use" in message
    assert not cluster.data_dir.exists()


async def test_a_port_taken_before_the_broker_binds_it_is_chosen_again(topic_name):
    cluster = KafkaCluster(1)
    chosen = cluster.nodes[0].port
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", chosen))
        thief.listen()
        await asyncio.to_thread(cluster.start)
    try:
        assert cluster.nodes[0].port != chosen
        await make_topic(cluster.bootstrap_servers, 1, name=topic_name)
        await produce(cluster.bootstrap_servers, topic_name, [b"moved"])
        assert await read_all(cluster.bootstrap_servers, topic_name, 1) == [b"moved"]
    finally:
        await asyncio.to_thread(cluster.stop)


def test_complete_cache_is_reused_without_maven(tmp_path, monkeypatch):
    libs = localkafka.libs_dir("4.4.0", tmp_path)
    libs.mkdir(parents=True)
    (libs / localkafka.COMPLETE_MARKER).write_text("kafka_2.13-4.4.0.jar\n")
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    assert localkafka.fetch("4.4.0", tmp_path) == libs


def test_fetch_without_maven_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    with pytest.raises(LocalKafkaError, match="Maven"):
        localkafka.fetch("4.4.0", tmp_path)


async def test_cli_start_serves_until_sigterm(tmp_path):
    port = localkafka.free_ports(1)[0]
    code = "import sys; from consumer.testing.localkafka import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "start", "--port", str(port), "--data-dir", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 90)
        assert line.decode().strip() == f"127.0.0.1:{port}"
        topic = await make_topic(line.decode().strip(), 1)
        await produce(f"127.0.0.1:{port}", topic, [b"hello"])
        assert await read_all(f"127.0.0.1:{port}", topic, 1) == [b"hello"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert (tmp_path / "node-0" / "data" / "meta.properties").is_file()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
