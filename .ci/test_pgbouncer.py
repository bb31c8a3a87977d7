"""CI only (it needs the pgbouncer binary, which .ci/run installs from Debian): the service
works through PgBouncer in transaction mode with DB_PGBOUNCER=1, and cannot without it."""

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from service.db import migrate
from tests.conftest import free_port, fresh_database, running_service


@pytest.fixture(scope="module")
def pgbouncer(pg_server_url: str) -> Iterator[tuple[str, str]]:
    """A stock PgBouncer in transaction mode in front of a fresh database; yields its URL and the
    database's own (for the LISTEN connection, which transaction pooling cannot carry)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    with fresh_database(pg_server_url) as url, tempfile.TemporaryDirectory() as folder:
        migrate(url)
        server = psycopg.conninfo.conninfo_to_dict(url)
        port = free_port()
        config = Path(folder) / "pgbouncer.ini"
        config.write_text(
            f"[databases]\nbouncer = host={server['host']} port={server['port']} dbname={server['dbname']}"
            f" user={server['user']}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
            f"auth_type = trust\nauth_file = {folder}/users.txt\npool_mode = transaction\n"
            "default_pool_size = 4\nmax_client_conn = 500\nunix_socket_dir =\n"
        )
        (Path(folder) / "users.txt").write_text(f'"{server["user"]}" ""\n')
        user = {}
        if os.geteuid() == 0:  # PgBouncer will not run as root
            nobody = pwd.getpwnam("nobody")
            for path in (Path(folder), config, Path(folder) / "users.txt"):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            user = {"user": nobody.pw_uid, "group": nobody.pw_gid}
        process = subprocess.Popen([binary, str(config)], **user)
        try:
            time.sleep(1)
            assert process.poll() is None, "pgbouncer did not start"
            yield f"postgresql://{server['user']}@127.0.0.1:{port}/bouncer", url
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)


async def exercise(base_url: str) -> Counter[int]:
    """Every task operation, 40 times over, concurrently; returns the statuses seen."""
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession() as http:
        account = {"email": f"{time.time_ns()}@example.com", "password": "pgbouncer", "name": "P"}
        async with http.post(f"{base_url}/api/auth/register", json=account) as response:
            grant = await response.json()
        tasks = f"{base_url}/api/{grant['user']['id']}/tasks"
        headers = {"Authorization": f"Bearer {grant['access_token']}"}

        async def one(number: int) -> None:
            async with http.post(
                tasks, json={"title": f"t{number}", "tags": ["a"]}, headers=headers
            ) as response:
                statuses[response.status] += 1
                task = await response.json()
            for method, url, body in [
                ("GET", f"{tasks}/{task['id']}", None),
                ("PUT", f"{tasks}/{task['id']}", {"title": "u", "recurrence": {"every": "day"}}),
                ("PATCH", f"{tasks}/{task['id']}/complete", None),
                ("GET", f"{tasks}?limit=5", None),
                ("GET", f"{tasks}?tag=a&q=u", None),
                ("DELETE", f"{tasks}/{task['id']}", None),
            ]:
                async with http.request(method, url, json=body, headers=headers) as response:
                    statuses[response.status] += 1

        await asyncio.gather(*(one(number) for number in range(40)))
        # Sessions too: a refresh, then a logout that every worker must hear of (through the
        # LISTEN connection, which goes around PgBouncer).
        async with http.post(
            f"{base_url}/api/auth/refresh", json={"refresh_token": grant["refresh_token"]}
        ) as response:
            statuses[response.status] += 1
            renewed = await response.json()
        logout = {"Authorization": f"Bearer {renewed['access_token']}"}
        async with http.post(f"{base_url}/api/auth/logout", headers=logout) as response:
            statuses[response.status] += 1
        await asyncio.sleep(1)
        for _ in range(8):
            async with http.get(f"{base_url}/api/auth/me", headers=logout) as response:
                statuses[response.status] += 1
    return statuses


async def test_the_service_works_through_pgbouncer_in_transaction_mode(pgbouncer: tuple[str, str]) -> None:
    bouncer, direct = pgbouncer
    with running_service(
        bouncer, workers=2, DB_PGBOUNCER="1", DB_LISTEN_URL=direct, MIGRATE_ON_START="0"
    ) as (base_url, _):
        statuses = await exercise(base_url)
    assert set(statuses) <= {200, 201, 204, 401}, statuses
    assert statuses[401] == 8, statuses  # the logged-out token, on whichever worker
    assert sum(statuses.values()) == 40 * 7 + 2 + 8


async def test_without_the_setting_it_is_never_ready_and_answers_503(pgbouncer: tuple[str, str]) -> None:
    # PgBouncer refuses the statement_timeout startup parameter; were it allowed, asyncpg's
    # named prepared statements would collide across server connections instead.
    bouncer, _ = pgbouncer
    with running_service(bouncer, probe="/healthz", MIGRATE_ON_START="0") as (base_url, _):
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"{base_url}/readyz") as response:
                    assert response.status == 503
                login = {"email": "a@b.co", "password": "x"}
                async with http.post(f"{base_url}/api/auth/login", json=login) as response:
                    assert response.status == 503


async def test_an_unpaged_list_streams_through_pgbouncer(pgbouncer: tuple[str, str]) -> None:
    """A list longer than a chunk is read through a cursor, inside one transaction: PgBouncer in
    transaction mode keeps that transaction on one server connection."""
    bouncer, direct = pgbouncer
    with running_service(bouncer, DB_PGBOUNCER="1", DB_LISTEN_URL=direct, MIGRATE_ON_START="0") as (
        base_url,
        _,
    ):
        async with aiohttp.ClientSession() as http:
            account = {"email": f"{time.time_ns()}@example.com", "password": "pgbouncer", "name": "P"}
            async with http.post(f"{base_url}/api/auth/register", json=account) as response:
                grant = await response.json()
            with psycopg.connect(bouncer, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO tasks (user_id, title)"
                    " SELECT %s, 'task ' || n FROM generate_series(1, 2500) AS n",
                    [grant["user"]["id"]],
                )
            headers = {"Authorization": f"Bearer {grant['access_token']}"}
            async with http.get(f"{base_url}/api/{grant['user']['id']}/tasks", headers=headers) as response:
                assert response.status == 200 and response.headers["Transfer-Encoding"] == "chunked"
                tasks = await response.json()
    assert len({task["id"] for task in tasks}) == len(tasks) == 2500
