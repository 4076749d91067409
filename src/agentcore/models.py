"""The wire and storage types of agents and tasks.

These msgspec structs are the single source of truth: they validate JSON-RPC
params, encode results, are stored as JSON by the stores, and generate
``/openapi.json`` and ``/api/v1/jsonrpc/methods``. Constraints here (lengths,
ranges) are the limits a caller sees in ``-32602`` messages.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

#: ``(?!\n)``: msgspec matches with Python's ``re``, whose ``$`` also matches before a
#: final newline; the ECMA 262 ``$`` of JSON Schema (and of /openapi.json) does not.
Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$(?!\n)")]
#: No U+0000: names and labels are stored in TEXT columns, and PostgreSQL refuses it there.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Meta(min_length=1, max_length=256, pattern=NO_NUL)]
Text = Annotated[str, Meta(max_length=8192)]
Label = Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_NUL)]
#: Glob on agent names, ``*`` and ``?`` wildcards, case-insensitive.
NamePattern = Annotated[str, Meta(max_length=256, pattern=NO_NUL)]
#: The stores' integers are signed 64-bit; a larger page bound cannot reach the database.
MAX_INT64 = 2**63 - 1
Limit = Annotated[int, Meta(ge=1, le=MAX_INT64)]
Offset = Annotated[int, Meta(ge=0, le=MAX_INT64)]
#: ``next_cursor`` of the previous page (``agentcore.cursor``).
Cursor = Annotated[str, Meta(min_length=1, max_length=512)]
PriorityInt = Annotated[int, Meta(ge=1, le=10)]
PriorityName = Literal["low", "normal", "high", "critical"]

PRIORITY_NAMES: dict[str, int] = {"low": 3, "normal": 5, "high": 8, "critical": 10}

DEFAULT_TENANT = "default"


class _Wire(msgspec.Struct, kw_only=True, omit_defaults=False):
    pass


# -- agents -------------------------------------------------------------------


class AgentStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class Capability(_Wire, kw_only=True):
    """A capability given as an object; plain strings are accepted too."""

    name: Label
    version: str | None = None
    description: Text | None = None
    cost_per_request: Annotated[float, Meta(ge=0)] | None = None
    avg_latency_ms: Annotated[float, Meta(ge=0)] | None = None


class Endpoint(_Wire, kw_only=True):
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    type: Label = "http"
    protocols: list[Label] = []


class AgentCard(_Wire, kw_only=True):
    """What an agent says about itself when it registers.

    Accepts the seed load tests' shape (``capabilities`` as strings,
    ``endpoints[{url,type,protocols}]``) and capability objects. Fields not
    listed here are ignored.
    """

    name: Name
    agent_id: Id | None = None
    version: Label = "1.0.0"
    description: Text = ""
    capabilities: Annotated[list[Label | Capability], Meta(max_length=256)] = []
    endpoints: Annotated[list[Endpoint], Meta(max_length=64)] = []
    tags: Annotated[list[Label], Meta(max_length=64)] = []
    metadata: dict[str, Any] = {}

    def capability_names(self) -> list[str]:
        names = {c if isinstance(c, str) else c.name for c in self.capabilities}
        return sorted(names)


class Agent(_Wire, kw_only=True):
    """A registered agent as the registry returns it."""

    agent_id: str
    name: str
    version: str
    status: AgentStatus
    capabilities: list[str]
    tags: list[str]
    card: AgentCard
    tenant: str = DEFAULT_TENANT
    registered_at: float
    updated_at: float
    last_seen: float


class AgentQuery(_Wire, kw_only=True, forbid_unknown_fields=True):
    """Filters of ``agent.list`` / ``agent.discover``; all given filters must match."""

    capabilities: list[Label] = []
    tags: list[Label] = []
    status: AgentStatus | None = None
    #: Glob on the name, ``*`` and ``?`` wildcards, case-insensitive.
    name_pattern: NamePattern | None = None
    tenant: str | None = None
    limit: Limit = 100
    offset: Offset = 0
    #: Continue after this cursor (the previous page's ``next_cursor``).
    after: Cursor | None = None


# -- tasks --------------------------------------------------------------------


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT}
)
ACTIVE_TASK = frozenset({TaskStatus.ASSIGNED, TaskStatus.RUNNING})


class TaskDefinition(_Wire, kw_only=True):
    """What ``task.create`` accepts. ``title`` and ``name`` are synonyms."""

    task_id: Id | None = None
    type: Label = "generic"
    title: Name | None = None
    name: Name | None = None
    description: Text = ""
    required_capabilities: Annotated[list[Label], Meta(max_length=64)] = []
    parameters: dict[str, Any] = {}
    input: Any = None
    priority: PriorityInt | PriorityName = "normal"
    max_retries: Annotated[int, Meta(ge=0, le=100)] | None = None
    #: Seconds from assignment until an unfinished task becomes ``timed_out``.
    timeout_seconds: Annotated[float, Meta(gt=0)] | None = None
    metadata: dict[str, Any] = {}


class Task(_Wire, kw_only=True):
    task_id: str
    type: str
    title: str
    description: str
    required_capabilities: list[str]
    parameters: dict[str, Any]
    input: Any = None
    priority: int
    status: TaskStatus
    agent_id: str | None = None
    progress: float = 0.0
    step: str | None = None
    result: Any = None
    error: Any = None
    artifacts: list[Any] = []
    retries: int = 0
    max_retries: int = 0
    timeout_seconds: float | None = None
    #: Epoch seconds after which an assigned or running task times out.
    deadline: float | None = None
    tenant: str = DEFAULT_TENANT
    metadata: dict[str, Any] = {}
    created_at: float
    updated_at: float
    started_at: float | None = None
    completed_at: float | None = None
    #: Optimistic-concurrency counter; every stored change increments it.
    version: int = 0


class TaskQuery(_Wire, kw_only=True, forbid_unknown_fields=True):
    status: TaskStatus | None = None
    agent_id: Id | None = None
    type: Label | None = None
    priority: PriorityInt | PriorityName | None = None
    created_after: float | None = None
    created_before: float | None = None
    tenant: str | None = None
    limit: Limit = 100
    offset: Offset = 0
    #: Continue after this cursor (the previous page's ``next_cursor``).
    after: Cursor | None = None


def priority_value(priority: int | str) -> int:
    return priority if isinstance(priority, int) else PRIORITY_NAMES[priority]
