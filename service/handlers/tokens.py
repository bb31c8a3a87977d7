"""API token routes: make one (its secret is shown in that answer only), list them, delete one.

Only a person's own sign-in reaches these: the middleware refuses API tokens here (403,
insufficient_scope), so a token cannot make or delete tokens.
"""

import asyncpg
from aiohttp import web

from service.api_tokens import api_token_hash, new_api_token
from service.auth import BIGINT_MAX, RECHECK_SECONDS, unauthorized
from service.db import connection, queries
from service.errors import Problem
from service.keys import REVOCATIONS, USER_ID
from service.schemas import API_TOKEN_CREATE, api_token_document, json_response, load_body

MAX_API_TOKENS = 100  # per account: scripts that make tokens in a loop stop here


async def create_token(request: web.Request) -> web.Response:
    """Make an API token with the given scopes; 201 with its secret, which is never shown again."""
    fields = await load_body(request, API_TOKEN_CREATE)
    user_id = request[USER_ID]
    token = new_api_token(user_id)
    try:
        async with connection(request) as conn:
            row = await queries.create_api_token(
                conn,
                user_id=user_id,
                name=fields["name"],
                scopes=fields["scopes"],
                secret_hash=api_token_hash(token),
                expires_in_days=fields["expires_in_days"],
                max_tokens=MAX_API_TOKENS,
            )
    except asyncpg.ForeignKeyViolationError:
        raise unauthorized("The token's user no longer exists.") from None
    if row is None:
        raise Problem(409, f"An account may have at most {MAX_API_TOKENS} API tokens; delete one first.")
    document = {**api_token_document(row), "token": token}
    return json_response(document, status=201, headers={"Cache-Control": "no-store"})


async def list_tokens(request: web.Request) -> web.Response:
    """The caller's API tokens, oldest first, without their secrets."""
    async with connection(request) as conn:
        rows = await queries.list_api_tokens(conn, user_id=request[USER_ID])
    return json_response([api_token_document(row) for row in rows])


async def delete_token(request: web.Request) -> web.Response:
    """Delete one of the caller's API tokens: every worker refuses it within a second."""
    raw = request.match_info["token_id"]
    if len(raw) > len(str(BIGINT_MAX)) or int(raw) > BIGINT_MAX:
        raise Problem(404, "No such API token.")
    async with connection(request) as conn:
        rows = await queries.delete_api_token(
            conn, user_id=request[USER_ID], token_id=int(raw), revoked_seconds=RECHECK_SECONDS + 60
        )
    if not rows:
        raise Problem(404, "No such API token.")
    request.app[REVOCATIONS].add((row["credential"], row["until"]) for row in rows)
    return web.Response(status=204)
