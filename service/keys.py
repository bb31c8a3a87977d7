"""Every typed key for application and request state, in one place."""

import asyncio
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from service.settings import Settings

if TYPE_CHECKING:  # limits.py imports this module
    from service.limits import RateLimiter  # noqa: F401 - named in the keys' types below
    from service.metrics import MetricsPage  # noqa: F401 - likewise

SETTINGS = web.AppKey("SETTINGS", Settings)
PG_POOL = web.AppKey("PG_POOL", asyncpg.Pool)
PG_GATE = web.AppKey("PG_GATE", asyncio.Semaphore)  # requests queue here for a connection, in turn
# A password hash of a random password, verified when a login names an unknown email so that
# answering "no such user" costs as much time as answering "wrong password".
DUMMY_PASSWORD_HASH = web.AppKey("DUMMY_PASSWORD_HASH", str)

# One of each per worker process.
WRITE_LIMITER = web.AppKey["RateLimiter"]("WRITE_LIMITER")
LOGIN_LIMITER = web.AppKey["RateLimiter"]("LOGIN_LIMITER")
METRICS_PAGE = web.AppKey["MetricsPage"]("METRICS_PAGE")

USER_ID = web.RequestKey("USER_ID", int)
REQUEST_ID = web.RequestKey("REQUEST_ID", str)
ROUTE = web.RequestKey("ROUTE", str)  # the matched route's name, for the access log
