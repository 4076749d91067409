"""The in-process request series export what prometheus-client's Counter and Histogram would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agentcore.clock import ManualClock
from agentcore.events.base import Event
from agentcore.llm.accounting import Accounting
from agentcore.metrics import LATENCY_BUCKETS, OTHER, LabelValues, Metrics, RequestStats
from agentcore.repositories import open_repositories

OBSERVATIONS = [
    ("/api/v1/jsonrpc", "POST", 200, 0.0004),
    ("/api/v1/jsonrpc", "POST", 200, 0.001),  # on a bound: counted in le="0.001"
    ("/api/v1/jsonrpc", "POST", 429, 0.003),
    ("/api/v1/health", "GET", 200, 0.2),
    ("/api/v1/health", "GET", 200, 12.0),  # above every bound: +Inf only
    ("unmatched", "GET", 404, 0.0),
]


def _reference() -> bytes:
    registry = CollectorRegistry()
    requests = Counter(
        "agentcore_http_requests_total",
        "HTTP requests by route, method and status.",
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "agentcore_http_request_duration_seconds",
        "HTTP request latency by route.",
        ["route", "method"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for route, method, status, seconds in OBSERVATIONS:
        requests.labels(route, method, str(status)).inc()
        latency.labels(route, method).observe(seconds)
    return generate_latest(registry)


def _samples(text: bytes) -> set[str]:
    """Sample lines; ``_created`` ones aside (Metrics switches them off process-wide)."""
    return {
        line
        for line in text.decode().splitlines()
        if line and not line.startswith("#") and "_created{" not in line
    }


def test_request_stats_match_prometheus_client_sample_for_sample() -> None:
    registry = CollectorRegistry()
    stats = RequestStats()
    registry.register(stats)
    for observation in OBSERVATIONS:
        stats.observe(*observation)

    assert _samples(generate_latest(registry)) == _samples(_reference())


def test_one_process_metrics_render_the_request_series() -> None:
    metrics = Metrics()
    for observation in OBSERVATIONS:
        metrics.observe(*observation)

    text = metrics.render({}, {})

    assert _samples(_reference()) <= _samples(text)


# -- caller-chosen labels are bounded ------------------------------------------------------


def _series(text: bytes, name: str) -> set[str]:
    """The label sets of ``name``'s samples."""
    return {
        line.rsplit(" ", 1)[0] for line in text.decode().splitlines() if line.startswith(name + "{")
    }


def test_label_values_keep_the_first_cap_then_count_other() -> None:
    kept = LabelValues(2)

    assert [kept(v) for v in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]


def test_ten_thousand_caller_values_leave_the_series_count_bounded() -> None:
    """Agent ids and tenants on LLM calls, published event types and HTTP methods:
    10,000 distinct values of each make at most ``cap + 1`` values per label."""
    cap = 20
    metrics = Metrics(max_label_values=cap)
    accounting = Accounting(open_repositories("memory://").llm_usage, {}, ManualClock(), metrics)
    for i in range(10_000):
        accounting.record("acme", f"agent-{i}", "p", "m", 1, 1, 0.0)
        accounting.record(f"tenant-{i}", "bot", "p", "m", 1, 1, 0.0)
        accounting.failed("acme", f"agent-{i}", "p", "m", "error")
        metrics.count_event(Event(type=f"order.kind{i}", timestamp=0.0))
        metrics.observe("unmatched", f"M{i}", 405, 0.001)
    metrics.count_event(Event(type="task.completed", timestamp=0.0))  # past the cap: kept

    text = metrics.render({}, {})

    requests = _series(text, "agentcore_llm_requests_total")
    agents = {line.split('agent="')[1].split('"')[0] for line in requests}
    tenants = {line.split('tenant="')[1].split('"')[0] for line in requests}
    assert len(agents) == cap + 1 and OTHER in agents  # "bot" and the first 19 agent ids
    assert len(tenants) == cap + 1 and OTHER in tenants
    assert len(requests) <= 2 * (cap + 1) * (cap + 1)
    events = _series(text, "agentcore_events_published_total")
    assert len(events) == cap + 2
    assert 'agentcore_events_published_total{type="task.completed"}' in events
    assert 'agentcore_events_published_total{type="other"}' in events
    assert _series(text, "agentcore_http_requests_total") == {
        'agentcore_http_requests_total{method="other",route="unmatched",status="405"}'
    }
