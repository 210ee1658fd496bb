"""The engine's rules, one scenario each, asserted on the request bodies it decides to send."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import msgspec
import pytest

from consumer import events, payload, state
from consumer.engine import (
    MARKER_LIFETIME,
    EngineConfig,
    Flush,
    PartitionEngine,
    Refusal,
    Trigger,
)
from consumer.errors import StateError
from consumer.fit import MARK

_ids = count()

SYSTEM = {"role": "system", "content": "You answer questions about Acme's docs."}


def in_flight(engine: PartitionEngine) -> int:
    """Conversations with a flush out, read from the engine's bookkeeping."""
    return sum(1 for cid in engine._held if engine._open[cid].in_flight)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def completion(
    cid: str,
    messages: list[dict[str, Any]],
    reply: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
    history: str = "full",
    occurred: str = "2026-11-23T10:15:02.481Z",
    **extra: Any,
) -> events.Event:
    value: dict[str, Any] = {
        "event_id": event_id or f"evt_{next(_ids)}",
        "event_type": "chat.completion",
        "conversation_id": cid,
        "occurred_at": occurred,
        "history": history,
        "request": {"model": "gpt-4o", "messages": messages},
        **extra,
    }
    if reply is not None:
        value["response"] = {"choices": [{"index": 0, "message": reply}]}
    return events.decode_event(json.dumps(value).encode())


def ended(conversation: str, *, event_id: str | None = None, **extra: Any) -> events.Event:
    value = {
        "event_id": event_id or f"evt_{next(_ids)}",
        "event_type": "conversation.ended",
        "conversation_id": conversation,
        "occurred_at": "2026-11-23T10:30:00Z",
        **extra,
    }
    return events.decode_event(json.dumps(value).encode())


class Run:
    """Feeds events at increasing offsets and answers flushes like the API would."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.engine = PartitionEngine(config or EngineConfig())
        self.offset = 0
        self.now = 1000.0

    def apply(self, event: events.Event) -> list[Flush | Refusal]:
        decisions = self.engine.apply(event, self.offset, self.now)
        self.offset += 1
        return decisions

    def feed(self, *items: events.Event) -> None:
        for item in items:
            assert self.apply(item) == []

    def final(self, conversation: str = "c") -> dict[str, Any]:
        """The body a shutdown flush sends, acknowledged."""
        flushes = [
            d
            for d in self.engine.flush_open(Trigger.SHUTDOWN, self.now)
            if d.conversation_id == conversation
        ]
        assert len(flushes) == 1
        flush = flushes[0]
        assert isinstance(flush, Flush)
        assert self.engine.acknowledged(conversation, flush.seq, self.now) == []
        return body(flush)


def body(decision: Flush | Refusal) -> dict[str, Any]:
    payload.decode(decision.body)  # The strict schema: unknown fields or wrong types raise.
    return json.loads(decision.body)


def texts(document: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(m["role"], m["content"]) for m in document["messages"]]


def only_flush(decisions: list[Flush | Refusal]) -> Flush:
    assert len(decisions) == 1
    assert isinstance(decisions[0], Flush)
    return decisions[0]


# --- Alignment of histories ------------------------------------------------------------


def test_growing_full_history_logs_each_message_once():
    run = Run()
    run.feed(
        completion("c", [SYSTEM, user("a")], assistant("A")),
        completion("c", [SYSTEM, user("a"), assistant("A"), user("b")], assistant("B")),
        completion(
            "c",
            [SYSTEM, user("a"), assistant("A"), user("b"), assistant("B"), user("c")],
            assistant("C"),
        ),
    )
    assert texts(run.final()) == [
        ("system", SYSTEM["content"]),
        ("user", "a"),
        ("assistant", "A"),
        ("user", "b"),
        ("assistant", "B"),
        ("user", "c"),
        ("assistant", "C"),
    ]


def test_front_trimmed_history_keeps_old_turns_once_and_in_order():
    run = Run()
    run.feed(
        completion("c", [SYSTEM, user("a")], assistant("A")),
        completion("c", [SYSTEM, user("a"), assistant("A"), user("b")], assistant("B")),
        completion("c", [SYSTEM, user("b"), assistant("B"), user("c")], assistant("C")),
        completion("c", [SYSTEM, user("c"), assistant("C"), user("d")], assistant("D")),
    )
    assert [content for _, content in texts(run.final())] == [
        SYSTEM["content"],
        "a",
        "A",
        "b",
        "B",
        "c",
        "C",
        "d",
        "D",
    ]


def test_resent_event_under_a_new_event_id_adds_nothing():
    run = Run()
    first = [SYSTEM, user("a")]
    run.feed(
        completion("c", first, assistant("A")),
        completion("c", [*first, assistant("A"), user("b")], assistant("B")),
        completion("c", first, assistant("A")),
    )
    assert [content for _, content in texts(run.final())] == [
        SYSTEM["content"],
        "a",
        "A",
        "b",
        "B",
    ]


def test_repeated_identical_user_turns_are_both_kept():
    run = Run()
    run.feed(
        completion("c", [user("hi")], assistant("Hello")),
        completion("c", [user("hi"), assistant("Hello"), user("hi")], assistant("Hello")),
    )
    assert texts(run.final()) == [
        ("user", "hi"),
        ("assistant", "Hello"),
        ("user", "hi"),
        ("assistant", "Hello"),
    ]


def test_identical_messages_inside_one_request_are_both_kept():
    run = Run()
    run.feed(completion("c", [user("again"), user("again")], assistant("ok")))
    assert texts(run.final()) == [("user", "again"), ("user", "again"), ("assistant", "ok")]


def test_trimmed_history_anchors_on_the_latest_message_not_an_equal_older_one():
    run = Run()
    run.feed(
        completion("c", [user("hi")], assistant("x")),
        completion("c", [user("hi"), assistant("x"), user("more")], assistant("y")),
        completion("c", [user("hi"), assistant("x"), user("more"), assistant("y"), user("hi")]),
        # Trimmed to the last known message; the new "more" equals an older one.
        completion("c", [user("hi"), user("more")], assistant("z")),
    )
    assert [c for _, c in texts(run.final())] == ["hi", "x", "more", "y", "hi", "more", "z"]


def test_edited_turn_keeps_both_branches_in_arrival_order():
    run = Run()
    run.feed(
        completion("c", [SYSTEM, user("a")], assistant("A")),
        completion("c", [SYSTEM, user("a"), assistant("A"), user("b")], assistant("B")),
        completion("c", [SYSTEM, user("a"), assistant("A"), user("b edited")], assistant("B2")),
    )
    assert [content for _, content in texts(run.final())] == [
        SYSTEM["content"],
        "a",
        "A",
        "b",
        "B",
        "b edited",
        "B2",
    ]


def test_edited_middle_turn_with_the_same_first_and_last_messages_keeps_both_branches():
    """Equal ends do not make the history between them known: every known message is checked."""
    run = Run()
    run.feed(
        completion("c", [SYSTEM, user("a")], assistant("A")),
        completion("c", [SYSTEM, user("a"), assistant("A"), user("b")], assistant("B")),
        completion(
            "c",
            [SYSTEM, user("a"), assistant("A rewritten"), user("b"), assistant("B"), user("c")],
            assistant("C"),
        ),
    )
    assert [content for _, content in texts(run.final())] == [
        SYSTEM["content"],
        "a",
        "A",
        "b",
        "B",
        "A rewritten",
        "c",
        "C",
    ]


@pytest.mark.parametrize(
    "resent",
    [
        {"role": "developer", "content": SYSTEM["content"]},
        {"role": "system", "content": [{"type": "text", "text": SYSTEM["content"]}]},
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "You answer questions "},
                {"type": "text", "text": "about Acme's docs."},
            ],
        },
    ],
)
def test_known_messages_sent_again_in_an_equivalent_form_are_logged_once(resent):
    run = Run()
    run.feed(
        completion("c", [SYSTEM, user("a")], assistant("A")),
        completion("c", [resent, user("a"), assistant("A"), user("b")], assistant("B")),
        completion(
            "c",
            [
                resent,
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                assistant("B"),
                user("c"),
            ],
            assistant("C"),
        ),
    )
    assert [content for _, content in texts(run.final())] == [
        SYSTEM["content"],
        "a",
        "A",
        "b",
        "B",
        "c",
        "C",
    ]


CALL = {"id": "k1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
LEGACY = {"name": "f", "arguments": "{}"}


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (assistant(None, refusal="No."), assistant("No.")),
        (assistant("x", function_call=LEGACY), assistant("x")),
        (assistant("x"), assistant("x", function_call=LEGACY)),
        (assistant("x", tool_calls=[CALL]), assistant("x")),
        (assistant("x"), assistant("x", tool_calls=[CALL])),
        (assistant("x"), assistant("x", name="ann")),
        (assistant("x"), assistant("x", tool_call_id="k1")),
        (assistant("x"), user("x")),
    ],
)
def test_a_message_that_only_looks_like_the_known_one_is_logged_as_new(first, again):
    """What a logged message does not show (refusal, calls, ids) still tells two messages apart."""
    run = Run()
    run.feed(
        completion("c", [user("q")], first),
        completion("c", [user("q"), again, user("next")], assistant("done")),
    )
    assert len(run.final()["messages"]) == 5


def test_a_tool_result_for_another_call_is_logged_as_new():
    call_2 = {**CALL, "id": "k2"}
    run = Run()
    run.feed(
        completion("c", [user("q")], assistant(None, tool_calls=[CALL, call_2])),
        completion(
            "c",
            [
                user("q"),
                assistant(None, tool_calls=[CALL, call_2]),
                {"role": "tool", "tool_call_id": "k1", "content": "42"},
            ],
        ),
        completion(
            "c",
            [
                user("q"),
                assistant(None, tool_calls=[CALL, call_2]),
                {"role": "tool", "tool_call_id": "k2", "content": "42"},
            ],
            assistant("done"),
        ),
    )
    messages = run.final()["messages"]
    assert messages[1]["properties"]["tool_results"] == [
        {"tool_call_id": "k1", "content": "42"},
        {"tool_call_id": "k2", "content": "42"},
    ]


def test_regenerated_reply_keeps_both_replies():
    run = Run()
    run.feed(
        completion("c", [user("a")], assistant("first try")),
        completion("c", [user("a")], assistant("second try")),
        completion("c", [user("a"), assistant("second try"), user("b")], assistant("B")),
    )
    assert [content for _, content in texts(run.final())] == [
        "a",
        "first try",
        "second try",
        "b",
        "B",
    ]


def test_changing_system_prompt_does_not_duplicate_the_history():
    run = Run()
    run.feed(
        completion("c", [{"role": "system", "content": "time 1"}, user("a")], assistant("A")),
        completion(
            "c",
            [{"role": "system", "content": "time 2"}, user("a"), assistant("A"), user("b")],
            assistant("B"),
        ),
    )
    assert [content for _, content in texts(run.final())] == [
        "time 1",
        "a",
        "A",
        "time 2",
        "b",
        "B",
    ]


def test_delta_events_append_their_messages_and_reply():
    run = Run()
    run.feed(
        completion("c", [SYSTEM, user("a")], assistant("A"), history="delta"),
        completion("c", [user("b")], assistant("B"), history="delta"),
        completion("c", [user("b")], assistant("B"), history="delta"),
    )
    assert [content for _, content in texts(run.final())] == [
        SYSTEM["content"],
        "a",
        "A",
        "b",
        "B",
        "b",
        "B",
    ]


def test_reply_matches_its_resent_copy_in_normalised_form():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    run = Run()
    run.feed(
        completion(
            "c",
            [{"role": "developer", "content": "rules"}, user("a")],
            assistant(None, tool_calls=[call]),
        ),
        completion(
            "c",
            [
                {"role": "system", "content": [{"type": "text", "text": "rules"}]},
                user("a"),
                assistant("", tool_calls=[call]),
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ],
            assistant("It is 42."),
        ),
    )
    document = run.final()
    assert texts(document) == [
        ("system", "rules"),
        ("user", "a"),
        ("assistant", ""),
        ("assistant", "It is 42."),
    ]
    assert document["messages"][2]["properties"]["tool_results"] == [
        {"tool_call_id": "call_1", "content": "42"},
    ]


def test_request_without_reply_and_reply_without_request_both_count():
    run = Run()
    run.feed(
        completion("c", [user("a")]),
        completion("c", [user("a")], assistant("A")),
    )
    assert texts(run.final()) == [("user", "a"), ("assistant", "A")]


# --- Duplicates ---------------------------------------------------------------------


def test_duplicate_event_id_changes_nothing():
    run = Run()
    first = completion("c", [user("a")], assistant("A"), history="delta", event_id="e1")
    run.feed(first, completion("c", [user("b")], assistant("B"), history="delta", event_id="e1"))
    assert run.engine.duplicates == 1
    assert texts(run.final()) == [("user", "a"), ("assistant", "A")]


def test_duplicate_after_the_conversation_ended_does_not_reopen_it():
    run = Run()
    event = completion("c", [user("a")], assistant("A"), event_id="e1")
    run.feed(event)
    flush = only_flush(run.apply(ended("c")))
    run.engine.acknowledged("c", flush.seq, run.now)
    assert run.engine.open_count == 0
    assert run.apply(event) == []
    assert run.engine.duplicates == 1
    assert run.engine.open_count == 0
    assert run.engine.flush_open(Trigger.SHUTDOWN, run.now) == []


def test_replayed_offsets_are_ignored_even_with_other_event_ids():
    run = Run()
    run.feed(completion("c", [user("a")], assistant("A"), history="delta"))
    replay = completion("c", [user("zzz")], history="delta")
    assert run.engine.apply(replay, 0, run.now) == []
    assert run.engine.duplicates == 1
    assert texts(run.final()) == [("user", "a"), ("assistant", "A")]


# --- When flushes happen ---------------------------------------------------------------


def test_ended_flushes_at_once_and_completes_when_acknowledged():
    run = Run()
    run.feed(completion("c", [user("a")], assistant("A")))
    flush = only_flush(run.apply(ended("c")))
    assert flush.trigger is Trigger.ENDED
    assert flush.seq == 1
    assert flush.message_count == 2
    assert texts(body(flush)) == [("user", "a"), ("assistant", "A")]
    assert body(flush)["updatedAt"] == "2026-11-23T10:30:00Z"
    assert in_flight(run.engine) == 1
    assert run.engine.open_count == 1
    assert run.engine.acknowledged("c", 1, run.now) == []
    assert run.engine.open_count == 0
    assert run.engine.conversation_count == 1


def test_continuation_after_end_holds_earlier_messages_with_the_same_ids():
    run = Run()
    run.feed(completion("c", [user("a")], assistant("A")))
    first = only_flush(run.apply(ended("c")))
    run.engine.acknowledged("c", first.seq, run.now)
    run.feed(completion("c", [user("a"), assistant("A"), user("b")], assistant("B")))
    second = only_flush(run.apply(ended("c")))
    assert second.seq == first.seq + 1
    before = [m["id"] for m in body(first)["messages"]]
    after = [m["id"] for m in body(second)["messages"]]
    assert after[:2] == before
    assert len(set(after)) == 4
    assert [c for _, c in texts(body(second))] == ["a", "A", "b", "B"]


def test_idle_conversation_is_flushed_and_completed():
    run = Run(EngineConfig(idle_timeout=300))
    run.feed(completion("c", [user("a")], assistant("A")))
    assert run.engine.due(run.now + 299) == []
    flush = only_flush(run.engine.due(run.now + 300))
    assert flush.trigger is Trigger.IDLE
    assert texts(body(flush)) == [("user", "a"), ("assistant", "A")]
    assert run.engine.due(run.now + 1000) == []
    run.engine.acknowledged("c", flush.seq, run.now + 301)
    assert run.engine.open_count == 0


def test_idle_counts_from_the_last_event():
    run = Run(EngineConfig(idle_timeout=300))
    run.feed(completion("c", [user("a")], history="delta"))
    run.now += 200
    run.feed(completion("c", [user("b")], history="delta"))
    assert run.engine.due(run.now + 299) == []
    assert only_flush(run.engine.due(run.now + 300)).trigger is Trigger.IDLE


def test_max_open_gives_an_interim_flush_and_the_conversation_stays_open():
    run = Run(EngineConfig(idle_timeout=10_000, max_open=3600))
    run.feed(completion("c", [user("a")], history="delta"))
    assert run.engine.due(run.now + 3599) == []
    flush = only_flush(run.engine.due(run.now + 3600))
    assert flush.trigger is Trigger.MAX_OPEN
    run.engine.acknowledged("c", flush.seq, run.now + 3600)
    assert run.engine.open_count == 1
    # Nothing changed since: no flush. A change, then max_open since the last flush: another.
    assert run.engine.due(run.now + 7300) == []
    run.now += 7300
    run.feed(completion("c", [user("b")], history="delta"))
    again = only_flush(run.engine.due(run.now))
    assert again.trigger is Trigger.MAX_OPEN
    assert [c for _, c in texts(body(again))] == ["a", "b"]


def test_flush_open_flushes_only_conversations_with_unflushed_changes():
    run = Run()
    run.feed(completion("quiet", [user("q")], history="delta"))
    flush = only_flush(run.engine.flush_open(Trigger.REVOKE, run.now))
    run.engine.acknowledged("quiet", flush.seq, run.now)
    run.feed(completion("busy", [user("b")], history="delta"))
    decisions = run.engine.flush_open(Trigger.SHUTDOWN, run.now)
    assert [(d.conversation_id, d.trigger) for d in decisions if isinstance(d, Flush)] == [
        ("busy", Trigger.SHUTDOWN),
    ]
    assert run.engine.open_count == 2  # Interim: both stay open.


def test_shed_completes_the_least_recently_active_first():
    run = Run()
    for name in ("old", "middle", "new"):
        run.feed(completion(name, [user(name)], history="delta"))
        run.now += 1
    run.feed(completion("old", [user("again")], history="delta"))
    decisions = run.engine.shed(2, run.now)
    assert [(d.conversation_id, d.trigger) for d in decisions if isinstance(d, Flush)] == [
        ("middle", Trigger.MEMORY),
        ("new", Trigger.MEMORY),
    ]
    for decision in decisions:
        run.engine.acknowledged(decision.conversation_id, decision.seq, run.now)
    assert run.engine.open_count == 1


# --- One flush in flight --------------------------------------------------------------


def test_a_second_flush_waits_for_the_first_and_carries_everything():
    run = Run()
    run.feed(completion("c", [user("a")], assistant("A"), history="delta"))
    first = only_flush(run.engine.flush_open(Trigger.SHUTDOWN, run.now))
    run.feed(completion("c", [user("b")], assistant("B"), history="delta"))
    assert run.apply(ended("c")) == []
    assert run.engine.flush_open(Trigger.REVOKE, run.now) == []
    assert in_flight(run.engine) == 1
    follow = only_flush(run.engine.acknowledged("c", first.seq, run.now))
    assert follow.trigger is Trigger.ENDED
    assert follow.seq == first.seq + 1
    assert [c for _, c in texts(body(follow))] == ["a", "A", "b", "B"]
    assert run.engine.acknowledged("c", follow.seq, run.now) == []
    assert run.engine.open_count == 0


def test_stale_or_unknown_acknowledgements_are_ignored():
    run = Run()
    run.feed(completion("c", [user("a")], history="delta"))
    flush = only_flush(run.engine.flush_open(Trigger.SHUTDOWN, run.now))
    assert run.engine.acknowledged("c", flush.seq + 5, run.now) == []
    assert run.engine.acknowledged("other", 1, run.now) == []
    assert in_flight(run.engine) == 1


def test_an_event_during_a_completing_flush_keeps_the_conversation_open():
    run = Run()
    run.feed(completion("c", [user("a")], history="delta"))
    flush = only_flush(run.apply(ended("c")))
    run.feed(completion("c", [user("b")], history="delta"))
    assert run.engine.acknowledged("c", flush.seq, run.now) == []
    assert run.engine.open_count == 1
    assert [c for _, c in texts(run.final())] == ["a", "b"]


def test_dead_lettered_flush_counts_as_done():
    run = Run()
    run.feed(completion("c", [user("a")], history="delta"))
    flush = only_flush(run.apply(ended("c")))
    assert run.engine.checkpoint().hold == 0
    assert run.engine.dead_lettered("c", flush.seq, run.now) == []
    assert run.engine.open_count == 0
    assert run.engine.checkpoint().hold is None


def test_ended_for_a_conversation_without_messages_sends_nothing():
    run = Run()
    assert run.apply(ended("c")) == []
    assert run.engine.open_count == 0
    assert run.engine.checkpoint().hold is None


# --- The guard ----------------------------------------------------------------------


def test_late_continuation_after_retention_is_refused_not_sent():
    run = Run(EngineConfig(state_retention=100))
    run.feed(completion("c", [user("a")], assistant("A")))
    flush = only_flush(run.apply(ended("c")))
    run.engine.acknowledged("c", flush.seq, run.now)
    run.engine.due(run.now + 100)
    run.now += 200
    run.feed(completion("c", [user("b")], assistant("B"), history="delta"))
    run.feed(completion("c", [user("c")], assistant("C"), history="delta"))
    decisions = run.engine.flush_open(Trigger.SHUTDOWN, run.now)
    assert len(decisions) == 1
    refusal = decisions[0]
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "history_expired"
    assert refusal.acknowledged_count == 2
    assert refusal.message_count == 4
    assert refusal.seq == flush.seq + 1
    assert [c for _, c in texts(body(refusal))] == ["b", "B", "c", "C"]
    assert in_flight(run.engine) == 0
    assert run.engine.checkpoint().hold is None


def test_flush_with_fewer_messages_than_acknowledged_is_refused():
    conv = state.ConversationState(id="c", opened_at=0.0, last_event_at=0.0, acked_count=5)
    engine = PartitionEngine(EngineConfig())
    engine.restore(b"c", state.encode_record(conv))
    assert engine.restored(0.0) == []
    engine.apply(completion("c", [user("a")], assistant("A")), 3, 0.0)
    refusal = engine.flush_open(Trigger.SHUTDOWN, 0.0)[0]
    assert isinstance(refusal, Refusal)
    assert (refusal.message_count, refusal.acknowledged_count) == (2, 5)
    assert refusal.reason == "fewer_messages"


def test_a_conversation_that_cannot_be_cut_to_fit_is_refused():
    run = Run(EngineConfig(max_body_bytes=2_000))
    run.feed(completion("c", [user(str(i)) for i in range(100)], history="delta"))
    decisions = run.engine.flush_open(Trigger.SHUTDOWN, run.now)
    assert len(decisions) == 1
    refusal = decisions[0]
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "too_large"
    assert len(body(refusal)["messages"]) == 100
    assert in_flight(run.engine) == 0


def test_marker_replaces_state_after_retention_and_goes_after_thirty_times_that():
    run = Run(EngineConfig(state_retention=100))
    run.feed(completion("c", [user("a")], assistant("A")))
    flush = only_flush(run.apply(ended("c")))
    run.engine.acknowledged("c", flush.seq, run.now)
    completed = dict(run.engine.checkpoint().records)[b"c"]
    assert completed is not None
    full = state.decode_record(completed)
    assert isinstance(full, state.ConversationState)
    assert full.complete
    assert len(full.entries) == 2
    run.engine.due(run.now + 99)
    assert run.engine.checkpoint().records == []
    run.engine.due(run.now + 100)
    marker_value = dict(run.engine.checkpoint().records)[b"c"]
    assert marker_value is not None
    marker = state.decode_record(marker_value)
    assert isinstance(marker, state.Marker)
    assert (marker.acked_count, marker.seq, marker.last_offset) == (2, 1, 1)
    assert run.engine.conversation_count == 0
    run.engine.due(run.now + 100 + 100 * MARKER_LIFETIME - 1)
    assert run.engine.checkpoint().records == []
    run.engine.due(run.now + 100 + 100 * MARKER_LIFETIME)
    assert run.engine.checkpoint().records == [(b"c", None)]


def test_replayed_old_events_after_expiry_are_not_a_continuation():
    run = Run(EngineConfig(state_retention=100))
    old = completion("c", [user("a")], assistant("A"))
    run.feed(old)
    flush = only_flush(run.apply(ended("c")))
    run.engine.acknowledged("c", flush.seq, run.now)
    run.engine.due(run.now + 100)
    assert run.engine.apply(old, 0, run.now + 200) == []
    assert run.engine.open_count == 0


# --- Offsets and restarts -------------------------------------------------------------


def test_hold_follows_unacknowledged_events():
    run = Run()
    assert run.engine.checkpoint().hold is None
    run.feed(completion("x", [user("x")], history="delta"))  # offset 0, stays open
    run.feed(completion("c", [user("a")], history="delta"))  # offset 1
    flush = only_flush(run.apply(ended("c")))  # offset 2
    assert run.engine.checkpoint().hold == 1
    run.feed(completion("c", [user("b")], history="delta"))  # offset 3, during the flight
    assert run.engine.checkpoint().hold == 1
    run.engine.acknowledged("c", flush.seq, run.now)
    assert run.engine.checkpoint().hold is None
    seqs = {d.conversation_id: d.seq for d in run.engine.flush_open(Trigger.SHUTDOWN, run.now)}
    assert sorted(seqs) == ["c", "x"]
    assert run.engine.checkpoint().hold == 0
    run.engine.acknowledged("x", seqs["x"], run.now)
    assert run.engine.checkpoint().hold == 3


def test_hold_stays_on_a_pending_flush_until_it_is_acknowledged():
    run = Run()
    run.feed(completion("c", [user("a")], history="delta"))  # 0
    first = only_flush(run.engine.flush_open(Trigger.SHUTDOWN, run.now))
    run.feed(completion("c", [user("b")], history="delta"))  # 1
    assert run.apply(ended("c")) == []  # 2, pending
    assert run.engine.checkpoint().hold == 0
    follow = only_flush(run.engine.acknowledged("c", first.seq, run.now))
    assert run.engine.checkpoint().hold == 1
    run.engine.acknowledged("c", follow.seq, run.now)
    assert run.engine.checkpoint().hold is None


def restart(engine: PartitionEngine, now: float) -> tuple[PartitionEngine, list[Flush | Refusal]]:
    fresh = PartitionEngine(engine._config)
    for key, value in engine.checkpoint().records:
        fresh.restore(key, value)
    return fresh, fresh.restored(now)


def test_restore_reissues_the_flush_that_was_in_flight():
    run = Run()
    run.feed(completion("c", [user("a")], assistant("A")))
    first = only_flush(run.apply(ended("c")))
    engine, decisions = restart(run.engine, run.now)
    again = only_flush(decisions)
    assert again.seq == first.seq + 1
    assert again.trigger is Trigger.ENDED
    assert body(again)["messages"] == body(first)["messages"]
    engine.acknowledged("c", again.seq, run.now)
    assert engine.open_count == 0


def test_flushes_wait_for_restored_so_a_replay_never_sends_an_older_body():
    run = Run()
    script = [
        completion("c", [user("a")], assistant("A")),
        ended("c"),
        completion("c", [user("a"), assistant("A"), user("b")], assistant("B")),
        ended("c"),
    ]
    run.feed(script[0])
    first = only_flush(run.apply(script[1]))
    records = run.engine.checkpoint().records  # Written with the first flush in flight.
    run.engine.acknowledged("c", first.seq, run.now)
    run.feed(script[2])
    newer = only_flush(run.apply(script[3]))  # The old owner then sent 4 messages, and died.
    engine = PartitionEngine(EngineConfig())
    for key, value in records:
        engine.restore(key, value)
    assert engine.checkpoint().hold == 0
    for offset, event in enumerate(script):  # Replayed from the held offset.
        assert engine.apply(event, offset, run.now) == []
    assert engine.due(run.now + 10_000) == []
    resumed = only_flush(engine.restored(run.now))
    assert resumed.seq == first.seq + 1
    assert resumed.trigger is Trigger.ENDED
    assert body(resumed)["messages"] == body(newer)["messages"]
    engine.acknowledged("c", resumed.seq, run.now)
    assert engine.open_count == 0


def test_restored_without_any_restore_changes_nothing():
    run = Run()
    run.feed(completion("c", [user("a")]))
    only_flush(run.apply(ended("c")))
    assert run.engine.restored(run.now) == []
    assert in_flight(run.engine) == 1


def test_restored_conversation_continues_with_the_same_ids_and_no_duplicates():
    run = Run()
    first = completion("c", [user("a")], assistant("A"))
    run.feed(first)
    engine, decisions = restart(run.engine, run.now)
    assert decisions == []
    assert engine.apply(first, 0, run.now) == []  # Replayed from the committed offset.
    engine.apply(completion("c", [user("a"), assistant("A"), user("b")], assistant("B")), 1, 0)
    flush = only_flush(engine.flush_open(Trigger.SHUTDOWN, run.now))
    straight = run.engine.apply(
        completion("c", [user("a"), assistant("A"), user("b")], assistant("B")), 1, 0
    )
    assert straight == []
    assert body(flush)["messages"] == run.final()["messages"]


def test_restored_completed_conversation_takes_a_continuation():
    run = Run()
    run.feed(completion("c", [user("a")], assistant("A")))
    flush = only_flush(run.apply(ended("c")))
    run.engine.acknowledged("c", flush.seq, run.now)
    engine, _ = restart(run.engine, run.now)
    assert engine.open_count == 0
    assert engine.conversation_count == 1
    engine.apply(completion("c", [user("b")], assistant("B"), history="delta"), 5, run.now)
    follow = only_flush(engine.flush_open(Trigger.SHUTDOWN, run.now))
    assert [c for _, c in texts(body(follow))] == ["a", "A", "b", "B"]
    assert follow.seq == 2


def test_restored_engine_still_idles_conversations():
    run = Run(EngineConfig(idle_timeout=300))
    run.feed(completion("c", [user("a")], history="delta"))
    engine, _ = restart(run.engine, run.now + 10)
    assert engine.due(run.now + 299) == []
    assert only_flush(engine.due(run.now + 300)).trigger is Trigger.IDLE


def test_unreadable_state_record_stops_the_restore():
    engine = PartitionEngine(EngineConfig())
    with pytest.raises(StateError):
        engine.restore(b"c", b"Xgarbage")


def test_tombstone_removes_restored_state():
    run = Run()
    run.feed(completion("c", [user("a")], history="delta"))
    records = run.engine.checkpoint().records
    engine = PartitionEngine(EngineConfig())
    for key, value in [*records, (b"c", None)]:
        engine.restore(key, value)
    engine.restored(0.0)
    assert engine.conversation_count == 0


# --- The body ------------------------------------------------------------------------


def test_mapping_of_roles_parts_and_reply_properties():
    run = Run()
    event = events.decode_event(
        json.dumps(
            {
                "event_id": "e1",
                "event_type": "chat.completion",
                "conversation_id": "c",
                "occurred_at": "2026-11-23T12:15:02.481+02:00",
                "request": {
                    "model": "gpt-4o",
                    "messages": [
                        {"role": "developer", "content": "be brief"},
                        {
                            "role": "user",
                            "name": "ann",
                            "content": [
                                {"type": "text", "text": "look"},
                                {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                                {
                                    "type": "image_url",
                                    "image_url": {"url": "https://x/dog.png", "detail": "low"},
                                },
                                {
                                    "type": "input_audio",
                                    "input_audio": {"data": "AAAA", "format": "wav"},
                                },
                                {
                                    "type": "file",
                                    "file": {"filename": "report.pdf", "file_data": "..."},
                                },
                                {"type": "refusal", "refusal": "no"},
                                {"type": "video", "text": "clip"},
                            ],
                        },
                    ],
                },
                "response": {
                    "id": "chatcmpl-1",
                    "created": 1795428902,
                    "model": "gpt-4o-2024-08-06",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "Done."},
                        }
                    ],
                    "usage": {"total_tokens": 9},
                },
                "latency_ms": 1840,
            }
        ).encode()
    )
    run.feed(event)
    document = run.final()
    system, person, reply = document["messages"]
    assert system["role"] == "system"
    assert system["properties"] == {"openai_role": "developer"}
    assert system["createdAt"] == "2026-11-23T10:15:02.481000Z"
    assert person["name"] == "ann"
    assert person["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "auto"}},
        {"type": "image_url", "image_url": {"url": "https://x/dog.png", "detail": "low"}},
        {"type": "text", "text": "[audio input: wav]"},
        {"type": "text", "text": "[file: report.pdf]"},
        {"type": "text", "text": "[refusal] no"},
        {"type": "text", "text": "[video part] clip"},
    ]
    assert reply["createdAt"] == "2026-11-23T10:15:02Z"
    assert reply["properties"] == {
        "model": "gpt-4o-2024-08-06",
        "finish_reason": "stop",
        "usage": {"total_tokens": 9},
        "completion_id": "chatcmpl-1",
        "latency_ms": 1840,
    }
    assert document["createdAt"] == document["updatedAt"] == "2026-11-23T10:15:02.481000Z"
    assert document["type"] == "openai"


def test_reply_properties_hold_only_what_is_present():
    run = Run()
    run.feed(completion("c", [user("a")], assistant("A")))
    reply = run.final()["messages"][1]
    assert reply["properties"] == {"model": "gpt-4o"}


def test_assistant_without_content_refusal_and_legacy_function_call():
    run = Run()
    run.feed(
        completion(
            "c",
            [
                user("a"),
                assistant(None, refusal="I can't help with that."),
                assistant("partly", refusal="not all of it"),
                assistant(None, function_call={"name": "lookup", "arguments": '{"q": 1}'}),
                {"role": "function", "name": "lookup", "content": "found"},
            ],
            history="delta",
        )
    )
    messages = run.final()["messages"]
    assert [m["content"] for m in messages] == [
        "a",
        "I can't help with that.",
        "partly",
        "",
    ]
    assert messages[1]["properties"] == {"refusal": "I can't help with that."}
    assert messages[2]["properties"] == {"refusal": "not all of it"}
    assert messages[3]["properties"] == {
        "function_call": {"name": "lookup", "arguments": '{"q": 1}'},
        "tool_results": [{"name": "lookup", "content": "found"}],
    }


def test_tool_results_go_to_the_assistant_that_called_them():
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
        {"id": "call_b", "type": "custom", "custom": {"name": "sql", "input": "select 1"}},
    ]
    run = Run()
    run.feed(
        completion(
            "c",
            [
                user("a"),
                assistant(None, tool_calls=calls),
                assistant("interim"),
                {
                    "role": "tool",
                    "tool_call_id": "call_b",
                    "content": [{"type": "text", "text": "1"}],
                },
                {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_unknown", "content": "orphan"},
            ],
            history="delta",
        )
    )
    messages = run.final()["messages"]
    assert len(messages) == 3
    caller = messages[1]
    assert caller["content"] == ""
    assert caller["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "sql", "arguments": "select 1"}},
    ]
    assert caller["properties"] == {
        "tool_call_types": {"call_b": "custom"},
        "tool_results": [
            {"tool_call_id": "call_b", "content": [{"type": "text", "text": "1"}]},
            {"tool_call_id": "call_a", "content": "sunny"},
        ],
    }
    assert messages[2]["properties"] == {
        "tool_results": [{"tool_call_id": "call_unknown", "content": "orphan"}],
    }


def test_orphan_tool_results_without_an_assistant():
    run = Run()
    run.feed(
        completion(
            "c",
            [
                {"role": "tool", "tool_call_id": "call_1", "content": "first"},
                user("a"),
                {"role": "tool", "tool_call_id": "call_2", "content": "second"},
            ],
            history="delta",
        )
    )
    messages = run.final()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "[tool result: call_1]"),
        ("user", "a"),
    ]
    assert messages[0]["properties"] == {
        "tool_results": [{"tool_call_id": "call_1", "content": "first"}],
    }
    assert messages[1]["properties"] == {
        "tool_results": [{"tool_call_id": "call_2", "content": "second"}],
    }


def test_tool_results_do_not_change_the_stored_state():
    run = Run()
    call = {"id": "k", "type": "function", "function": {"name": "f", "arguments": ""}}
    run.feed(
        completion(
            "c",
            [
                user("a"),
                assistant(None, tool_calls=[call]),
                {"role": "tool", "tool_call_id": "k", "content": "r"},
            ],
            history="delta",
        )
    )
    first = run.final()
    run.feed(completion("c", [user("b")], history="delta"))
    second = run.final()
    assert second["messages"][1] == first["messages"][1]
    assert second["messages"][1]["properties"]["tool_results"] == [
        {"tool_call_id": "k", "content": "r"},
    ]


def test_metadata_merges_and_times_span_the_events():
    run = Run()
    run.feed(
        completion(
            "c",
            [user("a")],
            history="delta",
            occurred="2026-11-23T10:00:00Z",
            conversation={
                "external_id": "x1",
                "properties": {"app": "w", "k": 1},
                "user_properties": {"id": "u1"},
                "tags": ["docs", "a"],
                "visibility": "private",
            },
        ),
        completion(
            "c",
            [user("b")],
            history="delta",
            occurred="2026-11-23T09:00:00Z",
            conversation={
                "external_id": "x2",
                "properties": {"k": 2},
                "user_properties": {"identificationType": "COOKIED"},
                "tags": ["b", "docs"],
                "project_id": "p",
            },
        ),
    )
    document = run.final()
    assert document["externalId"] == "x2"
    assert document["projectId"] == "p"
    assert document["visibility"] == "private"
    assert document["properties"] == {"app": "w", "k": 2}
    assert document["userProperties"] == {"id": "u1", "identificationType": "COOKIED"}
    assert document["tags"] == ["docs", "a", "b"]
    assert document["createdAt"] == "2026-11-23T09:00:00Z"
    assert document["updatedAt"] == "2026-11-23T10:00:00Z"
    assert [m["createdAt"] for m in document["messages"]] == [
        "2026-11-23T10:00:00Z",
        "2026-11-23T09:00:00Z",
    ]


def test_message_ids_are_the_same_in_a_separate_run_of_the_same_events():
    script = [
        completion("c", [user("a")], assistant("A")),
        completion("c", [user("a"), assistant("A"), user("b")], assistant("B")),
    ]
    one, two = Run(), Run()
    one.feed(*script)
    two.feed(*script)
    ids = [m["id"] for m in one.final()["messages"]]
    assert ids == [m["id"] for m in two.final()["messages"]]
    assert ids == [f"{state.message_id_prefix('c')}{ordinal}" for ordinal in range(4)]
    assert len(set(ids)) == 4


def test_oversized_conversation_is_cut_and_the_original_kept():
    run = Run(EngineConfig(max_body_bytes=20_000))
    run.feed(completion("c", [user("x" * 50_000), user("small")], assistant("A")))
    flush = only_flush(run.apply(ended("c")))
    assert flush.truncated
    assert len(flush.body) <= 20_000
    document = body(flush)
    assert document["properties"][MARK]["max_bytes"] == 20_000
    assert document["messages"][0]["content"].endswith("of 50000 characters]")
    assert document["messages"][1]["content"] == "small"
    assert flush.original is not None
    original = json.loads(flush.original)
    assert original["messages"][0]["content"] == "x" * 50_000
    assert flush.conversation == payload.decode(flush.body)


def test_flush_conversation_is_the_struct_of_its_body():
    run = Run()
    run.feed(completion("c", [user("a")], assistant("A")))
    flush = only_flush(run.apply(ended("c")))
    assert not flush.truncated
    assert flush.original is None
    assert payload.encode(flush.conversation) == flush.body
    assert msgspec.json.decode(flush.body)["id"] == "c"
