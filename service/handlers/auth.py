"""Account routes: register, log in, and who am I."""

import asyncpg
from aiohttp import web

from service.auth import check_password, hash_password, mint_token, needs_rehash, unauthorized
from service.db import connection, queries
from service.errors import Problem
from service.keys import DUMMY_PASSWORD_HASH, SETTINGS, USER_ID
from service.limits import check_login
from service.schemas import LOGIN, REGISTER, json_response, load_body, user_document


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
    async with connection(request) as conn:
        user = await queries.create_user(
            conn, email=fields["email"], name=fields["name"], password_hash=password_hash
        )
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
