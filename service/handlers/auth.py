"""Account routes: register, log in, who am I, and change my name or time zone."""

import asyncpg
from aiohttp import web
from marshmallow import ValidationError

from service.auth import check_password, hash_password, mint_token, needs_rehash, unauthorized
from service.db import connection, queries
from service.errors import Problem
from service.keys import DUMMY_PASSWORD_HASH, SETTINGS, USER_ID
from service.limits import check_login
from service.schemas import ACCOUNT_UPDATE, LOGIN, REGISTER, json_response, load_body, user_document


def _grant(request: web.Request, user: asyncpg.Record, status: int) -> web.Response:
    settings = request.app[SETTINGS]
    grant = {
        "user": user_document(user),
        "access_token": mint_token(user["id"], settings.jwt_secret, settings.jwt_ttl_seconds),
        "token_type": "bearer",
        "expires_in": settings.jwt_ttl_seconds,
    }
    return json_response(grant, status=status, headers={"Cache-Control": "no-store"})


async def register(request: web.Request) -> web.Response:
    """Create an account and return it with an access token."""
    fields = await load_body(request, REGISTER)
    password_hash = await hash_password(fields["password"])
    try:
        async with connection(request) as conn:
            user = await queries.create_user(
                conn,
                email=fields["email"],
                name=fields["name"],
                password_hash=password_hash,
                time_zone=fields["time_zone"],
            )
    except asyncpg.InvalidParameterValueError:
        raise _zone_unknown_to_the_database() from None
    if user is None:
        raise Problem(409, "An account with this email already exists.")
    return _grant(request, user, status=201)


async def login(request: web.Request) -> web.Response:
    """Exchange email and password for an access token."""
    fields = await load_body(request, LOGIN)
    check_login(request, fields["email"])
    async with connection(request) as conn:
        user = await queries.get_login(conn, email=fields["email"])
    # An unknown email costs one hash check too, so timing does not tell which emails exist.
    stored_hash = user["password_hash"] if user is not None else request.app[DUMMY_PASSWORD_HASH]
    if not await check_password(stored_hash, fields["password"]) or user is None:
        raise unauthorized("The email or password is wrong.", invalid=False)
    if needs_rehash(stored_hash):
        new_hash = await hash_password(fields["password"])
        async with connection(request) as conn:
            await queries.set_password_hash(conn, user_id=user["id"], password_hash=new_hash)
    return _grant(request, user, status=200)


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
