"""The worker's settings: one frozen object, read from the environment in one place.

`Settings.from_env` is the only reader of environment variables in the package;
everything else receives a `Settings`. A wrong or missing value fails at start
with a `ConfigError` that names the variable, so an operator sees one clear line
instead of a traceback later. Secrets never appear in `repr()`, `str()` or
`masked()`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from consumer.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MASK = "***"
SECRETS = frozenset({"inkeep_api_key", "kafka_sasl_password"})

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OFFSET_RESETS = ("earliest", "latest", "none")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "console")
UPGRADE_FROM = ("0.1",)
"""Releases whose state-topic layout a worker can keep writing while they share its group."""

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def env_name(field: str) -> str:
    return field.upper()


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Everything the worker can be told; field `x` is read from variable `X`."""

    inkeep_api_key: str
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topic: str = "chat-completions"
    kafka_group_id: str = "inkeep-conversation-consumer"
    kafka_dlq_topic: str = ""  # "" = f"{kafka_topic}.dlq"
    kafka_state_topic: str = ""  # "" = f"{kafka_topic}.state"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_auto_offset_reset: str = "earliest"
    kafka_topic_replication_factor: int = -1
    inkeep_api_base_url: str = "https://api.analytics.inkeep.com"
    inkeep_api_allow_http: bool = False
    """Allows a plain `http://` base URL to a host that is not loopback (the key then
    crosses the network in clear text): for an emulator in a private network only."""
    conversation_idle_timeout_seconds: float = 300.0
    conversation_max_open_seconds: float = 3600.0
    conversation_state_retention_seconds: float = 86400.0
    state_memory_bytes: int = 268_435_456
    """The memory completed conversations and markers may take, across the worker, when
    they are kept in memory (no `state_dir`); past it the oldest become markers early."""
    state_dir: str = ""
    """A directory for one SQLite file per assigned partition holding completed
    conversations and markers on disk instead; "" keeps them in memory."""
    state_disk_bytes: int = 4_294_967_296
    """With `state_dir`: what those files may hold, across the worker."""
    state_upgrade_from: str = ""
    """A rolling upgrade from this release is under way (Kafka Streams' `upgrade.from`):
    write the state topic in its layout, read both. "" writes the changelog layout."""
    http_port: int = 8080
    log_level: str = "info"
    log_format: str = "json"
    commit_interval_seconds: float = 5.0
    shutdown_grace_seconds: float = 25.0
    max_open_conversations: int = 100_000
    max_buffered_records: int = 500
    max_pending_flushes: int = 1000
    max_record_bytes: int = 1_048_576
    inkeep_max_concurrency: int = 16
    inkeep_rate_limit_per_second: float = 0.0
    inkeep_request_timeout_seconds: float = 30.0
    inkeep_max_retry_delay_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.kafka_dlq_topic:
            object.__setattr__(self, "kafka_dlq_topic", f"{self.kafka_topic}.dlq")
        if not self.kafka_state_topic:
            object.__setattr__(self, "kafka_state_topic", f"{self.kafka_topic}.state")
        if self.uses_sasl and self.kafka_sasl_mechanism is None:
            object.__setattr__(self, "kafka_sasl_mechanism", "PLAIN")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Reads every setting from `environ`; `overrides` (by field name) win over it.

        Override values are parsed exactly like the variables they stand for, so a
        command-line flag and its variable fail the same way. `None` means "not given".
        Empty variables count as unset; unknown variables are ignored.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        raw: dict[str, str] = {}
        for name in names:
            value = environ.get(env_name(name))
            if value is not None and value.strip():
                raw[name] = value.strip()
        for name, value in overrides.items():
            if value is not None and str(value).strip():
                raw[name] = str(value).strip()
        return _parse(raw)

    def masked(self) -> dict[str, str]:
        """Variable name -> effective value as text, secrets replaced by `***`."""
        shown: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                text = ""
            elif f.name in SECRETS:
                text = MASK
            elif f.name == "inkeep_api_base_url":
                text = mask_userinfo(value)
            elif isinstance(value, bool):
                text = str(value).lower()
            elif isinstance(value, float) and value.is_integer():
                text = str(int(value))
            else:
                text = str(value)
            shown[env_name(f.name)] = text
        return shown

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = MASK if f.name in SECRETS and value is not None else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    @property
    def uses_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    def kafka_client_options(self) -> dict[str, object]:
        """Connection keyword arguments shared by every aiokafka client the worker builds."""
        options: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.uses_sasl:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password
        if self.uses_tls:
            from aiokafka.helpers import create_ssl_context  # noqa: PLC0415 - only TLS needs it.

            options["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile)
        return options


def _parse(raw: dict[str, str]) -> Settings:
    if "inkeep_api_key" not in raw:
        raise ConfigError("INKEEP_API_KEY", "required (the Inkeep Analytics API key)")
    values = {name: parse(name, raw[name]) for name, parse in _PARSERS.items() if name in raw}
    settings = Settings(**values)
    _check_topics(settings)
    _check_security(settings)
    _check_api(settings)
    return settings


def _check_api(settings: Settings) -> None:
    parts = urlsplit(settings.inkeep_api_base_url)
    plain = parts.scheme == "http" and not settings.inkeep_api_allow_http
    if plain and not _is_loopback(parts.hostname or ""):
        raise ConfigError(
            "INKEEP_API_BASE_URL",
            f"is plain http to a host that is not loopback, got {mask_userinfo(parts.geturl())!r}: "
            "the API key would cross the network in clear text; use https, or set "
            "INKEEP_API_ALLOW_HTTP=true for a test API in a private network",
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask_userinfo(url: str) -> str:
    """The URL with any `user:password@` replaced by `***@`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{MASK}@{host}").geturl()


def _check_topics(settings: Settings) -> None:
    topic = settings.kafka_topic
    for name in ("kafka_dlq_topic", "kafka_state_topic"):
        if getattr(settings, name) == topic:
            raise ConfigError(env_name(name), f"must differ from KAFKA_TOPIC, got {topic!r}")
    if settings.kafka_dlq_topic == settings.kafka_state_topic:
        raise ConfigError(
            "KAFKA_STATE_TOPIC",
            f"must differ from KAFKA_DLQ_TOPIC, got {settings.kafka_state_topic!r}",
        )


def _check_security(settings: Settings) -> None:
    protocol = settings.kafka_security_protocol
    sasl_fields = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
    if settings.uses_sasl:
        for name in sasl_fields[1:]:
            if getattr(settings, name) is None:
                raise ConfigError(
                    env_name(name),
                    f"required when KAFKA_SECURITY_PROTOCOL is {protocol} "
                    f"(SASL {settings.kafka_sasl_mechanism})",
                )
    else:
        for name in sasl_fields:
            if getattr(settings, name) is not None:
                raise ConfigError(
                    env_name(name),
                    f"set, but KAFKA_SECURITY_PROTOCOL is {protocol} "
                    "(use SASL_PLAINTEXT or SASL_SSL for SASL)",
                )
    if settings.kafka_ssl_cafile is not None and not settings.uses_tls:
        raise ConfigError(
            "KAFKA_SSL_CAFILE",
            f"set, but KAFKA_SECURITY_PROTOCOL is {protocol} (use SSL or SASL_SSL for TLS)",
        )


def _text(name: str, value: str) -> str:
    del name
    return value


def _directory(name: str, value: str) -> str:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ConfigError(env_name(name), f"{value!r} exists and is not a directory")
    return value


def _choice(
    options: tuple[str, ...], *, upper: bool, aliases: Mapping[str, str] | None = None
) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        normal = value.upper() if upper else value.lower()
        normal = (aliases or {}).get(normal, normal)
        if normal not in options:
            raise ConfigError(env_name(name), f"must be one of {', '.join(options)}, got {value!r}")
        return normal

    return parse


def _number(*, minimum: float, inclusive: bool) -> Callable[[str, str], float]:
    sign = ">=" if inclusive else ">"

    def parse(name: str, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        ok = number >= minimum if inclusive else number > minimum
        if not math.isfinite(number) or not ok:
            raise ConfigError(env_name(name), f"must be a number {sign} {minimum:g}, got {value!r}")
        return number

    return parse


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum or (maximum is not None and number > maximum):
            wanted = (
                f"an integer from {minimum} to {maximum}"
                if maximum is not None
                else f"an integer >= {minimum}"
            )
            raise ConfigError(env_name(name), f"must be {wanted}, got {value!r}")
        return number

    return parse


def _replication_factor(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number != -1 and not 1 <= number <= 32767:
        raise ConfigError(
            env_name(name), f"must be -1 (broker default) or an integer >= 1, got {value!r}"
        )
    return number


def _topic(name: str, value: str) -> str:
    if not _TOPIC_NAME.fullmatch(value) or value in (".", ".."):
        raise ConfigError(
            env_name(name),
            f"must be a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -), got {value!r}",
        )
    return value


def _group_id(name: str, value: str) -> str:
    if len(value) > 255:
        raise ConfigError(env_name(name), "must be at most 255 characters")
    return value


def _bootstrap_servers(name: str, value: str) -> str:
    for server in value.split(","):
        entry = server.strip()
        host, port = _split_host_port(entry)
        if not host or (port is not None and not (port.isdigit() and 1 <= int(port) <= 65535)):
            raise ConfigError(
                env_name(name),
                f"must be a comma-separated list of host:port, got {value!r}",
            )
    return ",".join(s.strip() for s in value.split(","))


def _split_host_port(entry: str) -> tuple[str, str | None]:
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "", None
        return host, rest[1:] if rest else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, None


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    shown = mask_userinfo(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(env_name(name), f"must be an http(s) URL, got {shown!r}")
    if "@" in parts.netloc:
        raise ConfigError(
            env_name(name),
            f"must not carry credentials (user:password@), got {shown!r}; "
            "the API key goes in INKEEP_API_KEY",
        )
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(env_name(name), f"has a bad port, got {shown!r}") from None
    if parts.query or parts.fragment:
        raise ConfigError(env_name(name), f"must have no query or fragment, got {shown!r}")
    return value.rstrip("/")


def _flag(name: str, value: str) -> bool:
    normal = value.lower()
    if normal in ("true", "1", "yes"):
        return True
    if normal in ("false", "0", "no"):
        return False
    raise ConfigError(env_name(name), f"must be true or false, got {value!r}")


def _cafile(name: str, value: str) -> str:
    if not Path(value).is_file():
        raise ConfigError(env_name(name), f"no such file: {value!r}")
    return value


_positive = _number(minimum=0, inclusive=False)

_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "inkeep_api_key": _text,
    "kafka_bootstrap_servers": _bootstrap_servers,
    "kafka_topic": _topic,
    "kafka_group_id": _group_id,
    "kafka_dlq_topic": _topic,
    "kafka_state_topic": _topic,
    "kafka_security_protocol": _choice(SECURITY_PROTOCOLS, upper=True),
    "kafka_sasl_mechanism": _choice(SASL_MECHANISMS, upper=True),
    "kafka_sasl_username": _text,
    "kafka_sasl_password": _text,
    "kafka_ssl_cafile": _cafile,
    "kafka_auto_offset_reset": _choice(OFFSET_RESETS, upper=False),
    "kafka_topic_replication_factor": _replication_factor,
    "inkeep_api_base_url": _url,
    "inkeep_api_allow_http": _flag,
    "conversation_idle_timeout_seconds": _positive,
    "conversation_max_open_seconds": _positive,
    "conversation_state_retention_seconds": _positive,
    "state_memory_bytes": _integer(1_048_576),
    "state_dir": _directory,
    "state_disk_bytes": _integer(1_048_576),
    "state_upgrade_from": _choice(UPGRADE_FROM, upper=False, aliases={"0.1.0": "0.1"}),
    "http_port": _integer(0, 65535),
    "log_level": _choice(LOG_LEVELS, upper=False, aliases={"warn": "warning"}),
    "log_format": _choice(LOG_FORMATS, upper=False),
    "commit_interval_seconds": _positive,
    "shutdown_grace_seconds": _positive,
    "max_open_conversations": _integer(1),
    "max_buffered_records": _integer(1),
    "max_pending_flushes": _integer(1),
    "max_record_bytes": _integer(1),
    "inkeep_max_concurrency": _integer(1),
    "inkeep_rate_limit_per_second": _number(minimum=0, inclusive=True),
    "inkeep_request_timeout_seconds": _positive,
    "inkeep_max_retry_delay_seconds": _positive,
}
