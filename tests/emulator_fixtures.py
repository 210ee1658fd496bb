"""Fixtures for the analytics API emulator.

Every body any emulator fixture accepts during a run is appended, as it is
accepted, to one NDJSON file of that run (`accepted_bodies_path`), so the
conformance test can check them with the official SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from consumer.testing.emulator import Emulator

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["API_KEY", "accepted_bodies_path", "emulator"]

API_KEY = "test-key"
ACCEPTED_BODIES_NAME = "accepted-bodies.ndjson"


@pytest.fixture(scope="session", autouse=True)
def accepted_bodies_path(tmp_path_factory) -> Path:
    """The run's NDJSON file of accepted bodies, in the run's own temporary folder
    (not the shared cache), so runs side by side do not mix their bodies."""
    path = tmp_path_factory.mktemp("emulator") / ACCEPTED_BODIES_NAME
    path.write_bytes(b"")
    return path


@pytest.fixture
async def emulator(accepted_bodies_path: Path):
    emu = Emulator(api_keys=(API_KEY,), record=accepted_bodies_path)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
