"""Opaque cursors: positions in a listing, a feed or the trash, handed to clients and back.

A cursor is encrypted and authenticated with AES-SIV (RFC 5297), bound to the context it was made
for (its user, and for listings the sort and filters) as associated data, so a client can neither
read, alter nor move one to another user or listing. AES-SIV rather than AES-GCM: it needs no
nonce, where GCM's random 96-bit nonces wear out after about 2**32 cursors under one key and a
repeated one gives away its authentication key. The key comes from JWT_SECRET, under a label of
its own, so there is no other secret to manage.
"""

import base64
import binascii
import functools
import hashlib
import hmac
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from multidict import MultiDict

from service.errors import Problem
from service.keys import SETTINGS


@functools.cache
def _cipher(jwt_secret: str) -> AESSIV:
    # AES-256-SIV takes a 64-byte key.
    return AESSIV(hmac.new(jwt_secret.encode(), b"task-api cursor, AES-SIV", hashlib.sha512).digest())


def seal(jwt_secret: str, context: str, position: Any) -> str:
    """A cursor holding `position` (anything JSON can carry), valid only in `context`."""
    sealed = _cipher(jwt_secret).encrypt(orjson.dumps(position), [context.encode()])
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def unseal(jwt_secret: str, context: str, cursor: str, *, parameter: str = "cursor") -> Any:
    """The position a cursor holds; 400 naming `parameter` when it was altered or made for
    another context."""
    try:
        sealed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return orjson.loads(_cipher(jwt_secret).decrypt(sealed, [context.encode()]))
    except (InvalidTag, ValueError, TypeError, binascii.Error):
        reason = "it was not issued by this service for this request and user, or it was altered"
        raise Problem(
            400, f"Invalid {parameter}: {reason}.", errors={parameter: [f"Invalid: {reason}."]}
        ) from None


def next_page_link(request: web.Request, cursor: str) -> str:
    """The `Link` header to this request's URL with `cursor` for the next page: relative (RFC
    8288 allows it), or under PUBLIC_URL; never built from the client's Host header."""
    query = MultiDict(request.query)
    query.popall("cursor", None)
    query["cursor"] = cursor
    return f'<{request.app[SETTINGS].public_url}{request.rel_url.with_query(query)}>; rel="next"'
