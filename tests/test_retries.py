"""Clients that retry and edit at once: ETag, If-None-Match, If-Match, Idempotency-Key, batches,
and the per-user task quota."""

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import ApiClient, User, running_service


async def _create(api: ApiClient, user: User, **fields: Any) -> Any:
    answer = await api.post(user.tasks, token=user.token, json={"title": "t", **fields})
    assert answer.status == 201
    return answer


# ETag and If-None-Match.


async def test_every_answer_with_a_task_carries_its_etag(api: ApiClient, alice: User) -> None:
    created = await _create(api, alice)
    task_id, etag = created.json["id"], created.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    got = await api.get(f"{alice.tasks}/{task_id}", token=alice.token)
    assert got.headers["ETag"] == etag
    updated = await api.put(f"{alice.tasks}/{task_id}", token=alice.token, json={"title": "new"})
    assert updated.headers["ETag"] not in (etag, None)
    completed = await api.patch(f"{alice.tasks}/{task_id}/complete", token=alice.token)
    assert completed.headers["ETag"] not in (etag, updated.headers["ETag"])
    again = await api.get(f"{alice.tasks}/{task_id}", token=alice.token)
    assert again.headers["ETag"] == completed.headers["ETag"]  # never changes on its own


async def test_linking_the_next_occurrence_changes_the_etag(api: ApiClient, alice: User) -> None:
    created = await _create(api, alice, recurrence={"every": "day"})
    done = await api.patch(
        f"{alice.tasks}/{created.json['id']}/complete", token=alice.token, json={"completed": True}
    )
    assert done.json["next_task_id"] is not None
    got = await api.get(f"{alice.tasks}/{created.json['id']}", token=alice.token)
    assert got.headers["ETag"] == done.headers["ETag"] != created.headers["ETag"]


async def test_if_none_match_on_a_task_answers_304(api: ApiClient, alice: User) -> None:
    created = await _create(api, alice)
    url, etag = f"{alice.tasks}/{created.json['id']}", created.headers["ETag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        answer = await api.get(url, token=alice.token, headers={"If-None-Match": header})
        assert answer.status == 304 and answer.body == b"" and answer.headers["ETag"] == etag
    await api.put(url, token=alice.token, json={"title": "changed"})
    assert (await api.get(url, token=alice.token, headers={"If-None-Match": etag})).status == 200


async def test_the_list_has_a_weak_etag_and_answers_304_until_a_write(
    api: ApiClient, alice: User, bob: User
) -> None:
    await _create(api, alice)
    first = await api.get(alice.tasks, token=alice.token)
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    same = await api.get(alice.tasks, token=alice.token, headers={"If-None-Match": etag})
    assert same.status == 304 and same.body == b""
    await _create(api, bob)  # another user's write changes nothing here
    assert (await api.get(alice.tasks, token=alice.token, headers={"If-None-Match": etag})).status == 304
    await _create(api, alice)
    changed = await api.get(alice.tasks, token=alice.token, headers={"If-None-Match": etag})
    assert changed.status == 200 and len(changed.json) == 2 and changed.headers["ETag"] != etag


# If-Match.


async def test_if_match_guards_every_write(api: ApiClient, alice: User) -> None:
    created = await _create(api, alice)
    url, etag = f"{alice.tasks}/{created.json['id']}", created.headers["ETag"]
    stale = (await api.put(url, token=alice.token, json={"title": "moved on"})).headers["ETag"]
    for method, path, body in [
        ("PUT", url, {"title": "x"}),
        ("PATCH", f"{url}/complete", ...),
        ("DELETE", url, ...),
    ]:
        refused = await api.request(method, path, token=alice.token, json=body, headers={"If-Match": etag})
        assert refused.status == 412, method
        assert refused.headers["ETag"] == stale
        assert refused.content_type == "application/problem+json"
    ok = await api.put(url, token=alice.token, json={"title": "y"}, headers={"If-Match": stale})
    assert ok.status == 200
    assert (await api.patch(f"{url}/complete", token=alice.token, headers={"If-Match": "*"})).status == 200
    latest = (await api.get(url, token=alice.token)).headers["ETag"]
    assert (await api.delete(url, token=alice.token, headers={"If-Match": f'"nope", {latest}'})).status == 204
    assert (await api.delete(url, token=alice.token, headers={"If-Match": "*"})).status == 404
    # A task deleted since it was read fails the condition (412); one that never was is 404.
    assert (await api.delete(url, token=alice.token, headers={"If-Match": latest})).status == 412
    assert (
        await api.delete(f"{alice.tasks}/999999", token=alice.token, headers={"If-Match": latest})
    ).status == 404


async def test_a_weak_or_foreign_tag_never_matches(api: ApiClient, alice: User) -> None:
    created = await _create(api, alice)
    url, etag = f"{alice.tasks}/{created.json['id']}", created.headers["ETag"]
    for header in (f"W/{etag}", '"garbage"', "not-even-quoted", '"1.zzzz"'):
        assert (
            await api.put(url, token=alice.token, json={"title": "x"}, headers={"If-Match": header})
        ).status == 412


async def test_another_users_task_is_404_whatever_the_if_match(
    api: ApiClient, alice: User, bob: User
) -> None:
    created = await _create(api, bob)
    url = f"{alice.tasks}/{created.json['id']}"
    answer = await api.put(
        url, token=alice.token, json={"title": "x"}, headers={"If-Match": created.headers["ETag"]}
    )
    assert answer.status == 404


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_concurrent_writers_with_the_same_if_match_exactly_one_wins(
    service_url: str, method: str
) -> None:
    async with aiohttp.ClientSession() as http:
        account = {"email": f"{time.time_ns()}@example.com", "password": "concurrent", "name": "C"}
        async with http.post(f"{service_url}/api/auth/register", json=account) as answer:
            grant = await answer.json()
        headers = {"Authorization": f"Bearer {grant['access_token']}"}
        tasks = f"{service_url}/api/{grant['user']['id']}/tasks"
        async with http.post(tasks, json={"title": "contested"}, headers=headers) as answer:
            task, etag = await answer.json(), answer.headers["ETag"]
        url = f"{tasks}/{task['id']}" + ("/complete" if method == "PATCH" else "")

        async def write(n: int) -> int:
            body = {"title": f"writer {n}"} if method == "PUT" else None
            async with http.request(method, url, json=body, headers={**headers, "If-Match": etag}) as answer:
                return answer.status

        statuses = sorted(await asyncio.gather(*(write(n) for n in range(10))))
        assert statuses[0] in (200, 204) and statuses[1:] == [412] * 9, statuses


# Idempotency-Key.


async def test_a_retried_create_is_answered_again_byte_for_byte(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    headers = {"Idempotency-Key": '"create-milk-1"'}
    first = await api.post(alice.tasks, token=alice.token, json={"title": "milk"}, headers=headers)
    again = await api.post(alice.tasks, token=alice.token, json={"title": "milk"}, headers=headers)
    assert first.status == again.status == 201
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE user_id = $1", alice.id) == 1
    # A bare token is the same key.
    bare = await api.post(
        alice.tasks, token=alice.token, json={"title": "milk"}, headers={"Idempotency-Key": "create-milk-1"}
    )
    assert bare.body == first.body


async def test_a_retried_toggle_does_not_undo_itself(api: ApiClient, alice: User) -> None:
    created = await _create(api, alice)
    url, headers = f"{alice.tasks}/{created.json['id']}/complete", {"Idempotency-Key": "toggle-1"}
    first = await api.patch(url, token=alice.token, headers=headers)
    second = await api.patch(url, token=alice.token, headers=headers)
    assert first.json["completed"] is second.json["completed"] is True
    assert (await api.get(f"{alice.tasks}/{created.json['id']}", token=alice.token)).json["completed"] is True


async def test_the_same_key_with_another_request_is_422(api: ApiClient, alice: User) -> None:
    headers = {"Idempotency-Key": "k"}
    assert (
        await api.post(alice.tasks, token=alice.token, json={"title": "a"}, headers=headers)
    ).status == 201
    other = await api.post(alice.tasks, token=alice.token, json={"title": "b"}, headers=headers)
    assert other.status == 422
    assert "Idempotency-Key" in other.json["detail"]


async def test_keys_of_two_users_never_collide(api: ApiClient, alice: User, bob: User) -> None:
    headers = {"Idempotency-Key": "same-key"}
    mine = await api.post(alice.tasks, token=alice.token, json={"title": "t"}, headers=headers)
    theirs = await api.post(bob.tasks, token=bob.token, json={"title": "t"}, headers=headers)
    assert mine.status == theirs.status == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert theirs.json["user_id"] == bob.id


@pytest.mark.parametrize("key", ["", '""', "with space", "x" * 256, '"unterminated', "é"])
async def test_a_malformed_key_is_400(api: ApiClient, alice: User, key: str) -> None:
    answer = await api.post(
        alice.tasks, token=alice.token, json={"title": "t"}, headers={"Idempotency-Key": key}
    )
    assert answer.status == 400
    assert "Idempotency-Key" in answer.json["errors"]


async def test_errors_are_not_stored(api: ApiClient, alice: User) -> None:
    headers = {"Idempotency-Key": "bad-then-good"}
    assert (await api.post(alice.tasks, token=alice.token, json={"title": ""}, headers=headers)).status == 400
    # The retry of a failed request runs for real (with the same request, it would fail again).
    missing = await api.patch(
        f"{alice.tasks}/999999/complete", token=alice.token, headers={"Idempotency-Key": "m"}
    )
    assert missing.status == 404
    created = await _create(api, alice)
    redo = await api.patch(
        f"{alice.tasks}/{created.json['id']}/complete", token=alice.token, headers={"Idempotency-Key": "m"}
    )
    assert redo.status == 200


async def test_a_key_expires(api: ApiClient, alice: User, db: asyncpg.Connection) -> None:
    headers = {"Idempotency-Key": "short-lived"}
    first = await api.post(alice.tasks, token=alice.token, json={"title": "t"}, headers=headers)
    await db.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE user_id = $1", alice.id
    )
    again = await api.post(alice.tasks, token=alice.token, json={"title": "t"}, headers=headers)
    assert again.status == 201 and again.json["id"] != first.json["id"]
    assert "Idempotent-Replayed" not in again.headers


async def test_a_key_in_flight_is_409(service_url: str, database_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        account = {"email": f"{time.time_ns()}@example.com", "password": "in flight", "name": "F"}
        async with http.post(f"{service_url}/api/auth/register", json=account) as answer:
            grant = await answer.json()
        user_id = grant["user"]["id"]
        headers = {"Authorization": f"Bearer {grant['access_token']}", "Idempotency-Key": "slow"}
        tasks = f"{service_url}/api/{user_id}/tasks"
        # Hold the user's counter row, so the first request stays inside its transaction.
        blocker = await asyncpg.connect(database_url)
        try:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute(
                "INSERT INTO task_counters (user_id) VALUES ($1)"
                " ON CONFLICT (user_id) DO UPDATE SET changes = task_counters.changes",
                user_id,
            )
            first = asyncio.create_task(http.post(tasks, json={"title": "once"}, headers=headers))
            await asyncio.sleep(0.5)
            async with http.post(tasks, json={"title": "once"}, headers=headers) as answer:
                assert answer.status == 409
                assert answer.headers["Retry-After"] == "1"
            await transaction.rollback()
        finally:
            await blocker.close()
        async with await first as answer:
            assert answer.status == 201
            body = await answer.read()
        async with http.post(tasks, json={"title": "once"}, headers=headers) as answer:
            assert answer.status == 201 and await answer.read() == body
            assert answer.headers["Idempotent-Replayed"] == "true"


# The per-user task quota.


async def test_a_user_cannot_create_past_the_quota(
    aiohttp_client: Any, make_app: Any, alice: User, bob: User
) -> None:
    api = ApiClient(await aiohttp_client(make_app(max_tasks_per_user=3)))
    ids = [(await _create(api, alice)).json["id"] for _ in range(3)]
    full = await api.post(alice.tasks, token=alice.token, json={"title": "one too many"})
    assert full.status == 409
    assert "3" in full.json["detail"]
    assert (await api.post(bob.tasks, token=bob.token, json={"title": "bob is fine"})).status == 201
    # The trash counts until purged.
    await api.delete(f"{alice.tasks}/{ids[0]}", token=alice.token)
    assert (await api.post(alice.tasks, token=alice.token, json={"title": "still full"})).status == 409
    await api.delete(f"/api/{alice.id}/trash/{ids[0]}", token=alice.token)
    assert (await api.post(alice.tasks, token=alice.token, json={"title": "room again"})).status == 201


# Batches.


async def test_a_batch_of_100_mixed_operations(api: ApiClient, alice: User) -> None:
    existing = [await _create(api, alice) for _ in range(25)]
    operations: list[dict[str, Any]] = [{"op": "create", "task": {"title": f"new {n}"}} for n in range(25)]
    operations += [
        {
            "op": "update",
            "id": answer.json["id"],
            "task": {"title": "renamed"},
            "if_match": answer.headers["ETag"],
        }
        for answer in existing[:10]
    ]
    operations += [{"op": "complete", "id": answer.json["id"]} for answer in existing[10:20]]
    operations += [
        {"op": "complete", "id": answer.json["id"], "completed": True} for answer in existing[20:25]
    ]
    operations += [{"op": "delete", "id": answer.json["id"]} for answer in existing[:10]]
    operations += [{"op": "create", "task": {"title": f"more {n}"}} for n in range(40)]
    assert len(operations) == 100
    answer = await api.post(f"{alice.tasks}/batch", token=alice.token, json={"operations": operations})
    assert answer.status == 200, answer.json
    results = answer.json["results"]
    assert [result["status"] for result in results] == [201] * 25 + [200] * 25 + [204] * 10 + [201] * 40
    assert all(result["etag"] and result["task"] for result in results if result["status"] != 204)
    assert results[25]["task"]["title"] == "renamed"
    listed = (await api.get(alice.tasks, token=alice.token)).json
    assert len(listed) == 25 + 25 - 10 + 40
    got = await api.get(f"{alice.tasks}/{results[0]['task']['id']}", token=alice.token)
    assert got.headers["ETag"] == results[0]["etag"]


async def test_a_batch_failing_at_its_last_operation_changes_nothing(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    existing = await _create(api, alice)
    before = await db.fetch("SELECT * FROM tasks WHERE user_id = $1 ORDER BY id", alice.id)
    changes = await db.fetchval("SELECT changes FROM task_counters WHERE user_id = $1", alice.id)
    operations: list[dict[str, Any]] = [{"op": "create", "task": {"title": f"n{n}"}} for n in range(98)]
    operations += [{"op": "update", "id": existing.json["id"], "task": {"title": "x"}}]
    operations += [
        {
            "op": "update",
            "id": existing.json["id"],
            "task": {"title": "y"},
            "if_match": existing.headers["ETag"],
        }
    ]
    answer = await api.post(f"{alice.tasks}/batch", token=alice.token, json={"operations": operations})
    assert answer.status == 412
    assert "operations.99" in answer.json["detail"]
    assert await db.fetch("SELECT * FROM tasks WHERE user_id = $1 ORDER BY id", alice.id) == before
    assert await db.fetchval("SELECT changes FROM task_counters WHERE user_id = $1", alice.id) == changes


async def test_another_users_task_in_a_batch_is_404_naming_its_index(
    api: ApiClient, alice: User, bob: User
) -> None:
    bobs = await _create(api, bob)
    operations = [{"op": "create", "task": {"title": "mine"}}, {"op": "delete", "id": bobs.json["id"]}]
    answer = await api.post(f"{alice.tasks}/batch", token=alice.token, json={"operations": operations})
    assert answer.status == 404
    assert "operations.1" in answer.json["detail"]
    assert (await api.get(alice.tasks, token=alice.token)).json == []
    assert (await api.get(f"{bob.tasks}/{bobs.json['id']}", token=bob.token)).status == 200


@pytest.mark.parametrize(
    ("operations", "field"),
    [
        ([{"op": "create", "task": {"title": "t"}}] * 101, "operations"),
        ([], "operations"),
        ([{"op": "create", "task": {"title": ""}}], "operations.0.task.title"),
        ([{"op": "create", "task": {"title": "ok"}}, {"op": "explode"}], "operations.1.op"),
        ([{"op": "update", "task": {"title": "no id"}}], "operations.0.id"),
        ([{"op": "delete", "id": "7"}], "operations.0.id"),
    ],
)
async def test_invalid_batches_are_400_naming_the_field(
    api: ApiClient, alice: User, operations: list[Any], field: str
) -> None:
    answer = await api.post(f"{alice.tasks}/batch", token=alice.token, json={"operations": operations})
    assert answer.status == 400
    assert field in answer.json["errors"], answer.json["errors"]


async def test_a_batch_completing_a_repeating_task_repeats_it(api: ApiClient, alice: User) -> None:
    created = await _create(api, alice, recurrence={"every": "week"})
    answer = await api.post(
        f"{alice.tasks}/batch",
        token=alice.token,
        json={"operations": [{"op": "complete", "id": created.json["id"]}]},
    )
    assert answer.json["results"][0]["task"]["next_task_id"] is not None
    assert len((await api.get(alice.tasks, token=alice.token)).json) == 2


async def test_each_operation_counts_against_the_write_limit(
    aiohttp_client: Any, make_app: Any, alice: User
) -> None:
    api = ApiClient(await aiohttp_client(make_app(rate_limit_writes=10)))
    operations = [{"op": "create", "task": {"title": f"t{n}"}} for n in range(11)]
    answer = await api.post(f"{alice.tasks}/batch", token=alice.token, json={"operations": operations})
    assert answer.status == 429
    assert (await api.get(alice.tasks, token=alice.token)).json == []
    ten = await api.post(f"{alice.tasks}/batch", token=alice.token, json={"operations": operations[:10]})
    assert ten.status == 200


async def test_a_batch_with_an_idempotency_key_is_replayed(api: ApiClient, alice: User) -> None:
    body = {"operations": [{"op": "create", "task": {"title": "once"}}]}
    headers = {"Idempotency-Key": "batch-1"}
    first = await api.post(f"{alice.tasks}/batch", token=alice.token, json=body, headers=headers)
    again = await api.post(f"{alice.tasks}/batch", token=alice.token, json=body, headers=headers)
    assert again.body == first.body and again.headers["Idempotent-Replayed"] == "true"
    assert len((await api.get(alice.tasks, token=alice.token)).json) == 1


async def test_one_user_cannot_hold_the_whole_pool(database_url: str) -> None:
    env = {
        "DB_POOL_MAX_SIZE": "4",
        "DB_POOL_MIN_SIZE": "1",
        "DB_ACQUIRE_TIMEOUT": "2",
        "RATE_LIMIT_WRITES": "0",
    }
    with running_service(database_url, **env) as (base_url, _):  # a share of 4 // 3 = 1 per user
        async with aiohttp.ClientSession() as http:
            grants = []
            for name in ("hog", "other"):
                account = {
                    "email": f"{name}{time.time_ns()}@example.com",
                    "password": "share alike",
                    "name": name,
                }
                async with http.post(f"{base_url}/api/auth/register", json=account) as answer:
                    grants.append(await answer.json())
            hog, other = grants
            hog_tasks = f"{base_url}/api/{hog['user']['id']}/tasks"
            headers = {"Authorization": f"Bearer {hog['access_token']}"}
            # The hog's writes are held inside the database: another connection holds their
            # counter row, so each one that gets a pooled connection keeps it.
            blocker = await asyncpg.connect(database_url)
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute(
                "INSERT INTO task_counters (user_id) VALUES ($1)"
                " ON CONFLICT (user_id) DO UPDATE SET changes = task_counters.changes",
                hog["user"]["id"],
            )
            try:
                writes = [
                    asyncio.create_task(http.post(hog_tasks, json={"title": "t"}, headers=headers))
                    for _ in range(8)
                ]
                await asyncio.sleep(0.5)
                started = time.monotonic()
                other_tasks = f"{base_url}/api/{other['user']['id']}/tasks"
                async with http.get(
                    other_tasks, headers={"Authorization": f"Bearer {other['access_token']}"}
                ) as answer:
                    assert answer.status == 200
                assert time.monotonic() - started < 1.0
            finally:
                await transaction.rollback()
                await blocker.close()
            statuses = []
            for write in writes:
                async with await write as answer:
                    statuses.append(answer.status)
            assert set(statuses) <= {201, 503}, statuses  # the hog's own excess waits, and may time out
