"""Probes, and answers when the database is away: 503 with Retry-After, never a hang or a 500."""

import socket

import pytest

from service.app import create_app
from service.auth import mint_token
from service.settings import Settings
from tests.conftest import TEST_SECRET, ApiClient


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/nothing"


async def test_healthz_answers_without_a_token(api: ApiClient) -> None:
    answer = await api.get("/healthz")
    assert answer.status == 200
    assert answer.json == {"status": "ok"}


async def test_readyz_is_ok_on_a_migrated_database(api: ApiClient) -> None:
    answer = await api.get("/readyz")
    assert answer.status == 200
    assert answer.json == {"status": "ok"}


@pytest.fixture
async def api_without_database(aiohttp_client) -> ApiClient:
    """The real app with a real pool, pointed at a port where no database listens."""
    settings = Settings(database_url=_closed_port_url(), jwt_secret=TEST_SECRET, db_acquire_timeout=1.0)
    return ApiClient(await aiohttp_client(create_app(settings)))


async def test_without_a_database_readyz_is_503_and_healthz_is_200(api_without_database: ApiClient) -> None:
    ready = await api_without_database.get("/readyz")
    assert ready.status == 503
    assert ready.headers["Retry-After"]
    assert "unreachable" in ready.json["detail"]
    assert (await api_without_database.get("/healthz")).status == 200


async def test_without_a_database_requests_are_503_with_retry_after(api_without_database: ApiClient) -> None:
    token = mint_token(1, TEST_SECRET, 600)
    for answer in [
        await api_without_database.get("/api/1/tasks", token=token),
        await api_without_database.post("/api/1/tasks", token=token, json={"title": "t"}),
        await api_without_database.post("/api/auth/login", json={"email": "a@b.co", "password": "x"}),
    ]:
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "2"
        assert "postgres" not in answer.body.decode().lower()


async def test_readyz_is_503_when_migrations_are_missing(aiohttp_client, empty_database_url: str) -> None:
    app = create_app(Settings(database_url=empty_database_url, jwt_secret=TEST_SECRET))
    api = ApiClient(await aiohttp_client(app))
    answer = await api.get("/readyz")
    assert answer.status == 503
    assert "migration" in answer.json["detail"]
