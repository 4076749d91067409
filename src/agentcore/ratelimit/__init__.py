"""Rate limiting: GCRA over an in-process or a Redis backend."""

from agentcore.ratelimit.base import Decision, Limit, RateLimiter

__all__ = ["Decision", "Limit", "RateLimiter"]
