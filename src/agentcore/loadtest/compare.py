"""Baseline against current run: per endpoint and overall, exit 1 on a regression.

Either side is a Locust ``*_stats.csv`` or a result folder of ``agentcore
loadtest run`` (or a baseline saved from one). From a folder the exact
percentiles (every request) are used when both sides have them; otherwise
both use Locust's buckets, and the table says which.

A row regresses when, with enough requests on both sides:

* throughput fell by more than ``--max-throughput-drop`` percent;
* p50, p95 or p99 rose by more than ``--max-latency-increase`` percent *and*
  by more than ``--min-latency-increase-ms`` (so 1 ms -> 2 ms is noise, not
  +100 %);
* the failure rate rose by more than ``--max-failure-increase`` percentage points.

Throughput of a closed-model run depends on the user count and wait time:
compare runs made with the same options (``summary.json`` records them).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OVERALL = "ALL"


@dataclass(frozen=True)
class Endpoint:
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def failure_percent(self) -> float:
        return self.failures / self.requests * 100 if self.requests else 0.0


@dataclass(frozen=True)
class Thresholds:
    max_throughput_drop: float = 10.0
    max_latency_increase: float = 20.0
    min_latency_increase_ms: float = 2.0
    max_failure_increase: float = 0.5
    min_requests: int = 50


@dataclass(frozen=True)
class Change:
    name: str
    source: str
    base: Endpoint | None
    current: Endpoint | None
    reasons: tuple[str, ...]

    @property
    def status(self) -> str:
        if self.base is None:
            return "new"
        if self.current is None:
            return "missing"
        return "REGRESSION" if self.reasons else "ok"


def _from_csv(path: Path) -> dict[str, Endpoint]:
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            name = OVERALL if row["Name"] == "Aggregated" else f"{row['Type']} {row['Name']}"
            out[name] = Endpoint(
                requests=int(float(row["Request Count"] or 0)),
                failures=int(float(row["Failure Count"] or 0)),
                rps=float(row["Requests/s"] or 0),
                p50_ms=float(row["50%"] or 0),
                p95_ms=float(row["95%"] or 0),
                p99_ms=float(row["99%"] or 0),
            )
    return out


def _endpoint(data: dict[str, Any]) -> Endpoint:
    return Endpoint(
        requests=int(data["requests"]),
        failures=int(data["failures"]),
        rps=float(data["rps"]),
        p50_ms=float(data["p50_ms"]),
        p95_ms=float(data["p95_ms"]),
        p99_ms=float(data["p99_ms"]),
    )


def load(path: str | Path) -> dict[str, dict[str, Endpoint]]:
    """``{"buckets": {name: Endpoint}, "exact": {...}}`` from a CSV or a result folder."""
    path = Path(path)
    if path.is_file():
        return {"buckets": _from_csv(path)}
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such stats CSV or result folder")
    summary = path / "summary.json"
    stats = sorted(path.glob("*_stats.csv"))
    out: dict[str, dict[str, Endpoint]] = {}
    if stats:
        out["buckets"] = _from_csv(stats[0])
    if summary.exists():
        endpoints = json.loads(summary.read_text()).get("endpoints", {})
        exact = {n: _endpoint(e["exact"]) for n, e in endpoints.items() if "exact" in e}
        if exact:
            out["exact"] = exact
    if not out:
        raise FileNotFoundError(f"{path}: no *_stats.csv or summary.json in it")
    return out


def _pct(base: float, current: float) -> float:
    if base == 0:
        return 0.0 if current == 0 else float("inf")
    return (current - base) / base * 100


def compare(
    baseline: dict[str, dict[str, Endpoint]],
    current: dict[str, dict[str, Endpoint]],
    limits: Thresholds,
) -> list[Change]:
    source = "exact" if "exact" in baseline and "exact" in current else "buckets"
    base, cur = baseline.get(source, {}), current.get(source, {})
    names = [OVERALL] if OVERALL in base or OVERALL in cur else []
    names += sorted((set(base) | set(cur)) - {OVERALL})
    changes = []
    for name in names:
        b, c = base.get(name), cur.get(name)
        reasons: list[str] = []
        if b is not None and c is not None and min(b.requests, c.requests) >= limits.min_requests:
            drop = -_pct(b.rps, c.rps)
            if drop > limits.max_throughput_drop:
                reasons.append(f"throughput -{drop:.0f}%")
            for q in ("p50_ms", "p95_ms", "p99_ms"):
                before, after = getattr(b, q), getattr(c, q)
                rise = _pct(before, after)
                if rise > limits.max_latency_increase and after - before > (
                    limits.min_latency_increase_ms
                ):
                    reasons.append(f"{q[:3]} +{rise:.0f}%")
            if c.failure_percent - b.failure_percent > limits.max_failure_increase:
                reasons.append(f"failures +{c.failure_percent - b.failure_percent:.2f} pts")
        changes.append(Change(name, source, b, c, tuple(reasons)))
    return changes


def _cell(before: float | None, after: float | None, fmt: str = "{:.1f}") -> str:
    if before is None or after is None:
        return fmt.format(after if after is not None else before or 0)
    change = _pct(before, after)
    sign = "+" if change >= 0 else ""
    return f"{fmt.format(before)} -> {fmt.format(after)} ({sign}{change:.0f}%)"


def table(changes: list[Change]) -> str:
    header = ["endpoint", "req/s", "p50 ms", "p95 ms", "p99 ms", "fail %", "status"]
    lines = []
    for ch in changes:
        b, c = ch.base, ch.current

        def val(attr: str, b: Endpoint | None = b, c: Endpoint | None = c) -> str:
            return _cell(getattr(b, attr) if b else None, getattr(c, attr) if c else None)

        status = ch.status + (": " + ", ".join(ch.reasons) if ch.reasons else "")
        fails = (
            f"{b.failure_percent:.2f} -> {c.failure_percent:.2f}"
            if b and c
            else f"{(b or c).failure_percent:.2f}"  # type: ignore[union-attr]
        )
        lines.append(
            [ch.name, val("rps"), val("p50_ms"), val("p95_ms"), val("p99_ms"), fails, status]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, ["-" * w for w in widths], *lines]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", help="baseline *_stats.csv or result folder")
    parser.add_argument("current", help="current *_stats.csv or result folder")
    defaults = Thresholds()
    parser.add_argument(
        "--max-throughput-drop",
        type=float,
        default=defaults.max_throughput_drop,
        metavar="PCT",
        help=f"allowed throughput drop in percent (default {defaults.max_throughput_drop:g})",
    )
    parser.add_argument(
        "--max-latency-increase",
        type=float,
        default=defaults.max_latency_increase,
        metavar="PCT",
        help=f"allowed p50/p95/p99 rise in percent (default {defaults.max_latency_increase:g})",
    )
    parser.add_argument(
        "--min-latency-increase-ms",
        type=float,
        default=defaults.min_latency_increase_ms,
        metavar="MS",
        help="a latency rise below this is never a regression "
        f"(default {defaults.min_latency_increase_ms:g})",
    )
    parser.add_argument(
        "--max-failure-increase",
        type=float,
        default=defaults.max_failure_increase,
        metavar="POINTS",
        help="allowed failure-rate rise in percentage points "
        f"(default {defaults.max_failure_increase:g})",
    )
    parser.add_argument(
        "--min-requests",
        type=int,
        default=defaults.min_requests,
        help=f"rows with fewer requests on either side are not judged "
        f"(default {defaults.min_requests})",
    )


def run(args: argparse.Namespace) -> int:
    """Print the comparison; 0: no regression, 1: regression, 2: unreadable input."""
    limits = Thresholds(
        args.max_throughput_drop,
        args.max_latency_increase,
        args.min_latency_increase_ms,
        args.max_failure_increase,
        args.min_requests,
    )
    try:
        changes = compare(load(args.baseline), load(args.current), limits)
    except (OSError, KeyError, ValueError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(table(changes))
    regressions = [c for c in changes if c.status == "REGRESSION"]
    source = changes[0].source if changes else "buckets"
    print(
        f"\npercentiles: {'exact (every request)' if source == 'exact' else 'Locust buckets'}; "
        f"{len(regressions)} regression(s)"
    )
    return 1 if regressions else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compare_results", description="Compare two load-test results (exit 1 on regression)."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
