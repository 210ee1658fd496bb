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
from hypothesis import given
from hypothesis import strategies as st

from consumer import payload
from consumer.testing.emulator import (
    DATETIME_WITH_OFFSET,
    ApiConversation,
    ApiEvent,
    ApiFeedback,
    ApiFeedbackDetail,
    Emulator,
    Endpoint,
    Faults,
    InvalidBody,
    from_args,
    parser,
    recording_path,
    validate,
    validate_event,
    validate_feedback,
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
    logged = json.loads(answer)
    assert logged["id"] == "conv_1"
    assert logged["userProperties"] == {"id": 42, "identificationType": "COOKIED"}
    assert [m["content"] for m in logged["messages"]] == ["hello", "hi there"]
    assert emulator.accepted == [body]
    assert emulator.conversations["conv_1"] == payload.decode(body)
    assert emulator.posts[-1].status == 200
    assert emulator.posts[-1].conversation_id == "conv_1"
    assert emulator.posts[-1].body_size == len(body)

    status, _, read_back = await get(emulator.url, "/conversations/conv_1")
    assert status == 200
    assert json.loads(read_back) == logged


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
    with pytest.raises(InvalidBody, match="unknown field") as strict_refusal:
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


# --- The answers: the SDK's response models, every field present. ---

CONVERSATION_KEYS = {
    "id",
    "externalId",
    "externalUrl",
    "type",
    "supportTicketConversationId",
    "createdAt",
    "updatedAt",
    "projectId",
    "integrationId",
    "properties",
    "userProperties",
    "tags",
    "visibility",
    "messages",
    "messagesOpenAIFormat",
}
MESSAGE_KEYS = {
    "id",
    "type",
    "externalId",
    "externalUrl",
    "conversationId",
    "createdAt",
    "updatedAt",
    "role",
    "content",
    "name",
    "links",
    "properties",
    "userProperties",
    "tool_calls",
}


async def send(url, path, document, headers=None):
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}{path}", data=encode(document), headers=AUTH if headers is None else headers
        ) as response,
    ):
        return response.status, response.headers, await response.read()


async def test_the_answer_is_the_apis_conversation_with_every_field(emulator):
    status, _, answer = await post(emulator.url, encode(conversation()))
    assert status == 200
    document = json.loads(answer)
    assert document.keys() == CONVERSATION_KEYS
    for key in ("externalId", "externalUrl", "projectId", "integrationId", "visibility", "tags"):
        assert document[key] is None, key
    assert document["createdAt"].startswith("2026-11-23T10:15:02.481")
    for message in document["messages"]:
        assert message.keys() == MESSAGE_KEYS
        assert message["type"] == "openai"
        assert message["conversationId"] == "conv_1"
        assert message["externalId"] is None
        assert message["tool_calls"] is None
    assert document["messagesOpenAIFormat"] == [
        {"role": "user", "name": None, "content": "hello", "tool_calls": None},
        {"role": "assistant", "name": None, "content": "hi there", "tool_calls": None},
    ]
    assert msgspec.json.decode(answer, type=ApiConversation) == emulator.stored["conv_1"]


async def test_ids_and_times_the_client_leaves_out_are_assigned(emulator):
    document = conversation()
    del document["id"], document["createdAt"], document["updatedAt"]
    for message in document["messages"]:
        del message["id"], message["createdAt"]
    status, _, answer = await post(emulator.url, encode(document))
    assert status == 200, answer
    logged = json.loads(answer)
    assert logged["id"] in emulator.conversations
    ids = [m["id"] for m in logged["messages"]]
    assert len(set(ids)) == 2
    assert all(ids)
    assert all(DATETIME_WITH_OFFSET.match(m["createdAt"]) for m in logged["messages"])
    assert DATETIME_WITH_OFFSET.match(logged["createdAt"])
    assert [m.id for m in emulator.conversations[logged["id"]].messages] == ids


async def test_an_upsert_keeps_the_first_times_the_api_assigned(emulator):
    document = conversation()
    del document["createdAt"]
    del document["messages"][0]["createdAt"]
    first = json.loads((await post(emulator.url, encode(document)))[2])
    second = json.loads((await post(emulator.url, encode(document)))[2])
    assert second["createdAt"] == first["createdAt"]
    assert second["messages"][0]["createdAt"] == first["messages"][0]["createdAt"]
    assert second["messages"][0]["updatedAt"] == first["messages"][0]["createdAt"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.update(id=None), "$.id"),
        (lambda d: d["messages"][0].update(id=7), "$.messages[0].id"),
        (lambda d: d["messages"][0].update(links=[{"title": "x"}]), "$.messages[0].links[0]"),
        (
            lambda d: d["messages"][0].update(links=[{"url": "u", "rank": 1}]),
            "$.messages[0].links[0]",
        ),
        (
            lambda d: d["messages"][0].update(links=[{"url": "u", "breadcrumbs": [1]}]),
            "$.messages[0].links[0].breadcrumbs[0]",
        ),
        (
            lambda d: d["messages"][0].update(userProperties={"userId": [1]}),
            "$.messages[0].userProperties.userId",
        ),
    ],
)
async def test_what_the_sdk_refuses_is_422(emulator, change, where):
    document = conversation()
    change(document)
    status, headers, answer = await post(emulator.url, encode(document))
    assert status == 422, answer
    assert where in problem_of(headers, answer)["detail"]


async def test_links_the_sdk_takes_are_kept(emulator):
    document = conversation()
    link = {"url": "https://d/x", "label": None, "type": "documentation", "breadcrumbs": ["a"]}
    document["messages"][1]["links"] = [link]
    status, _, answer = await post(emulator.url, encode(document))
    assert status == 200, answer
    assert json.loads(answer)["messages"][1]["links"] == [link]


async def test_delete_removes_the_conversation_and_what_is_about_it(emulator):
    assert (await post(emulator.url, encode(conversation())))[0] == 200
    feedback = {"type": "positive", "messageId": "conv_1-m1"}
    assert (await send(emulator.url, "/feedback", feedback))[0] == 200
    event = {"type": "message:copied", "entityType": "message", "messageId": "conv_1-m1"}
    assert (await send(emulator.url, "/events", event))[0] == 200
    async with aiohttp.ClientSession() as session:
        async with session.delete(f"{emulator.url}/conversations/conv_1") as response:
            assert response.status == 401
        async with session.delete(f"{emulator.url}/conversations/conv_1", headers=AUTH) as response:
            assert response.status == 200
            assert await response.json() == {
                "success": True,
                "message": "Conversation conv_1 deleted",
            }
        async with session.delete(f"{emulator.url}/conversations/conv_1", headers=AUTH) as response:
            assert response.status == 404
    assert emulator.conversations == {}
    assert emulator.feedback == {}
    assert emulator.events == {}
    assert (await get(emulator.url, "/conversations/conv_1"))[0] == 404


async def test_get_by_external_id(emulator):
    assert (await post(emulator.url, encode(conversation(externalId="ext-9"))))[0] == 200
    status, _, answer = await get(emulator.url, "/conversations/external/ext-9")
    assert status == 200
    assert json.loads(answer)["id"] == "conv_1"
    assert (await get(emulator.url, "/conversations/external/nope"))[0] == 404
    assert (await get(emulator.url, "/conversations/external/ext-9", headers={}))[0] == 401


# --- POST /feedback and POST /events ---

FEEDBACK = {
    "id": "fb_1",
    "type": "negative",
    "messageId": "conv_1-m1",
    "createdAt": "2026-11-23T10:17:00Z",
    "reasons": [{"label": "inaccurate", "details": "wrong version"}],
    "properties": {"source": "widget"},
    "userProperties": {"id": "u1", "plan": "pro"},
}
MESSAGE_EVENT = {
    "type": "message:copied",
    "entityType": "message",
    "messageId": "conv_1-m1",
    "createdAt": "2026-11-23T10:17:00+01:00",
    "properties": {"chars": 120},
}
CONVERSATION_EVENT = {
    "type": "conversation:shared",
    "entityType": "conversation",
    "conversationId": "conv_1",
}


@pytest.fixture
async def logged(emulator):
    assert (await post(emulator.url, encode(conversation())))[0] == 200
    return emulator


async def test_feedback_is_stored_and_answered_as_the_api_does(logged):
    status, _, answer = await send(logged.url, "/feedback", FEEDBACK)
    assert status == 200, answer
    document = json.loads(answer)
    assert document == {
        "id": "fb_1",
        "type": "negative",
        "messageId": "conv_1-m1",
        "createdAt": "2026-11-23T10:17:00Z",
        "reasons": [{"label": "inaccurate", "details": "wrong version"}],
        "properties": {"source": "widget"},
        "userProperties": {"id": "u1", "plan": "pro"},
    }
    assert msgspec.json.decode(answer, type=ApiFeedback) == logged.feedback["fb_1"]
    assert logged.accepted_feedback == [encode(FEEDBACK)]
    assert logged.accepted == [encode(conversation())]
    assert logged.posts_to(Endpoint.FEEDBACK)[-1].conversation_id == "conv_1"

    status, _, answer = await get(logged.url, "/feedback/fb_1")
    assert status == 200
    detail = msgspec.json.decode(answer, type=ApiFeedbackDetail)
    assert detail.conversation == logged.stored["conv_1"]
    assert detail.message.id == "conv_1-m1"
    assert (await get(logged.url, "/feedback/nope"))[0] == 404


async def test_feedback_with_the_same_id_replaces_the_rating(logged):
    assert (await send(logged.url, "/feedback", FEEDBACK))[0] == 200
    assert (await send(logged.url, "/feedback", {**FEEDBACK, "type": "positive"}))[0] == 200
    assert [f.type for f in logged.feedback.values()] == ["positive"]
    minimal = {"type": "positive", "messageId": "conv_1-m0"}
    status, _, answer = await send(logged.url, "/feedback", minimal)
    assert status == 200
    assigned = json.loads(answer)
    assert assigned["id"] in logged.feedback
    assert assigned["id"] != "fb_1"
    assert DATETIME_WITH_OFFSET.match(assigned["createdAt"])
    assert assigned["reasons"] is None
    assert assigned["userProperties"] is None

    status, _, answer = await get(logged.url, "/feedback?limit=1")
    assert status == 200
    page = json.loads(answer)
    assert (page["positiveFeedbackCount"], page["negativeFeedbackCount"]) == (2, 0)
    assert [f["id"] for f in page["positiveFeedback"]] == ["fb_1"]
    assert page["positiveFeedback"][0]["conversation"]["id"] == "conv_1"
    assert page["negativeFeedback"] == []


async def test_feedback_outlives_the_message_an_upsert_dropped(logged):
    assert (await send(logged.url, "/feedback", FEEDBACK))[0] == 200
    assert (await post(logged.url, encode(conversation(texts=("only",)))))[0] == 200
    status, _, answer = await get(logged.url, "/feedback/fb_1")
    assert status == 200
    assert json.loads(answer)["message"]["content"] == "hi there"


async def test_events_about_a_message_a_conversation_and_a_search(logged):
    status, _, answer = await send(logged.url, "/events", MESSAGE_EVENT)
    assert status == 200, answer
    document = json.loads(answer)
    assert document.keys() == {
        "id",
        "type",
        "messageId",
        "createdAt",
        "projectId",
        "integrationId",
        "properties",
        "userProperties",
        "entityType",
    }
    assert (document["projectId"], document["integrationId"]) == (None, None)
    assert document["messageId"] == "conv_1-m1"
    assert msgspec.json.decode(answer, type=ApiEvent) == logged.events[document["id"]]
    status, _, answer = await send(logged.url, "/events", CONVERSATION_EVENT)
    assert status == 200, answer
    assert json.loads(answer)["conversationId"] == "conv_1"
    search = {"type": "search:run", "entityType": "search", "searchQuery": "vat", "id": "ev_s"}
    status, _, answer = await send(logged.url, "/events", search)
    assert status == 200, answer
    assert json.loads(answer)["id"] == "ev_s"
    assert len(logged.events) == 3
    assert [r.conversation_id for r in logged.posts_to(Endpoint.EVENTS)] == [
        "conv_1",
        "conv_1",
        None,
    ]


@pytest.mark.parametrize("path", ["/feedback", "/events"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {API_KEY}"}],
)
async def test_feedback_and_events_need_the_key(logged, path, headers):
    document = FEEDBACK if path == "/feedback" else MESSAGE_EVENT
    status, answer_headers, answer = await send(
        logged.url, path, document, {**headers, "Content-Type": "application/json"}
    )
    assert status == 401
    assert answer_headers["WWW-Authenticate"] == "Bearer"
    assert problem_of(answer_headers, answer)["code"] == "unauthorized"
    assert logged.feedback == {}
    assert logged.events == {}


@pytest.mark.parametrize(
    ("path", "document", "where"),
    [
        ("/feedback", {**FEEDBACK, "rating": "up"}, "rating"),
        ("/feedback", {**FEEDBACK, "type": "meh"}, "$.type"),
        ("/feedback", {**FEEDBACK, "id": None}, "$.id"),
        ("/feedback", {k: v for k, v in FEEDBACK.items() if k != "messageId"}, "messageId"),
        ("/feedback", {**FEEDBACK, "reasons": [{"label": "x"}]}, "$.reasons[0]"),
        ("/feedback", {**FEEDBACK, "createdAt": "2026-11-23T10:17:00"}, "$.createdAt"),
        ("/feedback", {**FEEDBACK, "userProperties": {"id": True}}, "$.userProperties.id"),
        ("/feedback", {**FEEDBACK, "messageId": "no-such-message"}, "$.messageId"),
        ("/events", {**MESSAGE_EVENT, "surprise": 1}, "surprise"),
        ("/events", {**MESSAGE_EVENT, "entityType": "user"}, "$.entityType"),
        ("/events", {**MESSAGE_EVENT, "conversationId": "conv_1"}, "conversationId"),
        ("/events", {**CONVERSATION_EVENT, "conversationId": None}, "$.conversationId"),
        ("/events", {**MESSAGE_EVENT, "messageId": "nope"}, "$.messageId"),
        ("/events", {**CONVERSATION_EVENT, "conversationId": "nope"}, "$.conversationId"),
        ("/events", {**MESSAGE_EVENT, "createdAt": "yesterday"}, "$.createdAt"),
        ("/events", {**MESSAGE_EVENT, "properties": []}, "$.properties"),
    ],
)
async def test_feedback_and_events_the_sdk_refuses_are_422(logged, path, document, where):
    status, headers, answer = await send(logged.url, path, document)
    assert status == 422, answer
    problem = problem_of(headers, answer)
    assert problem["code"] == "unprocessable_entity"
    assert where in problem["detail"]
    assert logged.feedback == {}
    assert logged.events == {}
    assert logged.accepted_feedback == logged.accepted_events == []


async def test_lenient_mode_drops_unknown_keys_of_feedback_and_events():
    async with Emulator(api_keys=[API_KEY], lenient=True) as emu:
        assert (await post(emu.url, encode(conversation())))[0] == 200
        assert (await send(emu.url, "/feedback", {**FEEDBACK, "rating": "up"}))[0] == 200
        assert (await send(emu.url, "/events", {**MESSAGE_EVENT, "surprise": 1}))[0] == 200
        mixed = {**MESSAGE_EVENT, "conversationId": "conv_1", "id": "ev_mixed"}
        assert (await send(emu.url, "/events", mixed))[0] == 200
        assert emu.events["ev_mixed"].conversation_id is None
        assert (await send(emu.url, "/feedback", {**FEEDBACK, "type": "meh"}))[0] == 422


@pytest.mark.parametrize("path", ["/feedback", "/events"])
async def test_feedback_and_events_over_the_limit_are_413(logged, path):
    document = {
        **(FEEDBACK if path == "/feedback" else MESSAGE_EVENT),
        "properties": {"x": "y" * 5000},
    }
    logged.max_body_bytes = len(encode(document)) - 1
    status, headers, _ = await send(logged.url, path, document)
    assert status == 413
    assert headers["Content-Type"].startswith("application/problem+json")
    logged.max_body_bytes = len(encode(document))
    assert (await send(logged.url, path, document))[0] == 200


async def test_shared_faults_stay_on_conversations_unless_asked(logged):
    logged.faults.status_sequence = [503, 503]
    assert (await send(logged.url, "/feedback", FEEDBACK))[0] == 200
    assert (await send(logged.url, "/events", MESSAGE_EVENT))[0] == 200
    assert logged.faults.status_sequence == [503, 503]
    logged.faults.endpoints = frozenset(Endpoint)
    assert (await send(logged.url, "/events", MESSAGE_EVENT))[0] == 503
    assert (await post(logged.url, encode(conversation())))[0] == 503
    assert (await send(logged.url, "/events", MESSAGE_EVENT))[0] == 200


async def test_an_endpoint_can_have_faults_of_its_own(logged):
    logged.endpoint_faults[Endpoint.FEEDBACK] = Faults(
        status_sequence=[429, 500], retry_after=3, drop_next=1, reject_ids={"fb_bad"}
    )
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send(logged.url, "/feedback", FEEDBACK)
    status, headers, answer = await send(logged.url, "/feedback", FEEDBACK)
    assert (status, headers["Retry-After"]) == (429, "3")
    assert problem_of(headers, answer)["status"] == 429
    assert (await send(logged.url, "/feedback", FEEDBACK))[0] == 500
    assert (await post(logged.url, encode(conversation())))[0] == 200
    assert (await send(logged.url, "/events", MESSAGE_EVENT))[0] == 200
    assert (await send(logged.url, "/feedback", {**FEEDBACK, "id": "fb_bad"}))[0] == 422
    assert (await send(logged.url, "/feedback", FEEDBACK))[0] == 200
    assert [r.status for r in logged.posts_to(Endpoint.FEEDBACK)] == [0, 429, 500, 422, 200]
    logged.endpoint_faults[Endpoint.EVENTS] = Faults(auth_failing=True)
    assert (await send(logged.url, "/events", MESSAGE_EVENT))[0] == 401
    assert (await send(logged.url, "/feedback", FEEDBACK))[0] == 200


async def test_each_kind_is_recorded_to_its_own_file(tmp_path):
    record = tmp_path / "bodies.ndjson"
    async with Emulator(api_keys=[API_KEY], record=record) as emu:
        assert (await post(emu.url, encode(conversation())))[0] == 200
        assert (await send(emu.url, "/feedback", FEEDBACK))[0] == 200
        assert (await send(emu.url, "/feedback", {**FEEDBACK, "type": "meh"}))[0] == 422
        assert (await send(emu.url, "/events", MESSAGE_EVENT))[0] == 200
        assert (await send(emu.url, "/events", CONVERSATION_EVENT))[0] == 200
    assert recording_path(record, Endpoint.FEEDBACK) == tmp_path / "bodies.feedback.ndjson"
    assert record.read_bytes() == encode(conversation()) + b"\n"
    assert (tmp_path / "bodies.feedback.ndjson").read_bytes() == encode(FEEDBACK) + b"\n"
    assert (tmp_path / "bodies.events.ndjson").read_bytes().splitlines() == [
        encode(MESSAGE_EVENT),
        encode(CONVERSATION_EVENT),
    ]


def test_the_fault_endpoint_flag():
    emu = from_args(
        parser().parse_args(["--fault-endpoint", "feedback", "--fault-endpoint", "events"])
    )
    assert emu.faults.endpoints == {Endpoint.FEEDBACK, Endpoint.EVENTS}
    assert from_args(parser().parse_args([])).faults.endpoints == {Endpoint.CONVERSATIONS}
    with pytest.raises(SystemExit):
        parser().parse_args(["--fault-endpoint", "healthz"])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
VALIDATORS = (validate, validate_feedback, validate_event)


def taken_or_refused(body: bytes) -> None:
    """Each validator takes the body or refuses it with 400/422 and a reason; nothing else."""
    for check in VALIDATORS:
        refusal: InvalidBody | None = None
        try:
            check(body)
        except InvalidBody as exc:
            refusal = exc
        if refusal is not None:
            assert refusal.status in {400, 422}
            assert refusal.detail


@given(st.binary(max_size=200))
def test_hostile_bytes_are_refused_never_crash(body):
    taken_or_refused(body)


@given(JSON)
def test_any_json_is_taken_or_refused_never_crash(value):
    taken_or_refused(json.dumps(value).encode())


@given(
    st.sampled_from([conversation(), FEEDBACK, MESSAGE_EVENT, CONVERSATION_EVENT]),
    st.text(max_size=20),
    JSON,
)
def test_a_valid_body_with_one_key_changed_is_taken_or_refused(document, key, value):
    changed = {**document, key: value}
    taken_or_refused(json.dumps(changed).encode())
    if "messages" in document:
        message = {**document["messages"][0], key: value}
        taken_or_refused(json.dumps({**document, "messages": [message]}).encode())
