"""Translation to and from Anthropic's Messages API, against a fake ``/v1/messages``."""

from __future__ import annotations

import json
from typing import Any

from agentcore.llm.providers.anthropic import StreamTranslator, from_message, to_messages
from tests.llm.conftest import FakeFactory, provider
from tests.support import make_config

TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather at a place",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_openai_request_to_anthropic() -> None:
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
        "temperature": 0.2,
        "stop": "END",
        "tools": [TOOL],
        "tool_choice": "required",
    }
    out = to_messages(body, "claude-x")
    assert out["model"] == "claude-x"
    assert out["system"] == "Be brief."
    assert out["max_tokens"] == 1024  # required by Anthropic: filled in
    assert out["temperature"] == 0.2
    assert out["stop_sequences"] == ["END"]
    assert out["tools"] == [
        {
            "name": "weather",
            "description": "Weather at a place",
            "input_schema": TOOL["function"]["parameters"],
        }
    ]
    assert out["tool_choice"] == {"type": "any"}
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}
            ],
        },
        {
            # The tool result and the next user turn merge: roles must alternate.
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "cold"},
                {"type": "text", "text": "And this?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                },
            ],
        },
    ]


def test_anthropic_response_to_openai() -> None:
    completion = from_message(
        {
            "id": "msg_1",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 11, "output_tokens": 7},
        },
        "claude-x",
    )
    response = completion.response
    assert response["object"] == "chat.completion"
    assert response["model"] == "claude-x"
    choice = response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "tu_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    assert response["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert (completion.prompt_tokens, completion.completion_tokens) == (11, 7)


def test_stream_events_to_chunks() -> None:
    t = StreamTranslator("claude-x")
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 4}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "tu", "name": "weather"},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city"'},
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    chunks = [chunk for event in events for chunk in t.feed(event)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Hi"}
    assert deltas[2]["tool_calls"][0]["function"]["name"] == "weather"
    assert deltas[3] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}
    assert t.done


async def test_through_the_gateway(fake: FakeFactory) -> None:
    app, url = fake(api_key="anthropic-secret")
    config = make_config(
        llm={
            "providers": [
                provider("claude", url, "claude-fake", kind="anthropic", api_key_env="AK")
            ]
        }
    )
    import httpx

    from agentcore.app import create_app

    gateway = create_app(config, environ={"AK": "anthropic-secret"})
    await gateway.startup()
    try:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            messages = [
                {"role": "system", "content": "You echo."},
                {"role": "user", "content": "hello claude"},
            ]
            response = await client.post(
                "/v1/chat/completions", json={"model": "claude-fake", "messages": messages}
            )
            streamed = await client.post(
                "/v1/chat/completions",
                json={"model": "claude-fake", "messages": messages, "stream": True},
            )
    finally:
        await gateway.shutdown()
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["choices"][0]["message"]["content"] == "echo: hello claude"
    assert data["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    sent = app.received[0]
    assert sent["system"] == "You echo."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hello claude"}]}
    ]
    assert sent["max_tokens"] == 1024
    assert app.headers[0]["x-api-key"] == "anthropic-secret"
    assert app.headers[0]["anthropic-version"] == "2023-06-01"
    lines = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "echo: hello claude"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
