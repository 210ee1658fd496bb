"""`inkeep-consumer render [FILE]`: the request bodies events become, without Kafka or the API.

It runs the worker's own engine over NDJSON event values of every kind (chat
completions, Responses API calls, ends, feedback, interactions), offset = line
number, acknowledging every request at once, and treats the end of input as the
end of every conversation. Useful for checking what producers send before going
live. `--kind feedback` or `--kind events` prints the `POST /feedback` or
`POST /events` bodies instead, in the order they would be sent.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO, TextIO

from consumer import events
from consumer.engine import (
    Decision,
    EngineConfig,
    Flush,
    Notice,
    NoticeRefusal,
    PartitionEngine,
    Trigger,
)
from consumer.errors import InvalidEvent
from consumer.feedback import NoticeKind

KINDS = {"conversations": None, "feedback": NoticeKind.FEEDBACK, "events": NoticeKind.EVENT}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inkeep-consumer render",
        description="Print the POST /conversations bodies that NDJSON events become, one a line.",
    )
    parser.add_argument("file", nargs="?", default="-", help="NDJSON event values; '-' is stdin")
    parser.add_argument(
        "--kind",
        choices=list(KINDS),
        default="conversations",
        help="which bodies to print: POST /conversations (default), /feedback or /events",
    )
    args = parser.parse_args(argv)
    if args.file == "-":
        return render(sys.stdin.buffer, sys.stdout.buffer, sys.stderr, kind=args.kind)
    with open(args.file, "rb") as source:  # noqa: PTH123 - a path or stdin, as given.
        return render(source, sys.stdout.buffer, sys.stderr, kind=args.kind)


def render(source: BinaryIO, out: BinaryIO, errors: TextIO, *, kind: str = "conversations") -> int:
    """Writes one body per conversation in first-seen order (or every feedback or event
    body, in sending order); returns 1 if any line was invalid."""
    engine = PartitionEngine(EngineConfig())
    bodies: dict[str, bytes | None] = {}
    notices: list[Notice] = []
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
        if not isinstance(event, events.Feedback | events.Interaction):
            bodies.setdefault(event.conversation_id, None)
        _acknowledge(engine, decisions, bodies, notices, errors)
    _acknowledge(engine, engine.flush_open(Trigger.SHUTDOWN, 0.0), bodies, notices, errors)
    wanted = KINDS[kind]
    if wanted is None:
        chosen = [body for body in bodies.values() if body is not None]
    else:
        chosen = [notice.body for notice in notices if notice.kind is wanted]
    out.writelines(body + b"\n" for body in chosen)
    out.flush()
    return 1 if invalid else 0


def _acknowledge(
    engine: PartitionEngine,
    decisions: list[Decision],
    bodies: dict[str, bytes | None],
    notices: list[Notice],
    errors: TextIO,
) -> None:
    while decisions:
        decision = decisions.pop(0)
        if isinstance(decision, Flush):
            bodies[decision.conversation_id] = decision.body
            decisions += engine.acknowledged(decision.conversation_id, decision.seq, 0.0)
        elif isinstance(decision, Notice):
            notices.append(decision)
            cid, offset = decision.conversation_id, decision.offset
            decisions += engine.notice_acknowledged(cid, offset, 0.0)
        elif isinstance(decision, NoticeRefusal):
            print(
                f"line {decision.offset}: {decision.kind} not sent ({decision.reason})",
                file=errors,
            )
        else:
            print(
                f"conversation {decision.conversation_id}: refused "
                f"({decision.message_count} messages, {decision.acknowledged_count} logged before)",
                file=errors,
            )
