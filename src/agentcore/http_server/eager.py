"""Starting a coroutine eagerly: Python 3.12's eager tasks, for 3.11.

An app that answers without waiting for anything (health, a heartbeat) then
finishes inside ``data_received``, with no task created and no loop turn
spent; one that waits goes on as a task from where it stopped
(docs/performance.md). On 3.12 and later the real eager task is used.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import tasks as asyncio_tasks
from collections.abc import Coroutine, Generator
from typing import Any


class TaskStandIn:
    """What ``asyncio.current_task()`` returns while an app runs its eager first step.

    Code that keeps the current task to cancel it later (the gateway's
    deadlines, ``asyncio.timeout``, aiohttp's timers, ``TaskGroup``) gets this
    object; it passes ``cancel``, ``cancelling`` and ``uncancel`` on to the task
    that continues the app once it waits for something. Until then nothing else
    runs, so nothing can cancel it before that task exists.
    """

    __slots__ = ("__weakref__", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def cancel(self, msg: Any = None) -> bool:
        return self.task.cancel(msg) if self.task is not None else False

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else 0

    def uncancel(self) -> int:
        return self.task.uncancel() if self.task is not None else 0

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def get_name(self) -> str:
        return self.task.get_name() if self.task is not None else "eager-start"

    def __getattr__(self, name: str) -> Any:
        # Anything else a library asks of the current task: the task's, once there is one.
        task = object.__getattribute__(self, "task")
        if task is None:
            raise AttributeError(f"{name!r}: the request has not waited for anything yet")
        return getattr(task, name)


class _Resume:
    """Awaits what a coroutine stopped on and drives it on from there (inside a Task)."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, None, None]:
        coro = self.coro
        waiting_on = self.waiting_on  # a future, or None (a bare yield: one loop turn)
        while True:
            try:
                yield waiting_on
            except BaseException as exc:  # the task was cancelled: the coroutine sees it
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting_on = coro.send(None)
            except StopIteration:
                return


async def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    await _Resume(coro, waiting_on)


def start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """Run ``coro`` up to its first wait now; the task running the rest, or None
    when it finished.

    Python 3.12's eager tasks, for 3.11 (3.12 and later use the real thing):
    the first step runs in a copy of the current context, with a
    :class:`TaskStandIn` as the current task; if the coroutine waits, a task
    created in the same context takes it on from the future it waits on. Called
    from a running task (which cannot lend its place), it is an ordinary task.
    """
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        return None if task.done() else task
    standin = TaskStandIn()
    try:
        asyncio_tasks._enter_task(loop, standin)  # type: ignore[arg-type]
    except RuntimeError:  # another task is running here
        return loop.create_task(coro)
    context = contextvars.copy_context()
    try:
        waiting_on = context.run(coro.send, None)
    except StopIteration:
        return None
    finally:
        asyncio_tasks._leave_task(loop, standin)  # type: ignore[arg-type]
    task = loop.create_task(_resume(coro, waiting_on), context=context)
    standin.task = task
    return task
