"""The fixture every integration test starts workers through, so none outlives its test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import Worker

from consumer.testing.emulator import Emulator


@pytest.fixture
def workers(tmp_path: Path):
    """`workers(bootstrap, topic, emulator, **fields)`: a Worker, named w0, w1, ... by default."""
    started: list[Worker] = []

    def make(bootstrap: str, topic: str, emulator: Emulator, **kw: Any) -> Worker:
        kw.setdefault("name", f"w{len(started)}")
        worker = Worker(bootstrap, topic, emulator.url, tmp_path, **kw)
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop_now()
