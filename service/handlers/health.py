"""Probes for load balancers and orchestrators: liveness and readiness."""

import asyncio

import asyncpg
from aiohttp import web

from service.db import HEAD_MIGRATIONS, DatabaseUnavailable, connection, queries
from service.errors import RETRY_AFTER_SECONDS, Problem
from service.keys import DRAINING
from service.schemas import json_response

READY_TIMEOUT_SECONDS = 2.0


def _not_ready(reason: str) -> Problem:
    return Problem(503, f"Not ready: {reason}.", headers={"Retry-After": RETRY_AFTER_SECONDS})


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving; the database is not consulted."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The database answers and its schema is at the head migration, and the instance is not
    shutting down (service/workers.py); 503 otherwise."""
    if request.app[DRAINING].is_set():
        raise _not_ready("the instance is shutting down")
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with connection(request) as conn:
                rows = await queries.applied_migrations(conn)
    except asyncpg.UndefinedTableError:
        rows = []
    except (DatabaseUnavailable, TimeoutError):
        raise _not_ready("the database is unreachable") from None
    missing = HEAD_MIGRATIONS - {row["migration_id"] for row in rows}
    if missing:
        raise _not_ready(f"{len(missing)} migration(s) are not applied")
    return json_response({"status": "ok"})
