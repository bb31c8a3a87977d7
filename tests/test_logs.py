"""Logs: task writes leave a structured line with user, task and request id; no secret is logged."""

import io
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
from yarl import URL

from service.db import hide_password
from service.logs import JsonFormatter, TextFormatter, configure_logging
from tests.conftest import PASSWORD, TEST_SECRET, ApiClient, User


@contextmanager
def _captured(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    """Everything logged meanwhile, as the service writes it with `formatter`."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextmanager
def _configured(log_format: str) -> Iterator[io.StringIO]:
    """Everything logged meanwhile, with logging set up as `serve` sets it up: the access log then
    takes its fast path (LineHandler.write) to the one handler."""
    stream = io.StringIO()
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    configure_logging(logging.INFO, log_format, stream)
    try:
        yield stream
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)


@pytest.fixture(params=["captured", "configured"])
def log_lines(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """Everything logged during the test, as the service writes it: JSON lines; through a
    handler of the test's own, and through the service's only handler."""
    with _captured(JsonFormatter()) if request.param == "captured" else _configured("json") as stream:
        yield stream


def _entries(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_each_request_leaves_one_line_with_user_task_and_request_id(
    aiohttp_client, make_app, alice: User, log_lines: io.StringIO
) -> None:
    api = ApiClient(await aiohttp_client(make_app()))
    created = await api.post(alice.tasks, token=alice.token, json={"title": "t"})
    task_url = created.headers["Location"]
    updated = await api.put(task_url, token=alice.token, json={"title": "u"})
    deleted = await api.delete(task_url, token=alice.token)
    entries = [entry for entry in _entries(log_lines) if entry["logger"] != "service.listener"]
    assert len(entries) == 3, entries  # a write leaves its access line and no other
    for entry, (route, answer) in zip(
        entries, [("create_task", created), ("update_task", updated), ("delete_task", deleted)], strict=True
    ):
        assert entry["route"] == route
        assert entry["status"] == answer.status
        assert entry["user_id"] == alice.id
        assert entry["task_id"] == created.json["id"]
        assert entry["request_id"] == answer.headers["X-Request-Id"]
        assert entry["level"] == "INFO"
        assert entry["duration_ms"] >= 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])


async def test_no_token_password_or_secret_is_ever_logged(
    aiohttp_client, make_app, alice: User, log_lines: io.StringIO
) -> None:
    api = ApiClient(await aiohttp_client(make_app()))
    registered = await api.post(
        "/api/auth/register", json={"email": "log@example.com", "password": "hunter2-hunter2", "name": "L"}
    )
    await api.post("/api/auth/login", json={"email": alice.email, "password": PASSWORD})
    await api.post("/api/auth/login", json={"email": alice.email, "password": "wrong-password-1"})
    await api.get(alice.tasks, token=alice.token)
    await api.get(alice.tasks, token=alice.token + "tampered")
    output = log_lines.getvalue()
    assert output  # the requests were logged at all
    for secret in [
        alice.token,
        registered.json["access_token"],
        "hunter2-hunter2",
        PASSWORD,
        "wrong-password-1",
        TEST_SECRET,
    ]:
        assert secret not in output
    assert "$argon2" not in output


async def test_a_request_aiohttp_cannot_parse_is_logged_without_an_error(
    aiohttp_client, make_app, caplog: pytest.LogCaptureFixture
) -> None:
    client = await aiohttp_client(make_app())
    with caplog.at_level(logging.INFO):
        async with client.get("/healthz?" + "x" * 9000) as response:  # past aiohttp's 8 KiB request line
            assert response.status == 400
    # aiohttp itself reports the malformed request; our access log must record it, not crash.
    ours = [record for record in caplog.records if record.name != "aiohttp.server"]
    assert not [record for record in ours if record.levelno >= logging.ERROR]
    assert [record for record in ours if getattr(record, "status", None) == 400]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret-pw@db:5432/tasks",
        "postgresql://app@db:5432/tasks?password=s3cret-pw",
        "postgresql://app@db/tasks?sslmode=verify-full&sslpassword=s3cret-pw&application_name=api",
        "postgresql://app@db/tasks?Password=s3cret-pw",
        "postgresql://app@db/tasks?pass%77ord=s3cret-pw",
        "postgresql://app:s3cret-pw@db/tasks?password=s3cret-pw",
    ],
)
def test_no_credential_a_database_url_carries_is_logged(url: str) -> None:
    hidden = hide_password(url)
    assert "s3cret-pw" not in hidden
    assert hidden.startswith("postgresql://app") and "db" in hidden and "/tasks" in hidden


@pytest.mark.parametrize("capture", ["captured", "configured"])
async def test_text_logs_escape_control_characters(aiohttp_client, make_app, capture: str) -> None:
    with _captured(TextFormatter()) if capture == "captured" else _configured("text") as stream:
        client = await aiohttp_client(make_app())
        forged = "%0A2026-01-01%2000:00:00,000%20INFO%20service:%20forged%0D%1B[31m%E2%80%A8%C2%85"
        async with client.get(URL(f"/healthz{forged}", encoded=True)) as response:
            assert response.status == 404
    output = stream.getvalue()
    assert "forged" in output  # the request was logged, its path escaped on one line
    for line in output.splitlines():
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line), line
        assert "forged" not in line or "\\n2026" in line
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]", output)
