"""Task routes: list, create, read, update, delete and complete the caller's own tasks; and the
writes themselves, which batches share."""

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from service.auth import unauthorized
from service.conditions import if_match, list_etag, none_match, not_modified, precondition_failed, task_etag
from service.cursors import next_page_link
from service.db import connection, queries
from service.errors import Problem
from service.idempotency import idempotency_key, once
from service.keys import CREATED_TASK_ID, SETTINGS, USER_ID
from service.listing import DEFAULT_ORDER, Listing, fetch_page, make_cursor, open_every_task, read_cursor
from service.metrics import DB_ERRORS
from service.queries import Query
from service.schemas import (
    JSON_CONTENT_TYPE,
    TASK_COMPLETE,
    TASK_CREATE,
    TASK_LIST_QUERY,
    TASK_UPDATE,
    json_response,
    load_body,
    load_query,
    path_id,
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


def task_id_from(request: web.Request) -> int:
    """The task id in the path; 404 for one beyond bigint, which no task has."""
    task_id = path_id(request, "task_id")
    if task_id is None:
        raise _not_found(request.match_info["task_id"])
    return task_id


def _not_found(task_id: int | str) -> Problem:
    # The same answer whether the task never existed or belongs to someone else.
    return Problem(404, f"Task {task_id} was not found.")


async def list_tasks(request: web.Request) -> web.StreamResponse:
    """The caller's tasks, filtered and sorted: every one, or with `limit` (or a `cursor`) one
    page and the next page's URL in `Link`; 304 when If-None-Match names the list's ETag,
    without reading the list."""
    query = load_query(request, TASK_LIST_QUERY)
    user_id = request[USER_ID]
    paged = "limit" in query or "cursor" in query
    listing = Listing(
        user_id=user_id,
        sort=query["sort"],
        order=query.get("order", DEFAULT_ORDER[query["sort"]]),
        limit=query.get("limit", DEFAULT_PAGE_SIZE) if paged else STREAM_CHUNK,
        filters=_filters(query),
    )
    secret = request.app[SETTINGS].jwt_secret
    after = read_cursor(secret, listing, query["cursor"]) if "cursor" in query else None
    # What `overdue` selects changes with the clock, not only with writes: no validator then.
    validated = "overdue" not in query
    if validated and "If-None-Match" in request.headers:
        async with connection(request) as conn:
            etag = list_etag((await queries.change_head(conn, user_id=user_id))["head"])
        if none_match(request, etag):
            return not_modified(etag)
    if not paged:
        return await _every_task(request, listing, validated)
    async with connection(request) as conn:
        rows, next_after = await fetch_page(conn, listing, after)
        headers = {"ETag": await _list_etag(conn, user_id, rows)} if validated else {}
    if next_after is not None:
        headers["Link"] = next_page_link(request, make_cursor(secret, listing, next_after))
    return json_response([task_document(row) for row in rows], headers=headers)


async def _list_etag(conn: asyncpg.Connection, user_id: int, rows: list[asyncpg.Record]) -> str:
    """The list's ETag, from the change position its rows were read with (an empty list asks)."""
    head = rows[0]["head"] if rows else (await queries.change_head(conn, user_id=user_id))["head"]
    return list_etag(head or 0)


async def _every_task(request: web.Request, listing: Listing, validated: bool) -> web.StreamResponse:
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
                headers = {"ETag": await _list_etag(conn, listing.user_id, rows)} if validated else {}
                return json_response([task_document(row) for row in rows], headers=headers)
            async with conn.transaction():
                cursor = await open_every_task(conn, listing)
                rows = await cursor.fetch(STREAM_CHUNK)
                response = web.StreamResponse(headers={"Content-Type": JSON_CONTENT_TYPE})
                if validated:  # the snapshot these rows come from, and so the whole answer
                    response.headers["ETag"] = list_etag(rows[0]["head"] or 0)
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


async def get_task(request: web.Request) -> web.Response:
    """Read one task; 304 when If-None-Match names its ETag."""
    task_id = task_id_from(request)
    async with connection(request) as conn:
        row = await queries.get_task(conn, user_id=request[USER_ID], task_id=task_id)
    if row is None:
        raise _not_found(task_id)
    etag = task_etag(row["updated_at"])
    if none_match(request, etag):
        return not_modified(etag)
    return task_response(row)


async def create_task(request: web.Request) -> web.Response:
    """Create a task; 201 with the task, its ETag and its Location."""
    fields = await load_body(request, TASK_CREATE)

    async def write(conn: asyncpg.Connection) -> web.Response:
        row = await create(request, conn, fields)
        request[CREATED_TASK_ID] = row["id"]
        location = request.app.router["task"].url_for(user_id=str(row["user_id"]), task_id=str(row["id"]))
        return task_response(row, status=201, headers={"Location": str(location)})

    return await write_once(request, write, one_statement=True)


async def update_task(request: web.Request) -> web.Response:
    """Change the fields given in the body and bump updated_at; completing a repeating task
    creates its next occurrence."""
    task_id = task_id_from(request)
    fields = await load_body(request, TASK_UPDATE)
    expected = if_match(request)

    async def write(conn: asyncpg.Connection) -> web.Response:
        return task_response(await update(request, conn, task_id, fields, expected))

    # Only a write that completes a task can repeat it, in a second statement.
    return await write_once(request, write, one_statement=fields.get("completed") is not True)


async def delete_task(request: web.Request) -> web.Response:
    """Move one task to the trash; 204 with no body."""
    task_id = task_id_from(request)
    expected = if_match(request)

    async def write(conn: asyncpg.Connection) -> web.Response:
        await delete(request, conn, task_id, expected)
        return web.Response(status=204)

    return await write_once(request, write, one_statement=True)


async def complete_task(request: web.Request) -> web.Response:
    """Set `completed` from the body, or flip it when there is no body; completing a repeating
    task creates its next occurrence."""
    task_id = task_id_from(request)
    fields = await load_body(request, TASK_COMPLETE) if request.body_exists else {}
    expected = if_match(request)

    async def write(conn: asyncpg.Connection) -> web.Response:
        return task_response(await complete(request, conn, task_id, fields.get("completed"), expected))

    return await write_once(request, write)


def task_response(row: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A task as an answer, with its ETag."""
    return json_response(
        task_document(row), status=status, headers={"ETag": task_etag(row["updated_at"]), **(headers or {})}
    )


async def write_once(
    request: web.Request,
    write: Callable[[asyncpg.Connection], Awaitable[web.Response]],
    *,
    one_statement: bool = False,
) -> web.Response:
    """Run a write and build its answer in one transaction, once per Idempotency-Key.

    A write of `one_statement` (it changes the database in a single statement, whatever it reads
    besides) needs no transaction of its own unless its answer is stored with it: PostgreSQL
    makes the statement atomic by itself, and BEGIN and COMMIT are two round trips more.
    """
    async with connection(request) as conn:
        if one_statement and idempotency_key(request) is None:
            return await write(conn)
        async with conn.transaction():
            return await once(request, conn, write)


# The writes themselves, each on a connection in the caller's transaction, shared by the routes
# above and by batches (handlers/batch.py). Each records its change (sql/tasks.sql), checks
# If-Match in the same statement as the write, and raises a Problem for what it refuses.


async def create(request: web.Request, conn: asyncpg.Connection, fields: dict[str, Any]) -> asyncpg.Record:
    user_id = request[USER_ID]
    limit = request.app[SETTINGS].max_tasks_per_user
    try:
        row = await queries.create_task(conn, user_id=user_id, max_tasks=limit, **fields)
    except asyncpg.ForeignKeyViolationError:
        # The token is genuine but its user has been deleted since it was issued.
        raise unauthorized("The token's user no longer exists.") from None
    if row is None:
        raise _full(limit)
    return row


async def update(
    request: web.Request,
    conn: asyncpg.Connection,
    task_id: int,
    fields: dict[str, Any],
    expected: list[datetime] | None,
) -> asyncpg.Record:
    changes = {name: fields.get(name) for name in _UPDATABLE}
    # Null is a value for these, so whether they were given at all travels separately.
    changes.update(
        set_description="description" in fields,
        set_due_date="due_date" in fields,
        set_remind_at="remind_at" in fields,
        set_recurrence="recurrence_every" in fields,
    )
    completing = fields.get("completed") is True
    return await _change(request, conn, task_id, queries.update_task, changes, expected, completing)


async def complete(
    request: web.Request,
    conn: asyncpg.Connection,
    task_id: int,
    completed: bool | None,
    expected: list[datetime] | None,
) -> asyncpg.Record:
    changes = {"completed": completed}
    completing = completed is not False  # True, or a flip
    return await _change(request, conn, task_id, queries.complete_task, changes, expected, completing)


async def delete(
    request: web.Request, conn: asyncpg.Connection, task_id: int, expected: list[datetime] | None
) -> None:
    user_id = request[USER_ID]
    if await queries.delete_task(conn, user_id=user_id, task_id=task_id, if_match=expected) is None:
        raise await _refusal(conn, user_id, task_id, expected)


async def _change(
    request: web.Request,
    conn: asyncpg.Connection,
    task_id: int,
    query: Query,
    changes: dict[str, Any],
    expected: list[datetime] | None,
    completing: bool,
) -> asyncpg.Record:
    """Run an update query and, in the same transaction, repeat the task if that completed it
    (`completing`: the write asked for it to be completed, or flipped it)."""
    user_id = request[USER_ID]
    row = await query(conn, user_id=user_id, task_id=task_id, if_match=expected, **changes)
    if row is None:
        raise await _refusal(conn, user_id, task_id, expected)
    # A task continues its series once; reopening and completing it again repeats nothing.
    repeats = row["recurrence_every"] is not None and row["next_task_id"] is None
    if completing and row["completed"] and repeats:
        limit = request.app[SETTINGS].max_tasks_per_user
        repeated = await queries.repeat_task(
            conn, user_id=user_id, task_id=task_id, change=row["change"], max_tasks=limit
        )
        if repeated is not None and repeated["quota_full"]:
            raise _full(limit)
        if repeated is not None:  # None: the series has reached its end
            row = repeated
    return row


async def _refusal(
    conn: asyncpg.Connection, user_id: int, task_id: int, expected: list[datetime] | None
) -> Problem:
    """Why a write found no row: If-Match failed (412: the task changed, or was deleted, since
    the client read it), or there is no such task (404)."""
    current = await queries.get_task(conn, user_id=user_id, task_id=task_id)
    if current is not None:
        return precondition_failed(task_etag(current["updated_at"]))
    if expected is not None and await queries.is_trashed(conn, user_id=user_id, task_id=task_id):
        return precondition_failed(None)
    return _not_found(task_id)


def _full(limit: int) -> Problem:
    return Problem(
        409,
        f"You have {limit:,} tasks, the most one account may keep (MAX_TASKS_PER_USER), counting "
        "those in the trash: delete some, or empty the trash, first.",
    )
