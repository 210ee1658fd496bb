"""The metrics registry and the health server, probed over a real socket."""

import random

import aiohttp
import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from consumer import metrics, runtime
from consumer.checkpoint import Checkpoints
from consumer.health import Health, HealthServer, Reachability
from consumer.settings import Settings

EXPECTED = {
    "records_consumed": (Counter, ("topic", "partition")),
    "records_invalid": (Counter, ("kind",)),
    "records_mis_keyed": (Counter, ()),
    "events_duplicate": (Counter, ()),
    "dead_lettered": (Counter, ("what", "reason")),
    "conversations_flushed": (Counter, ("trigger",)),
    "flushes_refused": (Counter, ()),
    "conversations_truncated": (Counter, ()),
    "api_requests": (Counter, ("status",)),
    "api_retries": (Counter, ("reason",)),
    "flush_latency_seconds": (Histogram, ()),
    "open_conversations": (Gauge, ()),
    "pending_flushes": (Gauge, ()),
    "consumer_lag": (Gauge, ("topic", "partition")),
    "paused": (Gauge, ("reason",)),
    "state_records_written": (Counter, ()),
    "offsets_committed": (Counter, ()),
    "auth_failing": (Gauge, ()),
    "ready": (Gauge, ()),
    "ready_check": (Gauge, ("check",)),
    "durable_writes_failed": (Counter, ()),
    "offset_commits_failed": (Counter, ()),
    "state_retained": (Gauge, ("kind",)),
    "state_retained_bytes": (Gauge, ("where",)),
    "state_budget_bytes": (Gauge, ()),
    "state_evicted": (Counter, ("kind",)),
}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def health(clock):
    health = Health(heartbeat_timeout=10.0, clock=clock)
    yield health
    health.set_auth_failed(False)


@pytest.fixture
async def server(health):
    server = HealthServer(health)
    port = await server.start(host="127.0.0.1", port=0)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as client:
        yield client
    await server.stop()


@pytest.mark.parametrize(("name", "spec"), EXPECTED.items())
def test_metric_objects_match_the_agreed_interface(name, spec):
    kind, labels = spec
    metric = getattr(metrics, name)
    assert isinstance(metric, kind)
    assert metric._name == f"inkeep_consumer_{name}"
    assert metric._labelnames == labels
    assert metric._documentation


def test_metrics_live_in_their_own_registry():
    names = {family.name for family in metrics.REGISTRY.collect()}
    assert {f"inkeep_consumer_{name}" for name in EXPECTED} <= names


async def test_healthz_follows_the_heartbeat(server, health, clock):
    answer = await server.get("/healthz")
    assert answer.status == 200
    assert (await answer.json())["alive"] is True

    clock.now += 10.5
    answer = await server.get("/healthz")
    assert answer.status == 503
    body = await answer.json()
    assert body["alive"] is False
    assert body["seconds_since_heartbeat"] == pytest.approx(10.5)

    health.beat()
    assert (await server.get("/healthz")).status == 200


async def readyz(server):
    answer = await server.get("/readyz")
    assert answer.content_type == "application/json"
    return answer.status, await answer.json()


async def test_readyz_names_each_failing_check(server, health, clock):
    status, body = await readyz(server)
    assert (status, body["ready"], body["failing"]) == (503, False, ["assigned"])

    health.set_assigned(True)
    status, body = await readyz(server)
    assert (status, body["ready"], body["failing"]) == (200, True, [])
    assert body["checks"] == {
        "assigned": True,
        "state_restored": True,
        "api_auth": True,
        "api_reachable": True,
    }

    health.set_restoring(True)
    assert await readyz(server) == (
        503,
        {
            "ready": False,
            "failing": ["state_restored"],
            "checks": {
                "assigned": True,
                "state_restored": False,
                "api_auth": True,
                "api_reachable": True,
            },
        },
    )
    health.set_restoring(False)

    health.set_auth_failed(True)
    health.observe_api(ok=False)
    clock.now += health.reachability.window
    health.observe_api(ok=False)
    status, body = await readyz(server)
    assert (status, body["failing"]) == (503, ["api_auth", "api_reachable"])

    health.set_auth_failed(False)
    health.observe_api(ok=True)
    assert (await readyz(server))[0] == 200

    health.set_assigned(False)
    assert (await readyz(server))[0] == 503


async def test_the_auth_gauge_has_one_writer_the_sink(health):
    """Health mirrors the sink's auth state for /readyz; the gauge is written where it changes."""
    metrics.auth_failing.set(0)
    health.set_auth_failed(True)
    assert not health.ready
    assert metrics.REGISTRY.get_sample_value("inkeep_consumer_auth_failing") == 0


async def test_metrics_endpoint_serves_the_registry(server):
    metrics.records_consumed.labels("chat-completions", "5").inc(3)
    metrics.api_requests.labels("429").inc()
    metrics.flush_latency_seconds.observe(0.2)

    answer = await server.get("/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    text = await answer.text()
    for name in EXPECTED:
        assert f"# HELP inkeep_consumer_{name}" in text

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    consumed = samples[
        (
            "inkeep_consumer_records_consumed_total",
            (("partition", "5"), ("topic", "chat-completions")),
        )
    ]
    assert consumed >= 3
    assert samples[("inkeep_consumer_api_requests_total", (("status", "429"),))] >= 1
    assert samples[("inkeep_consumer_flush_latency_seconds_count", ())] >= 1
    assert samples[("inkeep_consumer_paused", (("reason", "auth"),))] == 0


async def test_unknown_paths_are_404(server):
    assert (await server.get("/")).status == 404


async def test_start_on_port_zero_binds_a_free_port_and_stop_releases_it(health):
    server = HealthServer(health)
    port = await server.start(host="127.0.0.1", port=0)
    assert port > 0
    async with aiohttp.ClientSession() as client:
        answer = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert answer.status == 200
        await server.stop()
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.get(f"http://127.0.0.1:{port}/healthz")
    await server.stop()


async def test_a_taken_port_fails_to_start(health):
    first = HealthServer(health)
    port = await first.start(host="127.0.0.1", port=0)
    try:
        with pytest.raises(OSError):
            await HealthServer(health).start(host="127.0.0.1", port=port)
    finally:
        await first.stop()


async def test_metrics_mirror_readiness_on_every_scrape(server, health):
    def sample(text, name, **labels):
        return next(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and s.labels == labels
        )

    text = await (await server.get("/metrics")).text()
    assert sample(text, "inkeep_consumer_ready") == 0
    assert sample(text, "inkeep_consumer_ready_check", check="assigned") == 0
    assert sample(text, "inkeep_consumer_ready_check", check="api_reachable") == 1

    health.set_assigned(True)
    text = await (await server.get("/metrics")).text()
    assert sample(text, "inkeep_consumer_ready") == 1
    assert sample(text, "inkeep_consumer_ready_check", check="assigned") == 1


# Reachability over a window, on a fake clock.


def api_events(logs):
    return [e["event"] for e in logs if e["event"] in {"api_reachable", "api_unreachable"}]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    gap=st.floats(0.001, 2.0),
)
def test_a_ten_percent_5xx_rate_never_flips_readiness(seed, gap):
    rng = random.Random(seed)
    clock = Clock()
    health = Health(unreachable_after=30.0, clock=clock)
    with capture_logs() as logs:
        for _ in range(2000):
            clock.now += gap
            health.observe_api(ok=rng.random() >= 0.1, reason="503")
            assert health.api_reachable
    assert api_events(logs) == []


def test_an_outage_flips_once_after_the_window_and_recovery_flips_back_once():
    clock = Clock()
    health = Health(unreachable_after=30.0, clock=clock)
    health.set_assigned(True)
    with capture_logs() as logs:
        health.observe_api(ok=True)
        started = clock.now
        flipped_at = None
        for _ in range(120):  # a two-minute outage, one failed attempt a second
            clock.now += 1.0
            health.observe_api(ok=False, reason="timeout")
            if flipped_at is None and not health.api_reachable:
                flipped_at = clock.now
        assert flipped_at == started + 1.0 + 30.0
        assert not health.ready
        assert health.checks()["api_reachable"] is False
        clock.now += 1.0
        health.observe_api(ok=True)
        assert health.ready
        for _ in range(50):  # healthy again, with the odd failure
            clock.now += 0.5
            health.observe_api(ok=_ % 10 != 3, reason="502")
            assert health.api_reachable
    assert api_events(logs) == ["api_unreachable", "api_reachable"]
    assert logs[0]["reason"] == "timeout"
    assert logs[0]["log_level"] == "warning"


def test_failures_shorter_than_the_window_or_spread_across_successes_do_not_flip():
    clock = Clock()
    reach = Reachability(window=30.0, clock=clock)
    for _ in range(29):
        clock.now += 1.0
        reach.observe(ok=False)
    assert reach.reachable
    reach.observe(ok=True)
    clock.now += 100.0  # nothing tried for a long time: nothing is known
    reach.observe(ok=False)
    assert reach.reachable
    clock.now += 29.9
    reach.observe(ok=False)
    assert reach.reachable
    clock.now += 0.1
    reach.observe(ok=False)
    assert not reach.reachable


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0.0, 20.0)), max_size=200))
def test_reachability_changes_at_most_as_often_as_the_rule_allows(answers):
    clock = Clock()
    reach = Reachability(window=30.0, clock=clock)
    changes = 0
    failing_since = None
    for ok, gap in answers:
        clock.now += gap
        before = reach.reachable
        reach.observe(ok)
        if ok:
            failing_since = None
            assert reach.reachable
        else:
            failing_since = clock.now if failing_since is None else failing_since
            assert reach.reachable == (clock.now - failing_since < 30.0)
        changes += before != reach.reachable
    assert changes <= 2 * (1 + sum(1 for ok, _ in answers if ok))


# Liveness during a long restore or revoke.


def test_liveness_holds_while_a_restore_makes_progress_and_fails_when_it_stalls():
    clock = Clock()
    health = Health(heartbeat_timeout=60.0, clock=clock)
    health.set_restoring(True)
    for _ in range(30):  # a 10-minute restore, the loop not beating, records read back
        clock.now += 20.0
        health.beat()
        assert health.alive
    clock.now += 60.1  # stalled: no record for longer than the timeout
    assert not health.alive


async def test_an_assignment_keeps_liveness_while_its_restore_reads_records(monkeypatch):
    """The runtime's restore beats per state record; a stalled restore still fails liveness."""
    clock = Clock()
    health = Health(heartbeat_timeout=60.0, clock=clock)
    settings = Settings.from_env(
        {"INKEEP_API_KEY": "k", "KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_TOPIC": "t"}
    )
    worker = runtime.Worker(settings, health=health)
    seen: list[tuple[bool, bool]] = []

    async def slow_read_state(_options, _topic, partitions, on_record):
        for i in range(30):  # 30 records, 10 s apart: 5 minutes, the loop not beating
            clock.now += 10.0
            on_record(partitions[0], f"c{i}".encode(), None)
            seen.append((health.alive, health.restoring))
        return 30

    class Consumer:
        async def end_offsets(self, tps):
            return dict.fromkeys(tps, 0)

        async def committed(self, _tp):
            return None

    monkeypatch.setattr(runtime, "read_state", slow_read_state)
    worker._consumer = Consumer()
    worker._commits = Checkpoints(None, worker._consumer, state_topic="t.state", dlq_topic="t.dlq")
    await worker.assign([TopicPartition("t", 0)])
    assert seen == [(True, True)] * 30
    assert health.ready

    clock.now += 60.1
    assert not health.alive
