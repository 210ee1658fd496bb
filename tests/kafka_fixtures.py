"""Real Kafka for the tests: one broker per session, private brokers and a cluster on demand.

The first use fetches the broker's jars with Maven (about a minute on a cold cache); later
runs reuse the cache. Set KAFKA_BOOTSTRAP_SERVERS to run against a broker you started.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

import pytest

from consumer.admin import create_topic
from consumer.testing.localkafka import KafkaCluster

__all__ = [
    "KafkaEndpoint",
    "kafka",
    "kafka_cluster",
    "kafka_private",
    "make_topic",
    "new_topic_name",
    "topic_name",
]


@dataclass(frozen=True)
class KafkaEndpoint:
    """Where the session's broker is, and the cluster object when the tests started it."""

    bootstrap_servers: str
    cluster: KafkaCluster | None = None


def new_topic_name(prefix: str = "t") -> str:
    """A topic name no other test (or earlier run against the same broker) has used."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-")[:80] or "t"
    return f"{cleaned}-{uuid.uuid4().hex[:10]}"


async def make_topic(
    bootstrap_servers: str,
    partitions: int = 1,
    *,
    name: str | None = None,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
) -> str:
    """Create a topic (a fresh name unless given) with `partitions` partitions; return its name."""
    topic = name or new_topic_name()
    await create_topic(
        bootstrap_servers,
        topic,
        partitions,
        replication_factor=replication_factor,
        config=config,
    )
    return topic


@pytest.fixture(scope="session")
def kafka():
    """The session's single broker, or the one KAFKA_BOOTSTRAP_SERVERS names."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaEndpoint(external)
        return
    with KafkaCluster(1) as cluster:
        yield KafkaEndpoint(cluster.bootstrap_servers, cluster)


@pytest.fixture
def kafka_private():
    """A broker of the test's own, free to restart or kill."""
    with KafkaCluster(1) as cluster:
        yield cluster


@pytest.fixture
def kafka_cluster():
    """Three combined broker+controllers: replication factor 3, min.insync.replicas 2."""
    with KafkaCluster(3) as cluster:
        yield cluster


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A unique topic name that says which test made it."""
    return new_topic_name(request.node.name)
