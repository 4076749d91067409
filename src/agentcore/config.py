"""Typed, frozen configuration, built once at the edge.

Sources, later ones winning: built-in defaults, a TOML file (``--config``), the
environment (``AGENTCORE_<SECTION>__<KEY>``, each value read as a TOML value so
``2`` is an int and ``["a", "b"]`` a list; a value that is not valid TOML is
taken as a plain string), then command-line flags. Library code never reads the
environment: :func:`load_config` is called by the CLI or the seed import path
and the result is passed in.

Unknown sections or keys and values of the wrong type raise
:class:`~agentcore.errors.ConfigError` with a message that names the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from agentcore.errors import ConfigError
from agentcore.routing import RouteClass

ENV_PREFIX = "AGENTCORE_"


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8001
    #: Worker processes. With more than one, Prometheus runs in multiprocess
    #: mode and heartbeats are buffered per worker (see docs/configuration.md).
    workers: int = 1
    #: The ASGI server `agentcore serve` runs: "uvicorn" (the default: with the
    #: gateway's own HTTP protocol it is faster on both benchmark routes and holds
    #: less memory per idle WebSocket, docs/performance.md, "HTTP throughput",
    #: "Which server") or "granian"; the gateway behaves the same under both.
    server: Literal["uvicorn", "granian"] = "uvicorn"
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    #: Log one line per request (costs throughput; off by default).
    access_log: bool = False
    #: Proxies (IPs or CIDRs) whose X-Forwarded-For is believed. The client IP
    #: is the socket's peer unless that peer is listed here. Their
    #: X-Forwarded-Proto and X-Forwarded-Host are the scheme and host the
    #: WebSocket Origin check takes as the gateway's own origin.
    trusted_proxies: list[str] = []
    #: Origins allowed by CORS (exact, e.g. "https://app.example.com"); none by
    #: default. Also the only pages, besides the gateway's own origin, that may
    #: open a WebSocket (a handshake with another Origin is refused with 403).
    cors_allow_origins: list[str] = []
    #: Set Strict-Transport-Security (only when TLS terminates in front of the gateway).
    hsts: bool = False
    #: Host names (any port) the gateway answers to with authentication off,
    #: besides its bound address, loopback names and IP literals: a request
    #: naming another is refused with 421 (DNS rebinding). ``"*"``: any.
    allowed_hosts: list[str] = []
    #: Largest request head (request line and headers) in bytes: a larger one
    #: is answered 431 and the connection closed, as soon as it is known (uvicorn;
    #: Granian: its read buffer, at least 8192).
    max_head_bytes: int = 65_536
    #: Most header lines in one request head; more: 431 and the connection closed.
    max_headers: int = 100
    #: Seconds from the first byte of a request head to its end; a slower head
    #: is answered 408 and the connection closed (uvicorn: checked by the
    #: keep-alive sweep, so within a quarter more; Granian: at most 60).
    head_timeout_s: float = 10.0


class DatabaseConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Empty: SQLite file ``agentcore.db`` under ``data_dir``. ``sqlite:///path``,
    #: ``sqlite://:memory:``, ``postgresql://user:pass@host:port/db`` or ``memory://``.
    url: str = ""
    #: Directory for the embedded database and other local state.
    data_dir: str = ".agentcore"
    #: asyncpg pool size per worker (PostgreSQL only).
    pool_min_size: int = 1
    pool_max_size: int = 10
    #: Longest a single SQL statement may run before it is stopped and answered
    #: with ``query_timeout`` (SQLite runs on the event loop: this bounds how long
    #: one query can hold every other request; PostgreSQL: ``statement_timeout``).
    statement_timeout_s: float = 1.0


#: The database a ``database.url`` names.
Backend = Literal["sqlite", "postgresql", "memory"]


def parse_url(url: str) -> tuple[Backend, str]:
    """The backend a database URL names and what it connects to (a SQLite path, a
    PostgreSQL URL, nothing for memory); :class:`ConfigError` for anything else.

    ``sqlite:///rel/path.db`` (relative to the working directory),
    ``sqlite:////abs/path.db``, ``sqlite://:memory:``, ``postgresql://...``,
    ``postgres://...`` or ``memory://``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError("database url: expected scheme://..., e.g. sqlite:///data/agentcore.db")
    if scheme == "memory":
        return "memory", ""
    if scheme == "sqlite":
        path = rest.removeprefix("/")
        if not path:
            raise ConfigError("database url: sqlite needs a path, e.g. sqlite:///data/agentcore.db")
        return "sqlite", path
    if scheme in ("postgresql", "postgres"):
        return "postgresql", url
    raise ConfigError(f"database url: unsupported scheme {scheme!r} (sqlite, postgresql, memory)")


class RegistryConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: An agent that has not pinged for this long becomes ``inactive``.
    heartbeat_ttl_s: float = 60.0
    #: Heartbeat timestamps are kept in memory and written in one batch this
    #: often; a crash loses at most this much heartbeat history, never an agent.
    heartbeat_flush_interval_s: float = 1.0
    #: How often expired agents and timed-out tasks are swept.
    sweep_interval_s: float = 5.0
    #: How long a worker trusts its cached view of an agent's existence on the
    #: ping path before re-reading the store (matters with several workers).
    agent_cache_ttl_s: float = 2.0
    #: How long a worker reuses a discover or list answer while no change to the
    #: registry went through it: the most another worker's or instance's change
    #: shows up late. 0 turns the reuse off.
    query_cache_s: float = 1.0


class TasksConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Retries a failed task gets unless its definition says otherwise.
    default_max_retries: int = 0
    #: Largest page ``task.query`` / ``agent.list`` return.
    max_page_size: int = 1000


class EventsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Capacity of each internal subscriber queue of the in-process hub.
    subscriber_queue_size: int = 10_000
    #: Events kept for replay: the newest this many...
    retention_count: int = 1_000_000
    #: ...and none older than this (seconds).
    retention_s: float = 7 * 24 * 3600.0
    #: How often old events are trimmed.
    trim_interval_s: float = 60.0
    #: How committed events reach the streams of other worker processes and
    #: gateway instances. ``local``: they do not (right for one worker);
    #: ``redis``: Redis pub/sub on ``redis_channel``, at most once to live
    #: streams (a stream cut off meanwhile resumes from its cursor).
    fanout: Literal["local", "redis"] = "local"
    #: Redis for ``fanout = "redis"``.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Pub/sub channel; gateways that share a Redis but not a database need different ones.
    redis_channel: str = "agentcore:events"


class LimitsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Largest accepted request body in bytes; larger gets 413 before it is read in full.
    max_body_bytes: int = 1_048_576
    #: Per route class overrides of ``max_body_bytes``.
    max_body_bytes_by_class: dict[RouteClass, int] = {}
    #: Largest JSON-RPC batch.
    max_batch_size: int = 100
    #: Deepest JSON nesting accepted (arrays and objects).
    max_json_depth: int = 32
    #: Concurrent requests one worker handles before it sheds load with 503.
    max_in_flight: int = 2048
    #: Seconds to receive the whole request body before 408.
    read_timeout_s: float = 30.0
    #: Seconds a handler may run before the request fails with 503 and a message.
    handler_timeout_s: float = 30.0


class LimitSpec(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Requests per second.
    rate: float
    #: Requests allowed at once before the rate applies.
    burst: int


class RateLimitConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    #: Requests per second per client identity (API key, agent token or IP).
    #: The default is far above what one machine's load generator drives, so
    #: the seed HTTP scenario is not limited; tighten it for production.
    rate: float = 100_000.0
    burst: int = 200_000
    #: ``memory``: exact per worker process; ``redis``: exact across workers and instances.
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: What a request gets when the shared backend (Redis) cannot answer.
    #: ``open`` (the default): admitted unlimited, so a Redis outage does not
    #: take the whole API down with it; the limit is a guard against abuse,
    #: which a short outage hardly invites. ``closed``: refused with 503, for
    #: a limit that is a promise (a paid quota, a fragile upstream). Either
    #: way counted in ``agentcore_ratelimit_backend_errors_total``.
    on_backend_error: Literal["open", "closed"] = "open"
    #: Per route class limits (``control`` = JSON-RPC, ``integration``, ``llm``).
    classes: dict[RouteClass, LimitSpec] = {}
    #: Per tenant limits, applied to every identity of the tenant (each counted apart).
    tenants: dict[str, LimitSpec] = {}
    #: Per API key limits, by key id.
    keys: dict[str, LimitSpec] = {}


class AuthConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: ``off``: everyone is the default tenant with every scope (loopback only,
    #: unless ``--insecure``). ``api_key``: ``Authorization: Bearer <key>`` or
    #: ``X-API-Key``. ``jwt``: bearer JWTs (API keys are accepted too).
    mode: Literal["off", "api_key", "jwt"] = "off"
    #: Algorithms accepted for JWTs: HS256, RS256, ES256 (and their kin).
    jwt_algorithms: list[str] = msgspec.field(default_factory=lambda: ["HS256"])
    #: Shared secret for HS* tokens.
    jwt_secret: str = ""
    #: PEM public key file for RS*/ES* tokens.
    jwt_public_key_file: str = ""
    #: JWKS file (keys chosen by ``kid``).
    jwt_jwks_file: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    #: With authentication on, /metrics needs a credential with ``metrics:read``
    #: (or ``admin``): it shows every tenant's names, agent ids and event types.
    #: ``false`` leaves it open to anyone who can reach the port.
    protect_metrics: bool = True
    #: Seconds a verified API key is trusted before the store is asked again
    #: (revocation through another worker takes effect within this time); also
    #: how often open WebSocket and SSE streams have their credential checked
    #: again (a revoked key or an expired JWT ends them with 1008).
    cache_s: float = 5.0


class MetricsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    #: Directory for prometheus-client multiprocess files (several workers);
    #: empty: ``<data_dir>/prometheus``.
    multiproc_dir: str = ""
    #: Distinct values kept per caller-chosen label (tenant, agent, published
    #: event type) in each process; later ones are counted as ``other``, so
    #: callers cannot grow /metrics and memory without bound.
    max_label_values: int = 200


class RealtimeConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """WebSocket and SSE event streams (docs/realtime.md)."""

    #: Seconds a WebSocket client may stay silent before the server sends it
    #: ``{"type": "ping"}`` (one sweeper per worker, no timer per connection).
    ping_interval_s: float = 20.0
    #: Seconds without any message from a WebSocket client (a ``pong`` counts)
    #: before it is closed with 1000 "idle timeout".
    idle_timeout_s: float = 60.0
    #: Messages queued for one connection (events not yet written to its
    #: socket); one more closes it as a slow consumer (WebSocket 1013, SSE
    #: ``event: error``) so it can resume from its cursor. Bounds memory.
    send_queue_size: int = 1024
    #: Largest client message in bytes; a larger one closes the WebSocket with 1009.
    max_message_bytes: int = 65_536
    #: Client messages per second per WebSocket, with this burst; over it a
    #: message is answered with an ``error`` and dropped, and a client still
    #: sending after ``client_messages_burst`` refusals in a row is closed with 1008.
    client_messages_per_s: float = 20.0
    client_messages_burst: int = 50
    #: Subscriptions one WebSocket may hold at once.
    max_subscriptions: int = 16
    #: Seconds an SSE stream may go without output before a ``: heartbeat`` comment.
    sse_heartbeat_s: float = 15.0
    #: Seconds a WebSocket without credential headers has to send ``{"type": "auth"}``.
    auth_timeout_s: float = 5.0
    #: Seconds shutdown waits for streams to take their close (1001) before dropping them.
    shutdown_grace_s: float = 5.0


class StorageConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Blob storage under ``/api/v1/integration/storage`` (docs/storage.md)."""

    #: ``local``: files under ``<data_dir>/storage``; ``s3``: an S3-compatible bucket.
    backend: Literal["local", "s3"] = "local"
    #: Largest object in bytes, enforced while the upload streams in (413, nothing stored).
    max_object_bytes: int = 100 * 1024 * 1024
    #: Largest page ``GET /storage`` returns.
    max_page_size: int = 1000
    #: S3 endpoint, e.g. ``https://s3.eu-west-1.amazonaws.com`` or a MinIO URL; empty: AWS default.
    s3_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    #: Names of the environment variables holding the credentials (never the
    #: secrets themselves); empty: boto3's default chain (instance role, ...).
    s3_access_key_env: str = ""
    s3_secret_key_env: str = ""
    #: Prefix of every object key in the bucket (e.g. ``"agentcore/"``).
    s3_prefix: str = ""


class WebhooksConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Outbound webhooks (docs/webhooks.md)."""

    #: Serve the webhook API and deliver; false: neither.
    enabled: bool = True
    #: Run the dispatcher and delivery workers inside the gateway; false: only
    #: ``agentcore worker`` processes deliver (the API still works).
    run_in_gateway: bool = True
    #: Seconds before each attempt: the first is the delay of attempt 1 (0:
    #: immediately), the next ones the waits after each failure (Svix's schedule).
    #: Attempts past the end of the list wait as long as its last entry.
    retry_schedule: list[float] = msgspec.field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    #: Each retry delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = 0.1
    #: Attempts per delivery when the webhook does not set its own.
    max_attempts: int = 8
    #: Seconds one attempt may take (connect, send, response) before it fails.
    timeout_s: float = 15.0
    #: Attempts in flight at once per worker process (the pool size).
    concurrency: int = 64
    #: Attempts in flight at once per endpoint per worker process.
    per_endpoint_concurrency: int = 4
    #: CIDRs a webhook URL may resolve to although private, loopback, link-local
    #: or otherwise non-public (refused by default: SSRF protection).
    allowed_networks: list[str] = []
    #: An endpoint failing continuously this long (seconds) is disabled.
    disable_after_s: float = 5 * 24 * 3600.0
    #: Seconds the previous secret keeps signing after a rotation.
    secret_grace_s: float = 24 * 3600.0
    #: File holding the key (32 bytes, base64) that encrypts signing secrets in the
    #: database (AES-256-GCM); created, mode 0600, when missing. Every process and
    #: host that signs needs the same file. Empty: ``<data_dir>/webhook-secrets.key``.
    secrets_key_file: str = ""
    #: Seconds between polls of the event log and the outbox when idle.
    poll_interval_s: float = 0.25
    #: Events matched, and deliveries claimed, per round.
    batch_size: int = 200


Capability = Literal["text_generation", "chat", "json_mode", "tools", "vision", "embeddings"]


class LlmModelConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: The provider's name for the model (sent to it as ``model``).
    name: str
    capabilities: list[Capability] = msgspec.field(
        default_factory=lambda: ["text_generation", "chat"]
    )
    #: Prices per token, in the currency of your choice (USD in the examples).
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    #: Tokens of prompt plus completion the model accepts.
    context_window: int = 8192
    #: Prior of the latency estimate (ms); observed latencies move it (EWMA).
    latency_ms: float = 1000.0


class LlmProviderConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    #: ``openai``: any OpenAI-compatible server; ``anthropic``: the Messages API.
    kind: Literal["openai", "anthropic"] = "openai"
    #: E.g. ``https://api.openai.com/v1`` (requests go to ``<base_url>/chat/completions``).
    base_url: str
    #: Name of the environment variable holding the API key. The key itself is
    #: never in the configuration, never logged and never returned.
    api_key_env: str = ""
    #: Share of traffic under the ``weighted`` strategy.
    weight: float = 1.0
    #: Per provider quotas, counted per worker; 0: unlimited. A candidate over
    #: its quota is skipped, not waited for.
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    #: Seconds to wait for each read from the provider (and for the whole
    #: call, within ``llm.total_timeout_s``).
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    #: Pooled connections kept to the provider.
    max_connections: int = 100
    models: list[LlmModelConfig] = []


class LlmRequirementsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What an alias (a name usable as ``model``) asks of the model it routes to."""

    capabilities: list[Capability] = []
    #: Both the input and the output price must be at or below this; 0: any.
    max_cost_per_token: float = 0.0
    #: The model's latency estimate must be within this; 0: any.
    max_latency_ms: float = 0.0
    preferred_providers: list[str] = []
    #: A model name (or ``provider/model``); empty: any model.
    model: str = ""
    #: Overrides ``llm.strategy`` for this alias.
    strategy: Literal["cheapest", "fastest", "weighted", "least_busy", ""] = ""


class LlmBudgetConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Daily (UTC) limits of one tenant; 0: unlimited."""

    requests_per_day: int = 0
    tokens_per_day: int = 0
    cost_per_day: float = 0.0


class LlmConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """LLM routing (docs/llm.md)."""

    providers: list[LlmProviderConfig] = []
    #: ``[llm.aliases.<alias>]``: names usable as ``model`` that route by requirements.
    aliases: dict[str, LlmRequirementsConfig] = {}
    #: Order of the candidates that meet the requirements.
    strategy: Literal["cheapest", "fastest", "weighted", "least_busy"] = "cheapest"
    #: Seconds for the whole call, fallbacks included (to the first chunk when
    #: streaming). Below ``limits.handler_timeout_s``.
    total_timeout_s: float = 25.0
    #: Consecutive failures that open a model's circuit...
    circuit_failures: int = 5
    #: ...and seconds before it lets one trial call through (half-open).
    circuit_cooldown_s: float = 30.0
    #: Weight of each new observation in the latency estimate (EWMA, 0-1).
    latency_alpha: float = 0.2
    #: Seconds between writes of usage to the store (and reads of other
    #: workers' usage for budgets).
    usage_flush_interval_s: float = 1.0
    #: ``[llm.budgets.<tenant>]``; ``"*"`` applies to tenants not listed.
    budgets: dict[str, LlmBudgetConfig] = {}


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    registry: RegistryConfig = RegistryConfig()
    tasks: TasksConfig = TasksConfig()
    events: EventsConfig = EventsConfig()
    limits: LimitsConfig = LimitsConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    auth: AuthConfig = AuthConfig()
    metrics: MetricsConfig = MetricsConfig()
    realtime: RealtimeConfig = RealtimeConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    storage: StorageConfig = StorageConfig()
    llm: LlmConfig = LlmConfig()

    @property
    def database_url(self) -> str:
        """The effective database URL (SQLite under ``data_dir`` when unset)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{Path(self.database.data_dir) / 'agentcore.db'}"

    @property
    def webhook_secrets_key_file(self) -> Path:
        """The effective ``webhooks.secrets_key_file`` (under ``data_dir`` when unset)."""
        if self.webhooks.secrets_key_file:
            return Path(self.webhooks.secrets_key_file)
        return Path(self.database.data_dir) / "webhook-secrets.key"


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``AGENTCORE_SECTION__KEY=value`` variables into a nested dict."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} conflicts with another one")
        node[path[-1]] = _parse_env_value(raw)
    return out


def build_config(*layers: Mapping[str, Any]) -> Config:
    """Merge layers of plain dicts (lowest precedence first) into a validated Config."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    try:
        config = msgspec.convert(merged, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from exc
    _check(config)
    return config


def _describe(exc: msgspec.ValidationError) -> str:
    # msgspec says "... - at `$.server.port`" (or "at `key` in `$.x`"); say "server.port: ...".
    match = re.fullmatch(r"(.*?)(?: - at (`key` in )?`\$\.?(.*)`)?", str(exc), re.DOTALL)
    assert match is not None  # the pattern matches any text
    message, in_key, key = match.groups()
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", message)
    if unknown:
        return f"{key + '.' if key else ''}{unknown.group(1)}: unknown key"
    if in_key:
        message = f"bad key: {message}"
    return f"{key}: {message}" if key else message


def _check(config: Config) -> None:
    def positive(key: str, value: float) -> None:
        if not value > 0:  # also refuses NaN
            raise ConfigError(f"invalid configuration: {key}: must be > 0, got {value}")

    def not_negative(key: str, value: float) -> None:
        if not value >= 0:  # also refuses NaN
            raise ConfigError(f"invalid configuration: {key}: must be >= 0, got {value}")

    if not 0 < config.server.port < 65536:
        raise ConfigError(f"invalid configuration: server.port: out of range: {config.server.port}")
    positive("server.workers", config.server.workers)
    positive("server.max_head_bytes", config.server.max_head_bytes)
    positive("server.max_headers", config.server.max_headers)
    positive("server.head_timeout_s", config.server.head_timeout_s)
    positive("registry.heartbeat_ttl_s", config.registry.heartbeat_ttl_s)
    positive("registry.heartbeat_flush_interval_s", config.registry.heartbeat_flush_interval_s)
    positive("registry.sweep_interval_s", config.registry.sweep_interval_s)
    not_negative("registry.query_cache_s", config.registry.query_cache_s)
    positive("limits.max_body_bytes", config.limits.max_body_bytes)
    positive("limits.max_batch_size", config.limits.max_batch_size)
    for key in (
        "subscriber_queue_size",
        "retention_count",
        "retention_s",
        "trim_interval_s",
    ):
        positive(f"events.{key}", getattr(config.events, key))
    positive("tasks.max_page_size", config.tasks.max_page_size)
    for key in (
        "ping_interval_s",
        "idle_timeout_s",
        "send_queue_size",
        "max_message_bytes",
        "client_messages_per_s",
        "client_messages_burst",
        "max_subscriptions",
        "sse_heartbeat_s",
        "auth_timeout_s",
        "shutdown_grace_s",
    ):
        positive(f"realtime.{key}", getattr(config.realtime, key))
    positive("storage.max_object_bytes", config.storage.max_object_bytes)
    positive("storage.max_page_size", config.storage.max_page_size)
    if config.storage.backend == "s3" and not config.storage.s3_bucket:
        raise ConfigError("invalid configuration: storage.s3_bucket: backend 's3' needs a bucket")
    positive("metrics.max_label_values", config.metrics.max_label_values)
    positive("limits.max_json_depth", config.limits.max_json_depth)
    positive("limits.max_in_flight", config.limits.max_in_flight)
    positive("limits.read_timeout_s", config.limits.read_timeout_s)
    positive("limits.handler_timeout_s", config.limits.handler_timeout_s)
    for name, size in config.limits.max_body_bytes_by_class.items():
        positive(f"limits.max_body_bytes_by_class.{name}", size)
    rl = config.rate_limit
    specs = {"rate_limit": LimitSpec(rate=rl.rate, burst=rl.burst)}
    specs.update({f"rate_limit.classes.{k}": v for k, v in rl.classes.items()})
    specs.update({f"rate_limit.tenants.{k}": v for k, v in rl.tenants.items()})
    specs.update({f"rate_limit.keys.{k}": v for k, v in rl.keys.items()})
    for key, spec in specs.items():
        positive(f"{key}.rate", spec.rate)
        positive(f"{key}.burst", spec.burst)
    wh = config.webhooks
    for key in (
        "max_attempts",
        "timeout_s",
        "concurrency",
        "per_endpoint_concurrency",
        "disable_after_s",
        "poll_interval_s",
        "batch_size",
    ):
        positive(f"webhooks.{key}", getattr(wh, key))
    if not wh.retry_schedule or any(not d >= 0 for d in wh.retry_schedule):
        raise ConfigError(
            "invalid configuration: webhooks.retry_schedule: need at least one delay, all >= 0"
        )
    if not 0 <= wh.jitter < 1 or not wh.secret_grace_s >= 0:
        raise ConfigError(
            "invalid configuration: webhooks.jitter must be in [0, 1), secret_grace_s >= 0"
        )
    for cidr in wh.allowed_networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"invalid configuration: webhooks.allowed_networks: not a CIDR: {cidr!r}"
            ) from exc
    for cidr in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"invalid configuration: server.trusted_proxies: not an IP or CIDR: {cidr!r}"
            ) from exc
    auth = config.auth
    if auth.mode == "jwt" and not (
        auth.jwt_secret or auth.jwt_public_key_file or auth.jwt_jwks_file
    ):
        raise ConfigError(
            "invalid configuration: auth.jwt_secret: mode 'jwt' needs jwt_secret, "
            "jwt_public_key_file or jwt_jwks_file"
        )
    _check_llm(config)
    # open_repositories parses the URL with this same function: validation and use agree.
    try:
        backend, _ = parse_url(config.database_url)
    except ConfigError as exc:
        raise ConfigError(f"invalid configuration: database.url: {exc.message}") from exc
    if backend == "memory" and config.server.workers > 1:
        raise ConfigError(
            "invalid configuration: database.url: memory:// lives in one process; "
            f"server.workers = {config.server.workers} needs SQLite or PostgreSQL"
        )
    if config.database.pool_min_size < 1 or config.database.pool_max_size < max(
        1, config.database.pool_min_size
    ):
        raise ConfigError(
            "invalid configuration: database.pool_max_size: need 1 <= pool_min_size <= "
            "pool_max_size"
        )
    if not 0 < config.database.statement_timeout_s <= 3600:
        raise ConfigError(
            "invalid configuration: database.statement_timeout_s: need more than 0 and at "
            f"most 3600 (got {config.database.statement_timeout_s})"
        )


def _check_llm(config: Config) -> None:
    llm = config.llm

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"invalid configuration: llm.{key}: {message}")

    for key in ("total_timeout_s", "circuit_failures", "circuit_cooldown_s"):
        if not getattr(llm, key) > 0:
            fail(key, f"must be > 0, got {getattr(llm, key)}")
    if not 0 < llm.latency_alpha <= 1:
        fail("latency_alpha", f"must be in (0, 1], got {llm.latency_alpha}")
    if llm.providers and llm.total_timeout_s >= config.limits.handler_timeout_s:
        fail(
            "total_timeout_s",
            f"{llm.total_timeout_s:g} s must be below limits.handler_timeout_s "
            f"({config.limits.handler_timeout_s:g} s), which would cut the call off first",
        )
    names: set[str] = set()
    for i, provider in enumerate(llm.providers):
        where = f"providers[{i}]"
        if provider.name in names or not re.fullmatch(r"[A-Za-z0-9_.-]+", provider.name):
            fail(f"{where}.name", f"must be unique and [A-Za-z0-9_.-]+, got {provider.name!r}")
        names.add(provider.name)
        if urlsplit(provider.base_url).scheme not in ("http", "https"):
            fail(f"{where}.base_url", f"not an http(s) URL: {mask_url(provider.base_url)!r}")
        for key in ("weight", "timeout_s", "connect_timeout_s", "max_connections"):
            if not getattr(provider, key) > 0:
                fail(f"{where}.{key}", f"must be > 0, got {getattr(provider, key)}")
        for key in ("requests_per_minute", "tokens_per_minute"):
            if getattr(provider, key) < 0:
                fail(f"{where}.{key}", "must be >= 0")
        models: set[str] = set()
        for j, model in enumerate(provider.models):
            if not model.name or model.name in models:
                fail(f"{where}.models[{j}].name", f"must be unique and non-empty: {model.name!r}")
            models.add(model.name)
            for key in ("input_cost_per_token", "output_cost_per_token", "latency_ms"):
                if not getattr(model, key) >= 0:
                    fail(f"{where}.models[{j}].{key}", "must be >= 0")
            if model.context_window <= 0:
                fail(f"{where}.models[{j}].context_window", "must be > 0")
    for alias, req in llm.aliases.items():
        for provider_name in req.preferred_providers:
            if provider_name not in names:
                fail(f"aliases.{alias}.preferred_providers", f"unknown provider {provider_name!r}")
    for tenant, budget in llm.budgets.items():
        for key in ("requests_per_day", "tokens_per_day", "cost_per_day"):
            if not getattr(budget, key) >= 0:
                fail(f"budgets.{tenant}.{key}", "must be >= 0")


def process_environment() -> Mapping[str, str]:
    """The process's environment variables, for the edges that build the app.

    Only this module and the CLI read the environment; the entry points a
    server imports by name (``server.py``'s worker factories,
    ``a2a_protocol/main.py``) get it here, and pass it on to the app, which
    reads the credential variables its configuration names.
    """
    return os.environ


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults < TOML file < environment < ``overrides`` (flags)."""
    file_layer: dict[str, Any] = {}
    env = os.environ if environ is None else environ
    if path is None and env.get("AGENTCORE_CONFIG"):
        path = env["AGENTCORE_CONFIG"]
    if path is not None:
        try:
            with open(path, "rb") as fh:
                file_layer = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    return build_config(file_layer, env_overrides(env), overrides or {})


#: Query (and fragment) parameter names whose values are masked: any name containing
#: one of these, case and ``-``/``_`` ignored (``api_key``, ``X-Amz-Signature``,
#: ``access_token``, ``sig``, ``authorization``...). Masking a harmless value costs nothing.
SECRET_PARAMETERS = re.compile(r"key|token|secret|pass|pwd|sig|auth|credential|session|cookie")


def mask_url(url: str) -> str:
    """``url`` safe to print: credentials replaced with ``***``.

    The password of the userinfo (``user:***@``; a lone user name, often a token, becomes
    ``***@``) and the value of every secret-looking query or fragment parameter
    (:data:`SECRET_PARAMETERS`). The rest is kept as written; text that is not a
    parseable URL is masked whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query, fragment = _mask_parameters(parts.query), _mask_parameters(parts.fragment)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _mask_parameters(text: str) -> str:
    pairs = []
    for pair in text.split("&"):
        name, eq, value = pair.partition("=")
        secret = SECRET_PARAMETERS.search(name.lower().replace("-", "").replace("_", ""))
        pairs.append(f"{name}=***" if eq and value and secret else pair)
    return "&".join(pairs)


def _mask_urls(data: Any) -> Any:
    """Every string in ``data`` (nested dicts and lists) that has a ``scheme://``, masked."""
    if isinstance(data, dict):
        return {k: _mask_urls(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_mask_urls(v) for v in data]
    if isinstance(data, str) and "://" in data:
        return mask_url(data)
    return data


def to_masked_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked: every URL
    (:func:`mask_url`), and the JWT secret."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    data["database"]["effective_url"] = config.database_url
    data = _mask_urls(data)
    if config.auth.jwt_secret:
        data["auth"]["jwt_secret"] = "***"
    return data
