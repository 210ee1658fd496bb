"""The pure parts of `dlq`: reading dead letters back, the filters, the summary, the guard."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer import cli, deadletter
from consumer.dlq import (
    Action,
    Dead,
    Held,
    HeldMessage,
    Kind,
    Selection,
    guard,
    parser,
    selection_of,
    still_invalid,
    summarize,
)

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
MS0 = int(T0.timestamp() * 1000)

VALID_EVENT = json.dumps(
    {
        "event_id": "e1",
        "event_type": "conversation.ended",
        "conversation_id": "c1",
        "occurred_at": T0.isoformat(),
    }
).encode()


def dead(letter: deadletter.DeadLetter, partition: int = 0, offset: int = 0, ms: int = MS0) -> Dead:
    return Dead(partition, offset, ms, letter.key, letter.value, dict(letter.headers))


def invalid(
    value: bytes = b"{not json", kind: str = "not_json", partition: int = 0, offset: int = 0
) -> Dead:
    letter = deadletter.invalid_record(
        key=b"c1", value=value, kind=kind, reason="bad", topic="in", partition=2, offset=41
    )
    return dead(letter, partition, offset)


def refused(kind: str = "rejected", offset: int = 0, ms: int = MS0) -> Dead:
    letter = deadletter.conversation(
        conversation_id="c9",
        body=b'{"id":"c9","type":"openai","messages":[]}',
        kind=kind,
        reason="refused",
        topic="in",
        partition=1,
        status=422,
        answer=b'{"detail":"secret content echoed"}',
    )
    return dead(letter, 0, offset, ms)


def test_headers_read_back_as_written() -> None:
    record = invalid()
    assert record.kind is Kind.RECORD
    assert record.reason == "not_json"
    assert (record.source_topic, record.source_partition) == ("in", 2)
    assert record.conversation_id is None
    conv = refused()
    assert conv.kind is Kind.CONVERSATION
    assert conv.conversation_id == "c9"
    assert conv.ledger_key == b"0:0"


def test_describe_hides_content_unless_asked() -> None:
    conv = refused()
    hidden = conv.describe(show_content=False)
    assert "value" not in hidden
    assert "api.answer" not in hidden
    assert hidden["api.status"] == "422"
    assert hidden["conversation_id"] == "c9"
    assert hidden["value_bytes"] == len(conv.value)
    shown = conv.describe(show_content=True)
    assert shown["value"].startswith('{"id":"c9"')
    assert "secret content" in shown["api.answer"]


def test_selection_by_each_condition() -> None:
    letters = [
        invalid(offset=0),
        invalid(kind="schema", partition=1, offset=1),
        refused(offset=2, ms=MS0 + 60_000),
        refused(kind="fewer_messages", offset=3, ms=MS0 + 120_000),
    ]

    def pick(selection: Selection) -> list[int]:
        return [d.offset for d in letters if selection(d)]

    assert pick(Selection()) == [0, 1, 2, 3]
    assert pick(Selection(reasons=frozenset({"rejected", "schema"}))) == [1, 2]
    assert pick(Selection(kind=Kind.RECORD)) == [0, 1]
    assert pick(Selection(partitions=frozenset({1}))) == [1]
    assert pick(Selection(since_ms=MS0 + 60_000)) == [2, 3]
    assert pick(Selection(until_ms=MS0 + 60_000)) == [0, 1]
    assert pick(Selection(from_offset=1, until_offset=3)) == [1, 2]
    assert pick(Selection(kind=Kind.CONVERSATION, until_ms=MS0 + 120_000)) == [2]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["rejected", "not_json", "schema", "truncated"]),
            st.integers(0, 3),
            st.integers(0, 10**6),
        ),
        max_size=30,
    ),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_a_range_split_in_two_selects_the_same_as_the_whole(letters, cut, end) -> None:
    records = [
        Dead(p, i, MS0 + ms, b"k", b"v", {"error": reason.encode()})
        for i, (reason, p, ms) in enumerate(letters)
    ]
    start, stop = min(cut, end), max(cut, end)
    whole = Selection(since_ms=MS0, until_ms=MS0 + stop)
    first = Selection(since_ms=MS0, until_ms=MS0 + start)
    second = Selection(since_ms=MS0 + start, until_ms=MS0 + stop)
    assert [d for d in records if whole(d)] == [d for d in records if first(d) or second(d)]
    assert not any(first(d) and second(d) for d in records)


def test_summary_counts_by_reason_kind_source_and_time() -> None:
    letters = [
        invalid(offset=0),
        invalid(offset=1),
        refused(offset=2, ms=MS0 + 1000),
        refused(offset=3, ms=MS0 - 1000),
    ]
    summary = summarize(letters, replayed=frozenset({b"0:2"})).as_dict()
    assert summary["total"] == 4
    assert summary["replayed"] == 1
    assert summary["by_reason"] == {"not_json": 2, "rejected": 2}
    assert summary["by_kind"] == {"conversation": 2, "record": 2}
    assert summary["by_source"] == {"in/1": 2, "in/2": 2}
    assert summary["first"] == (T0 - timedelta(seconds=1)).isoformat()
    assert summary["last"] == (T0 + timedelta(seconds=1)).isoformat()
    assert summarize([]).as_dict()["first"] is None


def conv(ids: list[str], last_minute: int = 0) -> Held:
    return Held(
        [
            HeldMessage(i, T0 + timedelta(minutes=n if n < len(ids) - 1 else last_minute + n))
            for n, i in enumerate(ids)
        ]
    )


def test_guard_sends_only_what_extends_the_api_copy() -> None:
    body = conv(["a", "b", "c"])
    assert guard(body, None) is Action.SEND
    assert guard(body, conv(["a"])) is Action.SEND
    assert guard(body, conv(["a", "b", "c"])) is Action.SKIP_API_HOLDS_AS_MANY
    assert guard(body, conv(["a", "b", "c", "d"])) is Action.SKIP_API_HOLDS_AS_MANY
    assert guard(body, conv(["x", "y"])) is Action.SKIP_API_HOLDS_OTHER
    assert guard(body, conv(["a", "b"], last_minute=60)) is Action.SKIP_API_HOLDS_NEWER


@given(
    st.lists(st.sampled_from("abcdef"), max_size=6, unique=True),
    st.lists(st.sampled_from("abcdef"), max_size=6, unique=True),
)
def test_guard_never_lets_a_body_drop_a_held_message(body_ids, held_ids) -> None:
    """Whatever the two copies, a sent body keeps every message the API holds, in order."""
    body = Held([HeldMessage(i) for i in body_ids])
    held = Held([HeldMessage(i) for i in held_ids])
    if guard(body, held) is Action.SEND:
        assert body_ids[: len(held_ids)] == held_ids
        assert len(body_ids) > len(held_ids)


def test_still_invalid_uses_the_current_decoder_and_size_limit() -> None:
    assert still_invalid(invalid(b"{not json"), 1 << 20) is not None
    assert still_invalid(invalid(b""), 1 << 20) is not None
    assert still_invalid(invalid(VALID_EVENT), 1 << 20) is None
    assert still_invalid(invalid(VALID_EVENT), 10) is not None


def test_command_line_selection() -> None:
    args = parser(cli.OVERRIDES).parse_args(
        [
            "replay",
            "--reason",
            "rejected",
            "--reason",
            "schema",
            "--kind",
            "conversation",
            "--since",
            "2026-11-23T10:00:00",
            "--until",
            "2026-11-23T11:00:00+01:00",
            "--from-offset",
            "5",
            "--dlq-topic",
            "x.dlq",
        ]
    )
    assert not args.execute
    selection = selection_of(args)
    assert selection.reasons == {"rejected", "schema"}
    assert selection.kind is Kind.CONVERSATION
    assert selection.since_ms == MS0
    assert selection.until_ms == MS0
    assert selection.from_offset == 5
    assert args.kafka_dlq_topic == "x.dlq"
    with pytest.raises(SystemExit):
        parser(cli.OVERRIDES).parse_args(["inspect", "--since", "yesterday"])


def test_dlq_command_needs_the_workers_settings(monkeypatch, capsys) -> None:
    monkeypatch.delenv("INKEEP_API_KEY", raising=False)
    assert cli.main(["dlq", "inspect"]) == 2
    assert "INKEEP_API_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["dlq", "delete"])
