"""History alignment alone: `merge.plan_completion` over the long workload's events.

    .venv/bin/python bench/align.py

Each completion is planned against the conversation as it was before it, so the
figure is the merge step of `apply` with nothing else around it (min of 3 runs,
process CPU time per event).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine import SHAPES  # noqa: E402
from consumer import events, merge, state  # noqa: E402
from consumer.engine import EngineConfig, PartitionEngine  # noqa: E402
from consumer.testing import workload  # noqa: E402


def main() -> None:
    shape = SHAPES[sys.argv[1] if len(sys.argv) > 1 else "long"]
    decoded = [events.decode_event(v) for _, v in workload.generate(10, 1, shape=shape)]
    engine = PartitionEngine(EngineConfig())
    cases = []
    for offset, event in enumerate(decoded):
        conv = engine._open.get(event.conversation_id)  # noqa: SLF001
        if conv is not None and isinstance(event, events.ChatCompletion):
            cases.append((conv, event, len(conv.entries)))
        engine.apply(event, offset, float(offset))
    occurred = dt.datetime.now(dt.UTC)
    best = float("inf")
    for _ in range(3):
        began = time.process_time()
        for conv, event, count in cases:
            before = state.ConversationState(
                id=conv.id,
                opened_at=0.0,
                last_event_at=0.0,
                entries=conv.entries[:count],
                fingerprints=conv.fingerprints[:count],
            )
            merge.plan_completion(before, event, occurred)
        best = min(best, time.process_time() - began)
    print(f"{len(cases):,} completions: {best / len(cases) * 1e6:.1f} us each")


if __name__ == "__main__":
    main()
