"""`Sink.deliver(path=...)`: feedback and event bodies go to their own endpoints, with
the same retries and refusals as conversations, against the emulator over a socket."""

from __future__ import annotations

import json

from emulator_fixtures import API_KEY

from consumer import payload
from consumer.sink import Outcome, Sink
from consumer.testing.emulator import Endpoint, Faults


def conversation() -> payload.Conversation:
    return payload.Conversation(
        id="c",
        type="openai",
        messages=[
            payload.OutMessage(id="c-0", role="user", content="hi"),
            payload.OutMessage(id="c-1", role="assistant", content="hello"),
        ],
    )


def rating(message_id: str, value: str = "positive") -> bytes:
    return json.dumps(
        {"type": value, "messageId": message_id, "id": "fb-1", "createdAt": "2026-11-23T10:00:00Z"}
    ).encode()


async def test_feedback_and_events_go_to_their_endpoints_with_retries(emulator):
    emulator.endpoint_faults[Endpoint.FEEDBACK] = Faults(status_sequence=[503, 429])
    sink = Sink(base_url=emulator.url, api_key=API_KEY, base_retry_delay=0.01, max_retry_delay=0.05)
    async with sink:
        body = payload.encode(conversation())
        assert (await sink.deliver(conversation(), body)).outcome is Outcome.ACKED
        done = await sink.deliver(None, rating("c-1"), path="/feedback")
        assert (done.outcome, done.status, done.attempts) == (Outcome.ACKED, 200, 3)
        assert emulator.feedback["fb-1"].message_id == "c-1"
        event = b'{"type":"message:copied","entityType":"message","messageId":"c-1","id":"e-1"}'
        assert (await sink.deliver(None, event, path="/events")).outcome is Outcome.ACKED
        assert emulator.events["e-1"].message_id == "c-1"
        again = await sink.deliver(None, rating("c-1", "negative"), path="/feedback")
        assert again.outcome is Outcome.ACKED
        assert list(emulator.feedback) == ["fb-1"]
        assert emulator.feedback["fb-1"].type == "negative"


async def test_a_refused_feedback_is_rejected_and_a_too_large_one_is_not_cut(emulator):
    sink = Sink(base_url=emulator.url, api_key=API_KEY, max_body_bytes=200)
    async with sink:
        unknown = await sink.deliver(None, rating("nowhere"), path="/feedback")
        assert (unknown.outcome, unknown.status) == (Outcome.REJECTED, 422)
        assert b"nowhere" in unknown.answer
        large = await sink.deliver(None, b" " * 300, path="/feedback")
        assert (large.outcome, large.status, large.attempts) == (Outcome.REJECTED, 413, 0)
    assert [r.path for r in emulator.requests if r.method == "POST"] == ["/feedback"]
