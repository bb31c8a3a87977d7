"""CI only (it needs haproxy and pgbouncer, which .ci/run installs from Debian): the example of
deploy/ (HAProxy checking /readyz in front of two instances, PgBouncer in transaction mode in
front of PostgreSQL) restarts its instances one after the other under load without failing a
single request or losing a single acknowledged write."""

import asyncio
import dataclasses
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from deploy.stack import Stack
from service.auth import mint_token
from service.seed import SeededUser, seed
from tests.conftest import TEST_SECRET, free_port, fresh_database

CLIENTS = 16  # concurrent clients, each its own user, through HAProxy
LOAD_BEFORE_SECONDS = 3  # of load before the first restart and after the last
MIN_REQUESTS_PER_RESTART = 50  # answered while an instance was down: the load went on


@pytest.fixture(scope="module")
def stack(pg_server_url: str) -> Iterator[tuple[Stack, list[SeededUser]]]:
    with (
        fresh_database(pg_server_url) as url,
        tempfile.TemporaryDirectory(prefix="taskapi-ci-stack-") as folder,
    ):
        ports = [free_port() for _ in range(5)]
        stack = Stack(
            url,
            TEST_SECRET,
            Path(folder),
            port=ports[0],
            instance_ports=(ports[1], ports[2]),
            pgbouncer_port=ports[3],
            stats_port=ports[4],
            # A client's writes are not what this tests: no 429 from the write limit.
            environment={"RATE_LIMIT_WRITES": "0", "LOG_LEVEL": "WARNING"},
        )
        with stack:
            (users,) = seed(url, [(CLIENTS, 10)])
            yield stack, users


@dataclasses.dataclass
class Load:
    """What the clients saw: every answer's status, every failure, every acknowledged create."""

    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    created: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    answered: int = 0


async def client(base_url: str, user: SeededUser, load: Load, stop: asyncio.Event) -> None:
    """Create a task, read it back, list: again and again, until told to stop."""
    tasks = f"{base_url}/api/{user.user_id}/tasks"
    headers = {"Authorization": f"Bearer {mint_token(user.user_id, TEST_SECRET, 600)}"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as http:
        number = 0
        while not stop.is_set():
            number += 1
            try:
                async with http.post(tasks, json={"title": f"rolling {number}"}) as answer:
                    load.statuses[answer.status] += 1
                    created = await answer.json()
                if answer.status != 201:
                    load.failures.append(f"POST {answer.status}: {created}")
                    continue
                load.created.append((user.user_id, created["id"]))
                for url in (f"{tasks}/{created['id']}", f"{tasks}?limit=10"):
                    async with http.get(url) as answer:
                        load.statuses[answer.status] += 1
                        if answer.status != 200:
                            load.failures.append(f"GET {answer.status}: {await answer.text()}")
            except (aiohttp.ClientError, TimeoutError) as error:
                load.failures.append(repr(error))
            load.answered += 3


def _requests_sent(deployment: Stack) -> dict[str, int]:
    """By instance, the requests HAProxy has sent it (its `stot` counter)."""
    return {name: int(row["stot"]) for name, row in deployment.server_states().items()}


async def test_rolling_restart_behind_haproxy_fails_nothing_and_loses_nothing(
    stack: tuple[Stack, list[SeededUser]],
) -> None:
    deployment, users = stack
    load, stop = Load(), asyncio.Event()
    clients = [asyncio.create_task(client(deployment.base_url, user, load, stop)) for user in users]
    exit_codes, answered_during = [], []
    try:
        await asyncio.sleep(LOAD_BEFORE_SECONDS)
        for index in range(len(deployment.instance_ports)):
            started = load.answered
            exit_codes.append(await asyncio.to_thread(deployment.restart_instance, index))
            answered_during.append(load.answered - started)
        restarted = _requests_sent(deployment)
        await asyncio.sleep(LOAD_BEFORE_SECONDS)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    after = _requests_sent(deployment)
    conn = await asyncpg.connect(deployment.database_url)
    try:
        stored = {
            (row["user_id"], row["id"])
            for row in await conn.fetch(
                "SELECT user_id, id FROM tasks WHERE user_id = ANY ($1::bigint[])", [u.user_id for u in users]
            )
        }
    finally:
        await conn.close()

    assert load.failures == []
    assert set(load.statuses) == {200, 201}
    assert exit_codes == [0, 0]  # each drained and stopped cleanly
    assert min(answered_during) >= MIN_REQUESTS_PER_RESTART, answered_during
    assert set(load.created) <= stored, "an acknowledged create is missing"
    assert len(load.created) == len(set(load.created))
    # Both instances are back in rotation: HAProxy sent each requests after the restarts.
    assert restarted.keys() == {"instance1", "instance2"}
    assert all(after[name] > restarted[name] for name in restarted), (restarted, after)
