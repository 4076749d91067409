"""The one error tree of the gateway.

Every error the gateway raises on purpose derives from :class:`AgentCoreError`
and carries, as class attributes, the HTTP status and the JSON-RPC 2.0 error
code that render it. One boundary (the HTTP dispatch in ``app.py`` and the
JSON-RPC dispatcher in ``jsonrpc.py``) turns any of them into a JSON body, so a
handler only ever ``raise``\\ s.

::

    AgentCoreError                  500  -32603  (a bug: never raised on purpose)
    ├── ConfigError                  -      -    bad configuration, stops startup
    ├── StoreUnavailable            503  -32000  the database (or Redis) cannot be reached
    │   └── QueryTimeout            503  -32014  a statement ran past its time limit, stopped
    ├── Overloaded                  503  -32030  load shed: too many requests in flight
    ├── HandlerTimeout              503  -32032  the handler ran past limits.handler_timeout_s
    ├── ProviderError               502  -32060  every LLM provider tried failed
    │   └── ProviderTimeout         504  -32061  ... or llm.total_timeout_s ran out
    ├── StorageUnavailable          503  -32053  the blob storage backend cannot be reached
    └── ClientError                 400  -32600  the caller's fault (any 4xx)
        ├── ParseError              400  -32700  body is not JSON
        ├── InvalidRequest          400  -32600  JSON, but not a valid request
        ├── MethodNotFound          404  -32601  unknown JSON-RPC method
        ├── InvalidParams           400  -32602  params fail validation (names the field)
        ├── NotFound                404  -32004  unknown HTTP route
        ├── MethodNotAllowed        405  -32600  known route, wrong HTTP method
        ├── PayloadTooLarge         413  -32600  body above the configured limit
        ├── UnsupportedMediaType    415  -32600  not application/json
        ├── AgentNotFound           404  -32001
        ├── TaskNotFound            404  -32002
        ├── InvalidTransition       409  -32003  task state machine refused the change
        ├── NoCapableAgent          409  -32005  (only when a caller demands assignment)
        ├── AgentAlreadyExists      409  -32006  register without override_existing
        ├── TaskAlreadyExists       409  -32008  task.create with an id in use
        ├── Forbidden               403  -32007  missing scope, or acting for another agent
        ├── MisdirectedRequest      421  -32600  a Host this gateway does not answer to (auth off)
        ├── Unauthorized            401  -32010  missing or invalid credentials
        ├── RequestTimeout          408  -32031  the body (or a request head) came too slowly
        ├── HeadersTooLarge         431  -32600  request head above the size or header count limit
        ├── RateLimited             429  -32029  over the client's rate limit
        │   └── BudgetExceeded      429  -32064  the tenant's daily LLM budget is used up
        ├── NoModelAvailable        422  -32062  no LLM model meets the requirements (names which)
        ├── ModelNotFound           404  -32063  ``model`` names no LLM model or alias
        ├── ProviderRejected        400  -32065  an LLM provider refused the request as malformed
        ├── ObjectNotFound          404  -32050  no stored object under that key (for the tenant)
        ├── InvalidKey              400  -32051  storage key refused (traversal, length, characters)
        └── RangeNotSatisfiable     416  -32052  Range outside the object

JSON-RPC codes -32001..-32099 are the server-defined range of the spec; the
table above is the documented meaning of each (see docs/api.md).
"""

from __future__ import annotations

from typing import Any, ClassVar


class AgentCoreError(Exception):
    """Root of every gateway error; as such it means an internal error."""

    status: ClassVar[int] = 500
    code: ClassVar[int] = -32603
    title: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str = "",
        data: dict[str, Any] | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message or self.title.replace("_", " "))
        self.message = message or self.title.replace("_", " ")
        self.data = data
        #: Extra HTTP response headers (e.g. ``Allow`` on 405).
        self.headers = headers

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message, "type": self.title}
        if self.data is not None:
            body["data"] = self.data
        return body


class ConfigError(AgentCoreError):
    """The configuration is invalid; the message names the key."""

    title = "config_error"


class StoreUnavailable(AgentCoreError):
    status = 503
    code = -32000
    title = "store_unavailable"


class QueryTimeout(StoreUnavailable):
    """A store statement ran past its time limit and was stopped (so it could not
    stall the other requests)."""

    code = -32014
    title = "query_timeout"


class ClientError(AgentCoreError):
    status = 400
    code = -32600
    title = "bad_request"


class ParseError(ClientError):
    code = -32700
    title = "parse_error"


class InvalidRequest(ClientError):
    code = -32600
    title = "invalid_request"


class MethodNotFound(ClientError):
    status = 404
    code = -32601
    title = "method_not_found"


class InvalidParams(ClientError):
    code = -32602
    title = "invalid_params"


class NotFound(ClientError):
    status = 404
    code = -32004
    title = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    title = "method_not_allowed"


class PayloadTooLarge(ClientError):
    status = 413
    title = "payload_too_large"


class UnsupportedMediaType(ClientError):
    status = 415
    title = "unsupported_media_type"


class AgentNotFound(ClientError):
    status = 404
    code = -32001
    title = "agent_not_found"


class TaskNotFound(ClientError):
    status = 404
    code = -32002
    title = "task_not_found"


class InvalidTransition(ClientError):
    status = 409
    code = -32003
    title = "invalid_state_transition"


class NoCapableAgent(ClientError):
    status = 409
    code = -32005
    title = "no_capable_agent"


class AgentAlreadyExists(ClientError):
    status = 409
    code = -32006
    title = "agent_already_exists"


class Forbidden(ClientError):
    status = 403
    code = -32007
    title = "forbidden"


class MisdirectedRequest(ClientError):
    status = 421
    title = "misdirected_request"


class Unauthorized(ClientError):
    status = 401
    code = -32010
    title = "unauthorized"


class RequestTimeout(ClientError):
    status = 408
    code = -32031
    title = "request_timeout"


class HeadersTooLarge(ClientError):
    status = 431
    title = "headers_too_large"


class RateLimited(ClientError):
    status = 429
    code = -32029
    title = "rate_limited"


class Overloaded(AgentCoreError):
    status = 503
    code = -32030
    title = "overloaded"


class HandlerTimeout(AgentCoreError):
    status = 503
    code = -32032
    title = "handler_timeout"


class TaskAlreadyExists(ClientError):
    status = 409
    code = -32008
    title = "task_already_exists"


class ObjectNotFound(ClientError):
    status = 404
    code = -32050
    title = "object_not_found"


class InvalidKey(ClientError):
    code = -32051
    title = "invalid_key"


class RangeNotSatisfiable(ClientError):
    status = 416
    code = -32052
    title = "range_not_satisfiable"


class StorageUnavailable(AgentCoreError):
    status = 503
    code = -32053
    title = "storage_unavailable"


class WebhookNotFound(ClientError):
    status = 404
    code = -32040
    title = "webhook_not_found"


class UnsafeUrl(ClientError):
    """A webhook URL that is malformed or resolves to a refused address (SSRF policy)."""

    status = 422
    code = -32041
    title = "unsafe_url"


class ProviderError(AgentCoreError):
    """An LLM provider failed (5xx, 429, 401/403, connection error, bad answer).

    Raised by a provider for one attempt, where the router falls back to the
    next candidate; reaches the caller only when every candidate failed.
    """

    status = 502
    code = -32060
    title = "provider_error"


class ProviderTimeout(ProviderError):
    status = 504
    code = -32061
    title = "provider_timeout"


class BudgetExceeded(RateLimited):
    code = -32064
    title = "budget_exceeded"


class NoModelAvailable(ClientError):
    """No configured model meets the requirements; ``data`` names the unmet ones."""

    status = 422
    code = -32062
    title = "no_model_available"


class ModelNotFound(ClientError):
    status = 404
    code = -32063
    title = "model_not_found"


class ProviderRejected(ClientError):
    """The provider answered 400/404/413/422: the caller's request is at fault, so
    no other provider is tried. ``data.provider_status`` holds the provider's status."""

    code = -32065
    title = "provider_rejected"
