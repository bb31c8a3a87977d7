"""Rate limits: token buckets per user for task writes and per account for login attempts.

Buckets live in each worker's memory, so with N workers a client spread over several
connections may get up to N times the limit; put a shared limiter in front (at the proxy)
when an exact, service-wide limit matters.
"""

import math
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from service.errors import Problem
from service.keys import LOGIN_LIMITER, USER_ID, WRITE_LIMITER

WRITE_ROUTES = frozenset({"create_task", "update_task", "delete_task", "complete_task"})


class RateLimiter:
    """Allows `per_minute` events per key, in bursts of up to that many; 0 allows everything."""

    MAX_KEYS = 100_000

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def check(self, key: str) -> None:
        """Take one token for `key`, or raise a 429 problem saying when to retry."""
        if self.per_minute == 0:
            return
        now = time.monotonic()
        rate = self.per_minute / 60.0
        tokens, since = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - since) * rate)
        if tokens < 1.0:
            retry_after = math.ceil((1.0 - tokens) / rate)
            raise Problem(
                429,
                f"Too many requests; try again in {retry_after} s.",
                headers={"Retry-After": str(retry_after)},
            )
        if len(self._buckets) >= self.MAX_KEYS:
            self._forget_full(now, rate)
        self._buckets[key] = (tokens - 1.0, now)

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


def check_login(request: web.Request, email: str) -> None:
    """Limit login attempts per account (RATE_LIMIT_LOGINS a minute), right or wrong."""
    request.app[LOGIN_LIMITER].check(f"login:{email.strip().lower()}")
