"""Webhook listing: the kept order follows every change, made here or by another process.

On SQLite and PostgreSQL; ``conftest.Process`` is one process's view of the database.
"""

from __future__ import annotations

from typing import Any

from agentcore.webhooks.store import LISTINGS_KEPT, Webhook
from tests.webhooks.conftest import Process


async def ids(process: Process, status: Any = None, limit: int = 50, offset: int = 0) -> list[str]:
    page, _ = await process.webhooks.page("default", status, limit, offset)
    return [w.id for w in page]


async def test_pages_are_oldest_first_with_the_total(processes: tuple[Process, Process]) -> None:
    a, _ = processes
    made = [(await a.register("x.*")).id for _ in range(7)]
    await a.register("x.*", tenant="other")
    page, total = await a.webhooks.page("default", None, 3, 2)
    assert [w.id for w in page] == made[2:5] and total == 7
    assert page[0].events == ["x.*"]
    assert await ids(a, offset=6) == made[6:]
    assert await ids(a, offset=2**62) == []


async def test_changes_by_another_process_show_in_the_next_page(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    first = await a.register("x.*")
    second = await a.register("x.*")
    assert await ids(a) == [first.id, second.id]  # the order is now kept by `a`

    third = await b.register("x.*")
    assert await ids(a) == [first.id, second.id, third.id]

    assert await b.webhooks.delete(second.id, "default")
    assert await ids(a) == [first.id, third.id]

    fields: dict[str, Any] = {f: getattr(first, f) for f in first.__struct_fields__}
    assert await b.webhooks.replace(Webhook(**{**fields, "status": "disabled"}))
    assert await ids(a, "active") == [third.id]
    assert await ids(a, "disabled") == [first.id]
    (disabled,), total = await a.webhooks.page("default", "disabled", 50, 0)
    assert disabled.status == "disabled" and total == 1  # the rows themselves are read fresh

    await b.webhooks.failed(third.id, a.clock(), 0.0, gone=True)
    assert await ids(a, "active") == []


async def test_the_kept_orders_are_bounded(processes: tuple[Process, Process]) -> None:
    a, _ = processes
    for n in range(LISTINGS_KEPT + 5):
        await a.register("x.*", tenant=f"t{n}")
        await a.webhooks.page(f"t{n}", None, 50, 0)
    assert len(a.webhooks._listings) == LISTINGS_KEPT
