"""The HTTP and JSON-RPC surface of LLM routing.

- ``POST /api/v1/integration/llm/complete``: the seed's shape
  (``model_requirements``, ``request``, ``context``); answers text, model,
  provider, usage, cost, latency and the routing decision.
- ``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI-compatible, so
  the official SDKs work with only ``base_url`` changed; ``model`` is a
  model, ``provider/model`` or an alias; ``stream: true`` answers
  server-sent events passed through chunk by chunk.
- JSON-RPC ``llm.complete``: the REST call's params and result.

Every call needs the ``llm`` scope. The tenant billed is the credential's;
with authentication off, ``context.tenant_id`` names it. Answers carry
``X-AgentCore-Provider``, ``X-AgentCore-Model`` and ``Server-Timing:
gateway;dur=<ms>, provider;dur=<ms>`` (gateway = time from the whole request
received to the answer, less the time spent waiting on providers; the client's
upload is not the gateway's overhead, and servers differ in whether the body
has already arrived when the handler starts: uvicorn reads it first, Granian
hands it over when asked).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from agentcore.clock import Clock
from agentcore.config import Capability, LlmConfig
from agentcore.errors import Forbidden, InvalidParams, ParseError, ProviderError, StoreUnavailable
from agentcore.http import Request, Response, safe_message, start
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.jsonrpc import Context, Method
from agentcore.lifecycle import Job, every
from agentcore.llm.accounting import Accounting
from agentcore.llm.catalog import Catalog, Requirements
from agentcore.llm.completions import Caller, Completions, Result, Stream
from agentcore.llm.providers.base import ChatRequest
from agentcore.llm.router import ModelRouter
from agentcore.llm.transport.base import Connector
from agentcore.llm.transport.http import HttpTransport
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.routing import Doc, Router
from agentcore.types import Receive, Scope, Send

if TYPE_CHECKING:
    from agentcore.llm.usage import UsageRepository
    from agentcore.metrics import Metrics

COMPLETE_PATH = "/api/v1/integration/llm/complete"
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

Name = Annotated[str, Meta(min_length=1, max_length=256)]
Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\x00]*$")]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


# -- request and response types --------------------------------------------------


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


Messages = Annotated[list[Message], Meta(min_length=1, max_length=10_000)]


class ModelRequirements(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    capabilities: Annotated[list[Capability], Meta(max_length=16)] = []
    #: Both the input and the output price per token must be at or below it.
    max_cost_per_token: Annotated[float, Meta(ge=0)] | None = None
    max_latency_ms: Annotated[float, Meta(ge=0)] | None = None
    preferred_providers: Annotated[list[Name], Meta(max_length=64)] = []
    #: A model, ``provider/model`` or an alias.
    model: Name | None = None
    strategy: Literal["cheapest", "fastest", "weighted", "least_busy"] | None = None


class LlmRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """``prompt`` (one user message) or ``messages``; the rest as in OpenAI's chat API."""

    prompt: str | None = None
    messages: Messages | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    seed: int | None = None


class CallContext(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    agent_id: Id | None = None
    tenant_id: Id | None = None


class CompleteParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    request: LlmRequest
    model_requirements: ModelRequirements = msgspec.field(default_factory=ModelRequirements)
    context: CallContext = msgspec.field(default_factory=CallContext)


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompleteResult(msgspec.Struct, kw_only=True):
    text: str
    #: The whole assistant message (``tool_calls`` included).
    message: dict[str, Any]
    finish_reason: str | None
    model: str
    provider: str
    usage: Usage
    #: In the unit of the configured prices.
    cost: float
    #: Handler time, and the part of it spent on providers.
    latency_ms: float
    provider_latency_ms: float
    #: Candidates in order, models rejected and why, attempts made.
    decision: dict[str, Any]


class ChatBody(msgspec.Struct, kw_only=True):
    """What the gateway reads of an OpenAI chat body; other fields pass through."""

    model: Name
    messages: Messages
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


# -- the service -------------------------------------------------------------------


class LlmApi:
    """LLM routing as the gateway uses it: built from ``[llm]``, started and
    stopped by the app's lifespan."""

    def __init__(
        self,
        config: LlmConfig,
        usage: UsageRepository,
        clock: Clock,
        environ: Mapping[str, str],
        metrics: Metrics | None = None,
        connector: Connector = HttpTransport,
    ) -> None:
        self.config = config
        self.catalog = Catalog.build(config, clock, environ, connector)
        self.router = ModelRouter(self.catalog.models, config.strategy)
        self.accounting = Accounting(usage, config.budgets, clock, metrics)
        self.completions = Completions(
            self.catalog,
            self.router,
            self.accounting,
            MemoryRateLimiter(clock),
            config.total_timeout_s,
            metrics,
        )
        self._models = _encode(self._listing())

    async def open(self) -> None:
        await self.accounting.load()

    async def flush(self) -> None:
        await self.accounting.flush()

    def jobs(self) -> list[Job]:
        """Usage written to the store every ``llm.usage_flush_interval_s``."""
        return [every(self.config.usage_flush_interval_s, self.flush)]

    async def close(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.accounting.flush()
        await self.catalog.close()

    def _listing(self) -> dict[str, Any]:
        owners: dict[str, list[str]] = {}
        for model in self.catalog.models:
            owners.setdefault(model.name, []).append(model.provider)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": ",".join(providers)}
            for name, providers in owners.items()
        ]
        data += [
            {"id": alias, "object": "model", "created": 0, "owned_by": "agentcore-alias"}
            for alias in self.catalog.aliases
        ]
        return {"object": "list", "data": data}

    # -- shared by REST and JSON-RPC --------------------------------------------

    def requirements(self, spec: ModelRequirements) -> Requirements:
        base = Requirements()
        model = spec.model or ""
        if model:
            base = self.catalog.resolve(model)
        return Requirements(
            capabilities=base.capabilities | frozenset(spec.capabilities),
            max_cost_per_token=spec.max_cost_per_token
            if spec.max_cost_per_token is not None
            else base.max_cost_per_token,
            max_latency_ms=spec.max_latency_ms
            if spec.max_latency_ms is not None
            else base.max_latency_ms,
            preferred_providers=tuple(spec.preferred_providers) or base.preferred_providers,
            model=base.model,
            strategy=spec.strategy or base.strategy,
        )

    async def complete(self, params: CompleteParams, caller: Caller) -> CompleteResult:
        started = time.perf_counter()
        spec = params.request
        if (spec.prompt is None) == (spec.messages is None):
            raise InvalidParams("request needs exactly one of prompt and messages")
        body: dict[str, Any] = msgspec.to_builtins(spec)
        prompt = body.pop("prompt", None)
        if prompt is not None:
            body["messages"] = [{"role": "user", "content": prompt}]
        request = ChatRequest(body, needs=_needs(body))
        result = await self.completions.complete(
            request, self.requirements(params.model_requirements), caller
        )
        return _result(result, time.perf_counter() - started)

    # -- HTTP --------------------------------------------------------------------

    def add_routes(self, router: Router, max_body_bytes: int) -> None:
        async def complete(request: Request) -> Response:
            identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
            identity.require("llm")
            await request.body(max_body_bytes)
            started = time.perf_counter()  # the whole request is here (see _headers)
            params = await request.json(CompleteParams, max_body_bytes)
            caller = _caller(identity.tenant, identity.agent_id, identity.scopes, params.context)
            result = await self.complete(params, caller)
            return Response(
                200,
                _encode(result),
                headers=_headers(
                    result.model, result.provider, started, result.provider_latency_ms / 1000
                ),
            )

        async def chat(request: Request) -> Response | SseResponse:
            identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
            identity.require("llm")
            raw = await request.body(max_body_bytes)
            started = time.perf_counter()  # the whole request is here (see _headers)
            try:
                body = _decode(raw)
                spec = msgspec.convert(body, ChatBody)
            except msgspec.ValidationError as exc:
                raise InvalidParams(f"invalid body: {safe_message(exc)}") from exc
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise ParseError("body is not valid JSON") from exc
            agent = (request.header(b"x-agentcore-agent-id") or b"").decode("latin-1")[:128]
            caller = _caller(identity.tenant, identity.agent_id, identity.scopes, None, agent)
            for key in ("model", "stream", "stream_options"):
                body.pop(key, None)
            include_usage = bool((spec.stream_options or {}).get("include_usage"))
            chat_request = ChatRequest(body, needs=_needs(body), include_usage=include_usage)
            req = self.catalog.resolve(spec.model)
            if spec.stream:
                stream = await self.completions.stream(chat_request, req, caller)
                return SseResponse(
                    stream,
                    _headers(stream.model.name, stream.model.provider, started, stream.provider_s),
                )
            result = await self.completions.complete(chat_request, req, caller)
            return Response(
                200,
                _encode(result.completion.response),
                headers=_headers(
                    result.model.name, result.model.provider, started, result.provider_s
                ),
            )

        async def models(request: Request) -> Response:
            identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
            identity.require("llm")
            return Response(200, self._models)

        errors = {
            401: "missing or invalid credentials",
            403: "missing llm scope",
            404: "model names no model or alias",
            422: "no model meets the requirements (data.unmet names them)",
            429: "rate limited, or the tenant's daily budget is used up",
            502: "every candidate provider failed",
            504: "no provider answered within llm.total_timeout_s",
        }
        router.add(
            "POST",
            COMPLETE_PATH,
            complete,
            Doc(
                "Complete with the model that best meets the requirements",
                body=CompleteParams,
                response=CompleteResult,
                tags=("llm",),
                errors=errors,
            ),
        )
        router.add(
            "POST",
            CHAT_PATH,
            chat,  # type: ignore[arg-type]  # an SSE response is an ASGI app like Response
            Doc(
                "OpenAI-compatible chat completions (stream: true answers server-sent events)",
                body=ChatBody,
                tags=("llm",),
                errors=errors,
            ),
        )
        router.add("GET", MODELS_PATH, models, Doc("OpenAI-compatible model list", tags=("llm",)))

    def methods(self) -> list[Method[Any]]:
        async def complete(params: CompleteParams, ctx: Context) -> CompleteResult:
            caller = _caller(ctx.tenant, ctx.agent_id, ctx.scopes, params.context)
            return await self.complete(params, caller)

        return [
            Method(
                "llm.complete",
                CompleteParams,
                complete,
                CompleteResult,
                "Complete with the model that best meets model_requirements (same as POST "
                f"{COMPLETE_PATH}).",
                scope="llm",
            )
        ]


class SseResponse:
    """A server-sent event stream of chat chunks, ended by ``data: [DONE]``.

    A provider failing mid-stream ends it with ``event: error`` and a
    ``data: {"error": ...}`` object and no ``[DONE]``: the OpenAI SDKs raise
    ``APIError``, so a truncated answer is never taken for a whole one.
    """

    __slots__ = ("headers", "status", "stream")

    def __init__(self, stream: Stream, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = 200
        self.stream = stream
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            start(
                scope,
                200,
                [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *self.headers,
                ],
            )
        )
        end = b"data: [DONE]\n\n"
        try:
            async with contextlib.aclosing(self.stream.chunks()) as chunks:
                async for chunk in chunks:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"data: " + _encode(chunk) + b"\n\n",
                            "more_body": True,
                        }
                    )
        except ProviderError as exc:
            end = b"event: error\ndata: " + _encode({"error": exc.to_dict()}) + b"\n\n"
        await send({"type": "http.response.body", "body": end, "more_body": False})


# -- helpers ---------------------------------------------------------------------------


def _caller(
    tenant: str,
    agent_id: str | None,
    scopes: frozenset[str] | None,
    context: CallContext | None,
    agent: str = "",
) -> Caller:
    """Who pays. The credential's tenant and agent win; with authentication off
    (``scopes is None``) the caller's ``context`` names them."""
    if context is not None:
        if context.tenant_id and context.tenant_id != tenant:
            if scopes is not None:
                raise Forbidden(
                    f"credential of tenant {tenant!r} cannot bill tenant {context.tenant_id!r}",
                    data={"tenant_id": context.tenant_id},
                )
            tenant = context.tenant_id
        if context.agent_id:
            if agent_id is not None and context.agent_id != agent_id:
                raise Forbidden(
                    f"credential of agent {agent_id!r} cannot act for agent {context.agent_id!r}",
                    data={"agent_id": context.agent_id},
                )
            agent = context.agent_id
    return Caller(tenant, agent_id or agent)


def _needs(body: dict[str, Any]) -> frozenset[str]:
    """Capabilities a chat body needs: chat, plus tools, json_mode, vision when used."""
    needs = {"chat"}
    if body.get("tools"):
        needs.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json_mode")
    for message in body.get("messages", ()):
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") in ("image_url", "image") for p in content
        ):
            needs.add("vision")
            break
    return frozenset(needs)


def _headers(
    model: str, provider: str, started: float, provider_s: float
) -> list[tuple[bytes, bytes]]:
    total_ms = (time.perf_counter() - started) * 1000
    provider_ms = provider_s * 1000
    timing = f"gateway;dur={max(0.0, total_ms - provider_ms):.3f}, provider;dur={provider_ms:.3f}"
    return [
        (b"x-agentcore-provider", provider.encode()),
        (b"x-agentcore-model", model.encode()),
        (b"server-timing", timing.encode()),
    ]


def _result(result: Result, seconds: float) -> CompleteResult:
    completion = result.completion
    choices = completion.response.get("choices") or [{}]
    return CompleteResult(
        text=completion.text,
        message=choices[0].get("message") or {},
        finish_reason=completion.finish_reason,
        model=result.model.name,
        provider=result.model.provider,
        usage=Usage(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=completion.prompt_tokens + completion.completion_tokens,
        ),
        cost=result.cost,
        latency_ms=round(seconds * 1000, 3),
        provider_latency_ms=round(result.provider_s * 1000, 3),
        decision=result.decision.to_dict(),
    )
