"""Operations: Prometheus metrics (summed over workers, optionally behind a token), rate
limits on writes and logins, and CORS for browser frontends."""

import asyncio
import dataclasses
import re

import aiohttp
import pytest

from service.app import create_app
from service.auth import mint_token
from service.metrics import SAMPLE_SECONDS
from service.settings import Settings
from tests.conftest import PASSWORD, TEST_SECRET, ApiClient, User, fresh_database, running_service


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match["value"])
    return total


async def test_metrics_count_requests_by_route_and_status(aiohttp_client, make_app, alice: User) -> None:
    api = ApiClient(await aiohttp_client(make_app(metrics_public=True)))
    await api.post(alice.tasks, token=alice.token, json={"title": "counted"})
    await api.get(f"{alice.tasks}/999999", token=alice.token)
    answer = await api.get("/metrics")
    assert answer.status == 200 and answer.content_type == "text/plain"
    text = answer.body.decode()
    assert sample(text, "taskapi_http_requests_total", route="create_task", status="201") >= 1
    assert sample(text, "taskapi_http_requests_total", route="task", status="404") >= 1
    assert sample(text, "taskapi_http_request_duration_seconds_count", route="create_task") >= 1
    assert sample(text, "taskapi_build_info") == 1
    for name in ("taskapi_http_requests_in_flight", "taskapi_db_pool_waiting", "taskapi_db_pool_connections"):
        assert name in text
    assert alice.token not in text


async def test_metrics_need_the_metrics_token_when_one_is_set(aiohttp_client, make_app) -> None:
    api = ApiClient(await aiohttp_client(make_app(metrics_token="scrape-me")))
    refused = await api.get("/metrics")
    assert refused.status == 401 and refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert (await api.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await api.get("/metrics", token="scrape-me")).status == 200


async def test_metrics_are_refused_to_anonymous_clients_by_default(api: ApiClient, alice: User) -> None:
    assert (await api.get("/metrics")).status == 401
    assert (await api.get("/metrics", token=alice.token)).status == 401  # a user's token is not enough


async def test_metrics_public_opens_them_to_anyone(aiohttp_client, make_app) -> None:
    api = ApiClient(await aiohttp_client(make_app(metrics_public=True)))
    assert (await api.get("/metrics")).status == 200


async def test_metrics_are_rendered_at_most_once_a_second(aiohttp_client, make_app) -> None:
    api = ApiClient(await aiohttp_client(make_app(metrics_public=True)))
    first = (await api.get("/metrics")).body
    for _ in range(5):
        await api.get("/healthz")
    assert (await api.get("/metrics")).body == first  # the same page, not rendered again
    await asyncio.sleep(1.1)
    later = (await api.get("/metrics")).body.decode()
    assert sample(later, "taskapi_http_requests_total", route="healthz") >= 5


async def test_database_errors_are_counted(aiohttp_client) -> None:
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:1/none", jwt_secret=TEST_SECRET, db_acquire_timeout=0.5
    )
    api = ApiClient(await aiohttp_client(create_app(dataclasses.replace(settings, metrics_public=True))))
    before = sample((await api.get("/metrics")).body.decode(), "taskapi_db_errors_total")
    assert (await api.get("/api/1/tasks", token=mint_token(1, TEST_SECRET, 60))).status == 503
    await asyncio.sleep(1.1)  # metrics are rendered at most once a second
    after = sample((await api.get("/metrics")).body.decode(), "taskapi_db_errors_total")
    assert after == before + 1


async def test_metrics_add_up_every_workers_requests(pg_server_url: str) -> None:
    with (
        fresh_database(pg_server_url) as url,
        running_service(url, workers=2, METRICS_PUBLIC="1") as (base_url, _),
    ):
        # A connection per request, so the kernel spreads them over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(40):
                async with http.get(f"{base_url}/healthz") as response:
                    assert response.status == 200
            # Each worker adds its counts to the shared files once a second (service/metrics.py).
            await asyncio.sleep(SAMPLE_SECONDS + 0.5)
            scrapes = []
            for _ in range(6):
                async with http.get(f"{base_url}/metrics") as response:
                    scrapes.append(
                        sample(await response.text(), "taskapi_http_requests_total", route="healthz")
                    )
    assert scrapes == [40.0] * 6  # whichever worker answers the scrape counts all 40


async def test_writes_over_the_limit_are_429_per_user(
    aiohttp_client, make_app, alice: User, bob: User
) -> None:
    api = ApiClient(await aiohttp_client(make_app(rate_limit_writes=3)))
    statuses = [
        (await api.post(alice.tasks, token=alice.token, json={"title": "t"})).status for _ in range(3)
    ]
    limited = await api.post(alice.tasks, token=alice.token, json={"title": "t"})
    assert statuses == [201, 201, 201]
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert (await api.get(alice.tasks, token=alice.token)).status == 200  # reads are not limited
    assert (await api.post(bob.tasks, token=bob.token, json={"title": "t"})).status == 201
    assert (await api.get("/healthz")).status == 200


async def test_login_attempts_are_limited_per_account(
    aiohttp_client, make_app, alice: User, bob: User
) -> None:
    api = ApiClient(await aiohttp_client(make_app(rate_limit_logins=2)))
    wrong = {"email": alice.email, "password": "not the password"}
    assert [(await api.post("/api/auth/login", json=wrong)).status for _ in range(2)] == [401, 401]
    right_but_limited = await api.post(
        "/api/auth/login", json={"email": alice.email.upper(), "password": PASSWORD}
    )
    assert right_but_limited.status == 429
    assert (await api.post("/api/auth/login", json={"email": bob.email, "password": PASSWORD})).status == 200


async def test_a_limit_of_zero_is_off(aiohttp_client, make_app, alice: User) -> None:
    api = ApiClient(await aiohttp_client(make_app(rate_limit_writes=0)))
    for _ in range(5):
        assert (await api.post(alice.tasks, token=alice.token, json={"title": "t"})).status == 201


ORIGIN = "https://app.example.com"


@pytest.fixture
async def browser(aiohttp_client, make_app) -> ApiClient:
    return ApiClient(await aiohttp_client(make_app(cors_origins=(ORIGIN,))))


async def test_an_allowed_origin_gets_preflights_answered(browser: ApiClient, alice: User) -> None:
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization",
    }
    async with browser.client.options(f"{alice.tasks}/1", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "PUT" in response.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


async def test_an_allowed_origin_may_read_answers_and_their_headers(browser: ApiClient, alice: User) -> None:
    for answer in [
        await browser.post(alice.tasks, token=alice.token, json={"title": "t"}, headers={"Origin": ORIGIN}),
        await browser.get(alice.tasks, headers={"Origin": ORIGIN}),  # a 401: errors must be readable too
    ]:
        assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
        exposed = answer.headers["Access-Control-Expose-Headers"]
        assert all(name in exposed for name in ("Location", "Link", "ETag", "X-Request-Id"))


async def test_other_origins_get_no_cors_headers(browser: ApiClient, api: ApiClient, alice: User) -> None:
    answer = await browser.get(alice.tasks, token=alice.token, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in answer.headers
    unconfigured = await api.get(alice.tasks, token=alice.token, headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in unconfigured.headers
