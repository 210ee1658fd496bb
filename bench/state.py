"""State-topic cost, measured at the engine: no broker, a fake clock, every record counted.

    .venv/bin/python bench/state.py                      # live-paced write cost, then restore
    .venv/bin/python bench/state.py --restore-conversations 10000

Live-paced writes: conversations of 10, 100 and 500 completions (delta history, full
history sent whole, full history trimmed to 500 characters as the generated workload
does), interleaved round-robin, with a checkpoint after every round: every event
lands in a checkpoint of its own, the worst case of "an event per conversation every
few seconds, a checkpoint every second". Reported per input byte: the state bytes
the log layout writes, and what writing each changed conversation whole (the
previous layout) would have written at the same checkpoints; and engine CPU per event
(apply, checkpoint, acknowledgements; JSON decoding excluded, done beforehand; the
fastest of `--repeat` runs, since a shared machine only ever adds time).

Restore: a state partition holding N open conversations of 100 events each, written
as the log layout writes them (a checkpoint every 10 events: 10 segments and a head),
restored into a fresh engine: seconds and resident memory added. Retained: the same
for completed conversations (10 turns, consolidated) and for markers, per conversation.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from consumer import changelog, events, state  # noqa: E402
from consumer.engine import EngineConfig, Flush, PartitionEngine  # noqa: E402
from consumer.testing import workload  # noqa: E402

LENGTHS = (10, 100, 500)
MODES = {
    "delta": {"delta_share": 1.0},
    "full": {"delta_share": 0.0, "context_chars": 10**9},
    "full-trimmed": {"delta_share": 0.0},
}
SECONDS_PER_EVENT = 0.05
"""20 events/s across the partition."""


def conversations(length: int, count: int, mode: str, seed: int) -> list[list[bytes]]:
    shape = workload.Shape(
        turns=(length, length),
        ended_share=1.0,
        tool_share=0.0,
        failed_share=0.0,
        active=count,
        **MODES[mode],
    )
    by_id: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in workload.generate(count, seed, shape=shape):
        by_id[key].append(value)
    return list(by_id.values())


def live(length: int, mode: str, seed: int) -> dict[str, Any]:
    """One engine, conversations round-robin, a checkpoint after every round."""
    count = max(4, 2000 // length)
    scripts = [
        [events.decode_event(v) for v in c] for c in conversations(length, count, mode, seed)
    ]
    raw = sum(len(v) for c in conversations(length, count, mode, seed) for v in c)
    engine = PartitionEngine(EngineConfig())
    written = whole = applied = 0
    engine_seconds = checkpoint_seconds = 0.0
    offset, now = 0, 0.0
    for round_ in range(max(len(s) for s in scripts)):
        started = time.perf_counter()
        for script in scripts:
            if round_ < len(script):
                decisions = engine.apply(script[round_], offset, now)
                while decisions:
                    flush = decisions.pop()
                    if isinstance(flush, Flush):
                        decisions += engine.acknowledged(flush.conversation_id, flush.seq, now)
                offset += 1
                applied += 1
                now += SECONDS_PER_EVENT
        engine.due(now)
        ticked = time.perf_counter()
        records = engine.checkpoint().records
        done = time.perf_counter()
        engine_seconds += done - started
        checkpoint_seconds += done - ticked
        written += sum(len(k) + len(v or b"") for k, v in records)
        for key, value in records:  # What the previous layout wrote: the changed ones whole.
            cid, index = changelog.parse_key(key)
            if index is not None:
                continue
            conv = engine._open.get(cid)  # noqa: SLF001 - the bench compares layouts.
            whole += len(key) + (len(state.encode_record(conv)) if conv else len(value or b""))
    return {
        "length": length,
        "mode": mode,
        "conversations": count,
        "events": applied,
        "input_bytes": raw,
        "state_bytes": written,
        "state_per_input": written / raw,
        "whole_state_per_input": whole / raw,
        "engine_us_per_event": 1e6 * engine_seconds / applied,
        "checkpoint_us_per_event": 1e6 * checkpoint_seconds / applied,
        "input_bytes_per_event": raw / applied,
    }


def fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The same run repeated: bytes are equal, times are taken at their least disturbed."""
    best = dict(runs[0])
    for field in ("engine_us_per_event", "checkpoint_us_per_event"):
        best[field] = min(run[field] for run in runs)
    return best


def rss() -> int:
    pages = Path("/proc/self/statm").read_text().split()[1]
    return int(pages) * os.sysconf("SC_PAGE_SIZE")


def restore(count: int, seed: int) -> dict[str, Any]:
    """A partition of `count` open conversations of 100 events, restored from their logs."""
    sample = [events.decode_event(v) for v in conversations(100, 1, "delta", seed)[0][:100]]
    engine = PartitionEngine(EngineConfig())
    template: list[tuple[bytes, bytes | None]] = []
    for offset, event in enumerate(sample):
        engine.apply(event, offset, 0.0)
        if offset % 10 == 9:
            template += engine.checkpoint().records
    cid = sample[0].conversation_id
    head = changelog.decode(template[-1][1] or b"")
    assert isinstance(head, changelog.Head)
    segments = [(changelog.parse_key(k)[1], v) for k, v in template if changelog.SEPARATOR in k]
    partition: list[tuple[bytes, bytes | None]] = []
    for n in range(count):
        other = f"{cid}-{n}"
        partition += [(changelog.segment_key(other, i or 0), v) for i, v in segments]
        renamed = msgspec.structs.replace(head.state, id=other)
        partition.append(
            (other.encode(), changelog.encode(msgspec.structs.replace(head, state=renamed)))
        )
    size = sum(len(k) + len(v or b"") for k, v in partition)
    del engine, template
    gc.collect()
    before = rss()
    started = time.perf_counter()
    fresh = PartitionEngine(EngineConfig())
    for key, value in partition:
        fresh.restore(key, value)
    fresh.restored(0.0)
    seconds = time.perf_counter() - started
    assert fresh.open_count == count
    del partition
    gc.collect()
    return {
        "open_conversations": count,
        "events_each": 100,
        "state_records": count * (len(segments) + 1),
        "state_mb": size / 2**20,
        "restore_seconds": seconds,
        "records_per_second": count * (len(segments) + 1) / seconds,
        "rss_added_mb": (rss() - before) / 2**20,
    }


def retained(count: int, seed: int) -> dict[str, Any]:
    """Restore cost and memory of completed conversations and of markers, per conversation."""
    sample = [events.decode_event(v) for v in conversations(10, 1, "full-trimmed", seed)[0]]
    engine = PartitionEngine(EngineConfig())
    for offset, event in enumerate(sample):
        for flush in engine.apply(event, offset, 0.0):
            assert isinstance(flush, Flush)
            engine.acknowledged(flush.conversation_id, flush.seq, 0.0)
    blob = next(v for k, v in engine.checkpoint().records if v and v[:1] == b"Z")
    marker = state.encode_record(state.Marker("x", 21, 3, 10**9, 1.7e9))
    figures: dict[str, Any] = {"completed_record_bytes": len(blob), "marker_bytes": len(marker)}
    for kind, value in (("completed", blob), ("marker", marker)):
        gc.collect()
        before = rss()
        started = time.perf_counter()
        fresh = PartitionEngine(EngineConfig())
        for n in range(count):  # A value of its own each, as records read from the topic.
            fresh.restore(f"conv_{n:024x}".encode(), value[:-1] + value[-1:])
        fresh.restored(0.0)
        seconds = time.perf_counter() - started
        figures[f"{kind}_restore_us"] = 1e6 * seconds / count
        figures[f"{kind}_rss_bytes"] = (rss() - before) / count
        del fresh
    return figures


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "  events  history        state/input  whole/input  engine µs/event  "
        "checkpoint µs/event  input B/event"
    )
    lines = [
        f"  {r['length']:6d}  {r['mode']:<13}  {r['state_per_input']:11.2f}  "
        f"{r['whole_state_per_input']:11.2f}  {r['engine_us_per_event']:15.1f}  "
        f"{r['checkpoint_us_per_event']:19.1f}  {r['input_bytes_per_event']:13.0f}"
        for r in rows
    ]
    return "\n".join([header, *lines])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rows = [
        fastest([live(length, mode, args.seed) for _ in range(args.repeat)])
        for mode in args.modes.split(",")
        for length in LENGTHS
    ]
    print("state written under live-paced traffic (engine-level, a checkpoint per event):")
    print(table(rows), flush=True)
    restored = restore(args.restore_conversations, args.seed)
    print(
        f"restore: {restored['open_conversations']} open conversations of 100 events "
        f"({restored['state_records']} records, {restored['state_mb']:.0f} MB) in "
        f"{restored['restore_seconds']:.1f} s, {restored['records_per_second']:.0f} records/s, "
        f"+{restored['rss_added_mb']:.0f} MB resident",
        flush=True,
    )
    kept = retained(args.retained, args.seed)
    print(
        f"retained: a completed conversation {kept['completed_record_bytes']} B on the topic, "
        f"{kept['completed_rss_bytes']:.0f} B resident, {kept['completed_restore_us']:.0f} µs "
        f"to restore; a marker {kept['marker_bytes']} B, {kept['marker_rss_bytes']:.0f} B, "
        f"{kept['marker_restore_us']:.1f} µs",
        flush=True,
    )
    return {"live": rows, "restore": restored, "retained": kept}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="State-topic cost at the engine (docs/benchmark.md).")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--repeat", type=int, default=3, help="runs per row; the fastest counts")
    p.add_argument("--restore-conversations", type=int, default=10_000)
    p.add_argument("--retained", type=int, default=100_000, help="completed ones, and markers")
    p.add_argument("--json", default=None)
    return p


def main() -> int:
    args = parser().parse_args()
    figures = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
