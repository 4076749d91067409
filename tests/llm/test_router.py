"""Routing rules, strategies and the decision record (no network: models built directly)."""

from __future__ import annotations

import random
import re
from typing import Any

import msgspec
import pytest

from agentcore.clock import ManualClock
from agentcore.config import LlmConfig
from agentcore.errors import ConfigError, ModelNotFound, NoModelAvailable
from agentcore.llm.catalog import Catalog, Model, Requirements
from agentcore.llm.circuit import Circuit
from agentcore.llm.latency import HALF_LIFE_S, LatencyEstimate
from agentcore.llm.router import ModelRouter
from tests.support import make_config

CHAT = frozenset({"text_generation", "chat"})


def model(
    clock: ManualClock,
    provider: str,
    name: str,
    *,
    caps: frozenset[str] = CHAT,
    input_cost: float = 1e-6,
    output_cost: float = 1e-6,
    latency_ms: float = 100.0,
    weight: float = 1.0,
    failures: int = 3,
) -> Model:
    return Model(
        provider=provider,
        name=name,
        capabilities=caps,
        input_cost_per_token=input_cost,
        output_cost_per_token=output_cost,
        context_window=8192,
        weight=weight,
        latency=LatencyEstimate(latency_ms, 0.5, clock),
        circuit=Circuit(failures, 30.0, clock),
    )


def state(circuit: Circuit) -> str:
    return circuit.state


def keys(models: list[Model]) -> list[str]:
    return [m.key for m in models]


def test_capability_filter_and_needs_of_the_body(clock: ManualClock) -> None:
    plain = model(clock, "a", "plain")
    vision = model(clock, "b", "vision", caps=CHAT | {"vision", "tools"})
    router = ModelRouter([plain, vision])
    chosen, decision = router.plan(Requirements(capabilities=frozenset({"vision"})))
    assert keys(chosen) == ["b/vision"]
    assert decision.rejected[0].model == "a/plain"
    assert decision.rejected[0].reasons == {"capabilities": "lacks vision"}
    # A body with tools needs "tools" even when the caller did not ask for it.
    chosen, _ = router.plan(Requirements(), needs=frozenset({"tools"}))
    assert keys(chosen) == ["b/vision"]


@pytest.mark.parametrize(
    ("input_cost", "output_cost", "accepted"),
    [
        (1e-6, 1e-6, True),
        (2e-6, 2e-6, True),  # at the limit is allowed
        (1e-6, 3e-6, False),  # cheap input, expensive output
        (3e-6, 1e-6, False),  # expensive input
    ],
)
def test_cost_rule_checks_both_prices(
    clock: ManualClock, input_cost: float, output_cost: float, accepted: bool
) -> None:
    m = model(clock, "a", "m", input_cost=input_cost, output_cost=output_cost)
    router = ModelRouter([m])
    req = Requirements(max_cost_per_token=2e-6)
    if accepted:
        assert keys(router.plan(req)[0]) == ["a/m"]
    else:
        with pytest.raises(NoModelAvailable) as info:
            router.plan(req)
        assert info.value.data is not None
        assert info.value.data["unmet"] == ["max_cost_per_token"]
        assert "max_cost_per_token" in info.value.message


def test_latency_rule_follows_the_moving_estimate(clock: ManualClock) -> None:
    m = model(clock, "a", "m", latency_ms=100)
    router = ModelRouter([m])
    req = Requirements(max_latency_ms=200)
    assert keys(router.plan(req)[0]) == ["a/m"]
    for _ in range(3):
        m.latency.observe(1000)  # alpha 0.5: 550, 775, 887.5
    assert m.latency.ms == pytest.approx(887.5)
    with pytest.raises(NoModelAvailable) as info:
        router.plan(req)
    assert "max_latency_ms" in info.value.message
    assert info.value.data is not None
    reasons = info.value.data["rejected"][0]["reasons"]
    assert reasons["max_latency_ms"] == "estimate 888 ms > 200 ms"
    # Without traffic the estimate drifts back to the prior: the model is tried again.
    clock.advance(HALF_LIFE_S * 4)
    assert m.latency.ms == pytest.approx(100 + 787.5 / 16)
    assert keys(router.plan(req)[0]) == ["a/m"]
    m.latency.observe(120)
    assert m.latency.ms < 200


def test_circuit_open_skipped_then_half_open_after_cooldown(clock: ManualClock) -> None:
    flaky = model(clock, "a", "flaky", input_cost=1e-7, output_cost=1e-7)
    steady = model(clock, "b", "steady")
    router = ModelRouter([flaky, steady])
    for _ in range(3):
        flaky.circuit.failed()
    assert state(flaky.circuit) == "open"
    chosen, decision = router.plan(Requirements())
    assert keys(chosen) == ["b/steady"]
    assert (
        "circuit open after 3 failures; retry in 30.0 s" in decision.rejected[0].reasons["circuit"]
    )
    clock.advance(29.9)
    assert keys(router.plan(Requirements())[0]) == ["b/steady"]
    clock.advance(0.1)
    assert state(flaky.circuit) == "half_open"
    assert keys(router.plan(Requirements())[0]) == ["a/flaky", "b/steady"]
    # One trial at a time: while it runs, the model is skipped.
    assert flaky.circuit.begin()
    assert keys(router.plan(Requirements())[0]) == ["b/steady"]
    flaky.circuit.failed()  # the trial failed: open again for a whole cooldown
    assert state(flaky.circuit) == "open"
    clock.advance(30)
    assert flaky.circuit.begin()
    flaky.circuit.succeeded()
    assert state(flaky.circuit) == "closed"
    assert flaky.circuit.consecutive == 0


def test_circuit_counts_consecutive_failures_only(clock: ManualClock) -> None:
    circuit = Circuit(3, 10, clock)
    circuit.failed()
    circuit.failed()
    circuit.succeeded()
    circuit.failed()
    circuit.failed()
    assert state(circuit) == "closed"
    circuit.failed()
    assert state(circuit) == "open"
    assert not circuit.available()
    assert circuit.retry_in_s() == pytest.approx(10)


def test_strategies(clock: ManualClock) -> None:
    cheap_slow = model(clock, "a", "cheap", input_cost=1e-7, output_cost=1e-7, latency_ms=900)
    mid = model(clock, "b", "mid", input_cost=5e-7, output_cost=5e-7, latency_ms=300)
    fast_dear = model(clock, "c", "dear", input_cost=1e-5, output_cost=1e-5, latency_ms=50)
    models = [fast_dear, mid, cheap_slow]
    assert keys(ModelRouter(models, "cheapest").plan(Requirements())[0]) == [
        "a/cheap",
        "b/mid",
        "c/dear",
    ]
    assert keys(ModelRouter(models, "fastest").plan(Requirements())[0]) == [
        "c/dear",
        "b/mid",
        "a/cheap",
    ]
    fast_dear.in_flight, mid.in_flight, cheap_slow.in_flight = 5, 0, 1
    assert keys(ModelRouter(models, "least_busy").plan(Requirements())[0]) == [
        "b/mid",
        "a/cheap",
        "c/dear",
    ]
    # The requirement's strategy overrides the configured one.
    router = ModelRouter(models, "cheapest")
    chosen, decision = router.plan(Requirements(strategy="fastest"))
    assert keys(chosen)[0] == "c/dear"
    assert decision.strategy == "fastest"


def test_weighted_strategy_follows_weights(clock: ManualClock) -> None:
    heavy = model(clock, "heavy", "m", weight=3)
    light = model(clock, "light", "m", weight=1)
    router = ModelRouter([heavy, light], "weighted", random.Random(7).random)
    firsts = [router.plan(Requirements())[0][0].provider for _ in range(4000)]
    share = firsts.count("heavy") / len(firsts)
    assert 0.72 < share < 0.78  # 3 / (3 + 1)


def test_preferred_providers_first(clock: ManualClock) -> None:
    a = model(clock, "a", "m", input_cost=1e-7, output_cost=1e-7)
    b = model(clock, "b", "m", input_cost=5e-7, output_cost=5e-7)
    c = model(clock, "c", "m", input_cost=9e-7, output_cost=9e-7)
    router = ModelRouter([a, b, c])
    chosen, _ = router.plan(Requirements(preferred_providers=("c", "b")))
    assert keys(chosen) == ["c/m", "b/m", "a/m"]


def test_model_rule_and_decision_record(clock: ManualClock) -> None:
    a = model(clock, "a", "small")
    b = model(clock, "b", "small", input_cost=2e-6, output_cost=2e-6)
    c = model(clock, "c", "large")
    router = ModelRouter([a, b, c])
    chosen, decision = router.plan(Requirements(model="small"))
    assert keys(chosen) == ["a/small", "b/small"]  # same name at two providers: fallback
    assert keys(router.plan(Requirements(model="b/small"))[0]) == ["b/small"]
    record = decision.to_dict()
    assert record == {
        "strategy": "cheapest",
        "candidates": ["a/small", "b/small"],
        "rejected": [{"model": "c/large", "reasons": {"model": "not the requested model 'small'"}}],
        "attempts": [],
    }


def test_nothing_satisfies_names_the_requirement(clock: ManualClock) -> None:
    cheap_slow = model(clock, "a", "cheap", input_cost=1e-7, output_cost=1e-7, latency_ms=900)
    dear_fast = model(clock, "b", "dear", input_cost=1e-5, output_cost=1e-5, latency_ms=50)
    router = ModelRouter([cheap_slow, dear_fast])
    with pytest.raises(NoModelAvailable) as info:
        router.plan(Requirements(capabilities=frozenset({"vision"})))
    assert info.value.status == 422
    assert info.value.message == "no model meets capabilities vision"
    # Each requirement alone can be met, not both together.
    with pytest.raises(NoModelAvailable) as info:
        router.plan(Requirements(max_cost_per_token=1e-6, max_latency_ms=100))
    assert info.value.message == (
        "no single model meets all of: max_cost_per_token 1e-06; max_latency_ms 100"
    )
    assert info.value.data is not None
    assert info.value.data["unmet"] == ["max_cost_per_token", "max_latency_ms"]
    with pytest.raises(NoModelAvailable, match="no LLM model is configured"):
        ModelRouter([]).plan(Requirements())


def test_catalog_resolves_models_and_aliases(clock: ManualClock) -> None:
    config: dict[str, Any] = {
        "providers": [
            {
                "name": "p",
                "base_url": "http://127.0.0.1:9/v1",
                "models": [{"name": "small", "capabilities": ["chat", "tools"]}],
            }
        ],
        "aliases": {"smart": {"capabilities": ["tools"], "max_latency_ms": 500}},
    }
    catalog = Catalog.build(msgspec.convert(config, LlmConfig), clock, {})
    assert catalog.resolve("small") == Requirements(model="small")
    assert catalog.resolve("p/small") == Requirements(model="p/small")
    assert catalog.resolve("smart") == Requirements(
        capabilities=frozenset({"tools"}), max_latency_ms=500
    )
    with pytest.raises(ModelNotFound) as info:
        catalog.resolve("gpt-17")
    assert info.value.status == 404


@pytest.mark.parametrize(
    ("llm", "message"),
    [
        (
            {"providers": [{"name": "p", "base_url": "u"}]},
            "llm.providers[0].base_url: not an http(s) URL: 'u'",
        ),
        (
            {"providers": [{"name": "p", "base_url": "http://a"}] * 2},
            "llm.providers[1].name: must be unique",
        ),
        (
            {"providers": [{"name": "p", "base_url": "http://a"}], "total_timeout_s": 30},
            "llm.total_timeout_s: 30 s must be below limits.handler_timeout_s",
        ),
        ({"aliases": {"x": {"preferred_providers": ["nope"]}}}, "unknown provider 'nope'"),
        (
            {
                "providers": [
                    {
                        "name": "p",
                        "base_url": "http://a",
                        "models": [{"name": "m", "capabilities": ["telepathy"]}],
                    }
                ]
            },
            "capabilities",
        ),
    ],
)
def test_invalid_llm_configuration(llm: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(llm=llm)
