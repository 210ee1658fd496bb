"""The worker's guarantees on a real broker, through the emulator.

Every valid event's message reaches the API once, no upsert carries a shorter
history than an earlier one (docs/design.md, "The constraint"), offsets never pass
unflushed work, and each fault of docs/design.md's "Faults" is survived.

Each test drives `inkeep-consumer run` as a child process and checks the API's
final state against the same events rendered offline by the engine: every
conversation present, every message once, nothing overwritten by a partial body.
"""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
import pytest
from harness import (
    all_logged,
    assert_matches,
    committed,
    committed_to_the_end,
    conversation,
    create_topic,
    expected_bodies,
    fresh,
    history_only_grows,
    interleave,
    metrics_text,
    produce,
    read_all,
    wait_for,
)

from consumer import payload

pytestmark = pytest.mark.integration

RESTORE_ATTEMPTS = 5
"""Starts tried for a kill that lands inside the restore (it takes a fraction of a second)."""


async def test_every_conversation_logged_once_and_offsets_committed(
    kafka, emulator, workers, tmp_path
):
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 3)
    convs = [
        conversation(f"c{i}", 4, ended=i % 2 == 0, history="full" if i % 3 else "delta")
        for i in range(24)
    ]
    events = interleave(convs)
    await produce(kafka.bootstrap_servers, topic, events)
    expected = expected_bodies(events, tmp_path)

    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await wait_for(lambda: all_logged(emulator, expected), 60, "every conversation logged")
    await wait_for(
        lambda: committed_to_the_end(kafka.bootstrap_servers, group, topic, len(events)),
        20,
        "offsets committed to the end",
    )
    code, _ = await worker.terminate()
    assert code == 0
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    flushed = [line for line in worker.logs() if line.get("event") == "conversation_flushed"]
    assert {line["trigger"] for line in flushed} >= {"ended", "idle"}


async def test_kill_9_at_any_moment_loses_and_doubles_nothing(kafka, emulator, workers, tmp_path):
    """Nothing lost, doubled or shortened across kill -9: before a flush, after one, in restore."""
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 2)
    rng = random.Random(7)
    convs = [conversation(f"k{i}", rng.randint(2, 6), ended=rng.random() < 0.6) for i in range(30)]
    events = interleave(convs)
    thirds = [
        events[: len(events) // 3],
        events[len(events) // 3 : 2 * len(events) // 3],
        events[2 * len(events) // 3 :],
    ]
    expected = expected_bodies(events, tmp_path)
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group)

    # Before any flush: records fetched and grouped, nothing sent yet.
    await produce(kafka.bootstrap_servers, topic, thirds[0])
    worker.start()
    await wait_for(
        lambda: any(line.get("event") == "partitions_assigned" for line in worker.logs()),
        30,
        "assignment",
    )
    worker.kill()

    # Right after a flush was acknowledged, likely before its offsets were committed.
    worker.start()
    await wait_for(lambda: len(emulator.accepted) >= 3, 30, "first flushes")
    accepted = len(emulator.accepted)
    await produce(kafka.bootstrap_servers, topic, thirds[1])
    await wait_for(lambda: len(emulator.accepted) > accepted, 30, "a flush of the second third")
    worker.kill()

    # During restore: killed after it started reading state back, before it finished.
    for _ in range(RESTORE_ATTEMPTS):
        worker.start()
        await wait_for(
            lambda: "partitions_restoring" in worker.events(), 30, "a restore", interval=0.005
        )
        worker.kill()
        if "partitions_assigned" not in worker.events():
            break
    else:
        pytest.fail(f"every restore finished before the kill, {RESTORE_ATTEMPTS} times")

    await produce(kafka.bootstrap_servers, topic, thirds[2])
    worker.start()
    await wait_for(lambda: all_logged(emulator, expected), 90, "every conversation logged")
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    code, _ = await worker.terminate()
    assert code == 0


async def test_group_members_come_and_go(kafka, emulator, workers, tmp_path):
    """Rebalances with two and three members, a clean leave and a kill -9."""
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 6)
    convs = [conversation(f"r{i}", 5, ended=i % 3 != 0) for i in range(36)]
    events = interleave(convs)
    chunks = [events[k * len(events) // 4 : (k + 1) * len(events) // 4] for k in range(4)]
    expected = expected_bodies(events, tmp_path)
    a, b, c = (workers(kafka.bootstrap_servers, topic, emulator, group=group) for _ in range(3))

    a.start()
    await produce(kafka.bootstrap_servers, topic, chunks[0])
    await wait_for(lambda: len(emulator.accepted) >= 1, 30, "a flush from the first member")
    b.start()
    await produce(kafka.bootstrap_servers, topic, chunks[1])
    c.start()
    await wait_for(lambda: "partitions_assigned" in c.events(), 30, "the third member's share")
    await produce(kafka.bootstrap_servers, topic, chunks[2])
    code, _ = await b.terminate()
    assert code == 0
    a.kill()
    await produce(kafka.bootstrap_servers, topic, chunks[3])
    a.start()
    await wait_for(lambda: all_logged(emulator, expected), 120, "every conversation logged")
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    revoked = [
        line for w in (a, b, c) for line in w.logs() if line.get("event") == "partitions_revoked"
    ]
    assert revoked, "no member ever gave partitions up: the test did not rebalance"


async def test_continuation_after_ended_on_another_worker(kafka, emulator, workers, tmp_path):
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    whole = conversation("cont", 5, ended=True)
    first = [*whole[:3], conversation("cont", 3, ended=True)[-1]]
    later = whole[3:]  # Turns 3 and 4 carry the full history, then the conversation ends again.
    expected = expected_bodies(first + later, tmp_path)

    a = workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await produce(kafka.bootstrap_servers, topic, first)
    await wait_for(lambda: "cont" in emulator.conversations, 30, "the first flush")
    assert len(emulator.conversations["cont"].messages) == 7
    code, _ = await a.terminate()
    assert code == 0

    b = workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await produce(kafka.bootstrap_servers, topic, later)
    await wait_for(lambda: all_logged(emulator, expected), 30, "the continued conversation")
    assert len(emulator.conversations["cont"].messages) == 11
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    restored = [line for line in b.logs() if line.get("event") == "partitions_assigned"]
    assert restored
    assert restored[0]["state_records"] >= 1


async def test_poison_records_are_dead_lettered_and_the_partition_goes_on(
    kafka, emulator, workers, tmp_path
):
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    good = conversation("after-poison", 2, ended=True)
    valid = good[0]
    poison: list[tuple[str, bytes | None]] = [
        ("not_json", b"{not json"),
        ("schema", b"[1, 2, 3]"),
        ("schema", json.dumps({k: v for k, v in valid.items() if k != "conversation_id"}).encode()),
        ("schema", json.dumps({**valid, "event_id": 42}).encode()),
        ("unknown_event_type", json.dumps({**valid, "event_type": "chat.started"}).encode()),
        ("schema", json.dumps({**valid, "occurred_at": "2026-11-23 10:15"}).encode()),
        ("schema", json.dumps({**valid, "occurred_at": "2026-11-23T10:15:02"}).encode()),
        ("too_large", json.dumps({**valid, "padding": "x" * 5000}).encode()),
        ("empty", None),
    ]
    records = [(b"poison", value) for _, value in poison] + [
        (e["conversation_id"].encode(), json.dumps(e).encode()) for e in good
    ]
    await produce(kafka.bootstrap_servers, topic, records)
    expected = expected_bodies(good, tmp_path)
    workers(
        kafka.bootstrap_servers, topic, emulator, group=group, extra={"MAX_RECORD_BYTES": "4000"}
    ).start()
    await wait_for(lambda: all_logged(emulator, expected), 30, "the valid conversation")
    await wait_for(
        lambda: committed_to_the_end(kafka.bootstrap_servers, group, topic, len(records)),
        20,
        "commit",
    )
    dead = await read_all(kafka.bootstrap_servers, f"{topic}.dlq")
    assert len(dead) == len(poison)
    for (kind, value), record in zip(poison, sorted(dead, key=lambda r: r.offset), strict=True):
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["error"] == kind
        assert headers["source.topic"] == topic
        assert headers["source.partition"] == "0"
        assert record.value == (value or b"")
        assert headers["error.message"]
    assert sorted(int(dict(r.headers)["source.offset"]) for r in dead) == list(range(len(poison)))


async def test_sigterm_mid_stream_exits_cleanly_and_loses_nothing(
    kafka, emulator, workers, tmp_path
):
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 2)
    convs = [conversation(f"t{i}", 4, ended=i % 2 == 0) for i in range(40)]
    events = interleave(convs)
    expected = expected_bodies(events, tmp_path)
    worker = workers(
        kafka.bootstrap_servers,
        topic,
        emulator,
        group=group,
        extra={"CONVERSATION_IDLE_TIMEOUT_SECONDS": "300"},
    ).start()
    await produce(kafka.bootstrap_servers, topic, events[: len(events) // 2])

    async def consumed_some() -> bool:
        text = await metrics_text(worker)
        return text is not None and "inkeep_consumer_open_conversations 40.0" in text

    await wait_for(consumed_some, 30, "every conversation open in the worker")
    assert not emulator.accepted, "nothing should be complete before the shutdown"
    emulator.faults.latency = 0.2
    code, seconds = await worker.terminate(timeout=20)
    assert code == 0
    assert seconds < 10 + 2, f"took {seconds:.1f}s, over the grace period"
    stopped = [line for line in worker.logs() if line.get("event") == "conversation_flushed"]
    assert any(line["trigger"] == "shutdown" for line in stopped), "open conversations not flushed"
    emulator.faults.latency = 0.0
    await produce(kafka.bootstrap_servers, topic, events[len(events) // 2 :])
    worker.extra["CONVERSATION_IDLE_TIMEOUT_SECONDS"] = "3"
    worker.start()
    await wait_for(lambda: all_logged(emulator, expected), 60, "every conversation logged")
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)


async def test_api_outage_holds_offsets_and_recovers(kafka, emulator, workers, tmp_path):
    """While the API fails, offsets do not pass unflushed work; then all arrives."""
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    events = interleave([conversation(f"o{i}", 3, ended=True) for i in range(5)])
    expected = expected_bodies(events, tmp_path)
    emulator.faults.fail_rate = 1.0
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await produce(kafka.bootstrap_servers, topic, events)
    await wait_for(lambda: len(emulator.posts) >= 10, 30, "retries against the failing API")

    async def checkpointed() -> bool:
        return (await committed(kafka.bootstrap_servers, group, topic))[0] is not None

    # The first checkpoint commits its target, which the failing flushes hold at 0.
    await wait_for(checkpointed, 30, "a checkpoint's commit")
    offsets = await committed(kafka.bootstrap_servers, group, topic)
    assert offsets[0] == 0, f"offset {offsets[0]} committed past unflushed conversations"
    assert not emulator.conversations
    emulator.faults.fail_rate = 0.0
    await wait_for(lambda: all_logged(emulator, expected), 60, "recovery")
    await wait_for(
        lambda: committed_to_the_end(kafka.bootstrap_servers, group, topic, len(events)),
        20,
        "commit",
    )
    assert_matches(emulator.conversations, expected)
    retries = [r for r in emulator.posts if r.status >= 500]
    assert len(retries) >= 10
    assert worker.alive()


async def test_refused_key_pauses_fails_readiness_and_recovers(kafka, emulator, workers, tmp_path):
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    events = interleave([conversation(f"a{i}", 2, ended=True) for i in range(4)])
    expected = expected_bodies(events, tmp_path)
    emulator.faults.auth_failing = True
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await produce(kafka.bootstrap_servers, topic, events)
    url = f"http://127.0.0.1:{worker.http_port}"

    async def readiness() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as r:
            return r.status, await r.json(content_type=None)

    async def not_ready_for_auth() -> bool:
        try:
            status, body = await readiness()
        except aiohttp.ClientError:
            return False
        return status == 503 and body["checks"]["api_auth"] is False

    await wait_for(not_ready_for_auth, 30, "readiness to fail on the refused key")
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as r:
        text = await r.text()
    assert 'inkeep_consumer_paused{reason="auth"} 1.0' in text
    emulator.faults.auth_failing = False
    await wait_for(lambda: all_logged(emulator, expected), 60, "recovery after the key works")

    async def ready() -> bool:
        return (await readiness())[0] == 200

    await wait_for(ready, 20, "readiness back")
    lines = worker.logs()
    auth_errors = [
        line for line in lines if line.get("level") == "error" and "401" in json.dumps(line)
    ]
    assert len(auth_errors) == 1, f"expected one clear auth error, got {len(auth_errors)}"
    assert "test-key" not in worker.log_path.read_text()


async def test_rejected_conversation_goes_to_dead_letter_with_the_answer(
    kafka, emulator, workers, tmp_path
):
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    events = interleave([conversation("bad", 2), conversation("fine", 2)])
    expected = expected_bodies(events, tmp_path)
    emulator.faults.reject_ids = {"bad"}
    workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await produce(kafka.bootstrap_servers, topic, events)
    await wait_for(lambda: all_logged(emulator, {"fine": expected["fine"]}), 30, "the good one")

    async def dead_lettered() -> bool:
        return len(await read_all(kafka.bootstrap_servers, f"{topic}.dlq")) >= 1

    await wait_for(dead_lettered, 30, "the rejected conversation on the dead-letter topic")
    [record] = await read_all(kafka.bootstrap_servers, f"{topic}.dlq")
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["error"] == "rejected"
    assert headers["api.status"] in {"400", "422"}
    assert headers["api.answer"]
    assert payload.decode(record.value) == expected["bad"]
    await wait_for(
        lambda: committed_to_the_end(kafka.bootstrap_servers, group, topic, len(events)),
        20,
        "commit",
    )


async def test_slow_api_pauses_fetching_instead_of_growing(kafka, emulator, workers, tmp_path):
    topic, group = fresh("chat"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    events = interleave([conversation(f"s{i}", 1, ended=True) for i in range(30)])
    expected = expected_bodies(events, tmp_path)
    emulator.faults.latency = 0.5
    worker = workers(
        kafka.bootstrap_servers,
        topic,
        emulator,
        group=group,
        extra={
            "MAX_PENDING_FLUSHES": "4",
            "INKEEP_MAX_CONCURRENCY": "2",
            "MAX_BUFFERED_RECORDS": "5",
            # Only `conversation.ended` completes a conversation: each flush comes from a fetch.
            "CONVERSATION_IDLE_TIMEOUT_SECONDS": "300",
        },
    ).start()
    await produce(kafka.bootstrap_servers, topic, events)
    seen: list[float] = []

    async def watch() -> bool:
        text = await metrics_text(worker)
        if text is not None:
            seen.extend(
                float(line.split()[1])
                for line in text.splitlines()
                if line.startswith("inkeep_consumer_pending_flushes ")
            )
        return await all_logged(emulator, expected)

    await wait_for(watch, 90, "every conversation logged", interval=0.1)
    paused = [line for line in worker.logs() if line.get("event") == "fetching_paused"]
    assert paused
    assert paused[0]["reason"] == "backpressure"
    # In flight never exceeds the bound plus what one bounded fetch can add.
    assert seen
    assert max(seen) <= 4 + 5, f"pending flushes reached {max(seen)}"
