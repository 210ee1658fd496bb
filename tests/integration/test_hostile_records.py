"""Hostile input on the Kafka side, on a real broker through the emulator.

A record is data, never a reason to stop: whatever bytes arrive, each record is
either logged (its conversation reaches the API) or dead-lettered with its
kind, and the committed offset never passes one that is neither. Auxiliary
topics that cannot do their job are refused at start; compressed batches of
every codec Kafka producers use are read; an unexpected error elsewhere stops
the worker without committing past the record it was handling.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from confluent_kafka import Producer
from harness import (
    all_logged,
    committed,
    committed_to_the_end,
    conversation,
    create_topic,
    end_offsets,
    expected_bodies,
    fresh,
    interleave,
    metrics_text,
    produce,
    read_all,
    wait_for,
)
from kafka_fixtures import make_topic

pytestmark = pytest.mark.integration

MAX_RECORD_BYTES = 200_000


ANY_KIND: set[str] = set()
"""The decoder names these kinds; any named kind will do, as long as the record is a dead letter."""


def _hostile(template: dict[str, Any]) -> list[tuple[str, bytes, set[str]]]:
    """(name, value, kinds it may be dead-lettered as) for each hostile record."""
    valid = json.dumps(template).encode()
    deep = b"[" * 50_000 + b"]" * 50_000
    return [
        (
            "invalid_utf8",
            valid.replace(b"question", b"qu\xff\xfestion"),
            ANY_KIND,
        ),
        (
            "deep_nesting",
            b'{"event_id": "deep", "x": ' + deep + b"}",
            ANY_KIND,
        ),
        (
            "ms_created",
            json.dumps(
                {**template, "response": {**template["response"], "created": 1763892000000}}
            ).encode(),
            ANY_KIND,
        ),
        ("not_json", b"this is not json {", {"not_json"}),
        (
            "huge_string",
            json.dumps({**template, "padding": "x" * (MAX_RECORD_BYTES + 1)}).encode(),
            {"too_large"},
        ),
        ("empty", b"", {"not_json", "empty", "schema"}),
    ]


async def _dead_letters_by_offset(bootstrap: str, topic: str) -> dict[int, dict[str, str]]:
    records = await read_all(bootstrap, f"{topic}.dlq")
    out: dict[int, dict[str, str]] = {}
    for record in records:
        headers = {k: v.decode(errors="replace") for k, v in record.headers}
        if "source.offset" in headers:
            out[int(headers["source.offset"])] = headers
    return out


async def test_hostile_records_are_dead_lettered_and_the_worker_stays_up(
    kafka, emulator, workers, tmp_path
):
    topic, group = fresh("hostile"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    good = [conversation(f"conv-h{i}", 3) for i in range(4)]
    # Hostile records of their own conversation, each with a new event id (not a duplicate).
    template = {**conversation("conv-hostile", 1)[0], "event_id": "hostile-event"}
    hostile = _hostile(template)
    year_one = {**conversation("conv-year-one", 1)[0], "occurred_at": "0001-01-01T00:00:00+00:00"}
    # One hostile record between the events of the valid conversations, in one partition.
    valid = interleave(good)
    records: list[tuple[bytes | None, bytes | None]] = []
    hostile_offsets: dict[int, tuple[str, set[str]]] = {}
    for i, event in enumerate(valid):
        records.append((event["conversation_id"].encode(), json.dumps(event).encode()))
        if i < len(hostile):
            name, value, kinds = hostile[i]
            hostile_offsets[len(records)] = (name, kinds)
            records.append((b"conv-hostile", value))
    year_one_offset = len(records)
    records.append((b"conv-year-one", json.dumps(year_one).encode()))
    await produce(kafka.bootstrap_servers, topic, records)
    expected = expected_bodies(valid, tmp_path)

    extra = {"MAX_RECORD_BYTES": str(MAX_RECORD_BYTES)}
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group, extra=extra).start()
    await wait_for(lambda: all_logged(emulator, expected), 60, "every valid conversation")
    await wait_for(
        lambda: committed_to_the_end(kafka.bootstrap_servers, group, topic, len(records)),
        30,
        "the commit to reach the end",
    )
    assert worker.alive(), "the worker stopped on hostile input"

    dead = await _dead_letters_by_offset(kafka.bootstrap_servers, topic)
    for offset, (name, kinds) in hostile_offsets.items():
        assert offset in dead, f"{name} (offset {offset}) was neither logged nor dead-lettered"
        kind = dead[offset]["error"]
        assert kind in kinds or (not kinds and kind), f"{name}: dead-lettered as {kind!r}"
        assert dead[offset]["error.message"]

    # A year-1 timestamp is either refused as a record or its conversation is logged (after
    # its idle timeout) or dead-lettered as a conversation.
    async def year_one_accounted() -> bool:
        letters = await read_all(kafka.bootstrap_servers, f"{topic}.dlq")
        offsets = {dict(r.headers).get("source.offset") for r in letters}
        ids = {dict(r.headers).get("conversation_id") for r in letters}
        return (
            str(year_one_offset).encode() in offsets
            or b"conv-year-one" in ids
            or "conv-year-one" in emulator.conversations
        )

    await wait_for(year_one_accounted, 30, "the year-1 record to be logged or dead-lettered")
    # Every offset below the commit is a logged valid event or a dead letter.
    valid_offsets = {
        o for o in range(len(records)) if o not in hostile_offsets and o != year_one_offset
    }
    assert valid_offsets | set(hostile_offsets) | {year_one_offset} == set(range(len(records)))
    logs = worker.logs()
    unprocessable = [e for e in logs if e.get("event") == "record_unprocessable"]
    assert all({"topic", "partition", "offset"} <= set(e) for e in unprocessable)
    assert all(e.get("level") == "error" for e in unprocessable)

    # A restart neither crash-loops nor re-reads: it comes up, stays up, and goes on.
    code, _ = await worker.terminate()
    assert code == 0
    dead_before = len(await read_all(kafka.bootstrap_servers, f"{topic}.dlq"))
    worker.start()
    await wait_for(
        lambda: sum(e.get("event") == "partitions_assigned" for e in worker.logs()) >= 2,
        30,
        "the restarted worker's assignment",
    )
    later = conversation("conv-after-restart", 2)
    await produce(kafka.bootstrap_servers, topic, [*later, (b"conv-h0", b"not json again")])
    expected_later = expected_bodies(later, tmp_path)
    await wait_for(lambda: all_logged(emulator, expected_later), 30, "a conversation after restart")
    await wait_for(
        lambda: committed_to_the_end(
            kafka.bootstrap_servers, group, topic, len(records) + len(later) + 1
        ),
        30,
        "the commit after restart",
    )
    assert worker.alive()
    assert len(await read_all(kafka.bootstrap_servers, f"{topic}.dlq")) == dead_before + 1


async def _refused(worker, timeout: float = 60.0) -> str:
    async def exited() -> bool:
        return not worker.alive()

    await wait_for(exited, timeout, "the worker to refuse to start")
    assert worker.process.returncode == 2
    assert worker.log_path is not None
    return worker.log_path.read_text()


async def test_a_state_topic_that_is_not_compacted_is_refused_at_start(kafka, emulator, workers):
    topic = fresh("refuse-state")
    await create_topic(kafka.bootstrap_servers, topic, 2)
    await make_topic(
        kafka.bootstrap_servers, 2, name=f"{topic}.state", config={"cleanup.policy": "delete"}
    )
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=fresh("g")).start()
    output = await _refused(worker)
    [line] = [ln for ln in output.splitlines() if "configuration error" in ln]
    assert f"KAFKA_STATE_TOPIC: '{topic}.state' has cleanup.policy=delete" in line
    assert "cleanup.policy=compact" in line  # The fix.


async def test_a_compacted_dead_letter_topic_is_refused_at_start(kafka, emulator, workers):
    topic = fresh("refuse-dlq")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    await make_topic(
        kafka.bootstrap_servers, 1, name=f"{topic}.dlq", config={"cleanup.policy": "compact"}
    )
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=fresh("g")).start()
    output = await _refused(worker)
    [line] = [ln for ln in output.splitlines() if "configuration error" in ln]
    assert f"KAFKA_DLQ_TOPIC: '{topic}.dlq' has cleanup.policy=compact" in line
    assert "cleanup.policy=delete" in line


async def test_a_dead_letter_topic_with_fewer_partitions_takes_every_partitions_letters(
    kafka, emulator, workers, tmp_path
):
    """The dead-letter topic is written keyed, on any partition: its partition count is free."""
    topic, group = fresh("few-dlq"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 3)
    await create_topic(kafka.bootstrap_servers, f"{topic}.dlq", 1)
    good = [conversation(f"conv-f{i}", 2) for i in range(6)]
    poison = [(f"poison-{i}".encode(), b"not json") for i in range(12)]
    records = [(e["conversation_id"].encode(), json.dumps(e).encode()) for e in interleave(good)]
    await produce(kafka.bootstrap_servers, topic, [*records, *poison])
    assert all(count > 0 for count in (await end_offsets(kafka.bootstrap_servers, topic)).values())
    expected = expected_bodies(interleave(good), tmp_path)
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await wait_for(lambda: all_logged(emulator, expected), 60, "every valid conversation")
    await wait_for(
        lambda: committed_to_the_end(kafka.bootstrap_servers, group, topic, len(records) + 12),
        30,
        "the commit to reach the end",
    )
    dead = await read_all(kafka.bootstrap_servers, f"{topic}.dlq")
    assert len(dead) == len(poison)
    assert {dict(r.headers)["source.partition"] for r in dead} == {b"0", b"1", b"2"}
    assert worker.alive()
    # aiokafka may log a coordinator hiccup at start; the worker's own logs carry no error.
    own = [e for e in worker.logs() if not str(e.get("logger", "")).startswith("aiokafka")]
    assert not [e for e in own if e.get("level") == "error"]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_batches_compressed_by_a_librdkafka_producer_are_read(
    kafka, emulator, workers, tmp_path, codec
):
    topic, group = fresh(f"codec-{codec}"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    events = interleave(conversation(f"conv-{codec}-{i}", 3) for i in range(5))
    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "compression.type": codec,
            "linger.ms": 100,
            "acks": "all",
        }
    )
    for event in events:
        producer.produce(topic, json.dumps(event).encode(), key=event["conversation_id"].encode())
    assert await asyncio.to_thread(producer.flush, 30) == 0
    expected = expected_bodies(events, tmp_path)
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await wait_for(lambda: all_logged(emulator, expected), 60, f"the {codec} conversations")
    await wait_for(
        lambda: committed_to_the_end(kafka.bootstrap_servers, group, topic, len(events)),
        30,
        "the commit to reach the end",
    )
    assert worker.alive()
    assert not [e for e in worker.logs() if e.get("event") == "kafka_failed"]


INJECTED = {
    # The sink fails with an error that is not a sink error: a bug, not an API answer.
    "sink": (
        "import consumer.sink as m\n"
        "async def deliver(self, conversation, body):\n"
        "    raise RuntimeError('injected')\n"
        "m.Sink.deliver = deliver\n"
    ),
    # Handing a record's flush on fails while that record is being handled.
    "dispatch": (
        "import consumer.runtime as m\n"
        "from consumer.engine import Flush\n"
        "original = m.Worker._dispatch\n"
        "def dispatch(self, part, decisions):\n"
        "    decisions = list(decisions)\n"
        "    if self._current is not None and any(isinstance(d, Flush) for d in decisions):\n"
        "        raise RuntimeError('injected')\n"
        "    return original(self, part, decisions)\n"
        "m.Worker._dispatch = dispatch\n"
    ),
}


@pytest.mark.parametrize("where", sorted(INJECTED))
async def test_an_unexpected_error_stops_the_worker_without_committing_past_it(
    kafka, emulator, workers, where
):
    topic, group = fresh(f"bug-{where}"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    events = conversation("conv-bug", 3, ended=True)
    await produce(kafka.bootstrap_servers, topic, events)
    script = (
        INJECTED[where] + "import sys\nfrom consumer.cli import main\nsys.exit(main(['run']))\n"
    )
    worker = workers(
        kafka.bootstrap_servers,
        topic,
        emulator,
        group=group,
        command=[sys.executable, "-c", script],
    ).start()

    async def exited() -> bool:
        return not worker.alive()

    await wait_for(exited, 60, "the worker to stop")
    assert worker.process.returncode == 1
    [failed] = [e for e in worker.logs() if e.get("event") == "worker_failed"]
    assert "RuntimeError: injected" in failed["error"]
    if where == "dispatch":
        # The record whose flush could not be handed on: the conversation's last event.
        assert (failed["topic"], failed["partition"]) == (topic, 0)
        assert failed["offset"] == len(events) - 1
    offsets = await committed(kafka.bootstrap_servers, group, topic)
    # The conversation was never acknowledged: nothing of it may be committed.
    assert (offsets[0] or 0) == 0
    assert not [e for e in worker.logs() if e.get("event") == "conversation_flushed"]
    assert emulator.conversations == {}


def _gauge(text: str | None, name: str) -> float | None:
    for line in (text or "").splitlines():
        if line.startswith(f"inkeep_consumer_{name} "):
            return float(line.split()[1])
    return None


async def test_memory_shedding_completes_only_the_excess_while_the_api_is_slow(
    kafka, emulator, workers
):
    """Conversations already shed (flush in flight) are not counted as excess again."""
    topic, group = fresh("shed"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    emulator.faults.latency = 4.0  # Several ticks pass while the shed flushes are answered.
    open_ones = [conversation(f"conv-s{i:02}", 1, ended=False) for i in range(15)]
    await produce(kafka.bootstrap_servers, topic, interleave(open_ones))
    extra = {"MAX_OPEN_CONVERSATIONS": "10", "CONVERSATION_IDLE_TIMEOUT_SECONDS": "600"}
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group, extra=extra).start()

    def shed() -> list[dict[str, Any]]:
        return [
            e
            for e in worker.logs()
            if e.get("event") == "conversation_flushed" and e.get("trigger") == "memory"
        ]

    await wait_for(lambda: len(shed()) >= 5, 60, "the excess to be shed")

    async def settled() -> bool:
        text = await metrics_text(worker)
        return _gauge(text, "pending_flushes") == 0 and _gauge(text, "open_conversations") == 10

    await wait_for(settled, 30, "ten conversations open and no flush in flight")
    assert len(shed()) == 5
    assert len(emulator.conversations) == 5
    assert worker.alive()
