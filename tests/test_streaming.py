"""Every task, streamed: GET /api/{user_id}/tasks without `limit` answers every matching task,
sorted and filtered as asked, with no Link. A list longer than a chunk is streamed from one
database snapshot, so no task is missed or repeated while tasks change, a worker's memory
stays flat (checked on a real `python -m service serve` with 100,000 tasks), a stalled client
is cut off, and a failure midway cuts the answer short instead of ending it as valid JSON."""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psycopg
import pytest

from service.handlers.tasks import STREAM_CHUNK
from tests.conftest import ApiClient, User, fresh_database, running_service

HEAVY_TASKS = 100_000
MAX_RSS_GROWTH = 30 * 1024 * 1024

# Tasks as varied as real ones: descriptions and tags of several lengths, priorities, timed and
# all-day due dates, reminders, repeat rules, some completed. `n` counts from 1.
SEED_SQL = """
INSERT INTO tasks (user_id, title, description, completed, completed_at, priority, tags, due_date,
                   due_on, remind_at, recurrence_every, recurrence_interval)
SELECT {user_id}, 'Task number ' || n || CASE WHEN n % 7 = 0 THEN ' apple' ELSE ' banana' END,
       CASE WHEN n % 4 > 0 THEN repeat('details ', 5 + n % 20) END,
       n % 3 = 0, CASE WHEN n % 3 = 0 THEN timestamptz '2026-01-01' END,
       n % 3,
       CASE WHEN n % 2 = 0 THEN ARRAY['home', 'list' || n % 17] ELSE ARRAY['Work'] END,
       CASE WHEN n % 5 = 1 THEN NULL
            WHEN n % 5 = 2 THEN timestamptz '2026-01-02' + n * interval '1 day'
            ELSE timestamptz '2026-01-01 08:00Z' + n * interval '1 hour' END,
       CASE WHEN n % 5 = 2 THEN date '2026-01-01' + n END,
       CASE WHEN n % 6 = 0 THEN timestamptz '2026-01-01 07:00Z' + n * interval '1 hour' END,
       CASE WHEN n % 10 = 0 THEN 'week' END, CASE WHEN n % 10 = 0 THEN 2 END
FROM generate_series(1, {count}) AS n
"""


# In the test app, inside the test's transaction: the answer's shape and order


async def seed(db: asyncpg.Connection, user: User, count: int) -> None:
    await db.execute(SEED_SQL.format(user_id=user.id, count=count))


async def every_page(api: ApiClient, user: User, query: str) -> list[dict]:
    """The same listing, a page of 200 at a time, following Link headers."""
    tasks: list[dict] = []
    url: str | None = f"{user.tasks}?{query}&limit=200"
    while url is not None:
        answer = await api.get(url, token=user.token)
        tasks += answer.json
        link = answer.headers.get("Link")
        url = link[link.index("/api/") : link.index(">")] if link else None
    return tasks


@pytest.mark.parametrize(
    "query",
    [
        "sort=created",
        "sort=title&order=desc",
        "sort=due_date&tag=home",
        "sort=priority&q=BANANA&status=pending",
    ],
)
async def test_a_list_longer_than_a_chunk_is_streamed_whole_in_order(
    api: ApiClient, alice: User, db, query: str
) -> None:
    await seed(db, alice, 2 * STREAM_CHUNK + 345)
    answer = await api.get(f"{alice.tasks}?{query}", token=alice.token)
    assert answer.status == 200 and "Link" not in answer.headers
    assert answer.headers.get("Transfer-Encoding") == "chunked"  # streamed, not built whole
    assert answer.json == await every_page(api, alice, query)
    assert len({task["id"] for task in answer.json}) == len(answer.json)


async def test_every_task_means_every_task(api: ApiClient, alice: User, bob: User, db) -> None:
    await seed(db, alice, STREAM_CHUNK + 1)
    await seed(db, bob, 10)
    tasks = (await api.get(alice.tasks, token=alice.token)).json
    assert len(tasks) == STREAM_CHUNK + 1 and {task["user_id"] for task in tasks} == {alice.id}


async def test_a_list_that_fits_in_a_chunk_is_answered_as_a_page_is(api: ApiClient, alice: User, db) -> None:
    await seed(db, alice, STREAM_CHUNK)
    answer = await api.get(alice.tasks, token=alice.token)
    assert len(answer.json) == STREAM_CHUNK
    assert int(answer.headers["Content-Length"]) == len(answer.body)


async def test_a_streamed_list_carries_the_headers_every_answer_does(
    aiohttp_client: Any, make_app: Any, alice: User, db
) -> None:
    origin = "https://app.example.com"
    browser = ApiClient(await aiohttp_client(make_app(cors_origins=(origin,))))
    await seed(db, alice, STREAM_CHUNK + 1)
    answer = await browser.get(
        alice.tasks, token=alice.token, headers={"Origin": origin, "X-Request-Id": "r-1"}
    )
    assert answer.headers.get("Transfer-Encoding") == "chunked"
    assert answer.headers["X-Request-Id"] == "r-1"
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert "X-Request-Id" in answer.headers["Access-Control-Expose-Headers"]


# On the real service, `python -m service serve`, with a user who has 100,000 tasks


@pytest.fixture(scope="module")
def heavy_database(pg_server_url: str) -> Iterator[str]:
    """A database of this module's own, migrated by the first service that starts on it."""
    with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="module")
def service(heavy_database: str) -> Iterator[tuple[str, int]]:
    """The real service in one worker process: its URL and that process's id."""
    with running_service(heavy_database, RATE_LIMIT_WRITES="0") as (url, process):
        yield url, process.pid


@pytest.fixture(scope="module")
def heavy(service: tuple[str, int], heavy_database: str) -> dict[str, Any]:
    """A user registered through the API, with HEAVY_TASKS tasks seeded straight into the table."""
    account = {"email": "heavy@example.com", "password": "a long password", "name": "Heavy"}
    with psycopg.connect(heavy_database, autocommit=True) as conn:
        grant = _register(service[0], account)
        conn.execute(SEED_SQL.format(user_id=grant["user"]["id"], count=HEAVY_TASKS))
        conn.execute("ANALYZE tasks")
    return {"id": grant["user"]["id"], "token": grant["access_token"]}


def _register(base_url: str, account: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(
        f"{base_url}/api/auth/register",
        data=orjson.dumps(account),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        grant: dict = orjson.loads(response.read())
    return grant


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        yield session


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """Samples a process's resident memory every few milliseconds, in a thread, keeping the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._done = pid, rss_bytes(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.002)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


async def test_100000_tasks_arrive_whole_while_the_workers_memory_stays_flat(
    service: tuple[str, int], heavy: dict, heavy_database: str, http: aiohttp.ClientSession
) -> None:
    base_url, pid = service
    headers = {"Authorization": f"Bearer {heavy['token']}"}
    tasks_url = f"{base_url}/api/{heavy['id']}/tasks"
    # Warm the worker up on the same routes, without an unpaged list that streams.
    for query in ("?limit=200", "?limit=200&sort=title", "?status=completed&q=nothing"):
        async with http.get(tasks_url + query, headers=headers) as response:
            assert response.status == 200
            await response.read()
    before = rss_bytes(pid)
    body = bytearray()
    with PeakRss(pid) as memory:
        async with http.get(tasks_url, headers=headers) as response:
            assert response.status == 200 and "Link" not in response.headers
            async for piece in response.content.iter_chunked(256 * 1024):
                body += piece
    tasks = orjson.loads(body)
    with psycopg.connect(heavy_database) as conn:
        (count,) = conn.execute("SELECT count(*) FROM tasks WHERE user_id = %s", [heavy["id"]]).fetchone()
    assert len(tasks) == count >= HEAVY_TASKS - 10
    assert len({task["id"] for task in tasks}) == len(tasks)
    ids = [task["id"] for task in tasks]
    assert ids == sorted(ids, reverse=True)  # newest first; one INSERT made them all at once
    assert len(body) > 40 * 1024 * 1024  # the answer is large: tens of megabytes of JSON
    assert memory.peak - before < MAX_RSS_GROWTH, f"RSS grew by {(memory.peak - before) / 2**20:.1f} MiB"


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_no_task_is_missed_or_repeated_while_tasks_change_during_the_stream(
    service: tuple[str, int], heavy: dict, heavy_database: str, http: aiohttp.ClientSession, order: str
) -> None:
    base_url, _ = service
    with psycopg.connect(heavy_database, autocommit=True) as conn:
        expected = [
            row[0]
            for row in conn.execute(
                f"SELECT id FROM tasks WHERE user_id = %s ORDER BY updated_at {order}, id {order}",
                [heavy["id"]],
            )
        ]
        # By updated, newest first: tasks at the end of the answer, updated now, jump to its
        # start, which a keyset walk has passed (missed); oldest first: tasks at its start,
        # updated now, jump to its end, where a keyset walk finds them again (repeated).
        moved = expected[-50:] if order == "desc" else expected[:50]
        deleted, untouched = expected[-60], expected[len(expected) // 2]
        url = f"{base_url}/api/{heavy['id']}/tasks?sort=updated&order={order}"
        async with http.get(url, headers={"Authorization": f"Bearer {heavy['token']}"}) as response:
            assert response.status == 200
            start = await response.content.readexactly(1024 * 1024)
            # The worker now waits on a full socket, with most of the answer still to read.
            conn.execute("UPDATE tasks SET title = 'moved', updated_at = now() WHERE id = ANY(%s)", [moved])
            conn.execute("DELETE FROM tasks WHERE id = %s", [deleted])
            conn.execute("INSERT INTO tasks (user_id, title) VALUES (%s, 'created meanwhile')", [heavy["id"]])
            body = start + await response.read()
    tasks = orjson.loads(body)
    assert [task["id"] for task in tasks] == expected  # as the tasks were when the answer began
    titles = {task["id"]: task["title"] for task in tasks}
    assert "moved" not in {titles[task_id] for task_id in moved} and deleted in titles and untouched in titles


TERMINATE_STREAM = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = current_database() AND state = 'idle in transaction' AND pid <> pg_backend_pid()
"""


def _stuck_backends(database_url: str) -> list[str]:
    """What the service's connections are in the middle of, other than waiting idle."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'"
        ).fetchall()
    return [row[0] for row in rows]


async def test_a_client_that_stops_reading_is_cut_off_and_frees_its_connection(
    heavy: dict, heavy_database: str, http: aiohttp.ClientSession
) -> None:
    with running_service(heavy_database, STREAM_WRITE_TIMEOUT="1") as (base_url, _):
        url = f"{base_url}/api/{heavy['id']}/tasks"
        async with http.get(url, headers={"Authorization": f"Bearer {heavy['token']}"}) as response:
            assert response.status == 200
            await response.content.readexactly(64 * 1024)
            assert len(_stuck_backends(heavy_database)) == 1  # the stream's transaction
            await asyncio.sleep(4)  # not reading: past STREAM_WRITE_TIMEOUT
            assert _stuck_backends(heavy_database) == []  # rolled back and returned to the pool
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        async with http.get(f"{url}?limit=1", headers={"Authorization": f"Bearer {heavy['token']}"}) as again:
            assert again.status == 200


async def test_a_database_failure_midway_cuts_the_answer_short(
    service: tuple[str, int], heavy: dict, heavy_database: str, http: aiohttp.ClientSession
) -> None:
    base_url, _ = service
    url = f"{base_url}/api/{heavy['id']}/tasks"
    async with http.get(url, headers={"Authorization": f"Bearer {heavy['token']}"}) as response:
        assert response.status == 200
        start = await response.content.readexactly(64 * 1024)
        with psycopg.connect(heavy_database, autocommit=True) as conn:
            # The stream's connection, once the worker waits on the full socket between fetches.
            for _ in range(100):
                killed = conn.execute(TERMINATE_STREAM).fetchall()
                if killed:
                    break
                await asyncio.sleep(0.05)
            assert killed == [(True,)]
        with pytest.raises(aiohttp.ClientPayloadError):
            start += await response.read()  # never a complete array of fewer tasks
    async with http.get(f"{url}?limit=1", headers={"Authorization": f"Bearer {heavy['token']}"}) as again:
        assert again.status == 200  # the pool replaced the connection
