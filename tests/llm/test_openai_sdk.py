"""The official OpenAI SDK against a real gateway process in front of fake providers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.llm.conftest import FakeFactory
from tests.support import ServerProcess

pytestmark = pytest.mark.server

SECRET = "sk-fake-provider-key-123"


def start_gateway(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, *urls: str
) -> ServerProcess:
    providers = "".join(
        f"""
[[llm.providers]]
name = "p{i}"
base_url = "{url}"
api_key_env = "FAKE_LLM_KEY"
timeout_s = 5

[[llm.providers.models]]
name = "fake-small"
capabilities = ["chat", "text_generation"]
input_cost_per_token = {1e-7 * (i + 1)}
output_cost_per_token = {2e-7 * (i + 1)}
latency_ms = 50
"""
        for i, url in enumerate(urls)
    )
    config = tmp_path / "gateway.toml"
    config.write_text(
        providers
        + """
[llm.aliases.cheap-chat]
capabilities = ["chat"]
max_cost_per_token = 0.000001
"""
    )
    server = server_factory("--config", str(config), env={"FAKE_LLM_KEY": SECRET})
    return server.start()


def test_sync_client_plain_and_streaming(
    fake: FakeFactory, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    app, url = fake(api_key=SECRET)
    gateway = start_gateway(server_factory, tmp_path, url)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    models = sorted(m.id for m in client.models.list())
    assert models == ["cheap-chat", "fake-small"]
    completion = client.chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": "hello sdk"}]
    )
    assert completion.choices[0].message.content == "echo: hello sdk"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 5
    stream = client.chat.completions.create(
        model="cheap-chat",  # an alias
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "echo: stream me please"
    assert app.headers[-1]["authorization"] == f"Bearer {SECRET}"
    raw = client.chat.completions.with_raw_response.create(
        model="cheap-chat", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-agentcore-provider"] == "p0"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )


async def test_async_client_with_fallback_and_mid_stream_error(
    fake: FakeFactory, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    _, broken = fake(api_key=SECRET, failure_rate=1.0)
    _, cutting = fake(api_key=SECRET, cut_stream_after=2)
    gateway = start_gateway(server_factory, tmp_path, broken, cutting)
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": "fall back"}]
        )
        assert completion.choices[0].message.content == "echo: fall back"
        stream = await client.chat.completions.create(
            model="fake-small",
            messages=[{"role": "user", "content": "one two three four"}],
            stream=True,
        )
        received: list[str] = []
        with pytest.raises(openai.APIError, match=r"failed mid-stream|connection failed"):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert 0 < len(received) < 5
    finally:
        await client.close()
