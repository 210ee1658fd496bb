"""What an operator sees: probes, metrics and logs of a real run, and a wrong setting at start.

One worker run carries every kind of traffic an operator must be able to tell
apart (ended and idle conversations, a retried 5xx, a refused conversation, bad
records, a mis-keyed record, a duplicate), and the probes, the metrics and the
log lines are checked against what the test knows it produced.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import msgspec
import pytest
from harness import (
    API_KEY,
    REPO,
    Worker,
    all_logged,
    conversation,
    end_offsets,
    expected_bodies,
    free_port,
    fresh,
    interleave,
    produce,
    read_all,
    topic_names,
    wait_for,
)
from kafka_fixtures import make_topic
from prometheus_client.parser import text_string_to_metric_families

from consumer import metrics

pytestmark = pytest.mark.integration

LEVELS = {"debug", "info", "warning", "error", "critical"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def with_marker(events: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    """The same events with `marker` in every message text (requests and replies)."""
    out = json.loads(json.dumps(events))
    for event in out:
        for message in event.get("request", {}).get("messages", []):
            message["content"] = f"{message['content']} {marker}"
        for choice in (event.get("response") or {}).get("choices", []):
            choice["message"]["content"] = f"{choice['message']['content']} {marker}"
    return out


async def get(url: str) -> tuple[int, str, str]:
    """(status, content type, text) of a GET."""
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return r.status, r.content_type, await r.text()


async def scrape(worker: Worker) -> tuple[set[str], Samples]:
    """The metric family names and every sample of the worker's /metrics."""
    status, kind, text = await get(f"http://127.0.0.1:{worker.http_port}/metrics")
    assert (status, kind) == (200, "text/plain")
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def series(samples: Samples, name: str, label: str) -> dict[str, float]:
    """`name`'s samples by the value of one label."""
    return {dict(have)[label]: v for (n, have), v in samples.items() if n == name}


async def test_probes_metrics_and_logs_of_a_run(kafka, emulator, workers, tmp_path):
    bootstrap = kafka.bootstrap_servers
    topic, group = fresh("obs"), fresh("g")
    await make_topic(bootstrap, 3, name=topic)
    marker = f"CONTENT-MARKER-{uuid.uuid4().hex}"

    ended = [conversation(f"end{i}", 3, ended=True) for i in range(6)]
    idle = [conversation(f"idle{i}", 2, ended=False, history="delta") for i in range(4)]
    refused = conversation("refused", 2, ended=True)
    stream = with_marker(interleave([*ended, *idle, refused]), marker)
    duplicate = next(e for e in stream if e["event_id"] == "end0-e1")
    stream.insert(stream.index(duplicate) + 1, duplicate)
    mis_keyed = with_marker(conversation("mis-keyed", 1, ended=True), marker)
    good = [*stream, *mis_keyed]
    bad_value = json.dumps({**good[0], "event_id": 42}).encode()
    records: list[Any] = [
        *stream,
        *((b"another-key", json.dumps(e).encode()) for e in mis_keyed),
        (b"broken", f'{{"not json {marker}'.encode()),
        (b"broken", bad_value),
    ]
    expected = expected_bodies(good, tmp_path)
    del expected["refused"]
    flushed_ended = len(ended) + 1  # And the mis-keyed one.
    flushed_idle = len(idle)

    emulator.faults.status_sequence = [500, 503]
    emulator.faults.reject_ids = {"refused"}
    worker = workers(bootstrap, topic, emulator, group=group).start()
    base = f"http://127.0.0.1:{worker.http_port}"

    readiness: list[tuple[int, str, str]] = []

    async def ready() -> bool:
        try:
            readiness.append(await get(f"{base}/readyz"))
        except aiohttp.ClientError:
            return False
        return readiness[-1][0] == 200

    await wait_for(ready, 30, "/readyz to answer 200")
    _, kind, text = readiness[-1]
    assert kind == "application/json"
    assert json.loads(text) == {
        "ready": True,
        "failing": [],
        "checks": {
            "assigned": True,
            "state_restored": True,
            "api_auth": True,
            "api_reachable": True,
        },
    }
    for status, kind, text in readiness[:-1]:
        assert status == 503, f"/readyz answered {status} before it was ready"
        assert kind == "application/json"
        assert json.loads(text)["failing"]
    status, kind, text = await get(f"{base}/healthz")
    assert (status, kind) == (200, "application/json")
    health = json.loads(text)
    assert health["alive"] is True
    assert 0 <= health["seconds_since_heartbeat"] < 60

    await produce(bootstrap, topic, records)
    await wait_for(lambda: all_logged(emulator, expected), 60, "every conversation logged")

    dead: list[Any] = []

    async def dead_lettered() -> bool:
        dead[:] = await read_all(bootstrap, f"{topic}.dlq", timeout=15)
        return len(dead) >= 3

    await wait_for(dead_lettered, 30, "two bad records and the refused conversation dead-lettered")
    assert len(dead) == 3
    ends = {str(p): end for p, end in (await end_offsets(bootstrap, topic)).items()}
    assert sum(ends.values()) == len(records)

    async def settled() -> bool:
        _, samples = await scrape(worker)
        lag = series(samples, "inkeep_consumer_consumer_lag", "partition")
        return (
            value(samples, "inkeep_consumer_open_conversations") == 0
            and value(samples, "inkeep_consumer_pending_flushes") == 0
            and lag == dict.fromkeys(ends, 0.0)
        )

    await wait_for(settled, 20, "no open conversation and no lag on any partition")
    names, samples = await scrape(worker)

    def count(name: str, **labels: str) -> float:
        return value(samples, f"inkeep_consumer_{name}", **labels)

    declared = {family.name for family in metrics.REGISTRY.collect()}
    assert declared <= names, f"families missing from /metrics: {sorted(declared - names)}"
    consumed = series(samples, "inkeep_consumer_records_consumed_total", "partition")
    assert consumed == {p: float(end) for p, end in ends.items()}
    assert count("records_consumed_total", topic=topic) == len(records)
    assert count("records_invalid_total", kind="not_json") == 1
    assert count("records_invalid_total", kind="schema") == 1
    assert count("records_invalid_total") == 2
    assert count("records_mis_keyed_total") == len(mis_keyed)
    assert count("events_duplicate_total") == 1
    assert count("dead_lettered_total", what="record") == 2
    assert count("dead_lettered_total", what="conversation", reason="rejected") == 1
    assert count("conversations_flushed_total", trigger="ended") == flushed_ended
    assert count("conversations_flushed_total", trigger="idle") == flushed_idle
    assert count("conversations_flushed_total") == flushed_ended + flushed_idle
    assert count("flush_latency_seconds_count") == flushed_ended + flushed_idle
    assert count("api_requests_total", status="200") == len(emulator.accepted) == len(expected)
    assert count("api_requests_total", status="500") == 1
    assert count("api_requests_total", status="503") == 1
    assert count("api_requests_total", status="422") == 1
    assert count("api_requests_total") == len(emulator.posts)
    assert count("api_retries_total", reason="server_error") == 2
    assert count("flushes_refused_total") == 0
    assert count("conversations_truncated_total") == 0
    assert count("paused", reason="backpressure") == 0
    assert count("paused", reason="auth") == 0
    assert count("auth_failing") == 0
    assert count("state_records_written_total") > 0
    assert count("offsets_committed_total") > 0

    code, _ = await worker.terminate()
    assert code == 0

    # Logs: one JSON object a line, the fields that say where, and nothing secret.
    assert worker.log_path is not None
    raw = worker.log_path.read_text()
    assert marker not in raw, "message content reached the logs"
    assert API_KEY not in raw, "the API key reached the logs"
    lines: list[dict[str, Any]] = []
    for number, text in enumerate(raw.splitlines(), 1):
        try:
            line = msgspec.json.decode(text)
        except msgspec.DecodeError:
            pytest.fail(f"log line {number} is not JSON: {text[:300]}")
        assert isinstance(line, dict), f"log line {number} is not an object: {text[:300]}"
        assert isinstance(line.get("event"), str), f"line {number} has no event: {text[:300]}"
        assert line["event"]
        assert line.get("level") in LEVELS - {"debug"}, f"line {number}: level {line.get('level')}"
        stamp = datetime.fromisoformat(line["timestamp"])
        assert stamp.utcoffset() == timedelta(0), f"line {number}: not UTC: {line['timestamp']}"
        lines.append(line)

    def named(event: str) -> list[dict[str, Any]]:
        return [line for line in lines if line["event"] == event]

    flushed = named("conversation_flushed")
    assert {line["conversation_id"] for line in flushed} == set(expected)
    for line in flushed:
        assert isinstance(line["partition"], int)
        assert line["status"] == 200
        assert line["trigger"] in {"ended", "idle"}
    [rejected] = named("conversation_rejected")
    assert rejected["conversation_id"] == "refused"
    assert isinstance(rejected["partition"], int)
    mis = named("record_mis_keyed")
    assert len(mis) == len(mis_keyed)
    for line in mis:
        assert line["conversation_id"] == "mis-keyed"
        assert line["topic"] == topic
        assert isinstance(line["partition"], int)
        assert isinstance(line["offset"], int)
    invalid = named("record_invalid")
    assert len(invalid) == 2
    for line in invalid:
        assert line["topic"] == topic
    sources = {
        (int(h["source.partition"]), int(h["source.offset"]))
        for h in ({k: v.decode() for k, v in r.headers} for r in dead)
        if "source.offset" in h
    }
    assert {(line["partition"], line["offset"]) for line in invalid} == sources
    # Every line about a record or a flush says where it belongs, whatever its event.
    about = [line for line in lines if line["event"].startswith(("conversation_", "flush"))]
    assert len(about) >= len(expected) + 1
    for line in about:
        assert isinstance(line.get("conversation_id"), str), f"{line['event']}: no conversation"
        assert isinstance(line.get("partition"), int), f"{line['event']}: no partition"
    for line in (line for line in lines if line["event"].startswith("record_")):
        assert line.get("topic") == topic, f"{line['event']}: no topic"
        assert isinstance(line.get("partition"), int), f"{line['event']}: no partition"
        assert isinstance(line.get("offset"), int), f"{line['event']}: no offset"


def cli_env(**settings: str | None) -> dict[str, str]:
    """An environment for `python -m consumer run` with nothing listening where it points."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "INKEEP_"))}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "KAFKA_TOPIC": "chat-completions",
            "INKEEP_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
            "INKEEP_API_KEY": API_KEY,
            "HTTP_PORT": str(free_port()),
            "LOG_FORMAT": "json",
        }
    )
    for name, setting in settings.items():
        if setting is None:
            env.pop(name, None)
        else:
            env[name] = setting
    return env


def run_cli(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("setting", "wrong"),
    [
        ("CONVERSATION_IDLE_TIMEOUT_SECONDS", "abc"),
        ("INKEEP_API_KEY", None),
        ("HTTP_PORT", "eighty"),
    ],
)
def test_a_wrong_setting_stops_the_start_naming_it(setting, wrong):
    result = run_cli(cli_env(**{setting: wrong}))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert "configuration error" in lines[0]
    assert setting in lines[0]
    assert API_KEY not in result.stderr


async def test_a_missing_input_topic_stops_the_start_naming_it(kafka):
    """Found only once connected: exit 2 and one plain line naming KAFKA_TOPIC, no traceback.

    The worker's own JSON log lines (it stops what it started) may come before it.
    """
    topic = fresh("missing")
    env = cli_env(KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers, KAFKA_TOPIC=topic)
    result = run_cli(env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    plain = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(plain) == 1, f"expected one plain line, got:\n{result.stderr}"
    assert plain[0].startswith("inkeep-consumer: configuration error: KAFKA_TOPIC:")
    assert topic in plain[0]
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            assert isinstance(msgspec.json.decode(line)["event"], str)
    assert API_KEY not in result.stderr
    assert not {topic, f"{topic}.state", f"{topic}.dlq"} & await topic_names(
        kafka.bootstrap_servers
    )


async def test_readiness_holds_through_scattered_5xx_and_turns_once_in_an_outage(
    kafka, emulator, workers
):
    """A 10 % 5xx rate never turns the worker not-ready; an outage does, once, after 30 s."""
    bootstrap = kafka.bootstrap_servers
    topic = fresh("ready")
    await make_topic(bootstrap, 2, name=topic)
    worker = workers(bootstrap, topic, emulator, group=fresh("g")).start()
    base = f"http://127.0.0.1:{worker.http_port}"

    async def readyz() -> tuple[int, list[str]]:
        try:
            status, _, text = await get(f"{base}/readyz")
        except aiohttp.ClientError:
            return 0, ["no answer"]
        return status, json.loads(text)["failing"]

    async def ready() -> bool:
        return (await readyz())[0] == 200

    def owns_both_partitions() -> bool:
        return any(
            line["event"] == "partitions_assigned" and line["partitions"] == [0, 1]
            for line in worker.logs()
        )

    await wait_for(owns_both_partitions, 30, "the worker to own both partitions")
    await wait_for(ready, 30, "/readyz to answer 200")

    emulator.faults.status_sequence = [503]
    emulator.faults.fail_rate = 0.1
    scattered = [conversation(f"s{i}", 2, ended=True) for i in range(60)]
    events = interleave(scattered)
    expected = {f"s{i}" for i in range(60)}
    await produce(bootstrap, topic, events)
    answers: list[tuple[int, list[str]]] = []

    async def all_logged_while_ready() -> bool:
        answers.append(await readyz())
        return expected <= set(emulator.conversations)

    await wait_for(all_logged_while_ready, 60, "every conversation logged", interval=0.02)
    _, samples = await scrape(worker)
    server_errors = sum(
        v
        for s, v in series(samples, "inkeep_consumer_api_requests_total", "status").items()
        if s.startswith("5")
    )
    assert server_errors >= 1
    assert all(answer == (200, []) for answer in answers), answers
    assert not [line for line in worker.logs() if line["event"] == "api_unreachable"]

    emulator.faults.fail_rate = 1.0
    outage_started = asyncio.get_running_loop().time()
    await produce(bootstrap, topic, conversation("outage", 2, ended=True))

    async def unreachable() -> bool:
        return await readyz() == (503, ["api_reachable"])

    await wait_for(unreachable, 90, "/readyz to fail api_reachable")
    assert asyncio.get_running_loop().time() - outage_started >= 30
    emulator.faults.fail_rate = 0.0
    await wait_for(ready, 30, "/readyz to answer 200 again")
    await wait_for(lambda: "outage" in emulator.conversations, 30, "the outage's conversation")

    changes = [
        line for line in worker.logs() if line["event"] in {"api_unreachable", "api_reachable"}
    ]
    assert [line["event"] for line in changes] == ["api_unreachable", "api_reachable"]
    assert changes[0]["level"] == "warning"
    assert changes[0]["failing_seconds"] >= 30
