"""The LLM usage repository contract, written once and run over every backend (``repos``)."""

from __future__ import annotations

import asyncio

from agentcore.llm.usage import LlmUsage
from agentcore.repositories import Repositories

DAY = "2024-05-01"


def usage(
    *,
    day: str = DAY,
    tenant: str = "t1",
    agent_id: str = "a1",
    provider: str = "openai",
    model: str = "gpt",
    requests: int = 1,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    cost: float = 0.25,
) -> LlmUsage:
    return LlmUsage(
        day=day,
        tenant=tenant,
        agent_id=agent_id,
        provider=provider,
        model=model,
        requests=requests,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
    )


async def test_a_row_round_trips(repos: Repositories) -> None:
    assert await repos.llm_usage.rows(DAY) == []
    row = usage(requests=3, prompt_tokens=120, completion_tokens=45, cost=0.125)
    await repos.llm_usage.add([row])
    assert await repos.llm_usage.rows(DAY) == [row]


async def test_adding_to_a_row_sums_its_counts(repos: Repositories) -> None:
    await repos.llm_usage.add([usage()])
    await repos.llm_usage.add([usage(requests=2, prompt_tokens=1, completion_tokens=0, cost=0.5)])
    # Twice in one call sums too.
    await repos.llm_usage.add([usage(), usage()])
    assert await repos.llm_usage.rows(DAY) == [
        usage(requests=5, prompt_tokens=31, completion_tokens=15, cost=1.25)
    ]


async def test_adding_nothing_changes_nothing(repos: Repositories) -> None:
    await repos.llm_usage.add([])
    assert await repos.llm_usage.rows(DAY) == []
    await repos.llm_usage.add([usage()])
    await repos.llm_usage.add([])
    assert await repos.llm_usage.rows(DAY) == [usage()]


async def test_rows_of_a_day_and_tenant_in_key_order(repos: Repositories) -> None:
    rows = [
        usage(tenant="t2", agent_id="a1"),
        usage(tenant="t1", agent_id="a2"),
        usage(tenant="t1", agent_id="a1", provider="openai", model="b"),
        usage(tenant="t1", agent_id="a1", provider="openai", model="a"),
        usage(tenant="t1", agent_id="a1", provider="anthropic", model="z"),
        usage(tenant="t1", day="2024-05-02"),
    ]
    await repos.llm_usage.add(rows)
    keys = [(r.tenant, r.agent_id, r.provider, r.model) for r in await repos.llm_usage.rows(DAY)]
    assert keys == [
        ("t1", "a1", "anthropic", "z"),
        ("t1", "a1", "openai", "a"),
        ("t1", "a1", "openai", "b"),
        ("t1", "a2", "openai", "gpt"),
        ("t2", "a1", "openai", "gpt"),
    ]
    assert [r.agent_id for r in await repos.llm_usage.rows(DAY, "t2")] == ["a1"]
    assert await repos.llm_usage.rows(DAY, "nobody") == []
    assert await repos.llm_usage.rows("2024-05-02") == [rows[-1]]
    assert await repos.llm_usage.rows("2024-04-30") == []


async def test_tenant_totals_of_a_day(repos: Repositories) -> None:
    assert await repos.llm_usage.tenant_totals(DAY) == {}
    await repos.llm_usage.add(
        [
            usage(tenant="t1", agent_id="a1", requests=2, prompt_tokens=10, completion_tokens=5),
            usage(tenant="t1", agent_id="a2", model="other", cost=0.5),
            usage(tenant="t2", requests=7, prompt_tokens=0, completion_tokens=3, cost=0.0),
            usage(tenant="t3"),
            usage(tenant="t1", day="2024-05-02", requests=100),
        ]
    )
    assert await repos.llm_usage.tenant_totals(DAY) == {
        "t1": (3, 30, 0.75),
        "t2": (7, 3, 0.0),
        "t3": (1, 15, 0.25),
    }
    assert await repos.llm_usage.tenant_totals("2024-05-02") == {"t1": (100, 15, 0.25)}


async def test_concurrent_adders_sum(repos: Repositories) -> None:
    """Several workers flush at once: every count is added, none overwritten."""
    await asyncio.gather(*(repos.llm_usage.add([usage(), usage(agent_id="a2")]) for _ in range(20)))
    rows = await repos.llm_usage.rows(DAY)
    assert [(r.agent_id, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ("a1", 20, 200, 100),
        ("a2", 20, 200, 100),
    ]
    assert [r.cost for r in rows] == [5.0, 5.0]
