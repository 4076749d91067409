"""The candidate loop of completions and streams, over providers written in the test.

The same loop serves both: each test that is about the loop runs once with
``complete`` and once with ``stream``. Time is a :class:`ManualClock` for
the circuits; the per-call deadline is real, and short where it is the point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Literal

import pytest

from agentcore.clock import ManualClock
from agentcore.errors import ProviderError, ProviderRejected, ProviderTimeout
from agentcore.llm.accounting import Accounting
from agentcore.llm.catalog import Catalog, Model, ProviderEntry, Requirements
from agentcore.llm.circuit import Circuit
from agentcore.llm.completions import Caller, Completions
from agentcore.llm.latency import LatencyEstimate
from agentcore.llm.providers.base import ChatRequest, Chunk, Completion
from agentcore.llm.router import ModelRouter
from agentcore.llm.usage import MemoryUsage
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.store.memory import MemoryDatabase

Behaviour = Literal["answer", "fail", "reject", "hang"]
Mode = Literal["complete", "stream"]
CALLER = Caller("acme", "agent-1")
REQUEST = ChatRequest({"messages": [{"role": "user", "content": "hi"}]})
COOLDOWN_S = 30.0


class Scripted:
    """A provider that answers, fails, refuses or never answers, as told."""

    def __init__(self, name: str, behaviour: Behaviour) -> None:
        self.name = name
        self.behaviour = behaviour
        self.calls = 0
        #: Set when a call reaches the provider.
        self.called = asyncio.Event()

    async def _start(self) -> None:
        self.calls += 1
        self.called.set()
        if self.behaviour == "fail":
            raise ProviderError(f"provider {self.name} failed with 503")
        if self.behaviour == "reject":
            raise ProviderRejected(f"provider {self.name} refused the request (400)")
        if self.behaviour == "hang":
            await asyncio.Event().wait()

    async def complete(self, request: ChatRequest, model: str, deadline: float) -> Completion:
        await self._start()
        return Completion({"choices": [{"message": {"content": self.name}}]}, 1, 1)

    async def stream(
        self, request: ChatRequest, model: str, deadline: float
    ) -> AsyncGenerator[Chunk, None]:
        await self._start()
        for text in (self.name, "!"):
            yield {"choices": [{"delta": {"content": text}}]}

    async def close(self) -> None:
        pass


class Setup:
    def __init__(self, *behaviours: Behaviour, total_timeout_s: float = 5.0) -> None:
        self.clock = ManualClock()
        self.providers = [Scripted(f"p{i}", b) for i, b in enumerate(behaviours)]
        self.models = [
            Model(
                provider=p.name,
                name="m",
                capabilities=frozenset({"chat"}),
                # Cheapest first: the route is the order given.
                input_cost_per_token=(i + 1) * 1e-6,
                output_cost_per_token=(i + 1) * 1e-6,
                context_window=8192,
                weight=1.0,
                latency=LatencyEstimate(100.0, 0.5, self.clock),
                circuit=Circuit(1, COOLDOWN_S, self.clock),
            )
            for i, p in enumerate(self.providers)
        ]
        entries = {
            p.name: ProviderEntry(p.name, "openai", p, 1.0, None, None) for p in self.providers
        }
        catalog = Catalog(entries, self.models, {})
        accounting = Accounting(MemoryUsage(MemoryDatabase()), {}, self.clock)
        self.completions = Completions(
            catalog,
            ModelRouter(self.models),
            accounting,
            MemoryRateLimiter(self.clock),
            total_timeout_s,
        )

    async def call(self, mode: Mode) -> tuple[str, list[str]]:
        """(the answering provider's text, the outcome of every attempt), read to the end."""
        if mode == "complete":
            result = await self.completions.complete(REQUEST, Requirements(), CALLER)
            text, decision = result.completion.text, result.decision
        else:
            stream = await self.completions.stream(REQUEST, Requirements(), CALLER)
            chunks = [c async for c in stream.chunks()]
            text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
            decision = stream.decision
        return text, [a.outcome for a in decision.attempts]

    def in_flight(self) -> list[int]:
        return [m.in_flight for m in self.models]


MODES: list[Mode] = ["complete", "stream"]


@pytest.mark.parametrize("mode", MODES)
async def test_failed_candidates_fall_back_in_route_order(mode: Mode) -> None:
    setup = Setup("fail", "fail", "answer")
    text, outcomes = await setup.call(mode)
    assert text == ("p2" if mode == "complete" else "p2!")
    assert outcomes == ["error", "error", "ok"]
    assert setup.in_flight() == [0, 0, 0]
    assert [m.circuit.state for m in setup.models] == ["open", "open", "closed"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_refusal_ends_the_call_without_trying_the_next(mode: Mode) -> None:
    setup = Setup("reject", "answer")
    with pytest.raises(ProviderRejected) as caught:
        await setup.call(mode)
    assert caught.value.data is not None
    attempts = caught.value.data["decision"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["rejected"]
    assert setup.providers[1].calls == 0
    assert setup.in_flight() == [0, 0]
    assert setup.models[0].circuit.state == "closed"  # it answered: it is up


@pytest.mark.parametrize("mode", MODES)
async def test_a_silent_candidate_times_out_at_the_total_deadline(mode: Mode) -> None:
    setup = Setup("hang", "answer", total_timeout_s=0.05)
    with pytest.raises(ProviderTimeout, match=r"llm.total_timeout_s \(0.05 s\)") as caught:
        await setup.call(mode)
    assert caught.value.data is not None
    (attempt,) = caught.value.data["decision"]["attempts"]
    assert attempt["outcome"] == "timeout"
    late = "did not answer in time" if mode == "complete" else "sent nothing in time"
    assert attempt["error"] == f"provider p0 {late}"
    assert setup.providers[1].calls == 0  # no time left for it
    assert setup.in_flight() == [0, 0]


@pytest.mark.parametrize("mode", MODES)
async def test_a_cancelled_call_frees_the_half_open_trial(mode: Mode) -> None:
    setup = Setup("fail")
    with pytest.raises(ProviderError):
        await setup.call(mode)
    circuit = setup.models[0].circuit
    setup.clock.advance(COOLDOWN_S)
    assert circuit.state == "half_open"
    hanging = setup.providers[0]
    hanging.behaviour = "hang"
    hanging.called.clear()
    call = asyncio.create_task(setup.call(mode))
    await asyncio.wait_for(hanging.called.wait(), 5)
    assert not circuit.available()  # the trial is running
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert circuit.available()  # no verdict: the next call may try
    assert setup.in_flight() == [0]


async def test_a_stream_holds_its_in_flight_count_until_read() -> None:
    setup = Setup("answer")
    stream = await setup.completions.stream(REQUEST, Requirements(), CALLER)
    assert setup.in_flight() == [1]
    assert [c async for c in stream.chunks()]
    assert setup.in_flight() == [0]
