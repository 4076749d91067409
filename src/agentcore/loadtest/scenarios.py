"""The scenarios ``agentcore loadtest run`` knows: file, seed defaults, what the gateway needs.

The Locust files live in ``tests/load/`` (the seed's paths; they also run on
their own with ``locust -f``). Defaults are the seed's commands. Each entry
says how the gateway must be started for the scenario to mean something: the
burst scenario needs a rate limit low enough to trip, the failure scenario
needs authentication on (so "missing auth" expects 401), the integration
scenario needs a fake LLM provider and a webhook receiver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    name: str
    file: str
    users: int
    spawn_rate: float
    run_time: str
    #: Environment of a gateway the runner starts (``AGENTCORE_<SECTION>__<KEY>``).
    gateway_env: dict[str, str] = field(default_factory=dict)
    #: Start the gateway with ``auth.mode = "api_key"`` and give Locust a key.
    auth: bool = False
    #: ``fake-llm`` (an OpenAI-compatible fake provider) and/or ``receiver``
    #: (a webhook receiver answering 200), started by the runner.
    helpers: tuple[str, ...] = ()
    #: Name of the JSON the scenario writes with ``write_summary`` (if any).
    summary: str | None = None


CATALOGUE: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("http", "http_load_test.py", 1000, 100, "5m"),
        Scenario("websocket", "websocket_load_test.py", 10_000, 100, "5m"),
        Scenario("sustained", "sustained_load_test.py", 500, 50, "10m", summary="sustained"),
        Scenario(
            "burst",
            "burst_traffic_test.py",
            1000,
            200,
            "5m",
            # Above the base load (10 % of the users at up to 10 requests/s each: 1,000/s
            # from one address), far below a spike: recovery can be seen after each.
            gateway_env={"AGENTCORE_RATE_LIMIT__CLASSES": "{control={rate=2000,burst=500}}"},
            summary="burst",
        ),
        Scenario("failure", "failure_scenario_test.py", 100, 10, "5m", auth=True),
        Scenario(
            "integration",
            "integration_layer_load_test.py",
            100,
            10,
            "5m",
            helpers=("fake-llm", "receiver"),
            summary="integration",
        ),
    )
}
#: ``all`` runs these in this order, a fresh gateway for each.
ALL = ("http", "websocket", "sustained", "burst", "failure", "integration")


def scenarios_dir(explicit: str | None = None) -> Path:
    """``tests/load`` of the working directory, else of the source checkout we run from."""
    if explicit:
        return Path(explicit)
    here = Path.cwd() / "tests" / "load"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "tests" / "load"


def parse_duration(text: str) -> float:
    """Locust's run-time syntax (``90``, ``30s``, ``5m``, ``1h30m``) in seconds."""
    import re

    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m)")
    scale = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * scale[u] for n, u in parts)
