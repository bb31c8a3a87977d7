"""Trash routes: deleted tasks, kept TRASH_RETENTION_DAYS to restore or purge for good."""

from datetime import datetime
from typing import Any

from aiohttp import web

from service.conditions import task_etag
from service.cursors import next_page_link, seal, unseal
from service.db import connection, queries
from service.errors import Problem
from service.handlers.tasks import task_id_from
from service.keys import SETTINGS, USER_ID
from service.schemas import TRASH_QUERY, json_response, load_query, task_document


async def list_trash(request: web.Request) -> web.Response:
    """A page of the trash, most recently deleted first; the next page's URL in `Link`."""
    query = load_query(request, TRASH_QUERY)
    user_id, limit = request[USER_ID], query["limit"]
    secret, context = request.app[SETTINGS].jwt_secret, f"trash:{user_id}"
    after_deleted_at, after_id = None, None
    if "cursor" in query:
        deleted_at, after_id = unseal(secret, context, query["cursor"])
        after_deleted_at = datetime.fromisoformat(deleted_at)
    async with connection(request) as conn:
        rows = await queries.list_trash(
            conn, user_id=user_id, after_deleted_at=after_deleted_at, after_id=after_id, limit=limit + 1
        )
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        cursor = seal(secret, context, [rows[-1]["deleted_at"].isoformat(), rows[-1]["id"]])
        headers["Link"] = next_page_link(request, cursor)
    return json_response([_trashed(row) for row in rows], headers=headers)


def _trashed(row: Any) -> dict[str, Any]:
    return {**task_document(row), "deleted_at": row["deleted_at"]}


async def restore_task(request: web.Request) -> web.Response:
    """Put a task back among the live ones; 200 with it."""
    task_id = task_id_from(request)
    async with connection(request) as conn, conn.transaction():
        row = await queries.restore_task(conn, user_id=request[USER_ID], task_id=task_id)
    if row is None:
        raise Problem(404, f"Task {task_id} is not in the trash.")
    return json_response(task_document(row), headers={"ETag": task_etag(row["updated_at"])})


async def purge_task(request: web.Request) -> web.Response:
    """Delete a task from the trash for good; 204."""
    task_id = task_id_from(request)
    async with connection(request) as conn:
        purged = await queries.purge_trashed_task(conn, user_id=request[USER_ID], task_id=task_id)
    if purged is None:
        raise Problem(404, f"Task {task_id} is not in the trash.")
    return web.Response(status=204)


async def empty_trash(request: web.Request) -> web.Response:
    """Delete every task in the trash for good; 204."""
    async with connection(request) as conn:
        await queries.empty_trash(conn, user_id=request[USER_ID])
    return web.Response(status=204)
