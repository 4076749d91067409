"""Rate limiting, with the standard headers: the third check of the protection
chain (protection.py), for HTTP requests.

Identity: the authenticated API key or token (``agentcore.identity`` in the
scope, set by the authentication check), else the client IP (see proxies.py). The
limit: per API key, else per tenant, else per route class, else the default.
Each identity is counted apart per limit name, so route classes do not share
a quota.

Every limited response, 2xx and 429 alike, carries ``RateLimit-Policy`` and
``RateLimit`` (draft-ietf-httpapi-ratelimit-headers), ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (seconds until the quota
is full again); a 429 also ``Retry-After`` in whole seconds, at least 1.
Open routes (health, metrics, the well-known documents) are not limited.
If the Redis backend cannot answer, ``rate_limit.on_backend_error`` decides:
``open`` lets the request through unlimited, ``closed`` refuses it with 503
(``StoreUnavailable``, ``Retry-After: 1``; also counted in
``agentcore_rejected_total{reason="ratelimit_backend_down"}``); both are
counted in ``agentcore_ratelimit_backend_errors_total{outcome}``. The outage
is logged once when it starts and once when the backend answers again.
"""

from __future__ import annotations

import logging
import math
from typing import get_args

from agentcore.config import RateLimitConfig
from agentcore.errors import RateLimited, StoreUnavailable
from agentcore.http import Admission, add_response_headers, refusal
from agentcore.identity import IDENTITY, Identity
from agentcore.metrics import Metrics
from agentcore.proxies import TrustedProxies
from agentcore.ratelimit.base import Decision, Limit, RateLimiter
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.routing import RouteClass, route_class
from agentcore.types import ASGIApp, Scope

log = logging.getLogger("agentcore.ratelimit")

Headers = list[tuple[bytes, bytes]]
#: Distinct paths whose route class is remembered (beyond it, computed each time).
CLASS_CACHE_ENTRIES = 4096
#: Distinct (limit, remaining, reset) header sets remembered (the first ones seen).
HEADER_CACHE_ENTRIES = 4096


class RateLimitCheck:
    def __init__(
        self,
        limiter: RateLimiter,
        config: RateLimitConfig,
        proxies: TrustedProxies,
        metrics: Metrics | None = None,
    ) -> None:
        self.limiter = limiter
        self.proxies = proxies
        self._metrics = metrics
        self._fail_open = config.on_backend_error == "open"
        #: Whether the last check through the shared backend failed (logs the
        #: outage once when it starts and once when it ends, not per request).
        self._backend_down = False
        self._default = Limit("default", config.rate, config.burst)
        # Every class has its own quota, at the default rate unless configured.
        self._classes: dict[str, Limit] = {
            k: Limit(k, config.rate, config.burst) for k in get_args(RouteClass)
        }
        self._classes.update({k: Limit(k, v.rate, v.burst) for k, v in config.classes.items()})
        self._tenants = {
            k: Limit(f"tenant-{k}", v.rate, v.burst) for k, v in config.tenants.items()
        }
        self._keys = {k: Limit(f"key-{k}", v.rate, v.burst) for k, v in config.keys.items()}
        #: Per limit: the policy header, the start of the RateLimit value, the limit header.
        self._fixed: dict[Limit, tuple[tuple[bytes, bytes], bytes, tuple[bytes, bytes]]] = {}
        self._path_classes: dict[str, RouteClass | None] = {}
        #: Under load most answers repeat (same limit, remaining and reset): built once.
        self._header_sets: dict[tuple[Limit, int, int], Headers] = {}
        #: The in-process backend decides without awaiting anything: called directly.
        self._hit_now = limiter.hit_now if isinstance(limiter, MemoryRateLimiter) else None

    def limit_for(self, cls: str, identity: Identity | None) -> Limit:
        if identity is not None and identity.kind != "anonymous":
            found = self._keys.get(identity.subject) or self._tenants.get(identity.tenant)
            if found is not None:
                return found
        return self._classes.get(cls, self._default)

    def _headers(self, d: Decision) -> Headers:
        """The headers of a decision; the returned list is shared: copy before changing it.

        Under a limit far above the load most answers repeat (same limit,
        remaining and reset) and come from a cache; under a high burst the
        remaining count differs per request and only its numbers are formatted.
        """
        reset_s = math.ceil(d.reset_s)
        key = (d.limit, d.remaining, reset_s)
        found = self._header_sets.get(key)
        if found is None:
            found = self._build_headers(d.limit, d.remaining, reset_s)
            if len(self._header_sets) < HEADER_CACHE_ENTRIES:
                self._header_sets[key] = found
        return found

    def _build_headers(self, limit: Limit, remaining_n: int, reset_s: int) -> Headers:
        fixed = self._fixed.get(limit)
        if fixed is None:
            policy = f'"{limit.name}";q={limit.burst};w={limit.window_s}'.encode()
            fixed = self._fixed[limit] = (
                (b"ratelimit-policy", policy),
                b'"' + limit.name.encode() + b'";r=',
                (b"x-ratelimit-limit", b"%d" % limit.burst),
            )
        policy_header, prefix, limit_header = fixed
        remaining = b"%d" % remaining_n
        reset = b"%d" % reset_s
        return [
            policy_header,
            (b"ratelimit", prefix + remaining + b";t=" + reset),
            limit_header,
            (b"x-ratelimit-remaining", remaining),
            (b"x-ratelimit-reset", reset),
        ]

    def _class_of(self, path: str) -> RouteClass | None:
        try:
            return self._path_classes[path]
        except KeyError:
            cls = route_class(path)
            if len(self._path_classes) < CLASS_CACHE_ENTRIES:
                self._path_classes[path] = cls
            return cls

    def admit(self, scope: Scope) -> Admission:
        """For an HTTP request: count it, and its headers (in the scope); the 429
        answer when over its limit; None: go on. The in-process backend decides
        without an await; another gives a coroutine that decides."""
        cls = self._class_of(scope["path"])
        if cls is None:
            return None
        identity: Identity | None = scope.get(IDENTITY)
        if identity is None or identity.kind == "anonymous":
            key = "ip:" + self.proxies.client_ip(scope)
        else:
            key = f"{identity.kind}:{identity.subject}"
        limit = self.limit_for(cls, identity)
        if self._hit_now is not None:
            return self._decided(scope, cls, limit, self._hit_now(key, limit, 1))
        return self._hit(scope, cls, key, limit)

    async def _hit(self, scope: Scope, cls: str, key: str, limit: Limit) -> ASGIApp | None:
        try:
            decision = await self.limiter.hit(key, limit)
        except StoreUnavailable as exc:
            return self._backend_failed(scope, exc)
        if self._backend_down:
            self._backend_down = False
            log.warning("rate limiting: the backend answers again; limits apply")
        return self._decided(scope, cls, limit, decision)

    def _backend_failed(self, scope: Scope, exc: StoreUnavailable) -> ASGIApp | None:
        """Admit (``on_backend_error = open``) or refuse with 503 (``closed``) a request
        the backend could not check."""
        if not self._backend_down:
            self._backend_down = True
            what = "rate limit check skipped" if self._fail_open else "requests refused"
            log.warning(
                "%s while the backend is unavailable (rate_limit.on_backend_error = %s): %s",
                what,
                "open" if self._fail_open else "closed",
                exc.message,
            )
        metrics = self._metrics
        if self._fail_open:
            if metrics is not None:
                metrics.ratelimit_backend_errors.labels("admitted").inc()
            return None
        if metrics is not None:
            metrics.ratelimit_backend_errors.labels("refused").inc()
            metrics.rejected.labels("ratelimit_backend_down").inc()
        return refusal(
            scope,
            StoreUnavailable(
                f"rate limiting is unavailable ({exc.message}); requests are refused until "
                "it is back (rate_limit.on_backend_error = closed)"
            ),
            [(b"retry-after", b"1")],
        )

    def _decided(self, scope: Scope, cls: str, limit: Limit, decision: Decision) -> ASGIApp | None:
        headers = self._headers(decision)
        if decision.allowed:
            add_response_headers(scope, headers)
            return None
        headers = [*headers]
        if self._metrics is not None:
            self._metrics.rate_limited.labels(cls).inc()
        retry = max(1, math.ceil(decision.retry_after_s))
        headers.append((b"retry-after", str(retry).encode()))
        return refusal(
            scope,
            RateLimited(
                f"rate limit of {limit.rate:g} requests/s (burst {limit.burst}) exceeded; "
                f"retry after {retry} s",
                data={"retry_after_s": retry, "policy": limit.name},
            ),
            headers,
        )
