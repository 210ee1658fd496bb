"""`inkeep-consumer render`: events in, the request bodies the worker would send out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from consumer import payload, render

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "tests" / "conformance" / "check.mjs"


def value(
    event_id: str, cid: str, messages: list, reply: str | None = None, **extra: object
) -> str:
    event: dict = {
        "event_id": event_id,
        "event_type": "chat.completion",
        "conversation_id": cid,
        "occurred_at": "2026-11-23T10:15:02.481Z",
        "request": {"model": "gpt-4o", "messages": messages},
        **extra,
    }
    if reply is not None:
        event["response"] = {
            "id": f"chatcmpl-{event_id}",
            "created": 1795428902,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": reply},
                }
            ],
            "usage": {"prompt_tokens": 41, "completion_tokens": 112, "total_tokens": 153},
        }
    return json.dumps(event)


SYSTEM = {"role": "system", "content": "You answer questions about Acme's docs."}
Q1 = {"role": "user", "content": "How do I rotate an API key?"}
A1 = {"role": "assistant", "content": "Open Settings → API keys."}
Q2 = {
    "role": "user",
    "content": [
        {"type": "text", "text": "And this screen?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/s.png"}},
    ],
}

LINES = [
    value(
        "e1",
        "conv_b",
        [SYSTEM, Q1],
        A1["content"],
        conversation={
            "user_properties": {"id": "user_42", "identificationType": "COOKIED"},
            "properties": {"app": "docs-widget"},
            "tags": ["docs"],
        },
    ),
    value("e2", "conv_a", [{"role": "user", "content": "hi"}], "Hello!", history="delta"),
    "{not json",
    "",
    value("e3", "conv_b", [SYSTEM, Q1, A1, Q2], "That is the key list.", latency_ms=1840),
    json.dumps(
        {
            "event_id": "e4",
            "event_type": "conversation.ended",
            "conversation_id": "conv_b",
            "occurred_at": "2026-11-23T10:20:00Z",
        }
    ),
    value("e1", "conv_b", [SYSTEM, Q1], A1["content"]),  # A producer retry.
    json.dumps(
        {
            "event_id": "e5",
            "event_type": "chat.deleted",
            "conversation_id": "conv_a",
            "occurred_at": "2026-11-23T10:20:00Z",
        }
    ),
]


def test_render_writes_one_body_per_conversation_and_reports_bad_lines(tmp_path, capsys):
    source = tmp_path / "events.ndjson"
    source.write_text("\n".join(LINES) + "\n")
    assert render.main([str(source)]) == 1
    out, err = capsys.readouterr()
    bodies = [json.loads(line) for line in out.splitlines()]
    assert [body["id"] for body in bodies] == ["conv_b", "conv_a"]
    conv_b, conv_a = bodies
    assert [(m["role"], m["content"]) for m in conv_b["messages"]] == [
        ("system", SYSTEM["content"]),
        ("user", Q1["content"]),
        ("assistant", A1["content"]),
        (
            "user",
            [
                {"type": "text", "text": "And this screen?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/s.png", "detail": "auto"},
                },
            ],
        ),
        ("assistant", "That is the key list."),
    ]
    assert conv_b["userProperties"] == {"id": "user_42", "identificationType": "COOKIED"}
    assert conv_b["updatedAt"] == "2026-11-23T10:20:00Z"
    assert [(m["role"], m["content"]) for m in conv_a["messages"]] == [
        ("user", "hi"),
        ("assistant", "Hello!"),
    ]
    for line in out.splitlines():
        payload.decode(line.encode())
    errors = err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("line 3: not_json: ")
    assert errors[1].startswith("line 8: unknown_event_type: ")


def test_render_reads_stdin_through_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "render", "-"],
        input="\n".join(LINES[:2]).encode(),
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [
        "conv_b",
        "conv_a",
    ]


def test_render_of_nothing_writes_nothing(tmp_path, capsys):
    source = tmp_path / "empty.ndjson"
    source.write_text("\n\n")
    assert render.main([str(source)]) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.conformance
def test_rendered_bodies_pass_the_official_sdk_schema(tmp_path):
    node = shutil.which("node")
    assert node is not None, "the conformance test needs node"
    assert (CHECKER.parent / "node_modules" / "@inkeep").is_dir(), "run scripts/bootstrap"
    source = tmp_path / "events.ndjson"
    source.write_text("\n".join(LINES[i] for i in (0, 1, 4, 5, 6)) + "\n")
    rendered = subprocess.run(
        [sys.executable, "-m", "consumer", "render", str(source)],
        capture_output=True,
        cwd=ROOT,
        check=True,
    ).stdout
    bodies = tmp_path / "bodies.ndjson"
    bodies.write_bytes(rendered)
    checked = subprocess.run(
        [node, str(CHECKER), str(bodies)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().endswith("2 passed, 0 failed")
