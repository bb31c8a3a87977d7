"""Errors: every failure is problem+json, hostile bytes get a 4xx, nothing internal leaks."""

import io
import logging
import re

import orjson
import pytest
from aiohttp import web

from service.errors import PROBLEM_CONTENT_TYPE
from service.keys import SETTINGS
from tests.conftest import ApiClient, User, raw_http, raw_status


async def test_unknown_url_is_a_404_problem(api: ApiClient) -> None:
    answer = await api.get("/no/such/thing")
    assert answer.status == 404
    assert answer.content_type == PROBLEM_CONTENT_TYPE
    assert answer.json["status"] == 404
    assert answer.json["request_id"] == answer.headers["X-Request-Id"]


async def test_wrong_method_is_a_405_problem_with_allow(api: ApiClient, alice: User) -> None:
    answer = await api.request("PATCH", alice.tasks, token=alice.token)
    assert answer.status == 405
    assert set(answer.headers["Allow"].split(",")) == {"GET", "POST"}
    assert answer.content_type == PROBLEM_CONTENT_TYPE


async def test_a_body_over_the_limit_is_413(api: ApiClient, alice: User) -> None:
    limit = api.app[SETTINGS].max_body_bytes
    answer = await api.post(alice.tasks, token=alice.token, json={"title": "t", "description": "d" * limit})
    assert answer.status == 413
    assert str(limit) in answer.json["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_a_body_that_is_not_json_is_415(api: ApiClient, alice: User, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    answer = await api.post(alice.tasks, token=alice.token, data=b'{"title": "t"}', headers=headers)
    assert answer.status == 415


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"title": "t",}',
        b"\xff\xfe\x00t",
        b'{"title": "\xc3\x28"}',  # invalid UTF-8 inside a string
        b'{"title": "\\ud800"}',  # a lone surrogate, which PostgreSQL cannot store
        b"[1, 2]",
        b"42",
        b'"title"',
        b"null",
        b"[" * 5000 + b"]" * 5000,
        b'{"title": NaN}',
    ],
)
async def test_malformed_bodies_are_400(api: ApiClient, alice: User, body: bytes) -> None:
    answer = await api.post(
        alice.tasks, token=alice.token, data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400
    assert answer.content_type == PROBLEM_CONTENT_TYPE


@pytest.mark.parametrize("field", ["title", "description"])
async def test_a_nul_character_is_a_400_naming_the_field(api: ApiClient, alice: User, field: str) -> None:
    body = {"title": "ok", field: "bad\x00byte"}
    answer = await api.post(alice.tasks, token=alice.token, json=body)
    assert answer.status == 400
    assert list(answer.json["errors"]) == [field]


async def test_huge_numbers_in_fields_are_400(api: ApiClient, alice: User) -> None:
    body = b'{"title": "t", "completed": 123456789012345678901234567890}'
    answer = await api.post(
        alice.tasks, token=alice.token, data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400
    assert "completed" in answer.json["errors"]


async def test_sql_looking_text_is_stored_verbatim(api: ApiClient, alice: User) -> None:
    title = "'); DROP TABLE tasks; --"
    answer = await api.post(alice.tasks, token=alice.token, json={"title": title})
    assert answer.status == 201
    assert (await api.get(answer.headers["Location"], token=alice.token)).json["title"] == title


async def test_an_unexpected_error_is_a_bare_500_and_is_logged(
    aiohttp_client, make_app, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("SELECT secret FROM internals")

    app = make_app()
    app.router.add_get("/api/{user_id}/broken", broken, name="broken")
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR):
        response = await client.get(
            f"/api/{alice.id}/broken", headers={"Authorization": f"Bearer {alice.token}"}
        )
    body = await response.text()
    assert response.status == 500
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert "SELECT" not in body and "RuntimeError" not in body and "Traceback" not in body
    assert any(record.exc_info for record in caplog.records)


async def test_the_request_id_is_echoed_when_sane(api: ApiClient) -> None:
    answer = await api.get("/healthz", headers={"X-Request-Id": "abc-123.X_y:z"})
    assert answer.headers["X-Request-Id"] == "abc-123.X_y:z"


@pytest.mark.parametrize("request_id", ["a b", "x" * 129, "<script>", "é"])
async def test_an_unsafe_request_id_is_replaced(api: ApiClient, request_id: str) -> None:
    answer = await api.get("/healthz", headers={"X-Request-Id": request_id})
    assert answer.headers["X-Request-Id"] != request_id
    assert re.fullmatch("[0-9a-f]{32}", answer.headers["X-Request-Id"])


async def test_a_10_mb_body_is_413(api: ApiClient, alice: User) -> None:
    body = io.BytesIO(b'{"title": "' + b"x" * (10 * 1024 * 1024) + b'"}')
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {alice.token}"}
    async with api.client.post(alice.tasks, data=body, headers=headers) as response:
        assert response.status == 413
        assert response.content_type == PROBLEM_CONTENT_TYPE


async def test_a_look_alike_digit_names_no_user(api: ApiClient, alice: User) -> None:
    # An Arabic-Indic digit one, and the caller's id written in such digits: neither is an id
    # (int() would read both), so both are someone else's path.
    look_alike = "".join(chr(0x660 + int(digit)) for digit in str(alice.id))
    for user_id in ("%D9%A1", look_alike):
        assert (await api.get(f"/api/{user_id}/tasks", token=alice.token)).status == 403


@pytest.mark.parametrize(
    "path",
    [
        "/api/1/tasks/%00",
        "/api/1/tasks/1%20OR%201=1",
        "/api/1/tasks/-1",
        "/api/1/tasks/1.5",
    ],
)
async def test_hostile_paths_are_unknown_urls(api: ApiClient, alice: User, path: str) -> None:
    answer = await api.get(path, token=alice.token)
    assert answer.status == 404
    assert answer.content_type == PROBLEM_CONTENT_TYPE


@pytest.mark.parametrize(
    "body",
    [
        {"title": ["list"]},
        {"title": {"nested": "object"}},
        {"title": "t", "description": 12},
        {"title": "t", "tags": [["nested"]]},
        {"title": "t", "recurrence": {"every": "day", "interval": 2**63}},
        {"title": "t", "due_date": "9999-99-99T99:99:99Z"},
        {"title": "t", "priority": None},
    ],
)
async def test_wrong_types_are_400_naming_the_field(api: ApiClient, alice: User, body: dict) -> None:
    answer = await api.post(alice.tasks, token=alice.token, json=body)
    assert answer.status == 400
    assert answer.json["errors"]


def _get(path: str, *headers: bytes) -> bytes:
    fields = [header for header in headers if header]
    return b"\r\n".join([f"GET {path} HTTP/1.1".encode(), *fields, b"Connection: close", b"", b""])


@pytest.mark.parametrize(
    ("header", "named"),
    [
        (b"Authorization: Bearer \xff\xfe-not-utf-8", "Authorization"),
        (b"X-Anything: caf\xe9", "X-Anything"),  # Latin-1, not UTF-8
    ],
)
async def test_header_bytes_that_are_not_utf8_are_a_400_problem(
    api: ApiClient, alice: User, header: bytes, named: str
) -> None:
    server = api.client.server
    auth = b"" if named == "Authorization" else f"Authorization: Bearer {alice.token}".encode()
    answer = await raw_http(server.host, server.port, _get(alice.tasks, b"Host: localhost", header, auth))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert raw_status(answer) == 400, answer
    assert b"content-type: application/problem+json" in head.lower()
    assert orjson.loads(body)["errors"] == {named: ["Not valid UTF-8."]}


async def test_a_host_header_that_is_not_utf8_never_reaches_the_next_page_link(
    api: ApiClient, alice: User, db
) -> None:
    await db.execute("INSERT INTO tasks (user_id, title) VALUES ($1, 'a'), ($1, 'b')", alice.id)
    server = api.client.server
    auth = f"Authorization: Bearer {alice.token}".encode()
    answer = await raw_http(
        server.host, server.port, _get(f"{alice.tasks}?limit=1", b"Host: \xff.example", auth)
    )
    assert raw_status(answer) == 400, answer


async def test_header_values_in_utf8_are_accepted(api: ApiClient, alice: User) -> None:
    server = api.client.server
    auth = f"Authorization: Bearer {alice.token}".encode()
    answer = await raw_http(
        server.host, server.port, _get(alice.tasks, b"Host: localhost", auth, b"X-Note: caf\xc3\xa9")
    )
    assert raw_status(answer) == 200, answer


async def test_answers_carry_nosniff_and_no_versions(api: ApiClient, alice: User) -> None:
    for answer in [
        await api.get("/healthz"),
        await api.get("/no/such/thing"),
        await api.get(alice.tasks),  # 401
        await api.get(alice.tasks, token=alice.token),
    ]:
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        server = answer.headers.get("Server", "")
        assert "Python" not in server and "aiohttp" not in server and not re.search(r"\d", server)


async def test_answers_to_authenticated_requests_are_not_stored(api: ApiClient, alice: User) -> None:
    created = await api.post(alice.tasks, token=alice.token, json={"title": "private"})
    for answer in [
        created,
        await api.get(created.headers["Location"], token=alice.token),
        await api.get(alice.tasks, token=alice.token),
        await api.get(f"{alice.tasks}/999999", token=alice.token),  # a 404 too
    ]:
        assert answer.headers["Cache-Control"] == "no-store", answer
    assert "Cache-Control" not in (await api.get("/healthz")).headers


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        (
            "/api/auth/register",
            {"email": "a@example.com", "password": "short", "name": "Ada"},
            "password: must have at least 8 characters.",
        ),
        (
            "/api/auth/register",
            {"email": "nope", "password": "long enough", "name": ""},
            "email: not a valid email address. name: must not be empty.",
        ),
        ("tasks", {"title": "x" * 256}, "title: must have at most 255 characters."),
        ("tasks", {"title": "t", "colour": "red"}, "colour: not a field of this request."),
        ("tasks", {}, "title: missing data for required field."),
        (
            "tasks",
            {"title": "t", "recurrence": {"every": "day", "interval": 0}},
            "recurrence.interval: must be from 1 to 365.",
        ),
        ("tasks", {"title": "t", "recurrence": "daily"}, "recurrence: must be a JSON object."),
        ("tasks", {"title": "t", "priority": "urgent"}, "priority: must be one of: low, medium, high."),
        ("tasks", {"title": "t", "tags": ["a"] * 21}, "tags: at most 20 tags."),
    ],
)
async def test_detail_says_what_is_wrong_with_each_field(
    api: ApiClient, alice: User, path: str, body: dict, detail: str
) -> None:
    answer = await api.post(alice.tasks if path == "tasks" else path, token=alice.token, json=body)
    assert answer.status == 400
    assert answer.json["detail"] == detail
    assert answer.json["errors"]


async def test_detail_covers_query_parameters_and_whole_bodies(api: ApiClient, alice: User) -> None:
    bad_query = await api.get(f"{alice.tasks}?limit=0&colour=red", token=alice.token)
    assert (
        bad_query.json["detail"] == "limit: must be from 1 to 200. colour: not a parameter of this request."
    )
    task = (await api.post(alice.tasks, token=alice.token, json={"title": "t"})).json
    empty = await api.put(f"{alice.tasks}/{task['id']}", token=alice.token, json={})
    assert empty.json["detail"] == "Give at least one field to change."


async def test_a_long_detail_stops_after_ten_fields(api: ApiClient, alice: User) -> None:
    body = {"title": "t", **{f"unknown{n}": n for n in range(15)}}
    answer = await api.post(alice.tasks, token=alice.token, json=body)
    assert len(answer.json["errors"]) == 15
    assert answer.json["detail"].count("not a field of this request") == 10
    assert answer.json["detail"].endswith("And 5 more; see errors.")
