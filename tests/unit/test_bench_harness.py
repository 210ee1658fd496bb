"""The benchmark's CPU accounting: a contender's CPU is its whole process tree, and only that."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Loaded under its own name: tests/integration has a `harness` module too.
_spec = importlib.util.spec_from_file_location(
    "bench_harness", Path(__file__).resolve().parents[2] / "bench" / "harness.py"
)
assert _spec is not None
assert _spec.loader is not None
bench_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_harness)
BenchError = bench_harness.BenchError
percentile = bench_harness.percentile
process_cpu = bench_harness.process_cpu
tree_cpu = bench_harness.tree_cpu

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"
"""A child that burns CPU, then sleeps so it is still alive when measured."""


def spawn_parent(burn_seconds: float) -> subprocess.Popen[bytes]:
    """A parent that starts a CPU-burning child, waits for nothing, and sleeps."""
    child = f"{BURN.format(seconds=burn_seconds)}time.sleep(30)\n"
    parent = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "time.sleep(30)\n"
    )
    return subprocess.Popen([sys.executable, "-c", parent])


def test_tree_cpu_counts_a_live_descendant_that_the_process_itself_does_not() -> None:
    parent = spawn_parent(0.4)
    try:
        deadline = time.monotonic() + 30
        while tree_cpu(parent.pid) - process_cpu(parent.pid) < 0.35:
            assert time.monotonic() < deadline, "the child's CPU never showed in the tree"
            time.sleep(0.05)
        assert process_cpu(parent.pid) < 0.3  # the parent itself only started a process
    finally:
        parent.kill()
        parent.wait()


def test_tree_cpu_of_a_gone_process_is_an_error() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(BenchError):
        tree_cpu(gone.pid)


def test_tree_cpu_does_not_count_an_unrelated_busy_process() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    busy = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=0.4)])
    try:
        busy.wait(timeout=30)
        assert tree_cpu(idle.pid) < 0.2
    finally:
        idle.kill()
        idle.wait()


def test_percentile_picks_the_nearest_rank() -> None:
    values = [float(v) for v in range(101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(list(reversed(values)), 0.5) == 50.0
    assert percentile([3.0], 0.99) == 3.0
