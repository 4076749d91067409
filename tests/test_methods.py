"""Every JSON-RPC method over HTTP: happy paths and each documented error code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcore.app import Gateway
from agentcore.clock import ManualClock
from agentcore.jsonrpc import Context
from tests.realtime.test_websocket import create_key
from tests.support import RpcError, ServerProcess, agent_card, rpc

ServerFactory = Callable[..., ServerProcess]

CAPABILITY_OBJECTS = [
    {
        "name": "summarize",
        "version": "2.1",
        "description": "Summaries of long text",
        "cost_per_request": 0.002,
        "avg_latency_ms": 350.0,
    },
    {"name": "translate"},
]


async def register(client: httpx.AsyncClient, agent_id: str, *caps: str, **extra: Any) -> Any:
    return await rpc(client, "agent.register", {"agent_card": agent_card(agent_id, *caps, **extra)})


async def create(client: httpx.AsyncClient, **definition: Any) -> Any:
    return await rpc(client, "task.create", {"task_definition": definition})


async def rpc_error(client: httpx.AsyncClient, method: str, params: dict[str, Any]) -> RpcError:
    with pytest.raises(RpcError) as caught:
        await rpc(client, method, params)
    return caught.value


def ids(agents_or_tasks: list[dict[str, Any]], key: str = "agent_id") -> list[str]:
    return [item[key] for item in agents_or_tasks]


# -- agent.register / agent.get ------------------------------------------------


async def test_register_seed_card_shape(client: httpx.AsyncClient, clock: ManualClock) -> None:
    card = agent_card("seed-1", "text", "code", "text", tags=["fast", "eu"], description="d")

    result = await rpc(client, "agent.register", {"agent_card": card})

    assert result["agent_id"] == "seed-1"
    assert result["status"] == "active"
    agent = result["agent"]
    assert agent["name"] == "seed-1"
    assert agent["capabilities"] == ["code", "text"]  # de-duplicated, sorted
    assert agent["tags"] == ["eu", "fast"]
    assert agent["registered_at"] == agent["last_seen"] == clock.now
    assert agent["card"]["endpoints"] == card["endpoints"]
    assert agent["card"]["capabilities"] == ["text", "code", "text"]
    assert await rpc(client, "agent.get", {"agent_id": "seed-1"}) == agent


async def test_register_capability_objects(client: httpx.AsyncClient) -> None:
    card = {"agent_id": "obj-1", "name": "Objects", "capabilities": CAPABILITY_OBJECTS}

    result = await rpc(client, "agent.register", {"agent_card": card})

    assert result["agent"]["capabilities"] == ["summarize", "translate"]
    fetched = await rpc(client, "agent.get", {"agent_id": "obj-1"})
    stored = fetched["card"]["capabilities"]
    assert stored[0] == CAPABILITY_OBJECTS[0]
    assert stored[1]["name"] == "translate"
    assert stored[1]["cost_per_request"] is None
    found = await rpc(client, "agent.discover", {"capabilities": ["summarize", "translate"]})
    assert ids(found["agents"]) == ["obj-1"]


async def test_register_mixed_strings_and_objects(client: httpx.AsyncClient) -> None:
    card = {"name": "Mixed", "agent_id": "mix", "capabilities": ["a", {"name": "b"}]}

    result = await rpc(client, "agent.register", {"agent_card": card})

    assert result["agent"]["capabilities"] == ["a", "b"]


async def test_register_without_id_generates_one(client: httpx.AsyncClient) -> None:
    first = await rpc(client, "agent.register", {"agent_card": {"name": "anon"}})
    second = await rpc(client, "agent.register", {"agent_card": {"name": "anon"}})

    assert first["agent_id"].startswith("agent-")
    assert first["agent_id"] != second["agent_id"]
    assert (await rpc(client, "agent.get", {"agent_id": first["agent_id"]}))["name"] == "anon"


async def test_register_existing_id_is_32006(client: httpx.AsyncClient) -> None:
    await register(client, "dup", "x", name="Original")

    error = await rpc_error(
        client, "agent.register", {"agent_card": agent_card("dup", "y", name="Impostor")}
    )

    assert (error.status, error.code) == (409, -32006)
    assert "override_existing" in error.message
    assert (await rpc(client, "agent.get", {"agent_id": "dup"}))["name"] == "Original"


async def test_register_override_existing_replaces_the_card(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    await register(client, "dup", "old-cap", name="Original", tags=["t1"])
    clock.advance(5)

    result = await rpc(
        client,
        "agent.register",
        {
            "agent_card": agent_card("dup", "new-cap", name="Replacement", tags=["t2"]),
            "override_existing": True,
        },
    )

    assert result["agent"]["name"] == "Replacement"
    agent = await rpc(client, "agent.get", {"agent_id": "dup"})
    assert agent["name"] == "Replacement"
    assert agent["capabilities"] == ["new-cap"]
    assert agent["tags"] == ["t2"]
    assert agent["last_seen"] == clock.now
    assert ids((await rpc(client, "agent.discover", {"capabilities": ["new-cap"]}))["agents"]) == [
        "dup"
    ]
    assert (await rpc(client, "agent.discover", {"capabilities": ["old-cap"]}))["agents"] == []
    assert (await rpc(client, "agent.discover", {"tags": ["t1"]}))["agents"] == []
    assert (await rpc(client, "agent.list", {}))["count"] == 1


async def test_override_of_unknown_id_registers_it(client: httpx.AsyncClient) -> None:
    params = {"agent_card": agent_card("fresh"), "override_existing": True}

    assert (await rpc(client, "agent.register", params))["agent_id"] == "fresh"


@pytest.mark.parametrize("method", ["agent.get", "agent.ping", "agent.unregister"])
async def test_unknown_agent_is_32001(client: httpx.AsyncClient, method: str) -> None:
    error = await rpc_error(client, method, {"agent_id": "ghost"})

    assert (error.status, error.code) == (404, -32001)
    assert "ghost" in error.message


# -- agent.list / agent.discover -------------------------------------------------


async def test_list_orders_by_name_and_filters_status(
    gateway: Gateway, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    await register(client, "id-1", name="charlie")
    await register(client, "id-2", name="alpha")
    clock.advance(gateway.config.registry.heartbeat_ttl_s + 1)
    await register(client, "id-3", name="bravo")
    await gateway.registry.sweep()

    everything = await rpc(client, "agent.list", {})
    active = await rpc(client, "agent.list", {"status": "active"})
    inactive = await rpc(client, "agent.list", {"status": "inactive"})

    assert ids(everything["agents"]) == ["id-2", "id-3", "id-1"]
    assert everything["count"] == 3
    assert ids(active["agents"]) == ["id-3"]
    assert ids(inactive["agents"]) == ["id-2", "id-1"]


async def test_list_pages(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await register(client, f"p{i}")

    page = await rpc(client, "agent.list", {"limit": 2, "offset": 3})

    assert ids(page["agents"]) == ["p3", "p4"]
    assert (page["count"], page["limit"], page["offset"]) == (2, 2, 3)


async def test_discover_requires_all_capabilities(client: httpx.AsyncClient) -> None:
    await register(client, "both", "x", "y")
    await register(client, "only-x", "x")
    await register(client, "only-y", "y")
    await register(client, "xyz", "x", "y", "z")

    async def discover(*caps: str) -> list[str]:
        found = await rpc(client, "agent.discover", {"capabilities": list(caps)})
        return ids(found["agents"])

    assert await discover("x", "y") == ["both", "xyz"]
    assert await discover("x") == ["both", "only-x", "xyz"]
    assert await discover("y", "x", "y") == ["both", "xyz"]
    assert await discover("x", "nope") == []
    assert await discover() == ["both", "only-x", "only-y", "xyz"]


async def test_discover_by_tags_and_capabilities(client: httpx.AsyncClient) -> None:
    await register(client, "a", "x", tags=["gpu", "eu"])
    await register(client, "b", "x", tags=["gpu"])
    await register(client, "c", "y", tags=["gpu", "eu"])

    eu_gpu = await rpc(client, "agent.discover", {"tags": ["eu", "gpu"]})
    eu_gpu_x = await rpc(client, "agent.discover", {"tags": ["eu", "gpu"], "capabilities": ["x"]})

    assert ids(eu_gpu["agents"]) == ["a", "c"]
    assert ids(eu_gpu_x["agents"]) == ["a"]


async def test_discover_skips_inactive_unless_asked(
    gateway: Gateway, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    await register(client, "old", "x")
    clock.advance(gateway.config.registry.heartbeat_ttl_s + 1)
    await register(client, "new", "x")
    assert await gateway.registry.sweep() == ["old"]

    default = await rpc(client, "agent.discover", {"capabilities": ["x"]})
    inactive = await rpc(client, "agent.discover", {"capabilities": ["x"], "status": "inactive"})

    assert ids(default["agents"]) == ["new"]
    assert ids(inactive["agents"]) == ["old"]


NAMED = [
    ("a1", "Alpha-One"),
    ("a2", "alphabet"),
    ("b1", "Beta"),
    ("p1", "100%"),
    ("u1", "under_score"),
    ("u2", "underXscore"),
]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("alpha*", ["a1", "a2"]),
        ("ALPHA-*", ["a1"]),
        ("*one", ["a1"]),
        ("?eta", ["b1"]),
        ("*", ["a1", "a2", "b1", "p1", "u1", "u2"]),
        ("beta", ["b1"]),
        ("bet", []),
        ("100%", ["p1"]),
        ("1%", []),
        ("under_score", ["u1"]),
        ("under?score", ["u1", "u2"]),
    ],
)
async def test_discover_name_pattern_is_a_case_insensitive_glob(
    client: httpx.AsyncClient, pattern: str, expected: list[str]
) -> None:
    for agent_id, name in NAMED:
        await register(client, agent_id, name=name)

    found = await rpc(client, "agent.discover", {"name_pattern": pattern})

    assert sorted(ids(found["agents"])) == expected


async def test_discover_pagination_is_stable_and_complete(client: httpx.AsyncClient) -> None:
    # Equal names: the order falls back to the id.
    for agent_id, name in [("z", "same"), ("m", "same"), ("c", "other"), ("k", "same"), ("a", "x")]:
        await register(client, agent_id, "cap", name=name)

    full = ids((await rpc(client, "agent.discover", {"capabilities": ["cap"]}))["agents"])
    pages: list[str] = []
    for offset in range(0, 6, 2):
        page = await rpc(
            client, "agent.discover", {"capabilities": ["cap"], "limit": 2, "offset": offset}
        )
        assert page["limit"] == 2 and page["offset"] == offset
        pages.extend(ids(page["agents"]))

    assert full == ["c", "k", "m", "z", "a"]
    assert pages == full


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"offset": -1}, {"status": "sleeping"}, {"capabilities": [""]}],
)
async def test_discover_rejects_bad_filters(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    error = await rpc_error(client, "agent.discover", params)

    assert (error.status, error.code) == (400, -32602)


async def test_limit_is_capped_at_the_max_page_size(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    page = await rpc(client, "agent.list", {"limit": 10**9})

    assert page["limit"] == gateway.config.tasks.max_page_size


# -- agent.ping / agent.unregister -----------------------------------------------


async def test_ping(gateway: Gateway, client: httpx.AsyncClient, clock: ManualClock) -> None:
    await register(client, "p")
    clock.advance(10)

    result = await rpc(client, "agent.ping", {"agent_id": "p"})

    assert result == {
        "agent_id": "p",
        "status": "active",
        "last_seen": clock.now,
        "ttl_s": gateway.config.registry.heartbeat_ttl_s,
    }


async def test_unregister(client: httpx.AsyncClient) -> None:
    await register(client, "gone", "x")

    result = await rpc(client, "agent.unregister", {"agent_id": "gone"})

    assert result == {"agent_id": "gone", "unregistered": True}
    assert (await rpc_error(client, "agent.get", {"agent_id": "gone"})).code == -32001
    assert (await rpc_error(client, "agent.unregister", {"agent_id": "gone"})).code == -32001
    assert (await rpc_error(client, "agent.ping", {"agent_id": "gone"})).code == -32001
    assert (await rpc(client, "agent.discover", {"capabilities": ["x"]}))["agents"] == []
    # The id is free again.
    assert (await register(client, "gone"))["agent_id"] == "gone"


# -- task.create ---------------------------------------------------------------


async def test_create_defaults(client: httpx.AsyncClient, clock: ManualClock) -> None:
    task = await create(client, type="ocr")

    assert task["task_id"].startswith("task-")
    assert task["status"] == "pending"
    assert task["priority"] == 5
    assert task["title"] == "ocr"
    assert task["agent_id"] is None
    assert task["retries"] == 0
    assert task["created_at"] == task["updated_at"] == clock.now
    assert await rpc(client, "task.get", {"task_id": task["task_id"]}) == task


async def test_create_keeps_the_definition(client: httpx.AsyncClient) -> None:
    task = await create(
        client,
        task_id="t-1",
        type="ocr",
        title="Read it",
        description="scan",
        required_capabilities=["b", "a", "b"],
        parameters={"dpi": 300},
        input={"url": "s3://x"},
        metadata={"k": "v"},
        max_retries=2,
        timeout_seconds=30,
    )

    assert task["task_id"] == "t-1"
    assert task["title"] == "Read it"
    assert task["description"] == "scan"
    assert task["required_capabilities"] == ["a", "b"]
    assert task["parameters"] == {"dpi": 300}
    assert task["input"] == {"url": "s3://x"}
    assert task["metadata"] == {"k": "v"}
    assert task["max_retries"] == 2
    assert task["timeout_seconds"] == 30


@pytest.mark.parametrize(
    ("definition", "title"),
    [({"title": "T"}, "T"), ({"name": "N"}, "N"), ({"title": "T", "name": "N"}, "T"), ({}, "job")],
)
async def test_title_and_name_are_synonyms(
    client: httpx.AsyncClient, definition: dict[str, Any], title: str
) -> None:
    task = await create(client, type="job", **definition)

    assert task["title"] == title


@pytest.mark.parametrize(
    ("priority", "value"),
    [(1, 1), (7, 7), (10, 10), ("low", 3), ("normal", 5), ("high", 8), ("critical", 10)],
)
async def test_priority_numbers_and_names(
    client: httpx.AsyncClient, priority: Any, value: int
) -> None:
    task = await create(client, priority=priority)

    assert task["priority"] == value


@pytest.mark.parametrize("priority", [0, 11, -1, "urgent", "HIGH", 5.5, None, True])
async def test_invalid_priority_is_32602(client: httpx.AsyncClient, priority: Any) -> None:
    error = await rpc_error(client, "task.create", {"task_definition": {"priority": priority}})

    assert (error.status, error.code) == (400, -32602)
    assert "priority" in error.message


async def test_create_existing_task_id_is_refused(client: httpx.AsyncClient) -> None:
    await create(client, task_id="same", title="first")

    error = await rpc_error(client, "task.create", {"task_definition": {"task_id": "same"}})

    assert error.status == 409
    assert (await rpc(client, "task.get", {"task_id": "same"}))["title"] == "first"


async def test_create_assigns_the_least_loaded_capable_agent(client: httpx.AsyncClient) -> None:
    # Ids sort the other way round from names, so the tie-break is visibly by name.
    await register(client, "agent-1", "ocr", name="zeta")
    await register(client, "agent-2", "ocr", name="alpha")
    await register(client, "agent-0", "other", name="aaa-incapable")

    tasks = [await create(client, required_capabilities=["ocr"]) for _ in range(3)]

    # alpha (tie at 0), then zeta (less loaded), then alpha again (tie at 1).
    assert [t["agent_id"] for t in tasks] == ["agent-2", "agent-1", "agent-2"]
    assert all(t["status"] == "assigned" for t in tasks)
    loads = {
        agent: (await rpc(client, "task.query", {"agent_id": agent}))["count"]
        for agent in ("agent-0", "agent-1", "agent-2")
    }
    assert loads == {"agent-0": 0, "agent-1": 1, "agent-2": 2}


async def test_finished_tasks_do_not_count_as_load(client: httpx.AsyncClient) -> None:
    await register(client, "a", "x", name="alpha")
    await register(client, "b", "x", name="beta")
    first = await create(client, required_capabilities=["x"])
    assert first["agent_id"] == "a"
    await rpc(client, "task.start", {"task_id": first["task_id"]})
    await rpc(client, "task.complete", {"task_id": first["task_id"]})

    second = await create(client, required_capabilities=["x"])

    assert second["agent_id"] == "a"


async def test_task_without_capable_agent_waits_for_one(client: httpx.AsyncClient) -> None:
    await register(client, "wrong", "speech")
    task = await create(client, required_capabilities=["vision", "ocr"])
    assert task["status"] == "pending"
    await register(client, "half", "vision")
    assert (await rpc(client, "task.get", {"task_id": task["task_id"]}))["status"] == "pending"

    await register(client, "right", "ocr", "vision")

    assigned = await rpc(client, "task.get", {"task_id": task["task_id"]})
    assert assigned["status"] == "assigned"
    assert assigned["agent_id"] == "right"


async def test_task_is_not_assigned_to_an_inactive_agent(
    gateway: Gateway, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    await register(client, "sleepy", "x")
    clock.advance(gateway.config.registry.heartbeat_ttl_s + 1)
    await gateway.registry.sweep()

    task = await create(client, required_capabilities=["x"])

    assert task["status"] == "pending"


# -- task.get / lifecycle methods --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("task.get", {}),
        ("task.start", {}),
        ("task.update", {"progress": 1}),
        ("task.complete", {}),
        ("task.fail", {}),
        ("task.cancel", {}),
    ],
)
async def test_unknown_task_is_32002(
    client: httpx.AsyncClient, method: str, extra: dict[str, Any]
) -> None:
    error = await rpc_error(client, method, {"task_id": "nope", **extra})

    assert (error.status, error.code) == (404, -32002)
    assert "nope" in error.message


async def test_task_lifecycle_start_update_complete(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    await register(client, "worker", "x")
    task = await create(client, required_capabilities=["x"])
    task_id = task["task_id"]
    clock.advance(1)

    started = await rpc(client, "task.start", {"task_id": task_id, "agent_id": "worker"})
    clock.advance(1)
    updated = await rpc(
        client, "task.update", {"task_id": task_id, "progress": 40, "step": "reading"}
    )
    step_only = await rpc(client, "task.update", {"task_id": task_id, "step": "writing"})
    clock.advance(1)
    done = await rpc(
        client,
        "task.complete",
        {"task_id": task_id, "result": {"pages": 3}, "artifacts": [{"uri": "s3://out"}]},
    )

    assert started["status"] == "running"
    assert started["started_at"] == clock.now - 2
    assert (updated["progress"], updated["step"]) == (40, "reading")
    assert (step_only["progress"], step_only["step"]) == (40, "writing")
    assert done["status"] == "completed"
    assert done["result"] == {"pages": 3}
    assert done["artifacts"] == [{"uri": "s3://out"}]
    assert done["progress"] == 100
    assert done["completed_at"] == clock.now
    assert done["version"] > step_only["version"] > updated["version"] > started["version"]
    assert await rpc(client, "task.get", {"task_id": task_id}) == done


@pytest.mark.parametrize("progress", [-1, 100.5, "half"])
async def test_update_rejects_bad_progress(client: httpx.AsyncClient, progress: Any) -> None:
    error = await rpc_error(client, "task.update", {"task_id": "t", "progress": progress})

    assert (error.status, error.code) == (400, -32602)


async def test_fail_and_cancel(client: httpx.AsyncClient) -> None:
    await register(client, "worker", "x")
    failing = await create(client, required_capabilities=["x"])
    cancelled = await create(client, required_capabilities=["x"])

    failed = await rpc(client, "task.fail", {"task_id": failing["task_id"], "error": "boom"})
    gone = await rpc(client, "task.cancel", {"task_id": cancelled["task_id"], "reason": "dupe"})

    assert (failed["status"], failed["error"]) == ("failed", "boom")
    assert (gone["status"], gone["error"]) == ("cancelled", "dupe")


async def test_invalid_transition_is_32003(client: httpx.AsyncClient) -> None:
    pending = await create(client, required_capabilities=["nobody"])

    complete = await rpc_error(client, "task.complete", {"task_id": pending["task_id"]})
    start = await rpc_error(client, "task.start", {"task_id": pending["task_id"]})

    for error in (complete, start):
        assert (error.status, error.code) == (409, -32003)
        assert error.error["data"]["from"] == "pending"
    assert error.error["data"]["task_id"] == pending["task_id"]


async def test_cancel_twice_is_32003(client: httpx.AsyncClient) -> None:
    task = await create(client)
    await rpc(client, "task.cancel", {"task_id": task["task_id"]})

    error = await rpc_error(client, "task.cancel", {"task_id": task["task_id"]})

    assert (error.status, error.code) == (409, -32003)


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("task.start", {}),
        ("task.update", {"progress": 5}),
        ("task.complete", {"result": 1}),
        ("task.fail", {"error": "x"}),
    ],
)
async def test_acting_for_another_agent_is_32007(
    client: httpx.AsyncClient, method: str, extra: dict[str, Any]
) -> None:
    await register(client, "owner", "x")
    task = await create(client, required_capabilities=["x"])
    if method in ("task.update", "task.complete"):
        await rpc(client, "task.start", {"task_id": task["task_id"], "agent_id": "owner"})
    before = await rpc(client, "task.get", {"task_id": task["task_id"]})

    error = await rpc_error(
        client, method, {"task_id": task["task_id"], "agent_id": "intruder", **extra}
    )

    assert (error.status, error.code) == (403, -32007)
    assert await rpc(client, "task.get", {"task_id": task["task_id"]}) == before


# -- task.query ----------------------------------------------------------------


async def test_query_filters(client: httpx.AsyncClient, clock: ManualClock) -> None:
    await register(client, "w", "x")
    t0 = clock.now
    a = await create(client, task_id="a", type="ocr", priority="high", required_capabilities=["x"])
    clock.advance(10)
    b = await create(client, task_id="b", type="ocr", priority=3, required_capabilities=["nobody"])
    clock.advance(10)
    c = await create(client, task_id="c", type="asr", priority=8, required_capabilities=["x"])
    await rpc(client, "task.start", {"task_id": "c"})

    async def query(**filters: Any) -> list[str]:
        return ids((await rpc(client, "task.query", filters))["tasks"], "task_id")

    assert (a["status"], b["status"], c["status"]) == ("assigned", "pending", "assigned")
    assert await query() == ["a", "b", "c"]
    assert await query(status="pending") == ["b"]
    assert await query(status="running") == ["c"]
    assert await query(agent_id="w") == ["a", "c"]
    assert await query(type="ocr") == ["a", "b"]
    assert await query(priority=8) == ["a", "c"]
    assert await query(priority="high") == ["a", "c"]
    assert await query(priority="low") == ["b"]
    assert await query(created_after=t0 + 10) == ["b", "c"]
    assert await query(created_before=t0 + 10) == ["a"]
    assert await query(created_after=t0 + 5, created_before=t0 + 15) == ["b"]
    assert await query(type="ocr", status="assigned", agent_id="w") == ["a"]
    assert await query(type="video") == []


async def test_query_orders_by_creation_then_id_and_pages(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    for task_id in ("m", "b", "z"):
        await create(client, task_id=task_id)
    clock.advance(1)
    await create(client, task_id="a")

    full = await rpc(client, "task.query", {})
    first = await rpc(client, "task.query", {"limit": 3})
    rest = await rpc(client, "task.query", {"limit": 3, "offset": 3})

    assert ids(full["tasks"], "task_id") == ["b", "m", "z", "a"]
    assert ids(first["tasks"] + rest["tasks"], "task_id") == ["b", "m", "z", "a"]
    assert (rest["count"], rest["limit"], rest["offset"]) == (1, 3, 3)


@pytest.mark.parametrize(
    "params", [{"status": "done"}, {"limit": 0}, {"priority": 0}, {"created_after": "yesterday"}]
)
async def test_query_rejects_bad_filters(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    error = await rpc_error(client, "task.query", params)

    assert (error.status, error.code) == (400, -32602)


async def test_query_rejects_unknown_fields(client: httpx.AsyncClient) -> None:
    error = await rpc_error(client, "task.query", {"state": "pending"})

    assert (error.status, error.code) == (400, -32602)


# -- tenants -------------------------------------------------------------------


async def call_as(gateway: Gateway, tenant: str, method: str, params: dict[str, Any]) -> Any:
    """Call through the dispatcher as a caller of ``tenant`` (what the auth layer sets)."""
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    _, payload = await gateway.dispatcher.handle(body.encode(), Context(tenant=tenant))
    assert payload is not None
    return json.loads(payload)


async def two_tenants(gateway: Gateway) -> str:
    """Tenant "a" has agent "shared-id" with an assigned task; returns the task id."""
    await call_as(gateway, "a", "agent.register", {"agent_card": agent_card("shared-id", "x")})
    created = await call_as(
        gateway, "a", "task.create", {"task_definition": {"required_capabilities": ["x"]}}
    )
    task_id: str = created["result"]["task_id"]
    assert created["result"]["agent_id"] == "shared-id"
    return task_id


async def test_collections_are_per_tenant(gateway: Gateway) -> None:
    await two_tenants(gateway)

    for method in ("agent.list", "agent.discover"):
        assert (await call_as(gateway, "b", method, {}))["result"]["agents"] == []
    assert (await call_as(gateway, "b", "task.query", {}))["result"]["tasks"] == []
    # Tenant b's task is not assigned to tenant a's agent.
    created = await call_as(
        gateway, "b", "task.create", {"task_definition": {"required_capabilities": ["x"]}}
    )
    assert created["result"]["status"] == "pending"


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("agent.get", -32001),
        ("agent.ping", -32001),
        ("agent.unregister", -32001),
        ("task.get", -32002),
        ("task.start", -32002),
        ("task.cancel", -32002),
    ],
)
async def test_another_tenants_objects_are_not_found(
    gateway: Gateway, method: str, code: int
) -> None:
    task_id = await two_tenants(gateway)
    params = {"agent_id": "shared-id"} if method.startswith("agent.") else {"task_id": task_id}

    reply = await call_as(gateway, "b", method, params)

    assert reply.get("error", {}).get("code") == code
    assert (await call_as(gateway, "a", "task.get", {"task_id": task_id}))["result"][
        "status"
    ] == "assigned"


async def test_override_cannot_take_another_tenants_agent(gateway: Gateway) -> None:
    await two_tenants(gateway)

    reply = await call_as(
        gateway,
        "b",
        "agent.register",
        {"agent_card": agent_card("shared-id", "evil"), "override_existing": True},
    )

    # Tenant b registers an agent of its own under the same id; a's is untouched.
    assert reply["result"]["agent"]["capabilities"] == ["evil"]
    listed = (await call_as(gateway, "a", "agent.list", {}))["result"]["agents"]
    assert [a["capabilities"] for a in listed] == [["x"]]


NOBODY = {"required_capabilities": ["nobody-has-this"]}
#: Fields that differ between two otherwise identical answers (times).
VOLATILE = frozenset({"registered_at", "updated_at", "last_seen", "created_at"})


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


async def answer(
    client: httpx.AsyncClient, method: str, params: dict[str, Any], *ids: str
) -> tuple[int, str]:
    """The HTTP status and JSON-RPC body of a call, times dropped and each of ``ids``
    replaced by ``ID<n>``: equal answers then mean the caller learnt nothing about them."""
    response = await client.post(
        "/api/v1/jsonrpc", json={"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    )
    text = json.dumps(_without_volatile(response.json()), sort_keys=True)
    for n, value in enumerate(ids):
        text = text.replace(value, f"ID{n}")
    return response.status_code, text


@pytest.fixture
def keyed(server_factory: ServerFactory, tmp_path: Path) -> tuple[ServerProcess, dict[str, str]]:
    """A gateway process in api_key mode, and a key for each of tenants acme and globex."""
    keys = {tenant: create_key(tmp_path / "data", tenant) for tenant in ("acme", "globex")}
    return server_factory(env={"AGENTCORE_AUTH__MODE": "api_key"}).start(), keys


async def test_ids_are_scoped_by_tenant_and_reveal_nothing_over_http(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    """Tenant globex takes the agent and task ids acme holds, each tenant sees only its
    own, and every globex answer is the same for an id acme holds as for a free one."""
    server, keys = keyed
    headers = {tenant: {"Authorization": f"Bearer {key}"} for tenant, key in keys.items()}
    async with (
        httpx.AsyncClient(base_url=server.url, headers=headers["acme"]) as acme,
        httpx.AsyncClient(base_url=server.url, headers=headers["globex"]) as globex,
    ):
        await rpc(acme, "agent.register", {"agent_card": agent_card("squat1", "x", name="a")})
        task = {"task_id": "job1", "required_capabilities": ["x"]}
        assert (await rpc(acme, "task.create", {"task_definition": task}))["agent_id"] == "squat1"

        # Each globex call, once with the ids acme holds and once with free ones.
        calls: list[tuple[str, dict[str, Any]]] = [
            ("agent.get", {"agent_id": "{agent}"}),
            ("agent.ping", {"agent_id": "{agent}"}),
            ("agent.unregister", {"agent_id": "{agent}"}),
            ("task.get", {"task_id": "{task}"}),
            ("task.cancel", {"task_id": "{task}"}),
            ("agent.register", {"agent_card": agent_card("{agent}", "y", name="{agent}")}),
            ("agent.register", {"agent_card": agent_card("{agent}", "y", name="{agent}")}),
            ("agent.get", {"agent_id": "{agent}"}),
            ("agent.ping", {"agent_id": "{agent}"}),
            # Nobody can run it: it stays pending, whichever globex agents exist.
            ("task.create", {"task_definition": {"task_id": "{task}", **NOBODY}}),
            ("task.create", {"task_definition": {"task_id": "{task}", **NOBODY}}),
            ("task.get", {"task_id": "{task}"}),
        ]
        for method, params in calls:
            answers = []
            for agent_id, task_id in (("squat1", "job1"), ("squat0", "job0")):
                filled = json.loads(
                    json.dumps(params).replace("{agent}", agent_id).replace("{task}", task_id)
                )
                answers.append(await answer(globex, method, filled, agent_id, task_id))
            assert answers[0] == answers[1], (method, answers)
        assert answers[0][0] == 200
        # The registrations above succeeded (not 409), the second of each refused as usual.

        # Two agents squat1 and two tasks job1, each tenant seeing only its own.
        assert (await rpc(acme, "agent.get", {"agent_id": "squat1"}))["name"] == "a"
        assert (await rpc(globex, "agent.get", {"agent_id": "squat1"}))["name"] == "squat1"
        for client, capability in ((acme, "x"), (globex, "y")):
            found = (await rpc(client, "agent.discover", {"capabilities": [capability]}))["agents"]
            assert [a["agent_id"] for a in found] == (
                ["squat1"] if client is acme else ["squat0", "squat1"]
            )
            assert (await rpc(client, "agent.discover", {"capabilities": ["x", "y"]}))[
                "agents"
            ] == []
        assert (await rpc(acme, "task.get", {"task_id": "job1"}))["status"] == "assigned"
        assert (await rpc(globex, "task.get", {"task_id": "job1"}))["status"] == "pending"
        await rpc(globex, "task.cancel", {"task_id": "job1"})
        await rpc(globex, "agent.unregister", {"agent_id": "squat1"})
        assert (await rpc(acme, "task.get", {"task_id": "job1"}))["status"] == "assigned"
        assert (await rpc(acme, "agent.ping", {"agent_id": "squat1"}))["status"] == "active"
        assert (await rpc(acme, "agent.get", {"agent_id": "squat1"}))["name"] == "a"
        with pytest.raises(RpcError) as gone:
            await rpc(globex, "agent.get", {"agent_id": "squat1"})
        assert gone.value.code == -32001
