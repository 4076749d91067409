"""The LLM API end to end: an in-process gateway in front of fake providers on loopback."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest

from agentcore.app import create_app
from agentcore.clock import ManualClock
from agentcore.config import Config
from agentcore.errors import Forbidden
from agentcore.llm.api import CallContext, _caller
from tests.llm.conftest import FakeFactory, provider
from tests.support import gateway_client, make_config, rpc

COMPLETE = "/api/v1/integration/llm/complete"


def llm_config(*providers: dict[str, Any], **llm: Any) -> Config:
    return make_config(llm={"providers": list(providers), **llm})


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus samples by (name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match[2]))
            out[match[1], labels] = float(match[3])
    return out


def body(prompt: str = "hello world", **extra: Any) -> dict[str, Any]:
    return {
        "request": {"prompt": prompt, "max_tokens": 50},
        "context": {"agent_id": "agent-1", "tenant_id": "acme"},
        **extra,
    }


async def test_complete_end_to_end(fake: FakeFactory) -> None:
    app_a, url = fake()
    config = llm_config(provider("alpha", url, "fake-small", price=2e-6))
    async with gateway_client(config) as (_, client):
        response = await client.post(COMPLETE, json=body("route me"))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["text"] == "echo: route me"
    assert data["provider"] == "alpha"
    assert data["model"] == "fake-small"
    assert data["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert data["cost"] == pytest.approx(5 * 2e-6)
    assert data["latency_ms"] >= data["provider_latency_ms"] > 0
    assert data["decision"]["candidates"] == ["alpha/fake-small"]
    assert data["decision"]["attempts"][0]["outcome"] == "ok"
    assert response.headers["x-agentcore-provider"] == "alpha"
    assert response.headers["x-agentcore-model"] == "fake-small"
    timing = re.fullmatch(
        r"gateway;dur=([\d.]+), provider;dur=([\d.]+)", response.headers["server-timing"]
    )
    assert timing is not None
    assert float(timing[2]) == pytest.approx(data["provider_latency_ms"], abs=0.01)
    # The provider got an OpenAI body with its model name and the caller's settings.
    sent = app_a.received[-1]
    assert sent["model"] == "fake-small"
    assert sent["max_tokens"] == 50
    assert sent["messages"] == [{"role": "user", "content": "route me"}]


async def test_fallback_from_a_failing_provider(fake: FakeFactory) -> None:
    broken, broken_url = fake(failure_rate=1.0)
    healthy, healthy_url = fake()
    config = llm_config(
        provider("broken", broken_url, price=1e-7),  # cheapest: tried first
        provider("healthy", healthy_url, price=1e-6),
        circuit_failures=2,
    )
    async with gateway_client(config) as (_, client):
        response = await client.post(COMPLETE, json=body())
        assert response.status_code == 200
        data = response.json()
        assert data["provider"] == "healthy"
        attempts = data["decision"]["attempts"]
        assert [a["outcome"] for a in attempts] == ["error", "ok"]
        assert attempts[0]["error"] == "provider broken failed with 500: simulated failure"
        await client.post(COMPLETE, json=body())
        # Two failures in a row: the broken model's circuit is open, it is not called again.
        calls = broken.requests
        response = await client.post(COMPLETE, json=body())
        assert response.json()["decision"]["rejected"][0]["model"] == "broken/fake-small"
        assert "circuit open" in str(response.json()["decision"]["rejected"][0]["reasons"])
        assert broken.requests == calls == 2
        assert healthy.requests == 3


async def test_caller_fault_from_provider_is_returned_not_retried(fake: FakeFactory) -> None:
    first, first_url = fake()
    second, second_url = fake()
    config = llm_config(provider("first", first_url, price=1e-7), provider("second", second_url))
    async with gateway_client(config) as (_, client):
        response = await client.post(COMPLETE, json=body("bad request [status:400]"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "provider_rejected"
    assert error["message"] == "provider first refused the request (400): forced status 400"
    assert error["data"]["provider_status"] == 400
    assert [a["outcome"] for a in error["data"]["decision"]["attempts"]] == ["rejected"]
    assert first.requests == 1
    assert second.requests == 0


async def test_provider_429_and_5xx_fall_back(fake: FakeFactory) -> None:
    _, limited_url = fake(failure_rate=1.0, failure_status=429)
    _, ok_url = fake()
    config = llm_config(provider("limited", limited_url, price=1e-7), provider("ok", ok_url))
    async with gateway_client(config) as (_, client):
        response = await client.post(COMPLETE, json=body())
    assert response.json()["provider"] == "ok"


async def test_timeout_falls_back_to_the_next(fake: FakeFactory) -> None:
    _, slow_url = fake(latency_ms=1500)
    _, fast_url = fake()
    config = llm_config(
        provider("slow", slow_url, price=1e-7, timeout_s=0.3), provider("fast", fast_url)
    )
    async with gateway_client(config) as (_, client):
        response = await client.post(COMPLETE, json=body())
    assert response.status_code == 200
    data = response.json()
    assert data["provider"] == "fast"
    first = data["decision"]["attempts"][0]
    assert first["outcome"] == "timeout"
    assert 250 < first["latency_ms"] < 2000


async def test_total_deadline_ends_the_call(fake: FakeFactory) -> None:
    _, slow_url = fake(latency_ms=1500)
    config = llm_config(provider("slow", slow_url), total_timeout_s=0.3)
    async with gateway_client(config) as (_, client):
        response = await client.post(COMPLETE, json=body())
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["type"] == "provider_timeout"
    assert "llm.total_timeout_s (0.3 s)" in error["message"]


async def test_no_model_meets_the_requirements(fake: FakeFactory) -> None:
    _, url = fake()
    async with gateway_client(llm_config(provider("p", url))) as (_, client):
        response = await client.post(
            COMPLETE, json=body(model_requirements={"capabilities": ["vision"]})
        )
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["type"] == "no_model_available"
        assert error["message"] == "no model meets capabilities chat, vision"
        assert error["data"]["unmet"] == ["capabilities"]
        unknown = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]},
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "model_not_found"
        invalid = await client.post(COMPLETE, json={"request": {}})
        assert invalid.status_code == 400
        assert "exactly one of prompt and messages" in invalid.json()["error"]["message"]


async def test_budget_exceeded_is_429_with_a_clear_message(fake: FakeFactory) -> None:
    _, url = fake()
    config = llm_config(
        provider("p", url), budgets={"acme": {"requests_per_day": 2}, "*": {"tokens_per_day": 6}}
    )
    async with gateway_client(config) as (app, client):
        for _ in range(2):
            assert (await client.post(COMPLETE, json=body())).status_code == 200
        response = await client.post(COMPLETE, json=body())
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["type"] == "budget_exceeded"
        assert error["message"] == (
            "tenant 'acme' has used its daily LLM budget: 2 of 2 requests today; "
            "it resets at 00:00 UTC"
        )
        assert int(response.headers["retry-after"]) > 0
        # Budgets hold across workers through the store: a flush keeps the count.
        await app.llm.flush()
        assert (await client.post(COMPLETE, json=body())).status_code == 429
        # Another tenant falls under "*": 5 tokens a call, 6 a day. Checked
        # before the call, so the second call (5 used) still runs.
        other = body()
        other["context"]["tenant_id"] = "other"
        for _ in range(2):
            assert (await client.post(COMPLETE, json=other)).status_code == 200
        response = await client.post(COMPLETE, json=other)
        assert response.status_code == 429
        assert "10 of 6 tokens" in response.json()["error"]["message"]


async def test_budget_resets_the_next_utc_day(fake: FakeFactory) -> None:
    _, url = fake()
    clock = ManualClock(1_700_000_000.0)
    config = llm_config(provider("p", url), budgets={"acme": {"requests_per_day": 1}})
    async with gateway_client(config, clock) as (_, client):
        assert (await client.post(COMPLETE, json=body())).status_code == 200
        assert (await client.post(COMPLETE, json=body())).status_code == 429
        clock.advance(86_400)
        assert (await client.post(COMPLETE, json=body())).status_code == 200


async def test_accounting_in_metrics_and_store(fake: FakeFactory) -> None:
    _, url = fake()
    config = llm_config(provider("p", url, price=1e-6))
    async with gateway_client(config) as (app, client):
        for _ in range(2):
            assert (await client.post(COMPLETE, json=body())).status_code == 200
        metrics = (await client.get("/metrics")).text
        samples = _samples(metrics)
        who = {"tenant": "acme", "agent": "agent-1", "provider": "p", "model": "fake-small"}
        assert (
            samples["agentcore_llm_requests_total", frozenset({**who, "outcome": "ok"}.items())]
            == 2
        )
        assert (
            samples["agentcore_llm_tokens_total", frozenset({**who, "kind": "prompt"}.items())] == 4
        )
        assert (
            samples["agentcore_llm_tokens_total", frozenset({**who, "kind": "completion"}.items())]
            == 6
        )
        assert samples["agentcore_llm_cost_total", frozenset(who.items())] == pytest.approx(10e-6)
        await app.llm.flush()
        rows = await app.repos.llm_usage.rows(app.llm.accounting.day)
        assert len(rows) == 1
        row = rows[0]
        assert (row.tenant, row.agent_id, row.provider, row.model) == (
            "acme",
            "agent-1",
            "p",
            "fake-small",
        )
        assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 4, 6)
        assert row.cost == pytest.approx(10e-6)


async def test_caller_chosen_agent_ids_and_tenants_share_an_other_series(
    fake: FakeFactory,
) -> None:
    """The issue's flood: chat completions with a new X-AgentCore-Agent-Id each."""
    _, url = fake()
    config = make_config(llm={"providers": [provider("p", url)]}, metrics={"max_label_values": 3})
    chat = {"model": "fake-small", "messages": [{"role": "user", "content": "x"}]}
    async with gateway_client(config) as (_, client):
        for i in range(12):
            headers = {"x-agentcore-agent-id": f"flood-{i}"}
            response = await client.post("/v1/chat/completions", json=chat, headers=headers)
            assert response.status_code == 200, response.text
        for i in range(12):  # with authentication off the body names the tenant
            tenanted = body(context={"agent_id": "flood-0", "tenant_id": f"t{i}"})
            assert (await client.post(COMPLETE, json=tenanted)).status_code == 200
        samples = _samples((await client.get("/metrics")).text)

    names = [dict(labels) for name, labels in samples if name == "agentcore_llm_requests_total"]
    assert {n["agent"] for n in names} == {"flood-0", "flood-1", "flood-2", "other"}
    assert {n["tenant"] for n in names} == {"default", "t0", "t1", "other"}


async def test_jsonrpc_llm_complete(fake: FakeFactory) -> None:
    _, url = fake()
    async with gateway_client(llm_config(provider("p", url))) as (_, client):
        result = await rpc(client, "llm.complete", body("over rpc"))
    assert result["text"] == "echo: over rpc"
    assert result["provider"] == "p"
    assert result["decision"]["candidates"] == ["p/fake-small"]


async def test_api_key_never_leaves_the_gateway(
    fake: FakeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-THE-SECRET-VALUE-42"
    app_ok, ok_url = fake(api_key=secret)
    _, wrong_url = fake(api_key="another-key")  # answers 401 quoting the key it got
    config = llm_config(
        provider("wrongkey", wrong_url, price=1e-7, api_key_env="LLM_KEY"),
        provider("right", ok_url, api_key_env="LLM_KEY"),
        aliases={"any": {}},
    )
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    gateway = create_app(config, clock=ManualClock(), environ={"LLM_KEY": secret})
    await gateway.startup()
    try:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for response in [
                await client.post(COMPLETE, json=body()),
                await client.post(
                    "/v1/chat/completions",
                    json={"model": "any", "messages": [{"role": "user", "content": "x"}]},
                ),
                await client.get("/v1/models"),
                await client.get("/metrics"),
                await client.get("/openapi.json"),
                await client.post(COMPLETE, json=body("[status:400]")),
            ]:
                seen.append(response.text + str(response.headers))
    finally:
        await gateway.shutdown()
    assert app_ok.headers[-1]["authorization"] == f"Bearer {secret}"  # it was sent...
    decision = seen[0]
    assert "wrongkey failed with 401" in decision
    # ... and never shown: not in answers, not in logs (at DEBUG, the HTTP client's included).
    assert all(secret not in text for text in seen)
    assert "another-key" not in "".join(seen)
    assert caplog.records
    assert all(secret not in record.getMessage() for record in caplog.records)


def test_tenant_and_agent_of_the_caller() -> None:
    context = CallContext(agent_id="a1", tenant_id="acme")
    # Authentication off (scopes None): the context names who pays.
    assert _caller("default", None, None, context).tenant == "acme"
    assert _caller("default", None, None, context).agent == "a1"
    # An authenticated caller cannot bill another tenant or act as another agent.
    assert _caller("acme", None, frozenset({"llm"}), context).tenant == "acme"
    with pytest.raises(Forbidden):
        _caller("other", None, frozenset({"llm"}), context)
    with pytest.raises(Forbidden):
        _caller("acme", "a2", frozenset({"llm"}), context)
    assert _caller("acme", "a2", frozenset({"llm"}), None).agent == "a2"
