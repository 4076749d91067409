"""The JSON-RPC method table: names, param types and handlers of the A2A API.

Param types are msgspec structs, so the table also documents itself:
``/api/v1/jsonrpc/methods`` and ``/openapi.json`` are generated from it.
When the caller is authenticated as an agent (``Context.agent_id``), that
identity wins over any ``agent_id`` in the params.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from agentcore import cursor
from agentcore.jsonrpc import Context, Method
from agentcore.models import (
    Agent,
    AgentCard,
    AgentQuery,
    AgentStatus,
    Cursor,
    Id,
    Label,
    Limit,
    NamePattern,
    Offset,
    Task,
    TaskDefinition,
    TaskQuery,
    Text,
)
from agentcore.registry.service import PingResult, Registry
from agentcore.tasks.service import TaskService


class _Params(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class RegisterParams(_Params, kw_only=True):
    agent_card: AgentCard
    override_existing: bool = False


class AgentIdParams(_Params, kw_only=True):
    agent_id: Id


class ListAgentsParams(_Params, kw_only=True):
    status: AgentStatus | None = None
    limit: Limit = 100
    offset: Offset = 0
    #: The previous page's ``next_cursor``.
    after: Cursor | None = None


class DiscoverParams(_Params, kw_only=True):
    capabilities: Annotated[list[Label], Meta(max_length=64)] = []
    tags: Annotated[list[Label], Meta(max_length=64)] = []
    status: AgentStatus | None = None
    name_pattern: NamePattern | None = None
    limit: Limit = 100
    offset: Offset = 0
    #: The previous page's ``next_cursor``.
    after: Cursor | None = None


class CreateTaskParams(_Params, kw_only=True):
    task_definition: TaskDefinition


class TaskIdParams(_Params, kw_only=True):
    task_id: Id


class TaskActorParams(_Params, kw_only=True):
    task_id: Id
    #: The agent acting; must be the task's assignee when given.
    agent_id: Id | None = None


class UpdateTaskParams(TaskActorParams, kw_only=True):
    progress: Annotated[float, Meta(ge=0, le=100)] | None = None
    step: Text | None = None


class CompleteTaskParams(TaskActorParams, kw_only=True):
    result: Any = None
    artifacts: Annotated[list[Any], Meta(max_length=1000)] = []


class FailTaskParams(TaskActorParams, kw_only=True):
    error: Any = None


class CancelTaskParams(_Params, kw_only=True):
    task_id: Id
    reason: Text | None = None


class Registered(msgspec.Struct, kw_only=True):
    agent_id: str
    status: AgentStatus
    agent: Agent


class AgentList(msgspec.Struct, kw_only=True):
    agents: list[Agent]
    count: int
    limit: int
    offset: int
    #: Pass as ``after`` for the next page; null on the last page.
    next_cursor: str | None = None


class TaskList(msgspec.Struct, kw_only=True):
    tasks: list[Task]
    count: int
    limit: int
    offset: int
    #: Pass as ``after`` for the next page; null on the last page.
    next_cursor: str | None = None


class Unregistered(msgspec.Struct, kw_only=True):
    agent_id: str
    unregistered: bool = True


def _page(limit: int, max_page: int) -> int:
    return min(limit, max_page)


def _agent_page(agents: list[Agent], limit: int, offset: int) -> AgentList:
    last = agents[-1] if len(agents) == limit else None
    return AgentList(
        agents=agents,
        count=len(agents),
        limit=limit,
        offset=offset,
        next_cursor=None if last is None else cursor.encode(last.name, last.agent_id),
    )


def _task_page(tasks: list[Task], limit: int, offset: int) -> TaskList:
    last = tasks[-1] if len(tasks) == limit else None
    return TaskList(
        tasks=tasks,
        count=len(tasks),
        limit=limit,
        offset=offset,
        next_cursor=None if last is None else cursor.encode(last.created_at, last.task_id),
    )


def build_methods(registry: Registry, tasks: TaskService, max_page: int) -> list[Method[Any]]:
    def actor(params_agent: str | None, ctx: Context) -> str | None:
        """The acting agent: the credential's own agent wins, and must match the params'."""
        if ctx.agent_id is not None:
            ctx.require_agent(params_agent or ctx.agent_id)
            return ctx.agent_id
        return params_agent

    async def register(p: RegisterParams, ctx: Context) -> Registered:
        card = p.agent_card
        if ctx.agent_id is not None:
            ctx.require_agent(card.agent_id or ctx.agent_id)
            card = msgspec.structs.replace(card, agent_id=ctx.agent_id)
        agent = await registry.register(card, override=p.override_existing, tenant=ctx.tenant)
        return Registered(agent_id=agent.agent_id, status=agent.status, agent=agent)

    async def get_agent(p: AgentIdParams, ctx: Context) -> Agent:
        return await registry.get(p.agent_id, ctx.tenant)

    async def list_agents(p: ListAgentsParams, ctx: Context) -> AgentList:
        limit = _page(p.limit, max_page)
        agents = await registry.query(
            AgentQuery(
                status=p.status, tenant=ctx.tenant, limit=limit, offset=p.offset, after=p.after
            )
        )
        return _agent_page(agents, limit, p.offset)

    async def discover(p: DiscoverParams, ctx: Context) -> AgentList:
        limit = _page(p.limit, max_page)
        agents = await registry.discover(
            AgentQuery(
                capabilities=p.capabilities,
                tags=p.tags,
                status=p.status,
                name_pattern=p.name_pattern,
                tenant=ctx.tenant,
                limit=limit,
                offset=p.offset,
                after=p.after,
            )
        )
        return _agent_page(agents, limit, p.offset)

    async def ping(p: AgentIdParams, ctx: Context) -> PingResult:
        ctx.require_agent(p.agent_id)
        return await registry.ping(p.agent_id, ctx.tenant)

    async def unregister(p: AgentIdParams, ctx: Context) -> Unregistered:
        ctx.require_agent(p.agent_id)
        await registry.unregister(p.agent_id, ctx.tenant)
        return Unregistered(agent_id=p.agent_id)

    async def create_task(p: CreateTaskParams, ctx: Context) -> Task:
        return await tasks.create(p.task_definition, tenant=ctx.tenant)

    async def get_task(p: TaskIdParams, ctx: Context) -> Task:
        return await tasks.get(p.task_id, ctx.tenant)

    async def query_tasks(p: TaskQuery, ctx: Context) -> TaskList:
        limit = _page(p.limit, max_page)
        query = msgspec.structs.replace(p, tenant=ctx.tenant, limit=limit)
        found = await tasks.query(query)
        return _task_page(found, limit, p.offset)

    async def start_task(p: TaskActorParams, ctx: Context) -> Task:
        return await tasks.start(p.task_id, actor(p.agent_id, ctx), tenant=ctx.tenant)

    async def update_task(p: UpdateTaskParams, ctx: Context) -> Task:
        return await tasks.update(
            p.task_id,
            progress=p.progress,
            step=p.step,
            agent_id=actor(p.agent_id, ctx),
            tenant=ctx.tenant,
        )

    async def complete_task(p: CompleteTaskParams, ctx: Context) -> Task:
        return await tasks.complete(
            p.task_id,
            result=p.result,
            artifacts=p.artifacts,
            agent_id=actor(p.agent_id, ctx),
            tenant=ctx.tenant,
        )

    async def fail_task(p: FailTaskParams, ctx: Context) -> Task:
        return await tasks.fail(
            p.task_id, error=p.error, agent_id=actor(p.agent_id, ctx), tenant=ctx.tenant
        )

    async def cancel_task(p: CancelTaskParams, ctx: Context) -> Task:
        return await tasks.cancel(
            p.task_id, reason=p.reason, agent_id=ctx.agent_id, tenant=ctx.tenant
        )

    return [
        Method(
            "agent.register",
            RegisterParams,
            register,
            Registered,
            "Register an agent card; fails with -32006 if the id exists unless "
            "override_existing is true.",
            scope="agents:write",
        ),
        Method(
            "agent.get", AgentIdParams, get_agent, Agent, "One agent by id.", scope="agents:read"
        ),
        Method(
            "agent.list",
            ListAgentsParams,
            list_agents,
            AgentList,
            "All agents, optionally by status, ordered by name; page with after=next_cursor.",
            scope="agents:read",
        ),
        Method(
            "agent.discover",
            DiscoverParams,
            discover,
            AgentList,
            "Agents having ALL the given capabilities and tags; active only unless "
            "a status is given; name_pattern is a case-insensitive glob; ordered by name, "
            "page with after=next_cursor.",
            scope="agents:read",
        ),
        Method(
            "agent.ping",
            AgentIdParams,
            ping,
            PingResult,
            "Heartbeat; brings an inactive agent back to active.",
            scope="agents:write",
        ),
        Method(
            "agent.unregister",
            AgentIdParams,
            unregister,
            Unregistered,
            "Remove an agent; its assigned, unstarted tasks go back to pending.",
            scope="agents:write",
        ),
        Method(
            "task.create",
            CreateTaskParams,
            create_task,
            Task,
            "Create a task; it is assigned at once to the least-loaded active agent "
            "with every required capability, else stays pending.",
            scope="tasks:write",
        ),
        Method("task.get", TaskIdParams, get_task, Task, "One task by id.", scope="tasks:read"),
        Method(
            "task.query",
            TaskQuery,
            query_tasks,
            TaskList,
            "Tasks by status, agent, type, priority and creation time, oldest first; "
            "page with after=next_cursor.",
            scope="tasks:read",
        ),
        Method(
            "task.start",
            TaskActorParams,
            start_task,
            Task,
            "assigned -> running.",
            scope="tasks:write",
        ),
        Method(
            "task.update",
            UpdateTaskParams,
            update_task,
            Task,
            "Report progress (0-100) and the current step of a running task.",
            scope="tasks:write",
        ),
        Method(
            "task.complete",
            CompleteTaskParams,
            complete_task,
            Task,
            "running -> completed, with result and artifacts.",
            scope="tasks:write",
        ),
        Method(
            "task.fail",
            FailTaskParams,
            fail_task,
            Task,
            "Fail an assigned or running task; retried (back to pending) while "
            "retries remain, else failed.",
            scope="tasks:write",
        ),
        Method(
            "task.cancel",
            CancelTaskParams,
            cancel_task,
            Task,
            "Cancel a task that has not finished.",
            scope="tasks:write",
        ),
    ]
