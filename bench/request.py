"""The client side of one `POST /conversations`: CPU per request, the sink against bare aiohttp.

    .venv/bin/python bench/request.py [--requests 3000] [--bytes 6500]

Starts `bench/sink.py` (a do-nothing API) in a process of its own and measures,
in this process only, the CPU each way of sending the same body costs: a bare
`aiohttp` POST on one session, and `Sink.deliver` (what the worker does: slots,
headers, timeout, answer reading, classification, metrics, log binding). The
difference is what the worker adds on top of the HTTP client.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from consumer import logs, payload  # noqa: E402
from consumer.sink import Sink  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.post(url, data=b'{"id":"probe"}') as response:
                    await response.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError("the stand-in API did not start")


async def measure(base: str, body: bytes, count: int, concurrency: int) -> dict[str, float]:
    url = f"{base}/conversations"
    conversation = payload.decode(body)
    results: dict[str, float] = {}

    async def run(label: str, send: object) -> None:
        queue = list(range(count))

        async def worker() -> None:
            while queue:
                queue.pop()
                await send()  # type: ignore[operator]

        for _ in range(2):  # the first round warms connections up
            began = time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            queue[:] = range(count)
            results[label] = (time.process_time() - began) / count * 1e6

    async with aiohttp.ClientSession() as session:

        async def bare() -> None:
            async with session.post(url, data=body) as response:
                await response.read()

        await run("aiohttp, bare", bare)
    async with Sink(base_url=base, api_key="bench", max_concurrency=concurrency) as sink:

        async def deliver() -> None:
            await sink.deliver(conversation, body)

        await run("Sink.deliver", deliver)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Client CPU per request.")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--bytes", type=int, default=6500, help="body size")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    logs.configure("info", "json")
    text = "x" * max(0, args.bytes - 200)
    body = payload.encode(
        payload.Conversation(
            id="conv_bench",
            type="openai",
            messages=[payload.OutMessage(id="m_0", role="user", content=text)],
        )
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "sink.py"), "--port", str(port)]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        asyncio.run(wait_up(f"{base}/conversations"))
        results = asyncio.run(measure(base, body, args.requests, args.concurrency))
    finally:
        server.terminate()
        server.wait()
    print(f"{args.requests:,} requests of {len(body):,} B, {args.concurrency} at once")
    for label, micros in results.items():
        print(f"  {label:<16} {micros:7.1f} us of client CPU per request")


if __name__ == "__main__":
    main()
