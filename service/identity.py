"""Tokens from an identity provider (Better Auth, Auth0, Keycloak, any JWKS issuer): its published
keys, fetched and cached by each worker; verifying its tokens; and the local user each of its
subjects maps to, made on first sight.

The keys (AUTH_JWKS_URL) are fetched with aiohttp by a task of each worker's, at start-up and
again when the provider's `Cache-Control: max-age` (else 10 minutes) runs out, and kept in use
while the provider cannot be reached. A token naming a key (`kid`) not among them fetches them at
once, which is how a rotation arrives with no restart, but at most once every 30 seconds, so
tokens with made-up key ids cannot make the service hammer the provider. A token is taken only
with an algorithm from AUTH_ALGORITHMS (public-key ones; settings.py refuses the rest) and the
key's own algorithm: an HS256 token signed with the provider's public key is not the provider's,
and goes to the HS256 check of our own tokens, which refuses it.
"""

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import orjson
from aiohttp import web
from marshmallow import ValidationError, validate

from service.auth import MAX_TOKEN_LENGTH, RECHECK_SECONDS, AccessToken, InvalidToken, user_credential
from service.db import connection, queries
from service.errors import Problem
from service.keys import IDENTITY_PROVIDER
from service.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_SECONDS = 600.0
MIN_MAX_AGE_SECONDS = 1.0
MAX_MAX_AGE_SECONDS = 86400.0
UNKNOWN_KEY_FETCH_SECONDS = 30.0  # at most one fetch this often for tokens naming unknown keys
FETCH_TIMEOUT_SECONDS = 5.0
MAX_JWKS_BYTES = 1024 * 1024
FIRST_RETRY_SECONDS = 1.0
LAST_RETRY_SECONDS = 60.0
MAX_SUBJECT_LENGTH = 255
MAX_REMEMBERED_TOKENS = 50_000
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_email = validate.Email()


class KeyFetchError(Exception):
    """The provider's keys could not be fetched or read; the message is safe to log."""


class KeySet:
    """The provider's signing keys this worker knows, by `kid`, and how they are kept fresh."""

    def __init__(self, url: str, algorithms: tuple[str, ...]) -> None:
        self.url = url
        self.algorithms = algorithms
        self.max_age = DEFAULT_MAX_AGE_SECONDS
        self.failing = False  # the latest fetch failed (the keys, if any, are older)
        self.http: aiohttp.ClientSession | None = None
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetching: asyncio.Task[bool] | None = None
        self._last_unknown_key_fetch = -math.inf

    async def get(self, kid: str | None) -> jwt.PyJWK:
        """The key named `kid`; fetches the keys first when it is unknown (at most once every
        UNKNOWN_KEY_FETCH_SECONDS, or joins a fetch under way)."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._fetching is not None:
            await self.refresh()
        elif time.monotonic() - self._last_unknown_key_fetch >= UNKNOWN_KEY_FETCH_SECONDS:
            self._last_unknown_key_fetch = time.monotonic()
            await self.refresh()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self.failing:
            raise Problem(
                503,
                "The identity provider's keys cannot be fetched to check this token; try again shortly.",
                headers={"Retry-After": "5"},
            )
        raise InvalidToken("The token is signed with a key the identity provider does not publish.")

    async def refresh(self) -> bool:
        """Fetch the keys, or wait for the fetch under way; whether it succeeded."""
        if self._fetching is None:
            self._fetching = asyncio.create_task(self._fetch(), name="fetch-jwks")
            self._fetching.add_done_callback(self._fetched)
        return await asyncio.shield(self._fetching)

    def _fetched(self, task: "asyncio.Task[bool]") -> None:
        self._fetching = None

    async def close(self) -> None:
        """Stop a fetch under way (at shutdown)."""
        fetching = self._fetching
        if fetching is not None:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)

    async def _fetch(self) -> bool:
        assert self.http is not None, "the provider_keys cleanup context has not started"
        try:
            async with self.http.get(self.url, headers={"Accept": "application/json"}) as response:
                if response.status != 200:
                    raise KeyFetchError(f"HTTP {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise KeyFetchError(f"more than {MAX_JWKS_BYTES} bytes")
                keys = self._usable_keys(orjson.loads(body))
                max_age = _max_age(response.headers.get("Cache-Control", ""))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, KeyFetchError) as error:
            self.failing = True
            reason = str(error) if isinstance(error, KeyFetchError) else type(error).__name__
            log.warning(
                "cannot fetch the identity provider's keys; keeping the %d known",
                len(self._keys),
                extra={"url": self.url, "error": reason},
            )
            return False
        self._keys, self.max_age, self.failing = keys, max_age, False
        log.info("fetched the identity provider's keys", extra={"url": self.url, "keys": len(keys)})
        return True

    def _usable_keys(self, document: Any) -> dict[str | None, jwt.PyJWK]:
        """The signing keys of a JWKS document that we may verify with; others are skipped."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise KeyFetchError("not a JWKS document")
        keys = {}
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue  # a kind of key we cannot use (or an encryption key)
            kid = jwk.get("kid")
            if key.algorithm_name in self.algorithms and (kid is None or isinstance(kid, str)):
                keys[kid] = key
        if not keys:
            # Most likely a broken answer; the keys in hand are better than none.
            raise KeyFetchError("no usable signing key")
        return keys

    async def run(self) -> None:
        """Keep the keys fresh until cancelled: again after max-age, sooner after a failure."""
        retry = FIRST_RETRY_SECONDS
        while True:
            if await self.refresh():
                retry = FIRST_RETRY_SECONDS
                await asyncio.sleep(self.max_age)
            else:
                await asyncio.sleep(retry)
                retry = min(retry * 2, LAST_RETRY_SECONDS)


def _max_age(cache_control: str) -> float:
    """How long the provider lets its keys be cached: max-age, within bounds, else 10 minutes."""
    match = _MAX_AGE.search(cache_control)
    if match is None:
        return DEFAULT_MAX_AGE_SECONDS
    return min(max(float(match[1]), MIN_MAX_AGE_SECONDS), MAX_MAX_AGE_SECONDS)


class IdentityProvider:
    """The one provider configured by AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE."""

    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.auth_issuer
        self.audience = settings.auth_audience
        self.algorithms = settings.auth_algorithms
        self.leeway = settings.jwt_leeway_seconds
        self.keys = KeySet(settings.auth_jwks_url, settings.auth_algorithms)
        # Tokens this worker has verified -> (what they say, when to verify them again).
        self._verified: dict[str, tuple[AccessToken, float]] = {}

    async def read(self, request: web.Request, token: str) -> AccessToken | None:
        """What a token of this provider's says; None when it is not signed with one of its
        algorithms (so not one of its tokens); raises InvalidToken when it cannot be trusted."""
        now = time.time()
        remembered = self._verified.get(token)
        if remembered is not None:
            if now <= remembered[1]:
                return remembered[0]
            del self._verified[token]
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            return None
        claims = self._verify(token, algorithm, await self.keys.get(header.get("kid")))
        user_id = await self._local_user(request, claims)
        access = AccessToken(
            user_id,
            revocations=(user_credential(user_id),),
            expires=float(claims["exp"]) + self.leeway,
            subject=claims["sub"],
            issued_at=float(claims["iat"]),
        )
        if len(self._verified) >= MAX_REMEMBERED_TOKENS:
            self._verified.clear()
        self._verified[token] = (access, min(access.expires, now + RECHECK_SECONDS))
        return access

    def _verify(self, token: str, algorithm: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            # With a PyJWK, PyJWT also refuses a token whose `alg` is not the key's own.
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub"],
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("The token has expired.") from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
            raise InvalidToken("The token was issued for another service.") from None
        except jwt.PyJWTError:
            raise InvalidToken("The token is invalid.") from None
        subject = claims["sub"]
        if not (
            isinstance(subject, str) and 1 <= len(subject) <= MAX_SUBJECT_LENGTH and "\x00" not in subject
        ):
            raise InvalidToken("The token's subject is not one this service can keep.")
        return claims

    async def _local_user(self, request: web.Request, claims: dict[str, Any]) -> int:
        """The local user of the token's subject; made now, on its first sign-in."""
        values = {
            "issuer": self.issuer,
            "subject": claims["sub"],
            "issued_at": float(claims["iat"]),
            "email": _claimed_email(claims),
            "name": _claimed_name(claims),
        }
        async with connection(request) as conn:
            user_id = await queries.provider_user(conn, **values)
            if user_id is None:  # another worker made the user at this very moment
                user_id = await queries.provider_user(conn, **values)
        if not user_id:
            raise InvalidToken("The token was issued before its account was deleted; sign in again.")
        result: int = user_id
        return result


def _claimed_email(claims: dict[str, Any]) -> str | None:
    """The token's `email` claim, if it is one: shown to its user, never used to find an account."""
    email = claims.get("email")
    if not isinstance(email, str) or not 3 <= len(email) <= 254 or "\x00" in email:
        return None
    try:
        _email(email)
    except ValidationError:
        return None
    return email


def _claimed_name(claims: dict[str, Any]) -> str | None:
    """The token's `name` claim, trimmed and cut to 100 characters; None when there is none."""
    name = claims.get("name")
    if not isinstance(name, str):
        return None
    name = name.replace("\x00", "").strip()[:100]
    return name or None


async def provider_keys(app: web.Application) -> AsyncIterator[None]:
    """Keep the identity provider's keys fresh while the app runs, with its own HTTP client.
    Start-up does not wait for them: a provider that is down does not stop the service."""
    provider = app[IDENTITY_PROVIDER]
    if provider is None:
        yield
        return
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        provider.keys.http = http
        task = asyncio.create_task(provider.keys.run(), name="provider-keys")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await provider.keys.close()
