"""Feedback and interactions (contract v1.1): resolved to the logged message, sent only
once the API holds it, once, with a stable id, across restarts."""

from __future__ import annotations

import io
import json
from itertools import count
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer import events, feedback, payload, render, state
from consumer.engine import (
    Checkpoint,
    EngineConfig,
    Flush,
    Notice,
    NoticeRefusal,
    PartitionEngine,
    Refusal,
    Trigger,
)
from consumer.errors import InvalidEvent
from consumer.feedback import NoticeKind, Unresolved

_ids = count()
USER = {"id": "user_42", "identificationType": "COOKIED"}


def decode(value: dict[str, Any]) -> events.Event:
    return events.decode_event(json.dumps(value).encode())


def turn(cid: str, n: int, *, history: str = "delta") -> events.Event:
    """Turn `n` of a conversation as a delta: a question, and reply `cmpl_n`."""
    return decode(
        {
            "event_id": f"evt_{next(_ids)}",
            "event_type": "chat.completion",
            "conversation_id": cid,
            "occurred_at": "2026-11-23T10:15:02Z",
            "history": history,
            "request": {"messages": [{"role": "user", "content": f"question {n}"}]},
            "response": {
                "id": f"cmpl_{n}",
                "choices": [{"message": {"role": "assistant", "content": f"answer {n}"}}],
            },
        }
    )


def response_turn(cid: str, response_id: str) -> events.Event:
    return decode(
        {
            "event_id": f"evt_{next(_ids)}",
            "event_type": "response",
            "conversation_id": cid,
            "occurred_at": "2026-11-23T10:15:02Z",
            "request": {"input": "What is VAT?"},
            "response": {
                "id": response_id,
                "output": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "A tax."}],
                    }
                ],
            },
        }
    )


def rating(
    cid: str,
    completion: str,
    value: str = "positive",
    *,
    event_id: str | None = None,
    user: dict[str, Any] | None = USER,
    **extra: Any,
) -> events.Event:
    return decode(
        {
            "event_id": event_id or f"evt_{next(_ids)}",
            "event_type": "feedback",
            "conversation_id": cid,
            "occurred_at": "2026-11-23T10:16:00Z",
            "completion_id": completion,
            "rating": value,
            "user_properties": user,
            **extra,
        }
    )


def interaction(cid: str, name: str, completion: str | None = None) -> events.Event:
    value: dict[str, Any] = {
        "event_id": f"evt_{next(_ids)}",
        "event_type": "interaction",
        "conversation_id": cid,
        "occurred_at": "2026-11-23T10:16:00Z",
        "name": name,
    }
    if completion is not None:
        value["completion_id"] = completion
    return decode(value)


def ended(cid: str) -> events.Event:
    return decode(
        {
            "event_id": f"evt_{next(_ids)}",
            "event_type": "conversation.ended",
            "conversation_id": cid,
            "occurred_at": "2026-11-23T10:30:00Z",
        }
    )


class Api:
    """What the API holds: the logged messages, and every feedback and event it took."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self.feedback: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def take_flush(self, flush: Flush) -> None:
        for message in json.loads(flush.body)["messages"]:
            self.messages[message["id"]] = message

    def take_notice(self, notice: Notice) -> dict[str, Any]:
        if notice.kind is NoticeKind.FEEDBACK:
            body = msgspec.to_builtins(
                msgspec.json.decode(notice.body, type=payload.LogFeedbackRequestBody)
            )
            assert notice.path == "/feedback"
            assert body["messageId"] in self.messages, "feedback before its message is logged"
            self.feedback.append(body)
        else:
            body = msgspec.to_builtins(msgspec.json.decode(notice.body, type=payload.InsertEvent))
            assert notice.path == "/events"
            if body["entityType"] == "message":
                assert body["messageId"] in self.messages, "event before its message is logged"
            self.events.append(body)
        return body


def reply_id(api: Api, completion: str) -> str:
    found = [
        m["id"]
        for m in api.messages.values()
        if (m.get("properties") or {}).get("completion_id") == completion
        or (m.get("properties") or {}).get("response_id") == completion
    ]
    assert len(found) == 1
    return found[0]


class Run:
    def __init__(self, engine: PartitionEngine | None = None) -> None:
        self.engine = engine or PartitionEngine(EngineConfig())
        self.api = Api()
        self.offset = 0
        self.now = 1000.0
        self.flushes: list[Flush] = []
        self.notices: list[Notice] = []
        self.refused: list[NoticeRefusal] = []
        self.refusals: list[Refusal] = []
        self.topic: list[tuple[bytes, bytes | None]] = []
        """The state topic: every record checkpointed, in order."""

    def take(self, decisions: list[Any]) -> None:
        for decision in decisions:
            if isinstance(decision, Flush):
                self.flushes.append(decision)
            elif isinstance(decision, Notice):
                self.notices.append(decision)
            elif isinstance(decision, NoticeRefusal):
                self.refused.append(decision)
            else:
                self.refusals.append(decision)

    def checkpoint(self) -> Checkpoint:
        """A checkpoint, its records written to the state topic."""
        checkpoint = self.engine.checkpoint()
        self.topic += checkpoint.records
        return checkpoint

    def apply(self, event: events.Event) -> None:
        self.take(self.engine.apply(event, self.offset, self.now))
        self.offset += 1

    def flush(self, trigger: Trigger = Trigger.MAX_OPEN) -> None:
        self.take(self.engine.flush_open(trigger, self.now))

    def ack_flushes(self) -> None:
        while self.flushes:
            flush = self.flushes.pop(0)
            self.api.take_flush(flush)
            self.take(self.engine.acknowledged(flush.conversation_id, flush.seq, self.now))

    def ack_notices(self) -> list[dict[str, Any]]:
        taken = []
        while self.notices:
            notice = self.notices.pop(0)
            taken.append(self.api.take_notice(notice))
            self.take(
                self.engine.notice_acknowledged(notice.conversation_id, notice.offset, self.now)
            )
        return taken


# --- Resolution ------------------------------------------------------------------------


def test_feedback_names_the_logged_reply_of_its_completion():
    run = Run()
    for n in range(3):
        run.apply(turn("c", n))
    run.flush()
    run.ack_flushes()
    run.apply(rating("c", "cmpl_1", "negative", reasons=[{"label": "wrong", "details": "old"}]))
    [body] = run.ack_notices()
    assert body["messageId"] == reply_id(run.api, "cmpl_1")
    assert run.api.messages[body["messageId"]]["content"] == "answer 1"
    assert body["type"] == "negative"
    assert body["reasons"] == [{"label": "wrong", "details": "old"}]
    assert body["userProperties"] == USER
    assert body["createdAt"] == "2026-11-23T10:16:00Z"


def test_a_responses_api_reply_is_found_by_its_response_id():
    run = Run()
    run.apply(response_turn("c", "resp_9"))
    run.apply(ended("c"))
    run.ack_flushes()
    run.apply(rating("c", "resp_9"))
    [body] = run.ack_notices()
    assert body["messageId"] == reply_id(run.api, "resp_9")


def test_interactions_name_a_message_or_the_conversation():
    run = Run()
    run.apply(turn("c", 0))
    run.apply(ended("c"))
    run.ack_flushes()
    run.apply(interaction("c", "message:copied", "cmpl_0"))
    run.apply(interaction("c", "conversation:shared"))
    copied, shared = run.ack_notices()
    assert copied["entityType"] == "message"
    assert copied["messageId"] == reply_id(run.api, "cmpl_0")
    assert copied["type"] == "message:copied"
    assert shared == {
        "type": "conversation:shared",
        "entityType": "conversation",
        "conversationId": "c",
        "id": shared["id"],
        "createdAt": "2026-11-23T10:16:00Z",
    }


# --- Ordering: never before the message is logged ------------------------------------


def test_feedback_waits_for_the_flush_holding_its_message():
    run = Run()
    run.apply(turn("c", 0))
    run.flush()
    run.ack_flushes()
    run.apply(turn("c", 1))
    run.apply(rating("c", "cmpl_1"))
    assert run.notices == []  # Message 1 is in no acknowledged body yet.
    run.flush()
    assert run.notices == []  # Issued, not acknowledged.
    run.ack_flushes()
    [body] = run.ack_notices()
    assert body["messageId"] == reply_id(run.api, "cmpl_1")


def test_feedback_on_an_acknowledged_message_goes_at_once_while_later_ones_wait():
    run = Run()
    run.apply(turn("c", 0))
    run.flush()
    run.ack_flushes()
    run.apply(turn("c", 1))
    run.apply(rating("c", "cmpl_0"))
    assert len(run.notices) == 1
    assert run.ack_notices()[0]["messageId"] == reply_id(run.api, "cmpl_0")


def test_notices_of_a_conversation_go_one_at_a_time_in_input_order():
    run = Run()
    run.apply(turn("c", 0))
    run.apply(ended("c"))
    run.ack_flushes()
    run.apply(rating("c", "cmpl_0", "positive"))
    run.apply(rating("c", "cmpl_0", "negative"))
    assert len(run.notices) == 1  # The change waits for the first rating to settle.
    first, second = run.ack_notices()
    assert (first["type"], second["type"]) == ("positive", "negative")


# --- Stable ids ------------------------------------------------------------------------


def test_a_changed_rating_replaces_the_earlier_one_and_a_resent_event_changes_nothing():
    run = Run()
    run.apply(turn("c", 0))
    run.apply(turn("c", 1))
    run.apply(ended("c"))
    run.ack_flushes()
    run.apply(rating("c", "cmpl_0", "positive", event_id="fb_1"))
    run.apply(rating("c", "cmpl_0", "positive", event_id="fb_1"))  # Producer retry.
    run.apply(rating("c", "cmpl_0", "negative"))
    run.apply(rating("c", "cmpl_0", "positive", user={"id": "user_7"}))
    run.apply(rating("c", "cmpl_1", "positive"))
    bodies = run.ack_notices()
    assert len(bodies) == 4
    assert run.engine.duplicates == 1
    ids = [b["id"] for b in bodies]
    assert ids[0] == ids[1]  # Same user, same reply: the change replaces.
    assert len({ids[0], ids[2], ids[3]}) == 3  # Another user, another reply.
    assert ids[0] == feedback.feedback_id("c", "cmpl_0", "user_42")


def test_interaction_ids_follow_the_producers_event_id():
    assert feedback.event_id("c", "e1") == feedback.event_id("c", "e1")
    assert feedback.event_id("c", "e1") != feedback.event_id("c", "e2")
    assert feedback.event_id("c", "e1") != feedback.event_id("d", "e1")


def test_the_user_is_read_from_id_then_user_id():
    assert feedback.user_of({"id": "a", "userId": "b"}) == "a"
    assert feedback.user_of({"userId": 7}) == "7"
    assert feedback.user_of({"id": True}) == ""
    assert feedback.user_of(None) == ""


# --- Refusals --------------------------------------------------------------------------


def test_an_unknown_conversation_is_refused():
    run = Run()
    run.apply(rating("nobody", "cmpl_0"))
    [refused] = run.refused
    assert refused.reason is Unresolved.UNKNOWN_CONVERSATION
    assert json.loads(refused.body)["event_type"] == "feedback"
    assert run.checkpoint().hold is None


def test_an_unknown_completion_is_refused_and_the_event_counted_as_applied():
    run = Run()
    run.apply(turn("c", 0))
    run.apply(rating("c", "cmpl_404"))
    run.apply(interaction("c", "message:copied", "cmpl_404"))
    assert [r.reason for r in run.refused] == [Unresolved.UNKNOWN_COMPLETION] * 2
    assert [r.kind for r in run.refused] == [NoticeKind.FEEDBACK, NoticeKind.EVENT]
    assert run.notices == []
    assert run.engine.is_duplicate(rating("c", "cmpl_404"), 1)


def test_a_user_message_is_not_a_completion():
    run = Run()
    run.apply(turn("c", 0))
    conv = state.ConversationState(id="x", opened_at=0, last_event_at=0)
    assert feedback.resolve(conv, "cmpl_0") is None
    run.apply(rating("c", "question 0"))
    assert run.refused[0].reason is Unresolved.UNKNOWN_COMPLETION


def test_feedback_on_a_message_whose_flush_was_dead_lettered_is_refused():
    run = Run()
    run.apply(turn("c", 0))
    run.apply(rating("c", "cmpl_0"))
    run.flush(trigger=Trigger.ENDED)
    [flush] = run.flushes
    run.take(run.engine.dead_lettered("c", flush.seq, run.now))
    [refused] = run.refused
    assert refused.reason is Unresolved.MESSAGE_NOT_LOGGED
    assert json.loads(refused.body)["type"] == "positive"  # The request it would have sent.
    assert run.checkpoint().hold is None


def test_feedback_for_an_expired_conversation_is_refused():
    config = EngineConfig(state_retention=10.0)
    run = Run(PartitionEngine(config))
    run.apply(turn("c", 0))
    run.apply(ended("c"))
    run.ack_flushes()
    run.engine.due(run.now + 11)  # Completed state becomes a marker.
    run.apply(rating("c", "cmpl_0"))
    assert run.refused[0].reason is Unresolved.HISTORY_EXPIRED


def test_a_notice_still_waiting_when_its_conversation_expires_is_dead_lettered():
    config = EngineConfig(state_retention=10.0)
    run = Run(PartitionEngine(config))
    run.apply(turn("c", 0))
    run.apply(ended("c"))
    run.ack_flushes()
    run.apply(rating("c", "cmpl_0", "positive"))
    run.apply(rating("c", "cmpl_0", "negative"))  # Waits for the first, which is out.
    assert len(run.notices) == 1
    run.take(run.engine.due(run.now + 11))
    assert [(r.reason, r.offset) for r in run.refused] == [
        (Unresolved.HISTORY_EXPIRED, run.offset - 1)
    ]
    assert json.loads(run.refused[0].body)["type"] == "negative"


# --- Commits and restarts --------------------------------------------------------------


def test_commits_are_held_at_the_feedback_until_its_request_is_acknowledged():
    run = Run()
    run.apply(turn("c", 0))
    run.apply(ended("c"))
    run.ack_flushes()
    assert run.checkpoint().hold is None
    run.apply(rating("c", "cmpl_0"))
    assert run.checkpoint().hold == 2
    assert run.engine.waiting_notices == 1
    run.ack_notices()
    checkpoint = run.checkpoint()
    assert checkpoint.hold is None
    assert checkpoint.covers == 3


def restart(run: Run, *, keep_api: bool = True) -> Run:
    """A new owner: every state record written so far, restored; nothing in flight survives."""
    run.checkpoint()
    fresh = Run()
    fresh.offset = run.offset
    fresh.topic = run.topic
    if keep_api:
        fresh.api = run.api
    for key, value in fresh.topic:
        fresh.engine.restore(key, value, run.now)
    return fresh


def test_a_waiting_feedback_survives_a_restart_and_goes_once():
    run = Run()
    engine_records: list[tuple[bytes, bytes | None]] = []
    run.apply(turn("c", 0))
    run.apply(rating("c", "cmpl_0"))
    engine_records += run.checkpoint().records
    assert run.notices == []
    fresh = Run()
    fresh.api = run.api
    fresh.offset = run.offset
    for key, value in engine_records:
        fresh.engine.restore(key, value, run.now)
    # The replay from the held offset finds the feedback already in state.
    fresh.offset = 1
    fresh.apply(rating("c", "cmpl_0", event_id="again"))  # Same offset: a duplicate.
    assert fresh.engine.duplicates == 1
    fresh.take(fresh.engine.restored(fresh.now))
    assert fresh.notices == []
    fresh.flush(trigger=Trigger.ENDED)
    fresh.ack_flushes()
    [body] = fresh.ack_notices()
    assert body["messageId"] == reply_id(fresh.api, "cmpl_0")
    assert fresh.checkpoint().hold is None


def test_a_notice_in_flight_at_a_restart_is_sent_again_by_the_new_owner():
    run = Run()
    run.apply(turn("c", 0))
    run.apply(ended("c"))
    run.ack_flushes()
    run.apply(rating("c", "cmpl_0"))
    assert len(run.notices) == 1  # Out, never answered: the process dies.
    fresh = restart(run)
    assert fresh.notices == []
    fresh.take(fresh.engine.restored(fresh.now))
    [again] = fresh.notices
    assert again.body == run.notices[0].body
    fresh.ack_notices()
    assert fresh.checkpoint().hold is None
    final = restart(fresh)
    final.take(final.engine.restored(final.now))
    assert final.notices == []  # Settled notices are gone from the state.


def test_feedback_during_the_catch_up_waits_for_restored():
    run = Run()
    run.apply(turn("c", 0))
    run.apply(ended("c"))
    run.ack_flushes()
    fresh = restart(run)
    fresh.apply(rating("c", "cmpl_0"))
    assert fresh.notices == []
    fresh.take(fresh.engine.restored(fresh.now))
    assert len(fresh.notices) == 1


# --- Any order of acknowledgements -----------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("turn"), st.integers(0, 0)),
            st.tuples(st.just("rate"), st.integers(0, 5)),
            st.tuples(st.just("flush"), st.integers(0, 0)),
            st.tuples(st.just("ack"), st.integers(0, 0)),
            st.tuples(st.just("answer"), st.integers(0, 0)),
            st.tuples(st.just("restart"), st.integers(0, 0)),
        ),
        max_size=40,
    )
)
def test_every_rating_lands_once_on_its_message_never_before_it(
    steps: list[tuple[str, int]],
) -> None:
    run = Run()
    turns = 0
    rated: list[str] = []
    for action, arg in steps:
        if action == "turn":
            run.apply(turn("c", turns))
            turns += 1
        elif action == "rate" and arg < turns:
            completion = f"cmpl_{arg}"
            run.apply(rating("c", completion, user={"id": f"u{len(rated)}"}))
            rated.append(completion)
        elif action == "flush":
            run.flush()
        elif action == "ack":
            run.ack_flushes()
        elif action == "answer":
            run.ack_notices()  # Take_notice asserts the message is logged.
        elif action == "restart":
            run = restart(run)
            run.take(run.engine.restored(run.now))
    run.flush(trigger=Trigger.ENDED)
    for _ in range(3):
        run.ack_flushes()
        run.ack_notices()
    assert run.refused == []
    logged = {b["id"]: b["messageId"] for b in run.api.feedback}
    assert logged == {
        feedback.feedback_id("c", c, f"u{i}"): reply_id(run.api, c) for i, c in enumerate(rated)
    }
    assert len(run.api.feedback) == len(rated)  # Once each.
    assert run.checkpoint().hold is None


# --- The contract's bounds -------------------------------------------------------------


def test_feedback_and_interactions_are_bounded_like_other_events():
    def refused(value: dict[str, Any]) -> str:
        try:
            decode(value)
        except InvalidEvent as exc:
            return exc.kind
        return "accepted"

    base = {
        "event_id": "e",
        "event_type": "feedback",
        "conversation_id": "c",
        "occurred_at": "2026-11-23T10:16:00Z",
        "completion_id": "cmpl_0",
        "rating": "positive",
    }
    assert refused(base) == "accepted"
    assert refused({**base, "rating": "meh"}) == "schema"
    assert refused({k: v for k, v in base.items() if k != "completion_id"}) == "schema"
    assert refused({**base, "completion_id": "x" * 257}) == "schema"
    reason = {"label": "wrong", "details": "d"}
    assert refused({**base, "reasons": [reason] * events.MAX_REASONS}) == "accepted"
    assert refused({**base, "reasons": [reason] * (events.MAX_REASONS + 1)}) == "schema"
    assert refused({**base, "reasons": [{"label": "", "details": ""}]}) == "schema"
    assert refused({**base, "reasons": [{"label": "l", "details": "d" * 4097}]}) == "schema"
    copied = {**base, "event_type": "interaction", "name": "message:copied"}
    del copied["rating"]
    assert refused(copied) == "accepted"
    assert refused({k: v for k, v in copied.items() if k != "completion_id"}) == "accepted"
    assert refused({k: v for k, v in copied.items() if k != "name"}) == "schema"


# --- render ----------------------------------------------------------------------------


def test_render_prints_feedback_and_event_bodies_in_sending_order():
    lines = [
        turn("r", 0),
        rating("r", "cmpl_0", "positive"),
        interaction("r", "message:copied", "cmpl_0"),
        rating("r", "cmpl_404"),
        rating("r", "cmpl_0", "negative"),
    ]
    source = b"".join(msgspec.json.encode(event) + b"\n" for event in lines)
    outputs = {}
    for kind in ("conversations", "feedback", "events"):
        out, errors = io.BytesIO(), io.StringIO()
        assert render.render(io.BytesIO(source), out, errors, kind=kind) == 0
        outputs[kind] = [json.loads(line) for line in out.getvalue().splitlines()]
        assert errors.getvalue() == "line 4: feedback not sent (unknown_completion)\n"
    [conversation] = outputs["conversations"]
    reply = conversation["messages"][1]["id"]
    assert [(b["type"], b["messageId"]) for b in outputs["feedback"]] == [
        ("positive", reply),
        ("negative", reply),
    ]
    assert [(b["type"], b["messageId"]) for b in outputs["events"]] == [("message:copied", reply)]
