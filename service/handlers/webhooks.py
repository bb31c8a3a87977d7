"""Webhook routes: subscribe a URL to the caller's task events (its signing secret is shown in
that answer only), list, read, change and delete subscriptions, queue a test event, and read
the latest delivery attempts. The deliveries themselves are service/webhooks.py's."""

from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from marshmallow import ValidationError

from service.auth import unauthorized
from service.db import connection, queries
from service.errors import Problem
from service.keys import SETTINGS, USER_ID, WEBHOOK_WAKE
from service.schemas import (
    WEBHOOK_CREATE,
    WEBHOOK_DELIVERIES_QUERY,
    WEBHOOK_UPDATE,
    json_response,
    load_body,
    load_query,
    path_id,
    webhook_document,
)
from service.ssrf import RefusedUrl, check_url
from service.webhooks import event_body, new_secret

MAX_WEBHOOKS = 10  # per account


def _webhook_id(request: web.Request) -> int:
    """The subscription id in the path; 404 for one beyond bigint, which none has."""
    webhook_id = path_id(request, "webhook_id")
    if webhook_id is None:
        raise _not_found(request.match_info["webhook_id"])
    return webhook_id


def _not_found(webhook_id: int | str) -> Problem:
    # The same answer whether it never existed or is someone else's.
    return Problem(404, f"Webhook {webhook_id} was not found.")


async def _check_url(request: web.Request, url: str) -> None:
    """400 naming `url` unless webhooks may be sent there (service/ssrf.py)."""
    try:
        await check_url(url, request.app[SETTINGS].webhook_allow_private)
    except RefusedUrl as refused:
        raise ValidationError({"url": [str(refused)]}) from None


async def create_webhook(request: web.Request) -> web.Response:
    """Subscribe a URL to events; 201 with its signing secret, which is never shown again. It
    hears of changes committed from now on."""
    fields = await load_body(request, WEBHOOK_CREATE)
    await _check_url(request, fields["url"])
    user_id = request[USER_ID]
    try:
        async with connection(request) as conn, conn.transaction():
            position = await queries.lock_webhook_owner(conn, user_id=user_id)
            row = await queries.create_webhook(
                conn,
                user_id=user_id,
                url=fields["url"],
                events=fields["events"],
                description=fields["description"],
                secret=new_secret(),
                fanned_through=position,
                max_webhooks=MAX_WEBHOOKS,
            )
    except asyncpg.ForeignKeyViolationError:
        raise unauthorized("The token's user no longer exists.") from None
    if row is None:
        raise Problem(409, f"An account may have at most {MAX_WEBHOOKS} webhooks; delete one first.")
    location = request.app.router["webhook"].url_for(user_id=str(user_id), webhook_id=str(row["id"]))
    return json_response(
        {**webhook_document(row), "secret": row["secret"]},
        status=201,
        headers={"Location": str(location), "Cache-Control": "no-store"},
    )


async def list_webhooks(request: web.Request) -> web.Response:
    """The caller's subscriptions, oldest first, without their secrets."""
    async with connection(request) as conn:
        rows = await queries.list_webhooks(conn, user_id=request[USER_ID])
    return json_response([webhook_document(row) for row in rows])


async def get_webhook(request: web.Request) -> web.Response:
    """One subscription, without its secret."""
    webhook_id = _webhook_id(request)
    async with connection(request) as conn:
        row = await queries.get_webhook(conn, user_id=request[USER_ID], webhook_id=webhook_id)
    if row is None:
        raise _not_found(webhook_id)
    return json_response(webhook_document(row))


async def update_webhook(request: web.Request) -> web.Response:
    """Change the URL, events, description or enabled; enabled again, a subscription hears of
    changes committed from then on, and disabled, its pending deliveries are dropped."""
    webhook_id = _webhook_id(request)
    fields = await load_body(request, WEBHOOK_UPDATE)
    if "url" in fields:
        await _check_url(request, fields["url"])
    user_id = request[USER_ID]
    async with connection(request) as conn, conn.transaction():
        position = await queries.lock_webhook_owner(conn, user_id=user_id) if fields.get("enabled") else 0
        row = await queries.update_webhook(
            conn,
            user_id=user_id,
            webhook_id=webhook_id,
            url=fields.get("url"),
            events=fields.get("events"),
            set_description="description" in fields,
            description=fields.get("description"),
            enabled=fields.get("enabled"),
            fanned_through=position,
        )
    if row is None:
        raise _not_found(webhook_id)
    return json_response(webhook_document(row))


async def delete_webhook(request: web.Request) -> web.Response:
    """Delete a subscription and its pending deliveries; 204."""
    webhook_id = _webhook_id(request)
    async with connection(request) as conn:
        deleted = await queries.delete_webhook(conn, user_id=request[USER_ID], webhook_id=webhook_id)
    if deleted is None:
        raise _not_found(webhook_id)
    return web.Response(status=204)


async def test_webhook(request: web.Request) -> web.Response:
    """Queue a webhook.test event for the subscription; 202 with its event id."""
    webhook_id = _webhook_id(request)
    user_id = request[USER_ID]
    now = datetime.now(UTC)
    body = event_body("webhook.test", now, {"webhook": {"id": webhook_id, "user_id": user_id}})
    row = None
    async with connection(request) as conn:
        event_id = await queries.queue_test_event(conn, user_id=user_id, webhook_id=webhook_id, body=body)
        if event_id is None:
            row = await queries.get_webhook(conn, user_id=user_id, webhook_id=webhook_id)
    if event_id is None:
        if row is None:
            raise _not_found(webhook_id)
        raise Problem(409, f"Webhook {webhook_id} is disabled; enable it first.")
    request.app[WEBHOOK_WAKE].set()
    return json_response({"event_id": event_id, "type": "webhook.test"}, status=202)


async def webhook_deliveries(request: web.Request) -> web.Response:
    """The subscription's latest delivery attempts, newest first."""
    webhook_id = _webhook_id(request)
    query = load_query(request, WEBHOOK_DELIVERIES_QUERY)
    user_id = request[USER_ID]
    async with connection(request) as conn:
        rows = await queries.list_webhook_attempts(
            conn, user_id=user_id, webhook_id=webhook_id, limit=query["limit"]
        )
        if not rows and await queries.get_webhook(conn, user_id=user_id, webhook_id=webhook_id) is None:
            raise _not_found(webhook_id)
    return json_response([dict(row.items()) for row in rows])
