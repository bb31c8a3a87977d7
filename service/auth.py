"""Who is calling: bearer-token verification middleware, token minting, password hashing."""

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator

import argon2
import jwt
from aiohttp import web
from aiohttp.typedefs import Handler

from service.errors import Problem
from service.keys import DUMMY_PASSWORD_HASH, SETTINGS, USER_ID
from service.settings import Settings

ALGORITHM = "HS256"
# Real tokens are about 150 bytes; a huge one is an attack on the parser, refused unread.
MAX_TOKEN_LENGTH = 4096
BIGINT_MAX = 2**63 - 1
# Routes anyone may call, by route name (never by path prefix, so no look-alike path slips in).
# /metrics has a token of its own (METRICS_TOKEN).
PUBLIC_ROUTES = frozenset(
    {"healthz", "readyz", "metrics", "register", "login", "root", "openapi", "docs", "docs_asset"}
)

_SUBJECT = re.compile(r"[1-9][0-9]{0,18}")
_hasher = argon2.PasswordHasher()  # argon2id with the RFC 9106 low-memory parameters


class InvalidToken(Exception):
    """The token cannot be trusted; the message is safe to show the client."""


def mint_token(user_id: int, secret: str, ttl_seconds: int) -> str:
    """A signed access token for `user_id`, valid for `ttl_seconds`."""
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens this process has verified: (token, secret) -> (user id, exp). A client sends the same
# token with every request, and checking its signature and claims again costs about 50 µs,
# more than the rest of the middleware; a hit needs only the expiry compared.
_verified: dict[tuple[str, str], tuple[int, float]] = {}
MAX_VERIFIED_TOKENS = 50_000


def read_token(token: str, settings: Settings) -> int:
    """The user id a valid token speaks for; raises InvalidToken otherwise."""
    key = (token, settings.jwt_secret)
    cached = _verified.get(key)
    if cached is not None:
        if time.time() <= cached[1] + settings.jwt_leeway_seconds:
            return cached[0]
        del _verified[key]  # expired: decode again, to refuse it the usual way
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("The token is too long.")
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            leeway=settings.jwt_leeway_seconds,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("The token has expired.") from None
    except jwt.InvalidTokenError:
        raise InvalidToken("The token is invalid.") from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject) or int(subject) > BIGINT_MAX:
        raise InvalidToken("The token is invalid.")
    if len(_verified) >= MAX_VERIFIED_TOKENS:
        _verified.clear()
    _verified[key] = (int(subject), float(claims["exp"]))
    return int(subject)


def unauthorized(detail: str, *, invalid: bool = True) -> Problem:
    """A 401 problem with the RFC 6750 challenge."""
    # RFC 6750 section 3.1: a request with no credentials at all gets no error code.
    challenge = 'Bearer realm="tasks"'
    if invalid:
        challenge += ', error="invalid_token"'
    return Problem(401, detail, headers={"WWW-Authenticate": challenge})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put the token's user on the request; 401 without a valid token, 403 for another user's URL."""
    match_info = request.match_info
    if match_info.http_exception is not None or match_info.route.name in PUBLIC_ROUTES:
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("A bearer token is required.", invalid=False)
    try:
        user_id = read_token(token.strip(), request.app[SETTINGS])
    except InvalidToken as error:
        raise unauthorized(str(error), invalid=True) from None
    path_user = match_info.get("user_id")
    # Compared as text: the path may hold any number of digits, too many for int() to parse.
    if path_user is not None and path_user != str(user_id):
        raise Problem(403, "The token does not give access to this user's tasks.")
    request[USER_ID] = user_id
    return await handler(request)


async def hash_password(password: str) -> str:
    """An argon2id hash of the password, computed off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, _hasher.hash, password)


async def check_password(password_hash: str, password: str) -> bool:
    """Whether the password matches the hash, computed off the event loop."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, _hasher.verify, password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than the current ones."""
    return _hasher.check_needs_rehash(password_hash)


async def dummy_password_hash(app: web.Application) -> AsyncIterator[None]:
    """Hash a random password once at start-up, to check unknown emails' logins against."""
    app[DUMMY_PASSWORD_HASH] = await hash_password(secrets.token_urlsafe(32))
    yield
