"""Who is calling: bearer-token verification middleware, token minting, password hashing.

Three kinds of bearer token reach the middleware: this service's own HS256 JWTs, an identity
provider's JWTs (service/identity.py) and personal API tokens (service/api_tokens.py). Each
becomes an AccessToken, remembered by the worker that checked it, so that a client's next
request costs a dict lookup; the revocations are checked on every request, remembered or not.
"""

import asyncio
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple, TypeVar

import argon2
import jwt
from aiohttp import web
from aiohttp.typedefs import Handler

from service.errors import Problem
from service.keys import (
    ACCESS,
    API_TOKENS,
    DUMMY_PASSWORD_HASH,
    IDENTITY_PROVIDER,
    PASSWORD_HASHING,
    REVOCATIONS,
    SESSION_ID,
    SETTINGS,
    USER_ID,
)
from service.settings import Settings

ALGORITHM = "HS256"
# Real tokens are about 250 bytes; a huge one is an attack on the parser, refused unread.
MAX_TOKEN_LENGTH = 4096
BIGINT_MAX = 2**63 - 1
# Routes anyone may call, by route name (never by path prefix, so no look-alike path slips in).
# /metrics has a token of its own (METRICS_TOKEN).
PUBLIC_ROUTES = frozenset(
    {"healthz", "readyz", "metrics", "register", "login", "refresh", "root", "openapi", "docs", "docs_asset"}
)
# Routes that use a bearer token when a valid one comes, and let the request through without
# one: logout, which a client whose access token has expired does with its refresh token.
OPTIONAL_TOKEN_ROUTES = frozenset({"logout"})
# What an API token may call, by route name, and the scope each needs (None: any). Every other
# route (tokens, sessions, the password, the account) is for a person's own sign-in only; so is
# making, changing or testing a webhook: a subscription goes on sending task data after the
# token that made it expires or is deleted, which no token should be able to arrange.
API_TOKEN_ROUTES: dict[str, str | None] = {
    "me": None,
    "tasks": "tasks:read",
    "task": "tasks:read",
    "create_task": "tasks:write",
    "update_task": "tasks:write",
    "delete_task": "tasks:write",
    "complete_task": "tasks:write",
    "batch": "tasks:write",
    "changes": "tasks:read",
    "trash": "tasks:read",
    "restore_task": "tasks:write",
    "purge_task": "tasks:write",
    "empty_trash": "tasks:write",
    "webhooks": "tasks:read",
    "webhook": "tasks:read",
    "webhook_deliveries": "tasks:read",
}
API_TOKEN_PREFIX = "tapi_"
# `{user_id}` in a path may be this, for whoever calls (or their number, or a provider's `sub`).
MY_PATH = "me"
# A provider's token or an API token that a worker has checked is checked again after this
# long. Revocations of users and API tokens are kept longer than that, so no worker's memory of
# a check can outlive the revocation that overrides it.
RECHECK_SECONDS = 300

_SUBJECT = re.compile(r"[1-9][0-9]{0,18}")
_SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_hasher = argon2.PasswordHasher()  # argon2id with the RFC 9106 low-memory parameters


class InvalidToken(Exception):
    """The token cannot be trusted; the message is safe to show the client."""


class AccessToken(NamedTuple):
    """What a verified token says: whose it is, what ends it, and what it may do."""

    user_id: int
    # The session of one of our own tokens; none for those `python -m service token` mints.
    session_id: str | None = None
    # Its keys in the revocations (its session, its user, the API token), made once, not per request.
    revocations: tuple[str, ...] = ()
    expires: float = math.inf
    scopes: frozenset[str] | None = None  # an API token's; None for a person's token, which may do anything
    subject: str | None = None  # a provider's token's `sub`, which paths may name the user by
    issued_at: float | None = None  # a provider's token's `iat`


def mint_token(
    user_id: int,
    secret: str,
    ttl_seconds: int,
    *,
    issuer: str = Settings.jwt_issuer,
    session_id: str | None = None,
) -> str:
    """A signed access token for `user_id`, valid for `ttl_seconds`, naming its session if any."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": issuer,
        "sub": str(user_id),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if session_id is not None:
        claims["sid"] = session_id
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens this process has verified: (token, and everything its verification depended on) -> what
# it says. A client sends the same
# token with every request, and checking its signature and claims again costs about 50 µs,
# more than the rest of the middleware; a hit needs only the expiry compared (and the
# revocations, which the middleware checks on every request, hit or not).
_verified: dict[tuple[str, str, str, bool], AccessToken] = {}
MAX_VERIFIED_TOKENS = 50_000


def remembered_token(token: str, settings: Settings) -> AccessToken | None:
    """One of our own tokens that this worker has verified and that has not expired."""
    key = (token, settings.jwt_secret, settings.jwt_issuer, settings.jwt_require_issuer)
    cached = _verified.get(key)
    if cached is not None:
        if time.time() <= cached.expires + settings.jwt_leeway_seconds:
            return cached
        del _verified[key]  # expired: decode again, to refuse it the usual way
    return None


def read_token(token: str, settings: Settings) -> AccessToken:
    """What a valid token of our own says; raises InvalidToken otherwise."""
    cached = remembered_token(token, settings)
    if cached is not None:
        return cached
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("The token is too long.")
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            leeway=settings.jwt_leeway_seconds,
            options={"require": ["exp", "iat", "sub"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("The token has expired.") from None
    except jwt.InvalidTokenError:
        raise InvalidToken("The token is invalid.") from None
    _check_issuer(claims, settings)
    subject, session_id = claims["sub"], claims.get("sid")
    if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject) or int(subject) > BIGINT_MAX:
        raise InvalidToken("The token is invalid.")
    if session_id is not None and not (isinstance(session_id, str) and _SESSION_ID.fullmatch(session_id)):
        raise InvalidToken("The token is invalid.")
    if len(_verified) >= MAX_VERIFIED_TOKENS:
        _verified.clear()
    user_id = int(subject)
    revocations: tuple[str, ...] = (user_credential(user_id),)
    if session_id is not None:
        revocations += (session_credential(session_id),)
    verified = AccessToken(user_id, session_id, revocations, float(claims["exp"]))
    _verified[(token, settings.jwt_secret, settings.jwt_issuer, settings.jwt_require_issuer)] = verified
    return verified


def session_credential(session_id: str) -> str:
    """How a session is named in the revocations."""
    return f"session:{session_id}"


def user_credential(user_id: int) -> str:
    """How a user is named in the revocations: every token of a deleted account."""
    return f"user:{user_id}"


def api_token_credential(token_id: int) -> str:
    """How an API token is named in the revocations."""
    return f"api_token:{token_id}"


# What a revoked credential's kind means to the client whose token it ends.
_REVOKED = {
    "session": "The session has ended; sign in again.",
    "user": "The account has been deleted.",
    "api_token": "The API token has been deleted.",
}


def user_revocation_seconds(settings: Settings) -> int:
    """How long a deleted user stays revoked: past the last access token we issued them (leeway
    included) and past any worker's memory of having checked one of their other tokens."""
    return max(settings.jwt_ttl_seconds + settings.jwt_leeway_seconds, RECHECK_SECONDS) + 60


def _check_issuer(claims: dict[str, Any], settings: Settings) -> None:
    """RFC 8725 sections 3.9-3.10: a token made for another service (another `iss` or `aud`)
    is refused even when signed with the same secret. Tokens with neither claim, which the
    original contract let other systems mint with the shared secret, pass unless
    JWT_REQUIRE_ISSUER is set."""
    ours = settings.jwt_issuer
    if "iss" in claims and claims["iss"] != ours:
        raise InvalidToken("The token was issued for another service.")
    if "aud" in claims:
        audience = claims["aud"]
        if not (audience == ours or (isinstance(audience, list) and ours in audience)):
            raise InvalidToken("The token was issued for another service.")
    if settings.jwt_require_issuer and ("iss" not in claims or "aud" not in claims):
        raise InvalidToken("The token does not name this service as its issuer and audience.")


def unauthorized(detail: str, *, invalid: bool = True) -> Problem:
    """A 401 problem with the RFC 6750 challenge."""
    # RFC 6750 section 3.1: a request with no credentials at all gets no error code.
    challenge = 'Bearer realm="tasks"'
    if invalid:
        challenge += ', error="invalid_token"'
    return Problem(401, detail, headers={"WWW-Authenticate": challenge})


def insufficient_scope(detail: str, scope: str | None = None) -> Problem:
    """A 403 problem with the RFC 6750 challenge naming the scope needed, if any can do."""
    challenge = 'Bearer error="insufficient_scope"'
    if scope is not None:
        challenge += f', scope="{scope}"'
    return Problem(403, detail, headers={"WWW-Authenticate": challenge})


async def authenticate(request: web.Request, token: str) -> AccessToken:
    """What a bearer token of any kind says; raises InvalidToken when it cannot be trusted."""
    app = request.app
    if token.startswith(API_TOKEN_PREFIX):
        return await app[API_TOKENS].check(request, token)
    settings = app[SETTINGS]
    remembered = remembered_token(token, settings)
    if remembered is not None:
        return remembered
    provider = app[IDENTITY_PROVIDER]
    if provider is not None:
        access = await provider.read(request, token)
        if access is not None:
            return access
    return read_token(token, settings)


def _check_scope(route: str | None, scopes: frozenset[str]) -> None:
    if route not in API_TOKEN_ROUTES:
        raise insufficient_scope(
            "An API token cannot manage tokens, sessions, the password or the account; sign in for that."
        )
    needed = API_TOKEN_ROUTES[route]
    if needed is not None and needed not in scopes:
        raise insufficient_scope(f"This API token does not have the {needed} scope.", needed)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put the token's user on the request; 401 without a valid token, 403 for another user's URL
    or, for an API token, a route beyond its scopes."""
    match_info = request.match_info
    route = match_info.route.name
    if match_info.http_exception is not None or route in PUBLIC_ROUTES:
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("A bearer token is required.", invalid=False)
        try:
            access = await authenticate(request, token.strip())
        except InvalidToken as error:
            raise unauthorized(str(error), invalid=True) from None
        revocations = request.app[REVOCATIONS]
        for credential in access.revocations:
            if credential in revocations:
                raise unauthorized(_REVOKED[credential.partition(":")[0]], invalid=True)
    except Problem:
        if route in OPTIONAL_TOKEN_ROUTES:
            return await handler(request)
        raise
    if access.scopes is not None:
        _check_scope(route, access.scopes)
    path_user = match_info.get("user_id")
    # The one place `{user_id}` is resolved: it must name the caller, as `me`, as their number
    # (compared as text: the path may hold more digits than int() parses) or, for a provider's
    # user, as the `sub` of their token. Handlers use request[USER_ID] only.
    if path_user is not None and path_user not in (MY_PATH, str(access.user_id), access.subject):
        raise Problem(403, "The token does not give access to this user's tasks.")
    request[USER_ID] = access.user_id
    request[SESSION_ID] = access.session_id
    request[ACCESS] = access
    return await handler(request)


T = TypeVar("T")


class PasswordHashing:
    """Runs argon2 off the event loop, at most PASSWORD_HASH_CONCURRENCY at a time per worker.

    Each hash costs about 0.1 s of a core, for any email, known or not; without a cap a flood
    of sign-ins takes every core from every other request. Past PASSWORD_HASH_QUEUE waiting,
    a request is refused at once with 503 and Retry-After rather than queued for seconds.
    """

    def __init__(self, concurrency: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self._waiting = 0

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        if self._slots.locked() and self._waiting >= self._queue:
            raise Problem(503, "Too many sign-ins at once; try again shortly.", headers={"Retry-After": "1"})
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(None, work, *args)
        finally:
            self._slots.release()


async def hash_password(app: web.Application, password: str) -> str:
    """An argon2id hash of the password."""
    return await app[PASSWORD_HASHING].run(_hasher.hash, password)


async def check_password(app: web.Application, password_hash: str, password: str) -> bool:
    """Whether the password matches the hash."""
    try:
        return await app[PASSWORD_HASHING].run(_hasher.verify, password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than the current ones."""
    return _hasher.check_needs_rehash(password_hash)


async def dummy_password_hash(app: web.Application) -> AsyncIterator[None]:
    """Hash a random password once at start-up, to check unknown emails' logins against."""
    app[DUMMY_PASSWORD_HASH] = await hash_password(app, secrets.token_urlsafe(32))
    yield
