"""Account routes: register, log in, who am I, and change the password."""

from aiohttp import web

from service.auth import check_password, hash_password, needs_rehash, unauthorized
from service.db import connection, queries
from service.errors import Problem
from service.handlers.sessions import open_session, revoke_other_sessions
from service.keys import DUMMY_PASSWORD_HASH, USER_ID
from service.limits import check_password_failures, check_sign_in, client_address, count_password_failure
from service.schemas import LOGIN, PASSWORD_CHANGE, REGISTER, json_response, load_body, user_document


async def register(request: web.Request) -> web.Response:
    """Create an account and open its first session."""
    fields = await load_body(request, REGISTER)
    await check_sign_in(request)
    password_hash = await hash_password(request.app, fields["password"])
    async with connection(request) as conn, conn.transaction():
        user = await queries.create_user(
            conn, email=fields["email"], name=fields["name"], password_hash=password_hash
        )
        if user is None:
            raise Problem(409, "An account with this email already exists.")
        return await open_session(request, conn, user, status=201)


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
