"""Authentication: who is calling, as an :class:`Identity` in the ASGI scope.

The check reads ``Authorization: Bearer <credential>`` (or
``X-API-Key``), asks the :class:`Authenticator` for the identity, and stores
it under ``scope["agentcore.identity"]`` for the rate limiter and the
JSON-RPC context. Missing or bad credentials get 401 with a JSON body and
``WWW-Authenticate: Bearer``; a missing scope is refused later, per method,
with 403. A WebSocket without credential headers passes with no identity,
and its endpoint demands an ``auth`` message first (docs/realtime.md); with
bad ones it is refused at the handshake. Health, the well-known documents and
/openapi.json stay open; /metrics (every tenant's names, agent ids and event
types) needs a credential with ``metrics:read``, unless ``auth.protect_metrics
= false`` leaves it open. With ``auth.mode = "off"`` every caller is the
anonymous identity of the default tenant with every scope.

Credentials (:class:`StoreAuthenticator`): ``ak_...`` is an API key
(``apikeys.py``), checked against the store; in ``jwt`` mode anything else is
a bearer JWT (``tokens.py``). Serving a non-loopback address with
authentication off is refused unless ``--insecure`` (:func:`check_bind`).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Protocol

from agentcore import apikeys
from agentcore.apikeys import ApiKeyRepository
from agentcore.clock import Clock
from agentcore.config import AuthConfig
from agentcore.errors import AgentCoreError, ConfigError, Unauthorized
from agentcore.http import Admission, refusal
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.metrics import Metrics
from agentcore.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from agentcore.tokens import JwtVerifier

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


class Authenticator(Protocol):
    async def authenticate(self, credential: str) -> Identity:
        """The identity of a credential; :class:`Unauthorized` when it is not valid."""


def credential_of(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            if value[:7].lower() == b"bearer ":
                token = value[7:].strip()
                if token:
                    return str(token.decode("latin-1"))
        elif key == b"x-api-key" and value:
            return str(value.decode("latin-1").strip())
    return None


class AuthCheck:
    """The second check of the protection chain (protection.py), for HTTP
    requests and WebSocket handshakes alike."""

    def __init__(
        self,
        authenticator: Authenticator | None,
        *,
        protect_metrics: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.open_paths = OPEN_PATHS if protect_metrics else OPEN_PATHS | {"/metrics"}
        self._metrics = metrics
        #: The authenticator's own cache of verified credentials, where it has one.
        self._verified = (
            authenticator.verified if isinstance(authenticator, StoreAuthenticator) else None
        )

    def admit(self, scope: Scope) -> Admission:
        """For an HTTP or WebSocket request: its identity (in the scope), else the
        answer that refuses it. None: go on. A credential this process has
        already verified costs no await; any other is checked by the coroutine
        returned, which gives None or the refusal."""
        if self.authenticator is None or scope["path"] in self.open_paths:
            scope[IDENTITY] = ANONYMOUS
            return None
        credential = credential_of(scope)
        if credential is None and scope["type"] == "websocket":
            # No identity in the scope: the WebSocket endpoint asks for
            # {"type": "auth", "token": ...} as the first message (closing with
            # 1008 when it does not come in time); browsers cannot set headers.
            return None
        if credential is not None and self._verified is not None:
            identity = self._verified(credential)
            if identity is not None:
                scope[IDENTITY] = identity
                return None
        return self._authenticate(scope, credential)

    async def _authenticate(self, scope: Scope, credential: str | None) -> ASGIApp | None:
        assert self.authenticator is not None
        try:
            if credential is None:
                raise Unauthorized("missing credentials: send Authorization: Bearer <key or token>")
            scope[IDENTITY] = await self.authenticator.authenticate(credential)
        except AgentCoreError as exc:  # Unauthorized, or the store being unavailable (503)
            refused = isinstance(exc, Unauthorized)
            if refused and self._metrics is not None:
                self._metrics.unauthorized.labels(
                    "missing" if credential is None else "invalid"
                ).inc()
            if scope["type"] == "websocket":
                return WebSocketClose(1008 if refused else 1011, exc.message)
            return refusal(scope, exc, CHALLENGE if refused else None)
        return None


class WebSocketClose:
    """An ASGI app that refuses a WebSocket: closes it with ``code`` and ``reason``."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.close", "code": self.code, "reason": self.reason})


#: Most API keys (and unknown key ids) remembered at once by one authenticator.
KEY_CACHE_ENTRIES = 10_000


class StoreAuthenticator:
    """API keys from the store (cached), and JWTs in ``jwt`` mode.

    A key's record is remembered for ``auth.cache_s`` seconds, so a request
    costs a dict lookup and one SHA-256, not a database round trip; a
    credential that verified is remembered as verified for the rest of that
    time, so its repeats cost one dict lookup (the full credential is the key:
    a different secret for the same key id never matches it). The price:
    revoking through :meth:`revoke` of this authenticator takes effect at once
    in this process, but revoking through another worker process, another
    instance or ``agentcore keys revoke`` takes effect here only when the
    cached record expires, within ``auth.cache_s`` seconds. Unknown key ids are
    remembered as unknown for the same time (so a flood of made-up keys does
    not reach the database); a key created meanwhile has a fresh id, so this
    never delays a new key.
    """

    def __init__(self, keys: ApiKeyRepository, config: AuthConfig, clock: Clock) -> None:
        self._repository = keys
        self._clock = clock
        self._ttl = config.cache_s
        self._keys: dict[str, tuple[apikeys.ApiKey | None, Identity | None, float]] = {}
        #: Full credential -> (its identity, the key id, when its key record expires here).
        self._verified: dict[str, tuple[Identity, str, float]] = {}
        self._jwt: JwtVerifier | None = None
        if config.mode == "jwt":
            # Imported only in jwt mode: PyJWT loads cryptography, costly at startup.
            from agentcore.tokens import JwtVerifier

            self._jwt = JwtVerifier(config, clock)

    async def authenticate(self, credential: str) -> Identity:
        if credential.startswith(apikeys.PREFIX):
            return await self._api_key(credential)
        if self._jwt is not None:
            return self._jwt.verify(credential)
        raise Unauthorized("invalid credentials: expected an API key (ak_...)")

    def verified(self, credential: str) -> Identity | None:
        """The identity of an API key this process verified and still trusts, else None
        (no await: the common case of :meth:`authenticate`)."""
        verified = self._verified.get(credential)
        if verified is not None and self._clock() < verified[2]:
            return verified[0]
        return None

    async def _api_key(self, credential: str) -> Identity:
        identity = self.verified(credential)
        if identity is not None:
            return identity
        now = self._clock()
        key_id, secret = apikeys.parse(credential)
        cached = self._keys.get(key_id)
        if cached is None or now >= cached[2]:
            key = await self._repository.get(key_id)
            identity = None if key is None else _identity(key)
            if cached is None and len(self._keys) >= KEY_CACHE_ENTRIES:
                del self._keys[next(iter(self._keys))]
            cached = self._keys[key_id] = (key, identity, now + self._ttl)
        key, identity, expires = cached
        # The secret is checked before revocation: only its holder learns the key is revoked.
        if key is None or identity is None or not apikeys.verify(key, secret):
            raise Unauthorized("invalid API key")
        if key.revoked_at is not None:
            raise Unauthorized("API key revoked")
        if len(self._verified) >= KEY_CACHE_ENTRIES:
            del self._verified[next(iter(self._verified))]
        self._verified[credential] = (identity, key_id, expires)
        return identity

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key in the store and forget it here at once; False when unknown or revoked."""
        revoked = await self._repository.revoke(key_id, self._clock())
        self._keys.pop(key_id, None)
        for credential in [c for c, v in self._verified.items() if v[1] == key_id]:
            del self._verified[credential]
        return revoked


def _identity(key: apikeys.ApiKey) -> Identity:
    return Identity("api_key", key.id, key.tenant, frozenset(key.scopes), key.agent_id)


def build_authenticator(
    config: AuthConfig, keys: ApiKeyRepository, clock: Clock
) -> Authenticator | None:
    """The authenticator for ``auth.mode``; None when authentication is off.

    Raises :class:`ConfigError` when the JWT key material cannot be used.
    """
    if config.mode == "off":
        return None
    return StoreAuthenticator(keys, config, clock)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # another name: it may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_bind(host: str, config: AuthConfig, *, insecure: bool) -> None:
    """Refuse to serve ``host`` beyond loopback with authentication off, unless ``insecure``.

    Off is the default so the README tour and the seed load tests run as
    written on 127.0.0.1; on any other address everyone would have every scope.
    """
    if config.mode == "off" and not insecure and not is_loopback(host):
        raise ConfigError(
            f'refusing to listen on {host} with auth.mode = "off": anyone who can reach it '
            'could act as any agent. Configure [auth] mode = "api_key" or "jwt" '
            "(see docs/authentication.md), bind to 127.0.0.1, or pass --insecure."
        )
