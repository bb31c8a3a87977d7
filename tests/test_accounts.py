"""The account's life: deleting it (everything goes, in one transaction, and every token it held
is refused at once, on every worker), and exporting it (everything it holds, streamed: a real
service process keeps its memory flat while 100,000 tasks go out)."""

import asyncio
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import pytest

from service.auth import mint_token
from tests.conftest import PASSWORD, TEST_SECRET, ApiClient, Provider, User, kid_of, running_service, subject
from tests.test_revocations import PinnedConnection, Proxy, _one_connection_per_worker, _register

OWNED = ("tasks", "sessions", "session_rotations", "api_tokens")


async def _login(api: ApiClient, user: User) -> dict[str, Any]:
    answer = await api.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert answer.status == 200
    grant: dict[str, Any] = answer.json
    return grant


async def _owned_rows(db: asyncpg.Connection, user_id: int) -> dict[str, int]:
    return {
        table: await db.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user_id)
        for table in OWNED
    }


async def test_deleting_a_password_account_takes_everything_and_ends_every_token(
    api: ApiClient, alice: User, bob: User, db: asyncpg.Connection
) -> None:
    grant = await _login(api, alice)
    rotated = (await api.post("/api/auth/refresh", json={"refresh_token": grant["refresh_token"]})).json
    await api.post(alice.tasks, token=alice.token, json={"title": "mine"})
    await api.post(bob.tasks, token=bob.token, json={"title": "bob's"})
    api_token = (
        await api.post("/api/auth/tokens", token=alice.token, json={"name": "s", "scopes": ["tasks:read"]})
    ).json
    assert (
        await api.get("/api/me/tasks", token=api_token["token"])
    ).status == 200  # remembered by the worker
    assert all((await _owned_rows(db, alice.id)).values())

    missing = await api.delete("/api/auth/me", token=rotated["access_token"])
    assert missing.status == 403 and "password" in missing.json["detail"]
    wrong = await api.delete("/api/auth/me", token=rotated["access_token"], json={"password": "not it"})
    assert wrong.status == 403
    assert (await api.get("/api/auth/me", token=alice.token)).status == 200

    deleted = await api.delete("/api/auth/me", token=rotated["access_token"], json={"password": PASSWORD})
    assert deleted.status == 204
    assert await db.fetchval("SELECT count(*) FROM users WHERE id = $1", alice.id) == 0
    assert set((await _owned_rows(db, alice.id)).values()) == {0}
    for token in (rotated["access_token"], grant["access_token"], alice.token, api_token["token"]):
        answer = await api.get("/api/me/tasks", token=token)
        assert answer.status == 401
    assert (await api.get("/api/me/tasks", token=alice.token)).json[
        "detail"
    ] == "The account has been deleted."
    assert (
        await api.post("/api/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    ).status == 401
    assert (
        await api.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    ).status == 401
    assert [task["title"] for task in (await api.get(bob.tasks, token=bob.token)).json] == ["bob's"]


async def test_deleting_a_providers_user_needs_a_fresh_token_and_the_old_ones_never_come_back(
    aiohttp_client: Any, make_app: Any, provider: Provider, db: asyncpg.Connection
) -> None:
    settings = {
        "auth_jwks_url": provider.jwks_url,
        "auth_issuer": provider.issuer,
        "auth_audience": provider.issuer,
    }
    api = ApiClient(await aiohttp_client(make_app(**settings)))
    kid, sub, now = kid_of(provider, "EdDSA"), subject(), int(time.time())
    stale = provider.token(sub, kid, iat=now - 301, exp=now + 600)
    fresh = provider.token(sub, kid)
    user_id = (await api.post("/api/me/tasks", token=stale, json={"title": "mine"})).json["user_id"]
    too_old = await api.delete("/api/auth/me", token=stale)
    assert too_old.status == 403 and "5 minutes" in too_old.json["detail"]
    # A token minted for that user with the shared secret is no provider's; there is no password to confirm.
    minted = await api.delete(
        "/api/auth/me", token=mint_token(user_id, TEST_SECRET, 600), json={"password": "x"}
    )
    assert minted.status == 403 and "identity provider" in minted.json["detail"]

    assert (await api.delete("/api/auth/me", token=fresh)).status == 204
    assert set((await _owned_rows(db, user_id)).values()) == {0}
    assert (await api.get("/api/me/tasks", token=fresh)).status == 401
    # A worker that never saw these tokens does not let them sign the account up again.
    elsewhere = ApiClient(await aiohttp_client(make_app(**settings)))
    for token in (stale, fresh):
        refused = await elsewhere.get("/api/me/tasks", token=token)
        assert refused.status == 401
        assert refused.json["detail"] == "The token was issued before its account was deleted; sign in again."
    assert await db.fetchval("SELECT count(*) FROM users WHERE auth_subject = $1", sub) == 0
    # Signing in again afterwards makes a new, empty account.
    again = provider.token(sub, kid, iat=int(time.time()) + 2)
    tasks = await elsewhere.get("/api/me/tasks", token=again)
    assert tasks.status == 200 and tasks.json == []
    new_id = (await elsewhere.get("/api/auth/me", token=again)).json["id"]
    assert new_id != user_id


async def test_the_export_holds_everything_and_no_secret(
    api: ApiClient, alice: User, bob: User, db: asyncpg.Connection
) -> None:
    grant = await _login(api, alice)
    titles = [f"task {n}" for n in range(3)]
    for title in titles:
        await api.post(alice.tasks, token=alice.token, json={"title": title, "tags": ["export"]})
    await api.post(bob.tasks, token=bob.token, json={"title": "bob's"})
    made = (
        await api.post("/api/auth/tokens", token=alice.token, json={"name": "s", "scopes": ["tasks:read"]})
    ).json
    trashed = (await api.post(alice.tasks, token=alice.token, json={"title": "binned"})).json["id"]
    await api.delete(f"{alice.tasks}/{trashed}", token=alice.token)
    answer = await api.get("/api/auth/me/export", token=grant["access_token"])
    assert answer.status == 200
    assert answer.headers["Content-Disposition"] == f'attachment; filename="task-api-account-{alice.id}.json"'
    assert answer.headers["Cache-Control"] == "no-store"
    document = answer.json
    assert document["account"] == (await api.get("/api/auth/me", token=alice.token)).json
    assert document["identity"] is None
    assert [(task["title"], task["trashed"]) for task in document["tasks"]] == [
        *((title, False) for title in titles),
        ("binned", True),
    ]
    assert document["tasks"][-1]["deleted_at"] is not None
    assert document["tasks"] == sorted(document["tasks"], key=lambda task: task["id"])
    assert [session["id"] for session in document["sessions"]] == [
        session["id"] for session in (await api.get("/api/auth/sessions", token=alice.token)).json
    ]
    assert document["api_tokens"] == [{key: value for key, value in made.items() if key != "token"}]
    body = answer.body.decode()
    password_hash = await db.fetchval("SELECT password_hash FROM users WHERE id = $1", alice.id)
    for secret in (made["token"], grant["refresh_token"], grant["access_token"], password_hash, "bob's"):
        assert secret not in body


async def test_a_providers_user_exports_who_they_are_there(
    provider_api: ApiClient, provider: Provider
) -> None:
    sub = subject()
    answer = await provider_api.get(
        "/api/auth/me/export", token=provider.token(sub, kid_of(provider, "ES256"))
    )
    assert answer.status == 200
    assert answer.json["identity"] == {"issuer": provider.issuer, "subject": sub}
    assert answer.json["tasks"] == []


def _rss(pid: int) -> int:
    """The resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_exporting_100000_tasks_keeps_the_workers_memory_flat(database_url: str) -> None:
    with running_service(database_url) as (base_url, process):  # one worker: the process itself
        grant = await _register(base_url)
        user_id, headers = grant["user"]["id"], {"Authorization": f"Bearer {grant['access_token']}"}
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO tasks (user_id, title, description, tags)"
                " SELECT $1, 'task ' || g || ' ' || repeat('t', 100), repeat('d', 300), '{export,many}'"
                " FROM generate_series(1, 100000) AS g",
                user_id,
            )
            async with aiohttp.ClientSession() as http:

                async def export() -> tuple[int, int, bytes]:
                    """Read the export as a client does; the worker's peak memory and the body."""
                    peak, body = 0, bytearray()
                    async with http.get(f"{base_url}/api/auth/me/export", headers=headers) as answer:
                        assert answer.status == 200
                        async for chunk in answer.content.iter_chunked(256 * 1024):
                            body += chunk
                            peak = max(peak, _rss(process.pid))
                            await asyncio.sleep(0.001)  # a client a little slower than the service
                    return answer.status, peak, bytes(body)

                await export()  # warm up: the code paths, the pool's connections, the buffers
                baseline = _rss(process.pid)
                _, peak, body = await export()
            tasks = orjson.loads(body)["tasks"]
            assert len(tasks) == 100_000
            assert [task["id"] for task in tasks] == sorted(task["id"] for task in tasks)
            assert len(body) > 50_000_000
            # Holding the document (or its 100,000 rows) would cost hundreds of MiB; streaming it,
            # a page at a time, costs a few.
            assert peak - baseline < 30 * 1024 * 1024, (baseline, peak)
        finally:
            await conn.execute("DELETE FROM users WHERE id = $1", user_id)
            await conn.close()


async def test_an_export_cut_short_by_the_database_is_a_broken_download(database_url: str) -> None:
    server = urlsplit(database_url)
    assert server.hostname is not None and server.port is not None
    proxy = Proxy(server.hostname, server.port)  # the service's pool reaches PostgreSQL through it
    await proxy.start()
    through_proxy = urlunsplit(server._replace(netloc=f"{server.username}@127.0.0.1:{proxy.port}"))
    with ExitStack() as stack:
        # Started from a thread: the proxy runs on this test's event loop, which must keep going.
        base_url, _ = await asyncio.to_thread(
            stack.enter_context, running_service(through_proxy, DB_LISTEN_URL=database_url)
        )
        grant = await _register(base_url)
        user_id, headers = grant["user"]["id"], {"Authorization": f"Bearer {grant['access_token']}"}
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO tasks (user_id, title, description)"
                " SELECT $1, 'task ' || g, repeat('d', 900) FROM generate_series(1, 20000) AS g",
                user_id,
            )
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{base_url}/api/auth/me/export", headers=headers) as answer,
            ):
                assert answer.status == 200
                received = await answer.content.read(64 * 1024)
                await proxy.stop()  # the database goes away part way through
                with pytest.raises(aiohttp.ClientPayloadError):
                    while chunk := await answer.content.read(64 * 1024):
                        received += chunk
            assert not received.endswith(b"]}")
        finally:
            await conn.execute("DELETE FROM users WHERE id = $1", user_id)
            await conn.close()


async def test_a_deleted_account_is_refused_by_every_worker_of_every_instance_within_a_second(
    database_url: str,
) -> None:
    with (
        running_service(database_url, workers=2) as (first_url, first),
        running_service(database_url, workers=2) as (second_url, second),
    ):
        grant = await _register(first_url)
        token = grant["access_token"]
        async with aiohttp.ClientSession() as http:
            body = {"name": "script", "scopes": ["tasks:read"]}
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{first_url}/api/auth/tokens", json=body, headers=headers) as answer:
                api_token = (await answer.json())["token"]
        tokens = (token, api_token)
        connections = await _one_connection_per_worker(first_url, first.pid, token)
        connections += await _one_connection_per_worker(second_url, second.pid, token)
        try:
            for connection in connections:
                for each in tokens:
                    assert await connection.status("/api/me/tasks", each) == 200
            async with (
                aiohttp.ClientSession() as http,
                http.delete(
                    f"{second_url}/api/auth/me", json={"password": "analytical engine"}, headers=headers
                ) as answer,
            ):
                assert answer.status == 204
            deleted = time.monotonic()

            async def refused_after(connection: PinnedConnection, each: str) -> float:
                while await connection.status("/api/me/tasks", each) != 401:
                    assert time.monotonic() - deleted < 5, "a worker still accepts a token"
                    await asyncio.sleep(0.02)
                return time.monotonic() - deleted

            delays = await asyncio.gather(*(refused_after(c, each) for c in connections for each in tokens))
            assert max(delays) < 1.0, delays
        finally:
            for connection in connections:
                await connection.http.close()


@pytest.mark.parametrize("body", [b"[]", b'{"password": ""}', b'{"password": 12}', b'{"extra": 1}'])
async def test_bad_deletion_bodies_are_400(api: ApiClient, alice: User, body: bytes) -> None:
    answer = await api.delete(
        "/api/auth/me", token=alice.token, data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400
    assert (await api.get("/api/auth/me", token=alice.token)).status == 200
