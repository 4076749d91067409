"""The seed's performance targets, each with a "target" and a "critical" level.

A figure at or better than its target is ``PASS``, between target and
critical ``WARN``, worse than critical ``FAIL``. A figure that was not
measured is ``N/A``. A throughput or latency figure that misses its target
while the load generator (not the gateway) was the bottleneck is
``INCONCLUSIVE``: the run showed nothing about the gateway, so it is never
a pass (see :func:`judge`).

Levels come from the seed documents (docs/load-testing.md quotes them); where
a seed gives only one level, the other is ours and says so in ``note``.
Override any of them with a TOML file::

    [http.http_rps]          # scenario, then figure
    target = 20000
    critical = 10000

    [http.cpu_percent]
    skip = true              # not judged in this run

    [integration.llm_p95_ms]
    requests = "(?i)llm|chat" # which Locust request names the figure covers
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

Better = Literal["higher", "lower"]
Kind = Literal["throughput", "latency", "errors", "resources", "stability"]
Verdict = Literal["PASS", "WARN", "FAIL", "INCONCLUSIVE", "N/A"]
#: Worst first: the overall verdict of a run is the worst of its figures.
SEVERITY: tuple[Verdict, ...] = ("FAIL", "INCONCLUSIVE", "WARN", "PASS", "N/A")


@dataclass(frozen=True)
class Level:
    """One row of a target table."""

    figure: str
    label: str
    unit: str
    better: Better
    target: float
    critical: float
    kind: Kind
    #: Regular expression over "<type> <name>" of Locust requests, for figures
    #: of one operation (throughput or latency); None: every request.
    requests: str | None = None
    note: str = ""


def _lat(figure: str, label: str, target: float, critical: float, **kw: Any) -> Level:
    return Level(figure, label, "ms", "lower", target, critical, "latency", **kw)


_CPU = Level(
    "cpu_percent",
    "Gateway CPU (mean, % of its cores)",
    "%",
    "lower",
    50,
    80,
    "resources",
    note="percent of the cores the gateway may use (min(workers, CPUs))",
)
_RSS = Level("rss_mb", "Gateway memory (peak RSS)", "MB", "lower", 4096, 8192, "resources")
_ERRORS = Level("error_rate_percent", "Error rate", "%", "lower", 0.1, 1.0, "errors")
_5XX = Level("server_errors", "Gateway 5xx responses", "", "lower", 0, 0, "errors")
_P95 = _lat("p95_ms", "P95 latency", 50, 100)
_P99 = _lat("p99_ms", "P99 latency", 100, 200)
_LEAK = Level(
    "rss_growth_mb",
    "Memory growth (last vs first fifth)",
    "MB",
    "lower",
    50,
    200,
    "stability",
    note="seed: 'no memory leaks'; levels are ours",
)

BUILTIN: dict[str, tuple[Level, ...]] = {
    "http": (
        Level(
            "http_rps",
            "HTTP RPS",
            "req/s",
            "higher",
            60_000,
            40_000,
            "throughput",
            note="measured with wrk when installed: one Locust process saturates its core first",
        ),
        _P95,
        _P99,
        _ERRORS,
        _CPU,
        _RSS,
        _5XX,
    ),
    "websocket": (
        Level(
            "ws_connections",
            "WebSocket connections (peak)",
            "",
            "higher",
            10_000,
            5_000,
            "throughput",
        ),
        Level(
            "ws_stability_percent",
            "Connection stability",
            "%",
            "higher",
            99,
            95,
            "stability",
            note="connections never dropped / opened; critical level is ours",
        ),
        _ERRORS,
        _CPU,
        _RSS,
        _5XX,
    ),
    "sustained": (
        Level(
            "degradation_percent",
            "P95 degradation (last vs first fifth)",
            "%",
            "lower",
            10,
            25,
            "stability",
            note="critical level is ours",
        ),
        _LEAK,
        _P95,
        _P99,
        _ERRORS,
        _CPU,
        _RSS,
        _5XX,
    ),
    "burst": (
        Level(
            "rate_limited",
            "Requests rate limited (429)",
            "",
            "higher",
            1,
            1,
            "stability",
            note="the limit must activate during spikes",
        ),
        Level(
            "recovery_s",
            "Recovery time after a spike (max)",
            "s",
            "lower",
            5,
            10,
            "stability",
            note="critical level is ours",
        ),
        _5XX,
        _RSS,
    ),
    "failure": (
        _5XX,
        Level(
            "error_rate_percent",
            "Requests not answered as expected",
            "%",
            "lower",
            0.1,
            1.0,
            "errors",
        ),
        _P99,
        _LEAK,
    ),
    "integration": (
        Level(
            "http_rps",
            "Integration throughput",
            "req/s",
            "higher",
            10_000,
            5_000,
            "throughput",
            note="critical level is ours",
        ),
        Level(
            "webhook_registrations_per_s",
            "Webhook registrations",
            "req/s",
            "higher",
            1_000,
            500,
            "throughput",
            requests=r"(?i)webhook.*(regist|create)|POST /api/v1/integration/webhooks$",
        ),
        Level(
            "events_published_per_s",
            "Events published",
            "req/s",
            "higher",
            1_000,
            500,
            "throughput",
            requests=r"(?i)event.*publish|publish.*event",
        ),
        _lat("llm_p95_ms", "P95 latency, LLM requests", 100, 200, requests=r"(?i)llm|chat|complet"),
        _lat("webhook_p95_ms", "P95 latency, webhook operations", 50, 100, requests=r"(?i)webhook"),
        _lat(
            "event_publish_p95_ms",
            "P95 latency, event publishing",
            10,
            25,
            requests=r"(?i)event.*publish|publish.*event",
        ),
        _lat("storage_p95_ms", "P95 latency, storage", 100, 200, requests=r"(?i)storage"),
        _ERRORS,
        Level("rss_mb", "Gateway memory (peak RSS)", "MB", "lower", 500, 1000, "resources"),
        Level("cpu_percent", _CPU.label, "%", "lower", 80, 95, "resources", note=_CPU.note),
        _5XX,
    ),
}


def load_targets(path: str | Path | None = None) -> dict[str, tuple[Level, ...]]:
    """The built-in tables, with the overrides of the TOML file at ``path``.

    Raises ``ValueError`` naming the scenario and figure of an unknown entry,
    so a typo in the file is not silently ignored.
    """
    tables = {name: tuple(levels) for name, levels in BUILTIN.items()}
    if path is None:
        return tables
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    for scenario, figures in data.items():
        if not isinstance(figures, dict):
            raise ValueError(f"{path}: [{scenario}] must be a table of figures")
        levels = {level.figure: level for level in tables.get(scenario, ())}
        for figure, fields in figures.items():
            if not isinstance(fields, dict):
                raise ValueError(f"{path}: [{scenario}.{figure}] must be a table")
            unknown = set(fields) - {"target", "critical", "skip", "requests", "label"}
            if unknown:
                raise ValueError(f"{path}: [{scenario}.{figure}] unknown keys {sorted(unknown)}")
            if fields.get("skip"):
                levels.pop(figure, None)
                continue
            base = levels.get(figure) or _known(figure)
            if base is None:
                raise ValueError(f"{path}: unknown figure {figure!r} in [{scenario}]")
            levels[figure] = replace(
                base,
                target=float(fields.get("target", base.target)),
                critical=float(fields.get("critical", base.critical)),
                requests=fields.get("requests", base.requests),
                label=fields.get("label", base.label),
            )
        tables[scenario] = tuple(levels.values())
    return tables


def _known(figure: str) -> Level | None:
    for levels in BUILTIN.values():
        for level in levels:
            if level.figure == figure:
                return level
    return None


def grade(level: Level, value: float) -> Verdict:
    """PASS, WARN or FAIL of one measured value against the level's two thresholds."""
    if level.better == "higher":
        if value >= level.target:
            return "PASS"
        return "WARN" if value >= level.critical else "FAIL"
    if value <= level.target:
        return "PASS"
    return "WARN" if value <= level.critical else "FAIL"


def judge(level: Level, value: float | None, generator_bound: bool, users_bound: bool) -> Verdict:
    """The verdict of one figure, honest about the load generator.

    ``generator_bound``: Locust (its CPU, or the machine it shares) limited the
    load, so throughput and latency say nothing about the gateway.
    ``users_bound``: the closed model (users / (wait + latency)) capped the
    throughput below what the gateway could serve. A figure that would pass
    anyway stays a pass: the gateway did at least that well.
    """
    if value is None:
        return "N/A"
    verdict = grade(level, value)
    if verdict == "PASS":
        return verdict
    if level.kind == "throughput" and (generator_bound or users_bound):
        return "INCONCLUSIVE"
    if level.kind == "latency" and generator_bound:
        return "INCONCLUSIVE"
    return verdict


def overall(verdicts: list[Verdict]) -> Verdict:
    """The worst verdict; ``N/A`` only when nothing was judged."""
    for verdict in SEVERITY:
        if verdict in verdicts:
            return verdict
    return "N/A"
