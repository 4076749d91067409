"""The repositories of one database together: units of work across them, the open/close
lifecycle and :func:`open_repositories`, run over every backend (``repos``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from agentcore import apikeys
from agentcore.errors import ConfigError, StoreUnavailable
from agentcore.events.base import Event
from agentcore.llm.usage import LlmUsage
from agentcore.models import AgentQuery, TaskQuery, TaskStatus
from agentcore.repositories import (
    MemoryRepositories,
    Repositories,
    SqlRepositories,
    open_repositories,
)
from agentcore.store.postgres import PostgresDatabase
from agentcore.store.sqlite import SqliteDatabase
from tests.support import ids, make_agent, make_task, stored_loads

ALL_TASKS = TaskQuery(limit=1000)


class Abort(Exception):
    """Raised to end a unit of work."""


def event(n: int) -> Event:
    return Event(type=f"test.e{n}", timestamp=100.0, data={"n": n})


# -- units of work --------------------------------------------------------------------


async def given(repos: Repositories) -> None:
    """Agents a and b (b with one assigned task) and one event."""
    for agent_id in ("a", "b"):
        assert await repos.agents.put(make_agent(agent_id, capabilities=("x",)), replace=False)
    assert await repos.tasks.insert(make_task("old", status=TaskStatus.ASSIGNED, agent_id="b"))
    assert [e.id for e in await repos.events.append([event(1)])] == [1]
    assert await stored_loads(repos) == {"a": 0, "b": 1}
    assert await repos.agents.least_loaded(["x"], "default") == "a"


async def change(unit: Repositories) -> None:
    """A unit's writes across repositories: a task assigned to a, b's task completed,
    a new agent c, a's heartbeat, and two events; each is seen inside the unit."""
    assert await unit.tasks.insert(make_task("new", status=TaskStatus.ASSIGNED, agent_id="a"))
    old = await unit.tasks.get("default", "old")
    assert old is not None
    assert await unit.tasks.update(
        msgspec.structs.replace(old, status=TaskStatus.COMPLETED, version=old.version + 1)
    )
    assert await unit.agents.put(make_agent("c", capabilities=("x",)), replace=False)
    await unit.agents.touch([("default", "a", 500.0)])
    appended = await unit.events.append([event(2), event(3)])
    assert [e.id for e in appended] == [2, 3]

    assert await unit.tasks.get("default", "new") is not None
    assert await unit.tasks.loads("default", ["a", "b"]) == {"a": 1}
    assert await unit.agents.least_loaded(["x"], "default") == "b"
    assert ids(await unit.agents.query(AgentQuery())) == ["a", "b", "c"]
    assert await unit.events.last_id() == 3
    assert [e.id for e in await unit.events.read(0, 10)] == [1, 2, 3]


async def test_a_unit_that_raises_leaves_no_rows_loads_or_events(repos: Repositories) -> None:
    await given(repos)
    old = await repos.tasks.get("default", "old")
    a = await repos.agents.get("default", "a")

    with pytest.raises(Abort):
        async with repos.transaction() as unit:
            await change(unit)
            raise Abort

    assert await repos.tasks.get("default", "new") is None
    assert await repos.tasks.get("default", "old") == old
    assert await repos.tasks.count() == {"assigned": 1}
    assert await repos.tasks.loads("default", ["a", "b"]) == {"b": 1}
    assert await repos.agents.get("default", "c") is None
    assert await repos.agents.get("default", "a") == a
    assert await repos.agents.count() == {"active": 2}
    assert ids(await repos.agents.query(AgentQuery(capabilities=["x"]))) == ["a", "b"]
    assert await stored_loads(repos) == {"a": 0, "b": 1}
    assert await repos.agents.least_loaded(["x"], "default") == "a"
    assert await repos.agents.least_loaded([], "default") == "a"
    assert await repos.events.last_id() == 1
    assert [e.id for e in await repos.events.read(0, 10)] == [1]
    # The ids stay gap-free: the next event is 2.
    assert [e.id for e in await repos.events.append([event(4)])] == [2]


async def test_a_committed_unit_leaves_all_its_writes(repos: Repositories) -> None:
    await given(repos)

    async with repos.transaction() as unit:
        await change(unit)

    assert await repos.tasks.get("default", "new") is not None
    old = await repos.tasks.get("default", "old")
    assert old is not None and old.status == TaskStatus.COMPLETED
    assert await repos.tasks.count() == {"assigned": 1, "completed": 1}
    assert await repos.tasks.loads("default", ["a", "b"]) == {"a": 1}
    assert await repos.agents.get("default", "c") is not None
    a = await repos.agents.get("default", "a")
    assert a is not None and a.last_seen == 500.0
    assert await repos.agents.count() == {"active": 3}
    assert await stored_loads(repos) == {"a": 1, "b": 0, "c": 0}
    assert await repos.agents.least_loaded(["x"], "default") == "b"
    assert await repos.events.last_id() == 3
    assert [e.type for e in await repos.events.read(0, 10)] == ["test.e1", "test.e2", "test.e3"]


async def test_concurrent_units_commit_or_roll_back_each_on_its_own(
    repos: Repositories, repos_url: str
) -> None:
    """Units running together: a unit that raises leaves nothing, every unit that
    returned left all its writes, and the events of those have gap-free ids.

    A served SQLite file commits the units of a loop turn together, without a
    savepoint each (``store/sqlite.py``): there a unit that raises after writing
    also fails the others of its commit, which never returned, so lost nothing.
    """

    async def unit_of_work(n: int) -> None:
        async with repos.transaction() as unit:
            assert await unit.tasks.insert(
                make_task(f"t{n}", status=TaskStatus.RUNNING, agent_id="a")
            )
            await asyncio.sleep(0)
            await unit.events.append([event(n), event(n)])
            await asyncio.sleep(0)
            if n % 3 == 0:
                raise Abort

    await repos.agents.put(make_agent("a"), replace=False)
    results = await asyncio.gather(*(unit_of_work(n) for n in range(9)), return_exceptions=True)
    assert [isinstance(r, Abort) for r in results] == [n % 3 == 0 for n in range(9)]
    grouped = repos_url.startswith("sqlite:///")
    failed = [n for n, r in enumerate(results) if isinstance(r, StoreUnavailable)]
    assert all(results[n] is None for n in range(9) if n % 3 and n not in failed)
    assert failed == [] or grouped
    committed = [n for n, r in enumerate(results) if r is None]
    assert sorted(ids(await repos.tasks.query(ALL_TASKS))) == sorted(f"t{n}" for n in committed)
    assert await stored_loads(repos) == {"a": len(committed)}
    stored = await repos.events.read(0, 100)
    assert [e.id for e in stored] == list(range(1, 2 * len(committed) + 1))
    assert sorted(e.data["n"] for e in stored) == sorted(committed * 2)
    assert await repos.events.last_id() == 2 * len(committed)


async def test_api_keys_and_usage_written_in_a_raising_unit_are_rolled_back(
    repos: Repositories,
) -> None:
    """``transaction()``: whatever the block writes through the unit's repositories
    commits together, or not at all."""
    _, key = apikeys.generate(tenant="t1", scopes=["admin"], now=1.0)
    row = LlmUsage(day="2024-05-01", tenant="t1", agent_id="a", provider="p", model="m")
    with pytest.raises(Abort):
        async with repos.transaction() as unit:
            assert await unit.api_keys.put(key)
            await unit.llm_usage.add([msgspec.structs.replace(row, requests=1)])
            raise Abort
    assert await repos.api_keys.get(key.id) is None
    assert await repos.llm_usage.rows("2024-05-01") == []


async def test_concurrent_calls_share_the_repositories_safely(repos: Repositories) -> None:
    agents = [make_agent(f"a{n:02}", capabilities=("x",)) for n in range(30)]
    await asyncio.gather(
        *(repos.agents.put(agent, replace=n % 2 == 0) for n, agent in enumerate(agents)),
        *(repos.tasks.insert(make_task(f"t{n:02}")) for n in range(30)),
        *(repos.agents.touch([("default", f"a{n:02}", 500.0)]) for n in range(30)),
        *(repos.agents.query(AgentQuery(capabilities=["x"])) for _ in range(10)),
        *(repos.events.append([event(n)]) for n in range(30)),
    )
    assert len(ids(await repos.agents.query(AgentQuery(capabilities=["x"])))) == 30
    assert await repos.tasks.count() == {"pending": 30}
    assert [e.id for e in await repos.events.read(0, 100)] == list(range(1, 31))


# -- lifecycle --------------------------------------------------------------------------


async def test_check_passes_when_open(repos: Repositories) -> None:
    await repos.check()


async def test_check_before_open_raises_store_unavailable(repos_url: str) -> None:
    repos = open_repositories(repos_url)
    with pytest.raises(StoreUnavailable):
        await repos.check()
    await repos.close()  # closing what never opened is fine too


async def test_after_close_everything_raises_store_unavailable(repos: Repositories) -> None:
    await repos.close()
    with pytest.raises(StoreUnavailable):
        await repos.check()
    await repos.close()  # idempotent
    with pytest.raises(StoreUnavailable):
        await repos.check()
    with pytest.raises(StoreUnavailable):
        await repos.agents.get("default", "a")
    with pytest.raises(StoreUnavailable):
        await repos.agents.put(make_agent("a"), replace=False)
    with pytest.raises(StoreUnavailable):
        await repos.tasks.insert(make_task("t"))
    with pytest.raises(StoreUnavailable):
        await repos.tasks.query(ALL_TASKS)
    with pytest.raises(StoreUnavailable):
        await repos.api_keys.keys(None)
    with pytest.raises(StoreUnavailable):
        await repos.events.append([event(1)])
    with pytest.raises(StoreUnavailable):
        await repos.events.last_id()
    with pytest.raises(StoreUnavailable):
        await repos.llm_usage.rows("2024-05-01")
    with pytest.raises(StoreUnavailable):
        async with repos.transaction():
            pass


# -- open_repositories ----------------------------------------------------------------


async def test_memory_url_gives_repositories_of_their_own() -> None:
    first, second = open_repositories("memory://"), open_repositories("memory://")
    assert isinstance(first, MemoryRepositories)
    await first.open()
    await second.open()
    try:
        await first.check()
        assert await first.agents.put(make_agent("a"), replace=False)
        assert await first.agents.get("default", "a") == make_agent("a")
        assert await second.agents.get("default", "a") is None
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize(
    "url",
    ["mysql://x", "sqlite://", "sqlite:///", "agentcore.db", "redis://localhost", "memory", ""],
)
def test_unknown_urls_raise_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        open_repositories(url)


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("memory://", None),
        ("sqlite://:memory:", SqliteDatabase),
        ("sqlite:///:memory:", SqliteDatabase),
        ("postgresql://nowhere.invalid/db", PostgresDatabase),
        ("postgres://nowhere.invalid/db", PostgresDatabase),
    ],
)
async def test_open_repositories_does_not_connect(url: str, database: type | None) -> None:
    repos = open_repositories(url)
    if database is None:
        assert isinstance(repos, MemoryRepositories)
    else:
        assert isinstance(repos, SqlRepositories)
        assert isinstance(repos.database, database)
    with pytest.raises(StoreUnavailable):
        await repos.check()


def test_a_sqlite_file_is_not_created_before_open(tmp_path: Path) -> None:
    open_repositories(f"sqlite:///{tmp_path}/nested/agentcore.db")
    assert list(tmp_path.iterdir()) == []


async def test_a_sqlite_file_keeps_data_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/agentcore.db"
    agent = make_agent("durable", capabilities=("x",), tags=("t",))
    task = make_task("t1", status=TaskStatus.ASSIGNED, agent_id="durable")
    first = open_repositories(url)
    await first.open()
    assert await first.agents.put(agent, replace=False)
    assert await first.tasks.insert(task)
    await first.events.append([event(1)])
    await first.close()

    second = open_repositories(url)
    await second.open()
    try:
        assert await second.agents.get("default", "durable") == agent
        query = AgentQuery(capabilities=["x"], tags=["t"])
        assert ids(await second.agents.query(query)) == ["durable"]
        assert await second.tasks.get("default", "t1") == task
        assert await stored_loads(second) == {"durable": 1}
        assert await second.events.last_id() == 1
    finally:
        await second.close()


async def test_a_relative_sqlite_path_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    repos = open_repositories("sqlite:///var/agentcore.db")
    await repos.open()
    await repos.close()
    assert (tmp_path / "var" / "agentcore.db").is_file()
