"""Memory, disk and restore cost of completed conversations and markers, per store.

    .venv/bin/python bench/memory.py                  # 100,000 of each kind per store
    .venv/bin/python bench/memory.py --count 20000 --json out.json

For each store (`memory`: a dict; `sqlite`: the disk tier, a file under a temporary
directory) and each kind (a completed conversation of 10 turns, consolidated; a
marker): a fresh engine restores `count` of them as state-topic records; reported
per entry are the resident bytes added, the file bytes, what the store counts
against its budget (`held`), restore µs, then the lookups the hot path makes
through the store: the first event of a new conversation (a miss), and a
continuation (a hit, decoded). Last, what this means at the default settings for 10
and 100 conversations/s, extrapolated from these per-entry figures (not measured
at that scale).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from consumer import events, state  # noqa: E402
from consumer.engine import (  # noqa: E402
    MARKER_LIFETIME,
    MARKER_SHARE,
    EngineConfig,
    Flush,
    PartitionEngine,
)
from consumer.settings import Settings  # noqa: E402
from consumer.store import MemoryStore, SqliteStore, Store  # noqa: E402
from consumer.testing import workload  # noqa: E402

DAY = 86400.0
RATES = (10, 100)


def rss() -> int:
    pages = Path("/proc/self/statm").read_text().split()[1]
    return int(pages) * os.sysconf("SC_PAGE_SIZE")


def sample(seed: int) -> list[events.Event]:
    """One ended conversation of 10 completions, as the generated workload writes them."""
    shape = workload.Shape(
        turns=(10, 10), ended_share=1.0, tool_share=0.0, failed_share=0.0, active=1
    )
    by_id: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in workload.generate(1, seed, shape=shape):
        by_id[key].append(value)
    return [events.decode_event(v) for v in next(iter(by_id.values()))]


def records(seed: int) -> dict[str, bytes]:
    engine = PartitionEngine(EngineConfig())
    for offset, event in enumerate(sample(seed)):
        for flush in engine.apply(event, offset, 0.0):
            assert isinstance(flush, Flush)
            engine.acknowledged(flush.conversation_id, flush.seq, 0.0)
    blob = next(v for _, v in engine.checkpoint().records if v and v[:1] == b"Z")
    marker = state.encode_record(state.Marker("x", 21, 3, 10**9, 1.7e9))
    return {"completed": blob, "marker": marker}


def make_store(kind: str, directory: Path, n: int) -> Store:
    if kind == "memory":
        return MemoryStore()
    return SqliteStore(directory / f"bench-{n}.sqlite3")


def one(backend: str, kind: str, value: bytes, count: int, directory: Path) -> dict[str, Any]:
    gc.collect()
    before = rss()
    store = make_store(backend, directory, count)
    engine = PartitionEngine(EngineConfig(), store)
    started = time.perf_counter()
    for n in range(count):  # A value of its own each, as records read from the topic.
        engine.restore(f"conv_{n:024x}".encode(), value[:-1] + value[-1:], 0.0)
    engine.restored(0.0)
    seconds = time.perf_counter() - started
    gc.collect()
    resident = (rss() - before) / count
    disk = store.path.stat().st_size / count if isinstance(store, SqliteStore) else 0.0
    held = store.held / count
    probe = events.decode_event(
        json.dumps(
            {
                "event_id": "probe",
                "event_type": "chat.completion",
                "conversation_id": "conv_new",
                "occurred_at": "2026-11-23T10:00:00Z",
                "history": "delta",
                "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            }
        ).encode()
    )
    lookups = 2000
    started = time.perf_counter()
    for n in range(lookups):
        engine.is_duplicate(probe, 10**9 + n)
    miss_us = 1e6 * (time.perf_counter() - started) / lookups
    hits = min(lookups, count)
    started = time.perf_counter()
    for n in range(hits):
        hit = events.decode_event(
            json.dumps(
                {
                    "event_id": f"cont-{n}",
                    "event_type": "chat.completion",
                    "conversation_id": f"conv_{n:024x}",
                    "occurred_at": "2026-11-23T10:00:00Z",
                    "history": "delta",
                    "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                }
            ).encode()
        )
        engine.is_duplicate(hit, 10**9 + n)
    hit_us = 1e6 * (time.perf_counter() - started) / hits
    store.close()
    del engine, store
    return {
        "store": backend,
        "kind": kind,
        "count": count,
        "restore_us": 1e6 * seconds / count,
        "rss_bytes": resident,
        "disk_bytes": disk,
        "held_bytes": held,
        "lookup_miss_us": miss_us,
        "lookup_hit_us": hit_us,
    }


def extrapolate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steady state at the default settings, from the per-entry figures."""
    defaults = Settings(inkeep_api_key="x")
    by = {(r["store"], r["kind"]): r for r in rows}
    out = []
    for rate in RATES:
        completed = rate * defaults.conversation_state_retention_seconds
        markers = rate * defaults.conversation_state_retention_seconds * MARKER_LIFETIME
        for backend, budget in (
            ("memory", defaults.state_memory_bytes),
            ("sqlite", defaults.state_disk_bytes),
        ):
            c, m = by[(backend, "completed")], by[(backend, "marker")]
            unbounded = completed * c["held_bytes"] + markers * m["held_bytes"]
            # Over the budget, markers past a quarter of it go first; completed take the rest.
            marker_bytes = min(
                markers * m["held_bytes"],
                max(budget * MARKER_SHARE, budget - completed * c["held_bytes"]),
            )
            kept_markers = marker_bytes / m["held_bytes"]
            kept_completed = min(completed, (budget - marker_bytes) / c["held_bytes"])
            out.append(
                {
                    "rate": rate,
                    "store": backend,
                    "unbounded_bytes": unbounded,
                    "budget_bytes": budget,
                    "completed_kept": kept_completed,
                    "completed_hours": kept_completed / rate / 3600,
                    "markers_kept": kept_markers,
                    "marker_days": kept_markers / rate / DAY,
                    # On disk, memory is SQLite's page cache, not a cost per entry.
                    "resident_bytes": kept_completed * c["rss_bytes"]
                    + kept_markers * m["rss_bytes"]
                    if backend == "memory"
                    else max(c["rss_bytes"] * c["count"], m["rss_bytes"] * m["count"]),
                    "disk_bytes": kept_completed * c["disk_bytes"] + kept_markers * m["disk_bytes"],
                    "restore_seconds": (
                        kept_completed * c["restore_us"] + kept_markers * m["restore_us"]
                    )
                    / 1e6,
                }
            )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="Completed-state cost per store (docs/design.md).")
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    values = records(args.seed)
    print(
        f"a completed conversation: {len(values['completed'])} B consolidated record; "
        f"a marker: {len(values['marker'])} B"
    )
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for backend in ("memory", "sqlite"):
            for kind, value in values.items():
                row = one(backend, kind, value, args.count, Path(directory))
                rows.append(row)
                print(
                    f"{backend:6} {kind:9}: {row['rss_bytes']:6.0f} B resident, "
                    f"{row['disk_bytes']:6.0f} B on disk, {row['held_bytes']:6.0f} B held, "
                    f"restore {row['restore_us']:5.1f} µs, lookup miss "
                    f"{row['lookup_miss_us']:4.1f} µs, hit {row['lookup_hit_us']:5.1f} µs",
                    flush=True,
                )
    print("extrapolated steady state at the default settings (not measured at that scale):")
    states = extrapolate(rows)
    for s in states:
        print(
            f"  {s['rate']:3d}/s {s['store']:6}: unbounded {s['unbounded_bytes'] / 2**30:6.1f} GiB;"
            f" budget {s['budget_bytes'] / 2**30:4.2f} GiB keeps completed "
            f"{s['completed_hours']:5.1f} h, markers {s['marker_days']:5.1f} d; "
            f"resident {s['resident_bytes'] / 2**20:4.0f} MiB "
            f"{'(worker)   ' if s['store'] == 'memory' else '(partition)'}, disk "
            f"{s['disk_bytes'] / 2**30:5.2f} GiB, restore {s['restore_seconds']:5.0f} s CPU"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "steady": states}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
