"""Account routes: register, log in, who am I, change my name or time zone, change the password,
delete the account, and export everything it holds."""

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from marshmallow import ValidationError

from service.auth import check_password, hash_password, needs_rehash, unauthorized, user_revocation_seconds
from service.db import connection, queries
from service.errors import Problem
from service.handlers.sessions import open_session, revoke_other_sessions
from service.keys import ACCESS, DUMMY_PASSWORD_HASH, REVOCATIONS, SETTINGS, USER_ID
from service.limits import check_password_failures, check_sign_in, client_address, count_password_failure
from service.schemas import (
    ACCOUNT_DELETION,
    ACCOUNT_UPDATE,
    LOGIN,
    PASSWORD_CHANGE,
    REGISTER,
    api_token_document,
    json_response,
    load_body,
    task_document,
    user_document,
    webhook_document,
)

log = logging.getLogger(__name__)

# A provider's user proves who they are to delete their account with a token this fresh.
RECENT_SIGN_IN_SECONDS = 300
# A deleted provider identity stays revoked this long for tokens issued before the deletion: far
# past the lifetime of any provider's access tokens.
IDENTITY_REVOCATION_SECONDS = 30 * 86400
EXPORT_PAGE_SIZE = 1000


async def register(request: web.Request) -> web.Response:
    """Create an account and open its first session."""
    fields = await load_body(request, REGISTER)
    await check_sign_in(request)
    password_hash = await hash_password(request.app, fields["password"])
    try:
        async with connection(request) as conn, conn.transaction():
            user = await queries.create_user(
                conn,
                email=fields["email"],
                name=fields["name"],
                password_hash=password_hash,
                time_zone=fields["time_zone"],
            )
            if user is None:
                raise Problem(409, "An account with this email already exists.")
            return await open_session(request, conn, user, status=201)
    except asyncpg.InvalidParameterValueError:
        raise _zone_unknown_to_the_database() from None


async def login(request: web.Request) -> web.Response:
    """Exchange email and password for a new session's tokens."""
    fields = await load_body(request, LOGIN)
    address = await check_sign_in(request)
    async with connection(request) as conn:
        user = await queries.get_login(conn, email=fields["email"])
    email_key = user["email_key"]
    await check_password_failures(request, email_key, address)
    # An unknown email costs one hash check too, so timing does not tell which emails exist.
    known = user["id"] is not None
    stored_hash = user["password_hash"] if known else request.app[DUMMY_PASSWORD_HASH]
    if not await check_password(request.app, stored_hash, fields["password"]) or not known:
        count_password_failure(request, email_key, address)
        raise unauthorized("The email or password is wrong.", invalid=False)
    new_hash = await hash_password(request.app, fields["password"]) if needs_rehash(stored_hash) else None
    async with connection(request) as conn, conn.transaction():
        if new_hash is not None:
            await queries.set_password_hash(conn, user_id=user["id"], password_hash=new_hash)
        return await open_session(request, conn, user, status=200)


async def me(request: web.Request) -> web.Response:
    """The caller's own account."""
    async with connection(request) as conn:
        user = await queries.get_user(conn, user_id=request[USER_ID])
    if user is None:
        raise unauthorized("The token's user no longer exists.")
    return json_response(user_document(user))


async def update_me(request: web.Request) -> web.Response:
    """Change the caller's name or time zone; timed tasks stay put, all-day tasks keep their dates."""
    fields = await load_body(request, ACCOUNT_UPDATE)
    user_id = request[USER_ID]
    try:
        async with connection(request) as conn, conn.transaction():
            user = await queries.update_user(
                conn, user_id=user_id, name=fields.get("name"), time_zone=fields.get("time_zone")
            )
            if user is None:
                raise unauthorized("The token's user no longer exists.")
            if "time_zone" in fields:
                await queries.set_all_day_due_dates(conn, user_id=user_id)
    except asyncpg.InvalidParameterValueError:
        raise _zone_unknown_to_the_database() from None
    return json_response(user_document(user))


def _zone_unknown_to_the_database() -> ValidationError:
    # The name is in the IANA list the service ships (tzdata), but PostgreSQL's own time zone
    # data, which does the arithmetic, is older and lacks it (users_time_zone_known).
    return ValidationError({"time_zone": ["Not a time zone the database knows yet; give another IANA name."]})


async def change_password(request: web.Request) -> web.Response:
    """Set a new password after checking the current one; every other session ends."""
    fields = await load_body(request, PASSWORD_CHANGE)
    user_id = request[USER_ID]
    address = client_address(request)
    async with connection(request) as conn:
        account = await queries.get_password(conn, user_id=user_id)
    if account is None:
        raise unauthorized("The token's user no longer exists.")
    if account["password_hash"] is None:
        raise Problem(403, "This account signs in with its identity provider and has no password here.")
    await check_password_failures(request, account["email_key"], address)
    if not await check_password(request.app, account["password_hash"], fields["current_password"]):
        count_password_failure(request, account["email_key"], address)
        raise Problem(403, "The current password is wrong.")
    new_hash = await hash_password(request.app, fields["new_password"])
    async with connection(request) as conn, conn.transaction():
        await queries.set_password_hash(conn, user_id=user_id, password_hash=new_hash)
        await revoke_other_sessions(request, conn, user_id)
    return web.Response(status=204)


async def delete_account(request: web.Request) -> web.Response:
    """Delete the caller's account and everything it holds; every token it had stops working."""
    fields = await load_body(request, ACCOUNT_DELETION) if request.body_exists else {}
    user_id = request[USER_ID]
    access = request[ACCESS]
    if access.subject is not None:  # a provider's token: the provider has just checked who it is
        if access.issued_at is None or time.time() - access.issued_at > RECENT_SIGN_IN_SECONDS:
            raise Problem(
                403, "Deleting the account needs a token issued in the last 5 minutes; sign in again."
            )
    else:
        await _confirm_password(request, user_id, fields.get("password"))
    async with connection(request) as conn:
        rows = await queries.delete_user(
            conn,
            user_id=user_id,
            user_seconds=user_revocation_seconds(request.app[SETTINGS]),
            identity_seconds=IDENTITY_REVOCATION_SECONDS,
        )
    if not rows:
        raise unauthorized("The token's user no longer exists.")
    request.app[REVOCATIONS].add((row["credential"], row["until"]) for row in rows)
    log.info("account deleted", extra={"user_id": user_id})
    return web.Response(status=204)


async def _confirm_password(request: web.Request, user_id: int, password: str | None) -> None:
    """403 unless `password` is the account's; wrong ones count as failed logins do."""
    async with connection(request) as conn:
        account = await queries.get_password(conn, user_id=user_id)
    if account is None:
        raise unauthorized("The token's user no longer exists.")
    if account["password_hash"] is None:
        raise Problem(
            403,
            "This account signs in with its identity provider: delete it with a token from there,"
            " issued in the last 5 minutes.",
        )
    if password is None:
        raise Problem(403, 'Confirm with the account\'s password: {"password": "…"}.')
    address = client_address(request)
    await check_password_failures(request, account["email_key"], address)
    if not await check_password(request.app, account["password_hash"], password):
        count_password_failure(request, account["email_key"], address)
        raise Problem(403, "The password is wrong.")


async def export_account(request: web.Request) -> web.Response:
    """Everything the account holds, as one JSON download: streamed, so a large one costs no
    memory, and read a page of tasks at a time, so no connection waits on a slow client."""
    user_id = request[USER_ID]
    async with connection(request) as conn:
        user = await queries.get_user(conn, user_id=user_id)
        identity = await queries.get_identity(conn, user_id=user_id)
        sessions = await queries.list_sessions(conn, user_id=user_id)
        api_tokens = await queries.list_api_tokens(conn, user_id=user_id)
        webhooks = await queries.list_webhooks(conn, user_id=user_id)
    if user is None or identity is None:
        raise unauthorized("The token's user no longer exists.")
    head = {
        "exported_at": datetime.now(UTC),
        "account": user_document(user),
        "identity": (
            {"issuer": identity["auth_issuer"], "subject": identity["auth_subject"]}
            if identity["auth_issuer"] is not None
            else None
        ),
        "sessions": [dict(row.items()) for row in sessions],
        "api_tokens": [api_token_document(row) for row in api_tokens],
        "webhooks": [webhook_document(row) for row in webhooks],  # never their secrets
    }
    # A body that aiohttp writes chunk by chunk once every middleware has added its headers.
    return web.Response(
        body=_export_body(request, user_id, head),
        content_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="task-api-account-{user_id}.json"',
            "Cache-Control": "no-store",
        },
    )


def _exported(row: Any) -> dict[str, Any]:
    return {**task_document(row), "trashed": row["deleted_at"] is not None, "deleted_at": row["deleted_at"]}


async def _export_body(request: web.Request, user_id: int, head: dict[str, Any]) -> AsyncIterator[bytes]:
    try:
        # The head object with its closing brace replaced by the start of the task list.
        yield orjson.dumps(head, option=orjson.OPT_UTC_Z)[:-1] + b',"tasks":['
        after, separator = 0, b""
        while True:
            async with connection(request) as conn:
                rows = await queries.export_tasks(
                    conn, user_id=user_id, after_id=after, page_size=EXPORT_PAGE_SIZE
                )
            if rows:
                page = b",".join(orjson.dumps(_exported(row), option=orjson.OPT_UTC_Z) for row in rows)
                yield separator + page  # resumed once the client has taken the previous page
                after, separator = rows[-1]["id"], b","
            if len(rows) < EXPORT_PAGE_SIZE:
                break
        yield b"]}"
    except Exception as error:
        # The 200 has gone out: the client must see a cut connection, never a complete-looking
        # document, so no closing bracket and no end of the chunked body.
        log.warning("account export cut short", extra={"user_id": user_id, "error": type(error).__name__})
        if request.transport is not None:
            request.transport.close()
