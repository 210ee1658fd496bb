"""What the benchmark's phases share: child processes, the local sink, group offsets.

Every contender runs in a child process of its own, so each is timed from spawn
(interpreter start and imports included, the same for all) and its peak RSS is
the kernel's figure for that process alone (`wait4`'s `ru_maxrss`).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from consumer import admin
from consumer.testing.localkafka import free_ports

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A phase could not produce its figure; the message says why."""


class Child:
    """A child process, its log file, and its resource use."""

    def __init__(
        self,
        name: str,
        command: list[str],
        log_dir: Path,
        env: dict[str, str],
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()
        self.code: int | None = None
        self.cpu_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        if self.code is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                self.process.returncode = self.code
                self.cpu_seconds = usage.ru_utime + usage.ru_stime
        return self.code

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                self.process.kill()
                await asyncio.sleep(0.2)
                self.poll()
                raise BenchError(f"{self.name} did not exit within {timeout:.0f}s\n{self.tail()}")
            await asyncio.sleep(0.02)
        return code

    def send(self, sig: signal.Signals) -> None:
        if self.poll() is None:
            self.process.send_signal(sig)

    def status_kb(self, field: str) -> int:
        """A `VmRSS`/`VmHWM`-style line of /proc/<pid>/status, in kB."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        if match is None:
            raise BenchError(f"{field} missing from /proc/{self.pid}/status")
        return int(match.group(1))

    def cpu_now(self) -> float:
        """CPU seconds of this child's process tree so far."""
        return tree_cpu(self.pid)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return f"--- last lines of {self.log} ---\n" + "\n".join(text.splitlines()[-lines:])

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a live process has used itself."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu(pid: int) -> float:
    """CPU seconds of a live process and all its descendants, living or reaped.

    `/proc/<pid>/stat` fields utime + stime (every thread of the process) plus
    cutime + cstime (children it has waited for), summed over the live
    descendants found through their parent ids.
    """
    parents: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone since the listing
        stats[int(entry.name)] = fields
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    if pid not in stats:
        raise BenchError(f"process {pid} is gone")
    total = 0
    stack = [pid]
    while stack:
        each = stack.pop()
        fields = stats[each]
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        stack.extend(parents.get(each, ()))
    return total / TICKS


class CpuMeter:
    """CPU used by long-lived processes (the broker, the sink) over one phase.

    Only for the CPU-share lines: a contender's CPU per event never comes from
    here, but from its own process tree (`Child.cpu_now`, `wait4`), so the
    broker's and the sink's CPU are never counted in it.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.began = time.monotonic()
        self.start = {name: process_cpu(pid) for name, pid in pids.items()}

    def shares(self, **more: float) -> dict[str, float]:
        """Share of one core each used since the start; `more` adds CPU seconds of others."""
        wall = time.monotonic() - self.began
        used = {name: process_cpu(pid) - self.start[name] for name, pid in self.pids.items()}
        return {name: seconds / wall for name, seconds in {**more, **used}.items()}


def cpu_line(shares: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
    return f"  CPU, share of one core: {parts}; load average {os.getloadavg()[0]:.1f}"


async def stop_all(children: list[Child], timeout: float = 30.0) -> None:
    for child in children:
        child.send(signal.SIGTERM)
    for child in children:
        try:
            await child.wait(timeout)
        except BenchError as exc:
            print(f"  warning: {exc}")


class Sink:
    """The local sink process (bench/sink.py) and a client for its bookkeeping."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [PYTHON, str(BENCH / "sink.py"), "--port", str(self.port)]
        self.child = Child("sink", command, log_dir, dict(os.environ))
        self.session = aiohttp.ClientSession()

    async def started(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.stats()
            except aiohttp.ClientError:
                if self.child.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"the sink did not start\n{self.child.tail()}") from None
                await asyncio.sleep(0.1)
            else:
                return

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/stats") as answer:
            return await answer.json()  # type: ignore[no-any-return]

    async def ended(self) -> dict[str, float]:
        async with self.session.get(f"{self.url}/ended") as answer:
            return await answer.json()  # type: ignore[no-any-return]

    async def reset(self) -> None:
        async with self.session.post(f"{self.url}/reset") as answer:
            answer.raise_for_status()

    async def close(self) -> None:
        await self.session.close()
        await stop_all([self.child], timeout=10.0)


class Offsets:
    """End offsets of topics and committed offsets of groups, read from the broker."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)

    async def start(self) -> None:
        await self.admin.start()

    async def close(self) -> None:
        await self.admin.close()

    async def end(self, topic: str) -> dict[TopicPartition, int]:
        return await admin.end_offsets(self.bootstrap_servers, topic)

    async def size(self, topic: str) -> tuple[int, int]:
        """(records, value bytes) in a topic, read from its start to its end offsets."""
        end = await self.end(topic)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers)
        await consumer.start()
        records = size = 0
        try:
            consumer.assign(list(end))
            await consumer.seek_to_beginning()

            async def behind() -> bool:
                positions = [await consumer.position(tp) for tp in end]
                return any(at < end[tp] for at, tp in zip(positions, end, strict=True))

            while await behind():
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records += len(batch)
                    size += sum(len(record.value or b"") for record in batch)
        finally:
            await consumer.stop()
        return records, size

    async def caught_up(self, group: str, end: dict[TopicPartition, int]) -> bool:
        committed = await admin.group_offsets(self.admin, group, list(end))
        return all(_at_least(committed.get(tp), offset) for tp, offset in end.items())


def _at_least(committed: int | None, offset: int) -> bool:
    return committed is not None and committed >= offset


async def http_get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with session.get(url) as answer:
            return answer.status, await answer.text()
    except aiohttp.ClientError:
        return 0, ""


def metric_sum(text: str, name: str) -> float:
    """The sum over labels of one metric in Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def spy_summary(raw: Path, rows: int = 10) -> str:
    """py-spy's raw samples: the idle share, the busiest leaves, and the worker's own frames."""
    total = idle = 0
    leaves: dict[str, int] = {}
    ours: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = stack.split(";")
        total += samples
        if frames[-1].startswith("EpollSelector.select"):
            idle += samples
            continue
        leaf = _frame_name(frames[-1])
        leaves[leaf] = leaves.get(leaf, 0) + samples
        own = {_frame_name(f) for f in frames if "(consumer/" in f and "cli.py" not in f}
        for name in own:
            ours[name] = ours.get(name, 0) + samples
    if not total:
        return "  (no samples)"
    lines = [f"  py-spy: {total:,} samples, {idle / total:.0%} idle in select"]
    for title, counts in (("busiest leaves", leaves), ("consumer/ frames, inclusive", ours)):
        lines.append(f"  {title}:")
        ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:rows]
        lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in ranked]
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """`Worker._step (consumer/runtime.py:171)` -> `Worker._step (runtime.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]
