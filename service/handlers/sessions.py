"""Session routes: refresh (rotating the refresh token), log out, list and end sessions.

A session is opened by each login or registration. Its refresh token is an opaque random string
(256 bits, prefixed with the user id so it can be looked up by user); only its SHA-256 hash is
stored. Each refresh rotates it (RFC 9700 section 4.14.2): the old one is dead, and presenting
it again is taken as theft and ends the whole session, unless it comes within
REFRESH_REUSE_GRACE_SECONDS of its own rotation (two tabs refreshing at once), when it is only
refused. Ending a session revokes its access tokens on every worker (service/revocations.py).
"""

import hashlib
import re
import secrets
from typing import Any, NoReturn

import asyncpg
from aiohttp import web

from service.auth import BIGINT_MAX, mint_token, unauthorized
from service.db import connection, queries
from service.errors import Problem
from service.keys import REVOCATIONS, SESSION_ID, SETTINGS, USER_ID
from service.schemas import REFRESH, json_response, load_body, user_document

MAX_USER_AGENT = 512
_REFRESH_TOKEN = re.compile(r"(?P<user_id>[1-9][0-9]{0,18})\.[A-Za-z0-9_-]{43}")


def _hash(refresh_token: str) -> bytes:
    return hashlib.sha256(refresh_token.encode()).digest()


def _new_refresh_token(user_id: int) -> str:
    return f"{user_id}.{secrets.token_urlsafe(32)}"


def _owner(refresh_token: str) -> int | None:
    """The user a well-formed refresh token names; None for anything else."""
    match = _REFRESH_TOKEN.fullmatch(refresh_token)
    if match is None or int(match["user_id"]) > BIGINT_MAX:
        return None
    return int(match["user_id"])


def _user_agent(request: web.Request) -> str | None:
    # Shown back to the user only; kept short, and storable (no NUL, no undecodable bytes).
    agent = request.headers.get("User-Agent", "")[:MAX_USER_AGENT].replace("\x00", "")
    return agent.encode("utf-8", "replace").decode("utf-8") or None


async def open_session(
    request: web.Request, conn: asyncpg.Connection, user: Any, status: int
) -> web.Response:
    """Open a session for `user` (on `conn`, in the caller's transaction) and answer with its
    tokens: the answer register and login give."""
    settings = request.app[SETTINGS]
    refresh_token = _new_refresh_token(user["id"])
    session_id = await queries.open_session(
        conn,
        user_id=user["id"],
        refresh_hash=_hash(refresh_token),
        ttl_seconds=settings.refresh_ttl_seconds,
        user_agent=_user_agent(request),
    )
    return _grant(request, user, session_id, refresh_token, status)


def _grant(request: web.Request, user: Any, session_id: str, refresh_token: str, status: int) -> web.Response:
    settings = request.app[SETTINGS]
    access_token = mint_token(
        user["id"],
        settings.jwt_secret,
        settings.jwt_ttl_seconds,
        issuer=settings.jwt_issuer,
        session_id=session_id,
    )
    grant = {
        "user": user_document(user),
        "access_token": access_token,
        # The original FastAPI service answered `token`, and its frontend and scripts read it.
        "token": access_token,
        "token_type": "bearer",
        "expires_in": settings.jwt_ttl_seconds,
        "refresh_token": refresh_token,
        "refresh_expires_in": settings.refresh_ttl_seconds,
    }
    return json_response(grant, status=status, headers={"Cache-Control": "no-store"})


def _refused(detail: str) -> Problem:
    return unauthorized(detail, invalid=True)


async def refresh(request: web.Request) -> web.Response:
    """Exchange a refresh token for a new access token and a new refresh token."""
    refresh_token = (await load_body(request, REFRESH))["refresh_token"]
    settings = request.app[SETTINGS]
    user_id = _owner(refresh_token)
    if user_id is None:
        raise _refused("The refresh token is unknown, expired or revoked.")
    new_token = _new_refresh_token(user_id)
    async with connection(request) as conn:
        async with conn.transaction():
            session_id = await queries.rotate_refresh_token(
                conn,
                user_id=user_id,
                refresh_hash=_hash(refresh_token),
                new_hash=_hash(new_token),
                ttl_seconds=settings.refresh_ttl_seconds,
            )
            if session_id is not None:
                await queries.prune_rotations(
                    conn, user_id=user_id, session_id=session_id, ttl_seconds=settings.refresh_ttl_seconds
                )
                user = await queries.get_user(conn, user_id=user_id)
        if session_id is None:
            await _refuse_reuse(request, conn, user_id, refresh_token)
    return _grant(request, user, session_id, new_token, 200)


async def _refuse_reuse(
    request: web.Request, conn: asyncpg.Connection, user_id: int, refresh_token: str
) -> NoReturn:
    """The token is not the current one of a live session: if it is one that was rotated out,
    someone replays it. Unless it is the double submit the grace period allows, end the session."""
    rotated = await queries.find_rotated(conn, user_id=user_id, token_hash=_hash(refresh_token))
    if rotated is None:
        raise _refused("The refresh token is unknown, expired or revoked.")
    grace = request.app[SETTINGS].refresh_reuse_grace_seconds
    if rotated["latest"] and rotated["age_seconds"] < grace:
        raise _refused("The refresh token has just been used; use the newest one.")
    await _revoke(request, conn, user_id, session_id=rotated["session_id"])
    raise _refused("The refresh token was already used, so the session has been ended; sign in again.")


async def _revoke(
    request: web.Request,
    conn: asyncpg.Connection,
    user_id: int,
    *,
    session_id: str | None = None,
    keep_session_id: str | None = None,
) -> int:
    """End one session (or all but `keep_session_id`), and apply it in this worker at once;
    the others hear of it when the transaction commits. Returns how many ended."""
    rows = await queries.revoke_sessions(
        conn,
        user_id=user_id,
        session_id=session_id,
        keep_session_id=keep_session_id,
        access_ttl_seconds=_access_token_lifetime(request),
    )
    request.app[REVOCATIONS].add((row["credential"], row["until"]) for row in rows)
    return len(rows)


def _access_token_lifetime(request: web.Request) -> int:
    settings = request.app[SETTINGS]
    # Long enough that every access token of the session has expired, leeway included.
    return settings.jwt_ttl_seconds + settings.jwt_leeway_seconds + 60


async def revoke_other_sessions(request: web.Request, conn: asyncpg.Connection, user_id: int) -> None:
    """End every session of the user but the caller's own (for a password change)."""
    await _revoke(request, conn, user_id, keep_session_id=request[SESSION_ID])


async def logout(request: web.Request) -> web.Response:
    """End the session of the refresh token in the body, or else of the bearer token."""
    if request.body_exists:  # the client proves the session by its refresh token
        refresh_token = (await load_body(request, REFRESH))["refresh_token"]
        user_id, session_id = _owner(refresh_token), None
        if user_id is not None:
            async with connection(request) as conn:
                session_id = await queries.find_session_by_refresh(
                    conn, user_id=user_id, refresh_hash=_hash(refresh_token)
                )
        if user_id is None or session_id is None:
            raise _refused("The refresh token is unknown, expired or revoked.")
    elif USER_ID not in request:
        raise unauthorized("A bearer token, or a refresh token in the body, is required.", invalid=False)
    else:
        user_id, session_id = request[USER_ID], request[SESSION_ID]
        if session_id is None:
            raise Problem(
                403,
                "This token belongs to no session here (it was minted by `python -m service token`, or"
                " comes from the identity provider), so there is nothing to end; it stops working when"
                " it expires.",
            )
    async with connection(request) as conn:
        await _revoke(request, conn, user_id, session_id=session_id)
    return web.Response(status=204)


async def list_sessions(request: web.Request) -> web.Response:
    """The caller's live sessions, most recently used first."""
    async with connection(request) as conn:
        rows = await queries.list_sessions(conn, user_id=request[USER_ID])
    current = request[SESSION_ID]
    sessions = [
        {
            "id": row["id"],
            "created_at": row["created_at"],
            "last_used_at": row["last_used_at"],
            "expires_at": row["expires_at"],
            "user_agent": row["user_agent"],
            "current": row["id"] == current,
        }
        for row in rows
    ]
    return json_response(sessions, headers={"Cache-Control": "no-store"})


async def end_session(request: web.Request) -> web.Response:
    """End one of the caller's sessions; 404 for one that is not theirs or has ended."""
    async with connection(request) as conn:
        ended = await _revoke(request, conn, request[USER_ID], session_id=request.match_info["session_id"])
    if not ended:
        raise Problem(404, "No such session.")
    return web.Response(status=204)


async def end_all_sessions(request: web.Request) -> web.Response:
    """End every one of the caller's sessions, the current one included."""
    async with connection(request) as conn:
        await _revoke(request, conn, request[USER_ID])
    return web.Response(status=204)
