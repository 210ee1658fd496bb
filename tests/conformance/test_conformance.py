"""The bodies the worker sends pass the official Inkeep Analytics SDK's own schema.

The examples in docs/examples are rendered with `inkeep-consumer render` (the worker's
own engine) and checked by check.mjs beside this file; deliberately broken bodies show
that the check can fail; and at the end of the run, every body the API emulator
accepted during the run is checked too.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from emulator_fixtures import recorded_path

from consumer.testing.emulator import Endpoint

pytestmark = pytest.mark.conformance

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXAMPLES = ROOT / "docs" / "examples"
FEEDBACK_EXAMPLE = EXAMPLES / "feedback.ndjson"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.ndjson") if p.name != "invalid.ndjson")

# Messages each example conversation logs: every message once, tool results folded
# into the assistant message that called the tool.
EXPECTED_MESSAGES = {
    "conv_docs_7f3a2c": 9,
    "conv_onboard_21c9e0": 7,
    "conv_orders_5d10b8": 7,
    "conv_vat_legacy_0b77": 3,
    "conv_billing_93e1f4": 11,
    "conv_sdk_chat_4a1e": 8,
    "conv_sdk_responses_8b2d": 8,
    "conv_feedback_2e7d": 5,
}

Check = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture(scope="session")
def check(node: str) -> Check:
    def run(bodies: bytes, kind: str = "conversations") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [node, "check.mjs", "--kind", kind],
            cwd=HERE,
            input=bodies,
            capture_output=True,
            timeout=120,
            check=False,
        )

    return run


def summary(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode().strip().splitlines()[-1]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[bytes]]:
    """Each example file's bodies, as `inkeep-consumer render` prints them."""
    out = {}
    for path in EXAMPLE_FILES:
        result = subprocess.run(
            [sys.executable, "-m", "consumer", "render", str(path)],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        out[path.name] = result.stdout.splitlines()
    return out


@pytest.fixture(scope="session", autouse=True)
def emulator_bodies_are_checked_at_the_end(check: Check, accepted_bodies_path: Path):
    """After every test of the run, the bodies the emulator accepted must pass the check too:
    conversations, feedback and events, each against its own SDK schema."""
    yield
    files = {
        "conversations": accepted_bodies_path,
        "feedback": recorded_path(accepted_bodies_path, Endpoint.FEEDBACK),
        "events": recorded_path(accepted_bodies_path, Endpoint.EVENTS),
    }
    for kind, path in files.items():
        if not path.is_file() or path.stat().st_size == 0:
            continue
        result = check(path.read_bytes(), kind)
        assert result.returncode == 0, (
            f"{kind} bodies the emulator accepted fail the SDK check ({path}):\n"
            + result.stdout.decode()
        )


@pytest.mark.parametrize("name", [p.name for p in EXAMPLE_FILES])
def test_every_example_renders_to_bodies_the_sdk_accepts(check: Check, rendered, name: str):
    bodies = rendered[name]
    conversations = {
        json.loads(line)["conversation_id"] for line in (EXAMPLES / name).read_bytes().splitlines()
    }
    assert sorted(json.loads(body)["id"] for body in bodies) == sorted(conversations)
    result = check(b"\n".join(bodies) + b"\n")
    assert result.returncode == 0, result.stdout.decode()
    assert summary(result) == f"{len(bodies)} passed, 0 failed"


def test_the_examples_log_every_message_once(rendered):
    logged = {}
    for bodies in rendered.values():
        for line in bodies:
            body = json.loads(line)
            seen = [
                (m["role"], json.dumps(m["content"]), json.dumps(m.get("tool_calls")))
                for m in body["messages"]
            ]
            assert len(seen) == len(set(seen)), f"{body['id']} logs a message twice"
            logged[body["id"]] = len(seen)
    assert logged == EXPECTED_MESSAGES


def _broken(body: dict[str, Any]) -> list[tuple[str, dict[str, Any] | str, str]]:
    """(what, broken body, what the checker must say), each from one good body."""

    def changed(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
        out = copy.deepcopy(body)
        change(out)
        return out

    def dup_id(b: dict[str, Any]) -> None:
        b["messages"][1]["id"] = b["messages"][0]["id"]

    huge = "x" * 2_000_001
    return [
        (
            "unknown top-level key",
            changed(lambda b: b.update(summary="…")),
            "$.summary: not part of the API's schema",
        ),
        (
            "snake_case top-level name",
            changed(lambda b: b.update(user_properties={"id": "u"})),
            "$.user_properties: not part of the API's schema",
        ),
        (
            "camelCase tool calls",
            changed(
                lambda b: b["messages"][2].update(toolCalls=b["messages"][2].pop("tool_calls"))
            ),
            "$.messages[2].toolCalls: not part of the API's schema",
        ),
        (
            "role tool",
            changed(lambda b: b["messages"][1].update(role="tool")),
            "$.messages.1.role: Invalid enum value",
        ),
        (
            "missing content",
            changed(lambda b: b["messages"][0].pop("content")),
            "$.messages.0.content",
        ),
        (
            "date without offset",
            changed(lambda b: b.update(createdAt="2026-11-23T16:40:12")),
            "$.createdAt: Invalid datetime",
        ),
        (
            "not a date",
            changed(lambda b: b["messages"][0].update(createdAt="yesterday")),
            "$.messages.0.createdAt: Invalid datetime",
        ),
        (
            "no messages",
            changed(lambda b: b.update(messages=[])),
            "$.messages: needs at least one message",
        ),
        ("a message id twice", changed(dup_id), "appears more than once"),
        (
            "over 2 MB",
            changed(lambda b: b["messages"][0].update(content=huge)),
            "over the API's 2000000-byte limit",
        ),
        (
            "another conversation type",
            changed(lambda b: b.update(type="support_ticket")),
            '$.type: expected "openai"',
        ),
        ("not JSON", '{"id": "conv_orders_5d10b8", "type": "openai", "messages": [', "not JSON"),
    ]


def test_the_check_rejects_broken_bodies(check: Check, rendered):
    good = json.loads(next(b for b in rendered["tool-calls.ndjson"]))
    assert good["messages"][2].get("tool_calls"), "the tool-call example changed shape"
    cases = _broken(good)
    lines = [case if isinstance(case, str) else json.dumps(case) for _, case, _ in cases]
    result = check(("\n".join(lines) + "\n").encode())
    output = result.stdout.decode()
    assert result.returncode == 1
    assert summary(result) == f"0 passed, {len(cases)} failed"
    reports = {
        int(line.split()[1]): line for line in output.splitlines() if line.startswith("body ")
    }
    for number, (what, _, expected) in enumerate(cases, 1):
        assert expected in reports.get(number, ""), f"{what}: {reports.get(number)!r}"


def test_the_check_fails_on_empty_input(check: Check):
    result = check(b"\n")
    assert result.returncode == 1
    assert summary(result) == "0 passed, 0 failed"


@pytest.mark.parametrize("kind", ["feedback", "events"])
def test_feedback_and_event_bodies_pass_their_own_schema(check: Check, kind: str):
    """The feedback example renders to bodies the SDK accepts; broken ones are refused."""
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "render", "--kind", kind, str(FEEDBACK_EXAMPLE)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    bodies = result.stdout.splitlines()
    assert len(bodies) >= 2
    good = check(result.stdout, kind)
    assert good.returncode == 0, good.stdout.decode()
    assert summary(good) == f"{len(bodies)} passed, 0 failed"
    first = json.loads(bodies[0])
    broken = [
        {**first, "type": 7},
        {**first, "unknownToTheApi": True},
        {k: v for k, v in first.items() if k != "type"},
    ]
    bad = check(("\n".join(json.dumps(b) for b in broken) + "\n").encode(), kind)
    assert bad.returncode == 1
    assert summary(bad) == f"0 passed, {len(broken)} failed"
