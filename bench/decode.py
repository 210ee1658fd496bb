"""Decoding alone: CPU per record of `events.decode_event` against bare msgspec, by step.

    .venv/bin/python bench/decode.py [--events 20000] [--shape long]

Shows what the decode-time bounds (the depth scan, the walk over free-form values,
the year check) add to msgspec's own decoding, on the benchmark's workloads.
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
from consumer import events  # noqa: E402
from consumer.testing import workload  # noqa: E402


def per_record(label: str, step: object, values: list[bytes], repeat: int = 3) -> None:
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        for value in values:
            step(value)  # type: ignore[operator]
        best = min(best, time.process_time() - began)
    print(f"  {label:<28} {best / len(values) * 1e6:8.2f} us/record")


def _skip_test(raw: bytes) -> bool:
    brackets = raw.count(b"[") + raw.count(b"{")
    return (
        brackets <= events.MAX_FREE_DEPTH + 1
        and events._LONG_NUMBER not in raw.translate(events._DIGITS_AS_NINE)  # noqa: SLF001
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Decode CPU per record.")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="short", help="the workload")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    per = sum(1 for _ in workload.generate(40, args.seed + 1, shape=shape)) / 40
    values = [v for _, v in workload.generate(round(args.events / per), args.seed, shape=shape)]
    size = sum(map(len, values)) / len(values)
    print(f"{len(values):,} records, {size:,.0f} B each")
    bare = events._decoder.decode  # noqa: SLF001
    decoded = [bare(value) for value in values]
    per_record("msgspec decode (bare)", bare, values)
    per_record("depth scan (exact)", events._check_depth, values)  # noqa: SLF001
    many = [v for v in values if v.count(b"[") + v.count(b"{") > events.MAX_DEPTH]
    if many:
        label = f"depth screen ({len(many)} records)"
        per_record(label, events._screen_depth, many)  # noqa: SLF001
    it = iter(decoded * 3)
    per_record("year + free-form walk", lambda _: events._check_values(next(it)), values)  # noqa: SLF001
    per_record("decode_event (all)", events.decode_event, values)
    per_record("  of which the skip test", _skip_test, values)


if __name__ == "__main__":
    main()
