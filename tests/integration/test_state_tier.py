"""The disk tier on a real broker: completed conversations live in SQLite files under STATE_DIR.

A worker completes conversations and stops; another worker, with a directory of its
own, rebuilds its files from the state topic on assignment; continuations sent
with delta histories (each event carries only its new turn) must still reach the
API with the whole history, which only the tier holds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import (
    all_logged,
    assert_matches,
    committed_to_the_end,
    conversation,
    create_topic,
    expected_bodies,
    fresh,
    history_only_grows,
    interleave,
    metrics_text,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

NAMES = [f"tier{i}" for i in range(6)]
TURNS = 4


async def retained(worker, kind: str) -> float | None:
    """The worker's `state_retained{kind=...}` gauge, or None while /metrics does not answer."""
    text = await metrics_text(worker)
    if text is None:
        return None
    line = rf'^inkeep_consumer_state_retained\{{kind="{kind}"\}} (\S+)$'
    found = re.search(line, text, re.MULTILINE)
    return float(found.group(1)) if found else None


async def test_a_continuation_on_another_worker_carries_the_whole_history_through_the_tier(
    kafka, emulator, workers, tmp_path: Path
):
    bootstrap = kafka.bootstrap_servers
    topic, group = fresh("chat"), fresh("g")
    await create_topic(bootstrap, topic, 2)
    first = interleave(conversation(cid, TURNS, history="delta") for cid in NAMES)
    later = interleave(
        conversation(cid, 2, history="delta", start=TURNS, minute=5) for cid in NAMES
    )
    dir_a, dir_b = tmp_path / "state-a", tmp_path / "state-b"

    a = workers(bootstrap, topic, emulator, group=group, extra={"STATE_DIR": str(dir_a)}).start()
    await produce(bootstrap, topic, first)
    done = expected_bodies(first, tmp_path)
    await wait_for(lambda: all_logged(emulator, done), 60, "the first part logged")
    await wait_for(lambda: committed_to_the_end(bootstrap, group, topic, len(first)), 30, "commits")

    async def completed_held(worker) -> bool:
        return await retained(worker, "completed") == len(NAMES)

    await wait_for(lambda: completed_held(a), 30, "completed conversations in a's tier")
    assert sorted(p.name for p in dir_a.iterdir()) == [f"{topic}-0.sqlite3", f"{topic}-1.sqlite3"]
    code, _ = await a.terminate()
    assert code == 0
    assert list(dir_a.iterdir()) == []  # Revoked on shutdown: the files go with the partitions.

    dir_b.mkdir()
    (dir_b / f"{topic}-7.sqlite3").write_bytes(b"left by a crashed run")
    b = workers(bootstrap, topic, emulator, group=group, extra={"STATE_DIR": str(dir_b)}).start()
    await wait_for(lambda: completed_held(b), 60, "b's tier rebuilt from the state topic")
    assert sorted(p.name for p in dir_b.iterdir()) == [f"{topic}-0.sqlite3", f"{topic}-1.sqlite3"]
    await produce(bootstrap, topic, later)
    expected = expected_bodies(first + later, tmp_path)
    await wait_for(lambda: all_logged(emulator, expected), 60, "the continuations logged whole")
    code, _ = await b.terminate()
    assert code == 0
    assert_matches(emulator.conversations, expected)
    history_only_grows(emulator)
    for cid in NAMES:
        assert len(emulator.conversations[cid].messages) == 2 * (TURNS + 2) + 1  # + system
    refused = [line for line in b.logs() if line.get("reason") == "history_expired"]
    assert refused == []
