"""Target tables, TOML overrides and the verdict rules, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcore.loadtest.targets import BUILTIN, Level, grade, judge, load_targets, overall


def level(better: str = "lower", kind: str = "latency") -> Level:
    return Level("x", "X", "ms", better, 50, 100, kind)  # type: ignore[arg-type]


def test_the_seed_tables_are_built_in() -> None:
    http = {lv.figure: lv for lv in BUILTIN["http"]}
    assert (http["http_rps"].target, http["http_rps"].critical) == (60_000, 40_000)
    assert (http["p95_ms"].target, http["p95_ms"].critical) == (50, 100)
    assert (http["p99_ms"].target, http["p99_ms"].critical) == (100, 200)
    assert (http["error_rate_percent"].target, http["error_rate_percent"].critical) == (0.1, 1)
    assert (http["cpu_percent"].target, http["cpu_percent"].critical) == (50, 80)
    assert (http["rss_mb"].target, http["rss_mb"].critical) == (4096, 8192)
    ws = {lv.figure: lv for lv in BUILTIN["websocket"]}
    assert (ws["ws_connections"].target, ws["ws_connections"].critical) == (10_000, 5_000)
    burst = {lv.figure: lv for lv in BUILTIN["burst"]}
    assert burst["recovery_s"].target == 5
    assert {lv.figure for lv in BUILTIN["sustained"]} >= {"degradation_percent", "rss_growth_mb"}
    integration = {lv.figure: lv for lv in BUILTIN["integration"]}
    assert integration["http_rps"].target == 10_000
    assert integration["llm_p95_ms"].target == 100
    assert integration["webhook_p95_ms"].target == 50
    assert integration["event_publish_p95_ms"].target == 10
    assert integration["rss_mb"].target == 500


@pytest.mark.parametrize(
    ("better", "value", "verdict"),
    [
        ("lower", 10, "PASS"),
        ("lower", 50, "PASS"),
        ("lower", 75, "WARN"),
        ("lower", 100, "WARN"),
        ("lower", 101, "FAIL"),
        ("higher", 60, "PASS"),
        ("higher", 50, "PASS"),
        ("higher", 49, "FAIL"),
    ],
)
def test_grade_uses_both_levels(better: str, value: float, verdict: str) -> None:
    assert grade(level(better), value) == verdict


def test_higher_is_better_between_critical_and_target_warns() -> None:
    rps = Level("r", "R", "req/s", "higher", 100, 50, "throughput")
    assert grade(rps, 75) == "WARN"


def test_a_missed_throughput_target_is_inconclusive_when_the_generator_or_users_limited() -> None:
    rps = Level("r", "R", "req/s", "higher", 100, 50, "throughput")
    assert judge(rps, 10, generator_bound=True, users_bound=False) == "INCONCLUSIVE"
    assert judge(rps, 10, generator_bound=False, users_bound=True) == "INCONCLUSIVE"
    assert judge(rps, 10, generator_bound=False, users_bound=False) == "FAIL"
    assert judge(rps, 200, generator_bound=True, users_bound=True) == "PASS"


def test_latency_is_inconclusive_only_when_the_generator_was_saturated() -> None:
    assert judge(level(), 500, generator_bound=True, users_bound=False) == "INCONCLUSIVE"
    assert judge(level(), 500, generator_bound=False, users_bound=True) == "FAIL"


def test_errors_and_resources_are_never_excused() -> None:
    errors = level(kind="errors")
    assert judge(errors, 500, generator_bound=True, users_bound=True) == "FAIL"


def test_unmeasured_is_not_applicable() -> None:
    assert judge(level(), None, generator_bound=False, users_bound=False) == "N/A"


def test_overall_is_the_worst() -> None:
    assert overall(["PASS", "WARN", "N/A"]) == "WARN"
    assert overall(["PASS", "INCONCLUSIVE", "WARN"]) == "INCONCLUSIVE"
    assert overall(["INCONCLUSIVE", "FAIL"]) == "FAIL"
    assert overall(["N/A"]) == "N/A"
    assert overall([]) == "N/A"


def test_toml_overrides_levels_skips_and_adds(tmp_path: Path) -> None:
    path = tmp_path / "targets.toml"
    path.write_text(
        "[http.http_rps]\ntarget = 20000\ncritical = 10000\n"
        "[http.cpu_percent]\nskip = true\n"
        '[integration.llm_p95_ms]\nrequests = "chat"\n'
        "[failure.p95_ms]\ntarget = 30\n"
    )
    tables = load_targets(path)
    http = {lv.figure: lv for lv in tables["http"]}
    assert (http["http_rps"].target, http["http_rps"].critical) == (20000, 10000)
    assert "cpu_percent" not in http
    assert {lv.figure: lv for lv in tables["integration"]}["llm_p95_ms"].requests == "chat"
    failure = {lv.figure: lv for lv in tables["failure"]}
    assert failure["p95_ms"].target == 30 and failure["p95_ms"].critical == 100
    assert load_targets()["http"] == BUILTIN["http"]


@pytest.mark.parametrize(
    "text",
    ["[http.no_such_figure]\ntarget = 1\n", "[http.p95_ms]\ntarge = 1\n", "http = 3\n"],
)
def test_toml_typos_are_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "targets.toml"
    path.write_text(text)
    with pytest.raises(ValueError):
        load_targets(path)
