"""Where the engine's CPU goes, by step: cProfile's own time per function, grouped.

    .venv/bin/python bench/where.py [--shape long] [--conversations 2000]

cProfile adds a cost per Python call, so Python-heavy steps look larger than
they are; read the shares as an order, not as exact fractions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine import SHAPES, run  # noqa: E402
from consumer.testing import workload  # noqa: E402

STEPS = {
    "the benchmark's own loop": ("engine.py:run",),
    "decode: msgspec": ("decode' of 'msgspec.json",),
    "decode: bounds (depth, free-form, year)": (
        "_check_",
        "_free_values",
        "_completion_free",
        "_screen_depth",
        "_valid_nesting",
        "nesting",
        "method 'count' of 'bytes'",
        "method 'translate'",
        "decode_event",
        "_refused",
    ),
    "merge: alignment": (
        "plan_completion",
        "plan",
        "aligned_tail",
        "_start",
        "matches",
        "_same",
        "walk",
        "mark",
        "known_set",
        "is_known",
        "find",
        "_longest_known_suffix",
        "_resent",
        "reply_mark",
        "_plan",
    ),
    "merge: fingerprints and event keys": (
        "fingerprint",
        "_hash64",
        "event_key",
        "blake2b",
        "encode' of 'msgspec.msgpack",
    ),
    "merge: new entries": (
        "_entry",
        "_reply_fields",
        "_reply_properties",
        "fromtimestamp",
        "_content",
        "_part",
        "_tool_call",
    ),
    "flush body (fold, encode, fit)": (
        "_fold",
        "state.py:encode",
        "to_payload",
        "Body.",
        "conversation",
        "encode' of 'msgspec.json",
        "fit",
        "message_id_prefix",
        "_issue",
        "_keep_body",
    ),
    "completed-state record (zlib)": ("zlib", "_complete", "encode_record"),
    "checkpoint (state records)": ("checkpoint", "_log_records", "changelog"),
}


def step_of(name: str) -> str:
    for step, marks in STEPS.items():
        if any(mark in name for mark in marks):
            return step
    return "per-event bookkeeping (apply, touch, snapshot, sets, dicts, the loop)"


def main() -> None:
    parser = argparse.ArgumentParser(description="The engine's CPU by step.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="short")
    parser.add_argument("--conversations", type=int, default=2000)
    args = parser.parse_args()
    records = list(workload.generate(args.conversations, 1, shape=SHAPES[args.shape]))
    profiler = cProfile.Profile()
    profiler.runcall(run, records, 4, 5_000)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    spent: dict[str, float] = {}
    for (path, _, function), row in stats.items():
        name = f"{Path(path).name}:{function}"
        spent[step_of(name)] = spent.get(step_of(name), 0.0) + row[2]
    total = sum(spent.values())
    for step, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds / total * 100:5.1f}%  {step}")


if __name__ == "__main__":
    main()
