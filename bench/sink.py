"""The benchmark's stand-in for the analytics API, in a process of its own.

It must never be the bottleneck, so `POST /conversations` does nothing but read
the body, note (conversation id, arrival time, size) and answer 200. The id is
read by position (the first `"id":` of the body, where both the worker and the
straightforward implementation put it), not by parsing JSON. A body that
carries the `resolution` property (only `conversation.ended` events have it) is
the flush after the end; its first arrival is what the latency figure uses.

Arrival times are `time.monotonic()`, which on Linux is one clock for every
process, so the harness can subtract its own readings from them.

    python bench/sink.py --port 8900
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from aiohttp import web

ID_MARK = b'"id":'
ENDED_MARK = b'"resolution":'
OK = b'{"ok":true}'


class Recorder:
    """What arrived since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.first: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.arrivals: list[tuple[str, float, int]] = []

    def record(self, body: bytes, now: float) -> None:
        start = body.index(b'"', body.index(ID_MARK) + len(ID_MARK)) + 1
        conversation = body[start : body.index(b'"', start)].decode()
        self.requests += 1
        self.bytes += len(body)
        self.arrivals.append((conversation, now, len(body)))
        self.first.setdefault(conversation, now)
        if ENDED_MARK in body:
            self.ended.setdefault(conversation, now)


def app(recorder: Recorder) -> web.Application:
    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        recorder.record(body, time.monotonic())
        return web.Response(body=OK, content_type="application/json")

    async def stats(_request: web.Request) -> web.Response:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return web.json_response(
            {
                "requests": recorder.requests,
                "bytes": recorder.bytes,
                "distinct": len(recorder.first),
                "ended": len(recorder.ended),
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "pid": os.getpid(),
            }
        )

    async def ended(_request: web.Request) -> web.Response:
        return web.json_response(recorder.ended)

    async def arrivals(_request: web.Request) -> web.Response:
        return web.json_response(recorder.arrivals)

    async def reset(_request: web.Request) -> web.Response:
        recorder.reset()
        return web.json_response({"ok": True})

    application = web.Application(client_max_size=8 * 1024 * 1024)
    application.router.add_post("/conversations", post)
    application.router.add_get("/stats", stats)
    application.router.add_get("/ended", ended)
    application.router.add_get("/arrivals", arrivals)
    application.router.add_post("/reset", reset)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(Recorder()), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
