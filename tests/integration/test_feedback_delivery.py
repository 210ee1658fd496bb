"""Feedback and interactions (contract v1.1) on a real broker, through the emulator.

The emulator refuses a rating or an event whose message it does not hold (422), so
a request sent before its conversation body was acknowledged would show as a 422
and a dead-letter record; these tests see none, with API faults and a kill -9.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from harness import (
    EPOCH,
    committed_to_the_end,
    conversation,
    create_topic,
    fresh,
    produce,
    read_all,
    wait_for,
)

from consumer import feedback
from consumer.testing.emulator import Endpoint, Faults

pytestmark = pytest.mark.integration

TURNS = 3


def rating(cid: str, turn: int, value: str, *, second: int = 30) -> dict[str, Any]:
    return {
        "event_id": f"{cid}-fb{turn}-{value}",
        "event_type": "feedback",
        "conversation_id": cid,
        "occurred_at": (EPOCH + timedelta(seconds=turn, milliseconds=second)).isoformat(),
        "completion_id": f"chatcmpl-{cid}-{turn}",
        "rating": value,
        "reasons": [{"label": "checked", "details": f"turn {turn}"}],
        "user_properties": {"id": f"user-{cid}"},
    }


def interaction(cid: str, name: str, turn: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"{cid}-{name}-{turn}",
        "event_type": "interaction",
        "conversation_id": cid,
        "occurred_at": EPOCH.isoformat(),
        "name": name,
    }
    if turn is not None:
        event["completion_id"] = f"chatcmpl-{cid}-{turn}"
    return event


def rated_conversation(cid: str, *, ended: bool) -> list[dict[str, Any]]:
    """Each reply rated right after its completion (before the API can hold it); the
    middle one rated twice (the second replaces the first); the last one copied."""
    out: list[dict[str, Any]] = []
    for event in conversation(cid, TURNS, ended=False):
        out.append(event)
        turn = int(event["event_id"].rsplit("-e", 1)[1])
        out.append(rating(cid, turn, "positive"))
        if turn == 1:
            out.append(rating(cid, turn, "negative", second=40))
        if turn == TURNS - 1:
            out.append(interaction(cid, "message:copied", turn))
    out.append(interaction(cid, "conversation:shared"))
    if ended:
        out += conversation(cid, 0, start=TURNS, ended=True)
    return out


def expected_ratings(cids: list[str]) -> dict[str, tuple[str, str, str]]:
    """Feedback id -> (conversation, completion, final rating), from the events alone."""
    out = {}
    for cid in cids:
        for turn in range(TURNS):
            completion = f"chatcmpl-{cid}-{turn}"
            final = "negative" if turn == 1 else "positive"
            out[feedback.feedback_id(cid, completion, f"user-{cid}")] = (cid, completion, final)
    return out


def logged_reply(emulator, cid: str, completion: str) -> str:
    """The id of the stored message that is the reply `completion`."""
    found = [
        m.id
        for m in emulator.conversations[cid].messages
        if (m.properties or {}).get("completion_id") == completion
    ]
    assert len(found) == 1, f"{cid}: {completion} logged {len(found)} times"
    return found[0]


def ratings_landed(emulator, expected: dict[str, tuple[str, str, str]]) -> bool:
    if set(emulator.feedback) != set(expected):
        return False
    return all(emulator.feedback[k].type == v[2] for k, v in expected.items())


def assert_ratings_on_the_right_messages(emulator, expected) -> None:
    for feedback_id, (cid, completion, final) in expected.items():
        stored = emulator.feedback[feedback_id]
        assert stored.message_id == logged_reply(emulator, cid, completion)
        assert stored.type == final
        assert stored.reasons is not None
        assert stored.reasons[0].details == f"turn {completion.rsplit('-', 1)[1]}"


def assert_nothing_sent_early(emulator) -> None:
    for endpoint in (Endpoint.FEEDBACK, Endpoint.EVENTS):
        early = [r for r in emulator.posts_to(endpoint) if r.status == 422]
        assert not early, f"{len(early)} {endpoint} requests named a message not yet logged"


async def test_every_rating_lands_once_on_its_message_through_faults_and_kill_9(
    kafka, emulator, workers
):
    bootstrap = kafka.bootstrap_servers
    topic, group = fresh("fb"), fresh("g")
    await create_topic(bootstrap, topic, 2)
    cids = [f"f{i}" for i in range(8)]
    first = [e for cid in cids[:4] for e in rated_conversation(cid, ended=cid != "f3")]
    second = [e for cid in cids[4:] for e in rated_conversation(cid, ended=cid != "f7")]
    expected = expected_ratings(cids)
    noisy = Faults(fail_rate=0.25, rate_limit_rate=0.1, retry_after=0.2)
    emulator.endpoint_faults[Endpoint.CONVERSATIONS] = noisy
    # Until the kill, /feedback and /events answer 503: the worker holds conversations
    # the API acknowledged and ratings it could not deliver yet.
    emulator.endpoint_faults[Endpoint.FEEDBACK] = Faults(fail_rate=1.0)
    emulator.endpoint_faults[Endpoint.EVENTS] = Faults(fail_rate=1.0)
    await produce(bootstrap, topic, first)
    worker = workers(bootstrap, topic, emulator, group=group).start()
    await wait_for(
        lambda: len(emulator.conversations) >= 2 and len(emulator.posts_to(Endpoint.FEEDBACK)) >= 3,
        60,
        "conversations acknowledged while their ratings fail",
    )
    assert emulator.feedback == {}
    worker.kill()

    emulator.endpoint_faults[Endpoint.FEEDBACK] = noisy
    emulator.endpoint_faults[Endpoint.EVENTS] = noisy
    await produce(bootstrap, topic, second)
    worker.start()
    await wait_for(lambda: ratings_landed(emulator, expected), 120, "every rating landed")
    await wait_for(lambda: len(emulator.events) == 2 * len(cids), 60, "every interaction landed")
    await wait_for(
        lambda: committed_to_the_end(bootstrap, group, topic, len(first) + len(second)),
        30,
        "offsets committed to the end",
    )
    assert_ratings_on_the_right_messages(emulator, expected)
    assert_nothing_sent_early(emulator)
    for cid in cids:
        about = [e for e in emulator.events.values() if e.conversation_id == cid]
        assert [e.type for e in about] == ["conversation:shared"]
        copied = [e for e in emulator.events.values() if e.type == "message:copied"]
        assert logged_reply(emulator, cid, f"chatcmpl-{cid}-{TURNS - 1}") in {
            e.message_id for e in copied
        }
    assert await read_all(bootstrap, f"{topic}.dlq") == []
    sent = [line for line in worker.logs() if line.get("event") == "notice_sent"]
    assert {line["kind"] for line in sent} == {"feedback", "event"}
    code, _ = await worker.terminate()
    assert code == 0


async def test_unknown_conversations_and_completions_go_to_the_dead_letter_topic(
    kafka, emulator, workers
):
    bootstrap = kafka.bootstrap_servers
    topic, group = fresh("fb"), fresh("g")
    await create_topic(bootstrap, topic, 1)
    events = [
        rating("ghost", 0, "positive"),
        *conversation("real", 1, ended=True),
        {**rating("real", 0, "positive"), "completion_id": "chatcmpl-never"},
        rating("real", 0, "negative"),
    ]
    await produce(bootstrap, topic, events)
    worker = workers(bootstrap, topic, emulator, group=group).start()
    await wait_for(
        lambda: any(line.get("event") == "partitions_assigned" for line in worker.logs()),
        30,
        "assignment (the dead-letter topic exists)",
    )

    async def dead_lettered() -> bool:
        return len(await read_all(bootstrap, f"{topic}.dlq")) >= 2

    await wait_for(dead_lettered, 30, "two refusals on the dead-letter topic")
    await wait_for(lambda: len(emulator.feedback) == 1, 30, "the known rating")
    await wait_for(lambda: committed_to_the_end(bootstrap, group, topic, len(events)), 30, "commit")
    records = await read_all(bootstrap, f"{topic}.dlq")
    reasons = sorted(dict(r.headers)["error"].decode() for r in records)
    assert reasons == ["unknown_completion", "unknown_conversation"]
    [stored] = emulator.feedback.values()
    assert stored.type == "negative"
    assert stored.message_id == logged_reply(emulator, "real", "chatcmpl-real-0")
    code, _ = await worker.terminate()
    assert code == 0
