"""What the integration tests share: events, a worker process, and ways to watch them.

The worker always runs as a real process (`python -m consumer run`) against the
real broker and the emulator over a socket, so a test can kill -9 it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from consumer import admin, payload
from consumer.testing.emulator import Emulator
from consumer.topics import STATE_TOPIC_CONFIG

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key"
EPOCH = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def fresh(prefix: str) -> str:
    """A name of its own for each test's topic or group, so runs never share a broker's state."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def conversation(
    cid: str,
    turns: int,
    *,
    ended: bool = True,
    history: str = "full",
    start: int = 0,
    minute: int = 0,
) -> list[dict[str, Any]]:
    """A realistic conversation of `turns` completions (full or delta history), maybe ended."""
    system = {"role": "system", "content": f"You answer questions about product {cid}."}
    known: list[dict[str, Any]] = [system]
    out: list[dict[str, Any]] = []
    for turn in range(start, start + turns):
        user = {"role": "user", "content": f"[{cid}] question {turn}: how do I do thing {turn}?"}
        reply = {
            "role": "assistant",
            "content": f"[{cid}] answer {turn}: open settings, then {turn}.",
        }
        sent = [*known, user] if history == "full" else ([system, user] if turn == 0 else [user])
        when = EPOCH + timedelta(minutes=minute, seconds=turn)
        out.append(
            {
                "event_id": f"{cid}-e{turn}",
                "event_type": "chat.completion",
                "conversation_id": cid,
                "occurred_at": when.isoformat(),
                "history": history,
                "request": {"model": "gpt-4o", "messages": sent},
                "response": {
                    "id": f"chatcmpl-{cid}-{turn}",
                    "created": int(when.timestamp()),
                    "model": "gpt-4o-2024-08-06",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": reply}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
                },
                "latency_ms": 800 + turn,
                "conversation": {"tags": ["test"], "properties": {"turn": turn}},
            }
        )
        known += [user, reply]
    if ended:
        out.append(
            {
                "event_id": f"{cid}-end{start + turns}",
                "event_type": "conversation.ended",
                "conversation_id": cid,
                "occurred_at": (
                    EPOCH + timedelta(minutes=minute, seconds=start + turns)
                ).isoformat(),
            }
        )
    return out


def interleave(conversations: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Round-robin across conversations, keeping each one's own order."""
    lists = [list(c) for c in conversations]
    out: list[dict[str, Any]] = []
    while any(lists):
        out.extend(events.pop(0) for events in lists if events)
    return out


def expected_bodies(events: Iterable[dict[str, Any]], tmp: Path) -> dict[str, payload.Conversation]:
    """The final body of each conversation, from the same engine run offline (`render`)."""
    source = tmp / f"events-{time.monotonic_ns()}.ndjson"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "render", str(source)],
        capture_output=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr.decode()
    bodies = [payload.decode(line) for line in result.stdout.splitlines() if line.strip()]
    return {b.id: b for b in bodies}


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    replication: int = 1,
    config: dict[str, str] | None = None,
) -> None:
    await admin.create_topic(
        bootstrap, name, partitions, replication_factor=replication, config=config
    )


async def create_state_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """A state topic made before the worker starts, compacted as the worker requires."""
    await create_topic(bootstrap, f"{topic}.state", partitions, config=STATE_TOPIC_CONFIG)


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[dict[str, Any] | tuple[bytes | None, bytes | None]],
) -> None:
    """Writes events keyed by conversation id (or raw key/value pairs), acks=all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for record in records:
            if isinstance(record, dict):
                key, value = record["conversation_id"].encode(), json.dumps(record).encode()
            else:
                key, value = record
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, timeout: float = 10.0) -> list[Any]:
    """Every record now in `topic`; `TimeoutError` if they are not all read within `timeout`."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await reader.start()
    try:
        partitions = reader.partitions_for_topic(topic) or set()
        if not partitions:
            await reader._client.force_metadata_update()
            partitions = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        await reader.seek_to_beginning(*tps)
        out: list[Any] = []
        async with asyncio.timeout(timeout):
            while any([await reader.position(tp) < ends[tp] for tp in tps]):
                for records in (await reader.getmany(timeout_ms=200)).values():
                    out.extend(records)
        return out
    finally:
        await reader.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    offsets = await admin.end_offsets(bootstrap, topic)
    return {tp.partition: offset for tp, offset in offsets.items()}


async def topic_names(bootstrap: str) -> set[str]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        return set(await client.list_topics())
    finally:
        await client.close()


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    offsets = await admin.committed_offsets(bootstrap, group, topic)
    return {tp.partition: offset for tp, offset in offsets.items()}


async def committed_to_the_end(
    bootstrap: str, group: str, topic: str, total: int | None = None
) -> bool:
    """The group's offsets reached the end of every partition, which hold `total` records if given.

    Without `total` the end is whatever the topic holds (a producer retry may have added some).
    """
    ends = await end_offsets(bootstrap, topic)
    if total is not None and sum(ends.values()) != total:
        return False
    offsets = await committed(bootstrap, group, topic)
    return all((offsets.get(p) or 0) == end for p, end in ends.items())


async def all_logged(emulator: Emulator, expected: dict[str, payload.Conversation]) -> bool:
    return all(
        cid in emulator.conversations and emulator.conversations[cid] == body
        for cid, body in expected.items()
    )


def history_only_grows(emulator: Emulator) -> None:
    """No upsert shortened a history: every accepted body's message ids prefix the final ones."""
    for raw in emulator.accepted:
        body = payload.decode(raw)
        final = [m.id for m in emulator.conversations[body.id].messages]
        ids = [m.id for m in body.messages]
        assert ids == final[: len(ids)], (
            f"{body.id}: a flush carried a different or partial history"
        )


async def wait_for(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class Worker:
    """`inkeep-consumer run` as a child process with its own log file."""

    bootstrap: str
    topic: str
    api_url: str
    log_dir: Path
    group: str = "it-group"
    extra: dict[str, str] = field(default_factory=dict)
    name: str = "worker"
    process: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    log_path: Path | None = None
    starts: int = 0
    command: list[str] | None = None
    """The process to start instead of `python -m consumer run` (e.g. with a fault injected)."""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "INKEEP_"))}
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "KAFKA_TOPIC": self.topic,
                "KAFKA_GROUP_ID": self.group,
                "INKEEP_API_BASE_URL": self.api_url,
                "INKEEP_API_KEY": API_KEY,
                "HTTP_PORT": str(self.http_port),
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "info",
                "CONVERSATION_IDLE_TIMEOUT_SECONDS": "3",
                "COMMIT_INTERVAL_SECONDS": "0.5",
                "SHUTDOWN_GRACE_SECONDS": "10",
                "INKEEP_MAX_RETRY_DELAY_SECONDS": "1",
            }
        )
        env.update(self.extra)
        return env

    def start(self) -> Worker:
        assert self.process is None or self.process.poll() is not None
        self.http_port = free_port()
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                self.command or [sys.executable, "-m", "consumer", "run"],
                cwd=REPO,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """kill -9: no flush, no state write, no commit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    async def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM, as Kubernetes sends it; returns (exit code, seconds taken)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        while self.process.poll() is None:
            if time.monotonic() - started > timeout:
                self.process.kill()
                raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM")
            await asyncio.sleep(0.05)
        return self.process.returncode, time.monotonic() - started

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line of every start so far."""
        paths = sorted(self.log_dir.glob(f"{self.name}-*.log"))
        return [line for path in paths for line in _log_lines(path)]

    def events(self) -> list[str]:
        """The events logged since the latest start, in order."""
        assert self.log_path is not None
        return [str(line.get("event")) for line in _log_lines(self.log_path)]

    def stop_now(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for raw in path.read_bytes().splitlines():
        try:
            lines.append(msgspec.json.decode(raw))
        except msgspec.DecodeError:
            lines.append({"event": "non_json_line", "raw": raw.decode(errors="replace")})
    return lines


async def metrics_text(worker: Worker) -> str | None:
    """The worker's /metrics page, or None while it does not answer."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{worker.http_port}/metrics") as r,
        ):
            return await r.text()
    except aiohttp.ClientError:
        return None


def assert_matches(
    stored: dict[str, payload.Conversation], expected: dict[str, payload.Conversation]
) -> None:
    """Every expected conversation is stored exactly as the offline engine renders it."""
    missing = sorted(set(expected) - set(stored))
    assert not missing, f"{len(missing)} conversations never reached the API: {missing[:5]}"
    for cid, body in expected.items():
        got = stored[cid]
        ids = [m.id for m in got.messages]
        assert len(ids) == len(set(ids)), f"{cid}: a message id appears twice"
        assert got.messages == body.messages, (
            f"{cid}: stored {len(got.messages)} messages, expected {len(body.messages)}"
        )
        assert got == body, f"{cid}: stored body differs from the rendered one"
