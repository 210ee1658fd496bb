"""The benchmark: every figure of docs/benchmark.md, in one run on one local broker.

    .venv/bin/python bench/run.py                  # 4 partitions, ~200k events
    .venv/bin/python bench/run.py --events 40000   # a quick look
    .venv/bin/python bench/run.py --profile        # also map the worker's CPU (pyinstrument)

It starts a local Kafka (consumer.testing.localkafka) and the local sink (bench/sink.py),
writes a generated workload (consumer.testing.workload) to one topic, and reads that
same topic with a bare aiokafka loop (several passes), the straightforward
implementation (bench/straightforward.py) and the worker, each in a process of
its own and a consumer group of its own, each timed from its first record read
(steady) and from spawn (whole run), with the CPU of its own process tree. Then
it measures the sink alone, two workers in one group, the latency from a
conversation's end to the sink's 200 at 80 % of the worker's steady rate,
memory per open conversation, and long conversations with full histories, and
prints the performance targets' figures with their verdicts. docs/benchmark.md says what
exactly each figure measures.
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
from engine import LONG_SHAPE  # noqa: E402
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

PHASES = (
    "bare",
    "straightforward",
    "worker",
    "sink",
    "scaling",
    "latency",
    "memory",
    "long",
    "state",
)
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
    loads: dict[str, Workload] = field(default_factory=dict)
    """The workloads the phases wrote, by name ("main", "long"), for `--profile`."""

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
    bench.loads["main"] = load
    return load


async def contender(
    bench: Bench, load: Workload, script: str, *extra: str, passes: int = 1
) -> dict[str, Any]:
    """One of the scripts beside this file over the whole topic (`passes` times).

    Whole run: spawn to exit. Steady: from the first record the script read to
    its end (all read, posted and committed), both instants and the CPU then
    reported by the script itself (`bare.Steady`).
    """
    name = script.removesuffix(".py")
    expect = len(load.records)
    command = [
        *(PYTHON, str(BENCH / script), "--bootstrap-servers", bench.bootstrap),
        *("--topic", load.topic, "--group", bench.name(name), "--expect", str(expect)),
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
    events = expect * passes
    if inner["records"] != events:
        raise BenchError(f"{name} read {inner['records']} of {events} records")
    steady_seconds = inner["ended_at"] - inner["first_read_at"]
    return {
        "events": events,
        "events_per_second": events / seconds,
        "seconds": seconds,
        "seconds_after_imports": inner["seconds"],
        "steady_seconds": steady_seconds,
        "steady_events_per_second": events / steady_seconds,
        "startup_seconds": inner["first_read_at"] - child.started,
        "peak_rss_mb": inner["peak_rss_kb"] / 1024,
        "cpu": shares,
        "cpu_us_per_event": cpu_seconds / events * 1e6,
        "steady_cpu_us_per_event": (inner["ended_cpu"] - inner["first_read_cpu"]) / events * 1e6,
        "failures": inner.get("failures", 0),
    }


def rates(result: dict[str, Any]) -> str:
    """The steady and whole-run rates and CPU costs of one contender's result, in words."""
    return (
        f"steady {result['steady_events_per_second']:,.0f} events/s over "
        f"{result['steady_seconds']:.2f}s from the first record read, "
        f"{result['steady_cpu_us_per_event']:.1f} us CPU per event; whole run "
        f"{result['events_per_second']:,.0f} events/s over {result['seconds']:.2f}s "
        f"({result['startup_seconds']:.2f}s before the first record), "
        f"{result['cpu_us_per_event']:.1f} us CPU per event"
    )


async def phase_bare(bench: Bench, load: Workload) -> None:
    passes = bench.args.bare_passes
    result = await contender(bench, load, "bare.py", "--passes", str(passes), passes=passes)
    bench.results["bare"] = result
    print(
        f"bare aiokafka loop, {passes} passes over the topic ({result['events']:,} records; "
        f"peak RSS {result['peak_rss_mb']:.0f} MB):\n  {rates(result)}"
    )
    print(cpu_line(result["cpu"]))


async def phase_straightforward(
    bench: Bench, load: Workload, *, inline: bool = False, key: str = "straightforward"
) -> dict[str, Any]:
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
    bench.results[key] = result
    print(
        f"{label} ({stats['requests']:,} requests; peak RSS {result['peak_rss_mb']:.0f} MB):"
        f"\n  {rates(result)}"
    )
    print(cpu_line(result["cpu"]))
    return result


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


@dataclass
class FirstRead:
    """When a worker first read records, seen through its `records_consumed` metric.

    The metric moves once the first batch (at most `MAX_BUFFERED_RECORDS`) is
    handled; it is scraped every `INTERVAL` seconds until it moves. `at` is the
    moment the last scrape that still showed 0 was sent, and `cpu` the workers'
    CPU read just before it. The first read lies at most one batch's handling
    before `at`, or at most one scrape interval and round trip after it.
    """

    INTERVAL = 0.02
    at: float | None = None
    cpu: float = 0.0

    async def watch(self, bench: Bench, children: list[Child], ports: list[str]) -> None:
        urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]
        last = (time.monotonic(), sum(child.cpu_now() for child in children))
        while True:
            for url in urls:
                status, text = await http_get(bench.session, url)
                if status == 200 and metric_sum(text, "inkeep_consumer_records_consumed_total"):
                    self.at, self.cpu = last
                    return
            await asyncio.sleep(self.INTERVAL)
            last = (time.monotonic(), sum(child.cpu_now() for child in children))


async def end_to_end(
    bench: Bench, load: Workload, label: str, processes: int = 1, profile: Path | None = None
) -> dict[str, Any]:
    """Workers from spawn until every conversation is acknowledged and every offset committed."""
    await bench.sink.reset()
    group = bench.name(label)
    end = await bench.offsets.end(load.topic)
    envs = [worker_env(bench, load.topic, group) for _ in range(processes)]
    children = [spawn_worker(bench, f"{label}-{i}", env, profile) for i, env in enumerate(envs)]
    meter = bench.meter()
    first = FirstRead()
    watcher = asyncio.create_task(first.watch(bench, children, [e["HTTP_PORT"] for e in envs]))
    began = min(child.started for child in children)
    acked_at = None
    deadline = began + bench.args.timeout
    try:
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
                    f"{label}: not done after {bench.args.timeout:.0f}s (sink saw "
                    f"{stats['distinct']} of {load.conversations} conversations)\n"
                    f"{children[0].tail()}"
                )
            await asyncio.sleep(0.05 if acked_at is not None else 0.1)
        used = {c.name: c.cpu_now() for c in children}
    finally:
        watcher.cancel()
    if first.at is None:
        raise BenchError(f"{label}: done, but its records_consumed metric was never seen moving")
    stats = await bench.sink.stats()
    hwm = [child.status_kb("VmHWM") for child in children]
    shares = meter.shares(**used)
    await stop_all(children)
    codes = [child.code for child in children]
    seconds = done - began
    events = len(load.records)
    steady_seconds = done - first.at
    return {
        "events": events,
        "events_per_second": events / seconds,
        "seconds": seconds,
        "steady_seconds": steady_seconds,
        "steady_events_per_second": events / steady_seconds,
        "startup_seconds": first.at - began,
        "acked_seconds": acked_at - began,
        "requests": stats["requests"],
        "request_bytes": stats["bytes"],
        "cpu": shares,
        "cpu_us_per_event": sum(used.values()) / events * 1e6,
        "steady_cpu_us_per_event": (sum(used.values()) - first.cpu) / events * 1e6,
        "peak_rss_mb": max(hwm) / 1024,
        "exit_codes": codes,
        "state_topic": f"{group}.state",
    }


async def phase_worker(bench: Bench, load: Workload) -> None:
    result = await end_to_end(bench, load, "worker")
    bench.results["worker"] = result
    records, size = await bench.offsets.size(result["state_topic"])
    result["state_records"], result["state_bytes"] = records, size
    print(
        f"worker ({result['seconds']:.2f}s to offsets committed, {result['acked_seconds']:.2f}s "
        f"to the last 200; {result['requests']:,} requests, mean body "
        f"{result['request_bytes'] / max(result['requests'], 1):,.0f} B; peak RSS "
        f"{result['peak_rss_mb']:.0f} MB; exit {result['exit_codes']}):\n  {rates(result)}"
    )
    print(
        f"  state topic: {records:,} records, {size / MB:,.0f} MB "
        f"({size / load.size:.2f} bytes per input byte)"
    )
    print(cpu_line(result["cpu"]))
    for name in ("bare", "straightforward"):
        other = bench.results.get(name)
        if other is None:
            continue
        result[f"steady_ratio_{name}"] = (
            result["steady_events_per_second"] / other["steady_events_per_second"]
        )
        result[f"ratio_{name}"] = result["events_per_second"] / other["events_per_second"]
        result[f"cpu_ratio_{name}"] = result["steady_cpu_us_per_event"] / max(
            other["steady_cpu_us_per_event"], 1e-9
        )
        print(
            f"  against {name}: {result[f'steady_ratio_{name}']:.2f}x its steady rate "
            f"({result[f'ratio_{name}']:.2f}x whole run), "
            f"{result[f'cpu_ratio_{name}']:.1f}x its steady CPU per event"
        )


async def phase_long(bench: Bench) -> None:
    """Long conversations with full histories: the straightforward implementation, the worker."""
    args = bench.args
    load = build_workload(bench.name("long"), args.long_events, args.seed + 3, LONG_SHAPE)
    seconds = await write(bench, load)
    bench.loads["long"] = load
    n = len(load.records)
    print(
        f"long conversations: {n:,} events ({load.size / MB:.0f} MB, mean {load.size / n:,.0f} "
        f"B), {load.conversations:,} conversations of {n / load.conversations:.0f} events, "
        f"full histories; written in {seconds:.1f}s"
    )
    plain = await phase_straightforward(bench, load, key="long_straightforward")
    worker = await end_to_end(bench, load, "long-worker")
    print(
        f"worker on long conversations ({worker['requests']:,} requests, mean body "
        f"{worker['request_bytes'] / max(worker['requests'], 1):,.0f} B; peak RSS "
        f"{worker['peak_rss_mb']:.0f} MB; exit {worker['exit_codes']}):\n  {rates(worker)}"
    )
    print(cpu_line(worker["cpu"]))
    worker["steady_ratio_straightforward"] = (
        worker["steady_events_per_second"] / plain["steady_events_per_second"]
    )
    worker["straightforward_cpu_over_worker"] = plain["steady_cpu_us_per_event"] / max(
        worker["steady_cpu_us_per_event"], 1e-9
    )
    bench.results["long"] = {
        "events": n,
        "bytes": load.size,
        "conversations": load.conversations,
        "worker": worker,
    }
    print(
        f"  worker / straightforward on long conversations: "
        f"{worker['steady_ratio_straightforward']:.2f}x steady rate, "
        f"{worker['straightforward_cpu_over_worker']:.2f}x less CPU per event"
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
    one = bench.results.get("worker")
    if one:
        result["steady_ratio_one_worker"] = (
            result["steady_events_per_second"] / one["steady_events_per_second"]
        )
        result["ratio_one_worker"] = result["events_per_second"] / one["events_per_second"]
    bench.results["scaling"] = result
    print(
        f"two workers, one group ({result['requests']:,} requests; exit "
        f"{result['exit_codes']}; {result.get('steady_ratio_one_worker', float('nan')):.2f}x "
        f"one worker's steady rate):\n  {rates(result)}"
    )
    print(cpu_line(result["cpu"]))


async def phase_latency(bench: Bench) -> None:
    """Paced live traffic: from the broker's ack of each `conversation.ended` to the sink's 200."""
    args = bench.args
    worker_rate = bench.results.get("worker", {}).get("steady_events_per_second")
    share = args.latency_share
    rate = args.latency_rate or (worker_rate * share if worker_rate else 2000.0)
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
        "share_of_worker_rate": rate / worker_rate if worker_rate else None,
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
    of_max = f" = {rate / worker_rate:.0%} of the worker's steady rate" if worker_rate else ""
    print(
        f"end -> sink 200 at {achieved:,.0f} events/s{of_max} ({len(delays):,} conversations): "
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


async def phase_profile(bench: Bench, load: Workload, label: str, cpu_us: float | None) -> None:
    """The worker end to end under pyinstrument: where its CPU per event goes.

    Its own rate is not reported (the profiler slows it); the shares of busy
    time it finds are scaled to `cpu_us`, the unprofiled run's CPU per event.
    """
    session = bench.work / f"{label}.pyisession"
    result = await end_to_end(bench, load, f"profile-{label}", profile=session)
    print(
        f"profiled run, {label} workload: {result['steady_events_per_second']:,.0f} events/s "
        "steady under the profiler"
    )
    for renderer, suffix in (("text", "txt"), ("html", "html")):
        out = bench.work / f"profile-{label}.{suffix}"
        command = [
            *(PYTHON, "-m", "pyinstrument", "--load", str(session)),
            *("-r", renderer, "-o", str(out), "--no-color"),
        ]
        render = Child(f"render-{label}-{suffix}", command, bench.work, dict(os.environ))
        if await render.wait(120) != 0:
            raise BenchError(f"rendering the profile failed\n{render.tail()}")
        print(f"  profile: {out}")
    print(profile_map(session, cpu_us))


async def profiles(bench: Bench) -> None:
    """Profile the worker on every workload this run wrote (the main one, the long one)."""
    for label, load in bench.loads.items():
        if label == "long":
            measured = bench.results.get("long", {}).get("worker", {})
        else:
            measured = bench.results.get("worker", {})
        await phase_profile(bench, load, label, measured.get("steady_cpu_us_per_event"))


IDLE = frozenset({"select", "poll", "epoll.poll", "select.select", "[await]", "[out-of-context]"})
"""Frames where the worker waits rather than works (the event loop's epoll)."""


def profile_map(path: Path, cpu_us: float | None, rows: int = 20) -> str:
    """Busy self time after start-up, by component and by function, as shares and as us/event.

    Imports (anything under importlib, which runs every imported module) are start-up and
    left out, like the wait in epoll; a built-in's time goes to the component
    that called it. The shares are of sampled wall time while busy, scaled to
    the unprofiled run's steady CPU per event.
    """
    from pyinstrument.session import Session  # noqa: PLC0415 - only with --profile.

    root = Session.load(str(path)).root_frame()
    if root is None:
        return "  (no samples)"
    functions: dict[str, float] = {}
    components: dict[str, float] = {}
    idle = startup = 0.0
    stack: list[tuple[Any, str, bool]] = [(root, "other", False)]
    while stack:
        frame, caller, importing = stack.pop()
        file_path = frame.file_path or "?"
        importing = importing or "importlib" in file_path
        kind = caller if file_path.startswith("<") else component(file_path)
        real = [child for child in frame.children if not child.is_synthetic]
        stack.extend((child, kind, importing) for child in real)
        own = frame.time - sum(child.time for child in real)
        if frame.function in IDLE:
            idle += own
            continue
        if importing:
            startup += own
            continue
        where = f"{frame.function} ({Path(file_path).name}:{frame.line_no})"
        functions[where] = functions.get(where, 0.0) + own
        components[kind] = components.get(kind, 0.0) + own
    busy = sum(functions.values())
    scale = f"; us of CPU per event, scaled to {cpu_us:.1f} unprofiled" if cpu_us else ""
    head = f"  {root.time:.1f}s sampled: {busy:.1f}s busy, {startup:.1f}s importing, "
    lines = [f"{head}{idle:.1f}s idle{scale}"]
    for title, counts, limit in (
        ("by component", components, 12),
        ("by function", functions, rows),
    ):
        lines.append(f"  {title}:")
        for name, seconds in sorted(counts.items(), key=lambda item: item[1], reverse=True)[:limit]:
            share = seconds / busy if busy else 0.0
            us = f" {share * cpu_us:6.1f} us" if cpu_us else ""
            lines.append(f"  {100 * share:5.1f}%{us}  {name}")
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


COMPONENTS = (
    ("aiokafka", "aiokafka"),
    ("/kafka/", "aiokafka"),
    ("aiohttp", "aiohttp"),
    ("yarl", "aiohttp"),
    ("multidict", "aiohttp"),
    ("structlog", "logging"),
    ("logging", "logging"),
    ("prometheus_client", "metrics"),
    ("asyncio", "asyncio"),
    ("selectors", "asyncio"),
    ("pyinstrument", "profiler"),
)


def component(file_path: str) -> str:
    """`.../consumer/engine.py` -> `consumer/engine.py`; a library's file -> the library."""
    if "/consumer/" in file_path and "-packages/" not in file_path:
        return "consumer/" + file_path.rsplit("/consumer/", 1)[1]
    for mark, name in COMPONENTS:
        if mark in file_path:
            return name
    return "other"


TARGETS = (
    ("steady end-to-end / bare loop's steady rate", ">= 0.4", "x"),
    ("  the same in CPU per event (bare's / ours)", ">= 0.4", "x"),
    ("worker CPU per event (steady)", "<= 20 us", "us"),
    ("long conversations: worker / straightforward", ">= 3", "x"),
    ("  the same in CPU per event (theirs / ours)", ">= 3", "x"),
    ("RSS per 100k open conversations", "<= 300 MB", "MB"),
    ("p99 end -> sink 200 at 80% of the max rate", "< 1 s", "ms"),
    ("two workers / one worker, steady rate", "(no number set)", "x"),
)


def targets(bench: Bench) -> list[dict[str, Any]]:
    """The performance targets' figures from this run, each with its target and verdict."""
    r = bench.results
    worker, long, latency = r.get("worker", {}), r.get("long", {}), r.get("latency", {})
    share = latency.get("share_of_worker_rate")
    bare_cpu = worker.get("cpu_ratio_bare")
    long_cpu = long.get("worker", {}).get("straightforward_cpu_over_worker")
    values: list[tuple[float | None, bool | None]] = [
        (ratio := worker.get("steady_ratio_bare"), None if ratio is None else ratio >= 0.4),
        (
            None if bare_cpu is None else 1 / bare_cpu,
            None if bare_cpu is None else 1 / bare_cpu >= 0.4,
        ),
        (cpu := worker.get("steady_cpu_us_per_event"), None if cpu is None else cpu <= 20),
        (
            long_ratio := long.get("worker", {}).get("steady_ratio_straightforward"),
            None if long_ratio is None else long_ratio >= 3,
        ),
        (long_cpu, None if long_cpu is None else long_cpu >= 3),
        (mb := r.get("memory", {}).get("per_100k_mb"), None if mb is None else mb <= 300),
        (
            p99 := latency.get("p99"),
            None if p99 is None or share is None or abs(share - 0.8) > 0.01 else p99 < 1.0,
        ),
        (r.get("scaling", {}).get("steady_ratio_one_worker"), None),
    ]
    rows = []
    for (name, target, unit), (value, met) in zip(TARGETS, values, strict=True):
        rows.append({"figure": name, "target": target, "unit": unit, "value": value, "met": met})
    return rows


def print_targets(rows: list[dict[str, Any]]) -> None:
    print(f"the performance targets (load average {os.getloadavg()[0]:.1f}):")
    for row in rows:
        value = row["value"]
        if value is None:
            shown = "not measured"
        elif row["unit"] == "ms":
            shown = f"{value * 1000:,.0f} ms"
        elif row["unit"] == "x":
            shown = f"{value:.2f}x"
        else:
            shown = f"{value:,.1f} {row['unit']}"
        verdict = {True: "met", False: "NOT met", None: "-"}[row["met"]]
        print(f"  {row['figure']:<48} {shown:>14}  target {row['target']:<16} {verdict}")


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
            "inline": lambda: phase_straightforward(
                bench, load, inline=True, key="straightforward_inline"
            ),
            "worker": lambda: phase_worker(bench, load),
            "sink": lambda: phase_sink(bench, load),
            "scaling": lambda: phase_scaling(bench, load),
            "latency": lambda: phase_latency(bench),
            "memory": lambda: phase_memory(bench),
            "long": lambda: phase_long(bench),
        }
        for phase in ("bare", "straightforward", "inline", *PHASES[2:]):
            if phase in phases:
                await steps[phase]()
        print_targets(rows := targets(bench))
        bench.results["targets"] = rows
        if args.profile:
            await profiles(bench)
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
    add("--bare-passes", type=int, default=8, help="times the bare loop reads the topic")
    add("--long-events", type=int, default=10_000, help="size of the long-conversation workload")
    add(
        "--latency-share",
        type=float,
        default=0.8,
        help="latency phase rate, share of the worker's steady rate",
    )
    add("--latency-rate", type=float, default=0.0, help="events/s (overrides --latency-share)")
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
