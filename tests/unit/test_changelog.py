"""The state topic's log layout: what checkpoints write restores exactly what the engine had.

A simulated state partition keeps every record in order (`log`); restoring from it,
or from its compaction (the last record per key), must give each conversation
exactly as the engine held it. A crash may cut a checkpoint anywhere: what is in
the topic then must restore, per conversation, the state of the previous
checkpoint or of the cut one, never a partial history and never a `StateError`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consumer import changelog, events, state
from consumer.engine import EngineConfig, Flush, PartitionEngine
from consumer.errors import StateError

CONFIG = EngineConfig(idle_timeout=50, max_open=80, state_retention=200)

Snapshot = dict[str, Any]


def snapshot(engine: PartitionEngine) -> Snapshot:
    """Every conversation the engine holds, as comparable builtins."""
    engine._assemble()
    out: Snapshot = {}
    for cid, conv in engine._open.items():
        out[cid] = ("open", _builtins(conv))
    for cid, kept in engine.store.items():
        if kept.blob is not None:
            out[cid] = ("done", _builtins(state.decode_record(kept.blob)))
        else:
            marker = state.Marker(cid, kept.acked_count, kept.seq, kept.last_offset, kept.at)
            out[cid] = ("marker", msgspec.to_builtins(marker))
    return out


def _builtins(record: Any) -> Any:
    assert isinstance(record, state.ConversationState)
    bare = msgspec.structs.replace(record, seen=set())
    return msgspec.to_builtins(bare), sorted(record.seen)  # A set has no order.


def restore(
    records: list[tuple[bytes, bytes | None]], config: EngineConfig = CONFIG
) -> PartitionEngine:
    engine = PartitionEngine(config)
    for key, value in records:
        engine.restore(key, value, 0.0)
    return engine


def compacted(log: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    last: dict[bytes, bytes | None] = {}
    for key, value in log:
        last.pop(key, None)
        last[key] = value
    return [(key, value) for key, value in last.items() if value is not None]


def event(cid: str, step: int, kind: str) -> events.Event:
    if kind == "ended":
        value: dict[str, Any] = {
            "event_id": f"{cid}-{step}-end",
            "event_type": "conversation.ended",
            "conversation_id": cid,
        }
    else:
        value = {
            "event_id": f"{cid}-{step}",
            "event_type": "chat.completion",
            "conversation_id": cid,
            "history": "delta",
            "request": {"model": "m", "messages": [{"role": "user", "content": f"q{step}"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": f"a{step}"}}]},
            "conversation": {"tags": [f"t{step % 3}"]},
        }
    value["occurred_at"] = f"2026-11-23T10:{step // 60 % 60:02d}:{step % 60:02d}Z"
    return events.decode_event(json.dumps(value).encode())


OP = st.one_of(
    st.tuples(st.just("event"), st.sampled_from("ab"), st.sampled_from(("turn", "ended"))),
    st.tuples(st.just("event"), st.sampled_from("ab"), st.just("turn")),
    st.tuples(st.just("again"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.integers(1, 120)),
    st.tuples(st.just("ack"), st.integers(0, 3)),
    st.tuples(st.just("ack"), st.integers(0, 3)),
    st.tuples(st.just("checkpoint"), st.integers(0, 40), st.booleans()),
    st.tuples(st.just("restart"), st.booleans()),
)
OPS = st.lists(OP, max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
@example(  # Expired to a marker and reopened before a checkpoint: a new log, numbered after.
    [
        ("event", "a", "turn"),
        ("tick", 50),
        ("restart", False),
        ("ack", 0),
        ("tick", 80),
        ("tick", 120),
        ("event", "a", "turn"),
        ("checkpoint", 2, True),
        ("event", "a", "turn"),
        ("restart", True),
    ]
)
@example(  # A continuation before the checkpoint after the completion: the log goes on.
    [
        ("event", "a", "turn"),
        ("checkpoint", 0, False),
        ("event", "a", "turn"),
        ("event", "a", "ended"),
        ("ack", 0),
        ("event", "a", "turn"),
        ("checkpoint", 0, False),
    ]
)
def test_restore_gives_exactly_the_state_the_engine_had(ops):
    """Events, duplicates, acks, completions, continuations, expiries, restarts and crashes."""
    play(ops)


def play(ops: list[tuple[Any, ...]], config: EngineConfig = CONFIG) -> None:
    """Runs `ops`, checking every restore against the engine; `("layout", whole)` switches
    `whole_records` from the next checkpoint on, as a fleet mixing the two modes does.

    After a whole checkpoint that was not cut, the topic's compaction is all the
    previous release reads, and it reads the engine's conversations from it.
    """
    engine = PartitionEngine(config)
    log: list[tuple[bytes, bytes | None]] = []
    applied: list[events.Event] = []
    flying: list[Flush] = []
    now, offset = 0.0, 0
    written = snapshot(engine)
    for op in ops:
        if op[0] == "event":
            applied.append(event(op[1], offset, op[2]))
            decisions = engine.apply(applied[-1], offset, now)
            offset += 1
        elif op[0] == "again":  # A producer retry at a new offset.
            again = applied[op[1] % len(applied)] if applied else event("a", offset, "turn")
            decisions = engine.apply(again, offset, now)
            offset += 1
        elif op[0] == "tick":
            now += op[1]
            decisions = engine.due(now)
        elif op[0] == "ack":
            flush = flying.pop(op[1] % len(flying)) if flying else None
            decisions = flush and engine.acknowledged(flush.conversation_id, flush.seq, now)
        elif op[0] == "layout":
            engine._config = replace(engine._config, whole_records=op[1])
            continue
        elif op[0] == "checkpoint":
            records = take_checkpoint(engine)
            current = snapshot(engine)
            _, cut, crash = op
            if crash and records:
                # The process dies with part of this checkpoint in the topic.
                log += records[: cut % (len(records) + 1)]
                engine = restore(log, engine._config)
                got = snapshot(engine)
                for cid in set(got) | set(written) | set(current):
                    assert got.get(cid) in (written.get(cid), current.get(cid)), cid
                decisions = engine.restored(now)
                flying = []
                written = got
            else:
                log += records
                assert_restores(engine, log)
                written = snapshot(engine)
                continue
        else:
            log += take_checkpoint(engine)
            written = snapshot(engine)
            engine = restore(compacted(log) if op[1] else log, engine._config)
            assert snapshot(engine) == written
            decisions = engine.restored(now)
            flying = []
        flying += [d for d in decisions or () if isinstance(d, Flush)]
    log += take_checkpoint(engine)
    assert_restores(engine, log)


def take_checkpoint(engine: PartitionEngine) -> list[tuple[bytes, bytes | None]]:
    records = engine.checkpoint().records
    if engine._config.whole_records:
        assert_previous_release_writes(records)
    return records


def assert_restores(engine: PartitionEngine, log: list[tuple[bytes, bytes | None]]) -> None:
    """The topic, whole or compacted, restores the engine's state after an uncut checkpoint."""
    assert snapshot(restore(log)) == snapshot(engine)
    assert snapshot(restore(compacted(log))) == snapshot(engine)
    if engine._config.whole_records:
        assert previous_release_restore(compacted(log)) == snapshot(engine)


PREVIOUS_FIELDS = {
    state.Entry: (None, "role content created_at name tool_calls tool_call_id properties"),
    state.Meta: (
        None,
        (
            "external_id external_url project_id integration_id support_ticket_conversation_id "
            "properties user_properties tags visibility"
        ),
    ),
    state.ConversationState: (
        "c1",
        (
            "id opened_at last_event_at entries fingerprints seen meta created_at updated_at "
            "last_flush_at completed_at last_offset complete closing dirty seq in_flight "
            "in_flight_trigger in_flight_count pending acked_count unacked_from since_issue_from "
            "partial"
        ),
    ),
    state.Marker: ("m1", "id acked_count seq last_offset marked_at"),
}
"""The previous release's (v0.1.0) record structs: tag and fields, all `array_like`."""


def test_whole_records_keep_the_previous_release_s_structs():
    """The previous release decodes what `state.encode_record` writes while these hold.

    Its structs are `array_like`: a field added at the end is skipped by its decoder
    (checked below with a stand-in), any other change breaks it.
    """
    for struct, (tag, fields) in PREVIOUS_FIELDS.items():
        config = struct.__struct_config__
        assert (config.tag, config.array_like) == (tag, True), struct
        names = tuple(fields.split())
        assert struct.__struct_fields__[: len(names)] == names, struct

    class Earlier(msgspec.Struct, array_like=True, tag="c1"):
        id: str

    later = msgspec.defstruct("Later", [("id", str), ("added", int)], array_like=True, tag="c1")
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(later("x", 1)), type=Earlier).id == "x"


def previous_release_restore(records: list[tuple[bytes, bytes | None]]) -> Snapshot:
    """What the previous release's `restore` makes of a state partition, as `snapshot` shows it.

    Its restore decodes every key as the conversation id (a segment key raises
    `UnicodeDecodeError`) and every value with `state.decode_record` (an `L` record
    raises `StateError`); it stops the worker on either.
    """
    out: Snapshot = {}
    for key, value in records:
        cid = key.decode()
        out.pop(cid, None)
        if value is None:
            continue
        record = state.decode_record(value)
        if isinstance(record, state.Marker):
            out[cid] = ("marker", msgspec.to_builtins(record))
        else:
            out[cid] = ("done" if record.complete else "open", _builtins(record))
    return out


def assert_previous_release_writes(records: list[tuple[bytes, bytes | None]]) -> None:
    """Nothing but what the previous release wrote: whole records at head keys.

    A tombstone of a segment key is allowed: it retires a log a changelog writer left.
    """
    for key, value in records:
        _, index = changelog.parse_key(key)
        if index is not None:
            assert value is None, key
        elif value is not None:
            assert value[:1] in (b"P", b"Z"), (key, value[:1])
            state.decode_record(value)


MIXED = st.lists(st.one_of(OP, st.tuples(st.just("layout"), st.booleans())), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), MIXED)
@example(  # Logged, then rewritten whole unchanged, then logged afresh after a crash.
    False,
    [
        ("event", "a", "turn"),
        ("checkpoint", 0, False),
        ("event", "a", "turn"),
        ("checkpoint", 0, False),
        ("layout", True),
        ("checkpoint", 1, True),
        ("layout", False),
        ("event", "a", "turn"),
        ("checkpoint", 0, False),
    ],
)
@example(  # Logged, written whole, logged again by the same worker: a new log.
    False,
    [
        ("event", "a", "turn"),
        ("checkpoint", 0, False),
        ("layout", True),
        ("checkpoint", 0, False),
        ("layout", False),
        ("event", "a", "turn"),
        ("checkpoint", 0, False),
    ],
)
@example(  # Reopened from a marker before the checkpoint, then written whole.
    False,
    [
        ("event", "a", "turn"),
        ("tick", 50),
        ("restart", False),
        ("ack", 0),
        ("tick", 80),
        ("tick", 120),
        ("event", "a", "turn"),
        ("layout", True),
        ("checkpoint", 2, True),
        ("event", "a", "turn"),
        ("restart", True),
    ],
)
def test_a_fleet_mixing_both_layouts_restores_exactly_the_state_the_engine_had(whole, ops):
    """Workers writing whole records and workers writing logs take turns at a partition.

    `whole` is the first writer's layout; a `layout` op switches it in place, a
    restart keeps it (the next owner restores what the last one wrote).
    """
    play(ops, replace(CONFIG, whole_records=whole))


def live() -> tuple[PartitionEngine, float]:
    engine = PartitionEngine(CONFIG)
    for step in range(6):
        engine.apply(event("c", step, "turn"), step, float(step))
    return engine, 6.0


def test_a_checkpoint_writes_only_what_changed():
    engine, now = live()
    first = engine.checkpoint().records
    assert [k for k, _ in first] == [changelog.segment_key("c", 0), b"c"]
    engine.apply(event("c", 6, "turn"), 6, now)
    second = engine.checkpoint().records
    assert [k for k, _ in second] == [changelog.segment_key("c", 1), b"c"]
    segment = changelog.decode(second[0][1] or b"")
    assert isinstance(segment, changelog.Segment)
    assert (segment.start, len(segment.entries), len(segment.seen)) == (12, 2, 1)
    assert engine.checkpoint().records == []


def test_completion_consolidates_once_and_tombstones_the_segments():
    engine, now = live()
    engine.checkpoint()
    engine.apply(event("c", 6, "turn"), 6, now)
    engine.checkpoint()
    flush = engine.apply(event("c", 7, "ended"), 7, now)[0]
    assert isinstance(flush, Flush)
    engine.acknowledged("c", flush.seq, now)
    records = engine.checkpoint().records
    assert [k for k, _ in records] == [
        b"c",
        changelog.segment_key("c", 0),
        changelog.segment_key("c", 1),
    ]
    assert (records[0][1] or b"")[:1] == b"Z"
    assert [v for _, v in records[1:]] == [None, None]


def test_a_missing_segment_is_a_state_error_not_a_partial_history():
    engine, now = live()
    log = engine.checkpoint().records
    engine.apply(event("c", 6, "turn"), 6, now)
    log += engine.checkpoint().records
    without = [(k, v) for k, v in log if k != changelog.segment_key("c", 0)]
    with pytest.raises(StateError, match="lacks segment 0 of 0-1"):
        restore(without).restored(now)


def test_a_segment_of_an_earlier_log_does_not_pass_for_a_later_one():
    engine, now = live()
    old = engine.checkpoint().records
    head = changelog.decode(old[1][1] or b"")
    assert isinstance(head, changelog.Head)
    later = msgspec.structs.replace(head, epoch=head.epoch + 10)
    with pytest.raises(StateError, match="lacks segment 0"):
        restore([old[0], (b"c", changelog.encode(later))]).restored(now)


def test_a_segment_no_head_names_is_swept_before_anything_is_written():
    engine, now = live()
    log = engine.checkpoint().records
    engine.apply(event("c", 6, "turn"), 6, now)
    log += engine.checkpoint().records[:1]  # Died after the segment, before the head.
    resumed = restore(log)
    resumed._assemble()
    assert len(resumed._open["c"].entries) == 12
    resumed.apply(event("c", 6, "turn"), 6, now)
    records = resumed.checkpoint().records
    assert [(k, v is None) for k, v in records] == [
        (changelog.segment_key("c", 1), True),
        (changelog.segment_key("c", 1), False),
        (b"c", False),
    ]


@pytest.mark.parametrize("cid", ["c", "c\x000", "c\xff0", "ü\U0001f600"])
def test_no_conversation_id_is_a_segment_key(cid):
    head = changelog.head_key(cid)
    assert changelog.parse_key(head) == (cid, None)
    assert changelog.parse_key(changelog.segment_key(cid, 3)) == (cid, 3)
    assert changelog.SEPARATOR not in head


LEGACY_OPEN = bytes.fromhex(
    "50dc0019a26331a46f70656ecb0000000000000000cb40000000000000009697a475736572a27130"
    "d6ff6b040ea0c0c0c0c097a9617373697374616e74a26130d6ff6b040ea0c0c0c081a56d6f64656c"
    "a16d97a475736572a27131d6ff6b040ea1c0c0c0c097a9617373697374616e74a26131d6ff6b040e"
    "a1c0c0c081a56d6f64656ca16d97a475736572a27132d6ff6b040ea2c0c0c0c097a9617373697374"
    "616e74a26132d6ff6b040ea2c0c0c081a56d6f64656ca16d96cf5f0975cc3569b873cf15988fe68c"
    "a07712cfeac906b538e2a409cf3eb9a0a3e8a1a3afcff4c5f108d0f6fb7fcf5528244417e0015493"
    "cf6ff57ed1cccef848cfc9b0f5835e400e8ecf80fd12935d7b69fa99c0c0c0c0c0c0c093a27430a2"
    "7431a27432c0d6ff6b040ea0d6ff6b040ea2c0c002c2c2c30000c000c00000c0c2"
)
LEGACY_DONE = bytes.fromhex(
    "5a7801bbc320b928d970494a7e5eea69070e063038ed2002614c99bea4b438b56851a1f1b5ffd92c"
    "7c8b0f00c1f49589c5c599c5258979258b1211e28d4b73f353527316e6c2b49880b52cc1d0821087"
    "6b9972deb9e3c9dec2bc28e7f37bd385d457abd4d59dbf334ba37a0547dacbf33b04b898cf9b5e5c"
    "30f9fcbe7d1a41e90cfb83cf7bf5d85569bc989c7c5e4758f64f6ae326bb99205b8060d2a2128345"
    "25860720ae05934be19e8133580f1f3ac4c87080e100cb8103870053d672a6"
)
"""Records written by the previous release (whole conversations, `P`/`Z` + msgpack `c1`) for:"""


def legacy_run(config: EngineConfig = CONFIG) -> tuple[PartitionEngine, float]:
    engine = PartitionEngine(config)
    for step in range(3):
        engine.apply(event("open", step, "turn"), step, float(step))
    for step in range(3, 5):
        engine.apply(event("done", step, "turn"), step, float(step))
    flush = engine.apply(event("done", 5, "ended"), 5, 5.0)[0]
    assert isinstance(flush, Flush)
    engine.acknowledged("done", flush.seq, 5.0)
    return engine, 5.0


def test_records_in_the_earlier_whole_format_restore_the_same_conversations():
    engine, now = legacy_run()
    legacy = [(b"open", LEGACY_OPEN), (b"done", LEGACY_DONE)]
    restored = restore(legacy)
    assert snapshot(restored) == snapshot(engine)
    # The next change migrates each to the log layout, the whole history in segment 0.
    for run in (engine, restored):
        run.apply(event("open", 6, "turn"), 6, now)
        run.apply(event("done", 7, "turn"), 7, now)
    records = restored.checkpoint().records
    assert sorted(k for k, _ in records) == sorted(
        [b"open", b"done", changelog.segment_key("open", 0), changelog.segment_key("done", 0)]
    )
    assert snapshot(restore([*legacy, *records])) == snapshot(engine)
    assert snapshot(restore(compacted([*legacy, *records]))) == snapshot(engine)
    assert len(engine._open["done"].entries) == 6


COMPAT = replace(CONFIG, whole_records=True)


def test_a_compat_worker_writes_back_whole_what_a_changelog_worker_logged():
    """Phase 2: a partition goes from a worker without the setting to one with it, and back."""
    engine, now = live()
    log = engine.checkpoint().records
    engine.apply(event("c", 6, "turn"), 6, now)
    log += engine.checkpoint().records
    compat = restore(log, COMPAT)
    records = compat.checkpoint().records  # Unchanged since the restore, rewritten all the same.
    assert [(k, (v or b"-")[:1]) for k, v in records] == [
        (b"c", b"P"),
        (changelog.segment_key("c", 0), b"-"),
        (changelog.segment_key("c", 1), b"-"),
    ]
    log += records
    assert previous_release_restore(compacted(log)) == snapshot(engine)
    assert snapshot(restore(log)) == snapshot(engine)
    assert compat.checkpoint().records == []
    # Back to a worker without the setting: a new log, the whole history in segment 0.
    compat.apply(event("c", 7, "turn"), 7, now)
    engine.apply(event("c", 7, "turn"), 7, now)
    log += compat.checkpoint().records
    after = restore(log)
    after.apply(event("c", 8, "turn"), 8, now)
    engine.apply(event("c", 8, "turn"), 8, now)
    records = after.checkpoint().records
    assert [k for k, _ in records] == [changelog.segment_key("c", 0), b"c"]
    segment = changelog.decode(records[0][1] or b"")
    assert isinstance(segment, changelog.Segment)
    assert (segment.start, len(segment.entries)) == (0, 18)
    log += records
    assert snapshot(restore(log)) == snapshot(engine)
    assert snapshot(restore(compacted(log))) == snapshot(engine)


def test_compat_records_are_the_previous_release_s_format():
    """What the previous release wrote for the same events (fields added since at the end)."""
    compat, _ = legacy_run(COMPAT)
    records = dict(compat.checkpoint().records)
    assert set(records) == {b"open", b"done"}
    assert records[b"open"][:1] == b"P"
    assert state.decode_record(records[b"open"]) == state.decode_record(LEGACY_OPEN)
    assert state.decode_record(records[b"done"]) == state.decode_record(LEGACY_DONE)
    assert previous_release_restore(list(records.items())) == snapshot(compat)
