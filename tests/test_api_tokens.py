"""Personal API tokens: made with their secret shown once, stored as a hash, limited to their
scopes, checked without a database round trip once seen, their use recorded off the request
path, and refused on every worker of every instance within a second of their deletion."""

import asyncio
import hashlib
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from service import api_tokens
from service.db import queries
from service.keys import PG_POOL
from tests.conftest import ApiClient, User, running_service
from tests.test_revocations import _one_connection_per_worker, _register, every_worker_refuses_within_a_second

READ, WRITE = "tasks:read", "tasks:write"
PEOPLE_ONLY = 'Bearer error="insufficient_scope"'


async def _make(api: ApiClient, user: User, *scopes: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "script", "scopes": list(scopes), **fields}
    answer = await api.post("/api/auth/tokens", token=user.token, json=body)
    assert answer.status == 201, answer
    made: dict[str, Any] = answer.json
    return made


async def test_a_token_is_shown_once_and_stored_as_a_hash(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    answer = await api.post(
        "/api/auth/tokens",
        token=alice.token,
        json={"name": "backup", "scopes": [WRITE, READ], "expires_in_days": 30},
    )
    assert answer.status == 201
    assert answer.headers["Cache-Control"] == "no-store"
    made = answer.json
    assert made["token"].startswith(f"tapi_{alice.id}_")
    assert made["scopes"] == [READ, WRITE] and made["name"] == "backup" and made["last_used_at"] is None
    row = await db.fetchrow("SELECT * FROM api_tokens WHERE user_id = $1", alice.id)
    assert bytes(row["secret_hash"]) == hashlib.sha256(made["token"].encode()).digest()
    assert made["token"].encode() not in b"".join(str(value).encode() for value in row.values())
    assert 29.9 < (row["expires_at"] - row["created_at"]).total_seconds() / 86400 < 30.1
    listed = await api.get("/api/auth/tokens", token=alice.token)
    assert listed.json == [{key: value for key, value in made.items() if key != "token"}]
    assert made["token"] not in listed.body.decode()
    never = await _make(api, alice, READ)
    assert never["expires_at"] is None


async def test_a_read_token_reads_and_cannot_write(api: ApiClient, alice: User) -> None:
    task = (await api.post(alice.tasks, token=alice.token, json={"title": "t"})).json
    token = (await _make(api, alice, READ))["token"]
    assert (await api.get(alice.tasks, token=token)).status == 200
    assert (await api.get("/api/me/tasks", token=token)).status == 200
    assert (await api.get(f"{alice.tasks}/{task['id']}", token=token)).status == 200
    writes = [
        await api.post(alice.tasks, token=token, json={"title": "x"}),
        await api.put(f"{alice.tasks}/{task['id']}", token=token, json={"title": "x"}),
        await api.patch(f"{alice.tasks}/{task['id']}/complete", token=token),
        await api.delete(f"{alice.tasks}/{task['id']}", token=token),
    ]
    for answer in writes:
        assert answer.status == 403
        assert answer.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="tasks:write"'
        assert answer.json["detail"] == "This API token does not have the tasks:write scope."
    assert (await api.get(f"{alice.tasks}/{task['id']}", token=alice.token)).json == task


async def test_a_write_token_writes_and_cannot_read(api: ApiClient, alice: User) -> None:
    token = (await _make(api, alice, WRITE))["token"]
    created = await api.post(alice.tasks, token=token, json={"title": "from a script"})
    assert created.status == 201
    task_url = f"{alice.tasks}/{created.json['id']}"
    assert (await api.patch(f"{task_url}/complete", token=token)).status == 200
    assert (await api.put(task_url, token=token, json={"title": "renamed"})).status == 200
    for answer in (await api.get(alice.tasks, token=token), await api.get(task_url, token=token)):
        assert answer.status == 403
        assert answer.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="tasks:read"'
    assert (await api.delete(task_url, token=token)).status == 204


async def test_an_api_token_cannot_manage_tokens_sessions_the_password_or_the_account(
    api: ApiClient, alice: User
) -> None:
    made = await _make(api, alice, READ, WRITE)
    token = made["token"]
    me = await api.get("/api/auth/me", token=token)
    assert me.status == 200 and me.json["id"] == alice.id
    refused = [
        await api.get("/api/auth/tokens", token=token),
        await api.post("/api/auth/tokens", token=token, json={"name": "n", "scopes": [READ]}),
        await api.delete(f"/api/auth/tokens/{made['id']}", token=token),
        await api.get("/api/auth/sessions", token=token),
        await api.delete("/api/auth/sessions", token=token),
        await api.delete("/api/auth/sessions/00000000-0000-0000-0000-000000000000", token=token),
        await api.put(
            "/api/auth/password", token=token, json={"current_password": "x", "new_password": "long enough"}
        ),
        await api.post("/api/auth/logout", token=token),
        await api.delete("/api/auth/me", token=token, json={"password": "x"}),
        await api.get("/api/auth/me/export", token=token),
    ]
    for answer in refused:
        assert answer.status == 403, answer
        assert answer.headers["WWW-Authenticate"] == PEOPLE_ONLY
    assert (await api.get("/api/auth/tokens", token=alice.token)).json[0]["id"] == made["id"]


async def test_a_known_token_is_checked_without_a_database_round_trip(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    token = (await _make(api, alice, READ))["token"]
    statements: list[str] = []
    db.add_query_logger(lambda record: statements.append(record.query))
    for _ in range(5):
        assert (await api.get("/api/me/tasks", token=token)).status == 200
    unknown = f"tapi_{alice.id}_{'A' * 43}"
    for _ in range(3):
        assert (await api.get("/api/me/tasks", token=unknown)).status == 401
    await asyncio.sleep(0.1)
    lookups = [sql for sql in statements if sql == queries.find_api_token.sql]
    assert len(lookups) == 2  # one for the token, one for the unknown one; none after
    assert sum("FROM tasks" in sql for sql in statements) == 5


async def test_the_last_use_is_written_off_the_request_path_at_most_once_a_minute(
    aiohttp_client: Any, make_app: Any, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_tokens, "FLUSH_SECONDS", 0.2)
    api = ApiClient(await aiohttp_client(make_app()))
    pool = api.app[PG_POOL]  # the test's connection, which the app's writer uses too: take turns

    async def last_used(*touches: float) -> Any:
        conn = await pool.acquire()
        try:
            for used_at in touches:
                await queries.touch_api_tokens(
                    conn, user_ids=[alice.id], token_ids=[made["id"]], used_at=[used_at]
                )
            return await conn.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1", made["id"])
        finally:
            await pool.release(conn)

    made = await _make(api, alice, READ)
    assert (await api.get("/api/me/tasks", token=made["token"])).status == 200
    deadline = time.monotonic() + 10
    while (used := await last_used()) is None:
        assert time.monotonic() < deadline, "the use was never written"
        await asyncio.sleep(0.05)
    for _ in range(5):
        assert (await api.get("/api/me/tasks", token=made["token"])).status == 200
    await asyncio.sleep(1)  # five more rounds of writing
    assert await last_used() == used
    assert (await api.get("/api/auth/tokens", token=alice.token)).json[0]["last_used_at"] is not None
    # Uses that other workers report within the minute do not write the row either.
    later = used.timestamp() + 30
    assert await last_used(later) == used
    assert (await last_used(later + 61)).timestamp() == pytest.approx(later + 61)


async def test_a_deleted_token_is_refused_at_once(
    api: ApiClient, alice: User, db: asyncpg.Connection
) -> None:
    made = await _make(api, alice, READ)
    kept = await _make(api, alice, READ)
    assert (await api.get("/api/me/tasks", token=made["token"])).status == 200  # checked and remembered
    assert (await api.delete(f"/api/auth/tokens/{made['id']}", token=alice.token)).status == 204
    answer = await api.get("/api/me/tasks", token=made["token"])
    assert answer.status == 401
    assert answer.json["detail"] == "The API token has been deleted."
    assert await db.fetchval(
        "SELECT count(*) FROM revocations WHERE credential = $1", f"api_token:{made['id']}"
    )
    assert (await api.get("/api/me/tasks", token=kept["token"])).status == 200
    again = await api.delete(f"/api/auth/tokens/{made['id']}", token=alice.token)
    assert again.status == 404
    assert [token["id"] for token in (await api.get("/api/auth/tokens", token=alice.token)).json] == [
        kept["id"]
    ]


async def test_another_users_token_cannot_be_deleted(api: ApiClient, alice: User, bob: User) -> None:
    made = await _make(api, alice, READ)
    assert (await api.delete(f"/api/auth/tokens/{made['id']}", token=bob.token)).status == 404
    assert (await api.delete("/api/auth/tokens/99999999999999999999", token=bob.token)).status == 404
    assert (await api.get("/api/me/tasks", token=made["token"])).status == 200
    assert (await api.get(f"/api/{bob.id}/tasks", token=made["token"])).status == 403


async def test_an_expired_token_is_refused(api: ApiClient, alice: User, db: asyncpg.Connection) -> None:
    made = await _make(api, alice, READ, expires_in_days=1)
    await db.execute(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", made["id"]
    )
    answer = await api.get("/api/me/tasks", token=made["token"])
    assert answer.status == 401
    assert answer.json["detail"] == "The API token has expired."


@pytest.mark.parametrize(
    "token",
    [
        "tapi_",
        "tapi_1_short",
        "tapi_0_" + "A" * 43,
        "tapi_1_" + "A" * 44,
        "tapi_99999999999999999999_" + "A" * 43,
    ],
)
async def test_malformed_api_tokens_are_401(api: ApiClient, token: str) -> None:
    answer = await api.get("/api/me/tasks", token=token)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="tasks", error="invalid_token"'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "n", "scopes": []}, "scopes"),
        ({"name": "n", "scopes": ["admin"]}, "scopes"),
        ({"name": "n", "scopes": [READ, READ]}, "scopes"),
        ({"name": "n", "scopes": "tasks:read"}, "scopes"),
        ({"name": "n"}, "scopes"),
        ({"name": "  ", "scopes": [READ]}, "name"),
        ({"name": "n" * 101, "scopes": [READ]}, "name"),
        ({"scopes": [READ]}, "name"),
        ({"name": "n", "scopes": [READ], "expires_in_days": 0}, "expires_in_days"),
        ({"name": "n", "scopes": [READ], "expires_in_days": 3651}, "expires_in_days"),
        ({"name": "n", "scopes": [READ], "expires_in_days": "7"}, "expires_in_days"),
        ({"name": "n", "scopes": [READ], "expires_in_days": True}, "expires_in_days"),
        ({"name": "n", "scopes": [READ], "token": "mine"}, "token"),
    ],
)
async def test_bad_token_requests_are_400_naming_the_field(
    api: ApiClient, alice: User, body: dict[str, Any], field: str
) -> None:
    answer = await api.post("/api/auth/tokens", token=alice.token, json=body)
    assert answer.status == 400
    assert field in answer.json["errors"]


async def test_an_account_has_at_most_100_tokens(api: ApiClient, alice: User, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO api_tokens (user_id, name, scopes, secret_hash)"
        " SELECT $1, 'n', '{tasks:read}', sha256(g::text::bytea) FROM generate_series(1, 99) AS g",
        alice.id,
    )
    await _make(api, alice, READ)
    answer = await api.post("/api/auth/tokens", token=alice.token, json={"name": "n", "scopes": [READ]})
    assert answer.status == 409


async def test_a_deleted_token_is_refused_by_every_worker_of_every_instance_within_a_second(
    database_url: str,
) -> None:
    with (
        running_service(database_url, workers=2) as (first_url, first),
        running_service(database_url, workers=2) as (second_url, second),
    ):
        grant = await _register(first_url)
        headers = {"Authorization": f"Bearer {grant['access_token']}"}
        async with aiohttp.ClientSession() as http:
            body = {"name": "nightly", "scopes": [READ]}
            async with http.post(f"{first_url}/api/auth/tokens", json=body, headers=headers) as answer:
                assert answer.status == 201
                made = await answer.json()
        token = made["token"]
        connections = await _one_connection_per_worker(first_url, first.pid, token)
        connections += await _one_connection_per_worker(second_url, second.pid, token)
        assert len(connections) == 4
        try:
            for connection in connections:  # every worker has checked it, and remembers it
                assert await connection.status("/api/me/tasks", token) == 200
            async with (
                aiohttp.ClientSession() as http,
                http.delete(f"{second_url}/api/auth/tokens/{made['id']}", headers=headers) as answer,
            ):
                assert answer.status == 204
            await every_worker_refuses_within_a_second(connections, "/api/me/tasks", token, time.monotonic())
        finally:
            for connection in connections:
                await connection.http.close()
