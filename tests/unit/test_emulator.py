"""The emulator over real sockets: auth, limits, schema strictness, upsert, reads, faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgspec
import pytest
from emulator_fixtures import API_KEY

from consumer import payload
from consumer.testing.emulator import (
    DATETIME_WITH_OFFSET,
    Emulator,
    Faults,
    Refused,
    from_args,
    parser,
    validate,
)

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def conversation(conversation_id="conv_1", texts=("hello", "hi there"), **top):
    roles = ["user", "assistant"]
    document = {
        "id": conversation_id,
        "type": "openai",
        "createdAt": "2026-11-23T10:15:02.481Z",
        "updatedAt": "2026-11-23T10:16:00+01:00",
        "messages": [
            {
                "id": f"{conversation_id}-m{i}",
                "role": roles[i % 2],
                "content": text,
                "createdAt": "2026-11-23T10:15:02Z",
            }
            for i, text in enumerate(texts)
        ],
    }
    document.update(top)
    return document


def encode(document) -> bytes:
    return json.dumps(document).encode()


async def post(url, body: bytes, headers=None):
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/conversations", data=body, headers=AUTH if headers is None else headers
        ) as response,
    ):
        return response.status, response.headers, await response.read()


async def get(url, path, headers=None):
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}{path}", headers=AUTH if headers is None else headers) as response,
    ):
        return response.status, response.headers, await response.read()


def problem_of(headers, answer):
    assert headers["Content-Type"].startswith("application/problem+json")
    document = json.loads(answer)
    assert {"title", "status", "detail", "code"} <= document.keys()
    return document


async def test_health_needs_no_key(emulator):
    status, _, answer = await get(emulator.url, "/healthz", headers={})
    assert status == 200
    assert json.loads(answer) == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Bearer "},
    ],
)
async def test_missing_or_wrong_key_gets_401_problem(emulator, headers):
    status, answer_headers, answer = await post(
        emulator.url, encode(conversation()), {**headers, "Content-Type": "application/json"}
    )
    assert status == 401
    assert answer_headers["WWW-Authenticate"] == "Bearer"
    document = problem_of(answer_headers, answer)
    assert document["status"] == 401
    assert document["code"] == "unauthorized"
    assert emulator.conversations == {}
    assert emulator.accepted == []


async def test_accepts_stores_and_answers_the_conversation(emulator):
    body = encode(conversation(userProperties={"id": 42, "identificationType": "COOKIED"}))
    status, headers, answer = await post(emulator.url, body)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert payload.decode(answer) == payload.decode(body)
    assert emulator.accepted == [body]
    assert emulator.conversations["conv_1"] == payload.decode(body)
    assert emulator.posts[-1].status == 200
    assert emulator.posts[-1].conversation_id == "conv_1"
    assert emulator.posts[-1].body_size == len(body)

    status, _, answer = await get(emulator.url, "/conversations/conv_1")
    assert status == 200
    assert payload.decode(answer) == payload.decode(body)


async def test_get_unknown_conversation_is_404_problem(emulator):
    status, headers, answer = await get(emulator.url, "/conversations/nope")
    assert status == 404
    assert problem_of(headers, answer)["code"] == "not_found"


async def test_get_needs_the_key(emulator):
    await post(emulator.url, encode(conversation()))
    status, _, _ = await get(emulator.url, "/conversations/conv_1", headers={})
    assert status == 401


async def test_upsert_replaces_the_message_list_and_merges_nothing(emulator):
    first = conversation(texts=("a", "b", "c"), tags=["one"], properties={"x": 1})
    second = conversation(texts=("z",), tags=["two"])
    assert (await post(emulator.url, encode(first)))[0] == 200
    assert (await post(emulator.url, encode(second)))[0] == 200
    stored = emulator.conversations["conv_1"]
    assert [m.content for m in stored.messages] == ["z"]
    assert stored.tags == ["two"]
    assert stored.properties is None
    assert len(emulator.conversations) == 1
    assert len(emulator.accepted) == 2


async def test_listing_pages_through_conversations(emulator):
    for n in range(3):
        assert (await post(emulator.url, encode(conversation(f"conv_{n}"))))[0] == 200
    status, _, answer = await get(emulator.url, "/conversations?limit=2")
    page = json.loads(answer)
    assert status == 200
    assert (page["total"], page["pageSize"], page["count"]) == (3, 2, 2)
    assert [c["id"] for c in page["conversations"]] == ["conv_0", "conv_1"]
    _, _, answer = await get(emulator.url, "/conversations?limit=2&offset=2")
    assert [c["id"] for c in json.loads(answer)["conversations"]] == ["conv_2"]
    status, headers, answer = await get(emulator.url, "/conversations?limit=zero")
    assert status == 400
    problem_of(headers, answer)


async def test_body_over_the_limit_is_413(emulator):
    body = encode(conversation(texts=("x" * 5000,)))
    emulator.max_body_bytes = len(body) - 1
    status, headers, answer = await post(emulator.url, body)
    assert status == 413
    assert problem_of(headers, answer)["status"] == 413
    emulator.max_body_bytes = len(body)
    assert (await post(emulator.url, body))[0] == 200
    assert emulator.accepted == [body]


async def test_malformed_json_is_400_problem(emulator):
    status, headers, answer = await post(emulator.url, b'{"id": "conv_1", ')
    assert status == 400
    document = problem_of(headers, answer)
    assert document["code"] == "bad_request"
    assert "JSON" in document["detail"]


async def test_wrong_content_type_is_415(emulator):
    headers = {**AUTH, "Content-Type": "text/plain"}
    status, _, _ = await post(emulator.url, encode(conversation()), headers)
    assert status == 415


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.update(type="support_ticket"), "$.type"),
        (lambda d: d.pop("messages"), "messages"),
        (lambda d: d["messages"][0].update(role="tool"), "$.messages[0].role"),
        (lambda d: d["messages"][0].update(content=7), "$.messages[0].content"),
        (lambda d: d.update(tags="docs"), "$.tags"),
        (lambda d: d.update(visibility="secret"), "$.visibility"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["messages"][0].update(toolCalls=[]), "toolCalls"),
        (lambda d: d.update(messages=[]), "$.messages"),
        (lambda d: d.update(createdAt="2026-11-23T10:15:02"), "$.createdAt"),
        (lambda d: d.update(updatedAt="2026-11-23 10:15:02Z"), "$.updatedAt"),
        (lambda d: d["messages"][1].update(createdAt="2026-11-23t10:15:02z"), "$.messages[1]"),
        (lambda d: d.update(userProperties={"id": {"nested": 1}}), "$.userProperties.id"),
        (lambda d: d.update(userProperties={"id": True}), "$.userProperties.id"),
        (lambda d: d.update(userProperties={"userType": 3}), "$.userProperties.userType"),
        (
            lambda d: d["messages"][1].update(
                tool_calls=[{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
            ),
            "$.messages[1].tool_calls[0].type",
        ),
        (
            lambda d: d["messages"][0].update(content=[{"type": "audio", "text": "x"}]),
            "$.messages[0].content[0].type",
        ),
    ],
)
async def test_schema_violations_are_422_naming_the_place(emulator, change, where):
    document = conversation()
    change(document)
    status, headers, answer = await post(emulator.url, encode(document))
    assert status == 422
    problem = problem_of(headers, answer)
    assert problem["code"] == "unprocessable_entity"
    assert where in problem["detail"]
    assert emulator.accepted == []


async def test_everything_the_schema_allows_is_accepted(emulator):
    document = conversation(
        externalId="ext-1",
        externalUrl="https://example.com/c/1",
        projectId="proj",
        integrationId=None,
        supportTicketConversationId="t-1",
        properties={"app": "docs", "nested": {"a": [1, 2]}},
        userProperties={"id": "u1", "userId": 7, "userType": None, "plan": "pro"},
        tags=["docs", "beta"],
        visibility="public",
    )
    document["messages"].append(
        {
            "id": "conv_1-m2",
            "role": "assistant",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
            "name": "bot",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
            "properties": {"model": "gpt-4o"},
            "createdAt": "2026-11-23T10:15:02.123456-05:30",
        }
    )
    status, _, answer = await post(emulator.url, encode(document))
    assert status == 200, answer
    assert emulator.conversations["conv_1"].messages[2].content[1].image_url.detail == "low"


def test_the_date_rule_matches_the_sdk():
    accepted = [
        "2026-11-23T10:15:02Z",
        "2026-11-23T10:15:02.1Z",
        "2026-11-23T10:15:02.123456789+01:00",
        "2026-11-23T10:15:02-0530",
        "2024-02-29T00:00:00Z",
    ]
    refused = [
        "2026-11-23T10:15:02",
        "2026-11-23 10:15:02Z",
        "2026-11-23t10:15:02Z",
        "2026-11-23T10:15:02z",
        "2026-02-29T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23",
        "2026-11-23T10:15:02+01",
        "\uff12\uff10\uff12\uff16-11-23T10:15:02Z",  # full-width digits
    ]
    assert all(DATETIME_WITH_OFFSET.match(s) for s in accepted)
    assert not any(DATETIME_WITH_OFFSET.match(s) for s in refused)


async def test_lenient_mode_ignores_unknown_fields_at_every_depth(tmp_path):
    document = conversation(surprise={"a": 1})
    document["messages"][0]["extra"] = "x"
    document["messages"][0]["content"] = [{"type": "text", "text": "hi", "mood": "calm"}]
    body = encode(document)
    with pytest.raises(Refused, match="unknown field") as strict_refusal:
        validate(body)
    assert strict_refusal.value.status == 422
    async with Emulator(api_keys=[API_KEY], lenient=True) as emu:
        status, _, answer = await post(emu.url, body)
        assert status == 200, answer
        stored = emu.conversations["conv_1"]
        assert stored.messages[0].content == [payload.ContentItem(type="text", text="hi")]
        assert emu.accepted == [body]
        # Lenient is not loose: wrong types are still refused.
        document["messages"][0]["role"] = "tool"
        assert (await post(emu.url, encode(document)))[0] == 422


async def test_record_writes_each_accepted_body_as_one_line(tmp_path):
    record = tmp_path / "bodies.ndjson"
    pretty = json.dumps(conversation("conv_a"), indent=2).encode()
    compact = encode(conversation("conv_b"))
    async with Emulator(api_keys=[API_KEY], record=record) as emu:
        assert (await post(emu.url, pretty))[0] == 200
        assert (await post(emu.url, b"not json"))[0] == 400
        assert (await post(emu.url, compact))[0] == 200
    lines = record.read_bytes().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["conv_a", "conv_b"]
    assert lines[1] == compact
    assert json.loads(lines[0]) == json.loads(pretty)


async def test_status_sequence_is_answered_in_order_then_normal_service(emulator):
    emulator.faults.status_sequence = [503, 429, 200, 599]
    emulator.faults.retry_after = 7
    body = encode(conversation())
    answers = [await post(emulator.url, body) for _ in range(5)]
    assert [a[0] for a in answers] == [503, 429, 200, 599, 200]
    assert answers[1][1]["Retry-After"] == "7"
    assert "Retry-After" not in answers[0][1]
    problem_of(answers[0][1], answers[0][2])
    assert problem_of(answers[3][1], answers[3][2])["status"] == 599
    assert [r.status for r in emulator.posts] == [503, 429, 200, 599, 200]
    assert emulator.accepted == [body, body]


async def test_drop_closes_the_connection_without_an_answer(emulator):
    emulator.faults.drop_next = 2
    body = encode(conversation())
    for _ in range(2):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(emulator.url, body)
    assert (await post(emulator.url, body))[0] == 200
    assert [r.status for r in emulator.posts] == [0, 0, 200]
    assert emulator.accepted == [body]


async def test_a_client_that_gives_up_during_latency_is_not_stored(emulator):
    emulator.faults.delay_sequence = [0.5]
    body = encode(conversation())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with session.post(
                f"{emulator.url}/conversations",
                data=body,
                headers=AUTH,
                timeout=aiohttp.ClientTimeout(total=0.1),
            ):
                pass
    await asyncio.sleep(0.6)
    assert [r.status for r in emulator.posts] == [499]
    assert emulator.accepted == []
    assert (await post(emulator.url, body))[0] == 200


async def test_auth_failing_refuses_the_right_key_until_cleared(emulator):
    body = encode(conversation())
    emulator.faults.auth_failing = True
    status, headers, answer = await post(emulator.url, body)
    assert status == 401
    assert problem_of(headers, answer)["status"] == 401
    emulator.faults.auth_failing = False
    assert (await post(emulator.url, body))[0] == 200


async def test_auth_fail_window_counts_from_start():
    async with Emulator(api_keys=[API_KEY], faults=Faults(auth_fail_window=(0.0, 0.3))) as emu:
        body = encode(conversation())
        assert (await post(emu.url, body))[0] == 401
        await asyncio.sleep(0.35)
        assert (await post(emu.url, body))[0] == 200


async def test_reject_ids_are_answered_422(emulator):
    emulator.faults.reject_ids = {"conv_bad"}
    assert (await post(emulator.url, encode(conversation("conv_bad"))))[0] == 422
    assert (await post(emulator.url, encode(conversation("conv_ok"))))[0] == 200
    assert list(emulator.conversations) == ["conv_ok"]
    assert emulator.posts[0].conversation_id == "conv_bad"


async def test_random_faults_follow_the_seed():
    faults = Faults(fail_rate=0.3, rate_limit_rate=0.3, retry_after=None)
    async with Emulator(api_keys=[API_KEY], faults=faults, seed=7) as emu:
        statuses = [(await post(emu.url, encode(conversation(f"c{n}"))))[0] for n in range(40)]
    assert set(statuses) <= {200, 429, 500, 503}
    assert 200 in statuses
    assert {429, 500} & set(statuses) or {429, 503} & set(statuses)
    assert len(emu.accepted) == statuses.count(200)


def test_flags_build_the_emulator():
    args = parser().parse_args(
        [
            "--port",
            "0",
            "--api-key",
            "a",
            "--api-key",
            "b",
            "--lenient",
            "--fail-rate",
            "0.1",
            "--latency-ms",
            "250",
            "--auth-fail-window",
            "5:10",
            "--retry-after",
            "3",
        ]
    )
    emu = from_args(args)
    assert emu.api_keys == ("a", "b")
    assert emu.lenient
    assert emu.faults.fail_rate == 0.1
    assert emu.faults.latency == 0.25
    assert emu.faults.auth_fail_window == (5.0, 10.0)
    assert emu.faults.retry_after == 3.0
    for bad in (["--fail-rate", "2"], ["--auth-fail-window", "10:5"], ["--auth-fail-window", "x"]):
        with pytest.raises(SystemExit):
            parser().parse_args(bad)


async def test_command_prints_its_url_serves_and_stops_on_sigterm(tmp_path):
    record = tmp_path / "out.ndjson"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "emulator",
        "--port",
        "0",
        "--api-key",
        "k1",
        "--record",
        str(record),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        url = line.decode().strip()
        assert url.startswith("http://127.0.0.1:")
        body = encode(conversation())
        headers = {"Authorization": "Bearer k1", "Content-Type": "application/json"}
        assert (await post(url, body, headers))[0] == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert msgspec.json.decode(record.read_bytes().strip())["id"] == "conv_1"
