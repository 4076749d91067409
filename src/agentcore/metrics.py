"""Prometheus metrics, one collector set per app (nothing created on import).

With one worker the metrics live in this process's own registry. With
several, prometheus-client's multiprocess mode is used: the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start (the library decides
its storage on import), each worker writes its samples to files there and
``/metrics`` on any worker sums them. Label children are bound once per
(route, method, status) and cached, because the Prometheus updates stood out
in a profile of the request path (performance-history.md, "HTTP throughput",
the earlier run before the hot-path changes).

Agent and task counts come from the store at scrape time, so they are
correct across workers and restarts.

Label values a caller chooses (tenants, agent ids, event types, HTTP
methods) are bounded, so no caller can grow /metrics and the process
without limit by inventing them: each such label keeps the first
``metrics.max_label_values`` distinct values it sees and counts every later
one as ``other`` (:class:`LabelValues`); the gateway's own event types
(``agent.*``, ``task.*``, ...) always keep their name. Every other label
(route, status, provider, model, reason) comes from code or configuration.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from agentcore.events.base import Event, is_system_type

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


#: The value of a bounded label past its cap.
OTHER = "other"
#: HTTP methods counted by name; any other (a server may pass any token) is ``OTHER``.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class LabelValues:
    """The values one caller-chosen label may take: the first ``cap`` distinct
    values as they are, every later one as :data:`OTHER`.

    A set lookup per use, no lock (one event loop per process). Per process: with
    several workers each keeps its own first ``cap``, so a scrape can show up to
    ``workers * cap`` values of the label.
    """

    __slots__ = ("_cap", "_kept")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        kept = self._kept
        if value in kept:
            return value
        if len(kept) < self._cap:
            kept.add(value)
            return value
        return OTHER


class _Counts(Collector):
    def __init__(self, agents: Mapping[str, int], tasks: Mapping[str, int]) -> None:
        self._agents = agents
        self._tasks = tasks

    def collect(self) -> Iterator[Metric]:
        agents = GaugeMetricFamily(
            "agentcore_agents", "Registered agents by status.", labels=["status"]
        )
        for status in ("active", "inactive"):
            agents.add_metric([status], self._agents.get(status, 0))
        yield agents
        tasks = GaugeMetricFamily("agentcore_tasks", "Tasks by status.", labels=["status"])
        for status in (
            "pending",
            "assigned",
            "running",
            "completed",
            "failed",
            "cancelled",
            "timed_out",
        ):
            tasks.add_metric([status], self._tasks.get(status, 0))
        yield tasks


class _Series:
    __slots__ = ("buckets", "count", "seconds")

    def __init__(self, buckets: int) -> None:
        self.count = 0
        self.seconds = 0.0
        #: Observations per latency bucket, ``+Inf`` last (not cumulative).
        self.buckets = [0] * buckets


class RequestStats(Collector):
    """HTTP request counts and latencies in plain Python numbers, exported at scrape time.

    The hot-path alternative to a prometheus-client Counter and Histogram in
    one process: an observation is a dict lookup, two additions and a
    bisection, where ``inc()`` plus ``observe()`` take a lock each
    (performance-history.md, "HTTP throughput", second session). It exports
    the samples those two would:
    ``agentcore_http_requests_total{route,method,status}`` and the
    ``agentcore_http_request_duration_seconds{route,method}`` histogram.
    Its numbers live in this process only, so multiprocess mode does not use it.
    """

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self._series: dict[tuple[str, str, int], _Series] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(len(self.bounds) + 1)
        series.count += 1
        series.seconds += seconds
        series.buckets[bisect_left(self.bounds, seconds)] += 1  # bounds are inclusive (le)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "agentcore_http_requests",
            "HTTP requests by route, method and status.",
            labels=["route", "method", "status"],
        )
        merged: dict[tuple[str, str], _Series] = {}
        for (route, method, status), series in list(self._series.items()):
            requests.add_metric([route, method, str(status)], series.count)
            total = merged.get((route, method))
            if total is None:
                total = merged[(route, method)] = _Series(len(series.buckets))
            total.count += series.count
            total.seconds += series.seconds
            total.buckets = [a + b for a, b in zip(total.buckets, series.buckets, strict=True)]
        latency = HistogramMetricFamily(
            "agentcore_http_request_duration_seconds",
            "HTTP request latency by route.",
            labels=["route", "method"],
        )
        labels = [*(repr(bound) for bound in self.bounds), "+Inf"]
        for (route, method), total in merged.items():
            running = 0
            cumulative: list[tuple[str, float]] = []
            for label, n in zip(labels, total.buckets, strict=True):
                running += n
                cumulative.append((label, float(running)))
            latency.add_metric([route, method], cumulative, total.seconds)
        yield requests
        yield latency


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None, max_label_values: int = 200) -> None:
        self.multiprocess_dir = multiprocess_dir
        #: Bounded label values (see the module docstring): tenants and agents of
        #: the LLM series, the types of published events.
        self.tenants = LabelValues(max_label_values)
        self.agents = LabelValues(max_label_values)
        self._event_types = LabelValues(max_label_values)
        #: Event type -> its counter child, for the types that keep their name
        #: (a ``labels()`` call per event cost as much as the rest of counting).
        self._event_counters: dict[str, Counter] = {}
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created samples only add scrape size here
        self.registry = CollectorRegistry()
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds: what
        # the load-test runner samples (of the worker that answers the scrape).
        ProcessCollector(registry=self.registry)
        #: One process: plain counters read at scrape time; several: prometheus-client's
        #: multiprocess files (a Counter and a Histogram, label children bound once).
        self._stats: RequestStats | None = None
        self._requests: Counter | None = None
        self._latency: Histogram | None = None
        if multiprocess_dir is None:
            self._stats = RequestStats()
            self.registry.register(self._stats)
        else:
            self._requests = Counter(
                "agentcore_http_requests_total",
                "HTTP requests by route, method and status.",
                ["route", "method", "status"],
                registry=self.registry,
            )
            self._latency = Histogram(
                "agentcore_http_request_duration_seconds",
                "HTTP request latency by route.",
                ["route", "method"],
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            )
        self.in_flight = Gauge(
            "agentcore_http_requests_in_flight",
            "HTTP requests being handled.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.events = Counter(
            "agentcore_events_published_total",
            "Events published on the internal bus.",
            ["type"],
            registry=self.registry,
        )
        self.fanout_received = Counter(
            "agentcore_events_fanout_received_total",
            "Events committed by other workers or instances and delivered here (events.fanout).",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "agentcore_rate_limited_total",
            "Requests refused with 429 by route class.",
            ["route_class"],
            registry=self.registry,
        )
        self.ratelimit_backend_errors = Counter(
            "agentcore_ratelimit_backend_errors_total",
            "Rate-limit checks the shared backend (Redis) could not make, by what the "
            "request got (admitted: rate_limit.on_backend_error = open; refused: closed).",
            ["outcome"],
            registry=self.registry,
        )
        self.shed = Counter(
            "agentcore_shed_total",
            "Requests refused with 503 because too many were in flight.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "agentcore_rejected_total",
            "Requests refused before their handler, by reason (body_too_large, json_too_deep, "
            "read_timeout, handler_timeout, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.unauthorized = Counter(
            "agentcore_unauthorized_total",
            "Requests refused with 401/403, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.stream_connections = Gauge(
            "agentcore_stream_connections",
            "Open event streams by transport (websocket, sse).",
            ["transport"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_subscriptions = Gauge(
            "agentcore_stream_subscriptions",
            "Subscriptions held by open event streams.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_events_sent = Counter(
            "agentcore_stream_events_sent_total",
            "Events written to stream clients by transport (replayed ones included).",
            ["transport"],
            registry=self.registry,
        )
        self.stream_slow_consumers = Counter(
            "agentcore_stream_slow_consumers_total",
            "Streams closed because their send queue overflowed (WebSocket 1013).",
            registry=self.registry,
        )
        self.stream_publish_to_send = Histogram(
            "agentcore_stream_publish_to_send_seconds",
            "Seconds from an event's timestamp to its write to a stream client (live events).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "agentcore_webhook_attempts_total",
            "Webhook delivery attempts by outcome (succeeded, retry, dead, gone).",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_attempt_seconds = Histogram(
            "agentcore_webhook_attempt_duration_seconds",
            "Seconds one webhook attempt took (resolve, connect, send, response).",
            buckets=(*LATENCY_BUCKETS, 15.0, 30.0),
            registry=self.registry,
        )
        self.webhook_dead_letters = Counter(
            "agentcore_webhook_dead_letters_total",
            "Webhook deliveries given up (attempts exhausted or 410 Gone).",
            registry=self.registry,
        )
        self.webhook_disabled = Counter(
            "agentcore_webhook_endpoints_disabled_total",
            "Webhook endpoints disabled by delivery, by reason (gone, failing).",
            ["reason"],
            registry=self.registry,
        )
        # LLM routing (docs/llm.md). Tenant and agent labels are bounded (``tenants``,
        # ``agents``); per-agent usage past the cap is in the llm_usage table.
        self.llm_requests = Counter(
            "agentcore_llm_requests_total",
            "LLM calls by tenant, agent, provider, model and outcome (ok, error, timeout, "
            "rejected).",
            ["tenant", "agent", "provider", "model", "outcome"],
            registry=self.registry,
        )
        self.llm_tokens = Counter(
            "agentcore_llm_tokens_total",
            "LLM tokens by tenant, agent, provider, model and kind (prompt, completion).",
            ["tenant", "agent", "provider", "model", "kind"],
            registry=self.registry,
        )
        self.llm_cost = Counter(
            "agentcore_llm_cost_total",
            "LLM cost (in the unit of the configured prices) by tenant, agent, provider, model.",
            ["tenant", "agent", "provider", "model"],
            registry=self.registry,
        )
        self.llm_provider_latency = Histogram(
            "agentcore_llm_provider_latency_seconds",
            "Seconds per provider call (to the first chunk when streaming), by provider and model.",
            ["provider", "model"],
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0),
            registry=self.registry,
        )
        self.llm_fallbacks = Counter(
            "agentcore_llm_fallbacks_total",
            "Failed LLM attempts that moved on to the next candidate, by provider, model, reason.",
            ["provider", "model", "reason"],
            registry=self.registry,
        )
        self.llm_budget_exceeded = Counter(
            "agentcore_llm_budget_exceeded_total",
            "LLM calls refused with 429 because the tenant's daily budget was used up.",
            ["tenant"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def count_event(self, event: Event) -> None:
        """One event committed to the log (the bus's ``on_publish``): a dict lookup
        once its type has been seen; published types past the cap count as ``other``."""
        counter = self._event_counters.get(event.type)
        if counter is None:
            kind = event.type
            label = kind if is_system_type(kind) else self._event_types(kind)
            counter = self.events.labels(label)
            if label == kind:  # not OTHER: kept at hand (as bounded as the labels)
                self._event_counters[kind] = counter
        counter.inc()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered HTTP request: ``seconds`` from arrival to the last byte handed over."""
        if method not in HTTP_METHODS:
            method = OTHER
        if self._stats is not None:
            self._stats.observe(route, method, status, seconds)
            return
        assert self._requests is not None and self._latency is not None
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self._requests.labels(route, method, str(status)),
                self._latency.labels(route, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self, agents: Mapping[str, int], tasks: Mapping[str, int]) -> bytes:
        counts = CollectorRegistry()
        counts.register(_Counts(agents, tasks))
        if self.multiprocess_dir:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            own = generate_latest(merged)
        else:
            own = generate_latest(self.registry)
        return own + generate_latest(counts)
