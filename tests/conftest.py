"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL's server or an embedded one), a rolled-back
transaction per test, real tokens, and an HTTP client that checks every answer against
openapi.yaml."""

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import argon2
import asyncpg
import jwt
import orjson
import psycopg
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jsonschema import Draft202012Validator
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.request.exceptions import ParameterValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from service.app import create_app
from service.auth import mint_token
from service.db import PROJECT_DIR, migrate, pg_pool
from service.devdb import EmbeddedPostgres
from service.jobs import chores
from service.keys import PG_POOL
from service.settings import Settings
from service.webhooks import webhook_jobs

SPEC_PATH = PROJECT_DIR / "openapi.yaml"
SPEC_DOCUMENT = yaml.safe_load(SPEC_PATH.read_text())
# openapi-core reads application/json by itself; problem documents are JSON too.
OPENAPI = OpenAPI.from_dict(
    SPEC_DOCUMENT, config=Config(extra_media_type_deserializers={"application/problem+json": orjson.loads})
)
PROBLEM_SCHEMA = Draft202012Validator(SPEC_DOCUMENT["components"]["schemas"]["Problem"])
TEST_SECRET = "test-secret-long-enough-for-hs256-and-for-the-hs512-attack-case-0123456789"
PASSWORD = "correct horse battery staple"
PASSWORD_HASH = argon2.PasswordHasher().hash(PASSWORD)


def database_url_for(server_url: str, database: str) -> str:
    """`server_url` pointed at another database on the same server."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A PostgreSQL server to make test databases on: TEST_DATABASE_URL's, or an embedded one."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    with (
        tempfile.TemporaryDirectory(prefix="taskapi-test-pg-") as data_dir,
        EmbeddedPostgres(Path(data_dir), durable=False) as embedded_url,
    ):
        yield embedded_url


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the server, yield its URL, drop it afterwards."""
    name = f"taskapi_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield database_url_for(server_url, name)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_service(
    database_url: str, *, workers: int = 1, probe: str = "/readyz", log: IO[bytes] | None = None, **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """The real service in a process of its own, as production runs it, once `probe` answers
    200; yields its base URL. Its output goes to `log` when given."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": TEST_SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        # Tests sign many users up from one address; tests of that limit set it themselves.
        "RATE_LIMIT_AUTH_PER_ADDRESS": "0",
        # Stopping at once: only tests of the drain before a shutdown wait for one.
        "SHUTDOWN_DRAIN_SECONDS": "0",
        **env,
    }
    command = [sys.executable, "-m", "service", "serve", "--workers", str(workers)]
    output = {"stdout": log, "stderr": subprocess.STDOUT} if log is not None else {}
    process = subprocess.Popen(command, cwd=PROJECT_DIR, env=environment, **output)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the service exited at start"
            assert time.monotonic() < deadline, "the service did not become ready"
            try:
                with urllib.request.urlopen(f"{base_url}{probe}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield base_url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


async def raw_http(host: str, port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client library to tidy them up) and read the answer until
    the service closes the connection (send `Connection: close`)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def raw_status(answer: bytes) -> int:
    """The status code of a raw HTTP answer."""
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, to crash at will; durable, as in production."""
    server = EmbeddedPostgres(tmp_path / "pg")
    migrate(server.start())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> Iterator[str]:
    """This session's own database, migrated to head."""
    with fresh_database(pg_server_url) as url:
        migrate(url)
        yield url


@pytest.fixture(scope="module")
def service_url(database_url: str) -> Iterator[str]:
    """The real service in its own process, with a real pool, on this session's database; no
    write limit (tests of it set their own)."""
    with running_service(database_url, RATE_LIMIT_WRITES="0") as (base_url, _):
        yield base_url


@pytest.fixture
def empty_database_url(pg_server_url: str) -> Iterator[str]:
    """A database of this test's own, with no schema at all."""
    with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, jwt_secret=TEST_SECRET)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that is rolled back when the test ends."""
    conn = await asyncpg.connect(database_url)
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield conn
    finally:
        await transaction.rollback()
        await conn.close()


class OneConnectionPool:
    """Stands in for the app's pool: hands out the test's connection, one request at a time,
    so everything a test does happens inside its rolled-back transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    async def acquire(self, *, timeout: float | None = None) -> asyncpg.Connection:  # noqa: ASYNC109
        await self._lock.acquire()
        return self._conn

    async def release(self, conn: asyncpg.Connection) -> None:
        self._lock.release()

    def get_size(self) -> int:
        return 1

    def get_idle_size(self) -> int:
        return 0 if self._lock.locked() else 1


@dataclasses.dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def content_type(self) -> str:
        return str(self.headers.get("Content-Type", "")).split(";")[0].strip()


class ApiClient:
    """Real HTTP through aiohttp's test client; every answer is checked against openapi.yaml."""

    def __init__(self, client: TestClient[web.Request, web.Application]) -> None:
        self.client = client
        self.app = client.app

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = ...,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        request_headers = dict(headers or {})
        if token is not None:
            request_headers["Authorization"] = f"Bearer {token}"
        if json is not ...:
            data = orjson.dumps(json)
            request_headers.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=request_headers) as response:
            answer = Answer(response.status, response.headers, await response.read())
        check_contract(method, path, request_headers, data, answer)
        return answer

    async def get(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("DELETE", path, **kwargs)


def check_contract(
    method: str, path: str, request_headers: dict[str, str], data: bytes | None, answer: Answer
) -> None:
    """Fail unless the answer is one openapi.yaml allows for this request."""
    url = urlsplit(path)
    request = MockRequest(
        "http://localhost",
        method,
        url.path,
        args={key: values[0] for key, values in parse_qs(url.query).items()},
        headers=request_headers,
        data=data,
        content_type=request_headers.get("Content-Type", ""),
    )
    response = MockResponse(
        answer.body, status_code=answer.status, headers=dict(answer.headers), content_type=answer.content_type
    )
    assert "X-Request-Id" in answer.headers
    try:
        OPENAPI.validate_response(request, response)
    except (PathNotFound, OperationNotFound, ResponseNotFound) as error:
        # No spec lists an unknown URL or method, nor a URL whose path parameter has the wrong
        # type (/api/1/tasks/abc): that much must be true of the request, and the answer must
        # still be a problem document.
        if isinstance(error, ResponseNotFound):
            request_errors = OPENAPI.iter_request_errors(request)
            assert any(isinstance(e, ParameterValidationError) for e in request_errors), error
        assert answer.status in (404, 405), answer
        assert answer.content_type == "application/problem+json"
        PROBLEM_SCHEMA.validate(answer.json)


@pytest.fixture
def make_app(settings: Settings, db: asyncpg.Connection) -> Any:
    """Build the app with the test's settings, its pool replaced by the test's connection."""

    def build(**overrides: Any) -> web.Application:
        app = create_app(dataclasses.replace(settings, **overrides))

        async def test_pool(app: web.Application) -> AsyncIterator[None]:
            app[PG_POOL] = OneConnectionPool(db)  # type: ignore[assignment]
            yield

        app.cleanup_ctx[app.cleanup_ctx.index(pg_pool)] = test_pool
        # Background chores and webhook jobs would wake at random inside the test's one shared
        # connection; they are tested on real pools of their own (test_changes.py,
        # test_webhooks.py).
        app.cleanup_ctx.remove(chores)
        app.cleanup_ctx.remove(webhook_jobs)
        return app

    return build


@pytest.fixture
async def api(aiohttp_client: Any, make_app: Any) -> ApiClient:
    return ApiClient(await aiohttp_client(make_app()))


@dataclasses.dataclass
class User:
    id: int
    email: str
    token: str

    @property
    def tasks(self) -> str:
        return f"/api/{self.id}/tasks"


@pytest.fixture
def make_user(db: asyncpg.Connection) -> Any:
    """Insert a user straight into the database and mint a real token for them."""

    async def create(email: str | None = None) -> User:
        email = email or f"{uuid.uuid4().hex[:10]}@example.com"
        user_id = await db.fetchval(
            "INSERT INTO users (email, name, password_hash) VALUES ($1, $2, $3) RETURNING id",
            email,
            "Test User",
            PASSWORD_HASH,
        )
        return User(user_id, email, mint_token(user_id, TEST_SECRET, 600))

    return create


async def user_in(database_url: str) -> User:
    """A user inserted into that database (not the test's transaction), with a real token."""
    conn = await asyncpg.connect(database_url)
    try:
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        user_id = await conn.fetchval(
            "INSERT INTO users (email, name, password_hash) VALUES ($1, 'W', $2) RETURNING id",
            email,
            PASSWORD_HASH,
        )
    finally:
        await conn.close()
    return User(user_id, email, mint_token(user_id, TEST_SECRET, 3600))


@pytest.fixture
async def alice(make_user: Any) -> User:
    return await make_user()


@pytest.fixture
async def bob(make_user: Any) -> User:
    return await make_user()


# An identity provider, for the tests of tokens from one (tests/test_identity_provider.py).

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
ALGORITHMS = {"EdDSA": OKPAlgorithm, "ES256": ECAlgorithm, "RS256": RSAAlgorithm}


def _new_key(algorithm: str) -> PrivateKey:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# Made once: an RSA key takes a moment. Each provider draws its own (kid, key) pairs from here.
KEYS = {algorithm: [_new_key(algorithm) for _ in range(3)] for algorithm in ALGORITHMS}


class Provider:
    """An identity provider's JWKS endpoint, as Better Auth publishes it at /api/auth/jwks, on a
    port of its own; it can rotate its keys, go down and come back on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"  # Better Auth: iss and aud are its base URL
        self.jwks_url = f"{self.issuer}/api/auth/jwks"
        self.keys: dict[str, tuple[str, PrivateKey]] = {}  # kid -> (algorithm, private key)
        self.published: list[str] = []
        self.max_age: int | None = None
        self.fetches = 0
        self._runner: web.AppRunner | None = None
        self._drawn = {algorithm: 0 for algorithm in ALGORITHMS}

    def new_key(self, algorithm: str, *, publish: bool = True) -> str:
        """A new signing key of this provider's; its kid."""
        key = KEYS[algorithm][self._drawn[algorithm] % len(KEYS[algorithm])]
        self._drawn[algorithm] += 1
        kid = f"{algorithm}-{uuid.uuid4()}"
        self.keys[kid] = (algorithm, key)
        if publish:
            self.published.append(kid)
        return kid

    def public_jwk(self, kid: str) -> dict[str, Any]:
        algorithm, key = self.keys[kid]
        jwk: dict[str, Any] = ALGORITHMS[algorithm].to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid}

    def public_pem(self, kid: str) -> bytes:
        return (
            self.keys[kid][1]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def claims(self, subject: str, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "sub": subject,
            "iss": self.issuer,
            "aud": self.issuer,
            "iat": now,
            "exp": now + 900,
            "email": f"{subject[:20]}@example.com",
            "name": "Provider User",
            **changes,
        }
        return {key: value for key, value in claims.items() if value is not None}

    def token(
        self,
        subject: str,
        kid: str,
        *,
        algorithm: str | None = None,
        headers_kid: str | None = None,
        **changes: Any,
    ) -> str:
        """A token for `subject` signed with the key `kid` (naming `headers_kid` instead, if
        given), as the provider would issue it."""
        key_algorithm, key = self.keys[kid]
        return jwt.encode(
            self.claims(subject, **changes),
            key,
            algorithm=algorithm or key_algorithm,
            headers={"kid": headers_kid or kid},
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        headers = {"Cache-Control": f"public, max-age={self.max_age}"} if self.max_age is not None else {}
        return web.json_response({"keys": [self.public_jwk(kid) for kid in self.published]}, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/auth/jwks", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    provider = Provider()
    for algorithm in ALGORITHMS:
        provider.new_key(algorithm)
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


def provider_settings(provider: Provider, **overrides: Any) -> dict[str, Any]:
    return {
        "auth_jwks_url": provider.jwks_url,
        "auth_issuer": provider.issuer,
        "auth_audience": provider.issuer,
        **overrides,
    }


@pytest.fixture
async def provider_api(aiohttp_client: Any, make_app: Any, provider: Provider) -> ApiClient:
    """The app, configured with the test provider, once it has fetched the provider's keys."""
    api = ApiClient(await aiohttp_client(make_app(**provider_settings(provider))))
    await until(lambda: provider.fetches >= 1)
    return api


def subject() -> str:
    """A subject as Better Auth makes them: 32 letters and digits."""
    return uuid.uuid4().hex


def kid_of(provider: Provider, algorithm: str) -> str:
    return next(kid for kid in provider.published if provider.keys[kid][0] == algorithm)


# A webhook receiver, for the tests of webhooks and reminders (tests/test_webhooks.py,
# tests/test_reminders.py).


@dataclasses.dataclass
class Received:
    webhook_id: str
    payload: Any
    at: float  # time.monotonic()
    wall: float  # time.time()


class Receiver:
    """An endpoint receiving webhooks on a port of its own. It checks every signature with the
    standardwebhooks package, an implementation independent of the service's; it can answer
    given statuses first, redirect, or hold requests until released."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.secret: str | None = None
        self.received: list[Received] = []
        self.forged: list[bytes] = []  # bodies whose signature did not verify
        self.answers: list[int] = []  # statuses to answer first, in turn; then 204
        self.hold: asyncio.Event | None = None  # when set, requests wait for it
        self.held = 0  # requests waiting on hold
        self.redirected = 0  # requests that followed a redirect
        self._runner: web.AppRunner | None = None

    def of_type(self, event_type: str) -> list[Received]:
        return [received for received in self.received if received.payload["type"] == event_type]

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert self.secret is not None
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.forged.append(body)
            return web.Response(status=400)
        assert request.headers["Content-Type"] == "application/json"
        self.received.append(Received(request.headers["webhook-id"], payload, time.monotonic(), time.time()))
        if self.hold is not None:
            self.held += 1
            await self.hold.wait()
        status = self.answers.pop(0) if self.answers else 204
        if 300 <= status < 400:
            return web.Response(
                status=status, headers={"Location": f"http://127.0.0.1:{self.port}/elsewhere"}
            )
        return web.Response(status=status)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.redirected += 1
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_route("*", "/elsewhere", self._elsewhere)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
