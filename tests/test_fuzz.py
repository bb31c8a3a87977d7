"""Contract fuzzing: schemathesis drives the real service, started as a subprocess on a fresh
database, and holds every answer to openapi.yaml: no server error, no answer the spec does not
allow, and no user ever reading another user's tasks."""

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, CheckContext, GenerationMode, HookContext, Response

from service.auth import mint_token
from service.db import PROJECT_DIR
from service.schemas import TIME_ZONES
from tests.conftest import TEST_SECRET, fresh_database, running_service

SPEC_PATH = PROJECT_DIR / "openapi.yaml"
# Per operation, on top of the cases schemathesis derives from the schema's bounds and enums:
# enough to reach every field, few enough for the whole module to take about half a minute.
MAX_EXAMPLES = 50
CROSS_USER_MAX_EXAMPLES = 15

# Schemathesis builds its strategies, pinned values included, when pytest collects the tests,
# before any fixture runs; its loader that takes the schema from a fixture instead
# (`schemathesis.pytest.from_fixture`) fails on pytest 9.2, which no longer has the
# `Function._nodeid` it sets. So the ids are fixed here:
# identity columns in a fresh database count from 1, the fixture makes the rows in this order,
# and it checks that the service handed out exactly these ids.
ALICE_ID, BOB_ID = 1, 2
ALICE_TASK_IDS = tuple(range(1, 9))
ALICE_DISPOSABLE_TASK_IDS = tuple(range(9, 13))  # the only tasks of hers the fuzzer may delete
BOB_TASK_IDS = tuple(range(13, 16))
BOB_TITLES = tuple(f"bob-private-task-{n}" for n in range(len(BOB_TASK_IDS)))
# Valid RFC 3339 date-times at the edges of what Python and PostgreSQL hold: the spec sets no
# range, so each must be taken and answered in RFC 3339, or refused with a 400; never a 500.
EDGE_DATE_TIMES = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00",
    "0999-12-31T23:59:59.999999Z",
    "1969-12-31T23:59:59.999999-00:30",
    "2024-02-29T12:00:00+14:00",
    "9999-12-31T23:30:00-01:00",
    "9999-12-31T23:59:59.999999Z",
)
# The spec's `iana-time-zone` format: an IANA name, which no pattern can say.
schemathesis.openapi.format("iana-time-zone", st.sampled_from(sorted(TIME_ZONES)))
# The same kind of token register and login hand out, signed with the secret the service gets.
ALICE_TOKEN = mint_token(ALICE_ID, TEST_SECRET, 24 * 3600)
BOB_TOKEN = mint_token(BOB_ID, TEST_SECRET, 24 * 3600)


def _call(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """One JSON request with the standard library: the status and the decoded body."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw) if raw else None


def _register(url: str, name: str) -> tuple[int, str]:
    """Register through the API; the new user's id and token."""
    body = {"email": f"{name}@example.com", "password": f"{name}'s long password", "name": name}
    status, grant = _call("POST", f"{url}/api/auth/register", body)
    assert status == 201, grant
    return grant["user"]["id"], grant["access_token"]


def _create_tasks(url: str, user_id: int, token: str, titles: list[str]) -> tuple[int, ...]:
    ids = []
    for title in titles:
        status, task = _call("POST", f"{url}/api/{user_id}/tasks", {"title": title}, token)
        assert status == 201, task
        ids.append(task["id"])
    return tuple(ids)


def _seed(url: str) -> None:
    """Alice and bob, registered through the API, and their tasks, with the ids fixed above."""
    alice_id, alice_token = _register(url, "alice")
    alice_titles = [f"alice-task-{n}" for n in range(len(ALICE_TASK_IDS))]
    disposable_titles = [f"alice-disposable-{n}" for n in range(len(ALICE_DISPOSABLE_TASK_IDS))]
    alice_task_ids = _create_tasks(url, alice_id, alice_token, alice_titles)
    disposable_ids = _create_tasks(url, alice_id, alice_token, disposable_titles)
    bob_id, bob_token = _register(url, "bob")
    bob_task_ids = _create_tasks(url, bob_id, bob_token, list(BOB_TITLES))
    assert (alice_id, bob_id) == (ALICE_ID, BOB_ID)
    assert (alice_task_ids, disposable_ids, bob_task_ids) == (
        ALICE_TASK_IDS,
        ALICE_DISPOSABLE_TASK_IDS,
        BOB_TASK_IDS,
    )


@pytest.fixture(scope="module")
def base_url(pg_server_url: str) -> Iterator[str]:
    """The real service, `python -m service serve`, on a fresh database holding alice's and bob's
    tasks. What it logs (the traceback of a 500, say) shows in the report of the test it was
    logged during."""
    # No rate limits: most of the fuzzer's writes would otherwise be 429s that test nothing
    # (tests/test_operations.py tests the limits).
    limits_off = {"RATE_LIMIT_WRITES": "0", "RATE_LIMIT_LOGINS": "0", "METRICS_TOKEN": ""}
    # Webhook URLs are made local (map_case), which only this allows; nothing is sent outside.
    limits_off["WEBHOOK_ALLOW_PRIVATE"] = "1"
    with (
        fresh_database(pg_server_url) as database_url,
        running_service(database_url, **limits_off) as (url, _),
    ):
        _seed(url)
        yield url


def _schema(*, user_id: int, mode: str, max_examples: int, only_tasks: bool = False) -> BaseSchema:
    """openapi.yaml as alice, with `user_id` pinned, half the task ids drawn from real ones and
    some date-times from the edges."""
    operations: list[dict[str, Any]] = [
        {
            "include-operation-id": "delete_task",
            "parameters": {"path.task_id": {"dictionary": "deletable_task_ids", "probability": 0.5}},
        }
    ]
    if only_tasks:
        # Not `schema.include(tag="tasks")`: next to [[operations]] entries, that selects everything.
        operations.append({"exclude-tag": "tasks", "enabled": False})
    config = schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"bearerAuth": {"bearer": ALICE_TOKEN}}},
            "generation": {
                "mode": mode,
                "max-examples": max_examples,
                # The same cases on every run (derandomized), and no example database.
                "deterministic": True,
                "database": "none",
            },
            "dictionaries": {
                "task_ids": {"values": [*ALICE_TASK_IDS, *BOB_TASK_IDS]},
                "deletable_task_ids": {"values": [*ALICE_DISPOSABLE_TASK_IDS, *BOB_TASK_IDS]},
                "edge_date_times": {"values": list(EDGE_DATE_TIMES)},
            },
            "parameters": {
                "path.user_id": user_id,
                "path.task_id": {"dictionary": "task_ids", "probability": 0.5},
                **{
                    name: {"dictionary": "edge_date_times", "probability": 0.2}
                    for name in ("body.due_date", "body.remind_at", "query.due_before", "query.due_after")
                },
            },
            "operations": operations,
        }
    )
    return schemathesis.openapi.from_path(SPEC_PATH, config=config)


CLOSED_URL = "http://127.0.0.1:9/hook"  # the discard port: nothing listens there


def no_cross_user_read(ctx: CheckContext, response: Response, case: Case) -> None:
    """A successful answer holds only alice's tasks, and nothing of bob's anywhere."""
    if not 200 <= response.status_code < 300 or not response.content:
        return
    leaked = [title for title in BOB_TITLES if title.encode() in response.content]  # bytes: /docs has a PNG
    assert not leaked, f"bob's task titles in the answer: {leaked}"
    if "tasks" not in (case.operation.tags or []):
        return
    body = response.json()
    if isinstance(body, list):
        tasks = body
    elif "results" in body:  # a batch
        tasks = [result["task"] for result in body["results"] if "task" in result]
    elif "changes" in body:  # the change feed
        tasks = [change["task"] for change in body["changes"] if "task" in change]
    else:
        tasks = [body]
    foreign = [task for task in tasks if task["user_id"] != ALICE_ID or task["id"] in BOB_TASK_IDS]
    assert not foreign, f"another user's tasks in the answer: {foreign}"


alice_schema = _schema(user_id=ALICE_ID, mode="all", max_examples=MAX_EXAMPLES)
cross_user_schema = _schema(
    user_id=BOB_ID, mode="positive", max_examples=CROSS_USER_MAX_EXAMPLES, only_tasks=True
)


@alice_schema.hook
def map_case(context: HookContext, case: Case) -> Case:
    """Valid cases carry no cursor and no precondition: only a cursor the service made, and only
    an ETag the task has now, is valid, which no schema can say (tests/test_listing.py,
    test_changes.py and test_retries.py cover altered cursors and failed preconditions). Each
    Idempotency-Key is new: the same key with another request is rightly 422."""
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.POSITIVE:
        return case
    if case.query:
        case.query.pop("cursor", None)
        case.query.pop("since", None)
    if case.headers:
        case.headers.pop("If-Match", None)
        if "Idempotency-Key" in case.headers:
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
    if isinstance(case.body, dict) and "url" in case.body and "/webhooks" in case.path:
        # Whether a URL may take webhooks depends on what its name resolves to, which no schema
        # can say; and a fuzzed public address would be sent real requests. A closed local port
        # takes them instead (WEBHOOK_ALLOW_PRIVATE=1), and refuses each.
        case.body["url"] = CLOSED_URL
    if isinstance(case.body, dict) and isinstance(case.body.get("operations"), list):
        for operation in case.body["operations"]:
            if isinstance(operation, dict):
                operation.pop("if_match", None)
                operation.pop("ifMatch", None)
    return case


@alice_schema.parametrize()
def test_alice_gets_only_answers_the_spec_allows(case: Case, base_url: str) -> None:
    """Valid and invalid requests as alice: no 5xx, every answer documented and valid (status,
    content type, headers, body), invalid input refused, and only her own tasks in any answer."""
    case.call_and_validate(base_url=base_url, additional_checks=[no_cross_user_read])


@cross_user_schema.parametrize()
def test_alice_cannot_use_bobs_urls(case: Case, base_url: str) -> None:
    """Every request on bob's URLs with alice's token is refused and shows nothing of his."""
    response = case.call_and_validate(base_url=base_url, additional_checks=[no_cross_user_read])
    assert 400 <= response.status_code < 500, case.as_curl_command(base_url=base_url)


def test_bobs_tasks_survived_the_fuzzing(base_url: str) -> None:
    """Run after the fuzzing above: none of alice's requests changed or deleted bob's tasks."""
    status, tasks = _call("GET", f"{base_url}/api/{BOB_ID}/tasks?sort=title", token=BOB_TOKEN)
    assert status == 200, tasks
    assert [(task["id"], task["title"], task["completed"]) for task in tasks] == [
        (task_id, title, False) for task_id, title in zip(BOB_TASK_IDS, BOB_TITLES, strict=True)
    ]
    assert all(task["updated_at"] == task["created_at"] for task in tasks)
