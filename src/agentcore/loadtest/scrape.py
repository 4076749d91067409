"""The gateway's ``/metrics``, fetched and parsed (Prometheus text format, the subset we emit).

With several gateway workers in multiprocess mode the counters are summed
across workers; the ``process_*`` samples are those of the worker that
answered, which is why the runner reads CPU and RSS from ``/proc`` when it
started the gateway itself.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Mapping

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(3) or "")))
        try:
            samples[(match.group(1), labels)] = float(match.group(4))
        except ValueError:
            continue
    return samples


def fetch(base_url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> str:
    """The text of ``<base_url>/metrics``; raises ``OSError`` when unreachable."""
    request = urllib.request.Request(f"{base_url}/metrics", headers=dict(headers or {}))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode()


def fetch_patiently(
    base_url: str, headers: Mapping[str, str] | None = None, within_s: float = 90.0
) -> str:
    """:func:`fetch`, retried while a gateway still drains a backlog (after a warm-up
    that overloaded it, /metrics can take seconds); raises the last error."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return fetch(base_url, headers, timeout=15.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``match``."""
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and all((k, v) in labels for k, v in match.items())
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


def delta(before: Samples, after: Samples) -> Samples:
    """after - before for every sample of ``after`` (counters; a new series counts from 0)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}
