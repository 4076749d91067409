"""Regression detection between two results, on Locust CSVs and result folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agentcore.loadtest.compare import Thresholds, compare, load, main

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
)
ROOT = Path(__file__).resolve().parents[2]


def stats_csv(
    path: Path, rows: list[tuple[str, str, int, int, float, float, float, float]]
) -> Path:
    """rows: (type, name, requests, failures, rps, p50, p95, p99)."""
    lines = [HEADER]
    for kind, name, count, failures, rps, p50, p95, p99 in rows:
        lines.append(
            f"{kind},{name},{count},{failures},{p50},{p50},1,{p99},10,{rps},0,"
            f"{p50},{p50},{p50},{p95},{p95},{p95},{p99},{p99},{p99},{p99},{p99}\n"
        )
    path.write_text("".join(lines))
    return path


BASE = [
    ("GET", "health", 1000, 0, 500.0, 2.0, 5.0, 9.0),
    ("POST", "agent.ping", 1000, 0, 400.0, 3.0, 8.0, 12.0),
    ("", "Aggregated", 2000, 0, 900.0, 2.0, 7.0, 11.0),
]


def test_identical_runs_do_not_regress(tmp_path: Path) -> None:
    base = stats_csv(tmp_path / "base_stats.csv", BASE)
    changes = compare(load(base), load(base), Thresholds())
    assert [c.status for c in changes] == ["ok", "ok", "ok"]
    assert changes[0].name == "ALL"
    assert main([str(base), str(base)]) == 0


def test_slower_endpoint_and_lower_throughput_regress(tmp_path: Path) -> None:
    base = stats_csv(tmp_path / "base_stats.csv", BASE)
    current = stats_csv(
        tmp_path / "current_stats.csv",
        [
            ("GET", "health", 1000, 0, 500.0, 2.0, 5.0, 9.0),
            ("POST", "agent.ping", 1000, 0, 300.0, 3.0, 20.0, 30.0),
            ("", "Aggregated", 2000, 0, 800.0, 2.0, 9.0, 25.0),
        ],
    )
    changes = {c.name: c for c in compare(load(base), load(current), Thresholds())}
    assert changes["GET health"].status == "ok"
    ping = changes["POST agent.ping"]
    assert ping.status == "REGRESSION"
    assert any(r.startswith("throughput") for r in ping.reasons)
    assert any(r.startswith("p95") for r in ping.reasons)
    assert changes["ALL"].status == "REGRESSION"
    assert main([str(base), str(current)]) == 1


def test_thresholds_are_configurable_and_small_absolute_rises_are_noise(tmp_path: Path) -> None:
    base = stats_csv(tmp_path / "b.csv", [("GET", "health", 1000, 0, 500.0, 1.0, 1.0, 1.0)])
    doubled = stats_csv(tmp_path / "c.csv", [("GET", "health", 1000, 0, 480.0, 2.0, 2.0, 2.0)])
    assert main([str(base), str(doubled)]) == 0  # +1 ms is under --min-latency-increase-ms
    assert main([str(base), str(doubled), "--min-latency-increase-ms", "0.5"]) == 1
    assert (
        main(
            [
                str(base),
                str(doubled),
                "--max-throughput-drop",
                "1",
                "--min-latency-increase-ms",
                "5",
            ]
        )
        == 1
    )


def test_failure_rate_rise_regresses_and_few_requests_are_not_judged(tmp_path: Path) -> None:
    base = stats_csv(tmp_path / "b.csv", [("GET", "health", 1000, 0, 500.0, 1.0, 1.0, 1.0)])
    failing = stats_csv(tmp_path / "c.csv", [("GET", "health", 1000, 20, 500.0, 1.0, 1.0, 1.0)])
    assert main([str(base), str(failing)]) == 1
    assert main([str(base), str(failing), "--max-failure-increase", "5"]) == 0
    few = stats_csv(tmp_path / "few.csv", [("GET", "health", 10, 5, 5.0, 90.0, 90.0, 90.0)])
    assert main([str(base), str(few)]) == 0


def test_new_and_missing_endpoints_are_listed_not_failed(tmp_path: Path) -> None:
    base = stats_csv(tmp_path / "b.csv", BASE[:1])
    current = stats_csv(tmp_path / "c.csv", BASE[1:2])
    statuses = {c.name: c.status for c in compare(load(base), load(current), Thresholds())}
    assert statuses == {"GET health": "missing", "POST agent.ping": "new"}


def test_result_folders_use_exact_percentiles_when_both_have_them(tmp_path: Path) -> None:
    def folder(name: str, p95: float) -> Path:
        path = tmp_path / name
        path.mkdir()
        stats_csv(path / "http_stats.csv", BASE)
        exact = {
            "requests": 1000,
            "failures": 0,
            "rps": 400.0,
            "p50_ms": 3.0,
            "p95_ms": p95,
            "p99_ms": 12.0,
        }
        (path / "summary.json").write_text(
            json.dumps({"endpoints": {"POST agent.ping": {"exact": exact}}})
        )
        return path

    base, current = folder("base", 8.0), folder("current", 30.0)
    changes = compare(load(base), load(current), Thresholds())
    assert changes[0].source == "exact"
    assert [c.status for c in changes] == ["REGRESSION"]


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    assert main([str(tmp_path / "nope.csv"), str(tmp_path / "nope.csv")]) == 2


def test_the_seed_script_path_works(tmp_path: Path) -> None:
    base = stats_csv(tmp_path / "baseline_stats.csv", BASE)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_results.py"), str(base), str(base)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "POST agent.ping" in done.stdout and "0 regression(s)" in done.stdout
