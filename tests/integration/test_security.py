"""The managed-Kafka settings against brokers that demand them: SASL, TLS, and both.

Each broker's client listener requires one protocol, as a hosted Kafka does; the worker
gets only the variables an operator would set (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*,
KAFKA_SSL_CAFILE). The test's own clients are configured here, independently of
`Settings`, so a wrong option in the worker cannot make both sides agree by accident.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from harness import (
    Worker,
    assert_matches,
    conversation,
    expected_bodies,
    fresh,
    interleave,
    wait_for,
)

from consumer import admin as kafka_admin
from consumer.testing.emulator import Emulator
from consumer.testing.localkafka import ClientSecurity, KafkaCluster

pytestmark = pytest.mark.integration

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ADMIN, ADMIN_PASSWORD = "admin", "admin-Pw.7f3a"
WORKER_PASSWORD = "worker-Pw.91c2"
WRONG_PASSWORD = "not-the-Pw.e5d0"
KEYSTORE_PASSWORD = "keystore-Pw.2b8e"


def worker_user(mechanism: str) -> str:
    """The worker's user exists for one mechanism only, so signing in proves which one it used."""
    return f"worker-{mechanism.lower()}"


WORKER_USERS = {m: {worker_user(m): WORKER_PASSWORD} for m in MECHANISMS}


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    pkcs12: Path
    pem: Path


@dataclass(frozen=True)
class Broker:
    """A running broker and how its client listener must be spoken to."""

    cluster: KafkaCluster
    protocol: str
    ca: Path | None = None

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap_servers

    def client_options(
        self,
        mechanism: str | None = None,
        user: str = ADMIN,
        password: str = ADMIN_PASSWORD,
    ) -> dict[str, Any]:
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.protocol,
        }
        if self.protocol.startswith("SASL_"):
            options |= {
                "sasl_mechanism": mechanism or "PLAIN",
                "sasl_plain_username": user,
                "sasl_plain_password": password,
            }
        if self.ca is not None:
            options["ssl_context"] = ssl.create_default_context(cafile=str(self.ca))
        return options

    def worker_env(
        self, mechanism: str | None = None, password: str = WORKER_PASSWORD
    ) -> dict[str, str]:
        """What an operator writes into the deployment for this broker."""
        env = {"KAFKA_SECURITY_PROTOCOL": self.protocol}
        if self.protocol.startswith("SASL_"):
            env |= {
                "KAFKA_SASL_MECHANISM": mechanism or "PLAIN",
                "KAFKA_SASL_USERNAME": worker_user(mechanism or "PLAIN"),
                "KAFKA_SASL_PASSWORD": password,
            }
        if self.ca is not None:
            env["KAFKA_SSL_CAFILE"] = str(self.ca)
        return env


def _openssl(directory: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a broker certificate it signed for 127.0.0.1 and localhost."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        directory,
        *("req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"),
        *("-subj", "/CN=security-test CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    _openssl(
        directory,
        *("req", "-new", *ec, "-keyout", "broker.key", "-out", "broker.csr"),
        *("-subj", "/CN=localhost"),
    )
    (directory / "broker.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        directory,
        *("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-out", "broker.pem", "-days", "2", "-extfile", "broker.ext"),
    )
    _openssl(
        directory,
        *("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key"),
        *("-certfile", "ca.pem", "-name", "broker", "-out", "broker.p12"),
        *("-passout", f"pass:{KEYSTORE_PASSWORD}"),
    )
    pem = directory / "broker-keystore.pem"
    pem.write_text(
        "".join((directory / name).read_text() for name in ("broker.key", "broker.pem", "ca.pem"))
    )
    return TlsFiles(ca=directory / "ca.pem", pkcs12=directory / "broker.p12", pem=pem)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def sasl_broker():
    """SASL_PLAINTEXT with PLAIN and both SCRAM mechanisms on one listener."""
    security = ClientSecurity("SASL_PLAINTEXT", MECHANISMS, {ADMIN: ADMIN_PASSWORD}, WORKER_USERS)
    with KafkaCluster(1, security=security) as cluster:
        yield Broker(cluster, "SASL_PLAINTEXT")


@pytest.fixture(scope="module")
def ssl_broker(tls_files):
    """SSL, the broker's key and chain in a PKCS12 keystore."""
    security = ClientSecurity("SSL", keystore=tls_files.pkcs12, keystore_password=KEYSTORE_PASSWORD)
    with KafkaCluster(1, security=security) as cluster:
        yield Broker(cluster, "SSL", tls_files.ca)


@pytest.fixture(scope="module")
def sasl_ssl_broker(tls_files):
    """SASL_SSL with SCRAM-SHA-512 (the usual managed-Kafka pairing), a PEM keystore."""
    security = ClientSecurity(
        "SASL_SSL",
        ("SCRAM-SHA-512",),
        {ADMIN: ADMIN_PASSWORD},
        {"SCRAM-SHA-512": WORKER_USERS["SCRAM-SHA-512"]},
        keystore=tls_files.pem,
        keystore_type="PEM",
    )
    with KafkaCluster(1, security=security) as cluster:
        yield Broker(cluster, "SASL_SSL", tls_files.ca)


def start_worker(
    workers, broker: Broker, topic: str, emulator: Emulator, env: dict[str, str]
) -> Worker:
    """A worker in a group of its own, configured for `broker` only through `env`."""
    return workers(broker.bootstrap, topic, emulator, group=fresh("g"), extra=env).start()


async def create_input_topic(broker: Broker, partitions: int = 2) -> str:
    """The input topic, created by the admin user over the secured listener."""
    topic = fresh("chat")
    assert await kafka_admin.create_topic(broker.client_options(MECHANISMS[-1]), topic, partitions)
    return topic


async def topics(broker: Broker) -> set[str]:
    admin = AIOKafkaAdminClient(**broker.client_options(MECHANISMS[-1]))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def record_count(broker: Broker, topic: str) -> int:
    offsets = await kafka_admin.end_offsets(broker.client_options(MECHANISMS[-1]), topic)
    return sum(offsets.values())


async def produce(broker: Broker, topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(**broker.client_options(MECHANISMS[-1]), acks="all", linger_ms=5)
    await producer.start()
    try:
        for event in events:
            key, value = event["conversation_id"].encode(), json.dumps(event).encode()
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def assert_refused(options: dict[str, Any]) -> None:
    """A client with these options cannot even bootstrap: the listener really demands more."""
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=5000)
    try:
        with pytest.raises(KafkaConnectionError):
            await admin.start()
    finally:
        await admin.close()


async def worker_delivers_everything(
    broker: Broker, env: dict[str, str], emulator: Emulator, workers, tmp_path: Path, *, prefix: str
) -> Worker:
    """Runs the worker with `env` over a fresh topic; every conversation must arrive as rendered."""
    topic = await create_input_topic(broker)
    convs = [
        conversation(f"{prefix}-{i}", 3, history="full" if i % 2 else "delta") for i in range(6)
    ]
    events = interleave(convs)
    await produce(broker, topic, events)
    expected = expected_bodies(events, tmp_path)

    worker = start_worker(workers, broker, topic, emulator, env)

    def delivered() -> bool:
        if not worker.alive():
            raise AssertionError(f"the worker exited:\n{worker.log_path.read_text()[-3000:]}")
        return all(emulator.conversations.get(cid) == body for cid, body in expected.items())

    await wait_for(delivered, 60, "every conversation delivered")
    assert {topic, f"{topic}.state", f"{topic}.dlq"} <= await topics(broker)
    code, _ = await worker.terminate()
    assert code == 0
    assert await record_count(broker, f"{topic}.state") > 0, "the worker wrote no state"
    assert_matches(emulator.conversations, expected)
    created = [line for line in worker.logs() if line.get("event") == "topics_created"]
    assert created, "the worker did not log creating its own topics"
    assert set(created[0]["topics"]) == {f"{topic}.state", f"{topic}.dlq"}
    return worker


async def gives_up(worker: Worker, levels: tuple[str, ...], text: str, says: str) -> None:
    """The worker exits non-zero by itself, and a log line at one of `levels` holds `text`."""
    await wait_for(lambda: not worker.alive(), 30, "the worker to give up")
    assert worker.process is not None
    assert worker.process.returncode != 0
    lines = worker.logs()
    failures = [line for line in lines if line.get("level") in levels and text in str(line)]
    assert failures, f"no log line says {says}: {lines[-5:]}"


def assert_secret_absent(worker: Worker, *secrets: str) -> None:
    assert worker.log_path is not None
    text = worker.log_path.read_text()
    for secret in secrets:
        assert secret not in text, "a secret appeared in the worker's output"


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_worker_signs_in_with_sasl(mechanism, sasl_broker, emulator, workers, tmp_path):
    await assert_refused({"bootstrap_servers": sasl_broker.bootstrap})
    for other in MECHANISMS:
        if other != mechanism:
            user = worker_user(mechanism)
            await assert_refused(sasl_broker.client_options(other, user, WORKER_PASSWORD))
    env = sasl_broker.worker_env(mechanism)
    prefix = mechanism.lower()
    worker = await worker_delivers_everything(
        sasl_broker, env, emulator, workers, tmp_path, prefix=prefix
    )
    assert_secret_absent(worker, WORKER_PASSWORD)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_wrong_sasl_password_stops_the_worker_without_logging_it(
    mechanism, sasl_broker, emulator, workers
):
    topic = await create_input_topic(sasl_broker)
    env = sasl_broker.worker_env(mechanism, password=WRONG_PASSWORD)
    worker = start_worker(workers, sasl_broker, topic, emulator, env)
    await gives_up(worker, ("error", "critical"), "Authentication failed", "authentication failed")
    assert_secret_absent(worker, WRONG_PASSWORD)
    assert topic in await topics(sasl_broker)
    assert not {f"{topic}.state", f"{topic}.dlq"} & await topics(sasl_broker)
    assert not emulator.accepted


async def test_worker_reads_over_tls(ssl_broker, emulator, workers, tmp_path):
    await assert_refused({"bootstrap_servers": ssl_broker.bootstrap})
    await worker_delivers_everything(
        ssl_broker, ssl_broker.worker_env(), emulator, workers, tmp_path, prefix="tls"
    )


async def test_worker_refuses_a_broker_certificate_it_cannot_verify(ssl_broker, emulator, workers):
    """Without the private CA the worker must not talk to the broker at all."""
    topic = await create_input_topic(ssl_broker)
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL"}
    worker = start_worker(workers, ssl_broker, topic, emulator, env)
    await gives_up(
        worker, ("error",), "CERTIFICATE_VERIFY_FAILED", "the certificate was not trusted"
    )
    assert not {f"{topic}.state", f"{topic}.dlq"} & await topics(ssl_broker)
    assert not emulator.accepted


async def test_worker_signs_in_over_tls(sasl_ssl_broker, emulator, workers, tmp_path):
    untrusted = sasl_ssl_broker.client_options("SCRAM-SHA-512")
    untrusted["ssl_context"] = ssl.create_default_context()
    await assert_refused(untrusted)
    user = worker_user("SCRAM-SHA-512")
    await assert_refused(sasl_ssl_broker.client_options("PLAIN", user, WORKER_PASSWORD))
    env = sasl_ssl_broker.worker_env("SCRAM-SHA-512")
    worker = await worker_delivers_everything(
        sasl_ssl_broker, env, emulator, workers, tmp_path, prefix="sasl-ssl"
    )
    assert_secret_absent(worker, WORKER_PASSWORD)
