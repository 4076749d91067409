"""Every request of a run, as recorded by :mod:`.locust_plugin`, and exact statistics over it.

Percentiles here are nearest-rank over all recorded latencies ("exact");
Locust's own (in its CSVs) come from buckets rounded to two significant
digits, so e.g. 137 ms is counted as 140 ms. Both are kept; every figure
says which one it is.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PERCENTILES = (0.50, 0.95, 0.99)


@dataclass
class Requests:
    """Columns of every recorded request, all processes merged."""

    t: array[float]
    ms: array[float]
    name: array[int]
    ok: array[int]
    names: list[str]

    def __len__(self) -> int:
        return len(self.t)

    def select(self, pattern: str | None) -> list[int]:
        """Indices of the names matching ``pattern`` (None: all)."""
        if pattern is None:
            return list(range(len(self.names)))
        regex = re.compile(pattern)
        return [i for i, n in enumerate(self.names) if regex.search(n)]


def load(folder: Path) -> Requests | None:
    """Merge ``folder/*.names.json`` and their columns; None when nothing was recorded."""
    merged = Requests(array("d"), array("f"), array("H"), array("B"), [])
    index: dict[str, int] = {}
    for names_file in sorted(folder.glob("*.names.json")):
        base = str(names_file)[: -len(".names.json")]
        names: list[str] = json.loads(names_file.read_text())
        remap = [index.setdefault(n, len(index)) for n in names]
        columns = []
        for suffix, code in (
            (".t.f64", "d"),
            (".ms.f32", "f"),
            (".name.u16", "H"),
            (".ok.u8", "B"),
        ):
            column = array(code)
            column.frombytes(Path(base + suffix).read_bytes())
            columns.append(column)
        t, ms, name, ok = columns
        merged.t.extend(t)
        merged.ms.extend(ms)
        merged.name.extend(array("H", (remap[i] for i in name)))
        merged.ok.extend(ok)
    merged.names = sorted(index, key=index.__getitem__)
    return merged if len(merged) else None


def quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank q-quantile of already sorted values; 0.0 for none."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass(frozen=True)
class Stats:
    requests: int
    failures: int
    duration_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def failure_percent(self) -> float:
        return self.failures / self.requests * 100 if self.requests else 0.0


def _stats(latencies: list[float], failures: int, duration_s: float) -> Stats:
    latencies.sort()
    return Stats(
        requests=len(latencies),
        failures=failures,
        duration_s=duration_s,
        p50_ms=quantile(latencies, 0.50),
        p95_ms=quantile(latencies, 0.95),
        p99_ms=quantile(latencies, 0.99),
        max_ms=float(latencies[-1]) if latencies else 0.0,
    )


def _duration(data: Requests) -> float:
    return max(data.t) - min(data.t) if len(data) > 1 else 0.0


def stats(data: Requests, names: Iterable[int] | None = None) -> Stats:
    """Exact statistics of the requests whose name index is in ``names`` (None: all).

    ``duration_s`` spans the whole run (first to last recorded request of any
    name), so per-operation rates add up to the total rate.
    """
    if names is None:
        return _stats(list(data.ms), data.ok.tolist().count(0), _duration(data))
    wanted = set(names)
    latencies: list[float] = []
    failures = 0
    for ms, name, ok in zip(data.ms, data.name, data.ok, strict=True):
        if name in wanted:
            latencies.append(ms)
            failures += not ok
    return _stats(latencies, failures, _duration(data))


def per_name(data: Requests) -> dict[str, Stats]:
    """Exact statistics of each request name, in one pass."""
    latencies: list[list[float]] = [[] for _ in data.names]
    failures = [0] * len(data.names)
    for ms, name, ok in zip(data.ms, data.name, data.ok, strict=True):
        latencies[name].append(ms)
        failures[name] += not ok
    duration = _duration(data)
    return {n: _stats(latencies[i], failures[i], duration) for i, n in enumerate(data.names)}


def timeline(data: Requests, points: int = 120) -> list[dict[str, float]]:
    """Per time bucket (about ``points`` of them, at least 1 s wide): rate and exact percentiles."""
    if not len(data):
        return []
    start, end = min(data.t), max(data.t)
    width = max(1.0, (end - start) / points)
    buckets: dict[int, list[float]] = {}
    failed: dict[int, int] = {}
    for t, ms, ok in zip(data.t, data.ms, data.ok, strict=True):
        slot = int((t - start) / width)
        buckets.setdefault(slot, []).append(ms)
        if not ok:
            failed[slot] = failed.get(slot, 0) + 1
    out = []
    for slot in sorted(buckets):
        values = sorted(buckets[slot])
        out.append(
            {
                "t": start + slot * width,
                "rps": len(values) / width,
                "failures_per_s": failed.get(slot, 0) / width,
                "p50_ms": quantile(values, 0.50),
                "p95_ms": quantile(values, 0.95),
                "p99_ms": quantile(values, 0.99),
            }
        )
    return out
