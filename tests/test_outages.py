"""When the database fails: bounded 503s, never a 500, recovery without a restart, and every
acknowledged write still there afterwards."""

import asyncio
import dataclasses
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest

from service.app import create_app
from service.auth import mint_token
from service.devdb import EmbeddedPostgres
from service.keys import PG_POOL
from service.settings import Settings
from tests.conftest import TEST_SECRET, ApiClient, fresh_database, running_service

CRASHES = 8


async def test_database_crashes_mid_run_lose_no_acknowledged_write_and_answer_no_500(
    aiohttp_client, private_server: EmbeddedPostgres
) -> None:
    settings = Settings(
        database_url=private_server.url, jwt_secret=TEST_SECRET, db_acquire_timeout=1.0, rate_limit_writes=0
    )
    api = ApiClient(await aiohttp_client(create_app(settings)))
    registered = await api.post(
        "/api/auth/register", json={"email": "crash@example.com", "password": "survives-1", "name": "C"}
    )
    user_id, token = registered.json["user"]["id"], registered.json["access_token"]
    acknowledged: list[int] = []
    keys: dict[str, int] = {}  # Idempotency-Key -> the task its create was acknowledged with
    statuses: Counter[int] = Counter()
    slowest = 0.0
    writing = True

    async def writer(number: int) -> None:
        # Creates, and completions of what was created (a transaction with a second statement),
        # so that a crash can land in either. Creates carry an Idempotency-Key and are retried
        # with it until acknowledged, as a careful client does.
        nonlocal slowest
        count, key = 0, None
        while writing and count < 20000:
            count += 1
            started = time.monotonic()
            if key is None and count % 3 == 0 and acknowledged:
                answer = await api.patch(f"/api/{user_id}/tasks/{acknowledged[-1]}/complete", token=token)
            else:
                key = key or f"w{number}-{count}"
                answer = await api.post(
                    f"/api/{user_id}/tasks",
                    token=token,
                    json={"title": key},
                    headers={"Idempotency-Key": key},
                )
                if answer.status == 201:
                    keys[key] = answer.json["id"]
                    key = None
            slowest = max(slowest, time.monotonic() - started)
            statuses[answer.status] += 1
            if answer.status == 201:
                acknowledged.append(answer.json["id"])
            elif answer.status != 200:
                # Counted, not asserted here: a writer that stopped would stall the test.
                if answer.status == 503 and "Retry-After" not in answer.headers:
                    statuses[-503] += 1
                await asyncio.sleep(0.05)

    writers = [asyncio.create_task(writer(n)) for n in range(4)]
    try:
        for crash in range(CRASHES):
            await asyncio.sleep(0.5)
            before_crash = len(acknowledged)
            assert before_crash > 0, statuses
            await asyncio.to_thread(private_server.stop, "immediate")  # as in a crash: no clean shutdown
            await asyncio.sleep(0.5)
            if crash == 0:
                assert (await api.get("/readyz")).status == 503
                assert statuses[503] > 0, statuses
            await asyncio.to_thread(private_server.start, private_server.port)
            recovered_by = time.monotonic() + 15
            while time.monotonic() < recovered_by and len(acknowledged) < before_crash + 40:  # noqa: ASYNC110 - polls a deadline too
                await asyncio.sleep(0.1)
            assert len(acknowledged) >= before_crash + 40, f"no recovery after crash {crash + 1}"
    finally:
        writing = False
        await asyncio.gather(*writers, return_exceptions=True)

    assert set(statuses) <= {200, 201, 503}, statuses  # never a 500, in any of the crashes
    assert slowest < settings.db_acquire_timeout + 5  # answers stay bounded while it is down
    assert (await api.get("/readyz")).status == 200
    conn = await asyncpg.connect(private_server.url)
    try:
        tasks = await conn.fetch("SELECT id, title FROM tasks WHERE user_id = $1", user_id)
        answers = await conn.fetch("SELECT key, body FROM idempotency_keys WHERE user_id = $1", user_id)
    finally:
        await conn.close()
    assert set(acknowledged) <= {task["id"] for task in tasks}
    # A write and its stored answer commit together: every acknowledged create has its answer,
    # every stored answer its task, and no create retried through a crash happened twice.
    stored = {answer["key"]: orjson.loads(answer["body"])["id"] for answer in answers}
    assert keys.items() <= stored.items()
    assert set(stored.values()) <= {task["id"] for task in tasks}
    titles = Counter(task["title"] for task in tasks)
    assert titles.most_common(1)[0][1] == 1, titles.most_common(3)


async def test_an_exhausted_pool_answers_503_within_the_acquire_timeout(
    aiohttp_client, settings: Settings
) -> None:
    settings = dataclasses.replace(settings, db_pool_min_size=1, db_pool_max_size=1, db_acquire_timeout=0.3)
    app = create_app(settings)
    api = ApiClient(await aiohttp_client(app))
    token = mint_token(1, TEST_SECRET, 600)
    async with app[PG_POOL].acquire():  # the pool's only connection is busy
        started = time.monotonic()
        answer = await api.get("/api/1/tasks", token=token)
        waited = time.monotonic() - started
    assert answer.status == 503 and answer.headers["Retry-After"]
    assert waited < 2
    assert (await api.get("/api/1/tasks", token=token)).status == 200


async def test_a_slow_query_is_cut_off_by_the_statement_timeout(aiohttp_client, settings: Settings) -> None:
    app = create_app(dataclasses.replace(settings, db_statement_timeout=0.2))
    await aiohttp_client(app)  # starts the app, and so its pool
    async with app[PG_POOL].acquire() as conn:
        with pytest.raises(asyncpg.QueryCanceledError):
            await conn.execute("SELECT pg_sleep(5)")


async def test_a_client_that_aborts_its_upload_is_not_a_database_outage(
    pg_server_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "service.log"
    with (
        fresh_database(pg_server_url) as url,
        log_path.open("wb") as log,
        running_service(url, log=log, LOG_LEVEL="INFO", METRICS_PUBLIC="1") as (base_url, _),
    ):
        host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
        async with aiohttp.ClientSession() as http:
            token = mint_token(1, TEST_SECRET, 600)
            for _ in range(3):
                _, writer = await asyncio.open_connection(host, port)
                writer.write(
                    b"POST /api/1/tasks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    + f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n".encode()
                    + b'{"title": "cut sh'
                )
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.close()
            await asyncio.sleep(1.0)
            async with http.get(f"{base_url}/metrics") as response:
                metrics = await response.text()
    entries = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    answered = [entry["status"] for entry in entries if entry.get("route") == "create_task"]
    assert answered == [499, 499, 499]  # as nginx logs a client that left: no 503
    assert not [entry for entry in entries if entry["level"] in ("WARNING", "ERROR")], entries
    assert "taskapi_db_errors_total{" not in metrics
