"""Fixtures for the analytics API emulator.

Every body any emulator fixture accepts during a run is appended, as it is
accepted, to NDJSON files of that run: conversations to `accepted_bodies_path`,
feedback and events beside it (`recorded_path`), so the conformance checks can
run the official SDK over them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from consumer.testing.emulator import Emulator, Endpoint, recording_path

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["API_KEY", "accepted_bodies_path", "emulator", "recorded_path"]

API_KEY = "test-key"
ACCEPTED_BODIES_NAME = "accepted-bodies.ndjson"


@pytest.fixture(scope="session", autouse=True)
def accepted_bodies_path(tmp_path_factory) -> Path:
    """The run's NDJSON file of accepted bodies, in the run's own temporary folder
    (not the shared cache), so runs side by side do not mix their bodies."""
    path = tmp_path_factory.mktemp("emulator") / ACCEPTED_BODIES_NAME
    path.write_bytes(b"")
    return path


def recorded_path(accepted_bodies_path: Path, endpoint: Endpoint) -> Path:
    """The run's NDJSON file of the bodies accepted at `endpoint` (it may not exist yet)."""
    return recording_path(accepted_bodies_path, endpoint)


@pytest.fixture
async def emulator(accepted_bodies_path: Path):
    emu = Emulator(api_keys=(API_KEY,), record=accepted_bodies_path)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
