"""The sink against the emulator over real sockets: retries, waits, limits, refusals, auth."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import msgspec
import pytest
from emulator_fixtures import API_KEY
from structlog.testing import capture_logs

from consumer import errors, metrics, payload
from consumer.fit import MARK
from consumer.sink import (
    ANSWER_KEEP_BYTES,
    AUTH_PROBE_CAP,
    MAX_CONFLICTS,
    MAX_RETRY_AFTER,
    Outcome,
    Sink,
    _Answer,
    _Pacer,
    classify,
    retry_after_seconds,
)
from consumer.testing.emulator import ApiConversation, Emulator, Faults

BASE = 0.01
CAP = 0.05
SLACK = 0.5
"""Scheduling and socket time allowed on top of an upper bound."""


def make(conversation_id="conv_1", texts=("hello", "hi there")):
    roles = ("user", "assistant")
    return payload.Conversation(
        id=conversation_id,
        type="openai",
        created_at=datetime(2026, 11, 23, 10, 15, tzinfo=UTC),
        messages=[
            payload.OutMessage(id=f"{conversation_id}-{i}", role=roles[i % 2], content=text)
            for i, text in enumerate(texts)
        ],
    )


def sink_for(url, **options):
    settings = {"base_retry_delay": BASE, "max_retry_delay": CAP, "timeout": 5.0, **options}
    return Sink(base_url=url, api_key=API_KEY, **settings)


def counted(name, **labels):
    value = metrics.REGISTRY.get_sample_value(f"inkeep_consumer_{name}_total", labels or None)
    return value or 0.0


def gaps(emulator):
    times = [r.time for r in emulator.posts]
    return [b - a for a, b in itertools.pairwise(times)]


async def test_a_2xx_is_acked_with_the_exact_bytes_sent(emulator):
    conversation = make()
    body = payload.encode(conversation)
    before = counted("api_requests", status="200")
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(conversation, body)
        assert sink.reachable
    assert delivery.outcome is Outcome.ACKED
    assert (delivery.status, delivery.attempts, delivery.body) == (200, 1, body)
    assert not delivery.shrunk
    answered = msgspec.json.decode(delivery.answer, type=ApiConversation)
    assert answered.id == conversation.id
    assert [m.id for m in answered.messages] == [m.id for m in conversation.messages]
    assert emulator.accepted == [body]
    assert counted("api_requests", status="200") == before + 1


async def test_server_errors_are_retried_with_capped_full_jitter(emulator):
    emulator.faults.status_sequence = [500, 503, 502, 504, 500, 503]
    retried = counted("api_retries", reason="server_error")
    answered_503 = counted("api_requests", status="503")
    # The uncapped ceilings would be 0.2, 0.4, ... 6.4 s; the cap keeps every wait under CAP.
    async with sink_for(emulator.url, base_retry_delay=0.2) as sink:
        delivery = await sink.deliver(make(), payload.encode(make()))
    assert delivery.outcome is Outcome.ACKED
    assert delivery.attempts == 7
    assert [r.status for r in emulator.posts] == [500, 503, 502, 504, 500, 503, 200]
    assert all(gap < CAP + SLACK for gap in gaps(emulator))
    assert sum(gaps(emulator)) < 6 * CAP + 2 * SLACK
    assert counted("api_retries", reason="server_error") == retried + 6
    assert counted("api_requests", status="503") == answered_503 + 2


def test_backoff_is_full_jitter_under_the_exponential_ceiling():
    sink = Sink(base_url="http://127.0.0.1:9", api_key="k", base_retry_delay=0.5, max_retry_delay=6)
    for failures, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 6.0), (40, 6.0)]:
        waits = [sink._backoff(failures, auth=False) for _ in range(400)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert min(waits) < ceiling * 0.1
        assert max(waits) > ceiling * 0.9
    auth_waits = [sink._backoff(40, auth=True) for _ in range(400)]
    assert max(auth_waits) <= min(6, AUTH_PROBE_CAP)
    long_sink = Sink(base_url="http://127.0.0.1:9", api_key="k", max_retry_delay=600)
    assert max(long_sink._backoff(40, auth=True) for _ in range(400)) <= AUTH_PROBE_CAP


async def test_retry_after_sets_the_minimum_wait_on_429(emulator):
    emulator.faults.status_sequence = [429, 429]
    emulator.faults.retry_after = 0.3
    limited = counted("api_retries", reason="rate_limited")
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(make(), payload.encode(make()))
    assert delivery.outcome is Outcome.ACKED
    assert delivery.attempts == 3
    assert [r.status for r in emulator.posts] == [429, 429, 200]
    assert all(0.3 - 0.005 <= gap < 0.3 + SLACK for gap in gaps(emulator))
    assert counted("api_retries", reason="rate_limited") == limited + 2


async def test_a_429_without_retry_after_backs_off_by_the_policy(emulator):
    emulator.faults.status_sequence = [429, 429, 429]
    emulator.faults.retry_after = None
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(make(), payload.encode(make()))
    assert (delivery.outcome, delivery.attempts) == (Outcome.ACKED, 4)
    assert all(gap < CAP + SLACK for gap in gaps(emulator))


async def test_a_slow_answer_times_out_and_is_retried(emulator):
    emulator.faults.delay_sequence = [0.6, 0.6]
    timeouts = counted("api_requests", status="timeout")
    async with sink_for(emulator.url, timeout=0.15) as sink:
        delivery = await sink.deliver(make(), payload.encode(make()))
    assert (delivery.outcome, delivery.attempts) == (Outcome.ACKED, 3)
    assert counted("api_requests", status="timeout") == timeouts + 2
    await asyncio.sleep(0.7)  # the emulator notes the abandoned requests when their delay ends
    assert sorted(r.status for r in emulator.posts) == [200, 499, 499]
    assert len(emulator.accepted) == 1
    assert all(gap < 0.15 + CAP + SLACK for gap in gaps(emulator)[:2])


async def test_dropped_connections_are_retried(emulator):
    emulator.faults.drop_next = 3
    dropped = counted("api_requests", status="connection_error")
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(make(), payload.encode(make()))
    assert (delivery.outcome, delivery.attempts) == (Outcome.ACKED, 4)
    assert [r.status for r in emulator.posts] == [0, 0, 0, 200]
    assert counted("api_requests", status="connection_error") == dropped + 3
    assert emulator.conversations["conv_1"] == make()


async def test_an_outage_is_waited_out_and_reachability_follows_it():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with sink_for(f"http://127.0.0.1:{port}") as sink:
        task = asyncio.create_task(sink.deliver(make(), payload.encode(make())))
        for _ in range(200):
            if not sink.reachable:
                break
            await asyncio.sleep(0.01)
        assert not sink.reachable
        assert not task.done()
        async with Emulator(port=port, api_keys=[API_KEY]) as emu:
            delivery = await asyncio.wait_for(task, 5)
            assert delivery.outcome is Outcome.ACKED
            assert delivery.attempts > 1
            assert sink.reachable
            assert list(emu.conversations) == ["conv_1"]


async def test_the_rate_limit_spaces_requests_across_concurrent_deliveries(emulator):
    rate = 10.0
    count = 6
    conversations = [make(f"conv_{n}") for n in range(count)]
    async with sink_for(emulator.url, rate_limit=rate) as sink:
        deliveries = await asyncio.gather(
            *(sink.deliver(c, payload.encode(c)) for c in conversations)
        )
    assert all(d.outcome is Outcome.ACKED for d in deliveries)
    times = sorted(r.time for r in emulator.posts)
    # Requests start 1/rate apart; on arrival, socket time may blur that by a few ms.
    blur = 0.05
    assert times[-1] - times[0] >= (count - 1) / rate - blur
    assert all(b - a >= 1 / rate - blur for a, b in itertools.pairwise(times))


async def test_the_pacer_starts_no_two_requests_closer_than_one_over_the_rate():
    rate = 50.0
    pacer = _Pacer(rate)
    loop = asyncio.get_running_loop()
    starts = []

    async def start():
        await pacer.wait()
        starts.append(loop.time())

    await asyncio.gather(*(start() for _ in range(10)))
    assert starts[-1] - starts[0] >= 9 / rate
    assert all(b - a >= 1 / rate - 1e-6 for a, b in itertools.pairwise(starts))


async def test_concurrency_is_bounded(emulator):
    emulator.faults.latency = 0.2
    conversations = [make(f"conv_{n}") for n in range(6)]
    async with sink_for(emulator.url, max_concurrency=2) as sink:
        deliveries = await asyncio.gather(
            *(sink.deliver(c, payload.encode(c)) for c in conversations)
        )
    assert all(d.outcome is Outcome.ACKED for d in deliveries)
    times = sorted(r.time for r in emulator.posts)
    # With two requests at a time, the third can only start once the first is answered.
    assert all(times[i + 2] - times[i] >= 0.2 - 0.005 for i in range(len(times) - 2))


@pytest.mark.parametrize("status", [400, 422, 410])
async def test_final_refusals_are_rejected_at_once_with_the_answer(emulator, status):
    emulator.faults.status_sequence = [status]
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(make(), payload.encode(make()))
    assert delivery.outcome is Outcome.REJECTED
    assert (delivery.status, delivery.attempts) == (status, 1)
    assert b'"status":%d' % status in delivery.answer
    assert len(emulator.posts) == 1
    assert emulator.accepted == []


async def test_a_body_the_api_finds_invalid_is_rejected_with_its_reason(emulator):
    invalid = payload.Conversation(id="conv_empty", type="openai", messages=[])
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(invalid, payload.encode(invalid))
    assert (delivery.outcome, delivery.status, delivery.attempts) == (Outcome.REJECTED, 422, 1)
    assert b"at least one message" in delivery.answer
    assert delivery.body == payload.encode(invalid)


@pytest.mark.parametrize("status", [404, 408, 409])
async def test_answers_about_the_endpoint_or_the_moment_are_retried(emulator, status):
    emulator.faults.status_sequence = [status]
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(make(), payload.encode(make()))
    assert (delivery.outcome, delivery.attempts) == (Outcome.ACKED, 2)


async def test_a_conflict_that_does_not_clear_is_rejected_after_a_few_tries(emulator):
    emulator.faults.status_sequence = [409] * (MAX_CONFLICTS + 5)
    async with sink_for(emulator.url) as sink:
        delivery = await asyncio.wait_for(sink.deliver(make(), payload.encode(make())), 10)
    assert (delivery.outcome, delivery.status) == (Outcome.REJECTED, 409)
    assert delivery.attempts == MAX_CONFLICTS
    assert len(emulator.posts) == MAX_CONFLICTS
    assert emulator.accepted == []


async def test_an_error_answer_is_read_only_as_far_as_it_is_kept():
    """A huge (here: endless) error body costs the kept prefix, not a timeout or its size."""
    served = asyncio.Event()

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + b"e" * (2 * ANSWER_KEEP_BYTES)
        )
        await writer.drain()
        served.set()
        await asyncio.sleep(30)  # The rest never comes.
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with sink_for(f"http://127.0.0.1:{port}", timeout=3.0) as sink:
            started = time.monotonic()
            delivery = await asyncio.wait_for(sink.deliver(make(), payload.encode(make())), 10)
            took = time.monotonic() - started
    finally:
        server.close()
    assert served.is_set()
    assert (delivery.outcome, delivery.status, delivery.attempts) == (Outcome.REJECTED, 400, 1)
    assert delivery.answer == b"e" * ANSWER_KEEP_BYTES
    assert took < 3.0


async def test_a_413_shrinks_the_body_until_it_is_taken(emulator):
    conversation = make(texts=("question", "x" * 20_000))
    body = payload.encode(conversation)
    emulator.max_body_bytes = 12_000
    too_large = counted("api_retries", reason="too_large")
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(conversation, body)
    assert delivery.outcome is Outcome.ACKED
    assert delivery.shrunk
    assert [r.status for r in emulator.posts] == [413, 413, 200]
    assert delivery.attempts == 3
    assert emulator.accepted == [delivery.body]
    assert len(delivery.body) <= 12_000 < len(body) * 3 // 4
    stored = emulator.conversations["conv_1"]
    assert MARK in (stored.properties or {})
    assert [m.id for m in stored.messages] == [m.id for m in conversation.messages]
    assert counted("api_retries", reason="too_large") == too_large + 2


async def test_a_body_over_the_sinks_own_limit_is_cut_before_it_is_sent(emulator):
    conversation = make(texts=("question", "y" * 20_000))
    async with sink_for(emulator.url, max_body_bytes=10_000) as sink:
        delivery = await sink.deliver(conversation, payload.encode(conversation))
    assert (delivery.outcome, delivery.attempts, delivery.shrunk) == (Outcome.ACKED, 1, True)
    assert [r.body_size for r in emulator.posts] == [len(delivery.body)]
    assert len(delivery.body) <= 10_000


async def test_a_413_that_no_cut_can_satisfy_is_rejected_with_the_answer(emulator):
    emulator.max_body_bytes = 60
    async with sink_for(emulator.url) as sink:
        delivery = await sink.deliver(make(), payload.encode(make()))
    assert delivery.outcome is Outcome.REJECTED
    assert delivery.status == 413
    assert b'"status":413' in delivery.answer
    assert emulator.accepted == []


async def test_a_refused_key_pauses_until_it_works_and_nothing_is_lost():
    conversations = [make(f"conv_{n}") for n in range(4)]
    async with Emulator(api_keys=[API_KEY], faults=Faults(auth_fail_window=(0.0, 0.6))) as emu:
        with capture_logs() as logs:
            async with sink_for(emu.url) as sink:
                tasks = [
                    asyncio.create_task(sink.deliver(c, payload.encode(c))) for c in conversations
                ]
                for _ in range(100):
                    if sink.auth_failed:
                        break
                    await asyncio.sleep(0.01)
                assert sink.auth_failed
                assert metrics.REGISTRY.get_sample_value("inkeep_consumer_auth_failing") == 1
                deliveries = await asyncio.wait_for(asyncio.gather(*tasks), 10)
                assert not sink.auth_failed
        assert all(d.outcome is Outcome.ACKED for d in deliveries)
        assert sorted(emu.conversations) == [c.id for c in conversations]
        refused = [r for r in emu.posts if r.status == 401]
        assert len(refused) > len(conversations)
    assert metrics.REGISTRY.get_sample_value("inkeep_consumer_auth_failing") == 0
    events = [entry["event"] for entry in logs]
    assert events.count("api_key_refused") == 1
    assert [e["detail"] for e in logs if e["event"] == "api_key_refused"] == [
        "the API key was refused (401)"
    ]
    assert events.count("api_key_accepted") == 1
    assert API_KEY not in repr(logs)


async def test_one_accepted_probe_ends_every_waiting_deliverys_pause(emulator):
    emulator.faults.auth_failing = True
    conversations = [make(f"conv_{n}") for n in range(6)]
    async with sink_for(emulator.url, base_retry_delay=1.0, max_retry_delay=1.0) as sink:
        tasks = [asyncio.create_task(sink.deliver(c, payload.encode(c))) for c in conversations]
        for _ in range(100):
            if len(emulator.posts) == len(conversations):
                break
            await asyncio.sleep(0.01)
        emulator.faults.auth_failing = False
        deliveries = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert all(d.outcome is Outcome.ACKED for d in deliveries)
    taken = [r.time for r in emulator.posts if r.status == 200]
    # Each delivery drew its own pause (up to 1 s); the first success woke all the others.
    assert len(taken) == len(conversations)
    assert max(taken) - min(taken) < 0.25


def test_an_answer_to_a_request_sent_before_the_last_change_does_not_flip_auth_back():
    sink = Sink(base_url="http://127.0.0.1:9", api_key="k")
    before = time.monotonic()
    assert isinstance(sink._judge(_Answer(401, b"", None, "401", before)), errors.AuthFailed)
    assert sink.auth_failed
    assert sink._judge(_Answer(200, b"", None, "200", before)) is None
    assert sink.auth_failed, "a success sent before the refusal says nothing about the key now"
    assert sink._judge(_Answer(200, b"", None, "200", time.monotonic())) is None
    assert not sink.auth_failed
    assert isinstance(sink._judge(_Answer(403, b"", None, "403", before)), errors.AuthFailed)
    assert not sink.auth_failed, "a refusal sent before the recovery is stale"
    assert isinstance(
        sink._judge(_Answer(403, b"", None, "403", time.monotonic())), errors.AuthFailed
    )
    assert sink.auth_failed


async def test_cancellation_propagates_while_waiting_for_an_answer(emulator):
    emulator.faults.latency = 5.0
    async with sink_for(emulator.url) as sink:
        task = asyncio.create_task(sink.deliver(make(), payload.encode(make())))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancellation_propagates_during_a_backoff(emulator):
    emulator.faults.status_sequence = [503] * 10
    async with sink_for(emulator.url, base_retry_delay=5.0, max_retry_delay=5.0) as sink:
        task = asyncio.create_task(sink.deliver(make(), payload.encode(make())))
        for _ in range(100):
            if emulator.posts:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(emulator.posts) <= 2


@pytest.mark.parametrize(
    ("status", "retry_after", "kind"),
    [
        (200, None, None),
        (204, None, None),
        (400, None, errors.Rejected),
        (422, None, errors.Rejected),
        (410, None, errors.Rejected),
        (401, None, errors.AuthFailed),
        (403, None, errors.AuthFailed),
        (413, None, errors.BodyTooLarge),
        (429, None, errors.RateLimited),
        (429, 2.0, errors.RateLimited),
        (503, 4.0, errors.RateLimited),
        (503, None, errors.TransientError),
        (500, None, errors.TransientError),
        (404, None, errors.TransientError),
        (408, None, errors.TransientError),
        (409, None, errors.TransientError),
        (302, None, errors.TransientError),
    ],
)
def test_classify_maps_statuses_to_error_types(status, retry_after, kind):
    error = classify(status, b"answer", retry_after)
    if kind is None:
        assert error is None
        return
    assert type(error) is kind
    assert error.status == status
    assert error.answer == b"answer"
    assert error.retriable is (kind is not errors.Rejected)
    if isinstance(error, errors.RateLimited):
        assert error.wait == retry_after


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds(" 1.5 ", now) == 1.5
    assert retry_after_seconds("-3", now) == 0.0
    assert retry_after_seconds("86400", now) == MAX_RETRY_AFTER
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=42), usegmt=True), now) == 42
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=42), usegmt=True), now) == 0
    assert retry_after_seconds("Wed, 21 Oct 2999 07:28:00 GMT", now) == MAX_RETRY_AFTER
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(unreadable, now) is None
