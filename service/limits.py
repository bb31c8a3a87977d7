"""Rate limits: token buckets per user for task writes; per client address for sign-ins; per
(account, address) and per account for failed passwords; and who the client is behind proxies.

Buckets live in each worker's memory, so with N workers a client spread over several
connections may get up to N times the limit; put a shared limiter in front (at the proxy)
when an exact, service-wide limit matters.
"""

import asyncio
import math
import time
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from service.errors import Problem
from service.keys import ACCOUNT_LIMITER, ADDRESS_LIMITER, LOGIN_LIMITER, SETTINGS, USER_ID, WRITE_LIMITER

# Batches count each of their operations, in their handler.
WRITE_ROUTES = frozenset(
    {"create_task", "update_task", "delete_task", "complete_task", "restore_task", "purge_task"}
)


class RateLimiter:
    """Allows `per_minute` events per key, in bursts of up to that many; 0 allows everything."""

    MAX_KEYS = 100_000

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def check(self, key: str, *, take: bool = True, cost: int = 1) -> None:
        """Take `cost` tokens for `key` (or, with take=False, only make sure they are there), or
        raise a 429 problem saying when to retry; nothing is taken then."""
        if self.per_minute == 0:
            return
        now = time.monotonic()
        tokens = self._tokens(key, now)
        if tokens < cost:
            if cost > self.per_minute:
                raise Problem(
                    429,
                    f"At most {self.per_minute} writes a minute are allowed; send fewer at once.",
                    headers={"Retry-After": "60"},
                )
            retry_after = math.ceil((cost - tokens) / (self.per_minute / 60.0))
            raise Problem(
                429,
                f"Too many requests; try again in {retry_after} s.",
                headers={"Retry-After": str(retry_after)},
            )
        if take:
            self._store(key, tokens - cost, now)

    def charge(self, key: str) -> None:
        """Take one token for `key` if one is left, without refusing anything now."""
        if self.per_minute == 0:
            return
        now = time.monotonic()
        self._store(key, max(0.0, self._tokens(key, now) - 1.0), now)

    def _tokens(self, key: str, now: float) -> float:
        tokens, since = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - since) * self.per_minute / 60.0)

    def _store(self, key: str, tokens: float, now: float) -> None:
        if len(self._buckets) >= self.MAX_KEYS:
            self._forget_full(now, self.per_minute / 60.0)
        self._buckets[key] = (tokens, now)

    def _forget_full(self, now: float, rate: float) -> None:
        # A bucket that has refilled is the same as no bucket: drop those to bound memory.
        refill = self.per_minute / rate
        self._buckets = {key: value for key, value in self._buckets.items() if now - value[1] < refill}


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Limit task writes per authenticated user (RATE_LIMIT_WRITES a minute); reads and probes
    are never limited."""
    if request.match_info.route.name in WRITE_ROUTES:
        request.app[WRITE_LIMITER].check(f"user:{request[USER_ID]}")
    return await handler(request)


def client_address(request: web.Request) -> str:
    """The client's IP address: the socket's peer, or, when that peer is one of TRUSTED_PROXIES,
    the address the proxies say they received the request from (the right-most entry of
    `X-Forwarded-For`, or of `Forwarded: for=`, that is not itself a trusted proxy). Headers from
    anyone else are ignored: a client could write anything there."""
    trusted = request.app[SETTINGS].trusted_proxies
    peer = request.remote or ""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = _forwarded_for(request)
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: tuple[Any, ...]) -> bool:
    parsed = _parse_address(address)
    return parsed is not None and any(parsed in network for network in trusted)


def _parse_address(text: str) -> IPv4Address | IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:  # an IPv4 address with a port
        text = text.partition(":")[0]
    try:
        return ip_address(text)
    except ValueError:
        return None


def _forwarded_for(request: web.Request) -> list[str]:
    """The client addresses the proxies recorded, first hop first; unreadable entries dropped."""
    hops: list[str] = []
    forwarded = request.headers.getall("Forwarded", [])
    if forwarded:
        for element in ",".join(forwarded).split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for":
                    hops.append(value)
    else:
        hops = [hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
    parsed = (_parse_address(hop) for hop in hops)
    return [str(address) for address in parsed if address is not None]


async def check_sign_in(request: web.Request) -> str:
    """Count a login or registration against its client address (RATE_LIMIT_AUTH_PER_ADDRESS a
    minute); returns the address."""
    address = client_address(request)
    await _slowly(request.app[ADDRESS_LIMITER], f"address:{address}", take=True)
    return address


async def check_password_failures(request: web.Request, email_key: str, address: str) -> None:
    """Refuse a password check for an account that has had too many failures a minute from this
    address (RATE_LIMIT_LOGINS), or from everywhere (RATE_LIMIT_LOGINS_PER_ACCOUNT). Only
    failures count, so an attacker's guesses from one address cannot lock the owner out."""
    await _slowly(request.app[LOGIN_LIMITER], f"{email_key}|{address}", take=False)
    await _slowly(request.app[ACCOUNT_LIMITER], email_key, take=False)


# A refused sign-in is answered after this pause. A 429 costs little, but a client flooding
# from many connections gets one back as fast as it asks and keeps the worker's event loop
# busy, so every other request waits behind its requests; paused, each of its connections
# makes one request a second, and the pause itself costs nothing.
REFUSAL_PAUSE_SECONDS = 1.0


async def _slowly(limiter: RateLimiter, key: str, *, take: bool) -> None:
    try:
        limiter.check(key, take=take)
    except Problem:
        await asyncio.sleep(REFUSAL_PAUSE_SECONDS)
        raise


def count_password_failure(request: web.Request, email_key: str, address: str) -> None:
    request.app[LOGIN_LIMITER].charge(f"{email_key}|{address}")
    request.app[ACCOUNT_LIMITER].charge(email_key)
