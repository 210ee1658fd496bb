"""The benchmark: every figure of docs/benchmark.md, in one run on one local broker.

    .venv/bin/python bench/run.py                  # 4 partitions, ~200k events
    .venv/bin/python bench/run.py --events 40000   # a quick look
    .venv/bin/python bench/run.py --profile        # also profile the worker (pyinstrument)

It starts a local Kafka (consumer.testing.localkafka) and the local sink (bench/sink.py),
writes a generated workload (consumer.testing.workload) to one topic, and reads that
same topic with a bare aiokafka loop, the straightforward implementation
(bench/straightforward.py) and the worker, each in a process of its own and a
consumer group of its own. Then it measures the sink alone, two workers in one
group, the latency from a conversation's end to the sink's 200 at half the
worker's throughput, and memory per open conversation. docs/benchmark.md says
what exactly each figure measures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import state as state_phase  # noqa: E402
import straightforward  # noqa: E402
from harness import (  # noqa: E402
    BENCH,
    PYTHON,
    BenchError,
    Child,
    CpuMeter,
    Offsets,
    Sink,
    cpu_line,
    http_get,
    metric_sum,
    percentile,
    spy_summary,
    stop_all,
)

from consumer import admin, payload  # noqa: E402
from consumer.settings import Settings  # noqa: E402
from consumer.testing import workload  # noqa: E402
from consumer.testing.localkafka import KafkaCluster, free_ports  # noqa: E402

PHASES = ("bare", "straightforward", "worker", "sink", "scaling", "latency", "memory", "state")
EXTRA_PHASES = ("inline",)
"""Run only when named: the straightforward implementation awaiting each post in place."""
MB = 1024 * 1024
SETTINGS = frozenset(f.name for f in dataclasses.fields(Settings))


@dataclass
class Workload:
    topic: str
    records: list[tuple[bytes, bytes]]
    conversations: int
    ended: int

    @property
    def size(self) -> int:
        return sum(len(value) for _, value in self.records)


@dataclass
class Bench:
    args: argparse.Namespace
    bootstrap: str
    sink: Sink
    offsets: Offsets
    work: Path
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    results: dict[str, Any] = field(default_factory=dict)
    session: aiohttp.ClientSession = field(default_factory=aiohttp.ClientSession)
    names: itertools.count[int] = field(default_factory=itertools.count)
    broker_pid: int | None = None

    def name(self, what: str) -> str:
        return f"bench-{self.run_id}-{what}-{next(self.names)}"

    def meter(self) -> CpuMeter:
        pids = {"sink": self.sink.child.pid}
        if self.broker_pid is not None:
            pids["broker"] = self.broker_pid
        return CpuMeter(pids)


def build_workload(topic: str, events: int, seed: int, shape: workload.Shape) -> Workload:
    """About `events` records; the conversation count comes from a sample's events per one."""
    sample = 400
    per_conversation = sum(1 for _ in workload.generate(sample, seed + 1, shape=shape)) / sample
    count = max(1, round(events / per_conversation))
    records = list(workload.generate(count, seed, shape=shape))
    ended = sum(1 for _, value in records if workload.is_ended(value))
    return Workload(topic, records, len({key for key, _ in records}), ended)


async def write(bench: Bench, load: Workload, rate: float = 0.0, **options: Any) -> float:
    await admin.create_topic(bench.bootstrap, load.topic, bench.args.partitions, exist_ok=True)
    began = time.monotonic()
    sent = await workload.produce(bench.bootstrap, load.topic, load.records, rate=rate, **options)
    if sent != len(load.records):
        raise BenchError(f"the broker acknowledged {sent} of {len(load.records)} records")
    return time.monotonic() - began


async def phase_produce(bench: Bench) -> Workload:
    args = bench.args
    load = build_workload(
        bench.name("input"), args.events, args.seed, workload.Shape(ended_share=1.0)
    )
    seconds = await write(bench, load)
    end = await bench.offsets.end(load.topic)
    if sum(end.values()) != len(load.records):
        raise BenchError(f"topic holds {sum(end.values())} records, expected {len(load.records)}")
    n = len(load.records)
    print(
        f"workload: {n:,} events ({load.size / MB:.0f} MB, mean {load.size / n:,.0f} B), "
        f"{load.conversations:,} conversations, {args.partitions} partitions; "
        f"written in {seconds:.1f}s ({n / seconds:,.0f} events/s)"
    )
    bench.results["workload"] = {
        "events": n,
        "bytes": load.size,
        "conversations": load.conversations,
        "partitions": args.partitions,
        "produce_events_per_second": n / seconds,
    }
    return load


async def contender(bench: Bench, load: Workload, script: str, *extra: str) -> dict[str, Any]:
    """One of the scripts beside this file, over the whole topic, from spawn to exit."""
    name = script.removesuffix(".py")
    command = [
        *(PYTHON, str(BENCH / script), "--bootstrap-servers", bench.bootstrap),
        *("--topic", load.topic, "--group", bench.name(name), "--expect", str(len(load.records))),
        *extra,
    ]
    meter = bench.meter()
    child = Child(name, command, bench.work, dict(os.environ))
    if await child.wait(bench.args.timeout) != 0:
        raise BenchError(f"{name} failed\n{child.tail()}")
    seconds = time.monotonic() - child.started
    cpu_seconds = child.cpu_seconds or 0.0
    shares = meter.shares(**{name: cpu_seconds})
    inner = json.loads(child.output().splitlines()[-1])
    if inner["records"] != len(load.records):
        raise BenchError(f"{name} read {inner['records']} of {len(load.records)} records")
    return {
        "events_per_second": len(load.records) / seconds,
        "seconds": seconds,
        "seconds_after_imports": inner["seconds"],
        "peak_rss_mb": inner["peak_rss_kb"] / 1024,
        "cpu": shares,
        "cpu_us_per_event": cpu_seconds / len(load.records) * 1e6,
        "failures": inner.get("failures", 0),
    }


async def phase_bare(bench: Bench, load: Workload) -> None:
    result = await contender(bench, load, "bare.py")
    bench.results["bare"] = result
    print(
        f"bare aiokafka loop: {result['events_per_second']:,.0f} events/s "
        f"({result['seconds']:.2f}s, of which {result['seconds_after_imports']:.2f}s after "
        f"imports; peak RSS {result['peak_rss_mb']:.0f} MB; "
        f"{result['cpu_us_per_event']:.0f} us CPU per event)"
    )
    print(cpu_line(result["cpu"]))


async def phase_straightforward(bench: Bench, load: Workload, *, inline: bool = False) -> None:
    await bench.sink.reset()
    extra = ["--api-base-url", bench.sink.url, *(["--inline"] if inline else [])]
    result = await contender(bench, load, "straightforward.py", *extra)
    stats = await bench.sink.stats()
    if stats["distinct"] != load.conversations or result["failures"]:
        raise BenchError(
            f"straightforward: sink saw {stats['distinct']} of {load.conversations} "
            f"conversations, {result['failures']} posts failed"
        )
    label = "straightforward, posts awaited in place" if inline else "straightforward"
    bench.results["straightforward_inline" if inline else "straightforward"] = result
    print(
        f"{label}: {result['events_per_second']:,.0f} events/s "
        f"({result['seconds']:.2f}s, {stats['requests']:,} requests; "
        f"peak RSS {result['peak_rss_mb']:.0f} MB; "
        f"{result['cpu_us_per_event']:.0f} us CPU per event)"
    )
    print(cpu_line(result["cpu"]))


def worker_env(bench: Bench, topic: str, group: str, **settings: Any) -> dict[str, str]:
    """The worker's environment, checked with `Settings.from_env` before it is used."""
    values = {
        "kafka_bootstrap_servers": bench.bootstrap,
        "kafka_topic": topic,
        "kafka_group_id": group,
        "kafka_state_topic": f"{group}.state",
        "kafka_dlq_topic": f"{group}.dlq",
        "inkeep_api_base_url": bench.sink.url,
        "inkeep_api_key": "bench-key",
        "http_port": free_ports(1)[0],
        "log_level": "info",
        **settings,
    }
    for assignment in bench.args.set:
        name, _, value = assignment.partition("=")
        if name.lower() not in SETTINGS:
            raise BenchError(f"--set {assignment}: {name} is not a setting")
        values.setdefault(name.lower(), value)
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("KAFKA_", "INKEEP_"))
    }
    env.update({name.upper(): str(value) for name, value in values.items()})
    Settings.from_env(env)
    return env


def spawn_worker(
    bench: Bench, name: str, env: dict[str, str], profile: Path | None = None
) -> Child:
    """`python -m consumer run`, from `--worker-root` when given (to compare two versions)."""
    command = [PYTHON, "-m", "consumer", "run"]
    if profile is not None:
        command = [
            PYTHON,
            "-m",
            "pyinstrument",
            "-r",
            "pyisession",
            "-o",
            str(profile),
            *command[1:],
        ]
    return Child(name, command, bench.work, env, cwd=Path(bench.args.worker_root or ROOT))


async def ready(bench: Bench, child: Child, env: dict[str, str], timeout: float = 60.0) -> None:
    url = f"http://127.0.0.1:{env['HTTP_PORT']}/readyz"
    deadline = time.monotonic() + timeout
    while (await http_get(bench.session, url))[0] != 200:
        if child.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not become ready\n{child.tail()}")
        await asyncio.sleep(0.05)


async def end_to_end(
    bench: Bench, load: Workload, label: str, processes: int = 1, profile: Path | None = None
) -> dict[str, Any]:
    """Workers from spawn until every conversation is acknowledged and every offset committed."""
    await bench.sink.reset()
    group = bench.name(label)
    end = await bench.offsets.end(load.topic)
    children = [
        spawn_worker(bench, f"{label}-{i}", worker_env(bench, load.topic, group), profile)
        for i in range(processes)
    ]
    meter = bench.meter()
    began = min(child.started for child in children)
    acked_at = None
    deadline = began + bench.args.timeout
    while True:
        stats = await bench.sink.stats()
        now = time.monotonic()
        if (
            acked_at is None
            and stats["distinct"] >= load.conversations
            and (stats["ended"] >= load.ended)
        ):
            acked_at = now
        if acked_at is not None and await bench.offsets.caught_up(group, end):
            done = time.monotonic()
            break
        for child in children:
            if child.poll() is not None:
                raise BenchError(f"{child.name} exited early ({child.code})\n{child.tail()}")
        if now > deadline:
            await stop_all(children)
            raise BenchError(
                f"{label}: not done after {bench.args.timeout:.0f}s (sink saw {stats['distinct']} "
                f"of {load.conversations} conversations)\n{children[0].tail()}"
            )
        await asyncio.sleep(0.1)
    stats = await bench.sink.stats()
    hwm = [child.status_kb("VmHWM") for child in children]
    used = {c.name: c.cpu_now() for c in children}
    shares = meter.shares(**used)
    await stop_all(children)
    codes = [child.code for child in children]
    seconds = done - began
    return {
        "events_per_second": len(load.records) / seconds,
        "seconds": seconds,
        "acked_seconds": acked_at - began,
        "requests": stats["requests"],
        "request_bytes": stats["bytes"],
        "cpu": shares,
        "cpu_us_per_event": sum(used.values()) / len(load.records) * 1e6,
        "peak_rss_mb": max(hwm) / 1024,
        "exit_codes": codes,
        "state_topic": f"{group}.state",
    }


async def phase_worker(bench: Bench, load: Workload) -> None:
    result = await end_to_end(bench, load, "worker")
    bench.results["worker"] = result
    records, size = await bench.offsets.size(result["state_topic"])
    result["state_records"], result["state_bytes"] = records, size
    bare = bench.results.get("bare", {}).get("events_per_second")
    plain = bench.results.get("straightforward", {}).get("events_per_second")
    rate = result["events_per_second"]
    print(
        f"worker: {rate:,.0f} events/s ({result['seconds']:.2f}s to offsets committed, "
        f"{result['acked_seconds']:.2f}s to the last 200; {result['requests']:,} requests, "
        f"mean body {result['request_bytes'] / max(result['requests'], 1):,.0f} B; "
        f"peak RSS {result['peak_rss_mb']:.0f} MB; {result['cpu_us_per_event']:.0f} us CPU "
        f"per event; exit {result['exit_codes']})"
    )
    print(
        f"  state topic: {records:,} records, {size / MB:,.0f} MB "
        f"({size / load.size:.2f} bytes per input byte)"
    )
    print(cpu_line(result["cpu"]))
    if bare:
        result["ratio_bare"] = rate / bare
    if plain:
        result["ratio_straightforward"] = rate / plain
    print(
        f"  = {result.get('ratio_bare', float('nan')):.2f}x bare (target >= 0.6), "
        f"{result.get('ratio_straightforward', float('nan')):.2f}x straightforward (target >= 3)"
    )
    costs = {
        name: bench.results[name]["cpu_us_per_event"]
        for name in ("bare", "straightforward")
        if name in bench.results
    }
    if costs:
        mine = result["cpu_us_per_event"]
        print(
            "  CPU per event, less contended than wall time: "
            + ", ".join(f"{mine / cost:.1f}x {name}'s" for name, cost in costs.items())
        )


def sample_bodies(load: Workload, limit: int) -> list[bytes]:
    """Bodies the straightforward implementation makes, each checked by the strict decoder."""
    open_: dict[str, straightforward.Conversation] = {}
    bodies: list[bytes] = []
    for _, value in load.records:
        event = json.loads(value)
        cid = event["conversation_id"]
        conversation = open_.setdefault(cid, straightforward.new_conversation(cid))
        if straightforward.apply(conversation, event):
            bodies.append(straightforward.body(open_.pop(cid)))
            payload.decode(bodies[-1])
            if len(bodies) >= limit:
                break
    return bodies


async def phase_sink(bench: Bench, load: Workload) -> None:
    """The sink alone under the same bodies: how many requests it can take, and at what CPU."""
    bodies = sample_bodies(load, 2000)
    await bench.sink.reset()
    requests = bench.args.sink_requests
    concurrency = 16
    before = (await bench.sink.stats())["cpu_seconds"]
    counter = itertools.count()
    url = f"{bench.sink.url}/conversations"
    headers = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}
    failures = Counter[int]()

    async def client(session: aiohttp.ClientSession) -> None:
        while (index := next(counter)) < requests:
            async with session.post(
                url, data=bodies[index % len(bodies)], headers=headers
            ) as answer:
                await answer.read()
                if answer.status != 200:
                    failures[answer.status] += 1

    began = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    seconds = time.monotonic() - began
    stats = await bench.sink.stats()
    if failures or stats["requests"] != requests:
        raise BenchError(f"sink capacity: {stats['requests']} recorded, failures {dict(failures)}")
    cpu = (stats["cpu_seconds"] - before) / requests
    rate = requests / seconds
    mean_body = stats["bytes"] / requests
    print(
        f"sink alone: {rate:,.0f} requests/s from one client process with {concurrency} "
        f"connections (mean body {mean_body:,.0f} B); sink CPU {cpu * 1e6:.0f} us/request, "
        f"so about {1 / cpu:,.0f} requests/s per core"
    )
    result = {"requests_per_second": rate, "cpu_per_request": cpu, "mean_body": mean_body}
    worker = bench.results.get("worker")
    if worker:
        worker_rate = worker["requests"] / worker["seconds"]
        result["worker_requests_per_second"] = worker_rate
        print(
            f"  the worker sent {worker_rate:,.0f} requests/s = {worker_rate / rate:.0%} of the "
            f"measured rate; the sink used {worker['cpu']['sink']:.0%} of one core meanwhile"
        )
    bench.results["sink"] = result


async def phase_scaling(bench: Bench, load: Workload) -> None:
    result = await end_to_end(bench, load, "scaling", processes=2)
    one = bench.results.get("worker", {}).get("events_per_second")
    if one:
        result["ratio_one_worker"] = result["events_per_second"] / one
    bench.results["scaling"] = result
    print(
        f"two workers, one group: {result['events_per_second']:,.0f} events/s "
        f"({result['seconds']:.2f}s; {result.get('ratio_one_worker', float('nan')):.2f}x one "
        f"worker; {result['requests']:,} requests; exit {result['exit_codes']})"
    )
    print(cpu_line(result["cpu"]))


async def phase_latency(bench: Bench) -> None:
    """Paced live traffic: from the broker's ack of each `conversation.ended` to the sink's 200."""
    args = bench.args
    worker_rate = bench.results.get("worker", {}).get("events_per_second")
    rate = args.latency_rate or (worker_rate / 2 if worker_rate else 2000.0)
    shape = workload.Shape(ended_share=1.0, active=max(50, int(rate)))
    load = build_workload(
        bench.name("live"), int(rate * args.latency_seconds), args.seed + 7, shape
    )
    await admin.create_topic(bench.bootstrap, load.topic, args.partitions, exist_ok=True)
    await bench.sink.reset()
    group = bench.name("latency")
    env = worker_env(bench, load.topic, group)
    child = spawn_worker(bench, "latency", env)
    spy = None
    try:
        await ready(bench, child, env)
        if args.spy:
            spy = start_spy(bench, child)
        triggered: dict[str, float] = {}

        def delivered(key: bytes, value: bytes, when: float) -> None:
            if workload.is_ended(value):
                triggered[key.decode()] = when

        meter = bench.meter()
        worker_cpu = child.cpu_now()
        seconds = await write(bench, load, rate=rate, on_delivered=delivered)
        shares = meter.shares(worker=child.cpu_now() - worker_cpu)
        deadline = time.monotonic() + 120
        while (stats := await bench.sink.stats())["ended"] < len(triggered):
            if child.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"latency: sink saw {stats['ended']} of {len(triggered)} ended\n{child.tail()}"
                )
            await asyncio.sleep(0.2)
        arrived = await bench.sink.ended()
    finally:
        await stop_all([child])
        if spy is not None:
            await spy.wait(60)
    timeline = sorted((at, arrived[cid] - at) for cid, at in triggered.items())
    delays = [delay for _, delay in timeline]
    achieved = len(load.records) / seconds
    third = max(1, len(delays) // 3)
    result: dict[str, Any] = {
        "target_events_per_second": rate,
        "events_per_second": achieved,
        "conversations": len(delays),
        "p50": percentile(delays, 0.50),
        "p90": percentile(delays, 0.90),
        "p99": percentile(delays, 0.99),
        "max": max(delays),
        "p50_by_third": [percentile(delays[i : i + third], 0.5) for i in (0, third, 2 * third)],
        "cpu": shares,
    }
    bench.results["latency"] = result
    ms = {key: f"{result[key] * 1000:,.0f} ms" for key in ("p50", "p90", "p99", "max")}
    print(
        f"end -> sink 200 at {achieved:,.0f} events/s ({len(delays):,} conversations): "
        f"p50 {ms['p50']}, p90 {ms['p90']}, p99 {ms['p99']} (target < 1 s), max {ms['max']}"
    )
    thirds = ", ".join(f"{value * 1000:,.0f}" for value in result["p50_by_third"])
    print(f"  p50 in the first, middle and last third of the run: {thirds} ms")
    print(cpu_line(shares))
    if spy is not None:
        print(spy_summary(bench.work / "latency.spy.txt"))


def start_spy(bench: Bench, child: Child) -> Child:
    """py-spy sampling the worker (with idle time) until it exits."""
    found = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(found).exists():
        raise BenchError("--spy needs py-spy: pip install py-spy")
    command = [
        *(found, "record", "--pid", str(child.pid), "--idle"),
        *("--format", "raw", "--rate", "100", "-o", str(bench.work / "latency.spy.txt")),
    ]
    return Child("py-spy", command, bench.work, dict(os.environ))


async def phase_memory(bench: Bench) -> None:
    """RSS growth of one worker holding N open conversations (no end, long idle timeout)."""
    args = bench.args
    count = args.open_conversations
    shape = workload.Shape(turns=(1, 3), ended_share=0.0, active=min(count, 5000))
    records = list(workload.generate(count, args.seed + 11, shape=shape))
    load = Workload(bench.name("open"), records, count, 0)
    await admin.create_topic(bench.bootstrap, load.topic, args.partitions, exist_ok=True)
    group = bench.name("memory")
    env = worker_env(
        bench,
        load.topic,
        group,
        conversation_idle_timeout_seconds=86400,
        conversation_max_open_seconds=86400,
        max_open_conversations=count * 2,
    )
    child = spawn_worker(bench, "memory", env)
    metrics_url = f"http://127.0.0.1:{env['HTTP_PORT']}/metrics"
    try:
        await ready(bench, child, env)
        await asyncio.sleep(1.0)
        base = child.status_kb("VmRSS")
        await write(bench, load)
        deadline = time.monotonic() + args.timeout
        while True:
            _, text = await http_get(bench.session, metrics_url)
            consumed = metric_sum(text, "inkeep_consumer_records_consumed_total")
            held = metric_sum(text, "inkeep_consumer_open_conversations")
            if consumed >= len(records) and held >= count:
                break
            if child.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"memory: {consumed:.0f}/{len(records)} consumed, {held:.0f} open\n"
                    + child.tail()
                )
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)
        rss = child.status_kb("VmRSS")
    finally:
        child.send(signal.SIGKILL)
        await child.wait(10)
    growth = (rss - base) * 1024
    per_100k = growth / count * 100_000
    bench.results["memory"] = {
        "open_conversations": count,
        "events": len(records),
        "rss_before_mb": base / 1024,
        "rss_after_mb": rss / 1024,
        "per_100k_mb": per_100k / MB,
    }
    print(
        f"memory: {count:,} open conversations ({len(records):,} events) grew RSS "
        f"{base / 1024:.0f} -> {rss / 1024:.0f} MB: {per_100k / MB:.0f} MB per 100k open"
    )


async def phase_profile(bench: Bench, load: Workload) -> None:
    """The worker end to end under pyinstrument; its figures are not reported, only the profile."""
    session = bench.work / "worker.pyisession"
    result = await end_to_end(bench, load, "profile", profile=session)
    print(f"profiled run: {result['events_per_second']:,.0f} events/s under the profiler")
    for renderer, suffix in (("text", "txt"), ("html", "html")):
        out = bench.work / f"profile.{suffix}"
        command = [
            PYTHON,
            "-m",
            "pyinstrument",
            "--load",
            str(session),
            "-r",
            renderer,
            "-o",
            str(out),
            "--no-color",
        ]
        render = Child(f"render-{suffix}", command, bench.work, dict(os.environ))
        if await render.wait(120) != 0:
            raise BenchError(f"rendering the profile failed\n{render.tail()}")
        print(f"  profile: {out}")
    print(self_time_table(session))


def self_time_table(path: Path, rows: int = 25) -> str:
    """The functions where the worker's process spent its samples, by self time."""
    from pyinstrument.session import Session  # noqa: PLC0415 - only with --profile.

    session = Session.load(str(path))
    root = session.root_frame()
    if root is None:
        return "  (no samples)"
    totals: dict[str, float] = {}
    stack = [root]
    while stack:
        frame = stack.pop()
        real = [child for child in frame.children if not child.is_synthetic]
        stack.extend(real)
        where = f"{frame.function} ({Path(frame.file_path or '?').name}:{frame.line_no})"
        own = frame.time - sum(child.time for child in real)
        totals[where] = totals.get(where, 0.0) + own
    whole = root.time
    lines = [f"  self time, share of {whole:.1f}s sampled:"]
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:rows]
    lines += [f"  {100 * t / whole:5.1f}%  {where}" for where, t in ranked]
    return "\n".join(lines)


def phase_state(args: argparse.Namespace) -> dict[str, Any]:
    """The engine-level state phase (bench/state.py): no broker, no sink. Takes it off the list."""
    phases = [p.strip() for p in args.phases.split(",")]
    if "state" not in phases:
        return {}
    args.phases = ",".join(p for p in phases if p != "state")
    print("state phase (engine-level, no broker) ...", flush=True)
    options = ["--seed", str(args.seed), "--restore-conversations", str(args.state_restore)]
    return {"state": state_phase.measure(state_phase.parser().parse_args(options))}


async def run(args: argparse.Namespace, figures: dict[str, Any]) -> int:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="inkeep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := set(phases) - set(PHASES + EXTRA_PHASES):
        known = ", ".join(PHASES + EXTRA_PHASES)
        print(f"unknown phases: {', '.join(sorted(unknown))}; choose from {known}")
        return 2
    cluster = None
    if args.bootstrap_servers:
        bootstrap = args.bootstrap_servers
    else:
        print("starting a local Kafka broker ...", flush=True)
        cluster = KafkaCluster(1, heap="1g", data_dir=work / "kafka")
        await asyncio.to_thread(cluster.start)
        bootstrap = cluster.bootstrap_servers
    sink = Sink(work)
    offsets = Offsets(bootstrap)
    bench = Bench(args, bootstrap, sink, offsets, work)
    bench.results.update(figures)
    if cluster is not None and cluster.nodes[0].process is not None:
        bench.broker_pid = cluster.nodes[0].process.pid
    began = time.monotonic()
    try:
        await sink.started()
        await offsets.start()
        print(f"broker {bootstrap}, sink {sink.url}, logs in {work}", flush=True)
        load = await phase_produce(bench)
        steps = {
            "bare": lambda: phase_bare(bench, load),
            "straightforward": lambda: phase_straightforward(bench, load),
            "inline": lambda: phase_straightforward(bench, load, inline=True),
            "worker": lambda: phase_worker(bench, load),
            "sink": lambda: phase_sink(bench, load),
            "scaling": lambda: phase_scaling(bench, load),
            "latency": lambda: phase_latency(bench),
            "memory": lambda: phase_memory(bench),
        }
        for phase in ("bare", "straightforward", "inline", *PHASES[2:]):
            if phase in phases:
                await steps[phase]()
        if args.profile:
            await phase_profile(bench, load)
    except BenchError as exc:
        print(f"benchmark failed: {exc}")
        return 1
    finally:
        await bench.session.close()
        await offsets.close()
        await sink.close()
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
    print(f"done in {time.monotonic() - began:.0f}s")
    bench.results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=2) + "\n")
        print(f"figures written to {args.json}")
    if not (args.work_dir or args.keep or args.profile):
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="The worker's benchmark (docs/benchmark.md).")
    add = parser.add_argument
    add("--events", type=int, default=200_000, help="size of the workload, about")
    add("--partitions", type=int, default=4, help="partitions of each topic")
    add("--seed", type=int, default=1, help="workload seed")
    add(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, from {','.join(PHASES + EXTRA_PHASES)} (inline: only if named)",
    )
    add("--latency-rate", type=float, default=0.0, help="events/s (default: half the worker's)")
    add("--latency-seconds", type=float, default=30.0, help="length of the paced run")
    add("--open-conversations", type=int, default=100_000, help="for the memory phase")
    add("--state-restore", type=int, default=10_000, help="open conversations, state phase")
    add("--sink-requests", type=int, default=20_000, help="requests in the sink-alone phase")
    add(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a worker setting, e.g. --set MAX_BUFFERED_RECORDS=500 (repeatable)",
    )
    add("--worker-root", default=None, help="run the worker from this checkout instead")
    add("--timeout", type=float, default=300.0, help="limit for each phase, seconds")
    add("--profile", action="store_true", help="also profile the worker with pyinstrument")
    add("--spy", action="store_true", help="sample the latency phase's worker with py-spy")
    add("--bootstrap-servers", default=None, help="use this broker instead of starting one")
    add("--work-dir", default=None, help="keep logs and profiles here")
    add("--keep", action="store_true", help="keep the temporary directory")
    add("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    figures = phase_state(args)
    if figures and not args.phases:
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    return asyncio.run(run(args, figures))


if __name__ == "__main__":
    sys.exit(main())
