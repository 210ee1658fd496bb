"""`inkeep-consumer render [FILE]`: the request bodies events become, without Kafka or the API.

It runs the worker's own engine over NDJSON event values of every kind (chat
completions, Responses API calls, ends), offset = line number,
acknowledging every flush at once, and treats the end of input as the end of
every conversation. Useful for checking what producers send before going live.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO, TextIO

from consumer import events
from consumer.engine import Decision, EngineConfig, Flush, PartitionEngine, Trigger
from consumer.errors import InvalidEvent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inkeep-consumer render",
        description="Print the POST /conversations bodies that NDJSON events become, one a line.",
    )
    parser.add_argument("file", nargs="?", default="-", help="NDJSON event values; '-' is stdin")
    args = parser.parse_args(argv)
    if args.file == "-":
        return render(sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
    with open(args.file, "rb") as source:  # noqa: PTH123 - a path or stdin, as given.
        return render(source, sys.stdout.buffer, sys.stderr)


def render(source: BinaryIO, out: BinaryIO, errors: TextIO) -> int:
    """Writes one body per conversation in first-seen order; returns 1 if any line was invalid."""
    engine = PartitionEngine(EngineConfig())
    bodies: dict[str, bytes | None] = {}
    invalid = False
    for number, line in enumerate(source, start=1):
        if not line.strip():
            engine.skip(number)
            continue
        try:
            event = events.decode_event(line)
            decisions = engine.apply(event, number, 0.0)
        except InvalidEvent as exc:
            invalid = True
            print(f"line {number}: {exc.kind}: {exc.reason}", file=errors)
            engine.skip(number)
            continue
        bodies.setdefault(event.conversation_id, None)
        _acknowledge(engine, decisions, bodies, errors)
    _acknowledge(engine, engine.flush_open(Trigger.SHUTDOWN, 0.0), bodies, errors)
    for body in bodies.values():
        if body is not None:
            out.write(body + b"\n")
    out.flush()
    return 1 if invalid else 0


def _acknowledge(
    engine: PartitionEngine,
    decisions: list[Decision],
    bodies: dict[str, bytes | None],
    errors: TextIO,
) -> None:
    while decisions:
        decision = decisions.pop(0)
        if isinstance(decision, Flush):
            bodies[decision.conversation_id] = decision.body
            decisions += engine.acknowledged(decision.conversation_id, decision.seq, 0.0)
        else:
            print(
                f"conversation {decision.conversation_id}: refused "
                f"({decision.message_count} messages, {decision.acknowledged_count} logged before)",
                file=errors,
            )
