"""Structured logs: one JSON object a line (or a readable console), for every library.

structlog and the standard library (aiokafka, aiohttp) share one processor chain,
so a log shipper sees a single format. The worker's own lines skip the standard
library's machinery and are written straight to stderr (a line per flushed
conversation must stay cheap); library lines go through `ProcessorFormatter`.
A redaction step runs last on every line as defence in depth: secrets are masked
whatever the level, and message content is dropped from anything above debug.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

MASK = "***"
SECRET_MARKERS = ("api_key", "apikey", "password", "passwd", "authorization", "secret", "token")
CONTENT_KEYS = frozenset({"content", "messages", "body"})
QUIET_LIBRARIES = ("aiokafka", "kafka")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_FIRST_KEYS = ("timestamp", "level", "event", "logger")
_encoder = msgspec.json.Encoder(enc_hook=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so reconfiguring replaces it."""


def _is_secret(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    return any(marker in lowered for marker in SECRET_MARKERS)


def _scrub(value: Any, *, keep_content: bool, depth: int = 0) -> Any:
    if depth > 4 or not isinstance(value, dict):
        return value
    cleaned: dict[Any, Any] = {}
    for key, item in value.items():
        name = str(key)
        if _is_secret(name):
            cleaned[key] = MASK
        elif name in CONTENT_KEYS and not keep_content:
            continue
        else:
            cleaned[key] = _scrub(item, keep_content=keep_content, depth=depth + 1)
    return cleaned


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Masks secret-named keys always; drops content/messages/body unless the line is debug."""
    keep_content = event_dict.get("level") == "debug"
    cleaned: EventDict = {}
    for key, value in event_dict.items():
        if key == "event":
            cleaned[key] = value
        elif _is_secret(key):
            cleaned[key] = MASK
        elif key in CONTENT_KEYS and not keep_content:
            continue
        else:
            cleaned[key] = _scrub(value, keep_content=keep_content)
    return cleaned


def _ordered_json(event_dict: EventDict) -> bytes:
    ordered = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return _encoder.encode(ordered)


def _render_json(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    return _ordered_json(event_dict).decode()


def _render_json_bytes(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> bytes:
    return _ordered_json(event_dict)


class _NamedLogger(structlog.BytesLogger):
    """structlog's fast writer, with the module name `add_logger_name` reads."""

    def __init__(self, name: str | None) -> None:
        super().__init__(sys.stderr.buffer)
        self.name = name or "consumer"


class _NamedTextLogger(structlog.PrintLogger):
    def __init__(self, name: str | None) -> None:
        super().__init__(sys.stderr)
        self.name = name or "consumer"


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]


def configure(level: str = "info", fmt: str = "json") -> None:
    """Routes structlog and stdlib logging to stderr at `level`, as `fmt` (json|console).

    Calling it again replaces the previous configuration instead of adding to it.
    """
    threshold = _LEVELS[level.lower()]
    stream = sys.stderr
    shared = _shared_processors()
    tail: list[Processor]
    if fmt == "json":
        tail = [structlog.processors.format_exc_info, _render_json]
    elif fmt == "console":
        tail = [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    else:
        raise ValueError(f"unknown log format {fmt!r}")
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, *tail],
    )
    handler = _Handler(stream)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    library_level = logging.DEBUG if threshold == logging.DEBUG else logging.WARNING
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(library_level)

    own: list[Processor] = [*shared, redact]
    if fmt == "json":
        own += [structlog.processors.format_exc_info, _render_json_bytes]
        factory: Any = _NamedLogger
    else:
        own += tail
        factory = _NamedTextLogger
    structlog.configure(
        processors=own,
        logger_factory=factory,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=True,
    )


def reset() -> None:
    """Undoes `configure` (for tests that configure logging in-process)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.setLevel(logging.WARNING)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET)
    structlog.reset_defaults()
