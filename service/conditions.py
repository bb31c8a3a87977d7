"""Conditional requests (RFC 9110 section 13): ETags of tasks and of task lists, If-Match and
If-None-Match.

A task's ETag is strong and made from its `updated_at`, which every write moves strictly
forward (sql/tasks.sql), so it changes with every change of the task's representation and
never otherwise. A list's ETag is weak and made from the user's latest change position
(task_counters.changes), which every task write moves.
"""

from datetime import UTC, datetime, timedelta

from aiohttp import web

from service.errors import Problem

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Bumped when the task document's shape changes, so that no client keeps a stale copy valid.
REPRESENTATION = "1"


def task_etag(updated_at: datetime) -> str:
    """The strong ETag of a task last changed at `updated_at`."""
    return f'"{REPRESENTATION}.{(updated_at - _EPOCH) // _MICROSECOND:x}"'


def list_etag(head: int) -> str:
    """The weak ETag of a user's task list after the change at position `head`."""
    return f'W/"{REPRESENTATION}.{head:x}"'


def _entity_tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def if_match(request: web.Request) -> list[datetime] | None:
    """The `updated_at` values If-Match accepts, for the write statement to compare atomically;
    None when any existing task will do (no header, or `*`). A tag that is not one of ours can
    match no task: an empty list."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    return matching_times(header)


def matching_times(header: str) -> list[datetime] | None:
    tags = _entity_tags(header)
    if "*" in tags:
        return None
    times = []
    for tag in tags:  # strong comparison: a weak tag never matches
        version, _, micros = tag.strip('"').partition(".")
        if tag.startswith('"') and tag.endswith('"') and version == REPRESENTATION:
            try:
                times.append(_EPOCH + int(micros, 16) * _MICROSECOND)
            except (ValueError, OverflowError):
                continue
    return times


def none_match(request: web.Request, etag: str) -> bool:
    """Whether If-None-Match matches `etag` (weak comparison, as RFC 9110 13.1.2 says)."""
    header = request.headers.get("If-None-Match")
    if header is None:
        return False
    tags = _entity_tags(header)
    return "*" in tags or etag.removeprefix("W/") in {tag.removeprefix("W/") for tag in tags}


def not_modified(etag: str) -> web.Response:
    return web.Response(status=304, headers={"ETag": etag})


def precondition_failed(current_etag: str | None) -> Problem:
    """412: the task has changed since the client read it (the current ETag travels along), or
    has been deleted since (none does)."""
    if current_etag is None:
        return Problem(412, "The task has been deleted since you read it (If-Match); it is in the trash.")
    return Problem(
        412,
        "The task has changed since you read it (If-Match): read it again, then retry.",
        headers={"ETag": current_etag},
    )
