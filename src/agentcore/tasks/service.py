"""Tasks: the explicit state machine and assignment to agents.

::

    pending ──assign──> assigned ──start──> running ──complete──> completed
       │                   │                   │ └──update──> running
       │                   │                   ├──fail (no retries left)──> failed
       │                   ├─ fail/release ────┴──fail (retries left)──> pending
       └──cancel──> cancelled <──cancel── (assigned, running)
                        assigned/running past their deadline ──> timed_out

Every change is a compare-and-set on the task's version, so two workers (or
two requests) cannot both apply a transition; the loser re-reads and is told
the transition is no longer legal. Assignment picks, among active agents that
have every required capability, the one with the fewest assigned plus running
tasks (ties by name, then id); with none the task stays ``pending`` until a
capable agent registers or comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec

from agentcore.clock import Clock
from agentcore.config import TasksConfig
from agentcore.entropy import random_hex
from agentcore.errors import Forbidden, InvalidTransition, TaskAlreadyExists, TaskNotFound
from agentcore.events.base import TASKS_SOURCE
from agentcore.events.log import Change, EventLog
from agentcore.lifecycle import Job, every
from agentcore.models import (
    DEFAULT_TENANT,
    Task,
    TaskDefinition,
    TaskQuery,
    TaskStatus,
    priority_value,
)
from agentcore.tasks.repository import TaskRepository

S = TaskStatus
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.PENDING: frozenset({S.ASSIGNED, S.CANCELLED}),
    S.ASSIGNED: frozenset({S.RUNNING, S.PENDING, S.FAILED, S.CANCELLED, S.TIMED_OUT}),
    S.RUNNING: frozenset({S.RUNNING, S.COMPLETED, S.PENDING, S.FAILED, S.CANCELLED, S.TIMED_OUT}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TIMED_OUT: frozenset(),
}

#: Pending tasks examined per assignment pass.
PENDING_BATCH = 200
#: Compare-and-set attempts before a concurrent change is reported.
CAS_ATTEMPTS = 5


def check_transition(task: Task, target: TaskStatus) -> None:
    if target not in TRANSITIONS[task.status]:
        _refuse(task, target)


class TaskService:
    def __init__(
        self, tasks: TaskRepository, events: EventLog, config: TasksConfig, clock: Clock
    ) -> None:
        self._tasks = tasks
        self._events = events
        self._config = config
        self._clock = clock
        #: The pass over pending tasks in progress, shared by every caller meanwhile.
        self._pass: asyncio.Future[int] | None = None
        self._again = False

    @staticmethod
    def _emit(change: Change, event_type: str, task: Task, **data: object) -> None:
        change.emit(
            event_type,
            {
                "task_id": task.task_id,
                "status": task.status.value,
                "agent_id": task.agent_id,
                **data,
            },
            tenant=task.tenant,
            source=TASKS_SOURCE,
        )

    # -- reads ----------------------------------------------------------------

    async def get(self, task_id: str, tenant: str = DEFAULT_TENANT) -> Task:
        """The tenant's task of that id (another tenant's is a different task)."""
        return _found(await self._tasks.get(tenant, task_id), task_id)

    async def query(self, query: TaskQuery) -> list[Task]:
        return await self._tasks.query(query)

    # -- create and assign ----------------------------------------------------

    async def create(self, definition: TaskDefinition, *, tenant: str = DEFAULT_TENANT) -> Task:
        """Insert the task, assigned at once when a capable agent is active: the row,
        the agent's load and both events in one transaction."""
        now = self._clock()
        max_retries = definition.max_retries
        task = Task(
            task_id=definition.task_id or f"task-{random_hex()}",
            type=definition.type,
            title=definition.title or definition.name or definition.type,
            description=definition.description,
            required_capabilities=sorted(set(definition.required_capabilities)),
            parameters=definition.parameters,
            input=definition.input,
            priority=priority_value(definition.priority),
            status=S.PENDING,
            max_retries=self._config.default_max_retries if max_retries is None else max_retries,
            timeout_seconds=definition.timeout_seconds,
            tenant=tenant,
            metadata=definition.metadata,
            created_at=now,
            updated_at=now,
            version=1,
        )
        async with self._events.change() as change:
            repos = change.repos
            agent_id = await repos.agents.least_loaded(task.required_capabilities, tenant)
            stored = task if agent_id is None else self._assigned(task, agent_id)
            self._emit(change, "task.created", task, type=task.type, priority=task.priority)
            if stored is not task:
                self._emit(change, "task.assigned", stored)
            if not await change.last_write(lambda r: r.tasks.insert(stored)):
                raise TaskAlreadyExists(
                    f"task {task.task_id!r} already exists", data={"task_id": task.task_id}
                )
        return stored

    def _assigned(self, task: Task, agent_id: str) -> Task:
        deadline = self._clock() + task.timeout_seconds if task.timeout_seconds else None
        return self._next(task, S.ASSIGNED, agent_id=agent_id, deadline=deadline)

    async def _try_assign(self, change: Change, task: Task, *, last: bool = False) -> Task | None:
        """Inside ``change``: assign the pending ``task`` to the least-loaded capable agent
        (``last``: as the change's last write)."""
        agent_id = await change.repos.agents.least_loaded(task.required_capabilities, task.tenant)
        if agent_id is None:
            return None
        updated = self._assigned(task, agent_id)
        if last:
            self._emit(change, "task.assigned", updated)
            if not await change.last_write(lambda r: r.tasks.update(updated)):
                return None  # someone else assigned or cancelled it meanwhile
            return updated
        if not await change.repos.tasks.update(updated):
            return None
        self._emit(change, "task.assigned", updated)
        return updated

    async def assign_pending(self) -> int:
        """Try to assign pending tasks (oldest highest-priority first); returns how many.

        One pass at a time per worker: a caller arriving during a pass (another
        agent registering, say) asks for one more round and waits for it, instead
        of starting a pass of its own over the same tasks. Under load, hundreds of
        concurrent registrations each scanning the same pending tasks multiplied
        the store's work and made each registration wait seconds. The shared
        pass is shielded from a caller's cancellation (a request deadline).
        """
        if self._pass is None or self._pass.done():
            self._pass = asyncio.ensure_future(self._assign_pending_rounds())
        else:
            self._again = True
        return await asyncio.shield(self._pass)

    async def _assign_pending_rounds(self) -> int:
        assigned = 0
        again = True
        while again:
            self._again = False
            for task in await self._tasks.pending(PENDING_BATCH):
                async with self._events.change() as change:
                    current = await change.repos.tasks.get(task.tenant, task.task_id)
                    if current is None or current.status is not S.PENDING:
                        continue
                    if await self._try_assign(change, current, last=True) is not None:
                        assigned += 1
            again = self._again
        return assigned

    async def close(self) -> None:
        """Stop a pass over pending tasks still running (at shutdown)."""
        if self._pass is not None and not self._pass.done():
            self._pass.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pass

    async def on_agent_available(self, agent_id: str) -> None:
        await self.assign_pending()

    async def release(self, change: Change, agent_id: str, tenant: str) -> int:
        """Inside ``change``: put the agent's assigned (not yet started) tasks back to
        pending; returns how many. The caller runs :meth:`assign_pending` after the commit.

        The tenant makes the query walk ``tasks_tenant_agent_id`` (the agent's own
        tasks); without it every release scanned the whole table."""
        tasks = await change.repos.tasks.query(
            TaskQuery(
                agent_id=agent_id,
                status=S.ASSIGNED,
                tenant=tenant,
                limit=self._config.max_page_size,
            )
        )
        released = 0
        for task in tasks:
            pending = self._next(task, S.PENDING, agent_id=None, deadline=None)
            if await change.repos.tasks.update(pending):
                self._emit(change, "task.released", pending, previous_agent_id=agent_id)
                released += 1
        return released

    # -- transitions ----------------------------------------------------------

    def _next(self, task: Task, status: TaskStatus, **changes: Any) -> Task:
        check_transition(task, status)
        return msgspec.structs.replace(
            task, status=status, version=task.version + 1, updated_at=self._clock(), **changes
        )

    async def _transition(
        self,
        task_id: str,
        acting_agent: str | None,
        build: Callable[[Task], Task],
        tenant: str,
        emit: Callable[[Change, Task], None],
    ) -> Task:
        """Read, check, write and emit in one change; a concurrent writer (another
        process) makes the compare-and-set fail, and the change is tried again.

        The write is the change's last, unless it put the task back to pending
        (a failure with retries left): then the task is offered to an agent in
        the same change."""
        for _ in range(CAS_ATTEMPTS):
            async with self._events.change() as change:
                task = _found(await change.repos.tasks.get(tenant, task_id), task_id)
                if acting_agent is not None and task.agent_id != acting_agent:
                    raise Forbidden(
                        f"task {task_id!r} is not assigned to agent {acting_agent!r}",
                        data={"task_id": task_id, "agent_id": task.agent_id},
                    )
                written = await self._write(change, build(task), emit)
                if written is not None:
                    return written
        raise InvalidTransition(f"task {task_id!r} is changing concurrently; retry")

    async def _write(
        self, change: Change, updated: Task, emit: Callable[[Change, Task], None]
    ) -> Task | None:
        """Inside ``change``: write ``updated`` and its events; None when the
        compare-and-set found the task changed meanwhile."""
        if updated.status is S.PENDING:
            if not await change.repos.tasks.update(updated):
                return None
            emit(change, updated)
            return await self._try_assign(change, updated) or updated
        emit(change, updated)
        return updated if await change.last_write(lambda r: r.tasks.update(updated)) else None

    def _emitting(self, event_type: str, **data: Any) -> Callable[[Change, Task], None]:
        def emit(change: Change, task: Task) -> None:
            self._emit(change, event_type, task, **data)

        return emit

    async def start(
        self, task_id: str, agent_id: str | None = None, *, tenant: str = DEFAULT_TENANT
    ) -> Task:
        now = self._clock()
        return await self._transition(
            task_id,
            agent_id,
            lambda t: (
                self._next(t, S.RUNNING, started_at=now)
                if t.status is S.ASSIGNED
                else _refuse(t, S.RUNNING)
            ),
            tenant,
            self._emitting("task.started"),
        )

    async def update(
        self,
        task_id: str,
        *,
        progress: float | None,
        step: str | None,
        agent_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Task:
        def build(t: Task) -> Task:
            if t.status is not S.RUNNING:
                _refuse(t, S.RUNNING)
            return self._next(
                t,
                S.RUNNING,
                progress=t.progress if progress is None else progress,
                step=t.step if step is None else step,
            )

        def emit(change: Change, task: Task) -> None:
            self._emit(change, "task.progress", task, progress=task.progress, step=task.step)

        return await self._transition(task_id, agent_id, build, tenant, emit)

    async def complete(
        self,
        task_id: str,
        *,
        result: Any,
        artifacts: list[Any],
        agent_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Task:
        now = self._clock()

        def build(t: Task) -> Task:
            if t.status is not S.RUNNING:
                _refuse(t, S.COMPLETED)
            return self._next(
                t,
                S.COMPLETED,
                result=result,
                artifacts=artifacts,
                progress=100.0,
                completed_at=now,
                deadline=None,
            )

        return await self._transition(
            task_id, agent_id, build, tenant, self._emitting("task.completed")
        )

    async def fail(
        self, task_id: str, *, error: Any, agent_id: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> Task:
        """Fail the task; while retries remain it goes back to pending and is reassigned
        in the same change."""
        now = self._clock()

        def build(t: Task) -> Task:
            if t.status not in (S.ASSIGNED, S.RUNNING):
                _refuse(t, S.FAILED)
            if t.retries < t.max_retries:
                return self._next(
                    t,
                    S.PENDING,
                    error=error,
                    retries=t.retries + 1,
                    agent_id=None,
                    deadline=None,
                    started_at=None,
                    progress=0.0,
                    step=None,
                )
            return self._next(t, S.FAILED, error=error, completed_at=now, deadline=None)

        def emit(change: Change, task: Task) -> None:
            if task.status is S.PENDING:
                self._emit(change, "task.retrying", task, retries=task.retries, error=error)
            else:
                self._emit(change, "task.failed", task, error=error)

        return await self._transition(task_id, agent_id, build, tenant, emit)

    async def cancel(
        self,
        task_id: str,
        *,
        reason: str | None = None,
        agent_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Task:
        now = self._clock()
        return await self._transition(
            task_id,
            agent_id,
            lambda t: self._next(t, S.CANCELLED, error=reason, completed_at=now, deadline=None),
            tenant,
            self._emitting("task.cancelled", reason=reason),
        )

    def jobs(self, sweep_interval_s: float) -> list[Job]:
        """The deadline sweep, every ``sweep_interval_s`` (``registry.sweep_interval_s``,
        which sweeps agents and tasks alike)."""
        return [every(sweep_interval_s, self.expire_due)]

    async def expire_due(self) -> list[str]:
        """Move assigned or running tasks past their deadline to ``timed_out``, in one change."""
        now = self._clock()
        expired: list[str] = []
        async with self._events.change() as change:
            for task in await change.repos.tasks.due(now, PENDING_BATCH):
                timed_out = self._next(task, S.TIMED_OUT, completed_at=now, deadline=None)
                if await change.repos.tasks.update(timed_out):
                    expired.append(task.task_id)
                    self._emit(change, "task.timed_out", timed_out)
        return expired


def _found(task: Task | None, task_id: str) -> Task:
    if task is None:
        raise TaskNotFound(f"task {task_id!r} not found")
    return task


def _refuse(task: Task, target: TaskStatus) -> Task:
    raise InvalidTransition(
        f"task {task.task_id!r} cannot go from {task.status.value} to {target.value}",
        data={"task_id": task.task_id, "from": task.status.value, "to": target.value},
    )
