"""The change feed: every change once, in commit order, never one that committed late skipped;
the whole state to start from; long polling; tombstones and 410; the trash and its purge."""

import asyncio
import random
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from service.db import queries
from service.jobs import CHORES, run_once
from service.keys import PG_POOL, SETTINGS
from service.settings import Settings
from tests.conftest import TEST_SECRET, ApiClient, User, running_service


async def _feed(api: ApiClient, user: User, since: str | None = None, **params: Any) -> dict[str, Any]:
    query = "&".join(
        f"{key}={value}" for key, value in ({"since": since} | params).items() if value is not None
    )
    answer = await api.get(f"/api/{user.id}/changes?{query}", token=user.token)
    assert answer.status == 200, answer
    feed: dict[str, Any] = answer.json
    return feed


async def _drain(api: ApiClient, user: User, since: str | None = None, limit: int = 500) -> tuple[list, str]:
    changes: list[dict[str, Any]] = []
    while True:
        page = await _feed(api, user, since, limit=limit)
        changes += page["changes"]
        since = page["cursor"]
        if not page["has_more"]:
            return changes, since


async def test_a_new_client_gets_the_whole_state_then_what_follows(api: ApiClient, alice: User) -> None:
    ids = [
        (await api.post(alice.tasks, token=alice.token, json={"title": f"t{n}"})).json["id"] for n in range(5)
    ]
    first = await _feed(api, alice, limit=2)
    assert [change["task"]["id"] for change in first["changes"]] == ids[:2]
    assert first["has_more"] is True
    rest, cursor = await _drain(api, alice, first["cursor"], limit=2)
    assert [change["task"]["id"] for change in rest] == ids[2:]
    assert all(change["op"] == "upsert" and change["etag"] for change in first["changes"] + rest)
    assert (await _feed(api, alice, cursor))["changes"] == []
    await api.put(f"{alice.tasks}/{ids[0]}", token=alice.token, json={"title": "renamed"})
    await api.delete(f"{alice.tasks}/{ids[1]}", token=alice.token)
    later = await _feed(api, alice, cursor)
    assert [(c["op"], c.get("task", {}).get("title"), c.get("id")) for c in later["changes"]] == [
        ("upsert", "renamed", None),
        ("delete", None, ids[1]),
    ]
    assert later["changes"][1]["deleted_at"]


async def test_a_task_appears_once_per_answer_in_its_latest_state(api: ApiClient, alice: User) -> None:
    _, cursor = await _drain(api, alice)
    task = (await api.post(alice.tasks, token=alice.token, json={"title": "a"})).json
    for title in ("b", "c", "d"):
        await api.put(f"{alice.tasks}/{task['id']}", token=alice.token, json={"title": title})
    page = await _feed(api, alice, cursor)
    assert [(c["op"], c["task"]["title"]) for c in page["changes"]] == [("upsert", "d")]
    etag = (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).headers["ETag"]
    assert page["changes"][0]["etag"] == etag


async def test_the_cursor_belongs_to_its_user(api: ApiClient, alice: User, bob: User) -> None:
    _, cursor = await _drain(api, alice)
    answer = await api.get(f"/api/{bob.id}/changes?since={cursor}", token=bob.token)
    assert answer.status == 400
    assert "since" in answer.json["errors"]
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    assert (await api.get(f"/api/{alice.id}/changes?since={tampered}", token=alice.token)).status == 400


async def test_another_users_changes_never_show(api: ApiClient, alice: User, bob: User) -> None:
    await api.post(bob.tasks, token=bob.token, json={"title": "bob's"})
    changes, _ = await _drain(api, alice)
    assert changes == []


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "wait=0", "wait=61", "since=", "unknown=1"])
async def test_bad_parameters_are_400(api: ApiClient, alice: User, query: str) -> None:
    assert (await api.get(f"/api/{alice.id}/changes?{query}", token=alice.token)).status == 400


async def test_a_cursor_older_than_what_is_kept_is_gone(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    await api.post(alice.tasks, token=alice.token, json={"title": "old"})
    _, cursor = await _drain(api, alice)
    for n in range(3):
        await api.post(alice.tasks, token=alice.token, json={"title": f"new {n}"})
    await db.execute(
        "UPDATE task_changes SET changed_at = now() - interval '31 days' WHERE user_id = $1", alice.id
    )
    assert await queries.purge_changes(db, retention_days=30) == 4
    gone = await api.get(f"/api/{alice.id}/changes?since={cursor}", token=alice.token)
    assert gone.status == 410
    assert "without `since`" in gone.json["detail"]
    # Starting again from nothing works, and gets every live task.
    changes, _ = await _drain(api, alice)
    assert len(changes) == 4


# The trash.


async def test_deleted_tasks_go_to_the_trash_and_come_back(api: ApiClient, alice: User) -> None:
    task = (await api.post(alice.tasks, token=alice.token, json={"title": "keep me", "tags": ["x"]})).json
    assert (await api.delete(f"{alice.tasks}/{task['id']}", token=alice.token)).status == 204
    assert (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).status == 404
    assert (await api.get(alice.tasks, token=alice.token)).json == []
    trash = (await api.get(f"/api/{alice.id}/trash", token=alice.token)).json
    assert [(item["id"], item["title"], item["tags"]) for item in trash] == [(task["id"], "keep me", ["x"])]
    assert trash[0]["deleted_at"]
    restored = await api.post(f"/api/{alice.id}/trash/{task['id']}/restore", token=alice.token)
    assert restored.status == 200
    assert restored.json["id"] == task["id"] and restored.json["title"] == "keep me"
    assert restored.json["updated_at"] > task["updated_at"]
    assert [t["id"] for t in (await api.get(alice.tasks, token=alice.token)).json] == [task["id"]]
    assert (await api.get(f"/api/{alice.id}/trash", token=alice.token)).json == []
    assert (await api.post(f"/api/{alice.id}/trash/{task['id']}/restore", token=alice.token)).status == 404


async def test_purging_one_and_emptying_the_trash(api: ApiClient, alice: User, bob: User) -> None:
    ids = [
        (await api.post(alice.tasks, token=alice.token, json={"title": f"t{n}"})).json["id"] for n in range(3)
    ]
    for task_id in ids:
        await api.delete(f"{alice.tasks}/{task_id}", token=alice.token)
    bobs = (await api.post(bob.tasks, token=bob.token, json={"title": "bob's"})).json["id"]
    await api.delete(f"{bob.tasks}/{bobs}", token=bob.token)
    assert (await api.delete(f"/api/{alice.id}/trash/{ids[0]}", token=alice.token)).status == 204
    assert (await api.delete(f"/api/{alice.id}/trash/{ids[0]}", token=alice.token)).status == 404
    assert (await api.delete(f"/api/{alice.id}/trash/{bobs}", token=alice.token)).status == 404
    assert (await api.post(f"/api/{alice.id}/trash/{ids[1]}/restore", token=alice.token)).status == 200
    assert (await api.delete(f"/api/{alice.id}/trash", token=alice.token)).status == 204
    assert (await api.get(f"/api/{alice.id}/trash", token=alice.token)).json == []
    assert [t["id"] for t in (await api.get(alice.tasks, token=alice.token)).json] == [ids[1]]
    assert len((await api.get(f"/api/{bob.id}/trash", token=bob.token)).json) == 1


async def test_the_trash_pages_newest_first(api: ApiClient, alice: User) -> None:
    ids = [
        (await api.post(alice.tasks, token=alice.token, json={"title": f"t{n}"})).json["id"] for n in range(5)
    ]
    for task_id in ids:
        await api.delete(f"{alice.tasks}/{task_id}", token=alice.token)
    seen, url = [], f"/api/{alice.id}/trash?limit=2"
    while url:
        answer = await api.get(url, token=alice.token)
        seen += [item["id"] for item in answer.json]
        link = answer.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""
    assert seen == ids[::-1]


async def test_the_restore_of_a_task_is_an_upsert_in_the_feed(api: ApiClient, alice: User) -> None:
    task = (await api.post(alice.tasks, token=alice.token, json={"title": "t"})).json
    _, cursor = await _drain(api, alice)
    await api.delete(f"{alice.tasks}/{task['id']}", token=alice.token)
    await api.post(f"/api/{alice.id}/trash/{task['id']}/restore", token=alice.token)
    page = await _feed(api, alice, cursor)
    assert [(c["op"], c["task"]["id"]) for c in page["changes"]] == [("upsert", task["id"])]


# Real processes from here on: real pools, real concurrency, real commits.


def _headers(grant: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {grant['access_token']}"}


async def _account(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    account = {
        "email": f"{time.time_ns()}{random.random()}@example.com",
        "password": "sync sync sync",
        "name": "S",
    }
    async with http.post(f"{base_url}/api/auth/register", json=account) as answer:
        assert answer.status == 201
        grant: dict[str, Any] = await answer.json()
        return grant


async def test_a_change_that_commits_late_is_never_skipped(database_url: str, service_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        grant = await _account(http, service_url)
        user_id, headers = grant["user"]["id"], _headers(grant)
        feed = f"{service_url}/api/{user_id}/changes"

        async def poll(cursor: str) -> dict[str, Any]:
            async with http.get(f"{feed}?since={cursor}", headers=headers) as answer:
                assert answer.status == 200
                page: dict[str, Any] = await answer.json()
                return page

        async with http.get(feed, headers=headers) as answer:
            cursor = (await answer.json())["cursor"]
        # A first writer's transaction stays open across a second writer's request and a poll.
        first = await asyncpg.connect(database_url)
        try:
            transaction = first.transaction()
            await transaction.start()
            late = await first.fetchval(
                "INSERT INTO tasks (user_id, title) VALUES ($1, 'late') RETURNING id", user_id
            )
            await first.fetchval(
                "SELECT record_task_change($1, $2, 'created', to_jsonb(t))"
                " FROM tasks t WHERE user_id = $1 AND id = $2",
                user_id,
                late,
            )
            second = asyncio.create_task(
                http.post(f"{service_url}/api/{user_id}/tasks", json={"title": "early"}, headers=headers)
            )
            await asyncio.sleep(0.5)
            page = await poll(cursor)
            assert page["changes"] == []  # neither has committed: the second waits for the first
            assert not second.done()
            cursor = page["cursor"]
            await transaction.commit()
        finally:
            await first.close()
        async with await second as answer:
            assert answer.status == 201
        page = await poll(cursor)
        assert [change["task"]["title"] for change in page["changes"]] == ["late", "early"]
        assert (await poll(page["cursor"]))["changes"] == []


async def _random_writes(
    http: aiohttp.ClientSession, base_url: str, grant: dict[str, Any], count: int, seed: int
) -> None:
    chance = random.Random(seed)
    user_id, headers = grant["user"]["id"], _headers(grant)
    tasks, trash = f"{base_url}/api/{user_id}/tasks", f"{base_url}/api/{user_id}/trash"
    for _ in range(count):
        async with http.get(f"{tasks}?limit=50&sort=updated", headers=headers) as answer:
            live = [task["id"] for task in await answer.json()]
        async with http.get(f"{trash}?limit=50", headers=headers) as answer:
            trashed = [task["id"] for task in await answer.json()]
        kind = chance.choice(["create", "create", "update", "complete", "delete", "restore", "purge"])
        if kind == "create" or (not live and kind in ("update", "complete", "delete")):
            body = {"title": f"t{chance.random()}", "recurrence": chance.choice([None, {"every": "day"}])}
            request = http.post(tasks, json=body, headers=headers)
        elif kind == "update":
            request = http.put(f"{tasks}/{chance.choice(live)}", json={"title": "u"}, headers=headers)
        elif kind == "complete":
            request = http.patch(f"{tasks}/{chance.choice(live)}/complete", headers=headers)
        elif kind == "delete":
            request = http.delete(f"{tasks}/{chance.choice(live)}", headers=headers)
        elif kind == "restore" and trashed:
            request = http.post(f"{trash}/{chance.choice(trashed)}/restore", headers=headers)
        elif trashed:
            request = http.delete(f"{trash}/{chance.choice(trashed)}", headers=headers)
        else:
            continue
        async with request as answer:
            assert answer.status in (200, 201, 204, 404), (kind, answer.status, await answer.text())


async def test_a_client_replaying_the_feed_ends_with_exactly_the_servers_state(service_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        grant = await _account(http, service_url)
        user_id, headers = grant["user"]["id"], _headers(grant)
        feed = f"{service_url}/api/{user_id}/changes"
        mirror: dict[int, dict[str, Any]] = {}
        cursor: str | None = None

        async def catch_up() -> None:
            nonlocal cursor
            while True:
                url = f"{feed}?limit=37" + (f"&since={cursor}" if cursor else "")
                async with http.get(url, headers=headers) as answer:
                    assert answer.status == 200
                    page = await answer.json()
                for change in page["changes"]:
                    if change["op"] == "upsert":
                        mirror[change["task"]["id"]] = change["task"]
                    else:
                        mirror.pop(change["id"], None)
                cursor = page["cursor"]
                if not page["has_more"]:
                    return

        # Several connections write at once while the client follows the feed.
        writers = [
            asyncio.create_task(_random_writes(http, service_url, grant, 125, seed)) for seed in range(8)
        ]
        while not all(writer.done() for writer in writers):
            await catch_up()
            await asyncio.sleep(0.05)
        for writer in writers:
            writer.result()
        await catch_up()
        server: dict[int, dict[str, Any]] = {}
        url = f"/api/{user_id}/tasks?limit=200"
        while url:
            async with http.get(f"{service_url}{url}", headers=headers) as answer:
                server.update((task["id"], task) for task in await answer.json())
                link = answer.headers.get("Link", "")
            url = link[1 : link.index(">")] if link else ""
        assert len(server) > 50
        assert mirror == server


async def test_long_polling_wakes_on_a_change_and_times_out_without_one(service_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        grant, other = await _account(http, service_url), await _account(http, service_url)
        feed = f"{service_url}/api/{grant['user']['id']}/changes"
        async with http.get(feed, headers=_headers(grant)) as answer:
            cursor = (await answer.json())["cursor"]
        started = time.monotonic()
        async with http.get(f"{feed}?since={cursor}&wait=1", headers=_headers(grant)) as answer:
            page = await answer.json()
        assert page["changes"] == [] and page["cursor"] == cursor
        assert 0.9 <= time.monotonic() - started < 3

        waiting = asyncio.create_task(http.get(f"{feed}?since={cursor}&wait=30", headers=_headers(grant)))
        await asyncio.sleep(0.5)
        # Another user's change does not wake this waiter...
        other_tasks = f"{service_url}/api/{other['user']['id']}/tasks"
        async with http.post(other_tasks, json={"title": "not yours"}, headers=_headers(other)):
            pass
        await asyncio.sleep(0.5)
        assert not waiting.done()
        # ...its own user's does, at once.
        started = time.monotonic()
        tasks = f"{service_url}/api/{grant['user']['id']}/tasks"
        async with http.post(tasks, json={"title": "wake up"}, headers=_headers(grant)):
            pass
        async with await waiting as answer:
            page = await answer.json()
        assert time.monotonic() - started < 2
        assert [change["task"]["title"] for change in page["changes"]] == ["wake up"]


async def test_500_waiters_on_a_pool_of_10_hold_no_connection(database_url: str) -> None:
    with running_service(database_url, DB_POOL_MAX_SIZE="10", DB_POOL_MIN_SIZE="2") as (base_url, _):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            grants = [await _account(http, base_url) for _ in range(5)]
            cursors = []
            for grant in grants:
                async with http.get(
                    f"{base_url}/api/{grant['user']['id']}/changes", headers=_headers(grant)
                ) as answer:
                    cursors.append((await answer.json())["cursor"])

            async def wait(index: int) -> dict[str, Any]:
                grant = grants[index % 5]
                url = f"{base_url}/api/{grant['user']['id']}/changes?since={cursors[index % 5]}&wait=30"
                async with http.get(url, headers=_headers(grant)) as answer:
                    assert answer.status == 200
                    page: dict[str, Any] = await answer.json()
                    return page

            waiters = [asyncio.create_task(wait(index)) for index in range(500)]
            await asyncio.sleep(3)
            assert not any(waiter.done() for waiter in waiters)
            # Everything else is served meanwhile.
            started = time.monotonic()
            for grant in grants[1:]:
                async with http.get(
                    f"{base_url}/api/{grant['user']['id']}/tasks", headers=_headers(grant)
                ) as answer:
                    assert answer.status == 200
            assert time.monotonic() - started < 2
            # One user's change wakes exactly that user's 100 waiters.
            tasks = f"{base_url}/api/{grants[0]['user']['id']}/tasks"
            async with http.post(tasks, json={"title": "ping"}, headers=_headers(grants[0])) as answer:
                assert answer.status == 201
            woken = [waiters[index] for index in range(0, 500, 5)]
            pages = await asyncio.wait_for(asyncio.gather(*woken), timeout=10)
            assert all([c["task"]["title"] for c in page["changes"]] == ["ping"] for page in pages)
            assert not any(waiters[index].done() for index in range(500) if index % 5)
            for grant in grants[1:]:
                tasks = f"{base_url}/api/{grant['user']['id']}/tasks"
                async with http.post(tasks, json={"title": "pong"}, headers=_headers(grant)) as answer:
                    assert answer.status == 201
            rest = await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
            assert all(len(page["changes"]) == 1 for page in rest)


async def test_two_instances_purging_the_trash_at_once_purge_each_task_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    email = f"purge{time.time_ns()}@example.com"
    try:
        user_id = await conn.fetchval(
            "INSERT INTO users (email, name, password_hash) VALUES ($1, 'P', 'x') RETURNING id", email
        )
        await conn.execute("INSERT INTO task_counters (user_id, tasks) VALUES ($1, 1200)", user_id)
        await conn.execute(
            """INSERT INTO trashed_tasks (user_id, id, deleted_at, task)
               SELECT $1, n, now() - make_interval(days => CASE WHEN n <= 1000 THEN 31 ELSE 1 END), '{}'
               FROM generate_series(1, 1200) AS n""",
            user_id,
        )
        chore = next(chore for chore in CHORES if chore.name == "purge_trash")
        instances = []
        for _ in range(2):  # two instances, each with a pool of its own, each round three times
            instance = web.Application()
            instance[PG_POOL] = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
            instance[SETTINGS] = Settings(database_url=database_url, jwt_secret=TEST_SECRET)
            instances.append(instance)
        try:
            outcomes = await asyncio.gather(*(run_once(instance, chore) for instance in instances * 3))
        finally:
            for instance in instances:
                await instance[PG_POOL].close()
        assert sum(outcome or 0 for outcome in outcomes) == 1000
        assert await conn.fetchval("SELECT count(*) FROM trashed_tasks WHERE user_id = $1", user_id) == 200
        assert await conn.fetchval("SELECT tasks FROM task_counters WHERE user_id = $1", user_id) == 200
    finally:
        await conn.execute("DELETE FROM users WHERE email = $1", email)
        await conn.close()
