"""Authentication end to end: API keys, JWTs, scopes, agent-bound credentials, tenants.

Every gateway here is in-process (``gateway_client``) with a manual clock, so
token expiry and the key cache are tested by moving the clock, never by sleeping.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from agentcore import apikeys
from agentcore.app import Gateway
from agentcore.auth import StoreAuthenticator, check_bind, is_loopback
from agentcore.clock import ManualClock
from agentcore.config import AuthConfig
from agentcore.errors import ConfigError, Unauthorized
from agentcore.identity import SCOPES
from agentcore.repositories import open_repositories
from agentcore.tokens import JwtVerifier
from tests.support import agent_card, gateway_client, make_config

SECRET = "test-secret-of-at-least-32-bytes!!"
JSONRPC = "/api/v1/jsonrpc"


@dataclass
class Gw:
    app: Gateway
    client: httpx.AsyncClient
    clock: ManualClock

    async def key(
        self,
        tenant: str = "acme",
        scopes: tuple[str, ...] = tuple(sorted(SCOPES - {"admin"})),
        agent_id: str | None = None,
    ) -> str:
        full, key = apikeys.generate(
            tenant=tenant, scopes=list(scopes), now=self.clock(), agent_id=agent_id
        )
        assert await self.app.repos.api_keys.put(key)
        return full

    async def call(
        self,
        credential: str | None,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        header: str = "authorization",
    ) -> httpx.Response:
        headers = {}
        if credential is not None:
            headers[header] = f"Bearer {credential}" if header == "authorization" else credential
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        return await self.client.post(JSONRPC, json=body, headers=headers)

    async def ok(self, credential: str, method: str, params: dict[str, Any] | None = None) -> Any:
        response = await self.call(credential, method, params)
        assert response.status_code == 200, response.text
        return response.json()["result"]

    async def refused(
        self, credential: str | None, method: str, params: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        response = await self.call(credential, method, params)
        data = response.json()
        assert response.headers["content-type"] == "application/json"
        assert data["jsonrpc"] == "2.0"
        return response.status_code, data["error"]


@pytest.fixture
async def gw(clock: ManualClock) -> AsyncIterator[Gw]:
    """A gateway with ``auth.mode = "api_key"``."""
    async with gateway_client(make_config(auth={"mode": "api_key"}), clock) as (app, client):
        yield Gw(app, client, clock)


# -- API keys -------------------------------------------------------------------------


async def test_missing_credentials_get_401_with_a_json_body_and_a_challenge(gw: Gw) -> None:
    response = await gw.call(None, "agent.list")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="agentcore"'
    error = response.json()["error"]
    assert error["code"] == -32010
    assert "missing credentials" in error["message"]

    plain = await gw.client.get("/api/v1/jsonrpc/methods")
    assert plain.status_code == 401
    assert plain.json()["error"]["type"] == "unauthorized"


async def test_a_valid_key_works_as_bearer_and_as_x_api_key(gw: Gw) -> None:
    key = await gw.key()

    assert (await gw.ok(key, "agent.list"))["agents"] == []
    response = await gw.call(key, "agent.list", header="x-api-key")
    assert response.status_code == 200


async def test_bad_unknown_and_foreign_credentials_get_401(gw: Gw) -> None:
    key = await gw.key()
    key_id, secret = apikeys.parse(key)
    wrong_secret = f"ak_{key_id}_{'A' * len(secret)}"
    unknown_id = f"ak_{'0' * 12}_{secret}"

    for credential in ("ak_nope", wrong_secret, unknown_id, "not-a-key", "eyJ.a.b"):
        status, error = await gw.refused(credential, "agent.list")
        assert (status, error["code"]) == (401, -32010), credential
        assert secret not in error["message"]


async def test_a_revoked_key_gets_401_at_once_through_this_process(gw: Gw) -> None:
    key = await gw.key()
    await gw.ok(key, "agent.list")  # cached now
    authenticator = gw.app.authenticator
    assert isinstance(authenticator, StoreAuthenticator)

    assert await authenticator.revoke(apikeys.parse(key)[0])

    status, error = await gw.refused(key, "agent.list")
    assert status == 401
    assert error["message"] == "API key revoked"
    assert not await authenticator.revoke(apikeys.parse(key)[0])


async def test_a_key_revoked_elsewhere_is_refused_within_cache_s(gw: Gw) -> None:
    """Another worker or the CLI revokes in the store; this process trusts its cache
    for auth.cache_s (default 5 s) and then asks the store again."""
    key = await gw.key()
    await gw.ok(key, "agent.list")

    assert await gw.app.repos.api_keys.revoke(apikeys.parse(key)[0], gw.clock())
    gw.clock.advance(4.9)
    await gw.ok(key, "agent.list")  # still cached
    gw.clock.advance(0.2)
    status, _ = await gw.refused(key, "agent.list")
    assert status == 401


async def test_the_key_cache_spares_the_store(clock: ManualClock) -> None:
    repos = open_repositories("sqlite://:memory:")
    await repos.open()
    try:
        full, key = apikeys.generate(tenant="t", scopes=["agents:read"], now=clock())
        await repos.api_keys.put(key)
        authenticator = StoreAuthenticator(repos.api_keys, AuthConfig(mode="api_key"), clock)

        identity = await authenticator.authenticate(full)
        await repos.close()  # any further store call would raise StoreUnavailable
        assert await authenticator.authenticate(full) == identity
        with pytest.raises(Unauthorized):
            await authenticator.authenticate(full[:-1] + ("B" if full[-1] != "B" else "C"))
    finally:
        await repos.close()

    assert identity.kind == "api_key"
    assert identity.subject == key.id
    assert identity.tenant == "t"
    assert identity.scopes == frozenset({"agents:read"})


async def test_an_unavailable_store_is_503_not_401(gw: Gw) -> None:
    key = await gw.key()
    await gw.app.repos.close()

    status, error = await gw.refused(key, "agent.list")

    assert status == 503
    assert error["code"] == -32000


# -- scopes, agents, tenants ---------------------------------------------------------


async def test_a_missing_scope_is_403_per_method(gw: Gw) -> None:
    reader = await gw.key(scopes=("agents:read",))

    await gw.ok(reader, "agent.list")
    status, error = await gw.refused(reader, "agent.register", {"agent_card": agent_card("a")})
    assert (status, error["code"]) == (403, -32007)
    assert error["data"] == {"scope": "agents:write"}
    status, error = await gw.refused(reader, "task.create", {"task_definition": {}})
    assert (status, error["code"]) == (403, -32007)


async def test_admin_has_every_scope(gw: Gw) -> None:
    admin = await gw.key(scopes=("admin",))

    await gw.ok(admin, "agent.register", {"agent_card": agent_card("a")})
    await gw.ok(admin, "task.create", {"task_definition": {}})


async def test_an_agent_key_acts_only_as_its_agent(gw: Gw) -> None:
    operator = await gw.key()
    alice = await gw.key(agent_id="alice")
    bob = await gw.key(agent_id="bob")
    await gw.ok(alice, "agent.register", {"agent_card": agent_card("alice", "x")})
    await gw.ok(bob, "agent.register", {"agent_card": agent_card("bob", "y")})
    status, _ = await gw.refused(alice, "agent.register", {"agent_card": agent_card("mallory")})
    assert status == 403

    await gw.ok(alice, "agent.ping", {"agent_id": "alice"})
    for method in ("agent.ping", "agent.unregister"):
        status, error = await gw.refused(alice, method, {"agent_id": "bob"})
        assert (status, error["code"]) == (403, -32007), method

    task = await gw.ok(
        operator, "task.create", {"task_definition": {"required_capabilities": ["y"]}}
    )
    assert task["agent_id"] == "bob"
    task_id = task["task_id"]
    for method in ("task.start", "task.fail", "task.update"):
        status, error = await gw.refused(alice, method, {"task_id": task_id})
        assert (status, error["code"]) == (403, -32007), method
        status, _ = await gw.refused(alice, method, {"task_id": task_id, "agent_id": "bob"})
        assert status == 403, method
    await gw.ok(bob, "task.start", {"task_id": task_id})
    status, _ = await gw.refused(alice, "task.complete", {"task_id": task_id, "result": 1})
    assert status == 403
    done = await gw.ok(bob, "task.complete", {"task_id": task_id, "result": 1})
    assert done["status"] == "completed"
    await gw.ok(bob, "agent.unregister", {"agent_id": "bob"})


async def test_tenants_see_only_their_agents(gw: Gw) -> None:
    acme = await gw.key(tenant="acme")
    globex = await gw.key(tenant="globex")
    await gw.ok(acme, "agent.register", {"agent_card": agent_card("acme-1", "x")})

    assert [a["agent_id"] for a in (await gw.ok(acme, "agent.list"))["agents"]] == ["acme-1"]
    assert (await gw.ok(globex, "agent.list"))["agents"] == []
    assert (await gw.ok(globex, "agent.discover", {"capabilities": ["x"]}))["agents"] == []


# -- open paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/health",
        "/api/v1/health/ready",
        "/api/v1/health/live",
        "/openapi.json",
        "/.well-known/agent-card.json",
    ],
)
async def test_health_and_documents_stay_open(gw: Gw, path: str) -> None:
    response = await gw.client.get(path)
    assert response.status_code == 200


async def test_metrics_need_the_metrics_read_scope(gw: Gw) -> None:
    """/metrics names every tenant, agent and event type: not for any tenant's key."""

    async def scrape(key: str | None) -> httpx.Response:
        headers = {} if key is None else {"authorization": f"Bearer {key}"}
        return await gw.client.get("/metrics", headers=headers)

    assert (await scrape(None)).status_code == 401
    refused = await scrape(await gw.key(scopes=tuple(apikeys.default_scopes())))
    assert refused.status_code == 403
    assert refused.json()["error"]["data"] == {"scope": "metrics:read"}
    assert (await scrape(await gw.key(scopes=("metrics:read",)))).status_code == 200
    assert (await scrape(await gw.key(scopes=("admin",)))).status_code == 200


async def test_metrics_can_be_left_open(clock: ManualClock) -> None:
    config = make_config(auth={"mode": "api_key", "protect_metrics": False})
    async with gateway_client(config, clock) as (_, client):
        assert (await client.get("/metrics")).status_code == 200


# -- JWTs ------------------------------------------------------------------------------


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def claims(clock: ManualClock, **extra: Any) -> dict[str, Any]:
    return {"sub": "svc-1", "exp": int(clock() + 300), **extra}


def pem(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def jwks(path: Path, kid: str) -> str:
    jwk = ECAlgorithm.to_jwk(ec_key().public_key(), as_dict=True)
    path.write_text(json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig"}]}))
    return str(path)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand (PyJWT refuses to make the bad ones)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b""
    if secret is not None:
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture
async def hs(clock: ManualClock) -> AsyncIterator[Gw]:
    """A gateway with ``auth.mode = "jwt"``, HS256, an audience and an issuer."""
    auth = {"mode": "jwt", "jwt_secret": SECRET, "jwt_audience": "gw", "jwt_issuer": "idp"}
    async with gateway_client(make_config(auth=auth), clock) as (app, client):
        yield Gw(app, client, clock)


def hs_token(clock: ManualClock, **extra: Any) -> str:
    return jwt.encode(
        claims(clock, **{"aud": "gw", "iss": "idp", **extra}), SECRET, algorithm="HS256"
    )


async def test_hs256_token_carries_tenant_scopes_and_agent(hs: Gw) -> None:
    token = hs_token(hs.clock, tenant="acme", scope="agents:read agents:write")
    await hs.ok(token, "agent.register", {"agent_card": agent_card("a1")})
    assert [a["agent_id"] for a in (await hs.ok(token, "agent.list"))["agents"]] == ["a1"]
    other_tenant = hs_token(hs.clock, tenant="globex", scopes=["agents:read"])
    assert (await hs.ok(other_tenant, "agent.list"))["agents"] == []

    status, error = await hs.refused(other_tenant, "agent.register", {"agent_card": {}})
    assert (status, error["code"]) == (403, -32007)
    agent = hs_token(hs.clock, tenant="acme", scope="agents:write", agent_id="a2", sub="a2")
    await hs.ok(agent, "agent.register", {"agent_card": agent_card("a2")})
    status, _ = await hs.refused(agent, "agent.ping", {"agent_id": "a1"})
    assert status == 403
    await hs.ok(agent, "agent.ping", {"agent_id": "a2"})


async def test_a_token_without_tenant_is_the_default_tenant(clock: ManualClock) -> None:
    verifier = JwtVerifier(AuthConfig(mode="jwt", jwt_secret=SECRET), clock)

    identity = verifier.verify(jwt.encode(claims(clock), SECRET, algorithm="HS256"))

    assert (identity.kind, identity.subject, identity.tenant) == ("jwt", "svc-1", "default")
    assert identity.scopes == frozenset()
    assert identity.agent_id is None


async def test_bad_tokens_get_401(hs: Gw, tmp_path: Path) -> None:
    now = hs.clock
    header = {"alg": "none", "typ": "JWT"}
    body = claims(now, aud="gw", iss="idp", scope="admin")
    bad = {
        "expired": hs_token(now, exp=int(now() - 1)),
        "bad signature": jwt.encode(body, SECRET[::-1], algorithm="HS256"),
        "wrong audience": hs_token(now, aud="elsewhere"),
        "wrong issuer": hs_token(now, iss="mallory"),
        "alg none": unsigned(header, body, None),
        "alg none, signed": unsigned(header, body, SECRET.encode()),
        "no exp": jwt.encode({**body, "exp": None}, SECRET, algorithm="HS256"),
        "no sub": jwt.encode({**body, "sub": None}, SECRET, algorithm="HS256"),
        "not yet valid": hs_token(now, nbf=int(now() + 60)),
        "bad scopes": hs_token(now, scopes="admin"),
        "garbage": "a.b.c",
        "rs256 unconfigured": jwt.encode(body, rsa_key(), algorithm="RS256"),
    }
    for reason, token in bad.items():
        status, error = await hs.refused(token, "agent.list")
        assert (status, error["code"]) == (401, -32010), reason
        assert error["message"].startswith("invalid token"), (reason, error)


async def test_a_cached_token_still_expires(hs: Gw) -> None:
    token = hs_token(hs.clock, exp=int(hs.clock() + 10), scope="agents:read")
    await hs.ok(token, "agent.list")

    hs.clock.advance(9)
    await hs.ok(token, "agent.list")
    hs.clock.advance(1)
    status, error = await hs.refused(token, "agent.list")
    assert (status, error["message"]) == (401, "invalid token: expired")


async def test_jwt_mode_accepts_api_keys_too(hs: Gw) -> None:
    key = await hs.key(scopes=("agents:read",))
    await hs.ok(key, "agent.list")


async def test_rs256_with_a_pem_public_key(clock: ManualClock, tmp_path: Path) -> None:
    auth = {
        "mode": "jwt",
        "jwt_algorithms": ["RS256", "HS256"],
        "jwt_secret": SECRET,
        "jwt_public_key_file": pem(tmp_path / "rsa.pem", rsa_key()),
    }
    async with gateway_client(make_config(auth=auth), clock) as (app, client):
        gw = Gw(app, client, clock)
        token = jwt.encode(claims(clock, scope="agents:read"), rsa_key(), algorithm="RS256")
        await gw.ok(token, "agent.list")

        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(claims(clock, scope="agents:read"), other, algorithm="RS256")
        status, error = await gw.refused(forged, "agent.list")
        assert (status, error["message"]) == (401, "invalid token: bad signature")
        # Key confusion: an HS256 token "signed" with the public key as the HMAC secret.
        public_pem = (tmp_path / "rsa.pem").read_bytes()
        confused = unsigned({"alg": "HS256"}, claims(clock, scope="admin"), public_pem)
        status, _ = await gw.refused(confused, "agent.list")
        assert status == 401


async def test_es256_with_a_jwks_file_chooses_the_key_by_kid(
    clock: ManualClock, tmp_path: Path
) -> None:
    auth = {
        "mode": "jwt",
        "jwt_algorithms": ["ES256"],
        "jwt_jwks_file": jwks(tmp_path / "jwks.json", "k1"),
    }
    async with gateway_client(make_config(auth=auth), clock) as (app, client):
        gw = Gw(app, client, clock)
        body = claims(clock, scopes=["agents:read"])
        token = jwt.encode(body, ec_key(), algorithm="ES256", headers={"kid": "k1"})
        await gw.ok(token, "agent.list")
        unkeyed = jwt.encode(body, ec_key(), algorithm="ES256")
        await gw.ok(unkeyed, "agent.list")  # a JWKS of one key serves tokens without kid

        unknown = jwt.encode(body, ec_key(), algorithm="ES256", headers={"kid": "k2"})
        status, error = await gw.refused(unknown, "agent.list")
        assert (status, error["message"]) == (401, "invalid token: no key for kid 'k2'")
        hs256 = jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": "k1"})
        status, error = await gw.refused(hs256, "agent.list")
        assert (status, error["message"]) == (401, "invalid token: algorithm 'HS256' not allowed")


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"jwt_algorithms": ["none"], "jwt_secret": SECRET}, "unsupported ['none']"),
        ({"jwt_algorithms": [], "jwt_secret": SECRET}, "unsupported []"),
        ({"jwt_secret": "short"}, "auth.jwt_secret"),
        ({"jwt_algorithms": ["HS256"], "jwt_public_key_file": "x.pem"}, "needed for HS256"),
        ({"jwt_algorithms": ["RS256"], "jwt_secret": SECRET}, "RS256 needs"),
        ({"jwt_algorithms": ["RS256"], "jwt_public_key_file": "missing.pem"}, "cannot read"),
        ({"jwt_algorithms": ["ES256"], "jwt_jwks_file": "missing.json"}, "cannot read"),
    ],
)
def test_unusable_jwt_configuration_is_a_config_error(
    auth: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        JwtVerifier(AuthConfig(mode="jwt", **auth))


def test_a_pem_key_of_the_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    path = pem(tmp_path / "ec.pem", ec_key())
    with pytest.raises(ConfigError, match="no public key usable with RS256"):
        JwtVerifier(AuthConfig(mode="jwt", jwt_algorithms=["RS256"], jwt_public_key_file=path))


def test_building_the_app_checks_the_key_material() -> None:
    with pytest.raises(ConfigError):
        Gateway(make_config(auth={"mode": "jwt", "jwt_secret": "short"}))


# -- the API key format ----------------------------------------------------------------


def test_generated_keys_parse_and_verify() -> None:
    full, key = apikeys.generate(tenant="t", scopes=["tasks:read", "tasks:read"], now=5.0)

    key_id, secret = apikeys.parse(full)
    assert key_id == key.id and len(key_id) == 12
    assert full == f"ak_{key_id}_{secret}"
    assert secret not in key.hash and len(key.hash) == 64
    assert key.scopes == ["tasks:read"]
    assert (key.created_at, key.revoked_at, key.agent_id) == (5.0, None, None)
    assert apikeys.verify(key, secret)
    assert not apikeys.verify(key, secret[:-1] + "x")


@pytest.mark.parametrize(
    "credential",
    ["", "ak_", "ak_0123456789ab", "ak_0123456789AB_" + "a" * 43, "ak_0123456789ab_short", "xk"],
)
def test_malformed_keys_are_unauthorized(credential: str) -> None:
    with pytest.raises(Unauthorized):
        apikeys.parse(credential)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scopes": ["agents:read", "root"]}, "unknown scope 'root'"),
        ({"scopes": []}, "at least one scope"),
        ({"tenant": ""}, "invalid tenant"),
        ({"agent_id": "a b"}, "invalid agent id"),
    ],
)
def test_generate_refuses_bad_input(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"tenant": "t", "scopes": ["agents:read"], "now": 0.0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        apikeys.generate(**args)


def test_default_scopes_are_all_but_admin_and_metrics_read() -> None:
    assert set(apikeys.default_scopes()) == SCOPES - {"admin", "metrics:read"}


def test_an_agent_keys_default_scopes_leave_out_events_write() -> None:
    withheld = {"admin", "metrics:read", "events:write"}
    assert set(apikeys.default_scopes("bot-1")) == SCOPES - withheld


# -- where the gateway may listen -------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_bind_refuses_exposure_without_auth() -> None:
    off = AuthConfig()
    check_bind("127.0.0.1", off, insecure=False)
    check_bind("0.0.0.0", off, insecure=True)
    check_bind("0.0.0.0", AuthConfig(mode="api_key"), insecure=False)
    with pytest.raises(ConfigError, match="--insecure"):
        check_bind("0.0.0.0", off, insecure=False)
