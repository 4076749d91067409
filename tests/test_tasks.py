"""The task state machine, retries, timeouts, release on unregister, compare-and-set."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from agentcore.app import Gateway
from agentcore.clock import ManualClock
from agentcore.errors import Forbidden, InvalidTransition
from agentcore.models import TERMINAL, AgentCard, Task, TaskDefinition, TaskStatus
from agentcore.tasks.repository import TaskRepository
from agentcore.tasks.service import TRANSITIONS
from tests.support import collect, gateway_client, make_config

S = TaskStatus
TIMEOUT_S = 100.0


async def add_agent(gateway: Gateway, agent_id: str, *caps: str, name: str | None = None) -> None:
    await gateway.registry.register(
        AgentCard(name=name or agent_id, agent_id=agent_id, capabilities=list(caps))
    )


async def new_task(gateway: Gateway, **definition: Any) -> Task:
    definition.setdefault("required_capabilities", ["work"])
    return await gateway.tasks.create(msgspec.convert(definition, TaskDefinition))


async def status_of(gateway: Gateway, task_id: str) -> TaskStatus:
    return (await gateway.tasks.get(task_id)).status


# -- building a task in any state ---------------------------------------------------


async def task_in(gateway: Gateway, clock: ManualClock, state: TaskStatus, retries: int) -> Task:
    """A task requiring "work" in ``state``; agent "w1" does the work (absent while pending)."""
    task = await new_task(gateway, max_retries=retries, timeout_seconds=TIMEOUT_S)
    tasks = gateway.tasks
    if state is S.PENDING:
        return task
    await add_agent(gateway, "w1", "work")
    if state is S.CANCELLED:
        await tasks.cancel(task.task_id)
    elif state is S.TIMED_OUT:
        clock.advance(TIMEOUT_S + 1)
        assert await tasks.expire_due() == [task.task_id]
    elif state in (S.RUNNING, S.COMPLETED):
        await tasks.start(task.task_id)
        if state is S.COMPLETED:
            await tasks.complete(task.task_id, result=None, artifacts=[])
    elif state is S.FAILED:
        for _ in range(retries + 1):  # each retry is reassigned to w1
            await tasks.fail(task.task_id, error="x")
    task = await tasks.get(task.task_id)
    assert task.status is state
    return task


# -- the operations ------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    target: TaskStatus
    #: The states the operation is documented to work from.
    sources: frozenset[TaskStatus]
    #: Max retries the task is built with (matters for fail).
    retries: int = 0


OPERATIONS: dict[str, Operation] = {
    "assign": Operation(S.ASSIGNED, frozenset({S.PENDING})),
    "start": Operation(S.RUNNING, frozenset({S.ASSIGNED})),
    "update": Operation(S.RUNNING, frozenset({S.RUNNING})),
    "complete": Operation(S.COMPLETED, frozenset({S.RUNNING})),
    "fail": Operation(S.FAILED, frozenset({S.ASSIGNED, S.RUNNING})),
    "retry": Operation(S.PENDING, frozenset({S.ASSIGNED, S.RUNNING}), retries=1),
    "cancel": Operation(S.CANCELLED, frozenset({S.PENDING, S.ASSIGNED, S.RUNNING})),
    "expire": Operation(S.TIMED_OUT, frozenset({S.ASSIGNED, S.RUNNING})),
}


async def apply(gateway: Gateway, clock: ManualClock, op: str, task_id: str) -> None:
    """Run ``op``; raises InvalidTransition when the service refuses it."""
    tasks = gateway.tasks
    if op == "assign":
        await add_agent(gateway, "w2", "work")
    elif op == "start":
        await tasks.start(task_id)
    elif op == "update":
        await tasks.update(task_id, progress=50.0, step="half")
    elif op == "complete":
        await tasks.complete(task_id, result="ok", artifacts=[])
    elif op in ("fail", "retry"):
        await tasks.fail(task_id, error="boom")
    elif op == "cancel":
        await tasks.cancel(task_id, reason="stop")
    elif op == "expire":
        clock.advance(TIMEOUT_S * 3)
        await tasks.expire_due()
    else:  # pragma: no cover
        raise AssertionError(op)


def test_documented_operations_cover_exactly_the_transition_table() -> None:
    edges = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    operated = {(s, op.target) for op in OPERATIONS.values() for s in op.sources}

    assert set(TRANSITIONS) == set(TaskStatus)
    assert operated == edges
    assert {s for s, targets in TRANSITIONS.items() if not targets} == TERMINAL


@pytest.mark.parametrize("op", list(OPERATIONS))
@pytest.mark.parametrize("state", list(TaskStatus))
async def test_every_operation_from_every_state(
    gateway: Gateway, clock: ManualClock, state: TaskStatus, op: str
) -> None:
    operation = OPERATIONS[op]
    task = await task_in(gateway, clock, state, operation.retries)
    subscription = gateway.bus.subscribe(patterns=("task.*",))
    allowed = state in operation.sources and operation.target in TRANSITIONS[state]

    try:
        await apply(gateway, clock, op, task.task_id)
    except InvalidTransition as exc:
        assert not allowed, f"{op} from {state} refused: {exc.message}"
        assert exc.data is not None
        assert (exc.data["task_id"], exc.data["from"]) == (task.task_id, state.value)
    events = [e for e in await collect(subscription) if e.data["task_id"] == task.task_id]
    after = await gateway.tasks.get(task.task_id)

    if allowed:
        # The first event the operation emits carries the state it moved to.
        assert events, f"{op} from {state} did nothing"
        assert events[0].data["status"] == operation.target.value
        assert after.version > task.version
    else:
        assert events == []
        assert after == task


@pytest.mark.parametrize("state", sorted(TERMINAL))
async def test_terminal_states_refuse_everything(
    gateway: Gateway, clock: ManualClock, state: TaskStatus
) -> None:
    task = await task_in(gateway, clock, state, retries=0)
    refusals: list[Callable[[], Awaitable[Task]]] = [
        lambda: gateway.tasks.start(task.task_id),
        lambda: gateway.tasks.update(task.task_id, progress=1.0, step=None),
        lambda: gateway.tasks.complete(task.task_id, result=None, artifacts=[]),
        lambda: gateway.tasks.fail(task.task_id, error=None),
        lambda: gateway.tasks.cancel(task.task_id),
    ]

    for refuse in refusals:
        with pytest.raises(InvalidTransition):
            await refuse()
    assert TRANSITIONS[state] == frozenset()
    assert await gateway.tasks.get(task.task_id) == task


# -- retries -------------------------------------------------------------------------


async def test_fail_with_retries_left_goes_back_to_pending_and_is_reassigned(
    gateway: Gateway,
) -> None:
    await add_agent(gateway, "a", "work", name="alpha")
    await add_agent(gateway, "b", "work", name="beta")
    busy = await new_task(gateway)  # alpha
    task = await new_task(gateway, max_retries=2)  # beta (less loaded)
    assert (busy.agent_id, task.agent_id) == ("a", "b")
    await gateway.tasks.start(task.task_id, "b")
    await gateway.tasks.update(task.task_id, progress=60.0, step="x", agent_id="b")
    subscription = gateway.bus.subscribe(patterns=("task.*",))

    retried = await gateway.tasks.fail(task.task_id, error={"reason": "oom"}, agent_id="b")

    assert retried.status is S.ASSIGNED
    assert retried.retries == 1
    assert retried.error == {"reason": "oom"}
    assert (retried.progress, retried.step, retried.started_at) == (0.0, None, None)
    assert retried.agent_id == "b"  # alpha still has the busy task
    events = await collect(subscription)
    assert [(e.type, e.data["status"]) for e in events] == [
        ("task.retrying", "pending"),
        ("task.assigned", "assigned"),
    ]
    assert events[0].data["retries"] == 1
    assert await gateway.tasks.get(task.task_id) == retried


async def test_retries_run_out_then_the_task_fails(gateway: Gateway) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway, max_retries=2)

    first = await gateway.tasks.fail(task.task_id, error="1")
    second = await gateway.tasks.fail(task.task_id, error="2")
    last = await gateway.tasks.fail(task.task_id, error="3")

    assert [(t.status, t.retries) for t in (first, second, last)] == [
        (S.ASSIGNED, 1),
        (S.ASSIGNED, 2),
        (S.FAILED, 2),
    ]
    assert last.error == "3"
    assert last.completed_at is not None


async def test_retried_task_without_agent_stays_pending(gateway: Gateway) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway, max_retries=1)
    await gateway.registry.unregister("a")  # releases it: pending
    await add_agent(gateway, "b", "work")
    await gateway.tasks.start(task.task_id)
    await gateway.registry.unregister("b")

    retried = await gateway.tasks.fail(task.task_id, error="x")

    assert (retried.status, retried.agent_id, retried.retries) == (S.PENDING, None, 1)


async def test_fail_without_retries_is_final(gateway: Gateway) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway)
    subscription = gateway.bus.subscribe(patterns=("task.*",))

    failed = await gateway.tasks.fail(task.task_id, error="boom")

    assert (failed.status, failed.retries, failed.agent_id) == (S.FAILED, 0, "a")
    assert [e.type for e in await collect(subscription)] == ["task.failed"]


async def test_default_max_retries_comes_from_config() -> None:
    async with gateway_client(make_config(tasks={"default_max_retries": 1})) as (gateway, _):
        await add_agent(gateway, "a", "work")
        task = await new_task(gateway)
        explicit = await new_task(gateway, max_retries=0)

        assert (task.max_retries, explicit.max_retries) == (1, 0)
        assert (await gateway.tasks.fail(task.task_id, error=None)).status is S.ASSIGNED
        assert (await gateway.tasks.fail(explicit.task_id, error=None)).status is S.FAILED


# -- timeouts ------------------------------------------------------------------------


async def test_assigned_task_times_out_after_its_deadline(
    gateway: Gateway, clock: ManualClock
) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway, timeout_seconds=30)
    assert task.deadline == clock.now + 30
    subscription = gateway.bus.subscribe(patterns=("task.timed_out",))

    clock.advance(30)
    assert await gateway.tasks.expire_due() == []
    clock.advance(0.5)
    expired = await gateway.tasks.expire_due()

    assert expired == [task.task_id]
    timed_out = await gateway.tasks.get(task.task_id)
    assert timed_out.status is S.TIMED_OUT
    assert timed_out.completed_at == clock.now
    assert timed_out.deadline is None
    events = await collect(subscription)
    assert [(e.type, e.data["task_id"], e.data["status"]) for e in events] == [
        ("task.timed_out", task.task_id, "timed_out")
    ]
    assert await gateway.tasks.expire_due() == []


async def test_running_task_times_out(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway, timeout_seconds=10)
    await gateway.tasks.start(task.task_id)

    clock.advance(11)

    assert await gateway.tasks.expire_due() == [task.task_id]
    assert await status_of(gateway, task.task_id) is S.TIMED_OUT


async def test_timeout_counts_from_assignment_not_creation(
    gateway: Gateway, clock: ManualClock
) -> None:
    pending = await new_task(gateway, timeout_seconds=10)
    assert pending.deadline is None
    clock.advance(50)
    assert await gateway.tasks.expire_due() == []
    await add_agent(gateway, "late", "work")

    clock.advance(9)
    assert await gateway.tasks.expire_due() == []
    clock.advance(2)
    assert await gateway.tasks.expire_due() == [pending.task_id]


async def test_a_retry_gets_a_fresh_deadline(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway, timeout_seconds=30, max_retries=1)
    clock.advance(20)
    retried = await gateway.tasks.fail(task.task_id, error="x")
    assert retried.deadline == clock.now + 30

    clock.advance(20)  # past the first deadline, not the second
    assert await gateway.tasks.expire_due() == []
    clock.advance(11)
    assert await gateway.tasks.expire_due() == [task.task_id]


async def test_completed_task_never_times_out(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway, timeout_seconds=5)
    await gateway.tasks.start(task.task_id)
    await gateway.tasks.complete(task.task_id, result=1, artifacts=[])

    clock.advance(60)

    assert await gateway.tasks.expire_due() == []
    assert await status_of(gateway, task.task_id) is S.COMPLETED


async def test_pending_tasks_are_assigned_highest_priority_then_oldest_first(
    gateway: Gateway, clock: ManualClock
) -> None:
    low = await new_task(gateway, priority="low")
    clock.advance(1)
    high_old = await new_task(gateway, priority="high")
    clock.advance(1)
    high_new = await new_task(gateway, priority=8)
    subscription = gateway.bus.subscribe(patterns=("task.assigned",))

    await add_agent(gateway, "a", "work")

    order = [e.data["task_id"] for e in await collect(subscription)]
    assert order == [high_old.task_id, high_new.task_id, low.task_id]


# -- agents going away ---------------------------------------------------------------


async def test_unregister_releases_unstarted_tasks_to_another_agent(gateway: Gateway) -> None:
    await add_agent(gateway, "a", "work", name="alpha")
    await add_agent(gateway, "b", "work", name="beta")
    t1 = await new_task(gateway)  # alpha
    t2 = await new_task(gateway)  # beta
    t3 = await new_task(gateway)  # alpha (tie, by name)
    assert [t.agent_id for t in (t1, t2, t3)] == ["a", "b", "a"]
    await gateway.tasks.start(t3.task_id)
    subscription = gateway.bus.subscribe(patterns=("task.*",))

    await gateway.registry.unregister("a")

    after = {t.task_id: await gateway.tasks.get(t.task_id) for t in (t1, t2, t3)}
    assert (after[t1.task_id].status, after[t1.task_id].agent_id) == (S.ASSIGNED, "b")
    assert (after[t2.task_id].status, after[t2.task_id].agent_id) == (S.ASSIGNED, "b")
    # Started work is not taken away; it finishes, fails or times out.
    assert (after[t3.task_id].status, after[t3.task_id].agent_id) == (S.RUNNING, "a")
    events = [(e.type, e.data["task_id"]) for e in await collect(subscription)]
    assert events == [("task.released", t1.task_id), ("task.assigned", t1.task_id)]


async def test_unregister_without_another_capable_agent_leaves_tasks_pending(
    gateway: Gateway,
) -> None:
    await add_agent(gateway, "a", "work")
    await add_agent(gateway, "other", "else")
    task = await new_task(gateway)

    await gateway.registry.unregister("a")

    released = await gateway.tasks.get(task.task_id)
    assert (released.status, released.agent_id, released.deadline) == (S.PENDING, None, None)


async def test_released_event_names_the_previous_agent(gateway: Gateway) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway)
    subscription = gateway.bus.subscribe(patterns=("task.released",))

    await gateway.registry.unregister("a")

    [event] = await collect(subscription)
    assert event.data["task_id"] == task.task_id
    assert event.data["previous_agent_id"] == "a"
    assert event.data["status"] == "pending"


# -- acting agent --------------------------------------------------------------------


async def test_only_the_assignee_may_act(gateway: Gateway) -> None:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway)

    with pytest.raises(Forbidden):
        await gateway.tasks.start(task.task_id, "b")
    started = await gateway.tasks.start(task.task_id, "a")

    assert started.status is S.RUNNING


# -- compare-and-set -----------------------------------------------------------------


async def running_task(gateway: Gateway) -> Task:
    await add_agent(gateway, "a", "work")
    task = await new_task(gateway)
    return await gateway.tasks.start(task.task_id)


async def test_concurrent_completes_exactly_one_wins(gateway: Gateway) -> None:
    task = await running_task(gateway)
    subscription = gateway.bus.subscribe(patterns=("task.completed",))

    outcomes = await asyncio.gather(
        gateway.tasks.complete(task.task_id, result="first", artifacts=[]),
        gateway.tasks.complete(task.task_id, result="second", artifacts=[]),
        return_exceptions=True,
    )

    winners = [o for o in outcomes if isinstance(o, Task)]
    losers = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 1 and isinstance(losers[0], InvalidTransition)
    stored = await gateway.tasks.get(task.task_id)
    assert stored == winners[0]
    assert stored.version == task.version + 1
    assert len(await collect(subscription)) == 1


async def test_concurrent_complete_and_cancel_exactly_one_wins(gateway: Gateway) -> None:
    task = await running_task(gateway)

    outcomes = await asyncio.gather(
        gateway.tasks.complete(task.task_id, result=None, artifacts=[]),
        gateway.tasks.cancel(task.task_id),
        return_exceptions=True,
    )

    assert sum(isinstance(o, Task) for o in outcomes) == 1
    assert sum(isinstance(o, InvalidTransition) for o in outcomes) == 1
    assert (await gateway.tasks.get(task.task_id)).version == task.version + 1


async def test_a_stale_read_loses_and_is_refused_after_rereading(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process cancelled after our read (PostgreSQL reads outside a lock): the
    compare-and-set refuses our write, and the re-read reports the cancellation."""
    task = await running_task(gateway)
    await gateway.tasks.cancel(task.task_id)
    tasks_class = type(gateway.repos.tasks)
    read = tasks_class.get
    reads: list[TaskStatus] = []

    async def stale_first(self: TaskRepository, tenant: str, task_id: str) -> Task | None:
        found = task if not reads else await read(self, tenant, task_id)
        assert found is not None
        reads.append(found.status)
        return found

    monkeypatch.setattr(tasks_class, "get", stale_first)

    with pytest.raises(InvalidTransition) as refused:
        await gateway.tasks.complete(task.task_id, result="late", artifacts=[])

    assert reads == [S.RUNNING, S.CANCELLED]
    assert refused.value.data is not None and refused.value.data["from"] == "cancelled"
    final = await gateway.repos.tasks.get("default", task.task_id)
    assert final is not None and final.status is S.CANCELLED and final.result is None


async def test_endless_contention_is_reported(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await running_task(gateway)
    attempts: list[Task] = []

    async def always_lose(self: TaskRepository, updated: Task) -> bool:
        attempts.append(updated)
        return False

    monkeypatch.setattr(type(gateway.repos.tasks), "update", always_lose)

    with pytest.raises(InvalidTransition, match="concurrently"):
        await gateway.tasks.update(task.task_id, progress=1.0, step=None)
    assert len(attempts) > 1


# -- the pass over pending tasks ----------------------------------------------------


async def test_concurrent_callers_share_one_pass_over_pending_tasks(gateway: Gateway) -> None:
    pending = [await new_task(gateway) for _ in range(3)]  # no capable agent yet
    reads = 0
    original = gateway.repos.tasks.pending

    async def counted(limit: int) -> list[Task]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)  # a pass that takes a while
        return await original(limit)

    gateway.repos.tasks.pending = counted  # type: ignore[method-assign]
    await add_agent(gateway, "a", "work")  # its own pass: one read, three assigned
    assert reads == 1
    await asyncio.gather(*(gateway.tasks.assign_pending() for _ in range(20)))

    # Twenty callers: the first starts a pass, the nineteen arriving during it ask
    # for one more round between them (2 reads, where each running its own made 20).
    assert reads == 2
    for task in pending:
        assert (await gateway.tasks.get(task.task_id)).agent_id == "a"
