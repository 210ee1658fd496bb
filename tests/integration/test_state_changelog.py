"""The state log on a real broker: kill -9 while segments are written, during consolidation and
during restore; every conversation still reaches the API whole, each message once.

Each kill waits for what it means to interrupt, seen in the state topic itself: new
segments written (the commit they allow may or may not have happened), the first
consolidated record (the other conversations' consolidations and the tombstones may
not be written yet), the worker up but not yet assigned (reading state back).
"""

from __future__ import annotations

import msgspec
import pytest
from harness import (
    Worker,
    all_logged,
    assert_matches,
    committed_to_the_end,
    conversation,
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

from consumer import changelog

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
