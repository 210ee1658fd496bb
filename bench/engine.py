"""The engine alone, in one process: CPU per event with no Kafka and no HTTP.

Feeds the benchmark's workload through `decode_event` and `PartitionEngine`
the way the worker does (one engine per partition, every flush acknowledged at
once, a checkpoint every `--checkpoint-every` events), and prints microseconds
per event for each step. What the end-to-end figure cannot say, this does: how
much of the worker's time its own code takes, and where.

    .venv/bin/python bench/engine.py [--events 100000] [--shape long] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from consumer.engine import EngineConfig, Flush, PartitionEngine  # noqa: E402
from consumer.events import decode_event  # noqa: E402
from consumer.testing import workload  # noqa: E402

LONG_SHAPE = workload.Shape(
    turns=(99, 99),
    ended_share=1.0,
    delta_share=0.0,
    tool_share=0.0,
    failed_share=0.0,
    context_chars=10**9,
)
"""100 events per conversation (99 completions and the end), each request the full history."""
SHAPES = {"short": workload.Shape(ended_share=1.0), "long": LONG_SHAPE}


def run(
    records: list[tuple[bytes, bytes]], partitions: int, checkpoint_every: int
) -> list[PartitionEngine]:
    engines = [PartitionEngine(EngineConfig()) for _ in range(partitions)]
    spent = dict.fromkeys(("decode", "apply", "acknowledge", "checkpoint"), 0.0)
    flushes = body_bytes = state_bytes = state_records = 0
    clock = time.perf_counter
    cpu_began = time.process_time()
    for offset, (key, value) in enumerate(records):
        engine = engines[zlib.crc32(key) % partitions]
        began = clock()
        event = decode_event(value)
        decoded = clock()
        decisions = engine.apply(event, offset, float(offset))
        applied = clock()
        while decisions:
            decision = decisions.pop()
            if isinstance(decision, Flush):
                flushes += 1
                body_bytes += len(decision.body)
                decisions += engine.acknowledged(decision.conversation_id, decision.seq, 0.0)
        acknowledged = clock()
        spent["decode"] += decoded - began
        spent["apply"] += applied - decoded
        spent["acknowledge"] += acknowledged - applied
        if offset % checkpoint_every == 0 or offset == len(records) - 1:
            began = clock()
            for each in engines:
                written = each.checkpoint().records
                state_records += len(written)
                state_bytes += sum(len(value or b"") for _, value in written)
            spent["checkpoint"] += clock() - began
    cpu = time.process_time() - cpu_began
    count = len(records)
    print(
        f"{count:,} events, {flushes:,} flushes ({body_bytes / max(flushes, 1):,.0f} B each), "
        f"{state_records:,} state records ({state_bytes / 1e6:,.0f} MB)"
    )
    for step, seconds in spent.items():
        print(f"  {step:<12} {seconds / count * 1e6:7.1f} us/event")
    total = sum(spent.values())
    print(f"  {'total':<12} {total / count * 1e6:7.1f} us/event = {count / total:,.0f} events/s")
    print(f"  {'cpu':<12} {cpu / count * 1e6:7.1f} us/event (process CPU time, whole loop)")
    return engines


def rss_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description="The engine's CPU per event.")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=5_000, help="events")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="short", help="the workload")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top 30")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    per = sum(1 for _ in workload.generate(400, args.seed + 1, shape=shape)) / 400
    records = list(workload.generate(round(args.events / per), args.seed, shape=shape))
    if not args.profile:
        before = rss_kb()
        engines = run(records, args.partitions, args.checkpoint_every)
        grown = (rss_kb() - before) / 1024
        held = sum(engine.conversation_count for engine in engines)
        print(
            f"  RSS grew {grown:,.0f} MB holding {held:,} conversations (completed ones kept for "
            f"continuations): {grown / max(held, 1) * 100_000:,.0f} MB per 100k"
        )
        return
    profiler = cProfile.Profile()
    profiler.runcall(run, records, args.partitions, args.checkpoint_every)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
