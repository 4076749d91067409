"""What a run leaves behind: verdicts, ``summary.json``, the verdict table, ``report.html``.

The HTML is one self-contained file: tables and inline SVG charts
(throughput, latency percentiles, gateway memory, CPU), no JavaScript and
nothing fetched, so it opens from a CI artifact as it is.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentcore.loadtest.figures import Analysis, Figure
from agentcore.loadtest.targets import Level, Verdict, judge, overall

EXIT_CODES: dict[Verdict, int] = {"PASS": 0, "WARN": 0, "N/A": 0, "FAIL": 1, "INCONCLUSIVE": 3}


@dataclass(frozen=True)
class Row:
    figure: str
    label: str
    value: float | None
    unit: str
    better: str
    target: float
    critical: float
    verdict: Verdict
    source: str
    detail: str
    note: str


def rows(
    levels: tuple[Level, ...], figures: dict[str, Figure], analysis: Analysis, users: int
) -> list[Row]:
    out = []
    for level in levels:
        figure = figures.get(level.figure) or Figure(None, level.unit, "-", "not measured")
        users_bound = analysis.users_bound
        if level.figure == "ws_connections" and users < level.target:
            users_bound = True  # fewer users than the target: cannot show it
        verdict = judge(
            level,
            figure.value,
            generator_bound=analysis.generator_bound and figure.source.startswith("locust"),
            users_bound=users_bound and figure.source.startswith(("locust", "gateway")),
        )
        out.append(
            Row(
                level.figure,
                level.label,
                figure.value,
                level.unit,
                level.better,
                level.target,
                level.critical,
                verdict,
                figure.source,
                figure.detail,
                level.note,
            )
        )
    return out


def verdict_of(table: list[Row]) -> Verdict:
    return overall([row.verdict for row in table])


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"


def _level(row: Row, level: float) -> str:
    sign = ">=" if row.better == "higher" else "<="
    return f"{sign} {_num(level)}"


def text_table(table: list[Row]) -> str:
    header = ["figure", "value", "target", "critical", "verdict", "source"]
    lines = [
        [
            row.label,
            f"{_num(row.value)} {row.unit}".strip(),
            _level(row, row.target),
            _level(row, row.critical),
            row.verdict,
            row.source,
        ]
        for row in table
    ]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, ["-" * w for w in widths], *lines]
    )


def summary(
    *,
    scenario: str,
    options: dict[str, Any],
    table: list[Row],
    figures: dict[str, Figure],
    analysis: Analysis,
    endpoints: dict[str, Any],
    timeline: list[dict[str, float]],
    samples: list[dict[str, float | None]],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "verdict": verdict_of(table),
        "options": options,
        "verdicts": [asdict(row) for row in table],
        "figures": {k: asdict(v) for k, v in figures.items()},
        "bottleneck": asdict(analysis),
        "endpoints": endpoints,
        "timeline": timeline,
        "samples": samples,
        "gateway_metrics": metrics,
    }


def write(out: Path, data: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(data, indent=2))
    (out / "report.html").write_text(to_html(data))


# -- HTML -------------------------------------------------------------------------

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.PASS{background:#d9f2d9}.WARN{background:#fff2cc}
.FAIL{background:#f8d0d0}.INCONCLUSIVE{background:#e0e0f0}svg{border:1px solid #ddd;margin:.5em 0}
.note{color:#666;font-size:90%}
"""


def svg_chart(
    title: str, unit: str, series: dict[str, list[tuple[float, float]]], width: int = 760
) -> str:
    """A line chart: x is seconds since the first point, one polyline per series."""
    height, left, bottom, top, right = 260, 60, 30, 28, 140
    points = [p for values in series.values() for p in values]
    if not points:
        return f"<p>{html.escape(title)}: no data</p>"
    x0 = min(p[0] for p in points)
    x1 = max(max(p[0] for p in points), x0 + 1)
    y1 = max(max(p[1] for p in points), 1e-9) * 1.1
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - y / y1 * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>',
    ]
    for i in range(5):
        y = y1 * i / 4
        parts.append(
            f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{_num(y)}</text>"
        )
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text x="{sx(x):.1f}" y="{height - 10}" font-size="10" text-anchor="middle">'
            f"{x - x0:.0f}s</text>"
        )
    parts.append(
        f'<text x="{left + plot_w + 8}" y="{top - 8}" font-size="10">{html.escape(unit)}</text>'
    )
    for n, (name, values) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>'
        )
        parts.append(
            f'<text x="{left + plot_w + 8}" y="{top + 14 + 14 * n}" font-size="11" '
            f'fill="{color}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _points(items: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[tuple[float, float]]:
    return [(float(i["t"]), float(i[key]) * scale) for i in items if i.get(key) is not None]


def to_html(data: dict[str, Any]) -> str:
    esc = html.escape
    timeline: list[dict[str, Any]] = data.get("timeline", [])
    samples: list[dict[str, Any]] = data.get("samples", [])
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>agentcore loadtest: {esc(data['scenario'])}</title><style>{_CSS}</style>",
        "</head><body>",
        f"<h1>Load test <code>{esc(data['scenario'])}</code>: "
        f"<span class='{esc(data['verdict'])}'>{esc(data['verdict'])}</span></h1>",
        "<p>" + esc(", ".join(f"{k}={v}" for k, v in data.get("options", {}).items())) + "</p>",
        f"<p><b>Bottleneck:</b> {esc(data['bottleneck']['bottleneck'])}: "
        f"{esc(data['bottleneck']['explanation'])}</p>",
        "<h2>Figures against targets</h2><table><tr><th>figure</th><th>value</th>"
        "<th>target</th><th>critical</th><th>verdict</th><th>source</th><th>detail</th></tr>",
    ]
    for row in data["verdicts"]:
        r = Row(**row)
        out.append(
            f"<tr class='{r.verdict}'><td>{esc(r.label)}</td>"
            f"<td>{esc(_num(r.value))} {esc(r.unit)}</td><td>{esc(_level(r, r.target))}</td>"
            f"<td>{esc(_level(r, r.critical))}</td><td>{r.verdict}</td><td>{esc(r.source)}</td>"
            f"<td class='note'>{esc(r.detail)} {esc(r.note)}</td></tr>"
        )
    out.append("</table>")
    out.append("<h2>Over time</h2>")
    out.append(
        svg_chart(
            "Throughput (every request, locust exact)",
            "req/s",
            {
                "requests/s": _points(timeline, "rps"),
                "failures/s": _points(timeline, "failures_per_s"),
            },
        )
    )
    out.append(
        svg_chart(
            "Latency percentiles (exact, per time bucket)",
            "ms",
            {q: _points(timeline, f"{q}_ms") for q in ("p50", "p95", "p99")},
        )
    )
    out.append(
        svg_chart("Gateway memory (RSS)", "MB", {"gateway RSS": _points(samples, "gateway_rss_mb")})
    )
    out.append(
        svg_chart(
            "CPU (% of one core; machine: % of all)",
            "%",
            {
                "gateway": _points(samples, "gateway_cpu_percent"),
                "locust (all processes)": _points(samples, "locust_cpu_percent"),
                "machine": _points(samples, "machine_cpu_percent"),
            },
        )
    )
    if any(s.get("ws_connections") is not None for s in samples):
        out.append(
            svg_chart(
                "WebSocket connections (gateway gauge)",
                "",
                {"open": _points(samples, "ws_connections")},
            )
        )
    out.append(
        "<h2>Per endpoint</h2><p class='note'>exact: every request, nearest-rank; "
        "buckets: Locust's CSV (rounded to 2 significant digits).</p><table><tr><th>request</th>"
        "<th>requests</th><th>failures</th><th>req/s</th><th>p50 exact / buckets</th>"
        "<th>p95 exact / buckets</th><th>p99 exact / buckets</th></tr>"
    )
    for name, entry in data.get("endpoints", {}).items():
        exact = entry.get("exact", {})
        buckets = entry.get("locust_buckets", {})
        base = exact or buckets

        def pair(q: str, exact: dict[str, Any] = exact, buckets: dict[str, Any] = buckets) -> str:
            return f"{_num(exact.get(q))} / {_num(buckets.get(q))}"

        out.append(
            f"<tr><td>{esc(name)}</td><td>{base.get('requests', 0)}</td>"
            f"<td>{base.get('failures', 0)}</td><td>{_num(base.get('rps'))}</td>"
            f"<td>{pair('p50_ms')}</td><td>{pair('p95_ms')}</td><td>{pair('p99_ms')}</td></tr>"
        )
    out.append("</table>")
    bottleneck = data["bottleneck"]["numbers"]
    out.append("<h2>Load generator</h2><table>")
    for key, value in bottleneck.items():
        out.append(f"<tr><td>{esc(key)}</td><td>{esc(_num(value))}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)
