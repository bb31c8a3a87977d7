"""The change feed: GET /api/{user_id}/changes keeps a client in step without listing everything.

Without `since` it answers the whole current state first (every live task as an upsert, a page
at a time), then goes on from the position of the latest change it had then. With `since`, it
answers every change after that position. Positions are per user and in commit order (see
migrations/0009.change-log.sql), so none that committed late is ever skipped and none is sent
twice. With `wait`, an answer that would be empty is held until one of the user's changes
commits (service/changefeed.py), without holding a database connection.
"""

from typing import Any

from aiohttp import web

from service.conditions import task_etag
from service.cursors import seal, unseal
from service.db import connection, queries
from service.errors import Problem
from service.keys import CHANGE_WAITERS, SETTINGS, USER_ID
from service.schemas import CHANGES_QUERY, json_response, load_query, task_document

UPSERT_EVENTS = frozenset({"created", "updated", "completed", "restored"})


async def list_changes(request: web.Request) -> web.Response:
    """The user's changes after `since` (or the whole state first), oldest first."""
    query = load_query(request, CHANGES_QUERY)
    user_id, limit = request[USER_ID], query["limit"]
    secret, context = request.app[SETTINGS].jwt_secret, f"changes:{user_id}"
    position: list[Any] = ["s", 0, None]
    if "since" in query:
        position = unseal(secret, context, query["since"], parameter="since")
    if position[0] == "s":
        changes, position, has_more = await _snapshot_page(request, user_id, position, limit)
    else:
        changes, position, has_more = await _changes_page(
            request, user_id, int(position[1]), limit, query.get("wait")
        )
    body = {"changes": changes, "cursor": seal(secret, context, position), "has_more": has_more}
    return json_response(body, headers={"Cache-Control": "no-store"})


async def _snapshot_page(
    request: web.Request, user_id: int, position: list[Any], limit: int
) -> tuple[list[dict[str, Any]], list[Any], bool]:
    _, after_id, head = position
    async with connection(request) as conn:
        rows = await queries.snapshot_page(conn, user_id=user_id, after_id=after_id, limit=limit + 1)
    # The latest position as this first page saw it: every change after it comes next.
    head = rows[0]["head"] if head is None else head
    tasks = [row for row in rows if row["id"] is not None]
    if len(tasks) > limit:
        tasks = tasks[:limit]
        return [_upsert(row) for row in tasks], ["s", tasks[-1]["id"], head], True
    return [_upsert(row) for row in tasks], ["c", head], False


async def _changes_page(
    request: web.Request, user_id: int, after: int, limit: int, wait: int | None
) -> tuple[list[dict[str, Any]], list[Any], bool]:
    async with connection(request) as conn:
        state = await queries.change_head(conn, user_id=user_id)
    if after < state["purged_through"]:
        raise Problem(
            410,
            "Changes after this cursor are no longer kept (CHANGES_RETENTION_DAYS): start again "
            "without `since` to receive the whole current state.",
        )
    head = state["head"]
    if head <= after and wait:
        async with connection(request) as conn:
            head = (await queries.wait_for_changes(conn, user_id=user_id, seconds=wait))["head"]
        if head <= after and await request.app[CHANGE_WAITERS].wait(user_id, wait):
            head = after + 1  # something committed: look
    if head <= after:
        return [], ["c", after], False
    async with connection(request) as conn:
        rows = await queries.changes_after(conn, user_id=user_id, after=after, limit=limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    if not rows:
        return [], ["c", after], False
    # A task appears once per answer, as the latest of its changes here left it.
    latest: dict[int, Any] = {}
    for row in rows:
        latest.pop(row["task_id"], None)
        latest[row["task_id"]] = row
    changes = [
        _upsert(row)
        if row["event"] in UPSERT_EVENTS
        else {"op": "delete", "id": row["task_id"], "deleted_at": row["changed_at"]}
        for row in latest.values()
    ]
    return changes, ["c", rows[-1]["seq"]], has_more


def _upsert(row: Any) -> dict[str, Any]:
    return {"op": "upsert", "task": task_document(row), "etag": task_etag(row["updated_at"])}
