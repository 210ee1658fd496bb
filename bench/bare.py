"""The ceiling: a bare aiokafka `getmany` loop that reads the whole topic and does nothing else.

It joins a new consumer group from the earliest offset, counts records and bytes until it
has seen `--expect` records, and, with `--passes N`, seeks back to the beginning and reads
the topic again until it has read it N times (so the steady part of its run is long enough
to measure, not just its start-up); it commits once and prints one JSON line with what it
read, when it read its first record, and its CPU then and at the end.

    python bench/bare.py --bootstrap-servers HOST:PORT --topic T --group G --expect N [--passes 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

TICKS = os.sysconf("SC_CLK_TCK")


async def read(
    bootstrap_servers: str, topic: str, group: str, expect: int, passes: int = 1
) -> dict[str, float]:
    began = time.monotonic()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records = size = 0
    first = Steady()
    try:
        for done in range(passes):
            if done:
                await consumer.seek_to_beginning()
            while records < expect * (done + 1):
                batch = await consumer.getmany(timeout_ms=500)
                if batch:
                    first.mark()
                for part in batch.values():
                    records += len(part)
                    size += sum(len(record.value) for record in part)
        await consumer.commit()
    finally:
        await consumer.stop()
    return {
        "records": records,
        "bytes": size,
        "seconds": time.monotonic() - began,
        "peak_rss_kb": peak_rss_kb(),
        **first.result(),
    }


class Steady:
    """The moment a contender read its first record and its CPU then, against the end.

    Times are `time.monotonic()` (one clock for every process on Linux); CPU is
    this process's utime + stime (+ reaped children) from `/proc/self/stat`.
    """

    def __init__(self) -> None:
        self.at: float | None = None
        self.cpu = 0.0

    def mark(self) -> None:
        if self.at is None:
            self.at = time.monotonic()
            self.cpu = cpu_seconds()

    def result(self) -> dict[str, float]:
        return {
            "first_read_at": self.at if self.at is not None else time.monotonic(),
            "first_read_cpu": self.cpu,
            "ended_at": time.monotonic(),
            "ended_cpu": cpu_seconds(),
        }


def cpu_seconds() -> float:
    """This process's CPU seconds so far, as `/proc/self/stat` counts them."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


def peak_rss_kb() -> int:
    """This process's own high-water RSS (`ru_maxrss` would include the parent's at fork)."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiokafka read loop")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expect", type=int, required=True, help="records in the topic")
    parser.add_argument("--passes", type=int, default=1, help="read the whole topic this often")
    args = parser.parse_args()
    result = asyncio.run(
        read(args.bootstrap_servers, args.topic, args.group, args.expect, args.passes)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
