"""Fake LLM providers as real HTTP servers on free loopback ports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentcore.llm.fake import FakeBehavior, FakeLlm, ThreadedServer

FakeFactory = Callable[..., tuple[FakeLlm, str]]


@pytest.fixture
def fake() -> Iterator[FakeFactory]:
    """``fake(latency_ms=..., ...)`` -> (the fake app, its base URL); stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(**behavior: Any) -> tuple[FakeLlm, str]:
            app = FakeLlm(FakeBehavior(**behavior))
            server = stack.enter_context(ThreadedServer(app))
            return app, server.url

        yield start


def provider(
    name: str,
    url: str,
    *models: str,
    kind: str = "openai",
    price: float = 1e-6,
    **extra: Any,
) -> dict[str, Any]:
    """A ``[[llm.providers]]`` entry: ``models`` (default fake-small) at ``price`` a token."""
    return {
        "name": name,
        "kind": kind,
        "base_url": url,
        "models": [
            {"name": m, "input_cost_per_token": price, "output_cost_per_token": price}
            for m in models or ("fake-small",)
        ],
        **extra,
    }
