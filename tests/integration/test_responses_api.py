"""A Responses API conversation with tool calls, through a kill -9 and a rebalance, logged whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import (
    all_logged,
    assert_matches,
    committed,
    create_topic,
    expected_bodies,
    fresh,
    history_only_grows,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "responses-api.ndjson"


async def test_a_responses_conversation_survives_kill_9_each_message_once(
    kafka, emulator, workers, tmp_path
):
    topic, group = fresh("responses"), fresh("g")
    await create_topic(kafka.bootstrap_servers, topic, 1)
    events = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    cid = events[0]["conversation_id"]
    events.append(
        {
            "event_id": "evt_sdk_resp_end",
            "event_type": "conversation.ended",
            "conversation_id": cid,
            "occurred_at": "2026-11-23T10:03:00.000Z",
        }
    )
    expected = expected_bodies(events, tmp_path)
    worker = workers(kafka.bootstrap_servers, topic, emulator, group=group)

    # The function call and its output (delta, by previous_response_id) reach the API
    # on the idle flush; then the worker dies without a word.
    await produce(kafka.bootstrap_servers, topic, events[:2])
    worker.start()
    await wait_for(lambda: cid in emulator.conversations, 60, "the idle flush of the first turns")

    async def first_turns_committed() -> bool:
        return (await committed(kafka.bootstrap_servers, group, topic))[0] == 2

    await wait_for(first_turns_committed, 30, "the first two offsets committed")
    worker.kill()

    # The rest: a `conversation` delta, then a full re-send of everything, then the end;
    # a second member joins in between, so the partition is revoked and handed on.
    await produce(kafka.bootstrap_servers, topic, events[2:3])
    worker.start()

    async def third_committed() -> bool:
        return (await committed(kafka.bootstrap_servers, group, topic))[0] == 3

    await wait_for(third_committed, 60, "the third event committed after the restart")
    second = workers(kafka.bootstrap_servers, topic, emulator, group=group).start()
    await wait_for(
        lambda: "partitions_revoked" in worker.events(), 60, "the rebalance taking the partition"
    )
    await produce(kafka.bootstrap_servers, topic, events[3:])
    await wait_for(lambda: all_logged(emulator, expected), 90, "the whole conversation logged")
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)

    stored = emulator.conversations[cid]
    seen = [(m.role, json.dumps(m.content), repr(m.tool_calls)) for m in stored.messages]
    assert len(seen) == len(set(seen)) == 8, "a message is logged twice or missing"
    (asking,) = [m for m in stored.messages if m.tool_calls]
    assert asking.tool_calls is not None
    assert [c.id for c in asking.tool_calls] == ["call_order_1"]
    assert asking.properties is not None
    assert asking.properties["tool_results"] == [
        {"tool_call_id": "call_order_1", "content": '{"status":"shipped"}'}
    ]
    replies = [
        m.properties["response_id"]
        for m in stored.messages
        if m.properties and "response_id" in m.properties
    ]
    assert replies == ["resp_01", "resp_02", "resp_03", "resp_04"]
    for member in (worker, second):
        code, _ = await member.terminate()
        assert code == 0
