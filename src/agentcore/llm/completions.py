"""Making a completion: route, call the candidates in order until one
answers, account for it.

A candidate is tried when its provider's per-minute quotas allow it and its
circuit lets a call through; it is left for the next one when it fails
(5xx, 429, 401/403, connection error, timeout, a cut-off stream before its
first chunk). Everything happens within ``llm.total_timeout_s`` from the
start of the call (to the first chunk when streaming; after that only the
provider's read timeout bounds the gap between chunks). A provider that
refuses the request as malformed (400/404/413/422) ends the call at once:
the next provider would refuse it too.

A stream that fails after its first chunk cannot fall back (the caller has
part of an answer): :class:`Stream` raises, and the HTTP layer ends the
stream with an error event, never a clean finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from agentcore.errors import (
    AgentCoreError,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    RateLimited,
)
from agentcore.llm.accounting import Accounting
from agentcore.llm.catalog import Catalog, Model, Requirements
from agentcore.llm.providers.base import ChatRequest, Chunk, Completion, Provider
from agentcore.llm.router import Attempt, Decision, ModelRouter
from agentcore.ratelimit.memory import MemoryRateLimiter

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from agentcore.metrics import Metrics

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who pays: the tenant, and the agent when known (empty otherwise)."""

    tenant: str
    agent: str = ""


@dataclass(slots=True)
class Result:
    completion: Completion
    model: Model
    decision: Decision
    #: Seconds spent waiting on providers, failed attempts included.
    provider_s: float
    cost: float


@dataclass(slots=True)
class _Answer(Generic[T]):
    """The first candidate's answer (a completion, or a stream's first chunk)."""

    model: Model
    value: T
    #: Seconds the answering attempt took.
    elapsed: float
    #: Seconds spent on every attempt, this one included.
    provider_s: float
    decision: Decision


class Completions:
    def __init__(
        self,
        catalog: Catalog,
        router: ModelRouter,
        accounting: Accounting,
        quotas: MemoryRateLimiter,
        total_timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.catalog = catalog
        self.router = router
        self.accounting = accounting
        self._quotas = quotas
        self.total_timeout_s = total_timeout_s
        self._metrics = metrics
        #: ``agentcore_llm_provider_latency_seconds`` of each model, looked up once.
        self._latency: dict[str, Histogram] = {}

    async def complete(self, request: ChatRequest, req: Requirements, caller: Caller) -> Result:
        async def call(provider: Provider, model: Model, deadline: float) -> Completion:
            return await provider.complete(request, model.name, deadline)

        answer = await self._first_answer(request, req, caller, call, "did not answer in time")
        model, completion = answer.model, answer.value
        model.in_flight -= 1
        cost = self._settled(
            model, completion.prompt_tokens, completion.completion_tokens, answer.elapsed, caller
        )
        return Result(completion, model, answer.decision, answer.provider_s, cost)

    async def stream(self, request: ChatRequest, req: Requirements, caller: Caller) -> Stream:
        """The stream of the first candidate that produced a chunk."""

        async def call(
            provider: Provider, model: Model, deadline: float
        ) -> tuple[Chunk, AsyncGenerator[Chunk, None]]:
            chunks = provider.stream(request, model.name, deadline)
            try:
                return await anext(chunks), chunks
            except StopAsyncIteration:
                raise ProviderError(f"provider {model.provider} sent an empty stream") from None
            except BaseException:
                with contextlib.suppress(Exception):
                    await chunks.aclose()
                raise

        answer = await self._first_answer(request, req, caller, call, "sent nothing in time")
        first, rest = answer.value
        return Stream(
            self, request, answer.model, caller, answer.decision, first, rest, answer.provider_s
        )

    async def _first_answer(
        self,
        request: ChatRequest,
        req: Requirements,
        caller: Caller,
        call: Callable[[Provider, Model, float], Awaitable[T]],
        late: str,
    ) -> _Answer[T]:
        """What ``call`` returns for the first candidate that answers in time.

        Candidates are tried in route order (see the module docstring for when
        one is skipped or left for the next). The answering model keeps its
        in-flight count and its circuit's trial: the caller settles both when
        the answer is complete. ``late`` says how a timed-out candidate failed.
        """
        self.accounting.check(caller.tenant)
        candidates, decision = self.router.plan(req, request.needs)
        deadline = time.monotonic() + self.total_timeout_s
        failure: AgentCoreError | None = None
        provider_s = 0.0
        for model in candidates:
            if not self._admit(model, request, decision, deadline):
                continue
            provider = self.catalog.providers[model.provider].provider
            started = time.perf_counter()
            model.in_flight += 1
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    value = await call(provider, model, deadline)
            except TimeoutError:
                failure = ProviderTimeout(f"provider {model.provider} {late}")
            except (ProviderError, ProviderRejected) as exc:
                failure = exc
            except BaseException:  # cancelled (or a bug): no verdict on the provider
                model.in_flight -= 1
                model.circuit.abandoned()
                raise
            else:
                elapsed = time.perf_counter() - started
                self._observe(model, elapsed)
                decision.attempts.append(Attempt(model.key, "ok", elapsed * 1000))
                return _Answer(model, value, elapsed, provider_s + elapsed, decision)
            model.in_flight -= 1
            elapsed = time.perf_counter() - started
            provider_s += elapsed
            if isinstance(failure, ProviderRejected):
                self._rejected(model, failure, elapsed, decision, caller)
                raise _with_decision(failure, decision) from failure
            self._failed(model, failure, elapsed, decision, caller)
        raise _with_decision(self._exhausted(failure, deadline), decision)

    # -- bookkeeping ------------------------------------------------------------

    def _admit(
        self, model: Model, request: ChatRequest, decision: Decision, deadline: float
    ) -> bool:
        """Whether to call ``model`` now; records why not in the decision."""
        if time.monotonic() >= deadline:
            return False
        if not model.circuit.begin():
            decision.attempts.append(Attempt(model.key, "skipped", error="circuit open"))
            return False
        entry = self.catalog.providers[model.provider]
        over = ""
        if entry.requests is not None and not self._quotas.hit_now("", entry.requests).allowed:
            over = "requests_per_minute"
        elif entry.tokens is not None:
            cost = min(request.estimated_tokens(), entry.tokens.burst)
            if not self._quotas.hit_now("", entry.tokens, cost).allowed:
                over = "tokens_per_minute"
        if over:
            model.circuit.abandoned()
            decision.attempts.append(
                Attempt(model.key, "skipped", error=f"provider {entry.name} over its {over}")
            )
            return False
        return True

    def _settled(
        self,
        model: Model,
        prompt_tokens: int,
        completion_tokens: int,
        elapsed: float,
        caller: Caller,
    ) -> float:
        """Record a complete answer of ``model`` that took ``elapsed`` seconds; its cost."""
        model.circuit.succeeded()
        model.latency.observe(elapsed * 1000)
        cost = model.cost(prompt_tokens, completion_tokens)
        self.accounting.record(
            caller.tenant,
            caller.agent,
            model.provider,
            model.name,
            prompt_tokens,
            completion_tokens,
            cost,
        )
        return cost

    def _observe(self, model: Model, elapsed: float) -> None:
        if self._metrics is None:
            return
        histogram = self._latency.get(model.key)
        if histogram is None:
            histogram = self._latency[model.key] = self._metrics.llm_provider_latency.labels(
                model.provider, model.name
            )
        histogram.observe(elapsed)

    def _failed(
        self, model: Model, exc: AgentCoreError, elapsed: float, decision: Decision, caller: Caller
    ) -> None:
        timed_out = isinstance(exc, ProviderTimeout)
        model.circuit.failed()
        if timed_out:  # it took at least this long: let the estimate know
            model.latency.observe(elapsed * 1000)
        outcome = "timeout" if timed_out else "error"
        decision.attempts.append(Attempt(model.key, outcome, elapsed * 1000, exc.message))
        self.accounting.failed(caller.tenant, caller.agent, model.provider, model.name, outcome)
        if self._metrics is not None:
            self._metrics.llm_fallbacks.labels(model.provider, model.name, outcome).inc()

    def _rejected(
        self, model: Model, exc: AgentCoreError, elapsed: float, decision: Decision, caller: Caller
    ) -> None:
        model.circuit.succeeded()  # it answered: it is up
        decision.attempts.append(Attempt(model.key, "rejected", elapsed * 1000, exc.message))
        self.accounting.failed(caller.tenant, caller.agent, model.provider, model.name, "rejected")

    def _exhausted(self, failure: AgentCoreError | None, deadline: float) -> AgentCoreError:
        if time.monotonic() >= deadline:
            return ProviderTimeout(
                f"no provider answered within llm.total_timeout_s ({self.total_timeout_s:g} s)"
                + (f"; last error: {failure.message}" if failure is not None else "")
            )
        if failure is not None:
            return type(failure)(f"every candidate failed; last error: {failure.message}")
        return RateLimited(
            "every candidate model was skipped (provider quotas or circuits); retry shortly",
            headers=((b"retry-after", b"1"),),
        )


def _with_decision(exc: AgentCoreError, decision: Decision) -> AgentCoreError:
    exc.data = {**(exc.data or {}), "decision": decision.to_dict()}
    return exc


class Stream:
    """An open stream whose first chunk has arrived; iterate :meth:`chunks` once."""

    def __init__(
        self,
        owner: Completions,
        request: ChatRequest,
        model: Model,
        caller: Caller,
        decision: Decision,
        first: Chunk,
        rest: AsyncGenerator[Chunk, None],
        provider_s: float,
    ) -> None:
        self._owner = owner
        self._request = request
        self.model = model
        self.caller = caller
        self.decision = decision
        self._first = first
        self._rest = rest
        #: Seconds spent on providers up to the first chunk.
        self.provider_s = provider_s
        self._started = time.perf_counter() - provider_s
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._chars = 0
        self._usage = False

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        """The chunks; raises :class:`ProviderError` when the provider fails mid-stream."""
        model = self.model
        verdict = ""
        try:
            chunk: Chunk | None = self._first
            while chunk is not None:
                out = self._note(chunk)
                if out is not None:
                    yield out
                chunk = await anext(self._rest, None)
            verdict = "ok"
        except ProviderError as exc:
            verdict = "failed"
            elapsed = time.perf_counter() - self._started
            self._owner._failed(model, exc, elapsed, self.decision, self.caller)
            raise
        finally:
            model.in_flight -= 1
            if verdict == "ok":
                self._finish()
            elif not verdict:
                model.circuit.abandoned()  # the caller went away
            with contextlib.suppress(Exception):
                await self._rest.aclose()

    def _note(self, chunk: Chunk) -> Chunk | None:
        usage: Any = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = True
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            if not chunk.get("choices") and not self._request.include_usage:
                return None  # asked for by the gateway, not by the caller
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                self._chars += len(content)
        return chunk

    def _finish(self) -> None:
        if not self._usage:  # the provider sent no usage: estimate (about 4 characters a token)
            self.prompt_tokens = self._request.prompt_estimate()
            self.completion_tokens = (self._chars + 3) // 4
        elapsed = time.perf_counter() - self._started
        self._owner._settled(
            self.model, self.prompt_tokens, self.completion_tokens, elapsed, self.caller
        )
