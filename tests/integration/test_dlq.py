"""`inkeep-consumer dlq` against the real broker and the emulator.

Dead letters are made the real way, by a worker process meeting an API incident
(422 refusals) or a record over its size limit; the replay command runs as its
own process, so a test can kill -9 it in the middle.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from harness import (
    API_KEY,
    REPO,
    all_logged,
    assert_matches,
    committed_to_the_end,
    conversation,
    end_offsets,
    expected_bodies,
    fresh,
    history_only_grows,
    interleave,
    produce,
    read_all,
    topic_names,
    wait_for,
)
from kafka_fixtures import make_topic

from consumer import payload
from consumer.testing.emulator import Emulator, Endpoint, Faults

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def dlq_env(bootstrap: str, topic: str, emulator: Emulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "INKEEP_"))}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPIC": topic,
            "INKEEP_API_BASE_URL": emulator.url,
            "INKEEP_API_KEY": API_KEY,
            "LOG_FORMAT": "json",
            "INKEEP_MAX_RETRY_DELAY_SECONDS": "1",
        }
    )
    env.update(extra)
    return env


class Run:
    """One `dlq` command as a child process; stdout is its report, stderr its log."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.stdout = b""

    def log(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for line in self.log_path.read_bytes().splitlines()]

    def report(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for line in self.stdout.splitlines() if line.strip()]

    async def finish(self, timeout: float = 60.0) -> int:
        out, _ = await asyncio.wait_for(self.process.communicate(), timeout)
        self.stdout = out
        assert self.process.returncode is not None
        return self.process.returncode


async def start_dlq(env: dict[str, str], tmp: Path, *args: str) -> Run:
    log_path = tmp / f"dlq-{len(list(tmp.glob('dlq-*.log')))}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumer",
            "dlq",
            *args,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    return Run(process, log_path)


async def dlq(env: dict[str, str], tmp: Path, *args: str) -> Run:
    run = await start_dlq(env, tmp, *args)
    code = await run.finish()
    assert code == 0, f"dlq {args} exited {code}: {run.log_path.read_text()}"
    return run


def actions(run: Run) -> Counter[str]:
    return Counter(line["action"] for line in run.report() if "action" in line)


async def incident(
    bootstrap: str, workers: Any, emulator: Emulator, tmp: Path, count: int
) -> tuple[str, dict[str, Any]]:
    """`count` conversations the API refuses (422) while a worker logs them, then the incident ends.

    Returns the input topic and the conversations' final bodies as rendered offline.
    """
    topic = await make_topic(bootstrap, 2)
    events = interleave(conversation(f"r{i}", 3 + i % 3) for i in range(count))
    expected = expected_bodies(events, tmp)
    emulator.faults.reject_ids = set(expected)
    worker = workers(bootstrap, topic, emulator, group=fresh("g")).start()
    await produce(bootstrap, topic, events)
    dlq_topic = f"{topic}.dlq"

    async def all_dead_lettered() -> bool:
        if dlq_topic not in await topic_names(bootstrap):
            return False
        records = await read_all(bootstrap, dlq_topic)
        ids = {dict(r.headers).get("conversation_id", b"").decode() for r in records}
        return set(expected) <= ids and await committed_to_the_end(
            bootstrap, worker.group, topic, len(events)
        )

    await wait_for(all_dead_lettered, 60, "every conversation dead-lettered")
    await worker.terminate()
    assert not emulator.conversations
    emulator.faults.reject_ids = set()
    return topic, expected


async def test_refused_conversations_replayed_after_the_incident_land_whole_once(
    kafka, workers, emulator: Emulator, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic, expected = await incident(bootstrap, workers, emulator, tmp_path, 4)
    env = dlq_env(bootstrap, topic, emulator)

    summary = (await dlq(env, tmp_path, "inspect", "--summary-only")).report()[0]["summary"]
    assert summary["by_kind"] == {"conversation": summary["total"]}
    assert summary["by_reason"] == {"rejected": summary["total"]}
    assert summary["replayed"] == 0
    records = (await dlq(env, tmp_path, "inspect", "--reason", "rejected")).report()[1:]
    assert {r["conversation_id"] for r in records} == set(expected)
    assert all("value" not in r and r["api.status"] == "422" for r in records)

    first = await dlq(env, tmp_path, "replay", "--execute", "--reason", "rejected")
    assert actions(first)["send"] >= len(expected)
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)

    posts = len(emulator.posts)
    again = await dlq(env, tmp_path, "replay", "--execute")
    assert set(actions(again)) == {"already_replayed"}
    assert len(emulator.posts) == posts
    accepted = Counter(emulator.accepted)
    assert max(accepted.values()) == 1, "a body was accepted twice"
    inspected = (await dlq(env, tmp_path, "inspect", "--summary-only")).report()[0]["summary"]
    assert inspected["replayed"] == inspected["total"]


async def test_replay_never_overwrites_a_newer_copy(
    kafka, workers, emulator: Emulator, tmp_path: Path
) -> None:
    """The API got a longer copy after the refused flush: replay skips it, sends the rest."""
    bootstrap = kafka.bootstrap_servers
    topic, expected = await incident(bootstrap, workers, emulator, tmp_path, 2)
    longer = expected_bodies(conversation("r0", 6), tmp_path)["r0"]
    assert [m.id for m in longer.messages[: len(expected["r0"].messages)]] == [
        m.id for m in expected["r0"].messages
    ]
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.post(f"{emulator.url}/conversations", data=payload.encode(longer)) as answer,
    ):
        assert answer.status == 200

    run = await dlq(dlq_env(bootstrap, topic, emulator), tmp_path, "replay", "--execute")
    by_id = {line["conversation_id"]: line["action"] for line in run.report() if "action" in line}
    assert by_id == {"r0": "skip_api_holds_as_many", "r1": "send"}
    assert emulator.conversations["r0"] == longer
    assert emulator.conversations["r1"] == expected["r1"]
    assert any(line["event"] == "dlq_replay_skipped" for line in run.log())


async def test_dry_run_changes_nothing(kafka, workers, emulator: Emulator, tmp_path: Path) -> None:
    bootstrap = kafka.bootstrap_servers
    topic, expected = await incident(bootstrap, workers, emulator, tmp_path, 2)
    env = dlq_env(bootstrap, topic, emulator)
    ends = await end_offsets(bootstrap, topic)
    posts = len(emulator.posts)
    run = await dlq(env, tmp_path, "replay")
    lines = [line for line in run.report() if "action" in line]
    assert {line["action"] for line in lines} == {"send"}
    assert not any(line["executed"] for line in lines)
    assert run.report()[-1]["summary"]["dry_run"] is True
    assert len(emulator.posts) == posts
    assert not emulator.conversations
    assert await end_offsets(bootstrap, topic) == ends
    assert f"{topic}.dlq.replayed" not in await topic_names(bootstrap)
    assert len(expected) == 2


async def test_replay_killed_after_its_first_effect_sends_nothing_twice(
    kafka, workers, emulator: Emulator, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic, expected = await incident(bootstrap, workers, emulator, tmp_path, 5)
    env = dlq_env(bootstrap, topic, emulator)
    # The first send is answered at once, the next ones late: the kill lands mid-run.
    emulator.faults.delay_sequence = [0.0] + [30.0] * 10
    run = await start_dlq(env, tmp_path, "replay", "--execute")

    def first_effect_acknowledged() -> bool:
        return any(line.get("event") == "dlq_replayed" for line in run.log())

    await wait_for(first_effect_acknowledged, 60, "the first replayed conversation")
    run.process.send_signal(signal.SIGKILL)
    await run.finish()
    assert len(emulator.conversations) == 1
    emulator.faults.delay_sequence = []
    # The worst case: the kill fell after the API's answer but before the ledger write.
    # Losing the whole ledger makes that certain instead of a matter of timing.
    ledger = f"{topic}.dlq.replayed"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([ledger])
    finally:
        await admin.close()

    async def ledger_gone() -> bool:
        return ledger not in await topic_names(bootstrap)

    await wait_for(ledger_gone, 30, "the ledger topic deleted")

    second = await dlq(env, tmp_path, "replay", "--execute")
    done = actions(second)
    assert done["skip_api_holds_as_many"] == 1, done
    assert done["send"] == len(expected) - 1, done
    assert_matches(emulator.conversations, expected)
    taken = Counter(r.conversation_id for r in emulator.posts if r.status == 200)
    assert set(taken.values()) == {1}, f"a conversation was sent twice: {taken}"


async def test_invalid_records_go_back_to_the_input_with_their_key(
    kafka, workers, emulator: Emulator, tmp_path: Path
) -> None:
    """A record over the worker's old size limit is replayed once the limit is raised."""
    bootstrap = kafka.bootstrap_servers
    topic = await make_topic(bootstrap, 2)
    events = conversation("big", 2, ended=False)
    expected = expected_bodies(events, tmp_path)
    small = str(min(len(json.dumps(e)) for e in events) - 1)
    worker = workers(
        bootstrap, topic, emulator, group=fresh("g"), extra={"MAX_RECORD_BYTES": small}
    )
    worker.start()
    records = [(e["conversation_id"].encode(), json.dumps(e).encode()) for e in events]
    await produce(bootstrap, topic, [*records, (b"junk", b"{not json")])
    await wait_for(
        lambda: committed_to_the_end(bootstrap, worker.group, topic, 3), 60, "input consumed"
    )
    await worker.terminate()
    dead = await read_all(bootstrap, f"{topic}.dlq")
    assert len(dead) == 3
    before = await read_all(bootstrap, topic)

    env = dlq_env(bootstrap, topic, emulator)
    run = await dlq(env, tmp_path, "replay", "--execute", "--kind", "record")
    assert actions(run) == Counter({"produce": 2, "skip_still_invalid": 1})
    after = await read_all(bootstrap, topic)
    assert len(after) == len(before) + 2
    replayed = [r for r in after if "dlq.replayed_from" in dict(r.headers)]
    assert len(replayed) == 2
    originals = {(r.key, r.value): r.partition for r in before}
    for record in replayed:
        assert (record.key, record.value) in originals
        assert record.partition == originals[(record.key, record.value)]
        assert dict(record.headers)["dlq.replayed_from"].startswith(f"{topic}.dlq:".encode())
    assert b"junk" not in {r.key for r in replayed}

    await dlq(env, tmp_path, "replay", "--execute", "--kind", "record")
    assert len(await read_all(bootstrap, topic)) == len(after)

    worker.extra.pop("MAX_RECORD_BYTES")
    worker.start()
    await wait_for(lambda: all_logged(emulator, expected), 60, "the replayed records logged")
    assert_matches(emulator.conversations, expected)


async def test_a_refused_continuation_replaces_its_shorter_logged_start(
    kafka, workers, emulator: Emulator, tmp_path: Path
) -> None:
    """Logged once, then refused when it went on: the API's copy is a prefix, so replay sends it."""
    bootstrap = kafka.bootstrap_servers
    topic = await make_topic(bootstrap, 1)
    start = conversation("x", 2, ended=False, history="delta")
    rest = conversation("x", 2, start=2, ended=True, history="delta")
    worker = workers(bootstrap, topic, emulator, group=fresh("g")).start()
    await produce(bootstrap, topic, start)
    first = expected_bodies(start, tmp_path)
    await wait_for(lambda: all_logged(emulator, first), 60, "the start logged")
    emulator.faults.reject_ids = {"x"}
    await produce(bootstrap, topic, rest)
    await wait_for(
        lambda: committed_to_the_end(bootstrap, worker.group, topic, len(start) + len(rest)),
        60,
        "the continuation dead-lettered",
    )
    await worker.terminate()
    emulator.faults.reject_ids = set()
    assert emulator.conversations["x"] == first["x"]

    run = await dlq(dlq_env(bootstrap, topic, emulator), tmp_path, "replay", "--execute")
    assert actions(run) == Counter({"send": 1})
    assert_matches(emulator.conversations, expected_bodies(start + rest, tmp_path))
    history_only_grows(emulator)


async def test_a_refused_rating_is_replayed_to_its_own_endpoint_once(
    kafka, workers, emulator: Emulator, tmp_path: Path
) -> None:
    """A rating the API refused during an incident goes back to `POST /feedback`, not
    `/conversations`, with the same id: once, on the message it named."""
    bootstrap = kafka.bootstrap_servers
    topic = await make_topic(bootstrap, 1)
    events = conversation("fb1", 2)
    events.append(
        {
            "event_id": "fb1-rating",
            "event_type": "feedback",
            "conversation_id": "fb1",
            "occurred_at": events[-1]["occurred_at"],
            "completion_id": "chatcmpl-fb1-1",
            "rating": "negative",
            "reasons": [{"label": "wrong", "details": "stale answer"}],
            "user_properties": {"id": "user-fb1"},
        }
    )
    emulator.endpoint_faults[Endpoint.FEEDBACK] = Faults(
        status_sequence=[422] * 50, endpoints=frozenset({Endpoint.FEEDBACK})
    )
    worker = workers(bootstrap, topic, emulator, group=fresh("g")).start()
    await produce(bootstrap, topic, events)

    async def rating_dead_lettered() -> bool:
        if f"{topic}.dlq" not in await topic_names(bootstrap):
            return False
        records = await read_all(bootstrap, f"{topic}.dlq")
        paths = [dict(r.headers).get("api.path") for r in records]
        return b"/feedback" in paths and await committed_to_the_end(
            bootstrap, worker.group, topic, len(events)
        )

    await wait_for(rating_dead_lettered, 60, "the rating dead-lettered")
    await worker.terminate()
    assert not emulator.feedback
    del emulator.endpoint_faults[Endpoint.FEEDBACK]
    env = dlq_env(bootstrap, topic, emulator)

    dry = await dlq(env, tmp_path, "replay", "--reason", "rejected")
    assert [(r["action"], r["detail"]) for r in dry.report() if "action" in r] == [
        ("send", "/feedback")
    ]
    assert not emulator.feedback
    posts = len(emulator.posts_to(Endpoint.CONVERSATIONS))
    first = await dlq(env, tmp_path, "replay", "--execute", "--reason", "rejected")
    assert actions(first) == Counter({"send": 1})
    (stored,) = emulator.feedback.values()
    assert stored.type == "negative"
    logged = emulator.conversations["fb1"].messages
    assert stored.message_id == logged[-1].id  # the reply of the second turn
    again = await dlq(env, tmp_path, "replay", "--execute")
    assert set(actions(again)) == {"already_replayed"}
    assert len(emulator.feedback) == 1
    assert len(emulator.posts_to(Endpoint.CONVERSATIONS)) == posts
