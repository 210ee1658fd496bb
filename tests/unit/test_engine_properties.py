"""Properties of the engine over generated conversations, interleavings, duplicates and restarts.

The oracle is a simulated API (an upsert by conversation id) fed by the engine's
flushes. For any script, the API's final body must hold each scripted message once,
and a run that crashes at any point (state restored from the last checkpoint, input
replayed from the last commit) must end with the same bodies as a straight run.

Scripts never repeat a user turn verbatim right after an unanswered one: known
`[hi, hi]` followed by a request `[hi, hi]` is either a retry or a trimmed history
plus a new "hi", and no alignment can tell which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import events
from consumer.checkpoint import commit_target
from consumer.engine import EngineConfig, Flush, PartitionEngine, Refusal, Trigger

CONFIG = EngineConfig(idle_timeout=4, max_open=6, state_retention=1e9)
SYSTEM = {"role": "system", "content": "Answer briefly."}
USER_TEXTS = ("hi", "more", "thanks")


@st.composite
def conversation_script(draw: st.DrawFn, cid: str) -> tuple[list[dict[str, Any]], list[dict]]:
    """One conversation's event values and the history they describe."""
    history: list[dict[str, Any]] = []
    opening = [SYSTEM] if draw(st.booleans()) else []
    values: list[dict[str, Any]] = []
    steps = draw(st.integers(1, 6))
    pending_call: str | None = None
    for step in range(steps):
        if pending_call is not None:
            new = [{"role": "tool", "tool_call_id": pending_call, "content": f"result {step}"}]
            pending_call = None
        else:
            last = history[-1] if history else None
            choices = [t for t in USER_TEXTS if last is None or last["content"] != t]
            new = [{"role": "user", "content": draw(st.sampled_from(choices))}]
        if step == 0:
            new = opening + new
        if draw(st.integers(0, 3)) == 0:
            pending_call = f"call_{cid}_{step}"
            reply: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": pending_call,
                        "type": "function",
                        "function": {"name": "lookup", "arguments": f'{{"step": {step}}}'},
                    },
                ],
            }
        else:
            reply = {"role": "assistant", "content": f"{cid} answer {step}"}
        history_mode = draw(st.sampled_from(("full", "full", "delta")))
        if history_mode == "delta":
            request = new
        else:
            known = history[1:] if history and history[0] is SYSTEM else history
            keep = draw(st.integers(1, len(known))) if known else 0
            request = [SYSTEM] if history and history[0] is SYSTEM else []
            request += known[len(known) - keep :] + new
        value: dict[str, Any] = {
            "event_id": f"{cid}-{step}",
            "event_type": "chat.completion",
            "conversation_id": cid,
            "history": history_mode,
            "request": {"model": "m", "messages": request},
        }
        if draw(st.booleans()):
            value["response"] = {
                "id": f"cmpl-{cid}-{step}",
                "choices": [{"index": 0, "message": reply}],
            }
            history += [*new, reply]
        else:
            history += new
            pending_call = None
        if draw(st.booleans()):
            value["conversation"] = {
                "tags": [draw(st.sampled_from(("a", "b")))],
                "properties": {"step": step},
            }
        values.append(value)
        if draw(st.integers(0, 4)) == 0:
            values.append(
                {
                    "event_id": f"{cid}-{step}-end",
                    "event_type": "conversation.ended",
                    "conversation_id": cid,
                }
            )
    return values, history


@st.composite
def stream(draw: st.DrawFn) -> tuple[list[bytes], dict[str, list[dict[str, Any]]]]:
    """Several conversations interleaved, with producer retries (same event id) sprinkled in."""
    names = [f"c{i}" for i in range(draw(st.integers(1, 3)))]
    scripts = {name: draw(conversation_script(name)) for name in names}
    queues = {name: list(values) for name, (values, _) in scripts.items()}
    order = draw(st.permutations([n for n, q in queues.items() for _ in q]))
    values = [queues[name].pop(0) for name in order]
    for _ in range(draw(st.integers(0, 3))):
        original = draw(st.integers(0, len(values) - 1))
        copy = draw(st.integers(original + 1, len(values)))
        values.insert(copy, values[original])
    records = []
    for index, value in enumerate(values):
        stamped = {**value, "occurred_at": f"2026-11-23T10:{index // 60:02d}:{index % 60:02d}Z"}
        records.append(json.dumps(stamped).encode())
    return records, {name: history for name, (_, history) in scripts.items()}


@dataclass
class Api:
    """An upsert by conversation id, as the analytics API is; checks the engine's own rules.

    `strict`: no body ever replaces one with more messages or different ids.
    """

    strict: bool = True
    bodies: dict[str, bytes] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    flying: dict[str, Flush] = field(default_factory=dict)

    def take(self, decisions: list[Flush | Refusal]) -> None:
        for decision in decisions:
            assert isinstance(decision, Flush), decision
            assert decision.conversation_id not in self.flying, "two flushes in flight"
            if self.strict:
                assert decision.message_count >= self.counts.get(decision.conversation_id, 0)
            self.flying[decision.conversation_id] = decision

    def ack(self, engine: PartitionEngine, cid: str, now: float) -> None:
        flush = self.flying.pop(cid)
        self.land(flush)
        self.take(engine.acknowledged(cid, flush.seq, now))

    def land(self, flush: Flush) -> None:
        previous = self.bodies.get(flush.conversation_id)
        if previous is not None and self.strict:
            before = [m["id"] for m in json.loads(previous)["messages"]]
            after = [m["id"] for m in json.loads(flush.body)["messages"]]
            assert after[: len(before)] == before
        self.bodies[flush.conversation_id] = flush.body
        self.counts[flush.conversation_id] = flush.message_count

    def drain(self, engine: PartitionEngine, now: float) -> None:
        self.take(engine.flush_open(Trigger.SHUTDOWN, now))
        while self.flying:
            self.ack(engine, next(iter(self.flying)), now)
        assert engine.flush_open(Trigger.SHUTDOWN, now) == []


def straight(records: list[bytes]) -> dict[str, bytes]:
    engine, api = PartitionEngine(CONFIG), Api()
    for offset, record in enumerate(records):
        api.take(engine.apply(events.decode_event(record), offset, float(offset)))
        while api.flying:
            api.ack(engine, next(iter(api.flying)), float(offset))
        api.take(engine.due(float(offset)))
        while api.flying:
            api.ack(engine, next(iter(api.flying)), float(offset))
    api.drain(engine, float(len(records)))
    return api.bodies


def expected_messages(history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"] or "") for m in history if m["role"] != "tool"]


def logged_messages(body: bytes) -> tuple[list[tuple[str, str]], int]:
    messages = json.loads(body)["messages"]
    results = sum(len((m.get("properties") or {}).get("tool_results", [])) for m in messages)
    return [(m["role"], m["content"]) for m in messages], results


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream())
def test_every_message_is_logged_once_in_order(generated):
    records, histories = generated
    bodies = straight(records)
    for cid, history in histories.items():
        if not history:
            assert cid not in bodies
            continue
        messages, results = logged_messages(bodies[cid])
        assert messages == expected_messages(history)
        assert results == sum(1 for m in history if m["role"] == "tool")
        ids = [m["id"] for m in json.loads(bodies[cid])["messages"]]
        assert len(set(ids)) == len(ids)


def run_until_crash(
    records: list[bytes], crash: int, data: st.DataObject
) -> tuple[Api, dict[bytes, bytes], int]:
    """Runs with random ticks, sheds, acks and checkpoints; returns the API, the state
    topic (compacted) and the committed offset as they were when the process died."""
    engine, api = PartitionEngine(CONFIG), Api()
    topic: dict[bytes, bytes] = {}
    committed = 0
    for offset in range(crash):
        now = float(offset)
        api.take(engine.apply(events.decode_event(records[offset]), offset, now))
        if data.draw(st.booleans(), label="tick"):
            api.take(engine.due(now))
        if data.draw(st.integers(0, 5), label="shed") == 0:
            api.take(engine.shed(1, now))
        for cid in list(api.flying)[: data.draw(st.integers(0, 2), label="acks")]:
            api.ack(engine, cid, now)
        if data.draw(st.booleans(), label="checkpoint"):
            point = engine.checkpoint()
            for key, value in point.records:
                if value is None:
                    topic.pop(key, None)
                else:
                    topic[key] = value
            committed = commit_target(offset + 1, point.hold)
    for flush in api.flying.values():  # Some requests reached the API before the crash.
        if data.draw(st.booleans(), label="landed"):
            api.land(flush)
    api.flying.clear()
    return api, topic, committed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream(), st.data())
def test_a_crash_anywhere_ends_with_the_same_bodies_as_a_straight_run(generated, data):
    """Restored right away, a restart may briefly re-send an older body before the replay
    catches up; restored once the replay reaches the old owner's position, it never does.
    """
    records, _ = generated
    expected = straight(records)
    crash = data.draw(st.integers(0, len(records)), label="crash after")
    deferred = data.draw(st.booleans(), label="restored after the replay")
    api, topic, committed = run_until_crash(records, crash, data)

    now = float(crash)
    engine = PartitionEngine(CONFIG)
    for key, value in topic.items():
        engine.restore(key, value)
    # With no state at all there is nothing to defer to (see `restored()`).
    api.strict = deferred and bool(topic)
    if not deferred:
        api.take(engine.restored(now))
    for offset in range(committed, len(records)):
        now = float(crash + offset)
        if offset == crash:
            api.take(engine.restored(now))
        api.take(engine.apply(events.decode_event(records[offset]), offset, now))
        if data.draw(st.booleans(), label="tick after"):
            api.take(engine.due(now))
        for cid in list(api.flying)[: data.draw(st.integers(0, 2), label="acks after")]:
            api.ack(engine, cid, now)
    api.take(engine.restored(now))
    api.drain(engine, now + 1)
    assert api.bodies == expected
