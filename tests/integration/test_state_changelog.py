"""The state log on a real broker: kill -9 while segments are written, during consolidation and
during restore; every conversation still reaches the API whole, each message once.

Each kill waits for what it means to interrupt, seen in the state topic itself: new
segments written (the commit they allow may or may not have happened), the first
consolidated record (the other conversations' consolidations and the tombstones may
not be written yet), the worker up but not yet assigned (reading state back).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from harness import (
    API_KEY,
    Worker,
    all_logged,
    assert_matches,
    committed_to_the_end,
    conversation,
    create_state_topic,
    create_topic,
    expected_bodies,
    fresh,
    history_only_grows,
    interleave,
    produce,
    read_all,
    topic_names,
    wait_for,
)

from consumer import changelog, payload
from consumer.engine import EngineConfig, Flush, PartitionEngine
from consumer.events import decode_event
from consumer.topics import STATE_TOPIC_CONFIG

pytestmark = pytest.mark.integration

TURNS = 24
ROUNDS = 3


async def state_records(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The state topic compacted by hand: the last value of each key."""
    if f"{topic}.state" not in await topic_names(bootstrap):
        return {}
    return {r.key: r.value for r in await read_all(bootstrap, f"{topic}.state", timeout=30)}


def segments(records: dict[bytes, bytes | None]) -> dict[str, int]:
    """Per conversation, how many live segment records the state topic holds."""
    out: dict[str, int] = {}
    for key, value in records.items():
        cid, index = changelog.parse_key(key)
        if index is not None and value is not None:
            out[cid] = out.get(cid, 0) + 1
    return out


def this_start(worker: Worker) -> set[str]:
    """The log events of the worker's current process only."""
    assert worker.log_path is not None
    lines = worker.log_path.read_bytes().splitlines()
    return {msgspec.json.decode(line).get("event") for line in lines if line.startswith(b"{")}


async def test_kill_9_mid_log_mid_consolidation_and_mid_restore(kafka, emulator, workers, tmp_path):
    bootstrap = kafka.bootstrap_servers
    topic, group = fresh("chat"), fresh("g")
    await create_topic(bootstrap, topic, 2)
    names = [f"long{i}" for i in range(10)]
    whole = {
        cid: conversation(cid, TURNS, history="delta" if i % 2 else "full")
        for i, cid in enumerate(names)
    }
    every = interleave(whole.values())
    expected = expected_bodies(every, tmp_path)
    step = TURNS // ROUNDS
    rounds = [
        interleave(events[r * step : (r + 1) * step] for events in whole.values())
        for r in range(ROUNDS)
    ]
    rounds[-1] += [events[-1] for events in whole.values()]  # conversation.ended
    # Open conversations stay open between rounds: their logs grow segment by segment.
    worker = workers(
        bootstrap, topic, emulator, group=group, extra={"CONVERSATION_IDLE_TIMEOUT_SECONDS": "600"}
    )

    async def logs_hold(count: int) -> bool:
        held = segments(await state_records(bootstrap, topic))
        return len(held) == len(names) and min(held.values()) >= count

    # Segments written, the commit they allow perhaps not made yet.
    for number, batch in enumerate(rounds[:-1], start=1):
        await produce(bootstrap, topic, batch)
        worker.start()
        await wait_for(lambda n=number: logs_hold(n), 60, f"{number} segments per conversation")
        worker.kill()

    async def consolidated() -> bool:
        records = await state_records(bootstrap, topic)
        return any(records.get(cid.encode(), b"")[:1] == b"Z" for cid in names)

    # During consolidation: the first completed conversation's record is written.
    await produce(bootstrap, topic, rounds[-1])
    worker.start()
    await wait_for(consolidated, 60, "a consolidated record")
    worker.kill()

    # During restore: up, not yet assigned.
    worker.start()
    await wait_for(lambda: "worker_started" in this_start(worker), 60, "the worker to start")
    worker.kill()

    worker.start()
    await wait_for(lambda: "partitions_assigned" in this_start(worker), 60, "the restore")
    await wait_for(lambda: all_logged(emulator, expected), 90, "every conversation logged")
    await wait_for(
        lambda: committed_to_the_end(bootstrap, group, topic, len(every)), 30, "commits to the end"
    )
    code, _ = await worker.terminate()
    assert code == 0
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    assert not [line for line in worker.logs() if line.get("event") == "rebalance_failed"]

    # Compaction-friendly: each conversation is one consolidated record, no segment is live.
    records = await state_records(bootstrap, topic)
    assert segments(records) == {}
    for cid in names:
        assert (records[cid.encode()] or b"")[:1] == b"Z", cid


PREVIOUS_RELEASE = {
    b"up-open": bytes.fromhex(
        "50dc0019a26331a775702d6f70656ecb408f400000000000cb408f5000000000009797a673797374656d"
        "d92b596f7520616e73776572207175657374696f6e732061626f75742070726f647563742075702d6f70"
        "656e2ed6ff6b040ea0c0c0c0c097a475736572d92a5b75702d6f70656e5d207175657374696f6e20303a"
        "20686f7720646f204920646f207468696e6720303fd6ff6b040ea0c0c0c0c097a9617373697374616e74"
        "d92a5b75702d6f70656e5d20616e7377657220303a206f70656e2073657474696e67732c207468656e20"
        "302ed6ff6b040ea0c0c0c085a56d6f64656cb16770742d346f2d323032342d30382d3036ad66696e6973"
        "685f726561736f6ea473746f70a5757361676583ad70726f6d70745f746f6b656e730ab1636f6d706c65"
        "74696f6e5f746f6b656e7314ac746f74616c5f746f6b656e731ead636f6d706c6574696f6e5f6964b263"
        "686174636d706c2d75702d6f70656e2d30aa6c6174656e63795f6d73cb408900000000000097a4757365"
        "72d92a5b75702d6f70656e5d207175657374696f6e20313a20686f7720646f204920646f207468696e67"
        "20313fd6ff6b040ea1c0c0c0c097a9617373697374616e74d92a5b75702d6f70656e5d20616e73776572"
        "20313a206f70656e2073657474696e67732c207468656e20312ed6ff6b040ea1c0c0c085a56d6f64656c"
        "b16770742d346f2d323032342d30382d3036ad66696e6973685f726561736f6ea473746f70a575736167"
        "6583ad70726f6d70745f746f6b656e730ab1636f6d706c6574696f6e5f746f6b656e7314ac746f74616c"
        "5f746f6b656e731ead636f6d706c6574696f6e5f6964b263686174636d706c2d75702d6f70656e2d31aa"
        "6c6174656e63795f6d73cb408908000000000097a475736572d92a5b75702d6f70656e5d207175657374"
        "696f6e20323a20686f7720646f204920646f207468696e6720323fd6ff6b040ea2c0c0c0c097a9617373"
        "697374616e74d92a5b75702d6f70656e5d20616e7377657220323a206f70656e2073657474696e67732c"
        "207468656e20322ed6ff6b040ea2c0c0c085a56d6f64656cb16770742d346f2d323032342d30382d3036"
        "ad66696e6973685f726561736f6ea473746f70a5757361676583ad70726f6d70745f746f6b656e730ab1"
        "636f6d706c6574696f6e5f746f6b656e7314ac746f74616c5f746f6b656e731ead636f6d706c6574696f"
        "6e5f6964b263686174636d706c2d75702d6f70656e2d32aa6c6174656e63795f6d73cb40891000000000"
        "0097cf7861f1e42d9130c9cf47353853bf9f5a2dcfc64b99a0b4b70fe0cf23ba139c990c456dcf7d0d2c"
        "96576bfcedcf62d439c62902db5bcfc56abb9844539b4f93cf83d249b436849e1dcff16c908293a50647"
        "cfc7da8a08099a74f999c0c0c0c0c081a47475726e02c091a474657374c0d6ff6b040ea0d6ff6b040ea2"
        "c0c002c2c2c30000c000c00000c0c2"
    ),
    b"up-done": bytes.fromhex(
        "5a7801bbc320b928d9707969816e4a7e5eea6987fe080610003232c08ca9d39715571697a4e6ded48ecc"
        "2f5548cc2b2e4f2d52282c4d2d2ec9cccf2b56484cca2f2d512828ca4f294d2e51801aa377ed7f360bdf"
        "820340307d4969716ad14dad68a8542c5caf82819542467eb9424abe82278828c9c8cc4b5730b047d2bb"
        "32b1b838b3b82431af04d900a81b80daf30b52f3148a534b4a803a8b75802600b90608cb5b97e6e6a7a4"
        "e66c4c2f28d135c9d735323032d135b0d035305b9b969997599c115f949a589c9fb7a4b824bf60696971"
        "627a6af35aa04f720b4ae24bf2b353f38ab93626037939a920af428544d694e49724e64079726b911464"
        "a66c4ace482c4906ead085fa56d760554e62496a5e72657c6ef169874e709032e00913436c6162080993"
        "85e0f0c41b2640edd8c2c4101226200306419818a2860907249d9d3ff32be1f7db3b6b78ceafb4b70b91"
        "b77990745e3f7fe1af456a3f569fdf94f36a8bd5d9a3fbcef74abcfdfac6287bc2e4f3ef177efec0b559"
        "a3e67c23db71ada469971cce2fb2b2dd71a3d457632628980e342e29292dca633c3071490930a91e8024"
        "2a30b9089eb6e10cd6c3870e31321c6038c07ae0c0210093644721"
    ),
}
"""State the previous release (whole records) wrote after the first six events below."""


async def test_state_of_the_previous_release_is_migrated_and_continued(
    kafka, emulator, workers, tmp_path
):
    """An open and a completed conversation in today's whole format, offsets committed past
    them: the new worker restores both, continues both, and logs each whole."""
    bootstrap = kafka.bootstrap_servers
    topic, group = fresh("chat"), fresh("g")
    await create_topic(bootstrap, topic, 1)
    await create_state_topic(bootstrap, topic, 1)
    first = conversation("up-open", 3, ended=False) + conversation("up-done", 2, ended=True)
    later = conversation("up-open", 3, start=3) + conversation("up-done", 2, start=2, minute=5)
    expected = expected_bodies(first + later, tmp_path)
    await produce(bootstrap, topic, first)
    await produce(bootstrap, f"{topic}.state", list(PREVIOUS_RELEASE.items()))
    # What the previous release did before it stopped: the completed one sent, six committed.
    done = expected_bodies(first, tmp_path)["up-done"]
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{emulator.url}/conversations",
            data=payload.encode(done),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        assert response.status == 200, await response.text()
    await commit(bootstrap, group, topic, len(first))
    await produce(bootstrap, topic, later)

    worker = workers(bootstrap, topic, emulator, group=group).start()
    await wait_for(lambda: all_logged(emulator, expected), 60, "both conversations logged whole")
    await wait_for(lambda: committed_to_the_end(bootstrap, group, topic), 30, "commits to the end")
    code, _ = await worker.terminate()
    assert code == 0
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    records = await state_records(bootstrap, topic)
    assert segments(records) == {}
    assert {records[b"up-open"][:1], records[b"up-done"][:1]} == {b"Z"}  # type: ignore[index]


async def commit(bootstrap: str, group: str, topic: str, offset: int, partition: int = 0) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def produce_to(
    bootstrap: str, topic: str, partition: int, records: list[tuple[bytes, bytes | None]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def encoded(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes | None]]:
    return [(e["conversation_id"].encode(), json.dumps(e).encode()) for e in events]


async def test_a_checkpoint_cut_mid_log_and_mid_consolidation_restores_whole(
    kafka, emulator, workers, tmp_path
):
    """What a worker killed mid-checkpoint leaves, exactly: partition 0 holds a new segment
    whose head was never written, partition 1 a consolidated record whose segments were
    never tombstoned; commits stand at the previous checkpoint. The next worker logs both
    conversations whole."""
    bootstrap = kafka.bootstrap_servers
    topic, group = fresh("chat"), fresh("g")
    await create_topic(bootstrap, topic, 2)
    await create_state_topic(bootstrap, topic, 2)
    a = conversation("cut-log", 7, history="delta")
    b = conversation("cut-done", 2) + conversation("cut-done", 2, start=2, minute=5)
    expected = expected_bodies(a + b, tmp_path)
    dead = {0: PartitionEngine(EngineConfig()), 1: PartitionEngine(EngineConfig())}
    state: dict[int, list[tuple[bytes, bytes | None]]] = {}
    commits: dict[int, int] = {}
    sent: list[bytes] = []
    for partition, events, split, stop in ((0, a, 3, 5), (1, b, 2, 3)):
        engine = dead[partition]
        for offset, value in enumerate(events[:stop]):
            if offset == split:
                first = engine.checkpoint()
                state[partition] = first.records
                commits[partition] = first.covers or 0
            for flush in engine.apply(decode_event(json.dumps(value).encode()), offset, 0.0):
                assert isinstance(flush, Flush)
                sent.append(flush.body)
                engine.acknowledged(flush.conversation_id, flush.seq, 0.0)
        cut = engine.checkpoint().records
        state[partition] += cut[:1]  # The first record of the next checkpoint, then kill -9.
    assert state[0][-1][0] == changelog.segment_key("cut-log", 1)
    assert state[1][-1][1] is not None
    assert state[1][-1][1][:1] == b"Z"
    async with aiohttp.ClientSession() as session:  # What the dead worker's flushes did.
        for body in sent:
            async with session.post(
                f"{emulator.url}/conversations",
                data=body,
                headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
            ) as response:
                assert response.status == 200, await response.text()
    for partition, events in ((0, a), (1, b)):
        await produce_to(bootstrap, topic, partition, encoded(events))
        await produce_to(bootstrap, f"{topic}.state", partition, state[partition])
        await commit(bootstrap, group, topic, commits[partition], partition)

    worker = workers(bootstrap, topic, emulator, group=group).start()
    await wait_for(lambda: all_logged(emulator, expected), 60, "both conversations logged whole")
    await wait_for(lambda: committed_to_the_end(bootstrap, group, topic), 30, "commits to the end")
    code, _ = await worker.terminate()
    assert code == 0
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    records = await state_records(bootstrap, topic)
    assert segments(records) == {}
    assert {(records[b"cut-log"] or b"")[:1], (records[b"cut-done"] or b"")[:1]} == {b"Z"}


async def test_the_state_topic_is_created_with_the_compaction_that_bounds_it(
    kafka, emulator, workers
):
    """The settings docs/design.md counts on to keep the topic near the live set."""
    bootstrap = kafka.bootstrap_servers
    topic, group = fresh("chat"), fresh("g")
    await create_topic(bootstrap, topic, 2)
    worker = workers(bootstrap, topic, emulator, group=group).start()
    await wait_for(lambda: "partitions_assigned" in worker.events(), 60, "the worker assigned")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, f"{topic}.state")]
        )
        (resource,) = response.resources
        configs = {entry[0]: entry[1] for entry in resource[4]}
        described = await admin.describe_topics([f"{topic}.state"])
    finally:
        await admin.close()
    assert {name: configs[name] for name in STATE_TOPIC_CONFIG} == STATE_TOPIC_CONFIG
    assert configs["cleanup.policy"] == "compact"
    assert len(described[0]["partitions"]) == 2
    code, _ = await worker.terminate()
    assert code == 0
