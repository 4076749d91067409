"""The in-process request series export what prometheus-client's Counter and Histogram would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agentcore.metrics import LATENCY_BUCKETS, Metrics, RequestStats

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
