"""Building a flush's body alone: from scratch, and kept between interim flushes.

    .venv/bin/python bench/body.py [--shape short|long] [--every 10]

`once`: each conversation's body as its one flush builds it (fold the history
into messages, encode, check the 2 MB limit). `kept`: a conversation flushed
every `--every` events while it stays open (interim flushes, as `MAX_OPEN` or a
rebalance make them), the body kept between flushes where the code keeps it.
Process CPU time, min of 3 runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine import SHAPES  # noqa: E402
from consumer import events, payload, state, upsert  # noqa: E402
from consumer.engine import EngineConfig, Flush, PartitionEngine, Trigger  # noqa: E402
from consumer.fit import fit  # noqa: E402
from consumer.testing import workload  # noqa: E402


def build_once(conv: state.ConversationState) -> bytes:
    body = upsert.Body(conv.id)
    whole = upsert.to_payload(conv, body)
    return fit(whole, payload.MAX_BODY_BYTES, body.encode(whole))[1]


def best(label: str, step: object, count: int) -> None:
    spent = float("inf")
    for _ in range(3):
        began = time.process_time()
        step()  # type: ignore[operator]
        spent = min(spent, time.process_time() - began)
    print(f"  {label:<34} {spent / count * 1e6:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description="Flush body CPU.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="short")
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--every", type=int, default=10, help="events between interim flushes")
    args = parser.parse_args()
    decoded = [
        events.decode_event(v)
        for _, v in workload.generate(args.conversations, 1, shape=SHAPES[args.shape])
    ]
    chats = [e for e in decoded if not isinstance(e, events.ConversationEnded)]
    engine = PartitionEngine(EngineConfig())
    for offset, event in enumerate(chats):
        engine.apply(event, offset, float(offset))
    convs = list(engine._open.values())  # noqa: SLF001
    size = sum(len(build_once(c)) for c in convs) / len(convs)
    print(f"{len(convs):,} conversations, {size:,.0f} B bodies, {len(chats):,} events")
    best("once: per flush", lambda: [build_once(c) for c in convs], len(convs))

    flushes = [0]

    def interim() -> None:
        flushes[0] = 0
        engine = PartitionEngine(EngineConfig())
        seen: dict[str, int] = {}
        for offset, event in enumerate(chats):
            engine.apply(event, offset, float(offset))
            cid = event.conversation_id
            seen[cid] = seen.get(cid, 0) + 1
            if seen[cid] % args.every == 0:
                for decision in engine.flush_open(Trigger.REVOKE, float(offset)):
                    if isinstance(decision, Flush):
                        flushes[0] += 1
                        engine.acknowledged(decision.conversation_id, decision.seq, 0.0)

    def without() -> None:
        engine = PartitionEngine(EngineConfig())
        for offset, event in enumerate(chats):
            engine.apply(event, offset, float(offset))

    spent = {}
    for label, step in (("with", interim), ("without", without)):
        spent[label] = float("inf")
        for _ in range(3):
            began = time.process_time()
            step()
            spent[label] = min(spent[label], time.process_time() - began)
    extra = spent["with"] - spent["without"]
    print(f"  {'kept: per interim flush':<34} {extra / max(flushes[0], 1) * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
