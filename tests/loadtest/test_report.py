"""Figures, verdict rows, summary JSON and HTML from a synthetic run folder."""

from __future__ import annotations

import json
from array import array
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from agentcore.loadtest import figures, latency, report
from agentcore.loadtest.targets import BUILTIN, Level

from .test_compare import BASE, stats_csv


def write_latencies(out: Path, rows: list[tuple[float, float, str, bool]]) -> None:
    folder = out / "latency"
    folder.mkdir(parents=True)
    names = sorted({r[2] for r in rows})
    columns: dict[str, array[Any]] = {
        ".t.f64": array("d", [r[0] for r in rows]),
        ".ms.f32": array("f", [r[1] for r in rows]),
        ".name.u16": array("H", [names.index(r[2]) for r in rows]),
        ".ok.u8": array("B", [1 if r[3] else 0 for r in rows]),
    }
    for suffix, column in columns.items():
        (folder / f"123{suffix}").write_bytes(column.tobytes())
    (folder / "123.names.json").write_text(json.dumps(names))


def record(out: Path, *, locust_cpu: float = 30.0, gateway_cpu: float = 95.0) -> figures.RunRecord:
    samples: list[dict[str, float | None]] = [
        {
            "t": 1000.0 + i,
            "gateway_cpu_percent": gateway_cpu,
            "gateway_rss_mb": 50.0 + i,
            "locust_cpu_percent": locust_cpu,
            "locust_max_process_cpu_percent": locust_cpu,
            "machine_cpu_percent": 60.0,
            "ws_connections": 0.0,
        }
        for i in range(10)
    ]
    before = {("agentcore_http_requests_total", (("status", "200"),)): 5.0}
    after = {
        ("agentcore_http_requests_total", (("status", "200"),)): 105.0,
        ("agentcore_http_requests_total", (("status", "500"),)): 2.0,
    }
    return figures.RunRecord("http", out, 10, samples, before, after, 1, "/proc")  # type: ignore[arg-type]


def test_exact_percentiles_come_from_every_request(tmp_path: Path) -> None:
    # 100 requests: 1..100 ms; Locust's buckets would round 99 ms differently.
    write_latencies(
        tmp_path, [(1000.0 + i / 10, float(i), "GET health", i != 50) for i in range(1, 101)]
    )
    data = latency.load(tmp_path / "latency")
    assert data is not None and len(data) == 100
    stats = latency.stats(data)
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms, stats.failures) == (50, 95, 99, 1)
    assert latency.timeline(data)[0]["rps"] > 0


def test_figures_sources_and_verdicts(tmp_path: Path) -> None:
    stats_csv(tmp_path / "http_stats.csv", BASE)
    write_latencies(
        tmp_path, [(1000.0 + i / 100, 1.0 + i % 7, "GET health", True) for i in range(500)]
    )
    figs, analysis, endpoints = figures.compute(record(tmp_path), BUILTIN["http"])
    assert figs["p95_ms"].source == "locust exact"
    assert figs["http_rps"].source == "locust exact"  # no wrk in this record
    assert figs["server_errors"].value == 2
    assert figs["rss_mb"].value == 59
    assert figs["cpu_percent"].value == 95
    assert analysis.bottleneck == "gateway CPU" and not analysis.generator_bound
    assert "exact" in endpoints["GET health"] and "locust_buckets" in endpoints["GET health"]
    rows = {r.figure: r for r in report.rows(BUILTIN["http"], figs, analysis, 10)}
    assert rows["server_errors"].verdict == "FAIL"
    assert rows["http_rps"].verdict == "FAIL"  # the gateway itself was saturated: conclusive
    assert rows["p95_ms"].verdict == "PASS"


def test_a_saturated_generator_makes_throughput_inconclusive(tmp_path: Path) -> None:
    stats_csv(tmp_path / "http_stats.csv", BASE)
    write_latencies(tmp_path, [(1000.0 + i / 100, 400.0, "GET health", True) for i in range(500)])
    figs, analysis, _ = figures.compute(record(tmp_path, locust_cpu=99.0), BUILTIN["http"])
    assert analysis.generator_bound and analysis.bottleneck == "load generator CPU"
    rows = {r.figure: r for r in report.rows(BUILTIN["http"], figs, analysis, 10)}
    assert rows["http_rps"].verdict == "INCONCLUSIVE"
    assert rows["p95_ms"].verdict == "INCONCLUSIVE"
    assert rows["server_errors"].verdict == "FAIL"  # errors are never excused
    assert report.verdict_of(list(rows.values())) == "FAIL"


def test_an_idle_gateway_and_generator_mean_the_user_count_capped_throughput(
    tmp_path: Path,
) -> None:
    stats_csv(tmp_path / "http_stats.csv", BASE)
    write_latencies(tmp_path, [(1000.0 + i, 2.0, "GET health", True) for i in range(10)])
    _, analysis, _ = figures.compute(record(tmp_path, gateway_cpu=5.0), BUILTIN["http"])
    assert analysis.users_bound and analysis.bottleneck == "closed model (user count)"
    assert "10 users / (wait" in analysis.explanation
    assert analysis.numbers["closed_model_cap_rps"] is not None


def test_per_operation_levels_select_requests_by_name(tmp_path: Path) -> None:
    stats_csv(tmp_path / "integration_stats.csv", BASE)
    rows = [(1000.0 + i / 10, 5.0, "POST llm.chat", True) for i in range(100)]
    rows += [(1000.0 + i / 10, 80.0, "POST webhook.register", True) for i in range(100)]
    write_latencies(tmp_path, rows)
    rec = record(tmp_path)
    rec.scenario = "integration"
    figs, _, _ = figures.compute(rec, BUILTIN["integration"])
    assert figs["llm_p95_ms"].value == 5.0
    assert figs["webhook_p95_ms"].value == 80.0
    assert figs["webhook_registrations_per_s"].value is not None
    assert figs["event_publish_p95_ms"].value is None  # no such requests: N/A, not PASS


def test_table_summary_and_html(tmp_path: Path) -> None:
    stats_csv(tmp_path / "http_stats.csv", BASE)
    write_latencies(tmp_path, [(1000.0 + i / 10, 3.0, "GET health", True) for i in range(200)])
    rec = record(tmp_path)
    levels: tuple[Level, ...] = BUILTIN["http"]
    figs, analysis, endpoints = figures.compute(rec, levels)
    table = report.rows(levels, figs, analysis, 10)
    text = report.text_table(table)
    assert "P95 latency" in text and "locust exact" in text and "FAIL" in text
    data = report.summary(
        scenario="http",
        options={"users": 10},
        table=table,
        figures=figs,
        analysis=analysis,
        endpoints=endpoints,
        timeline=latency.timeline(latency.load(tmp_path / "latency")),  # type: ignore[arg-type]
        samples=rec.samples,
        metrics={},
    )
    report.write(tmp_path, data)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["verdict"] == "FAIL"
    assert {v["figure"] for v in saved["verdicts"]} == {lv.figure for lv in levels}
    page = (tmp_path / "report.html").read_text()
    HTMLParser().feed(page)  # parses
    assert page.count("<svg") >= 4 and "<polyline" in page
    assert "<script" not in page
    for title in ("Throughput", "Latency percentiles", "Gateway memory"):
        assert title in page
