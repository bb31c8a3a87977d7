"""Task routes: list, create, read, update, delete and complete the caller's own tasks."""

import logging

import asyncpg
from aiohttp import web

from service.auth import BIGINT_MAX, unauthorized
from service.db import connection, queries
from service.errors import Problem
from service.keys import USER_ID
from service.schemas import TASK, TASK_COMPLETE, TASK_CREATE, TASK_UPDATE, json_response, load_body

log = logging.getLogger(__name__)


def _task_id(request: web.Request) -> int:
    raw = request.match_info["task_id"]
    # No task has an id beyond bigint; PostgreSQL would refuse it, and int() refuses 4,300 digits.
    if len(raw) > len(str(BIGINT_MAX)) or int(raw) > BIGINT_MAX:
        raise _not_found(raw)
    return int(raw)


def _not_found(task_id: int | str) -> Problem:
    # The same answer whether the task never existed or belongs to someone else.
    return Problem(404, f"Task {task_id} was not found.")


async def list_tasks(request: web.Request) -> web.Response:
    """List the caller's tasks, newest first."""
    async with connection(request) as conn:
        rows = [row async for row in queries.list_tasks(conn, user_id=request[USER_ID])]
    return json_response(TASK.dump(rows, many=True))


async def create_task(request: web.Request) -> web.Response:
    """Create a task; 201 with the task and its Location."""
    fields = await load_body(request, TASK_CREATE)
    user_id = request[USER_ID]
    try:
        async with connection(request) as conn:
            row = await queries.create_task(conn, user_id=user_id, **fields)
    except asyncpg.ForeignKeyViolationError:
        # The token is genuine but its user has been deleted since it was issued.
        raise unauthorized("The token's user no longer exists.") from None
    log.info("task created", extra={"user_id": user_id, "task_id": row["id"]})
    location = request.app.router["task"].url_for(user_id=str(user_id), task_id=str(row["id"]))
    return json_response(TASK.dump(row), status=201, headers={"Location": str(location)})


async def get_task(request: web.Request) -> web.Response:
    """Read one task."""
    task_id = _task_id(request)
    async with connection(request) as conn:
        row = await queries.get_task(conn, user_id=request[USER_ID], task_id=task_id)
    if row is None:
        raise _not_found(task_id)
    return json_response(TASK.dump(row))


async def update_task(request: web.Request) -> web.Response:
    """Change the fields given in the body and bump updated_at."""
    task_id = _task_id(request)
    fields = await load_body(request, TASK_UPDATE)
    user_id = request[USER_ID]
    async with connection(request) as conn:
        row = await queries.update_task(
            conn,
            user_id=user_id,
            task_id=task_id,
            title=fields.get("title"),
            set_description="description" in fields,
            description=fields.get("description"),
            completed=fields.get("completed"),
        )
    if row is None:
        raise _not_found(task_id)
    log.info("task updated", extra={"user_id": user_id, "task_id": task_id})
    return json_response(TASK.dump(row))


async def delete_task(request: web.Request) -> web.Response:
    """Delete one task; 204 with no body."""
    task_id = _task_id(request)
    user_id = request[USER_ID]
    async with connection(request) as conn:
        deleted = await queries.delete_task(conn, user_id=user_id, task_id=task_id)
    if deleted is None:
        raise _not_found(task_id)
    log.info("task deleted", extra={"user_id": user_id, "task_id": task_id})
    return web.Response(status=204)


async def complete_task(request: web.Request) -> web.Response:
    """Set `completed` from the body, or flip it when there is no body."""
    task_id = _task_id(request)
    fields = await load_body(request, TASK_COMPLETE) if request.body_exists else {}
    user_id = request[USER_ID]
    async with connection(request) as conn:
        row = await queries.complete_task(
            conn, user_id=user_id, task_id=task_id, completed=fields.get("completed")
        )
    if row is None:
        raise _not_found(task_id)
    log.info("task updated", extra={"user_id": user_id, "task_id": task_id, "completed": row["completed"]})
    return json_response(TASK.dump(row))
