"""Every typed key for application and request state, in one place."""

import asyncio
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from service.settings import Settings

if TYPE_CHECKING:  # these modules import this one
    from service.api_tokens import ApiTokens  # noqa: F401 - named in the keys' types below
    from service.auth import AccessToken, PasswordHashing  # noqa: F401
    from service.changefeed import ChangeWaiters  # noqa: F401
    from service.db import PoolShares  # noqa: F401
    from service.identity import IdentityProvider  # noqa: F401
    from service.limits import RateLimiter  # noqa: F401
    from service.listener import Listener  # noqa: F401
    from service.metrics import MetricsPage  # noqa: F401
    from service.revocations import Revocations  # noqa: F401

SETTINGS = web.AppKey("SETTINGS", Settings)
PG_POOL = web.AppKey("PG_POOL", asyncpg.Pool)
PG_GATE = web.AppKey("PG_GATE", asyncio.Semaphore)  # requests queue here for a connection, in turn
POOL_SHARES = web.AppKey["PoolShares"]("POOL_SHARES")  # and first for their user's share of the pool
# A password hash of a random password, verified when a login names an unknown email so that
# answering "no such user" costs as much time as answering "wrong password".
DUMMY_PASSWORD_HASH = web.AppKey("DUMMY_PASSWORD_HASH", str)

# One of each per worker process.
LISTENER = web.AppKey["Listener"]("LISTENER")  # the worker's one LISTEN connection
REVOCATIONS = web.AppKey["Revocations"]("REVOCATIONS")  # revoked sessions, kept in memory
CHANGE_WAITERS = web.AppKey["ChangeWaiters"]("CHANGE_WAITERS")  # long-polling clients of the feed
PASSWORD_HASHING = web.AppKey["PasswordHashing"]("PASSWORD_HASHING")  # argon2, capped
WRITE_LIMITER = web.AppKey["RateLimiter"]("WRITE_LIMITER")  # task writes per user
ADDRESS_LIMITER = web.AppKey["RateLimiter"]("ADDRESS_LIMITER")  # logins and sign-ups per address
LOGIN_LIMITER = web.AppKey["RateLimiter"]("LOGIN_LIMITER")  # failed passwords per account and address
ACCOUNT_LIMITER = web.AppKey["RateLimiter"]("ACCOUNT_LIMITER")  # failed passwords per account
METRICS_PAGE = web.AppKey["MetricsPage"]("METRICS_PAGE")  # /metrics, rendered at most once a second
IDENTITY_PROVIDER = web.AppKey["IdentityProvider | None"]("IDENTITY_PROVIDER")  # None: AUTH_JWKS_URL unset
API_TOKENS = web.AppKey["ApiTokens"]("API_TOKENS")  # the API tokens this worker has checked
DRAINING = web.AppKey("DRAINING", asyncio.Event)
WEBHOOK_WAKE = web.AppKey(
    "WEBHOOK_WAKE", asyncio.Event
)  # set when deliveries are queued here  # set on SIGTERM: /readyz answers 503, the rest goes on

USER_ID = web.RequestKey("USER_ID", int)
SESSION_ID = web.RequestKey[str | None]("SESSION_ID")  # the token's session; none for minted ones
ACCESS = web.RequestKey["AccessToken"]("ACCESS")  # everything the bearer token says
REQUEST_ID = web.RequestKey("REQUEST_ID", str)
ROUTE = web.RequestKey("ROUTE", str)  # the matched route's name, for the access log
CREATED_TASK_ID = web.RequestKey("CREATED_TASK_ID", int)  # the task a create made, for the access log
