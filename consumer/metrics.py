"""The worker's Prometheus metrics, in one registry of its own.

A private `REGISTRY` (not prometheus_client's global one) keeps `/metrics` to
exactly what the worker reports and lets tests build fresh apps without
duplicate-registration errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "inkeep_consumer"

REGISTRY = CollectorRegistry(auto_describe=True)

records_consumed = Counter(
    f"{PREFIX}_records_consumed",
    "Records read from the input topic.",
    ["topic", "partition"],
    registry=REGISTRY,
)
records_invalid = Counter(
    f"{PREFIX}_records_invalid",
    "Input records that broke the event contract, by kind (not_json, schema, too_large...).",
    ["kind"],
    registry=REGISTRY,
)
records_mis_keyed = Counter(
    f"{PREFIX}_records_mis_keyed",
    "Input records whose Kafka key differs from their conversation id.",
    registry=REGISTRY,
)
events_duplicate = Counter(
    f"{PREFIX}_events_duplicate",
    "Events ignored because their event_id was already applied.",
    registry=REGISTRY,
)
dead_lettered = Counter(
    f"{PREFIX}_dead_lettered",
    "Items written to the dead-letter topic: what=record (bad input) or conversation "
    "(a body the API refused).",
    ["what", "reason"],
    registry=REGISTRY,
)
conversations_flushed = Counter(
    f"{PREFIX}_conversations_flushed",
    "Conversation flushes acknowledged by the API, by what triggered them.",
    ["trigger"],
    registry=REGISTRY,
)
flushes_refused = Counter(
    f"{PREFIX}_flushes_refused",
    "Flushes not sent (fewer messages than acknowledged, history expired, too large to fit).",
    registry=REGISTRY,
)
conversations_truncated = Counter(
    f"{PREFIX}_conversations_truncated",
    "Flushes whose body was cut to fit the API's size limit.",
    registry=REGISTRY,
)
api_requests = Counter(
    f"{PREFIX}_api_requests",
    "Requests to the API (every endpoint), by HTTP status or timeout/connection_error.",
    ["status"],
    registry=REGISTRY,
)
api_retries = Counter(
    f"{PREFIX}_api_retries",
    "Requests to the API that were retried, by reason.",
    ["reason"],
    registry=REGISTRY,
)
flush_latency_seconds = Histogram(
    f"{PREFIX}_flush_latency_seconds",
    "Time from a flush being decided to the API acknowledging it.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
    registry=REGISTRY,
)
open_conversations = Gauge(
    f"{PREFIX}_open_conversations",
    "Conversations open (not yet completed) in this worker.",
    registry=REGISTRY,
)
pending_flushes = Gauge(
    f"{PREFIX}_pending_flushes",
    "Flushes decided but not yet acknowledged or dead-lettered.",
    registry=REGISTRY,
)
consumer_lag = Gauge(
    f"{PREFIX}_consumer_lag",
    "Records between this worker's position and the end of each assigned partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
paused = Gauge(
    f"{PREFIX}_paused",
    "1 while consumption is paused, by reason (backpressure, auth).",
    ["reason"],
    registry=REGISTRY,
)
state_records_written = Counter(
    f"{PREFIX}_state_records_written",
    "Records written to the state topic (snapshots and tombstones).",
    registry=REGISTRY,
)
offsets_committed = Counter(
    f"{PREFIX}_offsets_committed",
    "Offset commits made to the consumer group.",
    registry=REGISTRY,
)
auth_failing = Gauge(
    f"{PREFIX}_auth_failing",
    "1 while the API refuses the key (401/403).",
    registry=REGISTRY,
)

for _reason in ("backpressure", "auth"):
    paused.labels(reason=_reason).set(0)

ready = Gauge(
    f"{PREFIX}_ready",
    "1 while /readyz answers 200; updated on every scrape.",
    registry=REGISTRY,
)
ready_check = Gauge(
    f"{PREFIX}_ready_check",
    "Each readiness check (assigned, state_restored, api_auth, api_reachable): 1 when it passes.",
    ["check"],
    registry=REGISTRY,
)
durable_writes_failed = Counter(
    f"{PREFIX}_durable_writes_failed",
    "State or dead-letter records the broker did not take; the worker stops on the first.",
    registry=REGISTRY,
)
offset_commits_failed = Counter(
    f"{PREFIX}_offset_commits_failed",
    "Offset commits the group coordinator refused (skipped; the next checkpoint retries).",
    registry=REGISTRY,
)
state_retained = Gauge(
    f"{PREFIX}_state_retained",
    "Completed conversations (kind=completed) and markers (kind=marker) the worker keeps.",
    ["kind"],
    registry=REGISTRY,
)
state_retained_bytes = Gauge(
    f"{PREFIX}_state_retained_bytes",
    "Bytes completed conversations and markers take, where they are kept (memory or disk).",
    ["where"],
    registry=REGISTRY,
)
state_budget_bytes = Gauge(
    f"{PREFIX}_state_budget_bytes",
    "The bound on state_retained_bytes (STATE_MEMORY_BYTES, or STATE_DISK_BYTES with STATE_DIR).",
    registry=REGISTRY,
)
state_evicted = Counter(
    f"{PREFIX}_state_evicted",
    "Entries evicted to stay within the budget: completed conversations made markers early "
    "(kind=completed), markers deleted early (kind=marker).",
    ["kind"],
    registry=REGISTRY,
)
notices = Counter(
    f"{PREFIX}_notices",
    "Feedback (POST /feedback) and interaction (POST /events) requests settled, by kind and "
    "HTTP status; status `refused` when the event could not become a request.",
    ["kind", "status"],
    registry=REGISTRY,
)
notices_waiting = Gauge(
    f"{PREFIX}_notices_waiting",
    "Conversations with a feedback or interaction waiting for its message to be logged, or out.",
    registry=REGISTRY,
)
