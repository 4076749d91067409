"""Which models may serve a call, and in which order they are tried.

Rules, each applied to every configured model (a model failing any is
rejected, with every reason recorded):

- ``model``: the requested model name (or ``provider/model``), when given;
- ``capabilities``: the model has every one asked for, plus those the body
  itself needs (``tools``, ``json_mode``, ``vision``);
- ``max_cost_per_token``: its input *and* its output price are at or below it;
- ``max_latency_ms``: its live latency estimate is within it;
- ``circuit``: its circuit breaker is not open.

The survivors are ordered by the strategy: ``cheapest`` (input + output
price, then latency), ``fastest`` (latency estimate), ``weighted`` (random,
in proportion to the provider's weight), ``least_busy`` (calls in flight on
this worker, then latency). ``preferred_providers`` go first, in the order
given, each keeping the strategy's order. No survivor raises
:class:`~agentcore.errors.NoModelAvailable` naming the unmet requirements.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentcore.errors import NoModelAvailable
from agentcore.llm.catalog import Model, Requirements

STRATEGIES = ("cheapest", "fastest", "weighted", "least_busy")
#: Rule names in the order they are checked (also the order they are reported in).
RULES = ("model", "capabilities", "max_cost_per_token", "max_latency_ms", "circuit")


@dataclass(slots=True)
class Rejection:
    model: str
    #: rule -> why, e.g. {"max_latency_ms": "estimate 812 ms > 500 ms"}.
    reasons: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "reasons": self.reasons}


@dataclass(slots=True)
class Attempt:
    model: str
    #: ``ok``, ``error``, ``timeout``, ``rejected`` (the caller's fault), ``skipped``.
    outcome: str
    latency_ms: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "outcome": self.outcome}
        if self.outcome != "skipped":
            out["latency_ms"] = round(self.latency_ms, 3)
        if self.error:
            out["error"] = self.error
        return out


@dataclass(slots=True)
class Decision:
    """The record of one routing decision, returned to the caller."""

    strategy: str
    #: Models that met every requirement, in the order they would be tried.
    candidates: list[str]
    rejected: list[Rejection]
    attempts: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "candidates": self.candidates,
            "rejected": [r.to_dict() for r in self.rejected],
            "attempts": [a.to_dict() for a in self.attempts],
        }


class ModelRouter:
    def __init__(
        self,
        models: Sequence[Model],
        strategy: str = "cheapest",
        random_: Callable[[], float] = random.random,
    ) -> None:
        self.models = list(models)
        self.strategy = strategy
        self._random = random_

    def plan(
        self, req: Requirements, needs: frozenset[str] = frozenset()
    ) -> tuple[list[Model], Decision]:
        """The candidates in the order to try them, and the decision record."""
        wanted = req.capabilities | needs
        accepted: list[Model] = []
        rejected: list[Rejection] = []
        for model in self.models:
            reasons = _check(model, req, wanted)
            if reasons:
                rejected.append(Rejection(model.key, reasons))
            else:
                accepted.append(model)
        strategy = req.strategy or self.strategy
        ordered = self._order(accepted, strategy, req.preferred_providers)
        decision = Decision(strategy, [m.key for m in ordered], rejected)
        if not ordered:
            raise _nothing(req, wanted, rejected, len(self.models))
        return ordered, decision

    def _order(self, models: list[Model], strategy: str, preferred: tuple[str, ...]) -> list[Model]:
        if strategy == "fastest":
            models.sort(key=lambda m: (m.latency.ms, m.price))
        elif strategy == "least_busy":
            models.sort(key=lambda m: (m.in_flight, m.latency.ms))
        elif strategy == "weighted":
            # Efraimidis-Spirakis: sorting by u ** (1 / w) draws without
            # replacement in proportion to the weights.
            keys = {id(m): self._random() ** (1.0 / m.weight) for m in models}
            models.sort(key=lambda m: keys[id(m)], reverse=True)
        else:
            models.sort(key=lambda m: (m.price, m.latency.ms))
        if preferred:
            rank = {name: i for i, name in enumerate(preferred)}
            models.sort(key=lambda m: rank.get(m.provider, len(rank)))  # stable
        return models


def _check(model: Model, req: Requirements, wanted: frozenset[str]) -> dict[str, str]:
    reasons: dict[str, str] = {}
    if req.model and req.model not in (model.name, model.key):
        reasons["model"] = f"not the requested model {req.model!r}"
    missing = wanted - model.capabilities
    if missing:
        reasons["capabilities"] = f"lacks {', '.join(sorted(missing))}"
    limit = req.max_cost_per_token
    if limit > 0:
        over = [
            f"{kind} {price:g} > {limit:g}"
            for kind, price in (
                ("input", model.input_cost_per_token),
                ("output", model.output_cost_per_token),
            )
            if price > limit
        ]
        if over:
            reasons["max_cost_per_token"] = "; ".join(over)
    if req.max_latency_ms > 0:
        estimate = model.latency.ms
        if estimate > req.max_latency_ms:
            reasons["max_latency_ms"] = f"estimate {estimate:.0f} ms > {req.max_latency_ms:g} ms"
    if not model.circuit.available():
        wait = model.circuit.retry_in_s()
        reasons["circuit"] = (
            f"circuit open after {model.circuit.consecutive} failures; retry in {wait:.1f} s"
            if wait > 0
            else "circuit half-open, its trial call is in flight"
        )
    return reasons


def _nothing(
    req: Requirements, wanted: frozenset[str], rejected: list[Rejection], total: int
) -> NoModelAvailable:
    if total == 0:
        return NoModelAvailable(
            "no LLM model is configured ([[llm.providers]] in the configuration)",
            data={"unmet": [], "rejected": []},
        )
    failing = {rule: sum(rule in r.reasons for r in rejected) for rule in RULES}
    asked = {
        "model": repr(req.model),
        "capabilities": ", ".join(sorted(wanted)),
        "max_cost_per_token": f"{req.max_cost_per_token:g}",
        "max_latency_ms": f"{req.max_latency_ms:g}",
        "circuit": "",
    }
    # A rule no model passes is the unmet requirement; else only their combination is.
    alone = [rule for rule in RULES if failing[rule] == total]
    unmet = alone or [rule for rule in RULES if failing[rule]]
    parts = [
        "every circuit is open (providers failing)"
        if rule == "circuit"
        else f"{rule} {asked[rule]}"
        for rule in unmet
    ]
    if alone:
        message = "no model meets " + " and no model meets ".join(parts)
    else:
        message = "no single model meets all of: " + "; ".join(parts)
    return NoModelAvailable(
        message,
        data={"unmet": unmet, "rejected": [r.to_dict() for r in rejected]},
    )
