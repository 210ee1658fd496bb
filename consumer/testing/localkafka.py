"""A real Apache Kafka on loopback, for development, tests, the demo and the benchmark.

The broker jars come from Maven Central (Maven resolves `kafka_2.13` and its runtime
dependencies) into a cache outside the repository, so the only prerequisites are Java 17+
and Maven. Each node runs KRaft in combined mode (broker and controller in one JVM), on
free 127.0.0.1 ports, with a data directory of its own and its logs in a file there.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from consumer.errors import ConsumerError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from types import TracebackType

DEFAULT_VERSION = "4.4.0"
# Kafka's own distribution ships log4j2 beside the jars; Maven's runtime scope does not.
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
LOOPBACK = "127.0.0.1"
COMPLETE_MARKER = ".complete"
# A node that outlives its quorum waits minutes for a controlled shutdown no one can grant;
# the grace covers Raft's own 5 s attempt to hand over leadership before that.
QUORUM_GRACE = 6.0
START_ATTEMPTS = 3
_BIND_FAILURE = re.compile(r"failed to bind to [^:\s]+:(\d+)")

CLIENT_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_MECHANISMS = ("PLAIN", *SCRAM_MECHANISMS)
KEYSTORE_TYPES = ("PKCS12", "JKS", "PEM")
# Written unquoted into a properties file, a JAAS line and StorageTool's --add-scram.
_CREDENTIAL = re.compile(r"[A-Za-z0-9._~+/@-]+")

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.inkeep-consumer</groupId>
  <artifactId>kafka-server-libs</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId>
    <version>{plugin}</version>
  </plugin></plugins></build>
</project>
"""

_LOG4J2 = """status = warn
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""

_JVM_OPTIONS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)


class LocalKafkaError(ConsumerError):
    """The local broker could not be fetched, started or driven."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "inkeep-consumer" / "kafka"


def libs_dir(version: str = DEFAULT_VERSION, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / version / "libs"


def fetch(version: str = DEFAULT_VERSION, cache_dir: Path | None = None) -> Path:
    """Fill the cache with the broker's jars and return their directory.

    A complete cache (its marker file written last) is reused without calling Maven; a lock
    file keeps two processes from filling the same cache at once.
    """
    libs = libs_dir(version, cache_dir)
    marker = libs / COMPLETE_MARKER
    if marker.is_file():
        return libs
    root = libs.parent
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return libs
        _run_maven(version, root)
    return libs


def _run_maven(version: str, root: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("Maven (mvn) is not on PATH; it fetches the Kafka jars")
    staging = root / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    pom = root / "pom.xml"
    pom.write_text(
        _POM.format(version=version, log4j=LOG4J_VERSION, plugin=DEPENDENCY_PLUGIN_VERSION)
    )
    command = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        output = _last_lines(done.stdout + done.stderr, 40)
        raise LocalKafkaError(f"Maven could not fetch Kafka {version}:\n{output}")
    jars = sorted(p.name for p in staging.glob("*.jar"))
    if not any(name.startswith(f"kafka_2.13-{version}") for name in jars):
        raise LocalKafkaError(f"Maven finished but kafka_2.13-{version}.jar is not in {staging}")
    libs = root / "libs"
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (libs / COMPLETE_MARKER).write_text("\n".join(jars) + "\n")


@dataclass(frozen=True)
class ClientSecurity:
    """What the client listener demands, as a managed Kafka would; nodes talk plaintext.

    Each of `users` (name -> password) can sign in with every one of `mechanisms`; each of
    `mechanism_users[mechanism]` with that mechanism only, so a test can tell which one a
    client used. PLAIN users sit in the listener's JAAS config, SCRAM credentials are
    written when storage is formatted, so they exist before the first client connects.
    A TLS listener serves the key and certificate chain in `keystore` (PKCS12, JKS, or PEM
    with an unencrypted key).
    """

    protocol: str = "PLAINTEXT"
    mechanisms: tuple[str, ...] = ("PLAIN",)
    users: Mapping[str, str] = field(default_factory=dict)
    mechanism_users: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    keystore: Path | None = None
    keystore_type: str = "PKCS12"
    keystore_password: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in CLIENT_PROTOCOLS:
            raise LocalKafkaError(f"protocol must be one of {CLIENT_PROTOCOLS}: {self.protocol}")
        if self.uses_sasl:
            self._check_sasl()
        if self.uses_tls:
            if self.keystore is None or not self.keystore.is_file():
                raise LocalKafkaError(f"{self.protocol} needs a keystore file: {self.keystore}")
            if self.keystore_type not in KEYSTORE_TYPES:
                raise LocalKafkaError(f"keystore_type must be one of {KEYSTORE_TYPES}")

    def _check_sasl(self) -> None:
        unknown = [m for m in self.mechanisms if m not in SASL_MECHANISMS]
        if not self.mechanisms or unknown:
            raise LocalKafkaError(f"SASL mechanisms must be some of {SASL_MECHANISMS}")
        if set(self.mechanism_users) - set(self.mechanisms):
            raise LocalKafkaError("mechanism_users names a mechanism that is not enabled")
        everyone = [self.users_of(m) for m in self.mechanisms]
        if not all(everyone):
            raise LocalKafkaError(f"{self.protocol} needs a user for every mechanism")
        for text in (text for users in everyone for item in users.items() for text in item):
            if not _CREDENTIAL.fullmatch(text):
                raise LocalKafkaError("user names and passwords may use A-Z a-z 0-9 . _ ~ + / @ -")

    @property
    def secured(self) -> bool:
        return self.protocol != "PLAINTEXT"

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def users_of(self, mechanism: str) -> dict[str, str]:
        """Every user (name -> password) who can sign in with `mechanism`."""
        return {**self.users, **self.mechanism_users.get(mechanism, {})}

    def listener_properties(self, listener: str) -> dict[str, str]:
        """Broker settings for the listener named `listener` that speaks `protocol`."""
        prefix = f"listener.name.{listener.lower()}."
        settings: dict[str, str] = {}
        if self.uses_sasl:
            settings["sasl.enabled.mechanisms"] = ",".join(self.mechanisms)
            settings[f"{prefix}sasl.enabled.mechanisms"] = ",".join(self.mechanisms)
            for mechanism in self.mechanisms:
                settings[f"{prefix}{mechanism.lower()}.sasl.jaas.config"] = self._jaas(mechanism)
        if self.uses_tls:
            assert self.keystore is not None
            settings[f"{prefix}ssl.keystore.location"] = str(self.keystore)
            settings[f"{prefix}ssl.keystore.type"] = self.keystore_type
            if self.keystore_password:
                settings[f"{prefix}ssl.keystore.password"] = self.keystore_password
        return settings

    def scram_arguments(self) -> list[str]:
        """StorageTool `format` arguments that create every user for every SCRAM mechanism."""
        if not self.uses_sasl:
            return []
        return [
            argument
            for mechanism in self.mechanisms
            if mechanism in SCRAM_MECHANISMS
            for name, password in self.users_of(mechanism).items()
            for argument in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]

    def _jaas(self, mechanism: str) -> str:
        if mechanism == "PLAIN":
            plain = self.users_of(mechanism).items()
            users = " ".join(f'user_{name}="{password}"' for name, password in plain)
            return f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
        return "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def new_cluster_id() -> str:
    """A random cluster id in Kafka's form: a UUID, base64url without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now; held together so they differ from each other."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


@dataclass
class KafkaNode:
    """One combined broker+controller: its ports and directory outlive its process."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    archive_dump: Path | None = field(default=None, repr=False)
    log_marks: dict[Path, int] = field(default_factory=dict, repr=False)
    internal_port: int | None = None
    """A plaintext listener for the nodes' own traffic when the client listener is secured."""

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def plaintext_port(self) -> int:
        """Where a client without credentials (the readiness probe, topic creation) connects."""
        return self.port if self.internal_port is None else self.internal_port

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "logs" / "server.log"

    @property
    def output_path(self) -> Path:
        return self.directory / "logs" / "jvm.out"

    @property
    def config_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def formatted(self) -> bool:
        return (self.directory / "data" / "meta.properties").is_file()

    def log_tail(self, lines: int = 30) -> str:
        """This run's first errors (with their exceptions) and last log lines, for a report."""
        parts = []
        for path in (self.output_path, self.log_path):
            text = ""
            if path.is_file():
                with path.open("rb") as log:
                    log.seek(self.log_marks.get(path, 0))
                    text = log.read().decode(errors="replace")
            if text.strip():
                errors = _first_errors(text)
                if errors:
                    parts.append(f"--- first errors in {path} ---\n{errors}")
                parts.append(f"--- end of {path} ---\n{_last_lines(text, lines)}")
        return "\n".join(parts) or f"(node {self.node_id} wrote no log yet)"


class KafkaCluster:
    """One or more KRaft nodes on loopback.

    With three nodes every topic defaults to replication factor 3 and min.insync.replicas 2,
    so one node can stop while acks=all writes go on. With a secured `security`, the client
    port demands it and each node also listens on a plaintext internal port of its own.
    """

    def __init__(  # noqa: PLR0913 - each knob is a keyword with a working default.
        self,
        brokers: int = 1,
        *,
        version: str = DEFAULT_VERSION,
        cache_dir: Path | None = None,
        data_dir: Path | None = None,
        ports: Sequence[int] | None = None,
        heap: str = "512m",
        start_timeout: float = 90.0,
        overrides: Mapping[str, str] | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        if brokers < 1:
            raise LocalKafkaError("a cluster needs at least one broker")
        if ports is not None and len(ports) != brokers:
            raise LocalKafkaError(f"{brokers} brokers need {brokers} ports, got {len(ports)}")
        self.version = version
        self.cache_dir = cache_dir
        self.heap = heap
        self.start_timeout = start_timeout
        self.overrides = dict(overrides or {})
        self.security = security or ClientSecurity()
        self._owns_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="localkafka-"))
        chosen = free_ports(self._ports_per_node * brokers)
        client_ports = list(ports) if ports is not None else chosen[:brokers]
        self.nodes = [
            KafkaNode(i, client_ports[i], chosen[brokers + i], self.data_dir / f"node-{i}")
            for i in range(brokers)
        ]
        if self.security.secured:
            for node, internal in zip(self.nodes, chosen[2 * brokers :], strict=True):
                node.internal_port = internal
        self.cluster_id = _formatted_cluster_id(self.nodes) or new_cluster_id()
        self._fixed_ports = set(ports or ())
        self._libs: Path | None = None
        self._exit_hook_registered = False

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.address for node in self.nodes)

    @property
    def plaintext_bootstrap_servers(self) -> str:
        """Addresses that need no credentials: the internal listener when the client one is
        secured, otherwise the same as `bootstrap_servers`."""
        return ",".join(f"{LOOPBACK}:{node.plaintext_port}" for node in self.nodes)

    @property
    def _ports_per_node(self) -> int:
        return 3 if self.security.secured else 2

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Fetch if needed, format storage once, start every node, wait until all serve."""
        self._libs = fetch(self.version, self.cache_dir)
        if not self._exit_hook_registered:
            atexit.register(self._kill_all)
            self._exit_hook_registered = True
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_nodes()
            except LocalKafkaError as exc:
                self._kill_nodes()
                clash = _port_clash(str(exc))
                if clash is None or clash in self._fixed_ports or attempt == START_ATTEMPTS:
                    self._kill_all()
                    raise
                self._choose_new_ports()
            except BaseException:
                self._kill_all()
                raise
            else:
                return

    def _start_nodes(self) -> None:
        for node in self.nodes:
            self._write_config(node)
        self._format([node for node in self.nodes if not node.formatted])
        for node in self.nodes:
            if not node.running:
                self._spawn(node)
        self._wait_ready(self.nodes)

    def _choose_new_ports(self) -> None:
        """Another process took a port between choosing it and the broker binding it."""
        fresh = iter(free_ports(self._ports_per_node * len(self.nodes)))
        for node in self.nodes:
            node.controller_port = next(fresh)
            if node.port not in self._fixed_ports:
                node.port = next(fresh)
            if node.internal_port is not None:
                node.internal_port = next(fresh)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (SIGTERM together), then remove the data if it is ours.

        A node still in controlled shutdown after the quorum has gone can never finish it,
        so it is killed after a short grace instead of waiting the full `timeout`.
        """
        self._terminate(self.nodes, timeout)
        if self._exit_hook_registered:
            atexit.unregister(self._kill_all)
            self._exit_hook_registered = False
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def stop_node(self, index: int, timeout: float = 30.0) -> None:
        """SIGTERM one node and wait for its controlled shutdown."""
        self._terminate([self.nodes[index]], timeout)

    def start_node(self, index: int) -> None:
        """Start a stopped node again on its old ports and data, and wait until it serves."""
        node = self.nodes[index]
        if self._libs is None:
            raise LocalKafkaError("start the cluster before restarting one of its nodes")
        if not node.running:
            self._spawn(node)
        self._wait_ready([node])

    def restart(self) -> None:
        """Stop and start each node in turn; a single broker is down for a few seconds."""
        for index in range(len(self.nodes)):
            self.stop_node(index)
            self.start_node(index)

    @property
    def default_replication_factor(self) -> int:
        return min(len(self.nodes), 3)

    def properties(self, node: KafkaNode) -> dict[str, str]:
        rf = self.default_replication_factor
        min_isr = 2 if rf >= 3 else 1
        voters = ",".join(f"{n.node_id}@{LOOPBACK}:{n.controller_port}" for n in self.nodes)
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{LOOPBACK}:{node.port},CONTROLLER://{LOOPBACK}:"
            f"{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{node.address}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.directory / "data"),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.partitions": "1",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(min_isr),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "6000",
            "replica.lag.time.max.ms": "10000",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "num.recovery.threads.per.data.dir": "1",
        }
        if node.internal_port is not None:
            settings.update(self._secured_listeners(node, node.internal_port))
        settings.update(self.overrides)
        return settings

    def _secured_listeners(self, node: KafkaNode, internal_port: int) -> dict[str, str]:
        internal = f"INTERNAL://{LOOPBACK}:{internal_port}"
        return {
            "listeners": f"CLIENT://{node.address},{internal},CONTROLLER://{LOOPBACK}:"
            f"{node.controller_port}",
            "advertised.listeners": f"CLIENT://{node.address},{internal}",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map": f"CLIENT:{self.security.protocol},"
            "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            **self.security.listener_properties("CLIENT"),
        }

    def _write_config(self, node: KafkaNode) -> None:
        (node.directory / "logs").mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.properties(node).items()]
        node.config_path.write_text("\n".join(lines) + "\n")
        logs = node.directory / "logs"
        (node.directory / "log4j2.properties").write_text(_LOG4J2.format(logs=logs))

    def _java(self, node: KafkaNode, *args: str) -> list[str]:
        assert self._libs is not None
        return [
            _java(),
            f"-Xmx{self.heap}",
            "-Xms128m",
            *_JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={node.directory / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.directory / 'logs'}",
            "-cp",
            f"{self._libs}/*",
            *args,
        ]

    def _class_archive(self) -> Path:
        """Where the JVM's class-data archive for these jars and this java lives.

        Loading Kafka's classes from an archive halves a broker's start; the first clean
        exit of a node writes it (the JVM ignores an archive that does not match).
        """
        assert self._libs is not None
        java = Path(_java()).resolve()
        key = f"{java}:{java.stat().st_mtime_ns}".encode()
        return self._libs.parent / f"classes-{hashlib.sha256(key).hexdigest()[:12]}.jsa"

    def _class_archive_option(self, node: KafkaNode) -> list[str]:
        archive = self._class_archive()
        if archive.is_file():
            return [f"-XX:SharedArchiveFile={archive}"]
        if any(other.archive_dump is not None for other in self.nodes):
            return []
        node.archive_dump = archive.with_name(f"{archive.name}.{uuid.uuid4().hex[:8]}")
        return [f"-XX:ArchiveClassesAtExit={node.archive_dump}"]

    def _keep_class_archive(self, node: KafkaNode) -> None:
        dump, node.archive_dump = node.archive_dump, None
        if dump is None or not dump.is_file():
            return
        clean_exit = node.process is not None and node.process.returncode in (0, 143)
        if clean_exit and dump.stat().st_size > 0:
            dump.replace(self._class_archive())
        else:
            dump.unlink()

    def _format(self, nodes: Sequence[KafkaNode]) -> None:
        running = []
        for node in nodes:
            archive = self._class_archive()
            shared = [f"-XX:SharedArchiveFile={archive}"] if archive.is_file() else []
            command = self._java(
                node,
                "-XX:TieredStopAtLevel=1",
                *shared,
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "--cluster-id",
                self.cluster_id,
                "--config",
                str(node.config_path),
                *self.security.scram_arguments(),
            )
            out = (node.directory / "logs" / "format.out").open("wb")
            running.append((node, out, subprocess.Popen(command, stdout=out, stderr=out)))  # noqa: S603
        for node, out, process in running:
            code = process.wait()
            out.close()
            if code != 0:
                text = (node.directory / "logs" / "format.out").read_text(errors="replace")
                raise LocalKafkaError(
                    f"formatting storage for node {node.node_id} failed ({code}):\n"
                    f"{_last_lines(text, 30)}"
                )

    def _spawn(self, node: KafkaNode) -> None:
        node.log_marks = {
            path: path.stat().st_size if path.is_file() else 0
            for path in (node.output_path, node.log_path)
        }
        command = self._java(
            node, *self._class_archive_option(node), "kafka.Kafka", str(node.config_path)
        )
        with node.output_path.open("ab") as out:
            node.process = subprocess.Popen(  # noqa: S603
                [*_parent_death_prefix(), *command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, targets: Sequence[KafkaNode]) -> None:
        """Wait until each target, and each other running node, lists every running node."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            for node in targets:
                if not node.running:
                    code = node.process.poll() if node.process is not None else None
                    raise LocalKafkaError(
                        f"Kafka node {node.node_id} exited ({code}) while starting:\n"
                        f"{node.log_tail()}"
                    )
            live = [node for node in self.nodes if node.running]
            expected = {node.node_id for node in live}
            if all(_broker_ids(node.plaintext_port) == expected for node in live):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(node.log_tail() for node in targets)
                raise LocalKafkaError(
                    f"Kafka did not become ready within {self.start_timeout:.0f}s:\n{tails}"
                )
            time.sleep(0.2)

    def _terminate(self, nodes: Sequence[KafkaNode], timeout: float) -> None:
        for node in nodes:
            if node.running and node.process is not None:
                node.process.terminate()
        deadline = time.monotonic() + timeout
        majority = len(self.nodes) // 2 + 1
        quorum_lost: float | None = None
        while any(node.running for node in nodes):
            now = time.monotonic()
            if quorum_lost is None and sum(node.running for node in self.nodes) < majority:
                quorum_lost = now
            if now > deadline or (quorum_lost is not None and now - quorum_lost > QUORUM_GRACE):
                break
            time.sleep(0.1)
        for node in nodes:
            if node.running and node.process is not None:
                node.process.kill()
            if node.process is not None:
                node.process.wait()
            self._keep_class_archive(node)

    def _kill_nodes(self) -> None:
        for node in self.nodes:
            if node.running and node.process is not None:
                node.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(10)

    def _kill_all(self) -> None:
        self._kill_nodes()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _port_clash(report: str) -> int | None:
    found = _BIND_FAILURE.search(report)
    return int(found.group(1)) if found else None


def _formatted_cluster_id(nodes: Sequence[KafkaNode]) -> str | None:
    """The cluster id of data left by an earlier run in the same directory, if any."""
    for node in nodes:
        if node.formatted:
            for line in (node.directory / "data" / "meta.properties").read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "cluster.id":
                    return value.strip()
    return None


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("java is not on PATH; Kafka needs Java 17 or newer")
    return java


def _parent_death_prefix() -> list[str]:
    """Have the broker receive SIGTERM if this process dies without stopping it.

    The kernel sends the signal when the forking thread ends, so only the main thread asks.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM"]


def _broker_ids(port: int, timeout: float = 2.0) -> set[int] | None:
    """The unfenced brokers that the node on `port` reports, via a Metadata v4 request."""
    header = struct.pack(">hhih", 3, 4, 1, 10) + b"localkafka"
    body = struct.pack(">ib", 0, 0)
    request = header + body
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            data = _recv_exact(sock, size)
        offset = 8  # correlation id, throttle time
        (count,) = struct.unpack_from(">i", data, offset)
        offset += 4
        ids = set()
        for _ in range(count):
            node_id, host_len = struct.unpack_from(">ih", data, offset)
            offset += 6 + host_len + 4
            (rack_len,) = struct.unpack_from(">h", data, offset)
            offset += 2 + max(rack_len, 0)
            ids.add(node_id)
    except (OSError, struct.error):
        return None
    return ids


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _first_errors(text: str, limit: int = 6) -> str:
    """ERROR and FATAL lines, each with the exception line that follows it."""
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        if " ERROR " in line or " FATAL " in line:
            found.append(line)
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if following and not following.startswith("["):
                found.append(following)
            if len(found) >= 2 * limit:
                break
    return "\n".join(found)


def _last_lines(text: str, count: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-count:])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inkeep-consumer kafka",
        description="Fetch and run a local Apache Kafka (KRaft) for development.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("fetch", "fetch the broker's jars into the cache and print where"),
        ("start", "run one broker in the foreground until Ctrl-C"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--version", default=DEFAULT_VERSION, help="Kafka version")
        command.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help=f"jar cache root (default {default_cache_dir()})",
        )
        if name == "start":
            command.add_argument("--port", type=int, default=9092, help="client port")
            command.add_argument(
                "--data-dir", type=Path, default=None, help="keep data here (default: temporary)"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch":
            return _fetch_command(args.version, args.cache_dir)
        return _start_command(args.version, args.cache_dir, args.port, args.data_dir)
    except LocalKafkaError as exc:
        _say(f"error: {exc}")
        return 1


def _fetch_command(version: str, cache_dir: Path | None) -> int:
    if not (libs_dir(version, cache_dir) / COMPLETE_MARKER).is_file():
        _say(f"fetching Kafka {version} from Maven Central")
    print(fetch(version, cache_dir))  # noqa: T201 - the command's answer.
    return 0


def _start_command(version: str, cache_dir: Path | None, port: int, data_dir: Path | None) -> int:
    if not (libs_dir(version, cache_dir) / COMPLETE_MARKER).is_file():
        _say(f"fetching Kafka {version} from Maven Central")
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    cluster = KafkaCluster(1, version=version, cache_dir=cache_dir, data_dir=data_dir, ports=[port])
    stop = threading.Event()
    with _signals_set(stop):
        cluster.start()
        node = cluster.nodes[0]
        _say(f"Kafka {version} is up; broker log: {node.log_path}; Ctrl-C stops it")
        print(cluster.bootstrap_servers, flush=True)  # noqa: T201 - the command's answer.
        while not stop.wait(0.5):
            if not node.running:
                _say(f"the broker exited on its own:\n{node.log_tail()}")
                cluster.stop()
                return 1
        _say("stopping")
        cluster.stop()
    return 0


@contextlib.contextmanager
def _signals_set(stop: threading.Event) -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201 - the command talks to its user.
