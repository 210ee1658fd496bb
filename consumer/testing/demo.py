"""`inkeep-consumer demo`: the whole pipeline on this machine, in one command.

A local Kafka broker, the API emulator, the worker and a producer of realistic
chat traffic, all started here; the worker's log shows each conversation as it
is flushed, and a summary at the end shows what the API received. Nothing
leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from consumer import admin, runtime
from consumer.logs import configure as configure_logs
from consumer.runtime import Worker
from consumer.settings import Settings
from consumer.testing import localkafka, workload
from consumer.testing.emulator import Emulator

API_KEY = "demo-key"
TOPIC = "chat-completions"


def _say(text: str) -> None:
    print(f"\n== {text}", file=sys.stderr, flush=True)  # noqa: T201 - the demo talks to its user.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inkeep-consumer demo", description=__doc__)
    p.add_argument("--conversations", type=int, default=40, help="how many to produce (40)")
    p.add_argument("--rate", type=float, default=25.0, help="events per second (25)")
    p.add_argument("--partitions", type=int, default=3, help="input topic partitions (3)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=5.0,
        help="seconds before an idle conversation is complete (5)",
    )
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument(
        "--http-port", type=int, default=8080, help="worker's health/metrics port (8080)"
    )
    p.add_argument("--log-format", choices=["console", "json"], default="console")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logs("info", args.log_format)
    _say("starting a local Kafka broker (the first run fetches Kafka from Maven Central)")
    with localkafka.KafkaCluster(1) as kafka:
        print(f"   broker at {kafka.bootstrap_servers}", file=sys.stderr)  # noqa: T201
        return asyncio.run(_demo(args, kafka))


async def _demo(args: argparse.Namespace, kafka: localkafka.KafkaCluster) -> int:
    record = Path(tempfile.mkdtemp(prefix="inkeep-demo-")) / "accepted-bodies.ndjson"
    emulator = Emulator(api_keys=(API_KEY,), record=record)
    await emulator.start()
    _say(f"Inkeep Analytics API emulator at {emulator.url} (key {API_KEY!r})")
    await admin.create_topic(kafka.bootstrap_servers, TOPIC, args.partitions, exist_ok=True)
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KAFKA_TOPIC": TOPIC,
            "INKEEP_API_BASE_URL": emulator.url,
            "INKEEP_API_KEY": API_KEY,
            "CONVERSATION_IDLE_TIMEOUT_SECONDS": str(args.idle_timeout),
            "COMMIT_INTERVAL_SECONDS": "1",
            "HTTP_PORT": str(args.http_port),
            "LOG_FORMAT": args.log_format,
        }
    )
    worker = Worker(settings)
    # The same wiring as `inkeep-consumer run`: logs, health server, signals.
    running = asyncio.create_task(runtime.run(settings, worker=worker, host="127.0.0.1"))
    _say(f"worker started; health and metrics at http://127.0.0.1:{args.http_port}/metrics")
    _say(
        f"producing {args.conversations} conversations at {args.rate:g} events/s; "
        "each line 'conversation_flushed' is one upsert the API acknowledged, "
        "each 'notice_sent' a rating or a copied answer logged on its message"
    )
    events = workload.generate(
        args.conversations,
        args.seed,
        shape=workload.Shape(responses_share=0.2, feedback_share=0.2),
        start=datetime.now(UTC),
        clock=lambda: datetime.now(UTC),
    )
    producing = asyncio.create_task(
        workload.produce(kafka.bootstrap_servers, TOPIC, events, rate=args.rate)
    )
    done = await _wait(emulator, args.conversations, producing, running)
    worker.stop()
    code = await running
    if not producing.done():
        producing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producing
    await emulator.stop()
    _summary(emulator, record, args.conversations, done=done)
    return code


async def _wait(
    emulator: Emulator, expected: int, producing: asyncio.Task[int], running: asyncio.Task[int]
) -> bool:
    """Until the API holds every conversation (or Ctrl-C, or the worker stopped)."""
    last = time.monotonic()
    while not running.done():
        if producing.done() and len(emulator.conversations) >= expected:
            return True
        await asyncio.sleep(0.5)
        if time.monotonic() - last > 15:
            last = time.monotonic()
            print(  # noqa: T201
                f"   ... {len(emulator.conversations)}/{expected} conversations in the API so far",
                file=sys.stderr,
            )
    return False


def _summary(emulator: Emulator, record: Path, expected: int, *, done: bool) -> None:
    conversations = list(emulator.conversations.values())
    messages = sum(len(c.messages) for c in conversations)
    _say(
        f"{'done' if done else 'stopped'}: the API holds {len(conversations)}/{expected} "
        f"conversations, {messages} messages, from {len(emulator.accepted)} upserts; "
        f"{len(emulator.feedback)} ratings and {len(emulator.events)} interactions, each on "
        "the message it names"
    )
    if conversations:
        first = max(conversations, key=lambda c: len(c.messages))
        print(f"   the longest one, {first.id}:", file=sys.stderr)  # noqa: T201
        for m in first.messages:
            text = (
                m.content
                if isinstance(m.content, str)
                else " ".join(p.text or f"[{p.type}]" for p in m.content)
            )
            calls = f" (+{len(m.tool_calls)} tool calls)" if m.tool_calls else ""
            print(f"     {m.role:>9}: {text[:90]!s}{calls}", file=sys.stderr)  # noqa: T201
    print(f"   every request body the API accepted: {record}", file=sys.stderr)  # noqa: T201
