"""The official Inkeep Analytics SDK, as a real client, works against the emulator.

sdk_client.mjs beside this file drives the emulator's URL with the SDK: every
request it sends must be taken, and every answer must pass the SDK's own
response models (it throws ResponseValidationError otherwise) or map to its
error classes (Unauthorized, UnprocessableEntity, NotFound).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from emulator_fixtures import API_KEY, recorded_path

from consumer.testing import emulator as emulator_module
from consumer.testing.emulator import Emulator, Endpoint

pytestmark = pytest.mark.conformance

HERE = Path(__file__).resolve().parent
STEPS = 11


async def run_sdk(node: str, url: str) -> tuple[int, list[str]]:
    """Runs the SDK client without blocking the loop the emulator answers on."""
    process = await asyncio.create_subprocess_exec(
        node,
        "sdk_client.mjs",
        url,
        API_KEY,
        cwd=HERE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    lines = (out.decode() + err.decode()).splitlines()
    return process.returncode, lines


async def test_the_sdk_is_served_and_reads_every_answer(
    node: str, emulator: Emulator, accepted_bodies_path: Path
):
    returncode, lines = await run_sdk(node, emulator.url)
    report = "\n".join(lines)
    assert returncode == 0, report
    assert lines[-1] == f"{STEPS} passed, 0 failed", report
    assert not [line for line in lines if line.startswith("FAIL")]

    statuses = {endpoint: [r.status for r in emulator.posts_to(endpoint)] for endpoint in Endpoint}
    assert statuses[Endpoint.CONVERSATIONS] == [200, 200, 422]
    assert statuses[Endpoint.FEEDBACK] == [200, 401, 422]
    assert statuses[Endpoint.EVENTS] == [200, 200, 401]
    assert emulator.conversations == {}, "the last step deletes the conversation"
    assert emulator.feedback == {}
    assert emulator.events == {}
    sent = json.loads(emulator.accepted[0])
    assert "id" not in sent["messages"][1], "the SDK sent a message without an id"
    assert json.loads(emulator.accepted_feedback[0])["type"] == "negative"
    assert [json.loads(b)["entityType"] for b in emulator.accepted_events] == [
        "message",
        "conversation",
    ]
    for endpoint, bodies in (
        (Endpoint.FEEDBACK, emulator.accepted_feedback),
        (Endpoint.EVENTS, emulator.accepted_events),
    ):
        recorded = recorded_path(accepted_bodies_path, endpoint).read_bytes().splitlines()
        assert set(bodies) <= set(recorded), endpoint


async def test_an_answer_that_drifts_from_the_sdks_model_fails_the_client(
    node: str, monkeypatch: pytest.MonkeyPatch
):
    """Guards the guard: a conversation answer missing one nullable field is caught."""
    encoder = emulator_module._encoder

    class Drifting:
        def encode(self, value: Any) -> bytes:
            document = json.loads(encoder.encode(value))
            if isinstance(document, dict) and "messagesOpenAIFormat" in document:
                del document["externalUrl"]
            return json.dumps(document).encode()

    monkeypatch.setattr(emulator_module, "_encoder", Drifting())
    async with Emulator(api_keys=(API_KEY,)) as emulator:
        returncode, lines = await run_sdk(node, emulator.url)
    report = "\n".join(lines)
    assert returncode == 1, report
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed, report
    assert failed[0].startswith("FAIL log a conversation"), report
    assert "ResponseValidationError" in failed[0]
    assert "externalUrl" in failed[0]
