"""Background chores: periodic clean-ups that every worker runs, one worker at a time.

Each chore is a named query run every so often in a transaction that first tries a
transaction-level advisory lock named after the chore: while one worker of any instance holds
it, the others skip that round, and the lock goes with the transaction whatever happens. A
chore is idempotent (it deletes what has expired), so a round cut short by a crash or a
shutdown is simply done by the next. A database outage is waited out with backoff; the tasks
are cancelled cleanly when the app stops.
"""

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from service.db import OUTAGE_ERRORS, queries
from service.keys import PG_POOL, SETTINGS
from service.metrics import JOB_ROWS, JOB_RUNS
from service.queries import Query
from service.settings import Settings

log = logging.getLogger(__name__)

LAST_RETRY_SECONDS = 60.0


def _no_parameters(settings: Settings) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class Chore:
    name: str
    query: Query  # returns the number of rows it removed
    every_seconds: float
    parameters: Callable[[Settings], dict[str, Any]] = _no_parameters


CHORES = (
    Chore("purge_sessions", queries.purge_sessions, every_seconds=600),
    Chore("purge_revocations", queries.purge_revocations, every_seconds=600),
    Chore(
        "purge_trash",
        queries.purge_trash,
        every_seconds=300,
        parameters=lambda settings: {"retention_days": settings.trash_retention_days},
    ),
    Chore(
        "purge_changes",
        queries.purge_changes,
        every_seconds=300,
        parameters=lambda settings: {"retention_days": settings.changes_retention_days},
    ),
    Chore("purge_idempotency_keys", queries.purge_idempotency_keys, every_seconds=300),
    Chore("purge_api_tokens", queries.purge_api_tokens, every_seconds=600),
    Chore(
        "purge_webhook_deliveries",
        queries.purge_webhook_deliveries,
        every_seconds=600,
        parameters=lambda settings: {"retention_days": settings.webhook_retention_days},
    ),
)


async def run_once(app: web.Application, chore: Chore) -> int | None:
    """One round: the rows removed, or None when another worker holds the chore's lock."""
    pool = app[PG_POOL]
    conn = await pool.acquire(timeout=app[SETTINGS].db_acquire_timeout)
    try:
        async with conn.transaction():
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1))", f"taskapi:{chore.name}"
            ):
                return None
            removed: int = await chore.query(conn, **chore.parameters(app[SETTINGS]))
            return removed
    finally:
        await pool.release(conn)


async def _repeat(app: web.Application, chore: Chore) -> None:
    # Workers started together would otherwise all wake at once.
    await asyncio.sleep(random.uniform(0, chore.every_seconds))
    retry = 1.0
    while True:
        try:
            removed = await run_once(app, chore)
        except OUTAGE_ERRORS as error:
            JOB_RUNS.labels(chore.name, "unavailable").inc()
            log.warning("chore postponed", extra={"chore": chore.name, "error": type(error).__name__})
            await asyncio.sleep(retry)
            retry = min(retry * 2, LAST_RETRY_SECONDS)
            continue
        except Exception:
            JOB_RUNS.labels(chore.name, "failed").inc()
            log.exception("chore failed", extra={"chore": chore.name})
        else:
            JOB_RUNS.labels(chore.name, "skipped" if removed is None else "done").inc()
            if removed:
                JOB_ROWS.labels(chore.name).inc(removed)
                log.info("chore done", extra={"chore": chore.name, "rows": removed})
        retry = 1.0
        await asyncio.sleep(chore.every_seconds)


async def chores(app: web.Application) -> AsyncIterator[None]:
    """Run every chore for as long as the app runs."""
    tasks = [asyncio.create_task(_repeat(app, chore), name=chore.name) for chore in CHORES]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
