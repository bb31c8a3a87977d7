"""Acknowledged writes are really committed: the real app and pool, checked from another connection."""

import asyncio
import uuid

import asyncpg

from service.app import create_app
from service.settings import Settings
from tests.conftest import ApiClient


async def test_every_acknowledged_write_is_in_the_database(
    aiohttp_client, settings: Settings, database_url: str
) -> None:
    api = ApiClient(await aiohttp_client(create_app(settings)))
    registered = await api.post(
        "/api/auth/register",
        json={"email": f"{uuid.uuid4().hex}@example.com", "password": "durable-1", "name": "D"},
    )
    assert registered.status == 201
    user_id, token = registered.json["user"]["id"], registered.json["access_token"]
    conn = await asyncpg.connect(database_url)
    try:
        answers = await asyncio.gather(
            *(api.post(f"/api/{user_id}/tasks", token=token, json={"title": f"task {n}"}) for n in range(25))
        )
        assert {answer.status for answer in answers} == {201}
        acknowledged = {answer.json["id"] for answer in answers}
        stored = {row["id"] for row in await conn.fetch("SELECT id FROM tasks WHERE user_id = $1", user_id)}
        assert stored == acknowledged
    finally:
        await conn.execute("DELETE FROM users WHERE id = $1", user_id)
        await conn.close()
