"""The metrics registry and the health server, probed over a real socket."""

import aiohttp
import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from consumer import metrics
from consumer.health import Health, HealthServer

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


async def test_readyz_names_each_failing_check(server, health):
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
    health.set_api_reachable(False)
    status, body = await readyz(server)
    assert (status, body["failing"]) == (503, ["api_auth", "api_reachable"])

    health.set_auth_failed(False)
    health.set_api_reachable(True)
    assert (await readyz(server))[0] == 200

    health.set_assigned(False)
    assert (await readyz(server))[0] == 503


async def test_auth_failure_is_mirrored_in_the_gauge(health):
    health.set_auth_failed(True)
    assert metrics.REGISTRY.get_sample_value("inkeep_consumer_auth_failing") == 1
    health.set_auth_failed(False)
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
