"""Who a caller is and what it may do: :class:`Identity` and the :data:`SCOPES`.

Credentials of every kind (API keys in ``apikeys.py``, JWTs in ``tokens.py``)
become an :class:`Identity`; ``auth.py`` puts it in the ASGI scope under
:data:`IDENTITY`, and every endpoint reads it from there. The vocabulary lives
apart from the code that checks credentials, so a feature that only asks
"who is this, and may they?" depends on this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agentcore.errors import Forbidden
from agentcore.models import DEFAULT_TENANT

#: Where the caller's :class:`Identity` is kept in the ASGI scope.
IDENTITY = "agentcore.identity"

#: Scopes a credential can carry; ``admin`` implies all of them. ``metrics:read``
#: reads /metrics, which spans every tenant: an operator's scope, not a default one.
SCOPES = frozenset(
    {
        "metrics:read",
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
