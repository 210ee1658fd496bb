"""Liveness, readiness and metrics over HTTP, for Kubernetes probes and Prometheus.

The runtime owns a `Health` and tells it what is going on; the server only reads
it. Liveness is a heartbeat from the worker's loop (and from a long restore or
revoke while it makes progress), so a wedged loop gets the pod restarted.
Readiness says whether this worker is doing useful work right now and, when
not, names the failing checks in its JSON body. The API counts as unreachable
only after requests have failed without a single success for a whole window
(`Reachability`), so a few 5xx among many successes never flip the pod.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer import metrics

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry

_json = msgspec.json.Encoder()
log = structlog.get_logger(__name__)

API_UNREACHABLE_AFTER_SECONDS = 30.0
"""How long requests must fail with no success in between before the API counts as unreachable."""


class Reachability:
    """Whether the API answers, judged over a window rather than on the last answer.

    The API turns unreachable when answers have failed (5xx, timeout, dropped
    connection) for at least `window` seconds, from the first failure after the
    last success to the latest failure, with no success in between. One success
    makes it reachable again. Only observed answers move the state: with no
    request in flight nothing is known, and nothing changes. Each change is
    logged once.
    """

    def __init__(
        self,
        *,
        window: float = API_UNREACHABLE_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0:
            raise ValueError("the reachability window must be positive")
        self.window = window
        self._clock = clock
        self.reachable = True
        self._failing_since: float | None = None

    def observe(self, ok: bool, reason: str = "") -> None:  # noqa: FBT001 - one observation.
        """Records one answer: `ok` when the API answered below 500."""
        now = self._clock()
        if ok:
            self._failing_since = None
            if not self.reachable:
                self.reachable = True
                log.info("api_reachable")
            return
        if self._failing_since is None:
            self._failing_since = now
        if self.reachable and now - self._failing_since >= self.window:
            self.reachable = False
            log.warning(
                "api_unreachable",
                reason=reason,
                failing_seconds=round(now - self._failing_since, 3),
            )


class Health:
    """What the probes report; mutated by the runtime, read by `HealthServer`.

    `assigned` means the worker joined its group (it may own no partitions yet);
    `restoring` is true while conversation state is read back after an assignment.
    """

    def __init__(
        self,
        *,
        heartbeat_timeout: float = 60.0,
        unreachable_after: float = API_UNREACHABLE_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self._clock = clock
        self._last_beat = clock()
        self.assigned = False
        self.restoring = False
        self.auth_failed = False
        self.reachability = Reachability(window=unreachable_after, clock=clock)

    def beat(self) -> None:
        """The loop, or a long restore or revoke, made progress."""
        self._last_beat = self._clock()

    def observe_api(self, ok: bool, reason: str = "") -> None:  # noqa: FBT001 - one observation.
        """One answer from the API; see `Reachability`."""
        self.reachability.observe(ok, reason)

    def set_assigned(self, assigned: bool) -> None:  # noqa: FBT001 - a setter.
        self.assigned = assigned

    def set_restoring(self, restoring: bool) -> None:  # noqa: FBT001 - a setter.
        self.restoring = restoring

    def set_auth_failed(self, failed: bool) -> None:  # noqa: FBT001 - a setter.
        """Mirrors the sink's view; the sink keeps the `auth_failing` gauge, where it changes."""
        self.auth_failed = failed

    @property
    def api_reachable(self) -> bool:
        return self.reachability.reachable

    @property
    def since_beat(self) -> float:
        return self._clock() - self._last_beat

    @property
    def alive(self) -> bool:
        return self.since_beat <= self.heartbeat_timeout

    def checks(self) -> dict[str, bool]:
        """Each readiness check by name; true means it passes."""
        return {
            "assigned": self.assigned,
            "state_restored": not self.restoring,
            "api_auth": not self.auth_failed,
            "api_reachable": self.api_reachable,
        }

    @property
    def ready(self) -> bool:
        return all(self.checks().values())


class HealthServer:
    """Serves `/healthz`, `/readyz` and `/metrics` for one `Health`."""

    def __init__(self, health: Health, registry: CollectorRegistry = metrics.REGISTRY) -> None:
        self.health = health
        self.registry = registry
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str = "0.0.0.0", port: int = 8080) -> int:  # noqa: S104 - probes come from outside the pod.
        """Starts listening and returns the bound port (pass 0 for any free port)."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        return int(address[1])

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        health = self.health
        body = {"alive": health.alive, "seconds_since_heartbeat": round(health.since_beat, 3)}
        return _json_response(body, 200 if health.alive else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = self.health.checks()
        failing = [name for name, ok in checks.items() if not ok]
        body = {"ready": not failing, "failing": failing, "checks": checks}
        return _json_response(body, 503 if failing else 200)

    async def _metrics(self, _request: web.Request) -> web.Response:
        checks = self.health.checks()
        for name, ok in checks.items():
            metrics.ready_check.labels(check=name).set(1 if ok else 0)
        metrics.ready.set(1 if all(checks.values()) else 0)
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def _json_response(body: object, status: int) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")
