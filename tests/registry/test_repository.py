"""The agent repository contract, written once and run over every backend (``repos``)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agentcore import cursor
from agentcore.errors import InvalidParams
from agentcore.models import AgentQuery, AgentStatus, TaskStatus
from agentcore.repositories import Repositories
from tests.support import ids, make_agent, make_task, stored_loads

#: The filters of a discover: the SQL query walks a label's index for them.
LIVE: dict[str, Any] = {"tenant": "default", "status": AgentStatus.ACTIVE}


async def find(repos: Repositories, **filters: Any) -> list[str]:
    return ids(await repos.agents.query(AgentQuery(**filters)))


# -- put, get, delete -----------------------------------------------------------


async def test_put_round_trips(repos: Repositories) -> None:
    agent = make_agent("a1", capabilities=("search", "code"), tags=("b", "a"))
    assert await repos.agents.put(agent, replace=False)
    assert await repos.agents.get("default", "a1") == agent


async def test_get_unknown_is_none(repos: Repositories) -> None:
    assert await repos.agents.get("default", "nope") is None


async def test_put_without_replace_writes_nothing_when_it_exists(repos: Repositories) -> None:
    original = make_agent("a1", name="first", capabilities=("x",), tags=("t1",))
    assert await repos.agents.put(original, replace=False)
    other = make_agent("a1", name="second", capabilities=("y",), tags=("t2",))
    assert not await repos.agents.put(other, replace=False)
    assert await repos.agents.get("default", "a1") == original
    assert await find(repos, capabilities=["x"]) == ["a1"]
    assert await find(repos, capabilities=["y"]) == []
    assert await find(repos, tags=["t2"]) == []


async def test_put_with_replace_overwrites_row_and_labels(repos: Repositories) -> None:
    await repos.agents.put(make_agent("a1", capabilities=("x", "y"), tags=("t1",)), replace=False)
    replacement = make_agent("a1", name="renamed", capabilities=("z",), tags=("t2",))
    assert await repos.agents.put(replacement, replace=True)
    assert await repos.agents.get("default", "a1") == replacement
    assert await find(repos, capabilities=["x"]) == []
    assert await find(repos, capabilities=["z"]) == ["a1"]
    assert await find(repos, tags=["t1"]) == []
    assert await find(repos, tags=["t2"]) == ["a1"]
    assert await find(repos, name_pattern="renamed") == ["a1"]


async def test_put_with_replace_inserts_a_new_agent(repos: Repositories) -> None:
    assert await repos.agents.put(make_agent("a1", capabilities=("x",)), replace=True)
    assert await find(repos, capabilities=["x"]) == ["a1"]


async def test_duplicate_labels_are_stored_once(repos: Repositories) -> None:
    agent = make_agent("a1", capabilities=("x", "x"), tags=("t", "t"))
    assert await repos.agents.put(agent, replace=False)
    assert await repos.agents.get("default", "a1") == agent
    assert await find(repos, capabilities=["x"], tags=["t"]) == ["a1"]
    assert await repos.agents.least_loaded(["x"], "default") == "a1"


async def test_delete_removes_it_and_its_labels(repos: Repositories) -> None:
    await repos.agents.put(make_agent("a1", capabilities=("x",), tags=("t",)), replace=False)
    assert await repos.agents.delete("default", "a1")
    assert await repos.agents.get("default", "a1") is None
    assert not await repos.agents.delete("default", "a1")
    assert await find(repos) == []
    assert await repos.agents.least_loaded(["x"], "default") is None
    # A new agent with the same id does not inherit the old labels.
    await repos.agents.put(make_agent("a1"), replace=False)
    assert await find(repos, capabilities=["x"]) == []
    assert await find(repos, tags=["t"]) == []


# -- query ------------------------------------------------------------------------


async def test_query_needs_all_capabilities(repos: Repositories) -> None:
    await repos.agents.put(make_agent("a", capabilities=("x", "y")), replace=False)
    await repos.agents.put(make_agent("b", capabilities=("x",)), replace=False)
    await repos.agents.put(make_agent("c", capabilities=("y", "z")), replace=False)
    assert await find(repos, capabilities=["x"]) == ["a", "b"]
    assert await find(repos, capabilities=["y", "x"]) == ["a"]
    assert await find(repos, capabilities=["x", "y", "x"]) == ["a"]
    assert await find(repos, capabilities=["x", "z"]) == []
    assert await find(repos, capabilities=["unknown"]) == []
    assert await find(repos) == ["a", "b", "c"]


async def test_query_needs_all_tags(repos: Repositories) -> None:
    await repos.agents.put(make_agent("a", tags=("prod", "eu")), replace=False)
    await repos.agents.put(make_agent("b", tags=("prod",)), replace=False)
    await repos.agents.put(make_agent("c", tags=("eu",), capabilities=("x",)), replace=False)
    assert await find(repos, tags=["prod"]) == ["a", "b"]
    assert await find(repos, tags=["eu", "prod"]) == ["a"]
    assert await find(repos, tags=["eu"], capabilities=["x"]) == ["c"]


async def test_query_by_status_and_tenant(repos: Repositories) -> None:
    await repos.agents.put(make_agent("a", tenant="t1"), replace=False)
    await repos.agents.put(make_agent("b", tenant="t2"), replace=False)
    await repos.agents.put(make_agent("c", tenant="t1", status=AgentStatus.INACTIVE), replace=False)
    assert await find(repos, status=AgentStatus.ACTIVE) == ["a", "b"]
    assert await find(repos, status=AgentStatus.INACTIVE) == ["c"]
    assert await find(repos, tenant="t1") == ["a", "c"]
    assert await find(repos, tenant="t1", status=AgentStatus.ACTIVE) == ["a"]
    assert await find(repos, tenant="nobody") == []


async def test_query_by_tenant_status_and_labels(repos: Repositories) -> None:
    """With a tenant and a status, a label drives the SQL query through its own index:
    the other filters still apply to every row it meets."""
    await repos.agents.put(make_agent("a", capabilities=("x", "y"), tags=("t",)), replace=False)
    await repos.agents.put(make_agent("b", capabilities=("x",), tags=("t", "u")), replace=False)
    await repos.agents.put(
        make_agent("c", capabilities=("x", "y"), tags=("t",), tenant="other"), replace=False
    )
    await repos.agents.put(
        make_agent("d", capabilities=("x", "y"), tags=("t",), status=AgentStatus.INACTIVE),
        replace=False,
    )
    assert await find(repos, **LIVE, capabilities=["x"]) == ["a", "b"]
    assert await find(repos, **LIVE, capabilities=["y", "x"]) == ["a"]
    assert await find(repos, **LIVE, tags=["t"]) == ["a", "b"]
    assert await find(repos, **LIVE, tags=["u", "t"]) == ["b"]
    assert await find(repos, **LIVE, capabilities=["x"], tags=["u"]) == ["b"]
    assert await find(repos, **LIVE, capabilities=["x"], name_pattern="b") == ["b"]
    inactive = {**LIVE, "status": AgentStatus.INACTIVE}
    assert await find(repos, **inactive, capabilities=["x"]) == ["d"]
    assert await find(repos, tenant="other", status=AgentStatus.ACTIVE, tags=["t"]) == ["c"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", ["a1", "a2", "a3", "a4", "a5", "a6"]),
        ("ALPHA-?", ["a1"]),
        ("alpha*", ["a1", "a2"]),
        ("*-22", ["a2"]),
        ("?eta", ["a3"]),
        ("100%_*", ["a4"]),
        ("100*", ["a4", "a5"]),
        ("a_pha*", []),
        ("%", []),
        ("back\\slash", ["a6"]),
        ("beta", ["a3"]),
        ("bet", []),
    ],
)
async def test_query_by_name_glob(repos: Repositories, pattern: str, expected: list[str]) -> None:
    names = {
        "a1": "Alpha-1",
        "a2": "alpha-22",
        "a3": "BETA",
        "a4": "100%_done",
        "a5": "100abdone",
        "a6": "back\\slash",
    }
    for agent_id, name in names.items():
        await repos.agents.put(make_agent(agent_id, name=name), replace=False)
    assert sorted(await find(repos, name_pattern=pattern)) == expected


async def test_query_orders_by_name_then_id_and_paginates(repos: Repositories) -> None:
    for agent_id, name in [("z", "b"), ("y", "a"), ("x", "b"), ("w", "c"), ("v", "a")]:
        await repos.agents.put(make_agent(agent_id, name=name), replace=False)
    assert await find(repos) == ["v", "y", "x", "z", "w"]
    assert await find(repos, limit=2) == ["v", "y"]
    assert await find(repos, limit=2, offset=2) == ["x", "z"]
    assert await find(repos, limit=2, offset=4) == ["w"]
    assert await find(repos, offset=5) == []


async def test_query_continues_after_a_cursor(repos: Repositories) -> None:
    for agent_id, name in [("z", "b"), ("y", "a"), ("x", "b"), ("w", "c"), ("v", "a")]:
        await repos.agents.put(make_agent(agent_id, name=name, capabilities=("x",)), replace=False)
    assert await find(repos, after=cursor.encode("a", "y")) == ["x", "z", "w"]
    assert await find(repos, after=cursor.encode("b", "x"), limit=1) == ["z"]
    assert await find(repos, after=cursor.encode("c", "w")) == []
    # The cursor is a position, not a row: it needs no agent to exist there.
    assert await find(repos, after=cursor.encode("a", "zz")) == ["x", "z", "w"]
    after_v = cursor.encode("a", "v")
    assert await find(repos, **LIVE, capabilities=["x"], after=after_v) == ["y", "x", "z", "w"]
    with pytest.raises(InvalidParams):
        await find(repos, after="not a cursor")


# -- liveness ---------------------------------------------------------------------


async def test_touch_sets_last_seen_and_reactivates(repos: Repositories) -> None:
    await repos.agents.put(make_agent("on", last_seen=1.0, capabilities=("x",)), replace=False)
    await repos.agents.put(
        make_agent("off", last_seen=1.0, status=AgentStatus.INACTIVE, capabilities=("x",)),
        replace=False,
    )
    await repos.agents.touch(
        [("default", "on", 50.0), ("default", "off", 60.0), ("default", "unknown", 70.0)]
    )
    on, off = await repos.agents.get("default", "on"), await repos.agents.get("default", "off")
    assert on is not None and off is not None
    assert (on.last_seen, on.status, on.updated_at) == (50.0, AgentStatus.ACTIVE, 20.0)
    assert (off.last_seen, off.status, off.updated_at) == (60.0, AgentStatus.ACTIVE, 60.0)
    assert await repos.agents.get("default", "unknown") is None
    # The reactivated agent is found by status through its labels too.
    assert await find(repos, **LIVE, capabilities=["x"]) == ["off", "on"]
    await repos.agents.touch([])


async def test_touch_accepts_integer_timestamps(repos: Repositories) -> None:
    await repos.agents.put(make_agent("a"), replace=False)
    await repos.agents.touch([("default", "a", 123)])
    agent = await repos.agents.get("default", "a")
    assert agent is not None and agent.last_seen == 123.0


async def test_expire_marks_stale_active_agents_inactive(repos: Repositories) -> None:
    await repos.agents.put(make_agent("stale", last_seen=10.0, capabilities=("x",)), replace=False)
    await repos.agents.put(make_agent("edge", last_seen=50.0), replace=False)
    await repos.agents.put(make_agent("fresh", last_seen=90.0), replace=False)
    await repos.agents.put(
        make_agent("gone", last_seen=1.0, status=AgentStatus.INACTIVE), replace=False
    )
    assert await repos.agents.expire(cutoff=50.0, now=100.0, limit=100) == [("stale", "default")]
    stale = await repos.agents.get("default", "stale")
    assert stale is not None
    assert (stale.status, stale.updated_at, stale.last_seen) == (
        AgentStatus.INACTIVE,
        100.0,
        10.0,
    )
    gone = await repos.agents.get("default", "gone")
    assert gone is not None and gone.updated_at == 20.0
    # An expired agent is no longer found as active, nor picked.
    assert await find(repos, **LIVE, capabilities=["x"]) == []
    assert await repos.agents.least_loaded(["x"], "default") is None
    assert sorted(await repos.agents.expire(cutoff=95.0, now=101.0, limit=100)) == [
        ("edge", "default"),
        ("fresh", "default"),
    ]
    assert await repos.agents.expire(cutoff=1000.0, now=102.0, limit=100) == []


async def test_expire_returns_each_agents_tenant(repos: Repositories) -> None:
    await repos.agents.put(make_agent("a", last_seen=1.0, tenant="t1"), replace=False)
    await repos.agents.put(make_agent("b", last_seen=1.0, tenant="t2"), replace=False)
    assert sorted(await repos.agents.expire(cutoff=50.0, now=100.0, limit=100)) == [
        ("a", "t1"),
        ("b", "t2"),
    ]


async def test_expire_takes_at_most_its_limit_longest_silent_first(repos: Repositories) -> None:
    for n, seen in enumerate([40.0, 10.0, 30.0, 20.0, 90.0]):
        await repos.agents.put(make_agent(f"a{n}", last_seen=seen), replace=False)

    assert sorted(await repos.agents.expire(cutoff=50.0, now=100.0, limit=2)) == [
        ("a1", "default"),
        ("a3", "default"),
    ]
    assert sorted(await repos.agents.expire(cutoff=50.0, now=100.0, limit=2)) == [
        ("a0", "default"),
        ("a2", "default"),
    ]
    assert await repos.agents.expire(cutoff=50.0, now=100.0, limit=2) == []
    assert await repos.agents.count() == {"active": 1, "inactive": 4}


async def test_count_by_status(repos: Repositories) -> None:
    assert await repos.agents.count() == {}
    await repos.agents.put(make_agent("a"), replace=False)
    await repos.agents.put(make_agent("b"), replace=False)
    await repos.agents.put(make_agent("c", status=AgentStatus.INACTIVE), replace=False)
    assert await repos.agents.count() == {"active": 2, "inactive": 1}
    await repos.agents.expire(cutoff=1000.0, now=200.0, limit=100)
    assert await repos.agents.count() == {"inactive": 3}
    await repos.agents.touch([("default", "a", 300.0)])
    await repos.agents.put(make_agent("b", status=AgentStatus.ACTIVE), replace=True)
    assert await repos.agents.delete("default", "c")
    assert await repos.agents.count() == {"active": 2}


# -- load -------------------------------------------------------------------------


async def test_least_loaded_picks_fewest_active_tasks_then_name(repos: Repositories) -> None:
    agents, tasks = repos.agents, repos.tasks
    await agents.put(make_agent("a1", name="zed", capabilities=("x", "y")), replace=False)
    await agents.put(make_agent("a2", name="amy", capabilities=("x", "y")), replace=False)
    await agents.put(make_agent("a3", name="bob", capabilities=("x",)), replace=False)
    await agents.put(
        make_agent("a4", name="al", capabilities=("x", "y"), status=AgentStatus.INACTIVE),
        replace=False,
    )
    await agents.put(
        make_agent("a5", name="aa", capabilities=("x", "y"), tenant="other"), replace=False
    )
    # Ties go by name: amy before zed.
    assert await agents.least_loaded(["x", "y"], "default") == "a2"
    await tasks.insert(make_task("1", status=TaskStatus.RUNNING, agent_id="a2"))
    await tasks.insert(make_task("2", status=TaskStatus.COMPLETED, agent_id="a1"))
    # amy is busy, zed's completed task does not count; bob lacks y, al is inactive.
    assert await agents.least_loaded(["x", "y"], "default") == "a1"
    assert await agents.least_loaded(["y", "x", "y"], "default") == "a1"
    assert await agents.least_loaded(["x"], "default") == "a3"
    assert await agents.least_loaded([], "default") == "a3"
    assert await agents.least_loaded([], "other") == "a5"
    assert await agents.least_loaded(["nope"], "default") is None
    assert await agents.least_loaded([], "nobody") is None


async def test_least_loaded_ties_on_load_and_name_go_by_id(repos: Repositories) -> None:
    for agent_id in ("b", "c", "a"):
        await repos.agents.put(
            make_agent(agent_id, name="same", capabilities=("x",)), replace=False
        )
    assert await repos.agents.least_loaded(["x"], "default") == "a"
    assert await repos.agents.least_loaded([], "default") == "a"
    await repos.tasks.insert(make_task("1", status=TaskStatus.ASSIGNED, agent_id="a"))
    assert await repos.agents.least_loaded(["x"], "default") == "b"
    assert await repos.agents.least_loaded([], "default") == "b"


async def test_the_load_counter_follows_every_task_write(repos: Repositories) -> None:
    """The counter least_loaded orders by equals the count of active tasks after inserts,
    transitions, reassignment, deletion of the agent and re-registration."""
    agents, tasks = repos.agents, repos.tasks
    for agent_id in ("a", "b"):
        await agents.put(make_agent(agent_id, capabilities=("x",)), replace=False)
    await tasks.insert(make_task("1", status=TaskStatus.ASSIGNED, agent_id="a"))
    await tasks.insert(make_task("2", status=TaskStatus.ASSIGNED, agent_id="a"))
    await tasks.insert(make_task("3", status=TaskStatus.PENDING))
    await tasks.insert(make_task("4", status=TaskStatus.COMPLETED, agent_id="b"))
    assert await stored_loads(repos) == {"a": 2, "b": 0}

    async def move(task_id: str, **changes: Any) -> None:
        task = await tasks.get("default", task_id)
        assert task is not None
        assert await tasks.update(
            msgspec.structs.replace(task, version=task.version + 1, **changes)
        )

    await move("1", status=TaskStatus.RUNNING)  # still active: no change
    await move("1", progress=50.0)  # neither status nor agent: no change
    assert await stored_loads(repos) == {"a": 2, "b": 0}
    await move("2", agent_id="b")  # reassigned
    assert await stored_loads(repos) == {"a": 1, "b": 1}
    await move("3", status=TaskStatus.ASSIGNED, agent_id="b")  # pending -> assigned
    await move("1", status=TaskStatus.COMPLETED)  # active -> done
    assert await stored_loads(repos) == {"a": 0, "b": 2}
    assert await agents.least_loaded(["x"], "default") == "a"
    # A rejected compare-and-set moves nothing.
    stale = await tasks.get("default", "2")
    assert stale is not None
    assert not await tasks.update(
        msgspec.structs.replace(stale, version=stale.version + 2, agent_id="a")
    )
    assert await stored_loads(repos) == {"a": 0, "b": 2}

    # b's tasks outlive b; registering b again starts from them, replacing keeps them.
    assert await agents.delete("default", "b")
    assert await stored_loads(repos) == {"a": 0}
    await agents.put(make_agent("b", capabilities=("x",)), replace=False)
    assert await stored_loads(repos) == {"a": 0, "b": 2}
    await agents.put(make_agent("b", capabilities=("x", "y")), replace=True)
    assert await stored_loads(repos) == {"a": 0, "b": 2}
    assert await tasks.loads("default", ["a", "b"]) == {"b": 2}
    assert await agents.least_loaded(["x"], "default") == "a"
    assert await agents.least_loaded(["y"], "default") == "b"

    # A task assigned to an agent that is not registered counts once it registers.
    await tasks.insert(make_task("5", status=TaskStatus.RUNNING, agent_id="c"))
    assert await stored_loads(repos) == {"a": 0, "b": 2}
    await agents.put(make_agent("c", capabilities=("x",)), replace=False)
    assert await stored_loads(repos) == {"a": 0, "b": 2, "c": 1}


# -- tenants --------------------------------------------------------------------------


async def test_the_same_id_in_two_tenants_is_two_agents(repos: Repositories) -> None:
    """Ids are scoped by tenant: neither tenant's writes meet (or reveal) the other's."""
    agents, tasks = repos.agents, repos.tasks
    mine = make_agent("same", name="mine", capabilities=("x",), tags=("m",), tenant="a")
    theirs = make_agent("same", name="theirs", capabilities=("y",), tenant="b", last_seen=1.0)
    assert await agents.put(mine, replace=False)
    assert await agents.put(theirs, replace=False)
    assert not await agents.put(make_agent("same", tenant="b"), replace=False)
    assert await agents.get("a", "same") == mine
    assert await agents.get("b", "same") == theirs
    assert await agents.get("default", "same") is None
    assert await find(repos, tenant="a") == ["same"]
    assert [a.name for a in await agents.query(AgentQuery(tenant="b"))] == ["theirs"]
    assert await find(repos, tenant="b", status=AgentStatus.ACTIVE, capabilities=["x"]) == []
    assert await find(repos, tenant="a", status=AgentStatus.ACTIVE, tags=["m"]) == ["same"]

    # A replace, a heartbeat and a task's load touch only their own tenant's agent.
    assert await agents.put(msgspec.structs.replace(mine, name="mine2"), replace=True)
    assert (await agents.get("b", "same")) == theirs
    await agents.touch([("a", "same", 500.0)])
    assert (await agents.get("b", "same")) == theirs
    await tasks.insert(make_task("t", status=TaskStatus.ASSIGNED, agent_id="same", tenant="b"))
    assert await stored_loads(repos, "a") == {"same": 0}
    assert await stored_loads(repos, "b") == {"same": 1}
    assert await tasks.loads("a", ["same"]) == {}
    assert await tasks.loads("b", ["same"]) == {"same": 1}
    assert await agents.least_loaded(["x"], "a") == "same"
    assert await agents.least_loaded(["x"], "b") is None

    # Expiry marks only the silent one, and says whose it was.
    assert await agents.expire(cutoff=100.0, now=600.0, limit=10) == [("same", "b")]
    agent_a, agent_b = await agents.get("a", "same"), await agents.get("b", "same")
    assert agent_a is not None and agent_a.status is AgentStatus.ACTIVE
    assert agent_b is not None and agent_b.status is AgentStatus.INACTIVE
    assert await find(repos, tenant="b", status=AgentStatus.INACTIVE, capabilities=["y"]) == [
        "same"
    ]

    assert await agents.delete("a", "same")
    assert not await agents.delete("a", "same")
    assert await agents.get("a", "same") is None
    assert await agents.get("b", "same") is not None
    assert await find(repos, tenant="b", status=AgentStatus.INACTIVE, capabilities=["y"]) == [
        "same"
    ]
