"""The configured providers and models, built once from ``[llm]``.

A model is known by its name or as ``provider/model``; an alias
(``[llm.aliases.<name>]``) is a name that routes by requirements. API keys
are read here, once, from the environment mapping the app factory passes
in, by the variable name the configuration gives; they live only inside the
provider objects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from agentcore.clock import Clock
from agentcore.config import LlmConfig, LlmProviderConfig, LlmRequirementsConfig
from agentcore.errors import ModelNotFound
from agentcore.llm.circuit import Circuit
from agentcore.llm.latency import LatencyEstimate
from agentcore.llm.providers.anthropic import AnthropicProvider
from agentcore.llm.providers.base import Provider
from agentcore.llm.providers.openai import OpenAIProvider
from agentcore.llm.transport.base import Connector
from agentcore.llm.transport.http import HttpTransport
from agentcore.ratelimit.base import Limit

log = logging.getLogger("agentcore.llm")


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a call asks of the model that serves it (0 / empty: anything)."""

    capabilities: frozenset[str] = frozenset()
    #: Both the input and the output price per token must be at or below it.
    max_cost_per_token: float = 0.0
    max_latency_ms: float = 0.0
    preferred_providers: tuple[str, ...] = ()
    #: A model name or ``provider/model``.
    model: str = ""
    #: Overrides the configured strategy.
    strategy: str = ""

    @classmethod
    def of(cls, alias: LlmRequirementsConfig) -> Requirements:
        return cls(
            capabilities=frozenset(alias.capabilities),
            max_cost_per_token=alias.max_cost_per_token,
            max_latency_ms=alias.max_latency_ms,
            preferred_providers=tuple(alias.preferred_providers),
            model=alias.model,
            strategy=alias.strategy,
        )


@dataclass(eq=False)
class ProviderEntry:
    name: str
    kind: str
    provider: Provider
    weight: float
    #: GCRA limits (per worker); None: unlimited.
    requests: Limit | None
    tokens: Limit | None


@dataclass(eq=False)
class Model:
    provider: str
    name: str
    capabilities: frozenset[str]
    input_cost_per_token: float
    output_cost_per_token: float
    context_window: int
    weight: float
    latency: LatencyEstimate
    circuit: Circuit
    #: Calls in progress on this worker (``least_busy``).
    in_flight: int = 0
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = f"{self.provider}/{self.name}"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_cost_per_token
            + completion_tokens * self.output_cost_per_token
        )

    @property
    def price(self) -> float:
        """The ordering key of ``cheapest``: input plus output price per token."""
        return self.input_cost_per_token + self.output_cost_per_token


class Catalog:
    def __init__(
        self,
        providers: dict[str, ProviderEntry],
        models: list[Model],
        aliases: dict[str, Requirements],
    ) -> None:
        self.providers = providers
        self.models = models
        self.aliases = aliases
        self._by_name: dict[str, list[Model]] = {}
        for model in models:
            self._by_name.setdefault(model.name, []).append(model)
            self._by_name.setdefault(model.key, []).append(model)

    @classmethod
    def build(
        cls,
        config: LlmConfig,
        clock: Clock,
        environ: Mapping[str, str],
        connector: Connector = HttpTransport,
    ) -> Catalog:
        """``connector`` builds each provider's transport (tests pass
        ``MemoryTransport.connector(app)`` to skip the sockets)."""
        providers: dict[str, ProviderEntry] = {}
        models: list[Model] = []
        for spec in config.providers:
            providers[spec.name] = ProviderEntry(
                spec.name,
                spec.kind,
                _provider(spec, _key(spec, environ), connector),
                spec.weight,
                _limit(f"llm-rpm-{spec.name}", spec.requests_per_minute),
                _limit(f"llm-tpm-{spec.name}", spec.tokens_per_minute),
            )
            for m in spec.models:
                models.append(
                    Model(
                        provider=spec.name,
                        name=m.name,
                        capabilities=frozenset(m.capabilities),
                        input_cost_per_token=m.input_cost_per_token,
                        output_cost_per_token=m.output_cost_per_token,
                        context_window=m.context_window,
                        weight=spec.weight,
                        latency=LatencyEstimate(m.latency_ms, config.latency_alpha, clock),
                        circuit=Circuit(config.circuit_failures, config.circuit_cooldown_s, clock),
                    )
                )
        aliases = {name: Requirements.of(spec) for name, spec in config.aliases.items()}
        return cls(providers, models, aliases)

    def resolve(self, name: str) -> Requirements:
        """Requirements for a ``model`` value: an alias, a model name or ``provider/model``."""
        alias = self.aliases.get(name)
        if alias is not None:
            return alias
        if name in self._by_name:
            return Requirements(model=name)
        raise ModelNotFound(
            f"model {name[:200]!r} is neither a configured model nor an alias "
            "(GET /v1/models lists them)",
            data={"model": name[:200]},
        )

    def named(self, name: str) -> list[Model]:
        return self._by_name.get(name, [])

    async def close(self) -> None:
        for entry in self.providers.values():
            await entry.provider.close()


def _key(spec: LlmProviderConfig, environ: Mapping[str, str]) -> str:
    if not spec.api_key_env:
        return ""
    key = environ.get(spec.api_key_env, "")
    if not key:
        # The variable's name only, never a value.
        log.warning(
            "llm provider %s: environment variable %s is not set; calling without a key",
            spec.name,
            spec.api_key_env,
        )
    return key


def _provider(spec: LlmProviderConfig, key: str, connector: Connector) -> Provider:
    kind = AnthropicProvider if spec.kind == "anthropic" else OpenAIProvider
    return kind(
        spec.name,
        spec.base_url,
        key,
        timeout_s=spec.timeout_s,
        connect_timeout_s=spec.connect_timeout_s,
        max_connections=spec.max_connections,
        connector=connector,
    )


def _limit(name: str, per_minute: int) -> Limit | None:
    return Limit(name, per_minute / 60.0, per_minute) if per_minute > 0 else None
