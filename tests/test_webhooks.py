"""Webhooks: subscriptions, the outbox (an event per committed change, the task as it
committed), signed delivery with retries, disabling, the SSRF rules, and exactly-once delivery
from two real instances, a killed one included. Every delivery lands on a real receiving server
that checks its signature with the standardwebhooks package."""

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.app import create_app
from service.auth import mint_token
from service.db import migrate
from service.devdb import EmbeddedPostgres
from service.settings import Settings
from service.ssrf import is_public
from tests.conftest import (
    PASSWORD_HASH,
    TEST_SECRET,
    ApiClient,
    Receiver,
    User,
    fresh_database,
    running_service,
    until,
    user_in,
)

ALL_EVENTS = ["task.created", "task.updated", "task.completed", "task.deleted", "task.reminder"]
PUBLIC_URL = "https://1.1.1.1/hooks/tasks"  # an IP literal: no name to resolve


# Subscriptions, on the test's rolled-back transaction.


async def test_subscribe_read_change_and_delete(api: ApiClient, alice: User) -> None:
    hooks = f"/api/{alice.id}/webhooks"
    made = await api.post(
        hooks, token=alice.token, json={"url": PUBLIC_URL, "events": ["task.completed", "task.created"]}
    )
    assert made.status == 201
    webhook = made.json
    assert webhook["secret"].startswith("whsec_") and len(webhook["secret"]) > 40
    assert webhook["events"] == ["task.created", "task.completed"]  # in the spec's order
    assert webhook["enabled"] is True and webhook["description"] is None
    assert made.headers["Location"] == f"{hooks}/{webhook['id']}"
    assert made.headers["Cache-Control"] == "no-store"
    listed = await api.get(hooks, token=alice.token)
    assert [hook["id"] for hook in listed.json] == [webhook["id"]]
    assert "secret" not in listed.json[0]
    one = await api.get(f"{hooks}/{webhook['id']}", token=alice.token)
    assert one.json == {key: value for key, value in webhook.items() if key != "secret"}
    changed = await api.patch(
        f"{hooks}/{webhook['id']}",
        token=alice.token,
        json={"events": ["task.reminder"], "description": "phone", "enabled": False},
    )
    assert changed.status == 200
    assert (changed.json["events"], changed.json["description"], changed.json["enabled"]) == (
        ["task.reminder"],
        "phone",
        False,
    )
    assert (await api.post(f"{hooks}/{webhook['id']}/test", token=alice.token)).status == 409  # disabled
    again = await api.patch(f"{hooks}/{webhook['id']}", token=alice.token, json={"enabled": True})
    assert again.json["enabled"] is True
    assert (await api.delete(f"{hooks}/{webhook['id']}", token=alice.token)).status == 204
    assert (await api.get(f"{hooks}/{webhook['id']}", token=alice.token)).status == 404
    assert (await api.delete(f"{hooks}/{webhook['id']}", token=alice.token)).status == 404


async def test_at_most_ten_per_account(api: ApiClient, alice: User) -> None:
    hooks = f"/api/{alice.id}/webhooks"
    for number in range(10):
        answer = await api.post(
            hooks, token=alice.token, json={"url": f"{PUBLIC_URL}/{number}", "events": ["task.created"]}
        )
        assert answer.status == 201
    refused = await api.post(hooks, token=alice.token, json={"url": PUBLIC_URL, "events": ["task.created"]})
    assert refused.status == 409
    assert "10" in refused.json["detail"]


async def test_ten_at_once_is_atomic(database_url: str) -> None:
    """Twelve concurrent subscriptions of one user, through a real service: ten made."""
    with running_service(database_url, RATE_LIMIT_WRITES="0") as (base_url, _):
        conn = await asyncpg.connect(database_url)
        try:
            user_id = await conn.fetchval(
                "INSERT INTO users (email, name, password_hash) VALUES ($1, 'R', $2) RETURNING id",
                f"{uuid.uuid4().hex}@example.com",
                PASSWORD_HASH,
            )
        finally:
            await conn.close()
        headers = {"Authorization": f"Bearer {mint_token(user_id, TEST_SECRET, 600)}"}

        async def subscribe(number: int) -> int:
            body = {"url": f"{PUBLIC_URL}/{number}", "events": ["task.created"]}
            async with http.post(f"{base_url}/api/{user_id}/webhooks", json=body, headers=headers) as answer:
                return answer.status

        async with aiohttp.ClientSession() as http:
            statuses = await asyncio.gather(*(subscribe(number) for number in range(12)))
    assert sorted(statuses) == [201] * 10 + [409] * 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["task.created"]}, "url"),
        ({"url": PUBLIC_URL}, "events"),
        ({"url": PUBLIC_URL, "events": []}, "events"),
        ({"url": PUBLIC_URL, "events": ["task.exploded"]}, "events"),
        ({"url": PUBLIC_URL, "events": ["task.created", "task.created"]}, "events"),
        ({"url": PUBLIC_URL, "events": "task.created"}, "events"),
        ({"url": "https://1.1.1.1/" + "a" * 2000, "events": ["task.created"]}, "url"),
        ({"url": "not a url", "events": ["task.created"]}, "url"),
        ({"url": PUBLIC_URL, "events": ["task.created"], "description": "d" * 501}, "description"),
        ({"url": PUBLIC_URL, "events": ["task.created"], "secret": "whsec_mine"}, "secret"),
    ],
)
async def test_invalid_subscriptions_are_400_naming_the_field(
    api: ApiClient, alice: User, body: dict[str, Any], field: str
) -> None:
    answer = await api.post(f"/api/{alice.id}/webhooks", token=alice.token, json=body)
    assert answer.status == 400
    assert field in answer.json["errors"]


REFUSED_URLS = [
    "http://1.1.1.1/hook",  # not https
    "https://127.0.0.1/hook",
    "https://127.0.0.1:8443/hook",
    "https://10.1.2.3/hook",
    "https://192.168.0.10/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://0.0.0.0/hook",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://224.0.0.1/hook",
    "https://localhost/hook",  # a name resolving to a loopback address
    "https://user:password@1.1.1.1/hook",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_urls_that_reach_inside_are_refused(api: ApiClient, alice: User, url: str) -> None:
    answer = await api.post(
        f"/api/{alice.id}/webhooks", token=alice.token, json={"url": url, "events": ["task.created"]}
    )
    assert answer.status == 400
    assert list(answer.json["errors"]) == ["url"]
    made = await api.post(
        f"/api/{alice.id}/webhooks", token=alice.token, json={"url": PUBLIC_URL, "events": ["task.created"]}
    )
    moved = await api.patch(
        f"/api/{alice.id}/webhooks/{made.json['id']}", token=alice.token, json={"url": url}
    )
    assert moved.status == 400
    assert list(moved.json["errors"]) == ["url"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("239.1.2.3", False),
        ("240.0.0.1", False),
        ("::", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::127.0.0.1", False),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("fe80::1%eth0", False),
        ("ff02::1", False),
        ("not an address", False),
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(address) is public


async def test_another_users_webhook_is_not_found(api: ApiClient, alice: User, bob: User) -> None:
    made = await api.post(
        f"/api/{alice.id}/webhooks", token=alice.token, json={"url": PUBLIC_URL, "events": ["task.created"]}
    )
    theirs = f"/api/{bob.id}/webhooks/{made.json['id']}"
    assert (await api.get(theirs, token=bob.token)).status == 404
    assert (await api.patch(theirs, token=bob.token, json={"enabled": False})).status == 404
    assert (await api.delete(theirs, token=bob.token)).status == 404
    assert (await api.post(theirs + "/test", token=bob.token)).status == 404
    assert (await api.get(theirs + "/deliveries", token=bob.token)).status == 404
    assert (await api.get(f"/api/{alice.id}/webhooks", token=bob.token)).status == 403
    assert (await api.get(f"/api/{bob.id}/webhooks", token=bob.token)).json == []
    assert (await api.get(f"/api/{alice.id}/webhooks/{made.json['id']}", token=alice.token)).status == 200


async def test_api_tokens_may_read_webhooks_but_not_make_them(api: ApiClient, alice: User) -> None:
    made = await api.post(
        f"/api/{alice.id}/webhooks", token=alice.token, json={"url": PUBLIC_URL, "events": ["task.created"]}
    )
    token = (
        await api.post(
            "/api/auth/tokens",
            token=alice.token,
            json={"name": "bot", "scopes": ["tasks:read", "tasks:write"]},
        )
    ).json["token"]
    assert (await api.get(f"/api/{alice.id}/webhooks", token=token)).status == 200
    assert (
        await api.get(f"/api/{alice.id}/webhooks/{made.json['id']}/deliveries", token=token)
    ).status == 200
    refused = await api.post(
        f"/api/{alice.id}/webhooks", token=token, json={"url": PUBLIC_URL, "events": ["task.created"]}
    )
    assert refused.status == 403
    assert (await api.delete(f"/api/{alice.id}/webhooks/{made.json['id']}", token=token)).status == 403


async def test_the_export_lists_webhooks_without_their_secrets(api: ApiClient, alice: User) -> None:
    made = await api.post(
        f"/api/{alice.id}/webhooks", token=alice.token, json={"url": PUBLIC_URL, "events": ["task.created"]}
    )
    export = await api.get("/api/auth/me/export", token=alice.token)
    assert [hook["id"] for hook in export.json["webhooks"]] == [made.json["id"]]
    assert made.json["secret"] not in export.body.decode()


# Delivery, from an app with a real pool and its background jobs on a database of its own.


@pytest.fixture
def own_database_url(pg_server_url: str) -> Iterator[str]:
    with fresh_database(pg_server_url) as url:
        migrate(url)
        yield url


async def _service(aiohttp_client: Any, database_url: str, **overrides: Any) -> ApiClient:
    options = {"webhook_allow_private": True, "webhook_poll_seconds": 0.2, **overrides}
    settings = Settings(database_url=database_url, jwt_secret=TEST_SECRET, **options)
    return ApiClient(await aiohttp_client(create_app(settings)))


async def _subscribe(api: ApiClient, user: User, receiver: Receiver, events: list[str] | None = None) -> int:
    answer = await api.post(
        f"/api/{user.id}/webhooks",
        token=user.token,
        json={"url": receiver.url, "events": events or ALL_EVENTS},
    )
    assert answer.status == 201, answer.json
    receiver.secret = answer.json["secret"]
    webhook_id: int = answer.json["id"]
    return webhook_id


async def test_every_change_arrives_signed_as_the_task_was_when_it_committed(
    aiohttp_client: Any, own_database_url: str, receiver: Receiver
) -> None:
    api = await _service(aiohttp_client, own_database_url, metrics_public=True)
    alice = await user_in(own_database_url)
    before = (await api.post(alice.tasks, token=alice.token, json={"title": "before"})).json
    await _subscribe(api, alice, receiver)
    receiver.hold = asyncio.Event()  # nothing is answered until the task has changed again
    created = (await api.post(alice.tasks, token=alice.token, json={"title": "A", "tags": ["x"]})).json
    await until(lambda: receiver.held >= 1)
    updated = (await api.put(f"{alice.tasks}/{created['id']}", token=alice.token, json={"title": "B"})).json
    completed = (await api.patch(f"{alice.tasks}/{created['id']}/complete", token=alice.token)).json
    assert (await api.delete(f"{alice.tasks}/{created['id']}", token=alice.token)).status == 204
    restored = (await api.post(f"/api/{alice.id}/trash/{created['id']}/restore", token=alice.token)).json
    receiver.hold.set()
    await until(lambda: len(receiver.received) >= 5)
    await asyncio.sleep(0.5)  # and no more
    assert not receiver.forged
    payloads = [received.payload for received in receiver.received]
    assert [payload["type"] for payload in payloads] == [
        "task.created",
        "task.updated",
        "task.completed",
        "task.deleted",
        "task.created",  # restored: live again
    ]
    # Each the task exactly as GET answered it right after that change, not as it is now.
    assert payloads[0]["data"]["task"] == created
    assert payloads[1]["data"]["task"] == updated
    assert payloads[2]["data"]["task"] == completed
    assert payloads[3]["data"]["task"] == {"id": created["id"], "user_id": alice.id}
    assert payloads[4]["data"]["task"] == restored
    assert all(payload["data"]["task"]["id"] != before["id"] for payload in payloads)  # before it subscribed
    assert len({received.webhook_id for received in receiver.received}) == 5
    metrics = (await api.get("/metrics")).body.decode()
    for series in (
        'taskapi_webhook_deliveries_total{outcome="delivered"}',
        'taskapi_webhook_events_total{type="task.completed"}',
        "taskapi_webhook_queue_depth",
        "taskapi_webhook_oldest_pending_seconds",
        "taskapi_reminder_lag_seconds_bucket",
    ):
        assert series in metrics


async def test_a_rolled_back_change_has_no_event(
    aiohttp_client: Any, own_database_url: str, receiver: Receiver
) -> None:
    api = await _service(aiohttp_client, own_database_url)
    alice = await user_in(own_database_url)
    await _subscribe(api, alice, receiver, ["task.created"])
    batch = {
        "operations": [
            {"op": "create", "task": {"title": "rolled back"}},
            {"op": "complete", "id": 999_999_999},  # no such task: the whole batch rolls back
        ]
    }
    assert (await api.post(f"{alice.tasks}/batch", token=alice.token, json=batch)).status == 404
    marker = (await api.post(alice.tasks, token=alice.token, json={"title": "committed"})).json
    await until(lambda: len(receiver.received) >= 1)
    await asyncio.sleep(1.0)
    assert [received.payload["data"]["task"]["title"] for received in receiver.received] == ["committed"]
    assert receiver.received[0].payload["data"]["task"]["id"] == marker["id"]


async def test_a_receiver_that_is_down_gets_the_event_later_with_the_same_id(
    aiohttp_client: Any, own_database_url: str
) -> None:
    receiver = Receiver()  # not started: connections are refused
    api = await _service(aiohttp_client, own_database_url, webhook_retry_schedule=(1.0, 1.0, 2.0))
    alice = await user_in(own_database_url)
    webhook_id = await _subscribe(api, alice, receiver, ["task.created"])
    started = time.monotonic()
    await api.post(alice.tasks, token=alice.token, json={"title": "hello"})
    deliveries = f"/api/{alice.id}/webhooks/{webhook_id}/deliveries"

    async def attempts() -> list[dict[str, Any]]:
        answer = await api.get(deliveries, token=alice.token)
        assert answer.status == 200
        return list(answer.json)

    while not await attempts():
        assert time.monotonic() - started < 10
        await asyncio.sleep(0.05)
    receiver.answers = [503]  # up again, failing once more, then answering 204
    await receiver.start()
    try:
        await until(lambda: len(receiver.received) >= 2, 15)
        await asyncio.sleep(0.5)
    finally:
        await receiver.stop()
    assert not receiver.forged
    assert len(receiver.received) == 2
    assert receiver.received[0].webhook_id == receiver.received[1].webhook_id
    log = await attempts()
    assert [attempt["attempt"] for attempt in log] == [3, 2, 1]
    assert [attempt["status_code"] for attempt in log] == [204, 503, None]
    assert log[2]["error"] == "Could not connect."
    assert log[0]["next_retry_at"] is None and log[1]["next_retry_at"] and log[2]["next_retry_at"]
    assert {attempt["event_id"] for attempt in log} == {receiver.received[0].webhook_id}
    assert {attempt["state"] for attempt in log} == {"delivered"}
    # On the schedule: 1 second, then 1 (each within its jitter, and a poll).
    at = sorted(_instant(attempt["attempted_at"]) for attempt in log)
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    assert all(0.85 < gap < 2.5 for gap in gaps), gaps


def _instant(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def test_an_endpoint_that_keeps_failing_is_disabled_and_says_why(
    aiohttp_client: Any, own_database_url: str, receiver: Receiver
) -> None:
    api = await _service(
        aiohttp_client, own_database_url, webhook_retry_schedule=(1.0, 1.0, 2.0), webhook_disable_after=3
    )
    alice = await user_in(own_database_url)
    webhook_id = await _subscribe(api, alice, receiver, ["task.created", "task.updated"])
    receiver.answers = [500] * 100
    task = (await api.post(alice.tasks, token=alice.token, json={"title": "doomed"})).json
    hook = f"/api/{alice.id}/webhooks/{webhook_id}"

    async def disabled() -> dict[str, Any]:
        answer = await api.get(hook, token=alice.token)
        return dict(answer.json)

    deadline = time.monotonic() + 20
    while (await disabled())["enabled"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    webhook = await disabled()
    assert "HTTP 500" in webhook["disabled_reason"]
    log = (await api.get(hook + "/deliveries", token=alice.token)).json
    assert {attempt["state"] for attempt in log} == {"failed"}
    assert [attempt["status_code"] for attempt in log] == [500] * len(log)
    assert 3 <= len(log) <= 4
    sent = len(receiver.received)
    # Disabled, it hears nothing more; enabled again, it hears what follows.
    await api.put(f"{alice.tasks}/{task['id']}", token=alice.token, json={"title": "unheard"})
    await asyncio.sleep(1.5)
    assert len(receiver.received) == sent
    receiver.answers = []
    assert (await api.patch(hook, token=alice.token, json={"enabled": True})).json["disabled_reason"] is None
    await api.put(f"{alice.tasks}/{task['id']}", token=alice.token, json={"title": "heard"})
    await until(lambda: len(receiver.received) > sent, 10)
    assert receiver.received[-1].payload["data"]["task"]["title"] == "heard"
    assert len(receiver.received) == sent + 1


async def test_the_test_event_and_a_redirect_that_is_not_followed(
    aiohttp_client: Any, own_database_url: str, receiver: Receiver
) -> None:
    api = await _service(aiohttp_client, own_database_url, webhook_retry_schedule=(60.0,))
    alice = await user_in(own_database_url)
    webhook_id = await _subscribe(api, alice, receiver, ["task.created"])
    receiver.answers = [302]
    queued = await api.post(f"/api/{alice.id}/webhooks/{webhook_id}/test", token=alice.token)
    assert queued.status == 202
    await until(lambda: len(receiver.received) >= 1)
    received = receiver.received[0]
    assert received.webhook_id == queued.json["event_id"]
    assert received.payload["type"] == "webhook.test"
    assert received.payload["data"]["webhook"] == {"id": webhook_id, "user_id": alice.id}

    async def logged() -> list[dict[str, Any]]:
        return list(
            (await api.get(f"/api/{alice.id}/webhooks/{webhook_id}/deliveries", token=alice.token)).json
        )

    deadline = time.monotonic() + 5
    while not await logged():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    (attempt,) = await logged()
    assert attempt["status_code"] == 302 and attempt["next_retry_at"] is not None  # a failure, to retry
    assert receiver.redirected == 0


async def test_deliveries_to_addresses_inside_are_refused_at_connection(
    aiohttp_client: Any, own_database_url: str, receiver: Receiver
) -> None:
    """Subscriptions made while private addresses were allowed (or whose name has since moved
    to one): a service that does not allow them connects to none of them."""
    permissive = await _service(aiohttp_client, own_database_url)
    alice = await user_in(own_database_url)
    port = receiver.port
    urls = [
        f"https://127.0.0.1:{port}/hook",
        f"https://localhost:{port}/hook",  # a name: refused by the resolver, at the address
        f"https://[::1]:{port}/hook",
        f"https://[::ffff:127.0.0.1]:{port}/hook",
        f"http://127.0.0.1:{port}/hook",  # not https
    ]
    ids = []
    for url in urls:
        answer = await permissive.post(
            f"/api/{alice.id}/webhooks", token=alice.token, json={"url": url, "events": ["task.created"]}
        )
        assert answer.status == 201
        ids.append(answer.json["id"])
    await permissive.client.close()
    strict = await _service(aiohttp_client, own_database_url, webhook_allow_private=False)
    for webhook_id in ids:
        assert (
            await strict.post(f"/api/{alice.id}/webhooks/{webhook_id}/test", token=alice.token)
        ).status == 202

    async def errors() -> list[str]:
        found = []
        for webhook_id in ids:
            log = (
                await strict.get(f"/api/{alice.id}/webhooks/{webhook_id}/deliveries", token=alice.token)
            ).json
            found.extend(attempt["error"] for attempt in log)
        return found

    deadline = time.monotonic() + 10
    while len(await errors()) < len(ids):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert all(error.startswith("Refused") for error in await errors())
    assert receiver.received == [] and receiver.forged == []


# Two real instances against one database.


@pytest.fixture
def shared_database_url(pg_server_url: str) -> Iterator[str]:
    with fresh_database(pg_server_url) as url:
        migrate(url)
        yield url


WEBHOOK_ENV = {"WEBHOOK_ALLOW_PRIVATE": "1", "RATE_LIMIT_WRITES": "0", "WEBHOOK_POLL_SECONDS": "0.5"}


async def test_two_instances_deliver_each_of_1000_changes_exactly_once(
    shared_database_url: str, receiver: Receiver
) -> None:
    with (
        running_service(shared_database_url, workers=2, **WEBHOOK_ENV) as (first, _),
        running_service(shared_database_url, workers=2, **WEBHOOK_ENV) as (second, _),
    ):
        user = await user_in(shared_database_url)
        headers = {"Authorization": f"Bearer {user.token}"}
        async with aiohttp.ClientSession() as http:
            body = {"url": receiver.url, "events": ["task.created", "task.updated", "task.completed"]}
            async with http.post(f"{first}/api/{user.id}/webhooks", json=body, headers=headers) as answer:
                assert answer.status == 201
                receiver.secret = (await answer.json())["secret"]

            async def change(number: int) -> None:
                base = (first, second)[number % 2]
                async with http.post(
                    f"{base}/api/{user.id}/tasks", json={"title": f"t{number}"}, headers=headers
                ) as made:
                    assert made.status == 201
                    task = await made.json()
                path = f"{base}/api/{user.id}/tasks/{task['id']}"
                async with http.put(path, json={"title": f"u{number}"}, headers=headers) as updated:
                    assert updated.status == 200

            gate = asyncio.Semaphore(16)

            async def limited(number: int) -> None:
                async with gate:
                    await change(number)

            await asyncio.gather(*(limited(number) for number in range(500)))
        await until(lambda: len(receiver.received) >= 1000, 120)
        await asyncio.sleep(3)  # long enough for any duplicate to arrive
    assert not receiver.forged
    ids = [received.webhook_id for received in receiver.received]
    assert len(ids) == len(set(ids)) == 1000
    conn = await asyncpg.connect(shared_database_url)
    try:
        seqs = await conn.fetch(
            "SELECT change_seq, state FROM webhook_deliveries WHERE user_id = $1", user.id
        )
    finally:
        await conn.close()
    assert sorted(row["change_seq"] for row in seqs) == list(range(1, 1001))
    assert {row["state"] for row in seqs} == {"delivered"}
    titles = sorted(received.payload["data"]["task"]["title"] for received in receiver.received)
    assert titles == sorted([f"t{n}" for n in range(500)] + [f"u{n}" for n in range(500)])


async def test_an_event_whose_worker_was_killed_mid_delivery_is_delivered_again(
    shared_database_url: str, receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()
    user = await user_in(shared_database_url)
    headers = {"Authorization": f"Bearer {user.token}"}
    with running_service(shared_database_url, **WEBHOOK_ENV) as (doomed_url, doomed):
        async with aiohttp.ClientSession() as http:
            body = {"url": receiver.url, "events": ["task.created"]}
            async with http.post(
                f"{doomed_url}/api/{user.id}/webhooks", json=body, headers=headers
            ) as answer:
                receiver.secret = (await answer.json())["secret"]
            async with http.post(
                f"{doomed_url}/api/{user.id}/tasks", json={"title": "once"}, headers=headers
            ) as made:
                assert made.status == 201
        await until(lambda: receiver.held == 1, 15)
        os.kill(doomed.pid, signal.SIGKILL)  # mid-delivery: the receiver has not answered
        doomed.wait()
    held, receiver.hold = receiver.hold, None
    held.set()  # answers the dead connection
    killed_at = time.monotonic()
    with running_service(shared_database_url, **WEBHOOK_ENV):
        await until(lambda: len(receiver.received) >= 2, 60)
    assert not receiver.forged
    first, second = receiver.received[:2]
    assert first.webhook_id == second.webhook_id
    assert first.payload == second.payload
    assert second.at - killed_at > 10  # after the lease ran out, not before


async def test_sigterm_leaves_an_unanswered_delivery_to_be_sent_again(
    shared_database_url: str, receiver: Receiver
) -> None:
    """An attempt still unanswered when the service stops gets a short grace, then is left to
    its lease: the service exits cleanly, and the event arrives again from the next one."""
    receiver.hold = asyncio.Event()
    user = await user_in(shared_database_url)
    headers = {"Authorization": f"Bearer {user.token}"}
    with running_service(shared_database_url, **WEBHOOK_ENV) as (base_url, process):
        async with aiohttp.ClientSession() as http:
            body = {"url": receiver.url, "events": ["task.created"]}
            async with http.post(f"{base_url}/api/{user.id}/webhooks", json=body, headers=headers) as answer:
                receiver.secret = (await answer.json())["secret"]
            async with http.post(
                f"{base_url}/api/{user.id}/tasks", json={"title": "x"}, headers=headers
            ) as made:
                assert made.status == 201
        await until(lambda: receiver.held == 1, 15)
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
        assert time.monotonic() - stopping < 10  # the grace (5 s), not the attempt's timeout
    held, receiver.hold = receiver.hold, None
    held.set()
    with running_service(shared_database_url, **WEBHOOK_ENV):
        await until(lambda: len(receiver.received) >= 2, 60)
    assert receiver.received[0].webhook_id == receiver.received[1].webhook_id
    assert not receiver.forged


async def test_the_jobs_go_on_by_themselves_after_a_database_outage(
    aiohttp_client: Any, private_server: EmbeddedPostgres, receiver: Receiver
) -> None:
    api = await _service(aiohttp_client, private_server.url, db_acquire_timeout=1.0)
    alice = await user_in(private_server.url)
    await _subscribe(api, alice, receiver)
    before = (await api.post(alice.tasks, token=alice.token, json={"title": "before"})).json
    await until(lambda: len(receiver.received) == 1)
    due = (await api.post(alice.tasks, token=alice.token, json={"title": "due", "remind_at": _in(2)})).json
    await until(lambda: len(receiver.received) == 2)
    await asyncio.to_thread(private_server.stop, "immediate")  # as in a crash
    await asyncio.sleep(3)  # the reminder comes due meanwhile, and every job fails a few rounds
    await asyncio.to_thread(private_server.start, private_server.port)
    deadline = time.monotonic() + 20
    while (answer := await api.post(alice.tasks, token=alice.token, json={"title": "after"})).status != 201:
        assert answer.status == 503 and time.monotonic() < deadline
        await asyncio.sleep(0.5)
    await until(lambda: len(receiver.received) == 4, 20)
    kinds = sorted((r.payload["type"], r.payload["data"]["task"]["title"]) for r in receiver.received)
    assert kinds == [
        ("task.created", "after"),
        ("task.created", "before"),
        ("task.created", "due"),
        ("task.reminder", "due"),
    ]
    reminder = receiver.of_type("task.reminder")[0].payload["data"]["task"]
    assert reminder["id"] == due["id"] and reminder["remind_at"] == due["remind_at"]
    assert before["id"] != due["id"]
    assert not receiver.forged


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
