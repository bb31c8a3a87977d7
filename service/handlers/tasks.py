"""Task routes: list, create, read, update, delete and complete the caller's own tasks."""

import asyncio
import logging
import re
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from multidict import MultiDict

from service.auth import BIGINT_MAX, unauthorized
from service.db import connection, queries
from service.errors import Problem
from service.keys import SETTINGS, USER_ID
from service.listing import (
    DEFAULT_ORDER,
    Listing,
    cursor_secret,
    fetch_page,
    make_cursor,
    open_every_task,
    read_cursor,
)
from service.metrics import DB_ERRORS
from service.schemas import (
    JSON_CONTENT_TYPE,
    TASK_COMPLETE,
    TASK_CREATE,
    TASK_LIST_QUERY,
    TASK_UPDATE,
    json_response,
    load_body,
    load_query,
    task_document,
)

log = logging.getLogger(__name__)
DEFAULT_PAGE_SIZE = 100  # with a cursor but no limit
# An unpaged list is read from the database and written this many tasks at a time (about half a
# megabyte of JSON); one that fits in a chunk is answered as a page is.
STREAM_CHUNK = 1000
STREAM_PIECE_BYTES = 64 * 1024  # what a client must take within STREAM_WRITE_TIMEOUT
_UPDATABLE = (
    "title", "description", "completed", "priority", "tags", "due_date", "due_local", "due_on",
    "remind_at", "remind_local", "recurrence_every", "recurrence_interval",
)  # fmt: skip


def _task_id(request: web.Request) -> int:
    raw = request.match_info["task_id"]
    # No task has an id beyond bigint; PostgreSQL would refuse it, and int() refuses 4,300 digits.
    if len(raw) > len(str(BIGINT_MAX)) or int(raw) > BIGINT_MAX:
        raise _not_found(raw)
    return int(raw)


def _not_found(task_id: int | str) -> Problem:
    # The same answer whether the task never existed or belongs to someone else.
    return Problem(404, f"Task {task_id} was not found.")


async def list_tasks(request: web.Request) -> web.StreamResponse:
    """The caller's tasks, filtered and sorted: every one, or with `limit` (or a `cursor`) one
    page and the next page's URL in `Link`."""
    query = load_query(request, TASK_LIST_QUERY)
    paged = "limit" in query or "cursor" in query
    listing = Listing(
        user_id=request[USER_ID],
        sort=query["sort"],
        order=query.get("order", DEFAULT_ORDER[query["sort"]]),
        limit=query.get("limit", DEFAULT_PAGE_SIZE) if paged else STREAM_CHUNK,
        filters=_filters(query),
    )
    if not paged:
        return await _every_task(request, listing)
    secret = cursor_secret(request.app[SETTINGS].jwt_secret)
    after = read_cursor(secret, listing, query["cursor"]) if "cursor" in query else None
    async with connection(request) as conn:
        rows, next_after = await fetch_page(conn, listing, after)
    headers = {}
    if next_after is not None:
        next_query = MultiDict(request.query)
        next_query.popall("cursor", None)
        next_query["cursor"] = make_cursor(secret, listing, next_after)
        headers["Link"] = f'<{request.url.with_query(next_query)}>; rel="next"'
    return json_response([task_document(row) for row in rows], headers=headers)


async def _every_task(request: web.Request, listing: Listing) -> web.StreamResponse:
    """Every task of the listing, as the original contract answers. As many as fit in one chunk
    are read as a page is, at a page's cost. More are streamed: a database cursor, in one
    transaction and so one snapshot (no task missed or repeated however tasks change meanwhile,
    as keyset pages over separate reads could), read and written a chunk at a time, so memory
    stays flat. A client that takes more than STREAM_WRITE_TIMEOUT seconds over a piece of it is
    cut off: it holds a pooled connection while it reads."""
    response = None
    try:
        async with connection(request) as conn:
            rows, more = await fetch_page(conn, listing, None)
            if more is None:
                return json_response([task_document(row) for row in rows])
            async with conn.transaction():
                cursor = await open_every_task(conn, listing)
                rows = await cursor.fetch(STREAM_CHUNK)
                response = web.StreamResponse(headers={"Content-Type": JSON_CONTENT_TYPE})
                await response.prepare(request)
                separator = b"["
                while rows:
                    # One chunk as a JSON array, written without its brackets.
                    chunk = orjson.dumps([task_document(row) for row in rows], option=orjson.OPT_UTC_Z)
                    await _send(request, response, separator)
                    await _send(request, response, memoryview(chunk)[1:-1])
                    separator = b","
                    rows = await cursor.fetch(STREAM_CHUNK)
                await _send(request, response, b"[]" if separator == b"[" else b"]")
        await response.write_eof()
    except Exception as error:
        if response is None or not response.prepared:
            raise  # nothing sent yet: answered as any error is
        # The status line is out, so the only honest signal left is an answer cut short: the
        # client sees its chunked body end without the last chunk. It never sees a 200 with
        # an incomplete array.
        if not isinstance(error, ConnectionError):  # the client itself hung up
            if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
                DB_ERRORS.labels(type(error).__name__).inc()
            log.warning("unpaged list cut short", extra={"reason": type(error).__name__})
        if request.transport is not None:
            request.transport.abort()
    return response


async def _send(request: web.Request, response: web.StreamResponse, data: bytes | memoryview) -> None:
    """Write `data`, each piece within STREAM_WRITE_TIMEOUT: a client that stops reading holds
    the connection (and the database connection) no longer than that."""
    timeout = request.app[SETTINGS].stream_write_timeout
    for start in range(0, len(data), STREAM_PIECE_BYTES):
        async with asyncio.timeout(timeout):
            await response.write(data[start : start + STREAM_PIECE_BYTES])


def _filters(query: dict[str, Any]) -> dict[str, Any]:
    """The listing's filters as the page statement's parameters, only those given."""
    filters: dict[str, Any] = {}
    if query["status"] != "all":
        filters["completed"] = query["status"] == "completed"
    if query.get("priority"):
        filters["priorities"] = sorted(set(query["priority"]))
    if query.get("tag"):
        filters["tags"] = sorted({tag.lower() for tag in query["tag"]})
    if "q" in query:
        filters["pattern"] = "%" + re.sub(r"([\\%_])", r"\\\1", query["q"]) + "%"
    for name in ("due_before", "due_after", "overdue"):
        if name in query:
            filters[name] = query[name]
    return filters


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
    return json_response(task_document(row), status=201, headers={"Location": str(location)})


async def get_task(request: web.Request) -> web.Response:
    """Read one task."""
    task_id = _task_id(request)
    async with connection(request) as conn:
        row = await queries.get_task(conn, user_id=request[USER_ID], task_id=task_id)
    if row is None:
        raise _not_found(task_id)
    return json_response(task_document(row))


async def update_task(request: web.Request) -> web.Response:
    """Change the fields given in the body and bump updated_at; completing a repeating task
    creates its next occurrence."""
    task_id = _task_id(request)
    fields = await load_body(request, TASK_UPDATE)
    changes = {name: fields.get(name) for name in _UPDATABLE}
    # Null is a value for these, so whether they were given at all travels separately.
    changes.update(
        set_description="description" in fields,
        set_due_date="due_date" in fields,
        set_remind_at="remind_at" in fields,
        set_recurrence="recurrence_every" in fields,
    )
    row = await _save(request, task_id, queries.update_task, changes)
    log.info("task updated", extra={"user_id": request[USER_ID], "task_id": task_id})
    return json_response(task_document(row))


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
    """Set `completed` from the body, or flip it when there is no body; completing a repeating
    task creates its next occurrence."""
    task_id = _task_id(request)
    fields = await load_body(request, TASK_COMPLETE) if request.body_exists else {}
    row = await _save(request, task_id, queries.complete_task, {"completed": fields.get("completed")})
    log.info("task updated", extra={"user_id": request[USER_ID], "task_id": task_id})
    return json_response(task_document(row))


async def _save(request: web.Request, task_id: int, query: Any, changes: dict[str, Any]) -> asyncpg.Record:
    """Run an update query and, in the same transaction, repeat the task if that completed it."""
    user_id = request[USER_ID]
    async with connection(request) as conn, conn.transaction():
        row = await query(conn, user_id=user_id, task_id=task_id, **changes)
        if row is None:
            raise _not_found(task_id)
        # A task continues its series once; reopening and completing it again repeats nothing.
        if row["completed"] and row["recurrence_every"] is not None and row["next_task_id"] is None:
            repeated = await queries.repeat_task(conn, user_id=user_id, task_id=task_id)
            if repeated is not None:  # None: the series has reached its end
                row = repeated
                log.info("task created", extra={"user_id": user_id, "task_id": row["next_task_id"]})
    return row
