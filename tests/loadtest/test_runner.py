"""``agentcore loadtest`` for real: short runs against gateways it starts itself.

Seconds and a few users each: these check the machinery (outputs, verdicts,
exit codes, regression detection, real WebSocket sockets), not the gateway's
performance.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentcore.loadtest.report import EXIT_CODES
from tests.support import ServerProcess

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
LENIENT = """
[http.http_rps]
target = 1
critical = 1
[http.p95_ms]
target = 10000
critical = 10000
[http.p99_ms]
target = 10000
critical = 10000
[http.cpu_percent]
skip = true
"""
STRICT = "[http.p95_ms]\ntarget = 0.001\ncritical = 0.001\n"


def agentcore(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}
    return subprocess.run(
        [sys.executable, "-m", "agentcore.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def short_run(out: Path, scenario: str, *extra: str) -> subprocess.CompletedProcess[str]:
    users = "20" if scenario == "websocket" else "5"
    return agentcore(
        "loadtest", "run", scenario, "--users", users, "--spawn-rate", users,
        "--run-time", "5s", "--out", str(out), "--progress", "2s", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def normal(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("normal") / "http"
    targets = out.parent / "lenient.toml"
    targets.write_text(LENIENT)
    done = short_run(out, "http", "--wrk-time", "1s", "--targets", str(targets))
    return out, done


def test_http_run_writes_every_output(
    normal: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, done = normal
    assert "[" in done.stdout and "gateway" in done.stdout  # progress lines
    outputs = ["http_stats.csv", "http_stats_history.csv", "http_failures.csv", "summary.json"]
    outputs += ["report.html", "samples.csv", "gateway.log", "locust.log"]
    for name in outputs:
        assert (out / name).exists(), name
    with open(out / "http_stats.csv", newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    figures = summary["figures"]
    assert figures["p95_ms"]["source"] == "locust exact"
    assert figures["http_rps"]["source"] == ("wrk" if shutil.which("wrk") else "locust exact")
    assert figures["server_errors"]["value"] == 0
    assert figures["rss_mb"]["value"] > 10 and figures["cpu_percent"]["value"] is not None
    assert summary["endpoints"]["POST agent.ping"]["exact"]["requests"] > 0
    assert summary["bottleneck"]["bottleneck"]
    assert summary["samples"] and summary["timeline"]
    assert "<svg" in (out / "report.html").read_text()
    # The table is printed, and the exit code follows the verdict.
    assert "P95 latency" in done.stdout and f"overall: {summary['verdict']}" in done.stdout
    assert summary["verdict"] in ("PASS", "WARN"), done.stdout
    assert done.returncode == EXIT_CODES[summary["verdict"]] == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def slowed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """The same run against a CPU-starved gateway: pinned to CPU 0 at nice 5 beside a busy loop."""
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs taskset and two CPUs")
    out = tmp_path_factory.mktemp("slowed") / "http"
    strict = out.parent / "strict.toml"
    strict.write_text(STRICT)
    hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
    try:
        done = short_run(out, "http", "--no-wrk", "--gateway-cpus", "0", "--gateway-nice", "5",
                         "--targets", str(strict))  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    yield out, done


def test_a_failed_target_exits_non_zero(
    slowed: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, done = slowed
    summary = json.loads((out / "summary.json").read_text())
    p95 = next(v for v in summary["verdicts"] if v["figure"] == "p95_ms")
    assert p95["verdict"] in ("FAIL", "INCONCLUSIVE")
    assert done.returncode in (1, 3) and done.returncode == EXIT_CODES[summary["verdict"]]


def test_compare_detects_the_slowed_gateway(
    normal: tuple[Path, subprocess.CompletedProcess[str]],
    slowed: tuple[Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    baselines = tmp_path / "baselines"
    saved = agentcore("loadtest", "baseline", "save", str(normal[0]), "--to", str(baselines))
    assert saved.returncode == 0, saved.stderr
    assert (baselines / "http" / "http_stats.csv").exists()
    same = agentcore("loadtest", "compare", str(baselines / "http"), str(normal[0]))
    assert same.returncode == 0, same.stdout
    worse = agentcore("loadtest", "compare", str(baselines / "http"), str(slowed[0]))
    assert worse.returncode == 1, worse.stdout
    assert "REGRESSION" in worse.stdout and "exact" in worse.stdout
    # The seed's form: two Locust CSVs through scripts/compare_results.py.
    script = subprocess.run(
        [sys.executable, "scripts/compare_results.py",
         str(normal[0] / "http_stats.csv"), str(slowed[0] / "http_stats.csv")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert script.returncode == 1, script.stdout


def test_websocket_run_opens_real_sockets(tmp_path: Path) -> None:
    out = tmp_path / "ws"
    done = short_run(out, "websocket", "--inconclusive-ok")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures"]["ws_connections"]["value"] > 0  # the gateway's own gauge rose
    peak = re.search(r"WS open connections: peak (\d+)", (out / "locust.log").read_text())
    assert peak is not None and int(peak.group(1)) > 0
    verdicts = {v["figure"]: v["verdict"] for v in summary["verdicts"]}
    assert verdicts["ws_connections"] == "INCONCLUSIVE"  # 20 users cannot show 10,000


def test_the_seed_locust_command_runs_from_the_repo_root(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory().start()
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "tests/load/http_load_test.py",
         f"--host={server.url}", "--users=5", "--spawn-rate=5", "--run-time=2s",
         "--headless", "--only-summary", f"--csv={tmp_path}/current"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "current_stats.csv").exists()


#: What each remaining scenario's short run must show besides a verdict and no 5xx.
SCENARIO_FIGURES = {
    "sustained": ("degradation_percent", "rss_growth_mb"),
    "burst": ("rate_limited", "recovery_s"),
    "failure": ("server_errors", "error_rate_percent"),
    "integration": ("llm_p95_ms", "webhook_registrations_per_s"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIO_FIGURES))
def test_every_other_scenario_runs_short_with_a_verdict(scenario: str, tmp_path: Path) -> None:
    """sustained, burst, failure and integration, for a few seconds each against the
    gateway (and helpers) the runner starts: the outputs exist, the scenario's own
    figures are in the summary, no 5xx, and the exit code is the verdict's."""
    out = tmp_path / scenario
    done = short_run(out, scenario, "--no-wrk", "--warmup", "0")
    assert (out / "summary.json").exists(), done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == scenario
    figures = summary["figures"]
    for name in SCENARIO_FIGURES[scenario]:
        assert name in figures, (name, sorted(figures))
    assert figures["server_errors"]["value"] == 0, done.stdout
    assert (out / "report.html").exists() and (out / f"{scenario}_stats.csv").exists()
    with open(out / f"{scenario}_stats.csv", newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert done.returncode == EXIT_CODES[summary["verdict"]], done.stdout + done.stderr
