"""Sign-ins under attack: limits per client address, failures per (account, address), a flood
that cannot take the machine, one definition of an email's identity, and proxies trusted only
when configured. Real service processes; clients bound to 127.0.0.x addresses."""

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import psycopg
import pytest

from service.db import migrate
from tests.conftest import database_url_for, running_service

PASSWORD = "analytical engine"


def _client(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def _sign_in(
    http: aiohttp.ClientSession, url: str, email: str, password: str, path: str = "login"
) -> int:
    body = {"email": email, "password": password} | ({"name": "N"} if path == "register" else {})
    async with http.post(f"{url}/api/auth/{path}", json=body) as answer:
        await answer.read()
        return answer.status


async def test_guesses_from_one_address_do_not_lock_the_owner_out_from_another(database_url: str) -> None:
    env = {"RATE_LIMIT_LOGINS": "3", "RATE_LIMIT_LOGINS_PER_ACCOUNT": "100"}
    with running_service(database_url, **env) as (url, _):
        email = f"{uuid.uuid4().hex[:8]}@example.com"
        async with _client("127.0.0.1") as owner, _client("127.0.0.2") as attacker:
            assert await _sign_in(owner, url, email, PASSWORD, "register") == 201
            guesses = [await _sign_in(attacker, url, email, f"guess {n}") for n in range(5)]
            assert guesses == [401, 401, 401, 429, 429]
            # Even the right password is refused to the address that guessed...
            assert await _sign_in(attacker, url, email, PASSWORD) == 429
            # ...but the owner, elsewhere, is not locked out.
            assert await _sign_in(owner, url, email, PASSWORD) == 200


async def test_an_account_wide_ceiling_still_holds_against_many_addresses(database_url: str) -> None:
    env = {"RATE_LIMIT_LOGINS": "3", "RATE_LIMIT_LOGINS_PER_ACCOUNT": "5"}
    with running_service(database_url, **env) as (url, _):
        email = f"{uuid.uuid4().hex[:8]}@example.com"
        async with _client("127.0.0.1") as owner, _client("127.0.0.2") as one, _client("127.0.0.3") as two:
            assert await _sign_in(owner, url, email, PASSWORD, "register") == 201
            assert [await _sign_in(one, url, email, "guess") for _ in range(3)] == [401] * 3
            assert [await _sign_in(two, url, email, "guess") for _ in range(3)] == [401, 401, 429]
            assert await _sign_in(owner, url, email, PASSWORD) == 429


async def test_sign_ins_are_limited_per_address_and_refused_slowly(database_url: str) -> None:
    with running_service(database_url, RATE_LIMIT_AUTH_PER_ADDRESS="3") as (url, _):
        async with _client("127.0.0.2") as flooder, _client("127.0.0.1") as other:
            statuses = [await _sign_in(flooder, url, f"{n}@example.com", "whatever") for n in range(3)]
            assert statuses == [401, 401, 401]
            started = time.monotonic()
            assert await _sign_in(flooder, url, "x@example.com", PASSWORD, "register") == 429
            assert time.monotonic() - started >= 0.9  # paused, so a flood cannot spin the event loop
            assert await _sign_in(other, url, "y@example.com", "whatever") == 401


async def _percentile_99(http: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int) -> float:
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        async with http.get(url, headers=headers) as answer:
            await answer.read()
            assert answer.status == 200
        durations.append(time.perf_counter() - started)
    durations.sort()
    return durations[int(len(durations) * 0.99) - 1]


async def test_a_login_flood_from_one_address_takes_nothing_from_anyone_else(database_url: str) -> None:
    env = {"RATE_LIMIT_AUTH_PER_ADDRESS": "20"}
    with running_service(database_url, **env) as (url, _):
        email = f"{uuid.uuid4().hex[:8]}@example.com"
        async with _client("127.0.0.1") as user, _client("127.0.0.2") as attacker:
            async with user.post(
                f"{url}/api/auth/register", json={"email": email, "password": PASSWORD, "name": "U"}
            ) as answer:
                grant = await answer.json()
            tasks = f"{url}/api/{grant['user']['id']}/tasks?limit=20"
            headers = {"Authorization": f"Bearer {grant['access_token']}"}
            seen: dict[int, int] = {}

            async def flood(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    status = await _sign_in(attacker, url, f"{uuid.uuid4().hex}@example.com", "guess")
                    seen[status] = seen.get(status, 0) + 1

            # Latency on a shared 2-core machine is noisy: take up to three pairs of
            # measurements, idle then flooded; one pair within the bound shows the property.
            # Without the limits every pair fails by far (argon2 on every flooded request).
            pairs = []
            for _ in range(3):
                idle = await _percentile_99(user, tasks, headers, 400)
                stop = asyncio.Event()
                flooders = [asyncio.create_task(flood(stop)) for _ in range(64)]
                try:
                    # Once every flooding connection is being refused, and the hashes its first
                    # allowance queued are done, the flood is what it will stay.
                    while seen.get(429, 0) < 64:  # noqa: ASYNC110 - counted by other tasks; polled
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(2)
                    started = time.monotonic()
                    assert await _sign_in(user, url, email, PASSWORD) == 200
                    assert time.monotonic() - started < 1.0
                    busy = await _percentile_99(user, tasks, headers, 400)
                finally:
                    stop.set()
                    await asyncio.gather(*flooders, return_exceptions=True)
                pairs.append((idle, busy))
                # A floor of 5 ms keeps a lucky, tiny idle figure from making the bound meaningless.
                if busy <= 2 * max(idle, 0.005):
                    break
            else:
                raise AssertionError(f"task p99 more than doubled under the flood: {pairs}, {seen}")
            assert seen.get(429, 0) > 0, seen


@pytest.fixture
def unicode_database_url(pg_server_url: str) -> Iterator[str]:
    """A database whose lower() folds beyond ASCII (C.UTF-8 folds 'İ' to 'i'), migrated."""
    name = f"taskapi_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'")
        try:
            url = database_url_for(pg_server_url, name)
            migrate(url)
            yield url
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_one_definition_of_an_emails_identity(unicode_database_url: str) -> None:
    with psycopg.connect(unicode_database_url) as conn:
        (folded,) = conn.execute("SELECT lower('İ')").fetchone() or ("",)
    assert folded == "i", "the database's own lower() must fold beyond ASCII for this test to mean anything"
    env = {"RATE_LIMIT_LOGINS": "3", "RATE_LIMIT_LOGINS_PER_ACCOUNT": "3"}
    with running_service(unicode_database_url, **env) as (url, _):
        async with _client("127.0.0.1") as http:
            assert await _sign_in(http, url, "ilker@example.com", PASSWORD, "register") == 201
            # Spellings that differ in ASCII case are the account; 'İ' is another address.
            assert await _sign_in(http, url, "ILKER@Example.com", PASSWORD) == 200
            assert await _sign_in(http, url, "İlker@example.com", PASSWORD) == 401
            assert await _sign_in(http, url, "ILKER@EXAMPLE.COM", PASSWORD, "register") == 409
            assert await _sign_in(http, url, "İlker@example.com", PASSWORD, "register") == 201
            # Every spelling of the account shares one budget of failures; none buys more.
            spellings = ["ilker@example.com", "Ilker@example.com", "ILKER@example.com"]
            assert [await _sign_in(http, url, spelling, "guess") for spelling in spellings] == [401] * 3
            assert await _sign_in(http, url, "iLkEr@example.com", PASSWORD) == 429


async def _address_seen(url: str, headers: dict[str, str]) -> Any:
    """Which address the service counted: sign in once with these headers, then see who is limited."""
    async with (
        _client("127.0.0.1") as http,
        http.post(
            f"{url}/api/auth/login", json={"email": "a@example.com", "password": "x"}, headers=headers
        ) as answer,
    ):
        return answer.status


async def test_forwarded_addresses_are_believed_only_from_trusted_proxies(database_url: str) -> None:
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    with running_service(database_url, RATE_LIMIT_AUTH_PER_ADDRESS="1") as (url, _):
        # Not trusted: the header is ignored, so both requests count against 127.0.0.1.
        assert await _address_seen(url, spoofed) == 401
        assert await _address_seen(url, {"X-Forwarded-For": "198.51.100.7"}) == 429
    env = {"RATE_LIMIT_AUTH_PER_ADDRESS": "1", "TRUSTED_PROXIES": "127.0.0.0/8"}
    with running_service(database_url, **env) as (url, _):
        assert await _address_seen(url, spoofed) == 401
        assert await _address_seen(url, {"X-Forwarded-For": "198.51.100.7"}) == 401  # another client
        assert await _address_seen(url, {"Forwarded": 'for="198.51.100.7:4711"'}) == 429
        # A client cannot pass itself off as another by putting an address in front.
        chained = {"X-Forwarded-For": "192.0.2.1, 203.0.113.9"}
        assert await _address_seen(url, chained) == 429
