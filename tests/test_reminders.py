"""Reminders fire: once, within 5 seconds of remind_at, from two real instances polling one
database; again when moved, never once the task is completed or deleted, late but with their
own time after the service was down, and for each occurrence of a repeating task."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.db import migrate
from tests.conftest import Receiver, User, fresh_database, running_service, until, user_in

ENV = {"WEBHOOK_ALLOW_PRIVATE": "1", "RATE_LIMIT_WRITES": "0"}  # polling every second, the default
WITHIN_SECONDS = 5.0


@pytest.fixture(scope="module")
def reminders_database_url(pg_server_url: str) -> Iterator[str]:
    with fresh_database(pg_server_url) as url:
        migrate(url)
        yield url


@pytest.fixture(scope="module")
def two_instances(reminders_database_url: str) -> Iterator[tuple[str, str]]:
    with (
        running_service(reminders_database_url, **ENV) as (first, _),
        running_service(reminders_database_url, **ENV) as (second, _),
    ):
        yield first, second


class Client:
    """One user's HTTP calls, spread over the instances in turn."""

    def __init__(self, http: aiohttp.ClientSession, bases: tuple[str, ...], user: User) -> None:
        self.http, self.bases, self.user = http, bases, user
        self._turn = 0

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        self._turn += 1
        base = self.bases[self._turn % len(self.bases)]
        headers = {"Authorization": f"Bearer {self.user.token}"}
        async with self.http.request(
            method, f"{base}/api/{self.user.id}{path}", json=body, headers=headers
        ) as answer:
            assert answer.status < 300, await answer.text()
            return await answer.json() if answer.status != 204 else None

    async def subscribe(self, receiver: Receiver) -> None:
        made = await self.call("POST", "/webhooks", {"url": receiver.url, "events": ["task.reminder"]})
        receiver.secret = made["secret"]


@pytest.fixture
async def client(reminders_database_url: str, two_instances: tuple[str, str]) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as http:
        yield Client(http, two_instances, await user_in(reminders_database_url))


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _reminded(receiver: Receiver, task_id: int) -> list[Any]:
    return [r for r in receiver.of_type("task.reminder") if r.payload["data"]["task"]["id"] == task_id]


async def test_each_reminder_fires_once_within_5_seconds_from_two_instances(
    client: Client, receiver: Receiver, reminders_database_url: str
) -> None:
    await client.subscribe(receiver)
    tasks = [
        await client.call("POST", "/tasks", {"title": f"r{n}", "remind_at": _in(2 + n % 3)})
        for n in range(20)
    ]
    await until(lambda: len(receiver.received) >= 20, 15)
    await asyncio.sleep(3)  # and no second firing
    assert not receiver.forged
    assert sorted(r.payload["data"]["task"]["id"] for r in receiver.received) == sorted(
        t["id"] for t in tasks
    )
    for task in tasks:
        (reminder,) = _reminded(receiver, task["id"])
        sent = reminder.payload["data"]["task"]
        assert sent == task  # as it is: firing is not a change (updated_at stays)
        assert 0 <= reminder.wall - _at(task["remind_at"]) < WITHIN_SECONDS
        assert await client.call("GET", f"/tasks/{task['id']}") == task
    conn = await asyncpg.connect(reminders_database_url)
    try:  # nothing in the change log but the creates
        assert (
            await conn.fetchval("SELECT count(*) FROM task_changes WHERE user_id = $1", client.user.id) == 20
        )
    finally:
        await conn.close()


async def test_moving_a_reminder_arms_it_again(client: Client, receiver: Receiver) -> None:
    await client.subscribe(receiver)
    task = await client.call("POST", "/tasks", {"title": "call", "remind_at": _in(1)})
    await until(lambda: len(_reminded(receiver, task["id"])) == 1, 10)
    # Writing the same time again, or another field, arms nothing.
    await client.call("PUT", f"/tasks/{task['id']}", {"remind_at": task["remind_at"], "title": "call mum"})
    moved_to = _in(2)
    moved = await client.call("PUT", f"/tasks/{task['id']}", {"remind_at": moved_to})
    await until(lambda: len(_reminded(receiver, task["id"])) == 2, 10)
    await asyncio.sleep(2.5)
    first, second = _reminded(receiver, task["id"])
    assert first.payload["data"]["task"]["remind_at"] == task["remind_at"]
    assert second.payload["data"]["task"] == moved
    assert 0 <= second.wall - _at(moved["remind_at"]) < WITHIN_SECONDS
    assert not receiver.forged


async def test_completing_or_deleting_a_task_disarms_its_reminder(client: Client, receiver: Receiver) -> None:
    await client.subscribe(receiver)
    completed = await client.call("POST", "/tasks", {"title": "done", "remind_at": _in(2)})
    deleted = await client.call("POST", "/tasks", {"title": "gone", "remind_at": _in(2)})
    control = await client.call("POST", "/tasks", {"title": "kept", "remind_at": _in(2)})
    await client.call("PATCH", f"/tasks/{completed['id']}/complete", {"completed": True})
    await client.call("DELETE", f"/tasks/{deleted['id']}")
    await until(lambda: len(_reminded(receiver, control["id"])) == 1, 10)
    await asyncio.sleep(3)
    assert [r.payload["data"]["task"]["id"] for r in receiver.received] == [control["id"]]


async def test_the_next_occurrence_of_a_repeating_task_has_its_own_reminder(
    client: Client, receiver: Receiver
) -> None:
    await client.subscribe(receiver)
    # Due and reminded a day ago, every day: the next occurrence is reminded in 2 seconds.
    day_ago = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=2)
    task = await client.call(
        "POST",
        "/tasks",
        {
            "title": "stand-up",
            "due_date": day_ago.isoformat(),
            "remind_at": day_ago.isoformat(),
            "recurrence": {"every": "day"},
        },
    )
    await until(lambda: len(_reminded(receiver, task["id"])) == 1, 10)  # missed a day ago: fires now
    done = await client.call("PATCH", f"/tasks/{task['id']}/complete", {"completed": True})
    following = done["next_task_id"]
    await until(lambda: len(_reminded(receiver, following)) == 1, 10)
    (reminder,) = _reminded(receiver, following)
    sent = reminder.payload["data"]["task"]
    assert _at(sent["remind_at"]) == pytest.approx(_at(task["remind_at"]) + 86400, abs=0.001)
    assert 0 <= reminder.wall - _at(sent["remind_at"]) < WITHIN_SECONDS
    assert len(_reminded(receiver, task["id"])) == 1


async def test_a_reminder_missed_while_the_service_was_down_fires_when_it_is_back(
    pg_server_url: str, receiver: Receiver
) -> None:
    with fresh_database(pg_server_url) as database_url:
        migrate(database_url)
        user = await user_in(database_url)
        with running_service(database_url, **ENV) as (base_url, _):
            async with aiohttp.ClientSession() as http:
                client = Client(http, (base_url,), user)
                await client.subscribe(receiver)
                task = await client.call("POST", "/tasks", {"title": "while away", "remind_at": _in(4)})
        # Stopped before it was due; back after.
        await asyncio.sleep(max(0.0, _at(task["remind_at"]) - time.time() + 2))
        assert receiver.received == []
        with running_service(database_url, **ENV):
            back = time.time()
            await until(lambda: len(receiver.received) == 1, 15)
    (reminder,) = receiver.received
    assert reminder.payload["data"]["task"]["remind_at"] == task["remind_at"]  # its own time
    assert reminder.wall - back < WITHIN_SECONDS
    assert not receiver.forged
