"""SIGTERM: answer /readyz 503 for a while, then stop accepting, finish what is in flight, close the
pool, exit 0 — for every worker."""

import asyncio
import signal
import time
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import fresh_database, running_service

IN_FLIGHT = 24


async def test_sigterm_under_load_drops_no_in_flight_request(pg_server_url: str) -> None:
    with (
        fresh_database(pg_server_url) as database_url,
        running_service(
            database_url,
            workers=2,
            DB_POOL_MAX_SIZE=str(IN_FLIGHT),
            DB_POOL_MAX_PER_USER=str(IN_FLIGHT),  # one user's requests, all in flight at once
            DB_ACQUIRE_TIMEOUT="60",
        ) as (
            base_url,
            process,
        ),
    ):
        # A connection per request: the question is what happens to requests the service has
        # accepted, not to idle keep-alive connections.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.post(
                f"{base_url}/api/auth/register",
                json={"email": "t@example.com", "password": "graceful1", "name": "T"},
            ) as response:
                grant = await response.json()
            user_id, token = grant["user"]["id"], grant["access_token"]
            blocker = await asyncpg.connect(database_url)
            blocking = blocker.transaction()
            await blocking.start()
            await blocker.execute("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE")  # inserts wait

            async def create(number: int) -> tuple[int, dict]:
                async with http.post(
                    f"{base_url}/api/{user_id}/tasks",
                    json={"title": f"in flight {number}"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    return response.status, await response.json()

            requests = [asyncio.create_task(create(n)) for n in range(IN_FLIGHT)]
            # Watched from another connection: inside a transaction pg_stat_activity is a snapshot.
            watcher = await asyncpg.connect(database_url)
            deadline = time.monotonic() + 30
            while (
                await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO tasks%'"
                )
                < IN_FLIGHT
            ):
                assert time.monotonic() < deadline, "the requests never reached the database"
                await asyncio.sleep(0.05)
            await watcher.close()

            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)  # the service is now shutting down, its requests still waiting
            assert process.poll() is None
            await blocking.commit()
            answers = await asyncio.gather(*requests)
            exit_code = await asyncio.to_thread(process.wait, 30)
            stored = await blocker.fetchval("SELECT count(*) FROM tasks WHERE user_id = $1", user_id)
            await blocker.close()

    assert [status for status, _ in answers] == [201] * IN_FLIGHT
    assert stored == IN_FLIGHT
    assert exit_code == 0


async def test_sigterm_first_drains_readyz_then_stops(pg_server_url: str) -> None:
    """For SHUTDOWN_DRAIN_SECONDS /readyz answers 503 on every worker, so a load balancer takes
    the instance out of rotation, while every other request is still served; then it stops."""
    drain = 5.0
    with (
        fresh_database(pg_server_url) as database_url,
        running_service(database_url, workers=2, SHUTDOWN_DRAIN_SECONDS=str(int(drain))) as (
            base_url,
            process,
        ),
    ):
        # A connection per request, so that they reach both workers (SO_REUSEPORT).
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.post(
                f"{base_url}/api/auth/register",
                json={"email": "drain@example.com", "password": "drain it", "name": "D"},
            ) as response:
                grant = await response.json()
            tasks = f"{base_url}/api/{grant['user']['id']}/tasks"
            headers = {"Authorization": f"Bearer {grant['access_token']}"}

            async def status(method: str, url: str, **kwargs: Any) -> int:
                async with http.request(method, url, headers=headers, **kwargs) as response:
                    return response.status

            assert await status("GET", f"{base_url}/readyz") == 200
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            while await status("GET", f"{base_url}/readyz") != 503:
                assert time.monotonic() - signalled < drain / 2, "/readyz never turned 503"
                await asyncio.sleep(0.05)
            during = [await status("GET", f"{base_url}/readyz") for _ in range(10)]
            served = [
                await status("GET", f"{base_url}/healthz"),
                await status("POST", tasks, json={"title": "during the drain"}),
                await status("GET", tasks),
            ]
            checked = time.monotonic() - signalled
            assert process.poll() is None
        exit_code = await asyncio.to_thread(process.wait, 30)
        stopped = time.monotonic() - signalled

    assert checked < drain, "the checks ran past the drain: the machine is too slow to tell"
    assert during == [503] * 10
    assert served == [200, 201, 200]
    assert stopped >= drain - 0.5  # the drain is not cut short
    assert exit_code == 0
