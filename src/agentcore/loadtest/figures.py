"""The figures of one run, each with the tool that produced it, and who the bottleneck was.

Sources, as named in every figure's ``source``:

* ``locust exact``: every request recorded by :mod:`.locust_plugin`, percentiles nearest-rank;
* ``locust buckets``: Locust's CSV (percentiles rounded to 2 significant digits), used only
  when the exact recording is missing;
* ``wrk``: :mod:`.wrk`, for raw HTTP throughput;
* ``/proc``: the runner's sampler of the gateway's process tree (1 s interval);
* ``gateway /metrics``: counters before and after the run, gauges sampled during it;
* ``scenario summary``: the JSON a scenario writes itself (sustained, burst).
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentcore.loadtest import latency, scrape
from agentcore.loadtest.targets import Level
from agentcore.loadtest.wrk import WrkResult

#: The busiest Locust process at or above this (% of one core, mean) means
#: Locust, not the gateway, limited the load.
GENERATOR_SATURATED = 90.0
#: The gateway at or above this share of its usable cores is the bottleneck.
GATEWAY_SATURATED = 85.0
#: The whole machine this busy, with the generator on it, is saturated too.
MACHINE_SATURATED = 95.0


@dataclass
class Figure:
    value: float | None
    unit: str
    source: str
    detail: str = ""


@dataclass
class Analysis:
    """Who limited the load, and the numbers that say so."""

    bottleneck: str
    generator_bound: bool
    users_bound: bool
    explanation: str
    numbers: dict[str, float | None] = field(default_factory=dict)


@dataclass
class RunRecord:
    """What the runner gathered; everything :func:`compute` needs."""

    scenario: str
    out: Path
    users: int
    #: One dict per sampler tick: t, gateway_cpu_percent, gateway_rss_mb,
    #: locust_cpu_percent, locust_max_process_cpu_percent, machine_cpu_percent,
    #: ws_connections (any may be None).
    samples: list[dict[str, float | None]]
    metrics_before: scrape.Samples
    metrics_after: scrape.Samples
    gateway_cpus: int
    gateway_source: str
    wrk: WrkResult | None = None
    wrk_error: str = ""


def locust_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a Locust ``*_stats.csv`` (the ``Aggregated`` row included)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _series(record: RunRecord, key: str) -> list[float | None]:
    return [s.get(key) for s in record.samples]


def _scenario_summary(record: RunRecord, name: str) -> dict[str, Any] | None:
    path = record.out / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _growth(values: list[float | None]) -> float | None:
    """Mean of the last fifth minus mean of the first fifth (at least one sample each)."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    fifth = max(1, len(present) // 5)
    return statistics.fmean(present[-fifth:]) - statistics.fmean(present[:fifth])


def compute(
    record: RunRecord, levels: tuple[Level, ...]
) -> tuple[dict[str, Figure], Analysis, dict[str, Any]]:
    """Figures, bottleneck analysis, and per-endpoint statistics (exact and Locust's)."""
    exact = latency.load(record.out / "latency")
    rows = locust_rows(record.out / f"{record.scenario}_stats.csv")
    aggregated = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    figures: dict[str, Figure] = {}

    overall = latency.stats(exact) if exact else None
    if overall is not None:
        figures["locust_rps"] = Figure(overall.rps, "req/s", "locust exact")
        figures["p50_ms"] = Figure(overall.p50_ms, "ms", "locust exact")
        figures["p95_ms"] = Figure(overall.p95_ms, "ms", "locust exact")
        figures["p99_ms"] = Figure(overall.p99_ms, "ms", "locust exact")
        figures["error_rate_percent"] = Figure(overall.failure_percent, "%", "locust exact")
    elif aggregated is not None:
        count = float(aggregated["Request Count"] or 0)
        failures = float(aggregated["Failure Count"] or 0)
        figures["locust_rps"] = Figure(float(aggregated["Requests/s"]), "req/s", "locust buckets")
        for q in ("50", "95", "99"):
            figures[f"p{q}_ms"] = Figure(float(aggregated[f"{q}%"]), "ms", "locust buckets")
        figures["error_rate_percent"] = Figure(
            failures / count * 100 if count else None, "%", "locust buckets"
        )

    if record.wrk is not None and record.wrk.valid:
        figures["http_rps"] = Figure(
            record.wrk.rps,
            "req/s",
            "wrk",
            f"{record.wrk.command}; p99 {record.wrk.p99_ms:.1f} ms",
        )
    elif record.wrk is not None:
        figures["http_rps"] = Figure(
            None,
            "req/s",
            "wrk",
            f"invalid: {record.wrk.bad} bad answers, {record.wrk.socket_errors} socket errors",
        )
    elif "locust_rps" in figures:
        reason = record.wrk_error or "wrk not run"
        figures["http_rps"] = Figure(
            figures["locust_rps"].value, "req/s", figures["locust_rps"].source, reason
        )

    cpu = _mean(_series(record, "gateway_cpu_percent"))
    figures["cpu_percent"] = Figure(
        cpu / record.gateway_cpus if cpu is not None else None,
        "%",
        record.gateway_source,
        f"mean over the run, of {record.gateway_cpus} core(s)",
    )
    rss = [v for v in _series(record, "gateway_rss_mb") if v is not None]
    figures["rss_mb"] = Figure(max(rss) if rss else None, "MB", record.gateway_source, "peak")
    figures["rss_growth_mb"] = Figure(
        _growth(_series(record, "gateway_rss_mb")),
        "MB",
        record.gateway_source,
        "mean of the last fifth minus the first fifth of the run",
    )

    moved = scrape.delta(record.metrics_before, record.metrics_after)
    statuses = scrape.by_label(moved, "agentcore_http_requests_total", "status")
    figures["server_errors"] = Figure(
        sum(n for s, n in statuses.items() if s.startswith("5")),
        "",
        "gateway /metrics",
        "statuses: " + ", ".join(f"{s}={n:g}" for s, n in sorted(statuses.items()) if n),
    )
    figures["rate_limited"] = Figure(
        scrape.total(moved, "agentcore_rate_limited_total"), "", "gateway /metrics"
    )
    ws = [v for v in _series(record, "ws_connections") if v is not None]
    figures["ws_connections"] = Figure(
        max(ws) if ws else None,
        "",
        "gateway /metrics",
        "peak of agentcore_stream_connections{transport=websocket}, sampled every second",
    )
    by_name = {r["Name"]: r for r in rows}
    connects = float(by_name.get("WS connect", {}).get("Request Count", 0) or 0)
    connect_failures = float(by_name.get("WS connect", {}).get("Failure Count", 0) or 0)
    drops = float(by_name.get("WS drop", {}).get("Request Count", 0) or 0)
    opened = connects - connect_failures
    figures["ws_stability_percent"] = Figure(
        (1 - drops / opened) * 100 if opened > 0 else None,
        "%",
        "locust buckets",
        f"{opened:g} opened, {drops:g} dropped",
    )

    sustained = _scenario_summary(record, "sustained")
    if sustained and "degradation_percent" in sustained:
        figures["degradation_percent"] = Figure(
            sustained["degradation_percent"]["p95_ms"],
            "%",
            "scenario summary",
            "p95 of the last fifth vs the first fifth, every request",
        )
    burst = _scenario_summary(record, "burst")
    if burst is not None:
        figures["recovery_s"] = Figure(
            burst.get("max_recovery_s"),
            "s",
            "scenario summary",
            f"{burst.get('spikes', 0)} spike(s), recoveries {burst.get('recovery_s')}",
        )
        figures["rate_limited"].detail = f"client saw {burst.get('rate_limited', 0)} x 429"
        if not burst.get("spikes"):
            figures["rate_limited"].value = None
            figures["rate_limited"].detail = "no spike in this run (one starts 20 s into each 45 s)"

    if exact is not None:
        for level in levels:
            if level.requests is None or level.figure in figures:
                continue
            chosen = exact.select(level.requests)
            if not chosen:
                figures[level.figure] = Figure(None, level.unit, "locust exact", "no such requests")
                continue
            part = latency.stats(exact, chosen)
            names = ", ".join(exact.names[i] for i in chosen)
            value = part.rps if level.kind == "throughput" else part.p95_ms
            figures[level.figure] = Figure(value, level.unit, "locust exact", names)

    analysis = analyse(record, figures, exact)
    endpoints = _endpoints(exact, rows)
    return figures, analysis, endpoints


def analyse(
    record: RunRecord, figures: dict[str, Figure], exact: latency.Requests | None
) -> Analysis:
    """Was the gateway, the load generator, or the closed model the limit?

    In a closed model (Locust), throughput X = users / (think + latency);
    think time Z is estimated from the measured X and mean latency. When
    neither the generator's CPU nor the gateway's is saturated, the user
    count was the limit: the run cannot tell how much more the gateway serves.
    """
    locust_max = _mean(_series(record, "locust_max_process_cpu_percent"))
    machine = _mean(_series(record, "machine_cpu_percent"))
    cpu = figures.get("cpu_percent")
    gateway = cpu.value if cpu else None
    rps_figure = figures.get("locust_rps")
    rps = rps_figure.value if rps_figure else None
    mean_ms = statistics.fmean(exact.ms) if exact else None
    think_s = None
    cap = None
    if rps and mean_ms is not None and record.users:
        think_s = max(0.0, record.users / rps - mean_ms / 1000)
        cap = record.users / think_s if think_s > 0.001 else None
    numbers = {
        "locust_busiest_process_cpu_percent": locust_max,
        "machine_cpu_percent": machine,
        "gateway_cpu_percent_of_its_cores": gateway,
        "users": float(record.users),
        "locust_rps": rps,
        "mean_latency_ms": mean_ms,
        "think_time_s_estimate": think_s,
        "closed_model_cap_rps": cap,
    }
    if locust_max is not None and locust_max >= GENERATOR_SATURATED:
        return Analysis(
            "load generator CPU",
            True,
            False,
            f"the busiest Locust process used {locust_max:.0f}% of a core: Locust, not the "
            "gateway, limited the load. Add --processes or Locust workers (distributed mode), "
            "or measure raw throughput with wrk.",
            numbers,
        )
    if gateway is not None and gateway >= GATEWAY_SATURATED:
        return Analysis(
            "gateway CPU",
            False,
            False,
            f"the gateway used {gateway:.0f}% of its cores: it was the bottleneck.",
            numbers,
        )
    if machine is not None and machine >= MACHINE_SATURATED:
        return Analysis(
            "machine CPU (shared by Locust and the gateway)",
            True,
            False,
            f"the machine was {machine:.0f}% busy with Locust on it: run the generator "
            "elsewhere or pin the two apart (--gateway-cpus).",
            numbers,
        )
    users_text = f"{record.users} users"
    if think_s is not None and mean_ms is not None and rps:
        users_text += (
            f" / (wait {think_s * 1000:.0f} ms + latency {mean_ms:.1f} ms) = {rps:.0f} req/s"
        )
    return Analysis(
        "closed model (user count)",
        False,
        True,
        f"neither Locust nor the gateway was saturated (gateway "
        f"{gateway if gateway is not None else 0:.0f}% of its cores): throughput was capped "
        f"by {users_text}. Raise --users to find the gateway's limit.",
        numbers,
    )


def _endpoints(exact: latency.Requests | None, rows: list[dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    exact_stats = latency.per_name(exact) if exact else {}
    for row in rows:
        key = f"{row['Type']} {row['Name']}".strip() if row["Name"] != "Aggregated" else "ALL"
        entry: dict[str, Any] = {
            "locust_buckets": {
                "requests": int(float(row["Request Count"] or 0)),
                "failures": int(float(row["Failure Count"] or 0)),
                "rps": float(row["Requests/s"] or 0),
                "p50_ms": float(row["50%"] or 0),
                "p95_ms": float(row["95%"] or 0),
                "p99_ms": float(row["99%"] or 0),
            }
        }
        if key in exact_stats:
            s = exact_stats[key]
            entry["exact"] = {**asdict(s), "rps": s.rps}
        out[key] = entry
    if exact:
        s = latency.stats(exact)
        out.setdefault("ALL", {})["exact"] = {**asdict(s), "rps": s.rps}
    return out
