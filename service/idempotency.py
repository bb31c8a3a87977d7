"""Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header-07) for POST and PATCH: a
retried request gets the first one's answer again, byte for byte, and writes nothing.

The answer (status, body, Location, ETag) is stored in the same transaction as the write, so a
write that was acknowledged always has its stored answer, and a stored answer always its write.
Keys are per user. While a request with a key runs, it holds a transaction-level advisory lock
on it: a second request with the key gets 409 at once rather than waiting. Only successful
answers are stored; after an error (4xx or 5xx) nothing was written, and a retry runs for real.
"""

import hashlib
import re
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
from aiohttp import web

from service.db import queries
from service.errors import Problem
from service.keys import SETTINGS, USER_ID

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEPT_HEADERS = ("Content-Type", "Location", "ETag")
# The draft's Structured Field string (quoted), or a bare token as many clients send.
_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_BARE = re.compile(r"[\x21-\x7e]+")


def idempotency_key(request: web.Request) -> str | None:
    """The request's key, or None without the header; 400 when it is malformed."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    raw = raw.strip(" \t")
    key = None
    if raw.startswith('"'):
        quoted = _QUOTED.fullmatch(raw)
        key = re.sub(r"\\(.)", r"\1", quoted[1]) if quoted else None
    elif _BARE.fullmatch(raw):
        key = raw
    if key is None or not 1 <= len(key) <= 255:
        raise Problem(
            400,
            f"{HEADER} must be 1 to 255 printable ASCII characters, as a quoted string or a bare token.",
            errors={HEADER: ["Must be 1 to 255 printable ASCII characters."]},
        )
    return key


async def once(
    request: web.Request,
    conn: asyncpg.Connection,
    write: Callable[[asyncpg.Connection], Awaitable[web.Response]],
) -> web.Response:
    """Run `write` on `conn` (in the caller's transaction), or, for a key seen before, answer as
    the first time."""
    key = idempotency_key(request)
    if key is None:
        return await write(conn)
    user_id = request[USER_ID]
    if not await queries.lock_idempotency_key(conn, user_id=user_id, key=key):
        raise Problem(
            409,
            f"A request with this {HEADER} is still being processed; retry once it has finished.",
            headers={"Retry-After": "1"},
        )
    fingerprint = await _fingerprint(request)
    stored = await queries.get_idempotent_answer(conn, user_id=user_id, key=key)
    if stored is not None:
        if bytes(stored["fingerprint"]) != fingerprint:
            raise Problem(
                422,
                f"This {HEADER} was used for another request (method, path or body); use a new key.",
            )
        headers = orjson.loads(stored["headers"])
        headers[REPLAYED] = "true"
        return web.Response(status=stored["status"], body=bytes(stored["body"]), headers=headers)
    response = await write(conn)
    if 200 <= response.status < 300:
        kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
        await queries.store_idempotent_answer(
            conn,
            user_id=user_id,
            key=key,
            fingerprint=fingerprint,
            status=response.status,
            headers=orjson.dumps(kept).decode(),
            body=response.body if isinstance(response.body, bytes) else b"",
            ttl_seconds=request.app[SETTINGS].idempotency_ttl_seconds,
        )
    return response


async def _fingerprint(request: web.Request) -> bytes:
    body = await request.read() if request.body_exists else b""
    digest = hashlib.sha256(f"{request.method} {request.rel_url.path_qs}\n".encode())
    digest.update(body)
    return digest.digest()
