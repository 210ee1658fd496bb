"""One error hierarchy for the worker.

Every error says whether trying again can help (`retriable`), so the loop and the
sink decide what to do from the type alone, never from message text.
"""

from __future__ import annotations


class ConsumerError(Exception):
    """Base of every error the worker raises on purpose."""

    retriable: bool = False


class ConfigError(ConsumerError):
    """A setting is missing or wrong; the message names it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class InvalidEvent(ConsumerError):
    """A record breaks the input contract; it goes to the dead-letter topic.

    `kind` is a short stable code for headers and metrics (`not_json`, `schema`,
    `too_large`...); the message is the readable reason.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class SinkError(ConsumerError):
    """The analytics API did not take a request."""

    def __init__(self, message: str, *, status: int | None = None, answer: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.answer = answer


class TransientError(SinkError):
    """5xx, timeouts, dropped connections: back off and try again."""

    retriable = True


class RateLimited(TransientError):
    """429: try again after `wait` seconds when the API said how long."""

    def __init__(
        self, message: str, *, wait: float | None, status: int = 429, answer: bytes = b""
    ) -> None:
        super().__init__(message, status=status, answer=answer)
        self.wait = wait


class BodyTooLarge(SinkError):
    """413: the body must shrink before it is sent again."""

    retriable = True


class AuthFailed(SinkError):
    """401/403: no request can succeed until the key is fixed; consumption pauses."""

    retriable = True


class Rejected(SinkError):
    """400/422 and other final answers: the body goes to the dead-letter topic."""


class CannotFit(ConsumerError):
    """A conversation cannot be cut to the API's body limit.

    The worker's own refusal (`too_large`), not the API's (`Rejected`).
    """


class StateError(ConsumerError):
    """A state-topic record cannot be read: stop rather than flush a partial history."""


class StoreError(ConsumerError):
    """The local store of completed conversations failed (a full or broken disk): the
    worker stops, since the state topic can rebuild it; the event is not at fault."""
