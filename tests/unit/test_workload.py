"""The generated workload keeps the input contract and looks like real traffic."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from consumer.engine import EngineConfig, Notice, NoticeRefusal, PartitionEngine, Trigger
from consumer.events import ChatCompletion, ConversationEnded, decode_event
from consumer.testing import workload
from consumer.testing.workload import Shape, generate, is_ended

CONVERSATIONS = 400


@pytest.fixture(scope="module")
def records():
    return list(generate(CONVERSATIONS, seed=7))


@pytest.fixture(scope="module")
def by_conversation(records):
    grouped = defaultdict(list)
    for _, value in records:
        event = json.loads(value)
        grouped[event["conversation_id"]].append(event)
    return grouped


def test_every_event_decodes_and_is_keyed_by_its_conversation(records):
    kinds = Counter()
    for key, value in records:
        event = decode_event(value)
        kinds[type(event)] += 1
        assert key == event.conversation_id.encode()
        assert is_ended(value) == isinstance(event, ConversationEnded)
    assert kinds[ChatCompletion] > kinds[ConversationEnded] > 0


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not():
    first = list(generate(30, seed=3))
    assert first == list(generate(30, seed=3))
    assert first != list(generate(30, seed=4))


def test_events_are_about_a_kilobyte(records):
    sizes = [len(value) for _, value in records]
    assert 700 <= statistics.mean(sizes) <= 1500
    assert max(sizes) < 8_000


def test_conversations_have_several_turns_and_a_share_ends(by_conversation):
    assert len(by_conversation) == CONVERSATIONS
    turns = Counter()
    ended = 0
    for events in by_conversation.values():
        answered = [e for e in events if _finish_reason(e) == "stop"]
        turns[len(answered)] += 1
        assert 3 <= len(answered) <= 12
        kinds = [e["event_type"] for e in events]
        if "conversation.ended" in kinds:
            ended += 1
            assert kinds.index("conversation.ended") == len(kinds) - 1
    assert len(turns) >= 8
    assert 0.7 <= ended / CONVERSATIONS <= 0.9


def test_conversations_interleave_in_time_order(records, by_conversation):
    first_events = [json.loads(value)["conversation_id"] for _, value in records[:300]]
    assert len(set(first_events)) > 100
    times = [_at(json.loads(value)) for _, value in records]
    assert times == sorted(times)
    for events in by_conversation.values():
        assert [e["event_id"] for e in events] == list(dict.fromkeys(e["event_id"] for e in events))


def test_full_history_keeps_the_system_prompt_and_trims_whole_turns(by_conversation):
    trimmed = 0
    for events in by_conversation.values():
        completions = [e for e in events if e["event_type"] == "chat.completion"]
        if completions[0].get("history", "full") != "full":
            continue
        system = completions[0]["request"]["messages"][0]
        assert system["role"] in ("system", "developer")
        first_question = completions[0]["request"]["messages"][1]
        for event in completions:
            messages = event["request"]["messages"]
            assert messages[0] == system
            assert messages[1]["role"] == "user"
            assert messages[-1]["role"] in ("user", "tool")
        trimmed += first_question not in completions[-1]["request"]["messages"]
    assert trimmed > 10


def test_delta_history_sends_only_what_is_new(by_conversation):
    deltas = 0
    for events in by_conversation.values():
        completions = [e for e in events if e["event_type"] == "chat.completion"]
        if completions[0].get("history") != "delta":
            continue
        deltas += 1
        assert all(e["history"] == "delta" for e in completions)
        first = [m["role"] for m in completions[0]["request"]["messages"]]
        assert first in (["system", "user"], ["developer", "user"])
        for previous, event in pairwise(completions):
            messages = event["request"]["messages"]
            asked = _reply(previous).get("tool_calls") or []
            if asked:
                assert [m["role"] for m in messages] == ["tool"] * len(asked)
                assert [m["tool_call_id"] for m in messages] == [c["id"] for c in asked]
            else:
                assert [m["role"] for m in messages] == ["user"]
    assert 0.1 * CONVERSATIONS <= deltas <= 0.3 * CONVERSATIONS


def test_tool_calls_are_answered_by_tool_results_in_the_next_call(by_conversation):
    calls = 0
    for events in by_conversation.values():
        completions = [e for e in events if e["event_type"] == "chat.completion"]
        for previous, event in pairwise(completions):
            asked = _reply(previous).get("tool_calls") or []
            if not asked:
                continue
            calls += 1
            assert _finish_reason(previous) == "tool_calls"
            answered = {m.get("tool_call_id") for m in event["request"]["messages"]}
            assert {call["id"] for call in asked} <= answered
            for call in asked:
                json.loads(call["function"]["arguments"])
    assert calls > 0.1 * CONVERSATIONS


def test_a_failed_call_has_no_response_and_is_retried_with_the_same_messages():
    shape = Shape(failed_share=0.5, delta_share=0.0)
    events = [json.loads(value) for _, value in generate(40, seed=5, shape=shape)]
    retried = 0
    following = {}
    for event in events:
        previous = following.get(event["conversation_id"])
        if previous is not None and "response" not in previous:
            assert event["request"]["messages"] == previous["request"]["messages"]
            assert "response" in event
            retried += 1
        following[event["conversation_id"]] = event
    assert retried > 20


def test_duplicates_repeat_an_event_exactly():
    records = list(generate(50, seed=9, shape=Shape(duplicate_share=0.2)))
    counts = Counter(records)
    repeated = [record for record, count in counts.items() if count > 1]
    assert len(repeated) > 0.1 * len(counts)
    ids = Counter(json.loads(value)["event_id"] for _, value in records)
    assert sum(ids.values()) - len(ids) == sum(count - 1 for count in counts.values())


def test_ended_events_alone_carry_the_resolution(records):
    for _, value in records:
        event = json.loads(value)
        properties = (event.get("conversation") or {}).get("properties") or {}
        assert (workload.RESOLUTION in properties) == is_ended(value)


def test_a_live_clock_stamps_each_event_as_it_is_made():
    ticks = iter(datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=s) for s in range(10_000))
    events = [json.loads(v) for _, v in generate(5, seed=1, clock=lambda: next(ticks))]
    stamps = [_at(e) for e in events]
    assert stamps[0] == datetime(2030, 1, 1, tzinfo=UTC)
    assert stamps == [stamps[0] + timedelta(seconds=i) for i in range(len(stamps))]


def test_the_command_refuses_bad_arguments_before_touching_kafka(capsys):
    assert workload.main(["--conversations", "0"]) == 2
    assert workload.main(["--ended-share", "1.5"]) == 2
    assert "--ended-share" in capsys.readouterr().err


def _reply(event):
    choices = (event.get("response") or {}).get("choices") or [{}]
    return choices[0].get("message") or {}


def _finish_reason(event):
    choices = (event.get("response") or {}).get("choices") or [{}]
    return choices[0].get("finish_reason")


def _at(event):
    return datetime.fromisoformat(event["occurred_at"])


def test_users_rate_and_copy_replies_that_the_engine_resolves():
    """With a feedback share, ratings and copies follow the replies they name, and the
    worker's own engine resolves every one of them (no refusals)."""
    shape = Shape(feedback_share=0.5, responses_share=0.3)
    stream = list(generate(60, seed=11, shape=shape))
    engine = PartitionEngine(EngineConfig())
    kinds: Counter[str] = Counter()
    notices: list[Notice] = []

    def answer(pending: list) -> None:
        while pending:
            decision = pending.pop()
            assert not isinstance(decision, NoticeRefusal), decision.reason
            if isinstance(decision, Notice):
                notices.append(decision)
                cid, offset = decision.conversation_id, decision.offset
                pending += engine.notice_acknowledged(cid, offset, 0.0)
            else:
                pending += engine.acknowledged(decision.conversation_id, decision.seq, 0.0)

    for offset, (_, value) in enumerate(stream):
        event = decode_event(value)
        kinds[type(event).__name__] += 1
        answer(engine.apply(event, offset, 0.0))
    assert kinds["Feedback"] > 20
    assert 0 < kinds["Interaction"] < kinds["Feedback"]
    answer(engine.flush_open(Trigger.SHUTDOWN, 0.0))
    assert len(notices) == kinds["Feedback"] + kinds["Interaction"]
