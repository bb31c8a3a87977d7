"""Batches: POST /api/{user_id}/tasks/batch applies up to 100 task writes all or nothing.

Every operation runs as its single-request twin does (handlers/tasks.py: the same checks, If-Match
in the write's own statement, repeats, change records, log lines), in one transaction; the first
that fails rolls every one back and answers with its own status, naming its index. Each counts
against the user's write limit, and the whole batch takes an Idempotency-Key like any POST.
"""

from typing import Any

import asyncpg
from aiohttp import web
from marshmallow import ValidationError

from service.conditions import matching_times, task_etag
from service.errors import Problem
from service.handlers.tasks import complete, create, delete, update, write_once
from service.keys import USER_ID, WRITE_LIMITER
from service.schemas import BATCH, BATCH_OPERATIONS, json_response, load_body, task_document


async def run_batch(request: web.Request) -> web.Response:
    """Apply every operation, or none; 200 with each one's result, in order."""
    operations = _operations((await load_body(request, BATCH))["operations"])
    request.app[WRITE_LIMITER].check(f"user:{request[USER_ID]}", cost=len(operations))

    async def write(conn: asyncpg.Connection) -> web.Response:
        results = []
        for index, operation in enumerate(operations):
            try:
                results.append(await _apply(request, conn, operation))
            except Problem as problem:
                where = f"operations.{index}"
                raise Problem(
                    problem.status,
                    f"{where}: {problem.detail} Nothing in the batch was applied.",
                    errors={where: [problem.detail]},
                    headers=problem.headers,
                ) from None
        return json_response({"results": results})

    return await write_once(request, write)


async def _apply(request: web.Request, conn: asyncpg.Connection, operation: dict[str, Any]) -> dict[str, Any]:
    kind = operation["op"]
    expected = matching_times(operation["if_match"]) if "if_match" in operation else None
    if kind == "delete":
        await delete(request, conn, operation["id"], expected)
        return {"status": 204}
    if kind == "create":
        status, row = 201, await create(request, conn, operation["task"])
    elif kind == "update":
        status, row = 200, await update(request, conn, operation["id"], operation["task"], expected)
    else:
        status, row = (
            200,
            await complete(request, conn, operation["id"], operation.get("completed"), expected),
        )
    return {"status": status, "task": task_document(row), "etag": task_etag(row["updated_at"])}


def _operations(raw: list[Any]) -> list[dict[str, Any]]:
    """Each operation checked by the schema of its `op`; every failing field named by its path
    (operations.3.task.title)."""
    errors: dict[str, list[str]] = {}
    operations = []
    for index, item in enumerate(raw):
        where = f"operations.{index}"
        kind = item.get("op") if isinstance(item, dict) else None
        if not isinstance(kind, str) or kind not in BATCH_OPERATIONS:
            errors[f"{where}.op"] = [f"Must be one of: {', '.join(BATCH_OPERATIONS)}."]
            continue
        try:
            operations.append(BATCH_OPERATIONS[kind].load(item))
        except ValidationError as error:
            errors.update(_flatten(where, error.normalized_messages()))  # type: ignore[no-untyped-call]
    if errors:
        raise ValidationError(errors)
    return operations


def _flatten(prefix: str, messages: Any) -> dict[str, list[str]]:
    if isinstance(messages, dict):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            flat.update(_flatten(prefix if key == "_schema" else f"{prefix}.{key}", value))
        return flat
    return {prefix: list(messages)}
