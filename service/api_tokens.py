"""Personal API tokens: their form, and each worker's memory of the ones it has checked.

A token is `tapi_<user id>_<256 random bits, base64url>`: the fixed prefix lets secret scanners
recognise one, and the user id lets it be looked up by (user_id, hash), as refresh tokens are.
Only its SHA-256 hash is stored. A worker looks a token up in the database the first time it
sees it and again every RECHECK_SECONDS; in between, checking it is a dict lookup. Deleting a
token or its account revokes it through the revocations (service/revocations.py), which the
middleware checks on every request and which are kept longer than RECHECK_SECONDS, so no
worker's memory lets a deleted token through. A hash that names no token is remembered too: no
token can ever come to have it.

When a token was last used is written off the request path: each worker notes a use at most
once a minute per token and writes its notes every few seconds in one statement.
"""

import asyncio
import dataclasses
import hashlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator

from aiohttp import web

from service.auth import (
    API_TOKEN_PREFIX,
    BIGINT_MAX,
    RECHECK_SECONDS,
    AccessToken,
    InvalidToken,
    api_token_credential,
    user_credential,
)
from service.db import UNAVAILABLE_ERRORS, connection, queries
from service.keys import API_TOKENS, PG_POOL, SETTINGS

log = logging.getLogger(__name__)

SCOPES = ("tasks:read", "tasks:write")
LAST_USED_SECONDS = 60.0  # a token's use is noted at most this often
FLUSH_SECONDS = 5.0  # how often a worker writes the uses it noted
MAX_REMEMBERED = 50_000
_TOKEN = re.compile(re.escape(API_TOKEN_PREFIX) + r"(?P<user_id>[1-9][0-9]{0,18})_[A-Za-z0-9_-]{43}")


def new_api_token(user_id: int) -> str:
    """A new token for the user: its secret exists only in this string."""
    return f"{API_TOKEN_PREFIX}{user_id}_{secrets.token_urlsafe(32)}"


def api_token_hash(token: str) -> bytes:
    """What is stored of a token: 256 random bits need no slow hash."""
    return hashlib.sha256(token.encode()).digest()


@dataclasses.dataclass(slots=True)
class _Checked:
    access: AccessToken
    token_id: int
    recheck_at: float  # time.time() after which the database is asked again
    noted_at: float  # time.monotonic() of the last use noted for last_used_at


class ApiTokens:
    """The API tokens this worker has checked, and the uses it has yet to write."""

    def __init__(self) -> None:
        self._checked: dict[bytes, _Checked | None] = {}  # hash -> the token, or None: no such token
        self._used: dict[tuple[int, int], float] = {}  # (user id, token id) -> when, Unix seconds

    async def check(self, request: web.Request, token: str) -> AccessToken:
        """What a valid API token says; raises InvalidToken otherwise."""
        match = _TOKEN.fullmatch(token)
        if match is None or int(match["user_id"]) > BIGINT_MAX:
            raise InvalidToken("The token is invalid.")
        digest = api_token_hash(token)
        now = time.time()
        checked = self._checked.get(digest)
        if checked is None and digest in self._checked:
            raise InvalidToken("The API token is unknown or has been deleted.")
        if checked is None or now > checked.recheck_at:
            checked = await self._look_up(request, int(match["user_id"]), digest, checked)
        if now > checked.access.expires:
            raise InvalidToken("The API token has expired.")
        monotonic = time.monotonic()
        if monotonic - checked.noted_at >= LAST_USED_SECONDS:
            checked.noted_at = monotonic
            self._used[(checked.access.user_id, checked.token_id)] = now
        return checked.access

    async def _look_up(
        self, request: web.Request, user_id: int, digest: bytes, before: _Checked | None
    ) -> _Checked:
        async with connection(request) as conn:
            row = await queries.find_api_token(conn, user_id=user_id, secret_hash=digest)
        if len(self._checked) >= MAX_REMEMBERED:
            self._checked.clear()
        if row is None:
            self._checked[digest] = None
            raise InvalidToken("The API token is unknown or has been deleted.")
        access = AccessToken(
            user_id,
            revocations=(user_credential(user_id), api_token_credential(row["id"])),
            expires=row["expires"] if row["expires"] is not None else float("inf"),
            scopes=frozenset(row["scopes"]),
        )
        noted_at = before.noted_at if before is not None else -LAST_USED_SECONDS
        checked = _Checked(access, row["id"], time.time() + RECHECK_SECONDS, noted_at)
        self._checked[digest] = checked
        return checked

    async def write_uses(self, app: web.Application) -> None:
        """Write the uses noted since last time; kept for the next round if the database is down."""
        if not self._used:
            return
        used, self._used = self._used, {}
        pool = app[PG_POOL]
        try:
            conn = await pool.acquire(timeout=app[SETTINGS].db_acquire_timeout)
            try:
                await queries.touch_api_tokens(
                    conn,
                    user_ids=[user_id for user_id, _ in used],
                    token_ids=[token_id for _, token_id in used],
                    used_at=list(used.values()),
                )
            finally:
                await pool.release(conn)
        except UNAVAILABLE_ERRORS as error:
            log.warning("cannot record API token uses; will retry", extra={"error": type(error).__name__})
            for key, when in used.items():
                self._used[key] = max(when, self._used.get(key, when))


async def api_token_uses(app: web.Application) -> AsyncIterator[None]:
    """Write API token uses every FLUSH_SECONDS while the app runs, and once more at shutdown."""
    tokens = app[API_TOKENS]

    async def repeat() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await tokens.write_uses(app)
            except Exception:
                log.exception("recording API token uses failed")

    task = asyncio.create_task(repeat(), name="api-token-uses")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            async with asyncio.timeout(app[SETTINGS].db_acquire_timeout):
                await tokens.write_uses(app)
        except Exception:
            log.warning("API token uses not recorded at shutdown")
