"""Authentication: who is calling, as an :class:`Identity` in the ASGI scope.

The middleware reads ``Authorization: Bearer <credential>`` (or
``X-API-Key``), asks the :class:`Authenticator` for the identity, and stores
it under ``scope["agentcore.identity"]`` for the rate limiter and the
JSON-RPC context. Missing or bad credentials get 401 with a JSON body and
``WWW-Authenticate: Bearer``; a missing scope is refused later, per method,
with 403. Health, the well-known documents, /openapi.json and (unless
``auth.protect_metrics``) /metrics stay open. With ``auth.mode = "off"`` every
caller is the anonymous identity of the default tenant with every scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from agentcore.errors import Forbidden, Unauthorized
from agentcore.http import reject
from agentcore.metrics import Metrics
from agentcore.models import DEFAULT_TENANT
from agentcore.types import ASGIApp, Receive, Scope, Send

IDENTITY = "agentcore.identity"

#: Scopes a credential can carry; ``admin`` implies all of them.
SCOPES = frozenset(
    {
        "agents:read",
        "agents:write",
        "tasks:read",
        "tasks:write",
        "events:read",
        "events:write",
        "webhooks",
        "storage",
        "llm",
        "admin",
    }
)

OPEN_PATHS = frozenset(
    {
        "/api/v1/health",
        "/api/v1/health/ready",
        "/api/v1/health/live",
        "/openapi.json",
        "/.well-known/agent-card.json",
        "/.well-known/agent.json",
    }
)
CHALLENGE = [(b"www-authenticate", b'Bearer realm="agentcore"')]


@dataclass(frozen=True, slots=True)
class Identity:
    kind: Literal["anonymous", "api_key", "jwt"]
    #: API key id, JWT subject, or empty for anonymous.
    subject: str
    tenant: str = DEFAULT_TENANT
    #: None: every scope (authentication off).
    scopes: frozenset[str] | None = None
    #: Set when the credential belongs to one agent: it may act only as that agent.
    agent_id: str | None = None

    def allows(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes or "admin" in self.scopes

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            raise Forbidden(f"credential lacks the {scope!r} scope", data={"scope": scope})


ANONYMOUS = Identity("anonymous", "")


class Authenticator(Protocol):
    async def authenticate(self, credential: str) -> Identity:
        """The identity of a credential; :class:`Unauthorized` when it is not valid."""


def credential_of(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return str(token.strip())
        elif key == b"x-api-key" and value:
            return str(value.decode("latin-1").strip())
    return None


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator | None,
        *,
        protect_metrics: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.open_paths = OPEN_PATHS if protect_metrics else OPEN_PATHS | {"/metrics"}
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.authenticator is None or scope["path"] in self.open_paths:
            scope[IDENTITY] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        credential = credential_of(scope)
        try:
            if credential is None:
                raise Unauthorized("missing credentials: send Authorization: Bearer <key or token>")
            scope[IDENTITY] = await self.authenticator.authenticate(credential)
        except Unauthorized as exc:
            if self._metrics is not None:
                self._metrics.unauthorized.labels(
                    "missing" if credential is None else "invalid"
                ).inc()
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": exc.message})
                return
            await reject(scope, send, exc, CHALLENGE)
            return
        await self.app(scope, receive, send)


def build_authenticator(mode: str) -> Authenticator | None:
    """The authenticator for ``auth.mode``; None when authentication is off."""
    if mode == "off":
        return None
    from agentcore.errors import ConfigError

    raise ConfigError(f"invalid configuration: auth.mode: {mode!r} is not implemented yet")
