"""Bearer JWTs: verification with PyJWT against key material loaded once.

Keys, chosen by the token header's ``alg`` (which must be one of
``auth.jwt_algorithms``; ``none`` is never accepted):

- ``HS256``/``HS384``/``HS512``: ``auth.jwt_secret`` (at least as long as the
  hash, e.g. 32 bytes for HS256);
- ``RS*``, ``PS*``, ``ES*``, ``EdDSA``: the key in the JWKS file whose ``kid``
  matches the header's (a JWKS of one key also serves tokens without ``kid``),
  else the PEM public key file.

Claims: ``sub`` and ``exp`` are required; ``aud`` and ``iss`` must match when
``auth.jwt_audience`` / ``auth.jwt_issuer`` are set; ``exp`` and ``nbf`` are
checked against the injected clock, without leeway. The identity is
``sub``, ``tenant`` (default ``"default"``), ``scope`` (space-separated) and/or
``scopes`` (a list), and ``agent_id`` for an agent's token.

A verified token is cached (by its SHA-256) until ``min(exp, now + 60 s)``, so
an RS256/ES256 signature, a public-key operation dearer than the rest of the
request's checks, is checked once a minute per token, not on every request. The cache holds at most
``CACHE_ENTRIES`` tokens; when full the oldest entry goes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms
from jwt.types import Options

from agentcore.clock import Clock, system_clock
from agentcore.config import AuthConfig
from agentcore.errors import ConfigError, Unauthorized
from agentcore.identity import Identity
from agentcore.models import DEFAULT_TENANT

#: Most verified tokens remembered at once.
CACHE_ENTRIES = 10_000
#: Longest a verified token is trusted without checking its signature again.
CACHE_S = 60.0
#: Longest accepted token; anything larger is refused before it is parsed.
MAX_TOKEN_CHARS = 8192

_HMAC = frozenset({"HS256", "HS384", "HS512"})

#: Reasons shown to the caller for PyJWT's errors (most specific class first).
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed for this key"),
    (jwt.InvalidKeyError, "unusable key for this token"),
    (jwt.DecodeError, "malformed token"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing the {exc.claim!r} claim"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid claims"


class JwtVerifier:
    def __init__(self, config: AuthConfig, clock: Clock = system_clock) -> None:
        """Load and check the key material; :class:`ConfigError` names what is wrong."""
        self._clock = clock
        self._audience = config.jwt_audience or None
        self._issuer = config.jwt_issuer or None
        self._algorithms = frozenset(config.jwt_algorithms)
        supported = get_default_algorithms().keys() - {"none"}
        unknown = sorted(self._algorithms - supported)
        if unknown or not self._algorithms:
            raise ConfigError(
                f"invalid configuration: auth.jwt_algorithms: unsupported {unknown or '[]'}; "
                f"choose from {', '.join(sorted(supported))}"
            )
        self._secret = _secret(config, self._algorithms & _HMAC)
        self._jwks = _load_jwks(config.jwt_jwks_file) if config.jwt_jwks_file else {}
        self._pem = _load_pem(config.jwt_public_key_file, self._algorithms - _HMAC)
        for alg in sorted(self._algorithms - _HMAC):
            if alg not in self._pem and not self._jwks:
                raise ConfigError(
                    f"invalid configuration: auth.jwt_algorithms: {alg} needs "
                    "jwt_public_key_file (a key of that type) or jwt_jwks_file"
                )
        required = ["exp", "sub"]
        required += ["aud"] if self._audience else []
        required += ["iss"] if self._issuer else []
        self._options: Options = {
            "require": required,
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
            # Time is checked below against the injected clock.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        self._cache: dict[bytes, tuple[Identity, float]] = {}

    def verify(self, token: str) -> Identity:
        """The identity a valid token carries; :class:`Unauthorized` with a short reason."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("invalid token: too long")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            if now < cached[1]:
                return cached[0]
            del self._cache[digest]
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if not isinstance(alg, str) or alg not in self._algorithms:
                raise Unauthorized(f"invalid token: algorithm {str(alg)[:16]!r} not allowed")
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key(alg, header.get("kid")),
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                options=self._options,
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {_reason(exc)}") from exc
        exp = _number(claims, "exp")
        if now >= exp:
            raise Unauthorized("invalid token: expired")
        if "nbf" in claims and now < _number(claims, "nbf"):
            raise Unauthorized("invalid token: not valid yet")
        identity = _identity(claims)
        if len(self._cache) >= CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = (identity, min(exp, now + CACHE_S))
        return identity

    def _key(self, alg: str, kid: object) -> Any:
        if alg in _HMAC:
            return self._secret
        if isinstance(kid, str) and kid in self._jwks:
            return self._jwks[kid]
        if alg in self._pem:
            return self._pem[alg]
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values()))
        raise Unauthorized(f"invalid token: no key for kid {str(kid)[:64]!r}")


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"invalid token: {name} is not a number")
    return float(value)


def _identity(claims: dict[str, Any]) -> Identity:
    tenant = claims.get("tenant", DEFAULT_TENANT)
    agent_id = claims.get("agent_id")
    scope = claims.get("scope", "")
    scopes = claims.get("scopes", [])
    if not isinstance(tenant, str) or not tenant:
        raise Unauthorized("invalid token: tenant must be a non-empty string")
    if agent_id is not None and (not isinstance(agent_id, str) or not agent_id):
        raise Unauthorized("invalid token: agent_id must be a non-empty string")
    if not isinstance(scope, str):
        raise Unauthorized("invalid token: scope must be a space-separated string")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise Unauthorized("invalid token: scopes must be a list of strings")
    return Identity(
        "jwt",
        str(claims["sub"]),
        tenant,
        frozenset(scope.split()) | frozenset(scopes),
        agent_id,
    )


def _secret(config: AuthConfig, algorithms: frozenset[str]) -> bytes | None:
    if not algorithms:
        return None
    secret = config.jwt_secret.encode()
    if not secret:
        raise ConfigError(
            f"invalid configuration: auth.jwt_secret: needed for {', '.join(sorted(algorithms))}"
        )
    for alg in sorted(algorithms):
        problem = get_default_algorithms()[alg].check_key_length(secret)
        if problem:
            raise ConfigError(f"invalid configuration: auth.jwt_secret: {problem}")
    return secret


def _load_pem(path: str, algorithms: frozenset[str]) -> dict[str, Any]:
    """The PEM key, prepared for each allowed algorithm it fits (RSA: RS*/PS*, EC: its ES*)."""
    if not path:
        return {}
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"invalid configuration: auth.jwt_public_key_file: cannot read {path}: {exc.strerror}"
        ) from exc
    keys: dict[str, Any] = {}
    for alg in sorted(algorithms):
        algorithm = get_default_algorithms()[alg]
        try:
            key = algorithm.prepare_key(data)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue  # not a key of this algorithm's type (or curve)
        problem = algorithm.check_key_length(key)
        if problem:
            raise ConfigError(f"invalid configuration: auth.jwt_public_key_file: {problem}")
        keys[alg] = key
    if not keys:
        raise ConfigError(
            f"invalid configuration: auth.jwt_public_key_file: {path} holds no public key "
            f"usable with {', '.join(sorted(algorithms)) or 'the HMAC algorithms configured'}"
        )
    return keys


def _load_jwks(path: str) -> dict[str | None, jwt.PyJWK]:
    """Signing keys of a JWKS file by ``kid``; PyJWT checks each token's alg against its key."""
    try:
        keyset = jwt.PyJWKSet.from_json(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(
            f"invalid configuration: auth.jwt_jwks_file: cannot read {path}: {exc.strerror}"
        ) from exc
    except (jwt.PyJWTError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: auth.jwt_jwks_file: {path}: {exc}") from exc
    keys: dict[str | None, jwt.PyJWK] = {}
    for key in keyset.keys:
        if key.public_key_use in (None, "sig"):
            problem = key.Algorithm.check_key_length(key.key)
            if problem:
                raise ConfigError(f"invalid configuration: auth.jwt_jwks_file: {problem}")
            keys[key.key_id] = key
    if not keys:
        raise ConfigError(f"invalid configuration: auth.jwt_jwks_file: {path} has no signing key")
    return keys
