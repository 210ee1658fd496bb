"""The ceiling: a bare aiokafka `getmany` loop that reads the whole topic and does nothing else.

It joins a new consumer group from the earliest offset, counts records and bytes until it
has seen `--expect` records, commits once, and prints one JSON line with what it read.

    python bench/bare.py --bootstrap-servers HOST:PORT --topic T --group G --expect N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer


async def read(bootstrap_servers: str, topic: str, group: str, expect: int) -> dict[str, float]:
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
    try:
        while records < expect:
            batch = await consumer.getmany(timeout_ms=500)
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
    }


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
    parser.add_argument("--expect", type=int, required=True)
    args = parser.parse_args()
    result = asyncio.run(read(args.bootstrap_servers, args.topic, args.group, args.expect))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
